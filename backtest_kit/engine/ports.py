"""What the services above the engine core call back on the engine that composes them.

The composition root (`backtest_kit/system/engine.py`) builds the portfolio services (risk, sizing,
partial levels), the report stores and the notifiers and hands each of them itself typed as one of
these Protocols, never as `Engine`: a service sees the public members it uses, and no module below
`system` imports it (no import cycle, not even under TYPE_CHECKING; import-linter checks the layers,
see the README's Architecture section).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

from .bus import EventBus
from .clock import Clock
from .config import Config
from .exchange import ExchangeClient
from .logger import EngineLogger
from .models import SignalRow
from .persist import PersistBackend
from .registry import Registry, StrategySchema

__all__ = ["ExchangeHost", "NotifierHost", "ReportSink", "Services"]


class ReportSink(Protocol):
    """Where a markdown report is written: `<dump_dir>/<kind>/...`, failures logged."""

    @property
    def dump_dir(self) -> Path: ...

    @property
    def logger(self) -> EngineLogger: ...


class Services(ReportSink, Protocol):
    """The engine as the portfolio and report services see it: bus, clock, config, registry,
    persistence lookup, error reporting and the name checks."""

    @property
    def bus(self) -> EventBus: ...

    @property
    def clock(self) -> Clock: ...

    @property
    def config(self) -> Config: ...

    @property
    def registry(self) -> Registry: ...

    def now_ms(self) -> int: ...

    async def report_error(self, error: BaseException) -> None: ...

    def persist_for(self, entity: str) -> PersistBackend: ...

    def check_strategy(self, strategy_name: str, source: str) -> StrategySchema: ...

    def exchange(self, exchange_name: str, source: str = "") -> ExchangeClient: ...

    def restored_row_problems(self, row: SignalRow) -> list[str]: ...


class NotifierHost(Protocol):
    """What `add_notifier` needs of an engine: its bus, logger and shutdown hooks."""

    @property
    def bus(self) -> EventBus: ...

    @property
    def logger(self) -> EngineLogger: ...

    def add_shutdown_hook(self, hook: Callable[[], Awaitable[Any] | Any]) -> None: ...


class ExchangeHost(NotifierHost, Protocol):
    """What an exchange adapter registers itself on (`add_exchange`, a shutdown hook, the logger)."""

    def add_exchange(
        self, *, exchange_name: str, get_candles: Callable[..., Any],
        format_price: Callable[..., Any] | None = None, format_quantity: Callable[..., Any] | None = None,
        note: str | None = None, on_candle_data: Callable[..., Any] | None = None,
        on_close: Callable[[], Any] | None = None,
    ) -> Any: ...

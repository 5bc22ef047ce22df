"""The event bus's channels as typed constants: `Channel[E]` names a channel whose events are `E`.

`EventBus.publish` / `emit` / `publish_soon` / `subscribe` are generic over the channel's event type,
so mypy checks every publish and every listener against it: `bus.emit(RISK, error)` or
`bus.subscribe(PROGRESS, on_risk)` with `on_risk(event: RiskEvent)` is a type error.

At run time a `Channel` is a tiny immutable object holding its string `name`; the bus indexes its
per-channel tables by the constant itself (identity hash) and by the name, so publishing through a
constant costs the same dict lookup as through a string, and plain names (`bus.subscribe("risk",
fn)`, `add_notifier(..., channels=["error"])`) keep working for users' raw use. Every channel the
library uses is declared here (`ALL_CHANNELS`); `tests/test_channels.py` checks that no publish or
subscribe in the library names a channel by a string.
"""

from __future__ import annotations

from typing import Any, Final, Generic, NoReturn, TypeVar

from .models import (
    DoneEvent,
    OrderEvent,
    PartialEvent,
    PerformanceEvent,
    ProgressEvent,
    RiskEvent,
    TickResult,
    WalkerContract,
    WalkerProgressEvent,
    WalkerResults,
    WalkerStopEvent,
)

__all__ = [
    "ALL_CHANNELS",
    "CHANNEL_BY_NAME",
    "DONE_BACKTEST",
    "DONE_LIVE",
    "DONE_WALKER",
    "ERROR",
    "EXIT",
    "ORDER",
    "PARTIAL_LOSS",
    "PARTIAL_PROFIT",
    "PERFORMANCE",
    "PROGRESS",
    "RISK",
    "SIGNAL",
    "SIGNAL_BACKTEST",
    "SIGNAL_LIVE",
    "VALIDATION",
    "WALKER",
    "WALKER_COMPLETE",
    "WALKER_PROGRESS",
    "WALKER_STOP",
    "Channel",
]

E = TypeVar("E")


class Channel(Generic[E]):
    """A bus channel named `name` carrying events of type `E` (a type-level tag: not checked at run time).

    Immutable and compared by identity: the declared constants below are the channels; `str(channel)`
    is its name.
    """

    __slots__ = ("name",)
    name: str

    def __init__(self, name: str) -> None:
        object.__setattr__(self, "name", name)

    def __setattr__(self, key: str, value: Any) -> NoReturn:
        raise AttributeError(f"Channel is immutable: cannot set {key!r}")

    def __delattr__(self, key: str) -> NoReturn:
        raise AttributeError(f"Channel is immutable: cannot delete {key!r}")

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return _by_name, (self.name,)  # unpickles to the declared constant (identity preserved)

    def __repr__(self) -> str:
        return f"Channel({self.name!r})"

    def __str__(self) -> str:
        return self.name


SIGNAL: Final[Channel[TickResult]] = Channel("signal")
"""Every tick and fast-forward result of both modes (`TickResult`), published by the backtest and live
runners right after the mode's own channel (`SIGNAL_BACKTEST` / `SIGNAL_LIVE`); `listen_signal`."""

SIGNAL_LIVE: Final[Channel[TickResult]] = Channel("signal_live")
"""Every live tick result, idle and active included (`TickResult`); published by `engine/live.py`'s
runner; `listen_signal_live`."""

SIGNAL_BACKTEST: Final[Channel[TickResult]] = Channel("signal_backtest")
"""Every backtest tick and fast-forward result (`TickResult`); published by `engine/backtest.py`'s
runner; `listen_signal_backtest`."""

ERROR: Final[Channel[BaseException]] = Channel("error")
"""Recoverable errors (`BaseException`), published by `Engine.report_error` (failed ticks, invalid
signals, raising callbacks) and by the bus itself for raising or timed-out listeners; `listen_error`.
A raising error listener is only logged."""

EXIT: Final[Channel[BaseException]] = Channel("exit")
"""The error (`BaseException`) that ended a background run, published by `engine/runner.py` before
the run's done event; `listen_exit`."""

DONE_LIVE: Final[Channel[DoneEvent]] = Channel("done_live")
"""A live background run ended (`DoneEvent`), after all of its other events; published by
`engine/runner.py` for `LiveRunner`; `listen_done_live`."""

DONE_BACKTEST: Final[Channel[DoneEvent]] = Channel("done_backtest")
"""A backtest background run ended (`DoneEvent`), after all of its other events; published by
`engine/runner.py` for `BacktestRunner`; `listen_done_backtest`."""

PROGRESS: Final[Channel[ProgressEvent]] = Channel("progress")
"""Backtest progress (`ProgressEvent`) before every frame and at the end, published by
`engine/backtest.py` only when someone listens; `listen_progress`."""

PERFORMANCE: Final[Channel[PerformanceEvent]] = Channel("performance")
"""Timings of engine steps (`PerformanceEvent`), published by both runners only when someone listens;
`reports/performance_stats.py` and `listen_performance` consume them."""

VALIDATION: Final[Channel[BaseException]] = Channel("validation")
"""Errors (`BaseException`) raised by risk validation functions, published by `portfolio/risk.py`;
`listen_validation`."""

PARTIAL_PROFIT: Final[Channel[PartialEvent]] = Channel("partial_profit")
"""A 10 % profit milestone reached (`PartialEvent`), published by `portfolio/partial.py`'s level
tracker; recorded by `PartialService` and `listen_partial_profit`."""

PARTIAL_LOSS: Final[Channel[PartialEvent]] = Channel("partial_loss")
"""A 10 % loss milestone reached (`PartialEvent`), published by `portfolio/partial.py`'s level
tracker; recorded by `PartialService` and `listen_partial_loss`."""

RISK: Final[Channel[RiskEvent]] = Channel("risk")
"""A risk profile rejected a signal (`RiskEvent`), published by `portfolio/risk.py`; recorded by
`RiskService` and `listen_risk`."""

DONE_WALKER: Final[Channel[DoneEvent]] = Channel("done_walker")
"""A walker background run ended (`DoneEvent` with the walker's name as `strategy_name`, its exchange,
`backtest=True`), after all of its other events; published by `system/walker.py`; `listen_done_walker`."""

WALKER_PROGRESS: Final[Channel[WalkerProgressEvent]] = Channel("walker_progress")
"""A walker finished one more strategy's backtest (`WalkerProgressEvent`); published by
`system/walker.py`; `listen_walker_progress`."""

WALKER: Final[Channel[WalkerContract[Any]]] = Channel("walker")
"""One strategy's result within a walker run (`WalkerContract[Any]`; its `stats` is a `Statistics`),
after its progress event and `on_strategy_complete`; published by `system/walker.py`; `listen_walker`."""

WALKER_COMPLETE: Final[Channel[WalkerResults[Any]]] = Channel("walker_complete")
"""The end of a walker run (`WalkerResults[Any]`; `best_stats` is a `Statistics`), after `on_complete`; published by
`system/walker.py`; `listen_walker_complete`."""

WALKER_STOP: Final[Channel[WalkerStopEvent]] = Channel("walker_stop")
"""A stop request for one strategy of a walker (`WalkerStopEvent`), published by `Walker.stop` and the
walker's cancel; the running walker of that (symbol, walker) listens; `listen_walker_stop`."""

ORDER: Final[Channel[OrderEvent]] = Channel("order")
"""What happened to an order an executor placed for a signal (`OrderEvent`: submitted, filled, partially
filled, rejected, cancelled), published by `execution/router.py` through the executor's sink; recorded by
the statistics stores (realised PnL from fills) and `listen_order`."""

ALL_CHANNELS: Final[tuple[Channel[Any], ...]] = (
    SIGNAL,
    SIGNAL_LIVE,
    SIGNAL_BACKTEST,
    ERROR,
    EXIT,
    DONE_LIVE,
    DONE_BACKTEST,
    PROGRESS,
    PERFORMANCE,
    VALIDATION,
    PARTIAL_PROFIT,
    PARTIAL_LOSS,
    RISK,
    DONE_WALKER,
    WALKER_PROGRESS,
    WALKER,
    WALKER_COMPLETE,
    WALKER_STOP,
    ORDER,
)
"""Every channel of the bus, in the order of `bk.CHANNELS` (their names)."""

CHANNEL_BY_NAME: Final[dict[str, Channel[Any]]] = {channel.name: channel for channel in ALL_CHANNELS}
"""name -> declared channel."""


def _by_name(name: str) -> Channel[Any]:
    return CHANNEL_BY_NAME[name]

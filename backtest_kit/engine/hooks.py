"""Extension points of the signal state machine: risk gate, sizing, partial levels, signal store.

The state machine calls these at fixed moments of a signal's life; the defaults do nothing, so a
strategy without risk, sizing or persistence pays nothing for them on the hot path.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from .models import Candle, SignalRow

__all__ = ["PartialTracker", "RiskGate", "SignalStore", "Sizer"]


class RiskGate(Protocol):
    """A risk profile as seen by one strategy instance (check-and-add must be atomic)."""

    async def try_open(self, row: SignalRow, current_price: float, now_ms: int) -> bool:
        """Allow and register the position, or refuse it (and report why)."""
        ...

    async def check(self, row: SignalRow, current_price: float, now_ms: int) -> bool:
        """Allow or refuse a limit signal at creation without registering a position."""
        ...

    async def release(self, row: SignalRow) -> None:
        """The position closed (or was never filled)."""
        ...

    async def restore(self, row: SignalRow) -> None:
        """A live instance restored this open position: make sure it is registered (no checks)."""
        ...


class Sizer(Protocol):
    async def quantity(self, row: SignalRow, current_price: float) -> float | None: ...


class PartialTracker(Protocol):
    async def progress(self, row: SignalRow, price: float, percent_tp: float, percent_sl: float,
                       timestamp: int) -> None: ...

    async def replay(self, row: SignalRow, candles: Sequence[Candle], start: int, end_ts: int,
                     count: int) -> None:
        """`progress` for every fast-forward candle in `candles[start:]` opening before `end_ts`."""
        ...

    async def clear(self, row: SignalRow) -> None: ...


class SignalStore(Protocol):
    """Where a live instance keeps its pending and scheduled signal across restarts.

    `healthy` is False while a save failed (new positions wait until `flush()` succeeds);
    `has_deferred` asks the live loop to `flush()` once a tick's result reached the listeners.
    """

    @property
    def healthy(self) -> bool: ...

    @property
    def has_deferred(self) -> bool: ...

    async def flush(self) -> None: ...

    async def load(self) -> tuple[SignalRow | None, SignalRow | None]:
        """(pending, scheduled) as last saved; invalid snapshots are reported and skipped."""
        ...

    async def save_pending(self, row: SignalRow | None) -> None: ...

    async def save_scheduled(self, row: SignalRow | None) -> None: ...

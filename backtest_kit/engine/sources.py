"""Candle-source protocols an exchange's `get_candles` may implement.

Any async `get_candles(symbol, interval, since, limit)` works. A source that also implements
`SyncCandleSource` (the in-memory and CSV adapters do) lets the engine read candles and the average
price without an await and without re-validating candles it already validated at load time: this
is what makes a backtest over a local file run at hundreds of thousands of frames per second.

A sync source may also set a class attribute `prices_persist = True` (`MemoryCandles` and
`CsvCandles` do): a promise that `average_price` is a pure read and, once it answered for a symbol at
a time `t`, answers (not None) at every later time. Then a backtest tick with no position, a closed
signal throttle, no `on_idle`/`on_tick` callback and no listener for its result provably only
returns an idle result nobody sees, and the backtest loop skips such frames
(`StrategyInstance.quiet_until`).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

from .models import Candle

__all__ = ["CandleSource", "SyncCandleSource"]


@runtime_checkable
class CandleSource(Protocol):
    """The shape of `add_exchange(get_candles=...)`."""

    async def __call__(self, symbol: str, interval: str, since: datetime, limit: int) -> Sequence[Any]:
        """Up to `limit` candles of `interval` whose open time is at or after `since`, ascending."""
        ...


@runtime_checkable
class SyncCandleSource(Protocol):
    """A local source answering synchronously from candles validated once at load time."""

    def closed_candles(self, symbol: str, interval: str, when_ms: int, limit: int) -> Sequence[Candle]:
        """The newest `limit` candles that closed at or before `when_ms` (ts + step <= when_ms), ascending."""
        ...

    def next_candles(self, symbol: str, interval: str, since_ms: int, limit: int) -> Sequence[Candle]:
        """Up to `limit` candles with open time >= `since_ms`, ascending."""
        ...

    def average_price(self, symbol: str, when_ms: int, count: int) -> float | None:
        """VWAP of the newest `count` 1m candles closed by `when_ms` (typical price (h+l+c)/3 weighted
        by volume; mean of typical prices when the volume sums to 0); None when there is none."""
        ...

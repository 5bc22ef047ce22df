"""A candle source cut off at a time: the data a walk-forward window's backtest may see.

A backtest resolves an open position by reading the candles after its tick (fast-forward), which
may reach past the frame's end. Inside a walk-forward split that would let a train window's score
depend on the test window's prices, so every window job gets its exchange's source wrapped here:
no candle that closes after `end_ms` exists for it. The wrappers are plain objects holding the
source and a number, so they pickle to worker processes whenever the source does; the synchronous
one keeps the engine's fast path (`SyncCandleSource`) when the wrapped source has it.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from ..engine.exchange import step_ms
from ..engine.models import Candle
from ..engine.sources import SyncCandleSource

__all__ = ["ClippedCandles", "ClippedSyncCandles", "clip_candles"]


def _open_ms(candle: Any) -> int:
    """The open time of a candle as a source answers it (a `Candle`, a mapping or a row)."""
    if isinstance(candle, Candle):
        return candle.timestamp
    if isinstance(candle, dict):
        return int(candle["timestamp"])
    if isinstance(candle, list | tuple):
        return int(candle[0])
    return int(candle.timestamp)


class ClippedCandles:
    """`source` (any async `get_candles`) without the candles that close after `end_ms`."""

    def __init__(self, source: Any, end_ms: int) -> None:
        self.source = source
        self.end_ms = int(end_ms)

    async def __call__(self, symbol: str, interval: str, since: datetime, limit: int) -> list[Any]:
        step = step_ms(interval)
        found = await self.source(symbol, interval, since, limit)
        return [c for c in found if _open_ms(c) + step <= self.end_ms]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.source!r}, end_ms={self.end_ms})"


class ClippedSyncCandles(ClippedCandles):
    """`ClippedCandles` of a `SyncCandleSource` (the in-memory and CSV adapters), keeping the fast path."""

    def closed_candles(self, symbol: str, interval: str, when_ms: int, limit: int) -> Sequence[Candle]:
        return self.source.closed_candles(symbol, interval, min(when_ms, self.end_ms), limit)  # type: ignore[no-any-return]

    def next_candles(self, symbol: str, interval: str, since_ms: int, limit: int) -> Sequence[Candle]:
        step = step_ms(interval)
        end = self.end_ms
        return [c for c in self.source.next_candles(symbol, interval, since_ms, limit) if c.timestamp + step <= end]

    def average_price(self, symbol: str, when_ms: int, count: int) -> float | None:
        return self.source.average_price(symbol, min(when_ms, self.end_ms), count)  # type: ignore[no-any-return]


def clip_candles(source: Any, end_ms: int) -> ClippedCandles:
    """`source` cut off at `end_ms`; synchronous when `source` is (see the module docstring)."""
    if isinstance(source, SyncCandleSource):
        return ClippedSyncCandles(source, end_ms)
    return ClippedCandles(source, end_ms)

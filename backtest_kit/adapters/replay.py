"""Replay exchange: historical candles served as if live, aligned to the engine clock.

Wrap a candle store and a clock: every answer stops at the candles that have closed by the clock's
"now", exactly as a real exchange would answer at that moment. With a `VirtualClock` started at the
beginning of the data this is paper trading on history — live mode, real candles, no waiting.

A replay has an end, a real exchange does not: `data_end_ms(symbol)` tells the live loop when the
history runs out (the close of the last candle, or an earlier `end`). The live loop runs the first
tick at or after that time — it sees every candle — and then ends the run by itself (`done` fires
once); a position still open stays open (and persisted) and is reported as open, since no later
price exists to close it. Without this, the clock would run on over the last price forever.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from ..engine.clock import Clock, VirtualClock, clock_now_ms
from ..engine.errors import SchemaError
from ..engine.exchange import step_ms
from ..engine.intervals import MINUTE_MS
from ..engine.models import Candle
from .candles import MemoryCandles

__all__ = ["ReplayExchange", "replay_clock"]


class ReplayExchange:
    """A `get_candles` source (and `SyncCandleSource`) that never reveals a candle still forming.

    `end` (a timezone-aware datetime or ms since the epoch) ends the replay before the data does.
    """

    def __init__(self, source: MemoryCandles, clock: Clock, *, end: datetime | int | None = None) -> None:
        self.source = source
        self.clock = clock
        self.end_ms: int | None = _end_ms(end)

    @property
    def symbols(self) -> tuple[str, ...]:
        return self.source.symbols

    @property
    def load_warnings(self) -> list[str]:
        """The wrapped source's load-time findings, logged by the engine when the exchange is first used."""
        return self.source.load_warnings

    def _now(self) -> int:
        return clock_now_ms(self.clock)

    def data_end_ms(self, symbol: str) -> int | None:
        """When the replay of `symbol` is over: the last candle's close, or `end` if earlier.

        None for a symbol the data does not hold (its ticks fail and say so; nothing to end on).
        """
        if symbol not in self.source.symbols:
            return None
        last_close = self.source.last_timestamp(symbol) + MINUTE_MS
        return last_close if self.end_ms is None else min(last_close, self.end_ms)

    async def __call__(self, symbol: str, interval: str, since: datetime, limit: int) -> list[Candle]:
        step = step_ms(interval)
        now = self._now()
        return [c for c in await self.source(symbol, interval, since, limit) if c.timestamp + step <= now]

    def closed_candles(self, symbol: str, interval: str, when_ms: int, limit: int) -> Sequence[Candle]:
        return self.source.closed_candles(symbol, interval, min(when_ms, self._now()), limit)

    def next_candles(self, symbol: str, interval: str, since_ms: int, limit: int) -> Sequence[Candle]:
        step = step_ms(interval)
        now = self._now()
        return [c for c in self.source.next_candles(symbol, interval, since_ms, limit) if c.timestamp + step <= now]

    def average_price(self, symbol: str, when_ms: int, count: int) -> float | None:
        return self.source.average_price(symbol, min(when_ms, self._now()), count)

    def first_timestamp(self, symbol: str) -> int:
        return self.source.first_timestamp(symbol)

    def last_timestamp(self, symbol: str) -> int:
        return self.source.last_timestamp(symbol)


def _end_ms(end: datetime | int | None) -> int | None:
    if end is None:
        return None
    if isinstance(end, datetime):
        if end.tzinfo is None:
            raise SchemaError(f"end: expected a timezone-aware datetime, got {end!r}")
        return int(end.timestamp() * 1000)
    if isinstance(end, bool) or not isinstance(end, int):
        raise SchemaError(f"end: expected a datetime or milliseconds since the epoch, got {end!r}")
    return end


def replay_clock(source: MemoryCandles, symbol: str | None = None, *, warmup_minutes: int = 60) -> VirtualClock:
    """A VirtualClock starting `warmup_minutes` after the first candle of `symbol` (or the first symbol)."""
    symbol = symbol or source.symbols[0]
    first = datetime.fromtimestamp(source.first_timestamp(symbol) / 1000, UTC)
    return VirtualClock(first + timedelta(minutes=warmup_minutes))

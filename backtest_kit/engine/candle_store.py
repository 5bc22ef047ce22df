"""Closed candles of one (exchange, symbol, interval), converted and validated once.

Why: a backtest over a plain `get_candles` callback re-read, re-converted and re-validated the same
closed candles on every fetch (consecutive 50-candle `get_signal` reads share 49 of 50 candles at a
1m tick, the 5-candle average price 4 of 5). Closed candles never change, so `ExchangeClient` keeps
the ones it has validated here and only asks the source for the part of a read it has not seen.

Coverage. The store holds one contiguous *known range* ``[lo, hi)`` of open times: every grid slot
in it is known, either as a stored candle or as a known gap (the source answered past that slot
without it). Only candles closed by the reading tick are ever merged (``timestamp + step <= when``),
so a read at `when` served from here sees exactly the candles closed by `when`: no look-ahead.

Merging (`merge`, a fetch's validated candles over its known range ``[start, end)``):
- the fetch overlaps or touches ``[lo, hi)``: the union becomes the known range; inside
  ``[start, end)`` the fetched candles replace what was stored (they are the newer answer);
- otherwise (disjoint, or the store is empty) the fetched range replaces the store, which follows
  the newest read.

Eviction (bounded memory, a ring per key). The capacity of a key is
``min(max_candles, max(MIN_CAPACITY, 2 x the largest limit read on the key))``. When a merge leaves
more than ``capacity + capacity // 4`` candles, the oldest candles are dropped down to ``capacity``
and ``lo`` moves to the open time of the oldest kept candle (the slack makes trimming happen once
every ``capacity // 4`` appends, not on every tick). A read longer than the capacity therefore never
fits and is always fetched from the source, as without a store.
"""

from __future__ import annotations

import sys
from bisect import bisect_left

from .models import Candle

__all__ = ["MIN_CAPACITY", "CandleStore"]

MIN_CAPACITY = 64


class CandleStore:
    """One key's known range ``[lo, hi)`` and its candles, ascending; see the module doc for the rules."""

    __slots__ = ("candles", "capacity", "hi", "lo", "max_candles", "stamps", "step")

    def __init__(self, step: int, max_candles: int) -> None:
        self.step = step
        self.max_candles = max_candles
        self.capacity = min(max_candles, MIN_CAPACITY)
        self.lo = 0
        self.hi = 0  # lo == hi: nothing known
        self.stamps: list[int] = []
        self.candles: list[Candle] = []

    def reserve(self, limit: int) -> None:
        """Grow the capacity so reads of `limit` candles keep fitting (never beyond max_candles)."""
        wanted = min(self.max_candles, max(MIN_CAPACITY, 2 * limit))
        if wanted > self.capacity:
            self.capacity = wanted

    def covers(self, since: int, stop: int) -> bool:
        """Is every slot of ``[since, stop)`` known?"""
        return self.lo <= since and stop <= self.hi and self.lo < self.hi

    def window(self, since: int, stop: int) -> list[Candle]:
        """The stored candles opening in ``[since, stop)``, ascending (a fresh list)."""
        stamps = self.stamps
        i = bisect_left(stamps, since)
        j = bisect_left(stamps, stop, i)
        return self.candles[i:j]

    def merge(self, start: int, end: int, candles: list[Candle]) -> None:
        """Record that ``[start, end)`` is known and holds exactly `candles` (validated, ascending)."""
        if end <= start:
            return
        stamps = self.stamps
        if self.lo < self.hi and start <= self.hi and end >= self.lo:
            i = bisect_left(stamps, start)
            j = bisect_left(stamps, end, i)
            if i == len(stamps):  # the common case: the new candles follow the stored ones
                stamps.extend(c.timestamp for c in candles)
                self.candles.extend(candles)
            else:
                stamps[i:j] = [c.timestamp for c in candles]
                self.candles[i:j] = candles
            self.lo = min(self.lo, start)
            self.hi = max(self.hi, end)
        else:
            self.stamps = [c.timestamp for c in candles]
            self.candles = list(candles)
            self.lo, self.hi = start, end
        self._evict()

    def nbytes(self, at_bound: bool = False) -> int:
        """Bytes this store holds (its lists, the candles and their field objects): a figure for
        benchmarks and monitoring, not used by the engine; objects shared with a source count too.

        `at_bound`: the figure once the store is full (``capacity + capacity // 4`` candles, the most
        it holds before eviction), at the current average size of a stored candle.
        """
        size = sys.getsizeof
        candles = self.candles
        held = sum(size(c) + size(c.timestamp) + 5 * size(c.close) for c in candles)
        count = len(candles)
        if at_bound and count:
            bound = self.capacity + self.capacity // 4
            return size(self) + 2 * (56 + 8 * bound) + held * bound // count
        return size(self) + size(self.stamps) + size(candles) + held

    def _evict(self) -> None:
        capacity = self.capacity
        size = len(self.candles)
        if size <= capacity + capacity // 4:
            return
        drop = size - capacity
        del self.candles[:drop]
        del self.stamps[:drop]
        self.lo = self.stamps[0] if self.stamps else self.hi

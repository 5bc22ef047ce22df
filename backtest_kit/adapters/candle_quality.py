"""Data-quality checks at load: price anomalies dropped, holes in the 1m series reported.

Split out of `candles.py`: these checks decide what a loaded series may keep and what the user is
warned about (`CandleDataWarning`, `DroppedCandle`, `CandleGaps`), while `candles.py` stores and
serves what is kept. Nothing here runs on the engine's hot path.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import compress, islice
from operator import sub

from ..engine.config import DEFAULT_CONFIG
from ..engine.intervals import MINUTE_MS
from .candle_input import _Columns, _Where

__all__ = ["CandleDataWarning", "CandleGaps", "DroppedCandle"]

_FACTOR = DEFAULT_CONFIG.CC_GET_CANDLES_PRICE_ANOMALY_THRESHOLD_FACTOR
_MEDIAN_MIN = DEFAULT_CONFIG.CC_GET_CANDLES_MIN_CANDLES_FOR_MEDIAN
_BLOCK = 1440  # candles per anomaly reference: a day of 1m candles, so a long file's trend cannot matter
_SHOWN = 5  # dropped candles listed by name in a warning


class CandleDataWarning(UserWarning):
    """Loaded candles had holes or price anomalies; the data was kept (minus the anomalies) but is suspect."""


@dataclass(frozen=True, slots=True)
class DroppedCandle:
    """A candle left out at load because one of its prices is more than `factor` times off its reference."""

    index: int  # position in the input (the CSV line is index + the first data line)
    timestamp: int
    field: str  # "high" (too high) or "low" (too low)
    value: float
    reference: float  # median of the OHLC prices of the candle's block of `_BLOCK` (about a day's) candles


@dataclass(frozen=True, slots=True)
class CandleGaps:
    """Holes in a loaded 1m series: what a backtest over it silently steps across."""

    count: int  # holes
    missing: int  # 1m candles missing in total
    largest: int  # 1m candles missing in the largest hole
    first_after: int  # open time (ms) of the last candle before the first hole
    first_resume: int  # open time (ms) of the first candle after it
    first_index: int  # input position of that first candle after the hole


def _anomalies(
    ts: list[int], o: list[float], h: list[float], lo: list[float], c: list[float], factor: float
) -> list[DroppedCandle]:
    """Candles with a price below reference / factor or above reference x factor
    ([hardening #7](../../docs/design/decisions.md#hardening-7-symmetric-candle-anomaly-filter-default-factor-20)).

    The exchange client's rule (median of the OHLC prices, the mean below `_MEDIAN_MIN` candles),
    applied per block of `_BLOCK` candles rather than to the whole file, whose median over months
    says little about one day. Rows are validated, so low <= open, close <= high: a block whose
    lowest low and highest high are in bounds (the usual case, a min and a max at C speed) is fine.
    """
    if max(h) <= min(lo) * factor:
        return []  # every reference lies in [min low, max high], so no price can be `factor` away from one
    n = len(ts)
    starts = list(range(0, n, _BLOCK))
    if len(starts) > 1 and n - starts[-1] < _BLOCK // 2:
        starts.pop()  # fold a short tail into the previous block: a reference from few candles is weak
    found: list[DroppedCandle] = []
    for s, e in zip(starts, [*starts[1:], n], strict=True):
        prices = [*o[s:e], *h[s:e], *lo[s:e], *c[s:e]]
        if e - s >= _MEDIAN_MIN:
            prices.sort()
            reference = prices[len(prices) // 2]
        else:
            reference = math.fsum(prices) / len(prices)
        floor, ceiling = reference / factor, reference * factor
        if min(lo[s:e]) >= floor and max(h[s:e]) <= ceiling:
            continue
        for i in range(s, e):
            if h[i] > ceiling:
                found.append(DroppedCandle(i, ts[i], "high", h[i], reference))
            elif lo[i] < floor:
                found.append(DroppedCandle(i, ts[i], "low", lo[i], reference))
    return found


def _without(dropped: list[DroppedCandle], cols: _Columns) -> tuple[list[int], _Columns]:
    """The columns minus the dropped rows, and the input row of every row kept."""
    keep = [True] * len(cols[0])
    for d in dropped:
        keep[d.index] = False
    ts, o, h, lo, c, v = cols
    o, h, lo, c, v = (list(compress(col, keep)) for col in (o, h, lo, c, v))
    return list(compress(range(len(keep)), keep)), (list(compress(ts, keep)), o, h, lo, c, v)


def _dropped_text(symbol: str, label: str, dropped: list[DroppedCandle], factor: float, where: _Where) -> str:
    shown = "; ".join(
        f"{where(d.index)} {_iso(d.timestamp)} {d.field} {d.value!r} vs reference {d.reference!r}"
        for d in dropped[:_SHOWN]
    )
    more = f"; and {len(dropped) - _SHOWN} more" if len(dropped) > _SHOWN else ""
    return (
        f"{label}: dropped {len(dropped)} {symbol} candle(s) with a price more than {factor:g}x away from "
        f"the median of their {_BLOCK}-candle block (anomaly_factor): {shown}{more}; the series has a gap at each"
    )


def _gaps(ts: list[int], rows: list[int] | None) -> CandleGaps | None:
    """Holes between consecutive 1m candles, or None for a gap-free series (checked in O(1) first)."""
    n = len(ts)
    if ts[-1] - ts[0] == (n - 1) * MINUTE_MS:
        return None
    steps = list(map(sub, islice(ts, 1, None), ts))
    holes = [k for k, step in enumerate(steps) if step != MINUTE_MS]
    first = holes[0]
    largest = max(steps[k] for k in holes) // MINUTE_MS - 1
    missing = sum(steps[k] for k in holes) // MINUTE_MS - len(holes)
    resume = first + 1
    return CandleGaps(len(holes), missing, largest, ts[first], ts[resume],
                      rows[resume] if rows is not None else resume)


def _gaps_text(symbol: str, label: str, gaps: CandleGaps, where: _Where) -> str:
    return (
        f"{label}: {gaps.count} gap(s) in the {symbol} 1m candles, {gaps.missing} candle(s) missing in total, "
        f"the largest {gaps.largest} minute(s); the first after {_iso(gaps.first_after)}, resuming at "
        f"{where(gaps.first_index)} {_iso(gaps.first_resume)}"
    )


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M")

"""Local candle sources: candles held in memory, or loaded from CSV files of 1-minute candles.

Both are validated once at load time and then trusted: the engine calls `closed_candles` and
`average_price` on every backtest frame, so those are a dict lookup, an index (arithmetic on
gap-free data, `bisect` otherwise) and a list slice or a few float operations, never a re-check.
Only 1-minute candles are stored; every other interval of `CANDLE_INTERVALS` is aggregated from
them on first use and cached, so a strategy asking for 1h candles sees exactly what the 1m data
implies and no second file can disagree with the first.

Aggregated buckets sit on the epoch grid (bucket start = ts - ts % step, so 1h buckets start on the
hour and 1d buckets at 00:00 UTC). A bucket whose minutes are partly missing (at the first and last
candle of the data, or around an outage) is still returned, built from the minutes that exist: real
data has gaps, and dropping the bucket would hide the price moves inside it.

The work is split by job: `candle_input.py` reads and validates what is loaded (CSV files, in-memory
inputs), `candle_quality.py` drops price anomalies and reports gaps, and this module holds the store
that serves and aggregates the candles. Every public name stays importable from here.
"""

from __future__ import annotations

import math
import pickle
import sys
import uuid
import warnings
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from itertools import accumulate, compress, islice, repeat
from operator import add, attrgetter, mod, mul, ne, sub, truediv
from os import PathLike
from pathlib import Path
from typing import Any, TypeAlias, TypeVar

from ..engine.errors import CandleError, UnknownSymbolError
from ..engine.intervals import CANDLE_INTERVALS, MINUTE_MS
from ..engine.models import Candle
from .candle_input import CSV_HEADER as CSV_HEADER  # importable from here, where it used to live
from .candle_input import (
    FIELDS,
    ArrayLike,
    CandleInput,
    _check_one_minute,
    _check_symbol,
    _convert,
    _file_where,
    _memory_where,
    _raw_columns,
    _read_csv,
    _symbol_from_name,
    _validate,
    _Where,
    bundled_sample_path,
    resolve_sample_name,
)
from .candle_quality import (
    _FACTOR,
    CandleDataWarning,
    CandleGaps,
    DroppedCandle,
    _anomalies,
    _dropped_text,
    _gaps,
    _gaps_text,
    _iso,
    _without,
)
from .candle_transfer import (
    Columns,
    active_spill,
    cached_source,
    decode_columns,
    encode_columns,
    read_spilled,
    remember_source,
)

__all__ = [
    "ArrayLike",
    "CandleDataWarning",
    "CandleGaps",
    "CandleInput",
    "CsvCandles",
    "DroppedCandle",
    "MemoryCandles",
    "UnknownSymbolError",
    "bundled_sample_path",
    "resolve_sample_name",
]


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS = timedelta(milliseconds=1)

# (open times, candles, step ms, first open time, candle count when gap-free else 0)
_Series: TypeAlias = tuple[list[int], list[Candle], int, int, int]
# (1m open times, first open time, count when gap-free else 0, then (hi, lo) prefix sums of
#  typical * volume, of volume and of typical price)
_Prefix: TypeAlias = tuple[
    list[int], int, int, list[float], list[float], list[float], list[float], list[float], list[float]
]


class MemoryCandles:
    """1-minute candles of one or more symbols, served at any interval of `CANDLE_INTERVALS`.

    Implements `CandleSource` (await it as an exchange's `get_candles`) and `SyncCandleSource` (the
    engine's fast path). Inputs are validated here once, with errors naming the symbol, the row, the
    field and the value, because the engine will not look at these candles again.
    """

    prices_persist = True
    """`average_price` is a pure read of memory and answers at every time after the symbol's first
    closed candle (gaps included): lets a backtest skip idle frames nobody observes (`engine/sources.py`)."""

    def __init__(self, candles: Mapping[str, CandleInput], *, anomaly_factor: float | None = _FACTOR) -> None:
        self._init_storage(anomaly_factor)
        if not isinstance(candles, Mapping):
            raise CandleError(
                f"{type(self).__name__} expects a mapping symbol -> candles, got {type(candles).__name__}; "
                "use MemoryCandles.from_candles(symbol, candles) for one symbol"
            )
        for symbol, data in candles.items():
            _check_symbol(symbol)
            raw = _raw_columns(symbol, data)
            self._add(symbol, raw, _memory_where(symbol), f"{symbol} input")

    @classmethod
    def from_candles(
        cls, symbol: str, candles: CandleInput, *, anomaly_factor: float | None = _FACTOR
    ) -> MemoryCandles:
        """One symbol's candles without the mapping; always a plain `MemoryCandles`."""
        return MemoryCandles({symbol: candles}, anomaly_factor=anomaly_factor)

    # -- introspection -----------------------------------------------------------------------------

    @property
    def symbols(self) -> tuple[str, ...]:
        """The symbols held, in load order."""
        return tuple(self._series)

    def first_timestamp(self, symbol: str) -> int:
        """Open time (ms) of the symbol's first 1m candle: where a backtest frame can start."""
        return self._base(symbol)[0][0]

    def last_timestamp(self, symbol: str) -> int:
        """Open time (ms) of the symbol's last 1m candle: the data closes one minute after it."""
        return self._base(symbol)[0][-1]

    def __repr__(self) -> str:
        parts = []
        for symbol, by_interval in self._series.items():
            ts = by_interval["1m"][0]
            parts.append(f"{symbol}: {len(ts)} 1m candles {_iso(ts[0])} .. {_iso(ts[-1])}")
        return f"{type(self).__name__}({'; '.join(parts)})"

    # -- CandleSource ------------------------------------------------------------------------------

    async def __call__(self, symbol: str, interval: str, since: datetime | int, limit: int) -> list[Candle]:
        """Up to `limit` candles of `interval` opening at or after `since` (a naive datetime is UTC)."""
        return self.next_candles(symbol, interval, _since_ms(since), limit)

    # -- SyncCandleSource (hot path: no validation beyond what an error message needs) -------------

    def closed_candles(self, symbol: str, interval: str, when_ms: int, limit: int) -> list[Candle]:
        """The newest `limit` candles with ts + step <= `when_ms`, ascending; a fresh list.

        Gap-free series (the usual case) find the end by arithmetic instead of `bisect`: a third
        of the call's cost on 130k candles.
        """
        try:
            ts, candles, step, t0, dense = self._series[symbol][interval]
        except KeyError:
            ts, candles, step, t0, dense = self._resolve(symbol, interval)
        if limit < 1:
            raise CandleError(f"limit must be >= 1, got {limit!r}")
        if dense:
            end = (when_ms - t0) // step
            if end > dense:
                end = dense
            elif end < 0:
                end = 0
        else:
            end = bisect_right(ts, when_ms - step)
        start = end - limit
        return candles[start if start > 0 else 0 : end]

    def next_candles(self, symbol: str, interval: str, since_ms: int, limit: int) -> list[Candle]:
        """Up to `limit` candles with open time >= `since_ms`, ascending; a fresh list."""
        try:
            ts, candles, step, t0, dense = self._series[symbol][interval]
        except KeyError:
            ts, candles, step, t0, dense = self._resolve(symbol, interval)
        if limit < 1:
            raise CandleError(f"limit must be >= 1, got {limit!r}")
        if dense:
            start = (t0 - since_ms) // step  # minus the index, rounded up
            start = -start if start < 0 else 0
        else:
            start = bisect_left(ts, since_ms)
        return candles[start : start + limit]

    def average_price(self, symbol: str, when_ms: int, count: int) -> float | None:
        """VWAP of the newest `count` 1m candles closed by `when_ms`, in O(1).

        Window sums are differences of double-double prefix sums (a running float sum plus the
        running sum of its exact rounding errors), so even a one-minute window at the end of 130k
        candles comes out to within a few ulps of direct summation instead of losing ~8 digits to
        the size of the running total.
        """
        try:
            ts, t0, dense, pv_hi, pv_lo, v_hi, v_lo, tp_hi, tp_lo = self._prefix[symbol]
        except KeyError:
            ts, t0, dense, pv_hi, pv_lo, v_hi, v_lo, tp_hi, tp_lo = self._build_prefix(symbol)
        if count < 1:
            raise CandleError(f"count must be >= 1, got {count!r}")
        if dense:
            end = (when_ms - t0) // MINUTE_MS
            if end > dense:
                end = dense
            elif end <= 0:
                return None
        else:
            end = bisect_right(ts, when_ms - MINUTE_MS)
            if end == 0:
                return None
        start = end - count
        if start < 0:
            start = 0
        volume = (v_hi[end] - v_hi[start]) + (v_lo[end] - v_lo[start])
        if volume > 0.0:
            return ((pv_hi[end] - pv_hi[start]) + (pv_lo[end] - pv_lo[start])) / volume
        return ((tp_hi[end] - tp_hi[start]) + (tp_lo[end] - tp_lo[start])) / (end - start)

    # -- pickling ----------------------------------------------------------------------------------

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickle as typed columns and a content token, or as a spill file's path (`candle_transfer`).

        Per-candle pickling cost ~0.4 s per 300k candles, paid again for every job a parallel
        sweep sent; columns cost milliseconds, and a process that has already rebuilt the token
        reuses that instance (and the aggregates it has cached) instead of unpickling again.
        Attributes a subclass adds travel as ordinary pickle state.
        """
        extra = {k: v for k, v in self.__dict__.items() if k not in _STORE_ATTRIBUTES} or None
        spill = active_spill()
        if spill is not None:
            path = spill.path_for(self._token, lambda: pickle.dumps(self._payload(), pickle.HIGHEST_PROTOCOL))
            return (_rebuild_spilled, (type(self), self._token, str(path)), extra)
        return (_rebuild_memory, (type(self), self._token, self._payload()), extra)

    def _payload(self) -> tuple[Any, ...]:
        columns: list[Columns] = []
        for by_interval in self._series.values():
            ts, candles, *_ = by_interval["1m"]
            o, h, lo, c, v = (list(map(attrgetter(f), candles)) for f in FIELDS[1:])
            columns.append((ts, o, h, lo, c, v))
        return (sys.byteorder, self._anomaly_factor, tuple(self._series), encode_columns(columns),
                dict(self.dropped), dict(self.gaps), list(self.load_warnings))

    # -- internals ---------------------------------------------------------------------------------

    def _init_storage(self, anomaly_factor: float | None) -> None:
        if anomaly_factor is not None and (
            isinstance(anomaly_factor, bool) or not isinstance(anomaly_factor, int | float)
            or not math.isfinite(anomaly_factor) or anomaly_factor <= 1
        ):
            raise CandleError(f"anomaly_factor: expected a finite number > 1 or None (off), got {anomaly_factor!r}")
        self._anomaly_factor = anomaly_factor
        # symbol -> interval -> series; "1m" is the validated source of truth, the rest derive from it.
        self._series: dict[str, dict[str, _Series]] = {}
        # symbol -> 1m prefix sums for `average_price`, built on its first call for the symbol.
        self._prefix: dict[str, _Prefix] = {}
        self.dropped: dict[str, tuple[DroppedCandle, ...]] = {}
        """Per symbol, the candles dropped at load as price anomalies (only symbols that lost some)."""
        self.gaps: dict[str, CandleGaps] = {}
        """Per symbol, the holes in the loaded 1m series (only symbols that have some)."""
        self.load_warnings: list[str] = []
        """Every load-time warning text, for the engine to log when the exchange is first used."""
        self._token = uuid.uuid4().hex
        """Names this content in other processes (`candle_transfer`): the candles never change after load."""

    def _add(self, symbol: str, raw: list[list[Any]], where: _Where, label: str) -> None:
        if symbol in self._series:
            raise CandleError(f"{label}: symbol {symbol!r} is given twice")
        ts, o, h, lo, c, v = _convert(raw, where)
        if not ts:
            raise CandleError(f"{label}: no candles")
        _validate(ts, o, h, lo, c, v, where)
        _check_one_minute(ts, label)
        rows: list[int] | None = None  # input row of each kept candle, when some were dropped
        factor = self._anomaly_factor
        dropped = _anomalies(ts, o, h, lo, c, factor) if factor is not None else []
        if dropped:
            assert factor is not None
            if len(dropped) == len(ts):
                raise CandleError(f"{label}: every candle is a price anomaly; nothing left to serve")
            self.dropped[symbol] = tuple(dropped)
            self._warn(_dropped_text(symbol, label, dropped, factor, where))
            rows, (ts, o, h, lo, c, v) = _without(dropped, (ts, o, h, lo, c, v))
        gaps = _gaps(ts, rows)
        if gaps is not None:
            self.gaps[symbol] = gaps
            self._warn(_gaps_text(symbol, label, gaps, where))
        candles = list(map(Candle, ts, o, h, lo, c, v))
        self._series[symbol] = {"1m": _series(ts, candles, MINUTE_MS)}

    def _warn(self, text: str) -> None:
        """A Python warning at load (visible by default, filterable by category) and kept for the engine."""
        self.load_warnings.append(text)
        warnings.warn(text, CandleDataWarning, stacklevel=4)

    def _base(self, symbol: str) -> _Series:
        try:
            return self._series[symbol]["1m"]
        except KeyError:
            raise self._unknown(symbol) from None

    def _unknown(self, symbol: str) -> UnknownSymbolError:
        known = ", ".join(self._series) or "none"
        return UnknownSymbolError(f"no candles for symbol {symbol!r}; known symbols: {known}")

    def _resolve(self, symbol: str, interval: str) -> _Series:
        """Cache miss: aggregate the interval once (or explain why the lookup cannot succeed)."""
        by_interval = self._series.get(symbol)
        if by_interval is None:
            raise self._unknown(symbol)
        minutes = CANDLE_INTERVALS.get(interval) if isinstance(interval, str) else None
        if minutes is None:
            raise CandleError(f"unknown interval {interval!r}; expected one of {', '.join(CANDLE_INTERVALS)}")
        series = _aggregate(by_interval["1m"], minutes * MINUTE_MS)
        by_interval[interval] = series
        return series

    def _build_prefix(self, symbol: str) -> _Prefix:
        ts, candles, _, t0, dense = self._base(symbol)
        highs, lows, closes, vols = (list(map(attrgetter(f), candles)) for f in FIELDS[2:])
        # Same operation order as a direct (h + l + c) / 3 * v, so the terms are bit-identical.
        typical = list(map(truediv, map(add, map(add, highs, lows), closes), repeat(3.0)))
        weighted = list(map(mul, typical, vols))
        prefix = (ts, t0, dense, *_dd_prefix(weighted), *_dd_prefix(vols), *_dd_prefix(typical))
        self._prefix[symbol] = prefix
        return prefix


class CsvCandles(MemoryCandles):
    """1-minute candles read from CSV files (`timestamp_ms,open,high,low,close,volume`, plain or .gz).

    `CsvCandles(path)` takes the symbol from the file name up to the first '-'
    (`BTCUSDT-1m-7d.csv` -> `BTCUSDT`); `CsvCandles({"BTCUSDT": path, ...})` names them explicitly.
    The bare name of the bundled sample (`BTCUSDT-1m-7d.csv` or `.csv.gz`) loads the bundled file when
    no file of that name is in the working directory, so examples run as written anywhere.
    Errors add the file line to the candle index so the row can be found in an editor.
    """

    def __init__(
        self,
        source: str | PathLike[str] | Mapping[str, str | PathLike[str]] | Iterable[str | PathLike[str]],
        symbol: str | None = None,
        *,
        anomaly_factor: float | None = _FACTOR,
    ) -> None:
        self._init_storage(anomaly_factor)
        items: list[tuple[str, Path]]
        if isinstance(source, str | PathLike):
            path = Path(source)
            items = [(symbol if symbol is not None else _symbol_from_name(path), path)]
        elif symbol is not None:
            raise CandleError("symbol= applies to a single path; give a mapping symbol -> path instead")
        elif isinstance(source, Mapping):
            items = [(sym, Path(p)) for sym, p in source.items()]
        else:
            items = [(_symbol_from_name(Path(p)), Path(p)) for p in source]
        self.paths: dict[str, Path] = {}
        self._fingerprints: dict[str, _Fingerprint] = {}
        for sym, given in items:
            _check_symbol(sym)
            path = resolve_sample_name(given)
            fingerprint = _fingerprint(path)  # before the read: a file replaced meanwhile shows as changed
            raw, first_line = _read_csv(path)
            self._add(sym, raw, _file_where(sym, first_line, path.name), path.name)
            self.paths[sym] = path
            self._fingerprints[sym] = fingerprint

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickle as the files' (path, mtime, size), not as the candles: a worker process rebuilds the
        source from the files once and then serves every later job from its own per-process cache.

        A parallel sweep sends the same source with every job; pickling 130k candles per job would
        cost more than many backtests. A worker whose file differs from the one loaded here (edited,
        replaced) refuses it instead of silently computing on other data. The rebuilt object is of
        `type(self)` built with the same paths and `anomaly_factor`, so a subclass with another
        constructor must define its own `__reduce__`. To ship the candles themselves (to machines
        without the files) use `in_memory()`.

        Inside `spill_candles_to` (the local pool pickles its jobs there) it pickles as its columns in
        the spill file instead, as a `MemoryCandles` does, and is rebuilt as the same class with the
        same `paths`: this process has the candles loaded already, writing their columns once costs
        ~0.2 s, and a worker decodes them in ~0.1 s where parsing the gzipped CSV again took ~1.3 s
        (90 days of BTCUSDT and ETHUSDT). The workers then compute on exactly the data loaded here.
        """
        if active_spill() is not None:
            return super().__reduce__()
        return (_rebuild_csv, (type(self), tuple(self._fingerprints.values()), tuple(self._fingerprints),
                               self._anomaly_factor))

    def in_memory(self) -> MemoryCandles:
        """The same candles as a `MemoryCandles`, which pickles by value (the candles, not the paths):
        what to send to a machine that does not have the files, e.g. a Ray cluster's other nodes."""
        copy = MemoryCandles.__new__(MemoryCandles)
        copy._init_storage(self._anomaly_factor)
        copy._series = {symbol: {"1m": by_interval["1m"]} for symbol, by_interval in self._series.items()}
        copy.dropped = dict(self.dropped)
        copy.gaps = dict(self.gaps)
        copy.load_warnings = list(self.load_warnings)
        return copy


# -- in-memory sources rebuilt from a pickle ------------------------------------------------------------

_STORE_ATTRIBUTES = frozenset({"_anomaly_factor", "_series", "_prefix", "dropped", "gaps", "load_warnings", "_token"})

_M = TypeVar("_M", bound=MemoryCandles)


def _rebuild_memory(cls: type[_M], token: str, payload: tuple[Any, ...]) -> _M:
    """Unpickle a `MemoryCandles`: this process's instance for `token`, rebuilt from columns once."""
    cached = cached_source(cls, token)
    if cached is not None:
        return cached
    byteorder, factor, symbols, encoded, dropped, gaps, load_warnings = payload
    source = cls.__new__(cls)
    source._init_storage(factor)
    source._token = token
    for symbol, (ts, o, h, lo, c, v) in zip(symbols, decode_columns(encoded, byteorder), strict=True):
        source._series[symbol] = {"1m": _series(ts, list(map(Candle, ts, o, h, lo, c, v)), MINUTE_MS)}
    source.dropped, source.gaps, source.load_warnings = dict(dropped), dict(gaps), list(load_warnings)
    return remember_source(cls, token, source)


def _rebuild_spilled(cls: type[_M], token: str, path: str) -> _M:
    """Unpickle a `MemoryCandles` pickled inside `spill_candles_to`: the file is read on first use only."""
    cached = cached_source(cls, token)
    if cached is not None:
        return cached
    return _rebuild_memory(cls, token, read_spilled(path))


# -- per-process cache of CSV sources rebuilt from a pickle ----------------------------------------------

_Fingerprint: TypeAlias = tuple[str, int, int]
"""(resolved path, mtime in ns, size in bytes): a file is taken to be unchanged while these are."""

_CSV_CACHE: dict[tuple[Any, ...], CsvCandles] = {}
_CSV_CACHE_MAX = 16
"""Distinct sources a worker keeps (a sweep uses a handful); the oldest goes first beyond this."""


def _fingerprint(path: Path) -> _Fingerprint:
    try:
        stat = path.stat()
    except OSError as exc:
        raise CandleError(f"{path}: cannot read the candle file: {exc}") from exc
    return str(path.resolve()), stat.st_mtime_ns, stat.st_size


def _rebuild_csv(
    cls: type[CsvCandles], fingerprints: tuple[_Fingerprint, ...], symbols: tuple[str, ...],
    anomaly_factor: float | None,
) -> CsvCandles:
    """Unpickle a `CsvCandles`: this process's copy of the same files, loaded on first use only."""
    key = (cls, fingerprints, symbols, anomaly_factor)
    cached = _CSV_CACHE.get(key)
    if cached is not None:
        return cached
    for symbol, (path, mtime_ns, size) in zip(symbols, fingerprints, strict=True):
        _, now_mtime_ns, now_size = _fingerprint(Path(path))
        if (now_mtime_ns, now_size) != (mtime_ns, size):
            raise CandleError(
                f"{path} ({symbol}) changed after it was loaded (mtime or size differs here); "
                "results would not match the data the job was built on; reload the source and resubmit"
            )
    with warnings.catch_warnings():  # the submitting process already warned about gaps and anomalies
        warnings.simplefilter("ignore", CandleDataWarning)
        source = cls({symbol: fp[0] for symbol, fp in zip(symbols, fingerprints, strict=True)},
                     anomaly_factor=anomaly_factor)
    while len(_CSV_CACHE) >= _CSV_CACHE_MAX:
        del _CSV_CACHE[next(iter(_CSV_CACHE))]
    _CSV_CACHE[key] = source
    return source


# -- serving -------------------------------------------------------------------------------------------


def _aggregate(base: _Series, step: int) -> _Series:
    """Epoch-aligned buckets of 1m candles; per-bucket max/min/fsum run in C over list slices."""
    ts, candles, base_step, _, _ = base
    if step == base_step:
        return base
    n = len(ts)
    keys = list(map(sub, ts, map(mod, ts, repeat(step))))
    starts = [0, *compress(range(1, n), map(ne, islice(keys, 1, None), keys))]
    ends = [*starts[1:], n]
    opens, highs, lows, closes, vols = (list(map(attrgetter(f), candles)) for f in FIELDS[1:])
    fsum = math.fsum
    out = [
        Candle(keys[s], opens[s], max(highs[s:e]), min(lows[s:e]), closes[e - 1], fsum(vols[s:e]))
        for s, e in zip(starts, ends, strict=True)
    ]
    return _series([keys[s] for s in starts], out, step)


def _series(ts: list[int], candles: list[Candle], step: int) -> _Series:
    n = len(ts)
    dense = n if ts[-1] - ts[0] == (n - 1) * step else 0  # ascending and on the grid: no gaps
    return ts, candles, step, ts[0], dense


def _dd_prefix(values: list[float]) -> tuple[list[float], list[float]]:
    """Prefix sums as (hi, lo) with hi + lo the near-exact sum, via Knuth's TwoSum on every step.

    hi is the ordinary running float sum; lo accumulates each addition's exact rounding error, so
    hi[b] - hi[a] + (lo[b] - lo[a]) keeps full precision however large the running total gets.
    """
    hi = list(accumulate(values, initial=0.0))
    before, after = hi[:-1], hi[1:]
    b_virtual = list(map(sub, after, before))
    errors = map(add, map(sub, before, map(sub, after, b_virtual)), map(sub, values, b_virtual))
    lo = list(accumulate(errors, initial=0.0))
    return hi, lo


def _since_ms(since: datetime | int) -> int:
    """Milliseconds, rounded up: candles open at or after `since`, so a partial ms must not admit one."""
    if isinstance(since, int):
        return since
    if not isinstance(since, datetime):
        raise CandleError(f"since must be a datetime, got {type(since).__name__}: {since!r}")
    if since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    return -((_EPOCH - since) // _ONE_MS)

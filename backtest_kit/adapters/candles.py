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
"""

from __future__ import annotations

import gzip
import math
import warnings
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from importlib.resources import files
from itertools import accumulate, compress, islice, repeat
from operator import add, attrgetter, eq, ge, le, lt, mod, mul, ne, sub, truediv
from os import PathLike
from pathlib import Path
from typing import Any, Protocol, TypeAlias

from ..engine.config import DEFAULT_CONFIG
from ..engine.errors import CandleError, UnknownSymbolError
from ..engine.intervals import CANDLE_INTERVALS, MINUTE_MS
from ..engine.models import Candle

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

FIELDS = ("timestamp", "open", "high", "low", "close", "volume")
CSV_HEADER = ("timestamp_ms", "open", "high", "low", "close", "volume")
_SAMPLE_NAME = "BTCUSDT-1m-7d.csv.gz"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS = timedelta(milliseconds=1)
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


class ArrayLike(Protocol):
    """Anything with numpy's `tolist()`: lets callers pass arrays without numpy being a dependency."""

    def tolist(self) -> Any: ...


CandleInput: TypeAlias = (
    Sequence[Candle] | Sequence[Mapping[str, Any]] | Sequence[Sequence[Any]] | Mapping[str, Any] | ArrayLike
)
"""Candles of one symbol: `Candle`s, mappings or 6-sequences per row, an (n, 6) array, or a mapping
of six columns (`timestamp` or `timestamp_ms`, `open`, `high`, `low`, `close`, `volume`)."""

_Columns: TypeAlias = tuple[list[int], list[float], list[float], list[float], list[float], list[float]]
# (open times, candles, step ms, first open time, candle count when gap-free else 0)
_Series: TypeAlias = tuple[list[int], list[Candle], int, int, int]
# (1m open times, first open time, count when gap-free else 0, then (hi, lo) prefix sums of
#  typical * volume, of volume and of typical price)
_Prefix: TypeAlias = tuple[
    list[int], int, int, list[float], list[float], list[float], list[float], list[float], list[float]
]
_Where: TypeAlias = Callable[[int], str]


def bundled_sample_path() -> Path:
    """The bundled 7-day BTCUSDT 1m sample, so examples and smoke tests run without a download."""
    resource = files("backtest_kit") / "data" / _SAMPLE_NAME
    if isinstance(resource, Path):
        return resource
    # Zipped installs give a non-filesystem Traversable; fall back to the source tree next to us.
    return Path(__file__).resolve().parents[1] / "data" / _SAMPLE_NAME


def resolve_sample_name(path: str | PathLike[str]) -> Path:
    """`path`, or the bundled sample when `path` is its bare name and no such file exists here.

    Examples and the README say `CsvCandles("BTCUSDT-1m-7d.csv")`, the name of the project's shared
    data file the sample is a copy of; a fresh directory has no such file. Only a bare file name
    qualifies (a name with a directory stays a "file not found" error), and a real file always wins.
    """
    path = Path(path)
    if str(path) in (_SAMPLE_NAME, _SAMPLE_NAME.removesuffix(".gz")) and not path.exists():
        return bundled_sample_path()
    return path


class MemoryCandles:
    """1-minute candles of one or more symbols, served at any interval of `CANDLE_INTERVALS`.

    Implements `CandleSource` (await it as an exchange's `get_candles`) and `SyncCandleSource` (the
    engine's fast path). Inputs are validated here once, with errors naming the symbol, the row, the
    field and the value, because the engine will not look at these candles again.
    """

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
        for sym, given in items:
            _check_symbol(sym)
            path = resolve_sample_name(given)
            raw, first_line = _read_csv(path)
            self._add(sym, raw, _file_where(sym, first_line, path.name), path.name)
            self.paths[sym] = path


# -- loading -----------------------------------------------------------------------------------------


def _check_symbol(symbol: object) -> None:
    if not isinstance(symbol, str) or not symbol:
        raise CandleError(f"symbol must be a non-empty string, got {symbol!r}")


def _memory_where(symbol: str) -> _Where:
    return lambda i: f"{symbol} candle #{i}"


def _file_where(symbol: str, first_line: int, name: str) -> _Where:
    return lambda i: f"{symbol} candle #{i} (line {i + first_line} of {name})"


def _symbol_from_name(path: Path) -> str:
    name = path.name
    for suffix in (".gz", ".csv"):
        name = name.removesuffix(suffix)
    symbol = name.split("-", 1)[0]
    if not symbol:
        raise CandleError(f"cannot tell the symbol from file name {path.name!r}; pass symbol=")
    return symbol


def _raw_columns(symbol: str, data: Any) -> list[list[Any]]:
    """Six columns of unconverted values, taking the C-speed route for homogeneous inputs."""
    if isinstance(data, Mapping):
        return _mapping_columns(symbol, data)
    if hasattr(data, "tolist") and not isinstance(data, Sequence):
        data = data.tolist()  # numpy (n, 6) array -> list of row lists
    if isinstance(data, str | bytes) or not isinstance(data, Iterable):
        raise CandleError(f"{symbol}: expected a sequence of candles, got {type(data).__name__}")
    rows = data if isinstance(data, list | tuple) else list(data)
    kinds = set(map(type, rows))
    if kinds == {Candle}:
        return [list(map(attrgetter(f), rows)) for f in FIELDS]
    if kinds and kinds <= {tuple, list} and set(map(len, rows)) == {6}:
        return [list(col) for col in zip(*rows, strict=True)]
    cols: list[list[Any]] = [[] for _ in FIELDS]
    where = _memory_where(symbol)
    for i, row in enumerate(rows):
        for col, value in zip(cols, _row_values(row, where, i), strict=True):
            col.append(value)
    return cols


def _mapping_columns(symbol: str, data: Mapping[str, Any]) -> list[list[Any]]:
    cols = []
    for field in FIELDS:
        key = "timestamp_ms" if field == "timestamp" and field not in data else field
        if key not in data:
            raise CandleError(
                f"{symbol}: column mapping lacks {field!r} (has {', '.join(map(repr, data))}); "
                "expected a mapping of six columns or a sequence of candles"
            )
        col = data[key]
        col = col.tolist() if hasattr(col, "tolist") else list(col)
        if not isinstance(col, list):
            raise CandleError(f"{symbol}: column {key!r} is not one-dimensional")
        cols.append(col)
    lengths = {f: len(c) for f, c in zip(FIELDS, cols, strict=True)}
    if len(set(lengths.values())) > 1:
        raise CandleError(f"{symbol}: columns differ in length: {lengths}")
    return cols


def _row_values(row: Any, where: _Where, i: int) -> tuple[Any, ...]:
    if isinstance(row, Candle):
        return (row.timestamp, row.open, row.high, row.low, row.close, row.volume)
    if isinstance(row, Mapping):
        values = []
        for field in FIELDS:
            key = "timestamp_ms" if field == "timestamp" and field not in row else field
            if key not in row:
                raise CandleError(f"{where(i)}: missing {field} (keys: {', '.join(map(repr, row))})")
            values.append(row[key])
        return tuple(values)
    if hasattr(row, "tolist"):
        row = row.tolist()
    if isinstance(row, Sequence) and not isinstance(row, str | bytes):
        if len(row) != 6:
            raise CandleError(
                f"{where(i)}: expected 6 values (timestamp, open, high, low, close, volume), got {len(row)}"
            )
        return tuple(row)
    raise CandleError(f"{where(i)}: expected a Candle, a mapping or a 6-sequence, got {type(row).__name__}: {row!r}")


def _read_csv(path: Path) -> tuple[list[list[Any]], int]:
    """Columns of strings plus the file line of the first data row (for error messages).

    One join and one split over the whole text, then strided slices: ~2.5x faster than splitting
    every line and transposing, which matters for the 130k-row files.
    """
    try:
        if path.name.endswith(".gz"):
            with gzip.open(path, "rt", encoding="utf-8") as fh:
                text = fh.read()
        else:
            text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise CandleError(f"{path.name}: not a UTF-8 text file ({exc})") from None
    lines = text.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise CandleError(f"{path.name}: the file is empty")
    first = lines[0].lstrip("\ufeff").strip()
    names: Sequence[str] = CSV_HEADER
    order = list(range(6))
    first_line = 1
    if not first or first[0] not in "0123456789-+":
        names = [n.strip().lower() for n in first.split(",")]
        order = []
        for field, csv_name in zip(FIELDS, CSV_HEADER, strict=True):
            if csv_name in names:
                order.append(names.index(csv_name))
            elif field in names:
                order.append(names.index(field))
            else:
                raise CandleError(
                    f"{path.name} line 1: header lacks {csv_name!r} (expected {','.join(CSV_HEADER)}, got {first!r})"
                )
        del lines[0]
        first_line = 2
    ncols = len(names)
    if set(map(str.count, lines, repeat(","))) != {ncols - 1}:
        for i, line in enumerate(lines):
            got = line.count(",") + 1
            if got < ncols:
                missing = ", ".join(names[got:]) if line.strip() else "every field (blank line)"
                raise CandleError(
                    f"{path.name} line {i + first_line}: missing {missing} ({got} of {ncols} fields: {line!r})"
                )
            if got > ncols:
                raise CandleError(f"{path.name} line {i + first_line}: {got} fields, expected {ncols}: {line!r}")
    if not lines:
        return [[] for _ in FIELDS], first_line
    flat = ",".join(lines).split(",")
    return [flat[k::ncols] for k in order], first_line


def _convert(raw: list[list[Any]], where: _Where) -> _Columns:
    """Typed columns: bulk `int`/`float` at C speed, a per-value retry only to word an error."""
    ts_raw = raw[0]
    kinds = set(map(type, ts_raw))
    ts: list[int]
    if kinds <= {int}:
        ts = ts_raw
    elif kinds <= {str}:
        try:
            ts = list(map(int, ts_raw))
        except ValueError:
            ts = [_to_timestamp(value, where, i) for i, value in enumerate(ts_raw)]
    elif kinds <= {int, float}:  # e.g. numpy float64 arrays via tolist(); int() would truncate 1.5
        try:
            ts = list(map(int, ts_raw))
        except (OverflowError, ValueError):  # inf / nan
            ts = []
        if len(ts) != len(ts_raw) or not all(map(eq, ts_raw, ts)):
            ts = [_to_timestamp(value, where, i) for i, value in enumerate(ts_raw)]
    else:
        ts = [_to_timestamp(value, where, i) for i, value in enumerate(ts_raw)]
    floats: list[list[float]] = []
    for field, col in zip(FIELDS[1:], raw[1:], strict=True):
        try:
            floats.append(list(map(float, col)))
        except (TypeError, ValueError):
            for i, value in enumerate(col):
                try:
                    float(value)
                except (TypeError, ValueError):
                    raise CandleError(f"{where(i)}: {field} {value!r} is not a number") from None
            raise
    return ts, floats[0], floats[1], floats[2], floats[3], floats[4]


def _to_timestamp(value: Any, where: _Where, i: int) -> int:
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            pass
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise CandleError(f"{where(i)}: timestamp {value!r} is not a number") from None
    if not number.is_integer():
        raise CandleError(f"{where(i)}: timestamp {value!r} is not an integer number of ms")
    return int(number)


def _validate(
    ts: list[int],
    o: list[float],
    h: list[float],
    lo: list[float],
    c: list[float],
    v: list[float],
    where: _Where,
) -> None:
    """Raise on the first bad row; the all-good case is checked in bulk at C speed first."""
    isfinite = math.isfinite
    good = (
        all(isfinite(sum(col)) and min(col) > 0.0 for col in (o, h, lo, c))  # sum is nan/inf if any is
        and isfinite(sum(v))
        and min(v) >= 0.0
        and all(map(ge, h, o))
        and all(map(ge, h, c))
        and all(map(le, lo, o))
        and all(map(le, lo, c))
        and not any(map(mod, ts, repeat(MINUTE_MS)))
        and all(map(lt, ts, islice(ts, 1, None)))
    )
    if good:
        return
    previous: int | None = None
    for i, t in enumerate(ts):
        if t % MINUTE_MS:
            hint = " (it looks like seconds; timestamps are in ms)" if abs(t) < 10**11 else ""
            raise CandleError(f"{where(i)}: timestamp {t} is not on the 1-minute grid{hint}")
        if previous is not None and t <= previous:
            what = "repeats" if t == previous else "is before"
            raise CandleError(f"{where(i)}: timestamp {t} {what} the previous candle's {previous}")
        previous = t
        for field, value in (("open", o[i]), ("high", h[i]), ("low", lo[i]), ("close", c[i])):
            if not (isfinite(value) and value > 0.0):
                raise CandleError(f"{where(i)}: {field} {value!r} is not a finite positive price")
        if not (isfinite(v[i]) and v[i] >= 0.0):
            raise CandleError(f"{where(i)}: volume {v[i]!r} is not a finite non-negative number")
        top, bottom = max(o[i], c[i]), min(o[i], c[i])
        if h[i] < top:
            raise CandleError(f"{where(i)}: high {h[i]!r} < max(open, close) {top!r}")
        if lo[i] > bottom:
            raise CandleError(f"{where(i)}: low {lo[i]!r} > min(open, close) {bottom!r}")
    # Only an overflowing sum of huge-but-finite values gets here: the rows are fine.


def _check_one_minute(ts: list[int], label: str) -> None:
    """Reject data of a coarser interval: ticking minute by minute through 5m candles would be wrong."""
    if len(ts) < 2:
        return
    step = math.gcd(*map(sub, islice(ts, 1, None), ts))
    if step == MINUTE_MS:
        return
    minutes = step // MINUTE_MS
    name = next((n for n, m in CANDLE_INTERVALS.items() if m == minutes), f"{minutes}-minute")
    raise CandleError(
        f"{label} holds {name} candles (every timestamp step is a multiple of {step} ms); the engine needs 1m candles"
    )


# -- data quality ------------------------------------------------------------------------------------


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


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M")

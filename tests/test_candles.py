"""MemoryCandles / CsvCandles: loading, validation errors, aggregation, the sync fast path, VWAP."""

from __future__ import annotations

import csv
import gzip
import hashlib
import math
import random
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from functools import cache
from itertools import pairwise
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backtest_kit.adapters.candles import (
    CsvCandles,
    MemoryCandles,
    UnknownSymbolError,
    bundled_sample_path,
)
from backtest_kit.engine.errors import CandleError
from backtest_kit.engine.intervals import CANDLE_INTERVALS, MINUTE_MS
from backtest_kit.engine.models import Candle
from backtest_kit.engine.sources import CandleSource, SyncCandleSource

T0 = 1_747_699_200_000  # 2025-05-20 00:00 UTC, first candle of the real files
DATA = Path(__file__).resolve().parent / "data"  # small real-data slices (see data/README.md)
ETH_DAY = DATA / "ETHUSDT-1m-2025-05-20.csv.gz"
BTC_5M_WEEK = DATA / "BTCUSDT-5m-2025-05-20_2025-05-26.csv.gz"
# sha256 of the plain CSV the bundled sample was compressed from (the shared set's BTCUSDT-1m-7d.csv)
SAMPLE_CSV_SHA256 = "9adfb55c094c4153b5a06a7c3cbc0f2ffa5576df833f2c0433b19ed283114557"
HEADER = "timestamp_ms,open,high,low,close,volume"
INTERVALS = sorted(CANDLE_INTERVALS)


def read_rows(path: Path) -> list[Candle]:
    """Reference reader: the stdlib csv module, independent of the adapter's fast parser."""
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", newline="") as fh:
        reader = csv.reader(fh)
        assert next(reader) == HEADER.split(",")
        return [Candle(int(r[0]), *map(float, r[1:])) for r in reader]


@cache
def sample() -> MemoryCandles:
    """The bundled 7-day sample (always present, so property tests never skip)."""
    return CsvCandles(bundled_sample_path())


@cache
def gappy() -> MemoryCandles:
    """The sample with outages carved out, so the bisect path (not the gap-free arithmetic) is used."""
    base = sample().next_candles("BTCUSDT", "1m", 0, 1_000_000)
    rng = random.Random(7)
    holes = {rng.randrange(len(base)) for _ in range(40)}
    kept = [c for i, c in enumerate(base) if not any(0 <= i - h < 1 + h % 90 for h in holes)]
    return MemoryCandles.from_candles("BTCUSDT", kept)


def write(tmp_path: Path, name: str, lines: Sequence[str]) -> Path:
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path


def good_rows(n: int = 5, start: int = T0, step: int = MINUTE_MS) -> list[str]:
    return [f"{start + i * step},100,101,99,100.5,{1 + i}" for i in range(n)]


# -- loading real data -----------------------------------------------------------------------------


def test_loads_real_7d_csv() -> None:
    path = bundled_sample_path()
    source = CsvCandles(path)
    assert source.symbols == ("BTCUSDT",)
    assert source.paths == {"BTCUSDT": path}
    rows = read_rows(path)
    assert len(rows) == 10_080
    assert source.next_candles("BTCUSDT", "1m", 0, 20_000) == rows
    assert source.first_timestamp("BTCUSDT") == T0
    assert source.last_timestamp("BTCUSDT") == T0 + 10_079 * MINUTE_MS
    assert rows[0] == Candle(T0, 105573.73, 105597.1, 105554.31, 105554.32, 10.82647)


def test_bundled_sample_has_the_same_rows(tmp_path: Path) -> None:
    """The bundled file is the shared set's plain CSV, byte for byte, and loads the same uncompressed."""
    path = bundled_sample_path()
    assert path.is_file() and path.name == "BTCUSDT-1m-7d.csv.gz"
    raw = gzip.decompress(path.read_bytes())
    assert hashlib.sha256(raw).hexdigest() == SAMPLE_CSV_SHA256
    assert path.read_bytes()[4:8] == b"\0\0\0\0"  # gzip mtime 0: reproducible bytes
    csv_path = tmp_path / "BTCUSDT-1m-7d.csv"
    csv_path.write_bytes(raw)
    plain = CsvCandles({"BTCUSDT": csv_path})
    assert sample().next_candles("BTCUSDT", "1m", 0, 20_000) == plain.next_candles("BTCUSDT", "1m", 0, 20_000)


def test_several_files_and_symbol_from_file_name() -> None:
    source = CsvCandles([bundled_sample_path(), ETH_DAY])
    assert source.symbols == ("BTCUSDT", "ETHUSDT")
    assert source.first_timestamp("ETHUSDT") == T0
    assert source.last_timestamp("ETHUSDT") == T0 + (len(read_rows(ETH_DAY)) - 1) * MINUTE_MS
    assert source.next_candles("ETHUSDT", "1m", 0, 10**6) == read_rows(ETH_DAY)
    named = CsvCandles(bundled_sample_path(), symbol="XBT")
    assert named.symbols == ("XBT",)


def test_aggregated_5m_equals_the_real_5m_file() -> None:
    """The bundled 1m week aggregated to 5m equals an independent recording of the same week's 5m candles."""
    one_minute = sample()
    real_5m = read_rows(BTC_5M_WEEK)
    first, last = one_minute.first_timestamp("BTCUSDT"), one_minute.last_timestamp("BTCUSDT")
    expected = [c for c in real_5m if first <= c.timestamp <= last]
    got = one_minute.next_candles("BTCUSDT", "5m", first, len(expected) + 10)
    assert len(expected) == (last - first + MINUTE_MS) // (5 * MINUTE_MS)  # the whole week, no gap
    assert [c.timestamp for c in got] == [c.timestamp for c in expected]
    for mine, real in zip(got, expected, strict=True):
        assert (mine.open, mine.high, mine.low, mine.close) == (real.open, real.high, real.low, real.close)
        assert mine.volume == pytest.approx(real.volume, rel=1e-9, abs=1e-9)


# -- validation ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("row", "needles"),
    [
        (f"{T0 + 2 * MINUTE_MS},100,101,99,nan,1", ["line 4", "candle #2", "close nan"]),
        (f"{T0 + 2 * MINUTE_MS},100,101,99,inf,1", ["line 4", "close inf"]),
        (f"{T0 + 2 * MINUTE_MS},-100,101,99,100,1", ["line 4", "open -100.0", "positive"]),
        (f"{T0 + 2 * MINUTE_MS},0,101,99,100,1", ["line 4", "open 0.0"]),
        (f"{T0 + 2 * MINUTE_MS},100,101,99,100,-1", ["line 4", "volume -1.0"]),
        (f"{T0 + 2 * MINUTE_MS},100,100,101,100,1", ["line 4", "low 101.0 > min(open, close) 100.0"]),
        (f"{T0 + 2 * MINUTE_MS},100,99,98,101,1", ["line 4", "high 99.0 < max(open, close) 101.0"]),
        (f"{T0 + 2 * MINUTE_MS + 1},100,101,99,100,1", ["line 4", "timestamp", "1-minute grid"]),
        (f"{T0},100,101,99,100,1", ["line 4", "timestamp", "before the previous"]),
        (f"{T0 + MINUTE_MS},100,101,99,100,1", ["line 4", "timestamp", "repeats"]),
        (f"{T0 + 2 * MINUTE_MS},100,101,99,100", ["line 4", "missing volume"]),
        (f"{T0 + 2 * MINUTE_MS},100,101,99", ["line 4", "missing close, volume"]),
        (f"{T0 + 2 * MINUTE_MS},100,101,99,100,1,7", ["line 4", "7 fields"]),
        (f"{T0 + 2 * MINUTE_MS},100,abc,99,100,1", ["line 4", "high 'abc' is not a number"]),
        (f"{T0 + 2 * MINUTE_MS}.5,100,101,99,100,1", ["line 4", "timestamp", "not an integer"]),
        ("", ["line 4", "blank line"]),
    ],
)
def test_malformed_row_names_line_field_and_value(tmp_path: Path, row: str, needles: list[str]) -> None:
    lines = [HEADER, *good_rows(2), row, *good_rows(2, start=T0 + 10 * MINUTE_MS)]
    path = write(tmp_path, "BTCUSDT-bad.csv", lines)
    with pytest.raises(CandleError) as info:
        CsvCandles(path)
    message = str(info.value)
    assert "BTCUSDT-bad.csv" in message
    for needle in needles:
        assert needle in message, message


def test_error_message_format(tmp_path: Path) -> None:
    rows = good_rows(20)
    rows[17] = f"{T0 + 17 * MINUTE_MS},101,99,98,100,1"
    with pytest.raises(CandleError) as info:
        CsvCandles(write(tmp_path, "x.csv", [HEADER, *rows]), symbol="BTCUSDT")
    assert str(info.value) == "BTCUSDT candle #17 (line 19 of x.csv): high 99.0 < max(open, close) 101.0"


def test_seconds_timestamps_get_a_hint(tmp_path: Path) -> None:
    rows = [f"{T0 // 1000 + i * 60},100,101,99,100,1" for i in range(3)]
    with pytest.raises(CandleError, match="looks like seconds"):
        CsvCandles(write(tmp_path, "BTCUSDT.csv", [HEADER, *rows]))


def test_five_minute_file_is_rejected(tmp_path: Path) -> None:
    path = write(tmp_path, "BTCUSDT-5m.csv", [HEADER, *good_rows(10, step=5 * MINUTE_MS)])
    with pytest.raises(CandleError, match=r"BTCUSDT-5m\.csv holds 5m candles .*needs 1m"):
        CsvCandles(path)
    with pytest.raises(CandleError, match="holds 5m candles"):
        CsvCandles(BTC_5M_WEEK)


def test_gaps_are_allowed(tmp_path: Path) -> None:
    rows = [*good_rows(3), *good_rows(3, start=T0 + 61 * MINUTE_MS)]
    source = CsvCandles(write(tmp_path, "BTCUSDT.csv", [HEADER, *rows]))
    assert len(source.next_candles("BTCUSDT", "1m", 0, 100)) == 6


def test_header_problems(tmp_path: Path) -> None:
    with pytest.raises(CandleError, match="line 1: header lacks 'volume'"):
        CsvCandles(write(tmp_path, "A.csv", ["timestamp_ms,open,high,low,close,vol", *good_rows(2)]))
    with pytest.raises(CandleError, match="empty"):
        CsvCandles(write(tmp_path, "B.csv", [""]))
    with pytest.raises(CandleError, match="no candles"):
        CsvCandles(write(tmp_path, "C.csv", [HEADER]))


def test_headerless_and_reordered_columns_and_gzip(tmp_path: Path) -> None:
    rows = good_rows(4)
    plain = CsvCandles(write(tmp_path, "BTCUSDT.csv", rows))  # no header: standard order
    reordered = [",".join([r.split(",")[5], *r.split(",")[:5]]) for r in rows]
    moved = CsvCandles(write(tmp_path, "BTCUSDT-r.csv", ["volume,timestamp,open,high,low,close", *reordered]))
    gz = tmp_path / "BTCUSDT-1m.csv.gz"
    gz.write_bytes(gzip.compress(("\n".join([HEADER, *rows]) + "\n").encode()))
    expected = plain.next_candles("BTCUSDT", "1m", 0, 10)
    assert moved.next_candles("BTCUSDT", "1m", 0, 10) == expected
    assert CsvCandles(gz).next_candles("BTCUSDT", "1m", 0, 10) == expected
    assert expected[1] == Candle(T0 + MINUTE_MS, 100.0, 101.0, 99.0, 100.5, 2.0)


def test_memory_errors_name_symbol_index_and_field() -> None:
    rows = [(T0 + i * MINUTE_MS, 100.0, 101.0, 99.0, 100.0, 1.0) for i in range(5)]
    rows[3] = (T0 + 3 * MINUTE_MS, 100.0, 101.0, 99.0, float("nan"), 1.0)
    with pytest.raises(CandleError, match=r"^ETHUSDT candle #3: close nan"):
        MemoryCandles({"ETHUSDT": rows})
    first = {"timestamp": T0, "open": 1, "high": 1, "low": 1, "close": 1, "volume": 1}
    with pytest.raises(CandleError, match=r"ETHUSDT candle #1: missing open"):
        MemoryCandles.from_candles("ETHUSDT", [first, {"timestamp": T0 + MINUTE_MS}])
    with pytest.raises(CandleError, match=r"ETHUSDT candle #0: expected 6 values"):
        MemoryCandles.from_candles("ETHUSDT", [(T0, 1.0, 1.0, 1.0, 1.0)])
    with pytest.raises(CandleError, match=r"ETHUSDT candle #0: timestamp 1\.5"):
        MemoryCandles.from_candles("ETHUSDT", [(1.5, 1.0, 1.0, 1.0, 1.0, 1.0)])
    with pytest.raises(CandleError, match="no candles"):
        MemoryCandles.from_candles("ETHUSDT", [])
    five = [(T0 + i * 5 * MINUTE_MS, 1.0, 1.0, 1.0, 1.0, 1.0) for i in range(3)]
    with pytest.raises(CandleError, match=r"^ETHUSDT input holds 5m candles"):
        MemoryCandles.from_candles("ETHUSDT", five)
    with pytest.raises(CandleError, match="expects a mapping"):
        MemoryCandles([(T0, 1.0, 1.0, 1.0, 1.0, 1.0)])  # type: ignore[arg-type]


# -- inputs ------------------------------------------------------------------------------------------


def test_every_memory_input_shape_gives_the_same_candles() -> None:
    candles = sample().next_candles("BTCUSDT", "1m", 0, 500)
    tuples = [(c.timestamp, c.open, c.high, c.low, c.close, c.volume) for c in candles]
    names = ("timestamp", "open", "high", "low", "close", "volume")
    dicts = [dict(zip(("timestamp_ms", *names[1:]), t, strict=True)) for t in tuples]
    columns = {k: [getattr(c, k) for c in candles] for k in names}
    ints = [(t, int(o), int(h) + 1, int(lo), int(o), 1) for t, o, h, lo, _, _ in tuples]
    inputs: list[Any] = [candles, tuples, [list(t) for t in tuples], dicts, columns, iter(tuples)]
    for data in inputs:
        assert MemoryCandles.from_candles("BTCUSDT", data).next_candles("BTCUSDT", "1m", 0, 1000) == candles
    as_int = MemoryCandles.from_candles("BTCUSDT", ints).next_candles("BTCUSDT", "1m", 0, 1)[0]
    assert type(as_int.open) is float and type(as_int.volume) is float


def test_numpy_inputs() -> None:
    np = pytest.importorskip("numpy")
    candles = sample().next_candles("BTCUSDT", "1m", 0, 300)
    array = np.array([[c.timestamp, c.open, c.high, c.low, c.close, c.volume] for c in candles])
    assert array.dtype == np.float64
    from_array = MemoryCandles.from_candles("BTCUSDT", array)
    assert from_array.next_candles("BTCUSDT", "1m", 0, 1000) == candles
    assert type(from_array.first_timestamp("BTCUSDT")) is int
    columns = {
        "timestamp": np.array([c.timestamp for c in candles], dtype=np.int64),
        **{k: np.array([getattr(c, k) for c in candles]) for k in ("open", "high", "low", "close", "volume")},
    }
    assert MemoryCandles({"BTCUSDT": columns}).next_candles("BTCUSDT", "1m", 0, 1000) == candles
    rows = list(array)  # a list of 1-D arrays
    assert MemoryCandles.from_candles("BTCUSDT", rows).next_candles("BTCUSDT", "1m", 0, 1000) == candles
    array[7, 2] = np.nan
    with pytest.raises(CandleError, match="BTCUSDT candle #7: high nan"):
        MemoryCandles.from_candles("BTCUSDT", array)


# -- serving ---------------------------------------------------------------------------------------


def test_protocols() -> None:
    assert isinstance(sample(), SyncCandleSource)
    assert isinstance(sample(), CandleSource)


async def test_async_call_honours_since_and_limit() -> None:
    source = sample()
    got = await source("BTCUSDT", "1m", datetime(2025, 5, 20, 0, 3, tzinfo=UTC), 4)
    assert [c.timestamp for c in got] == [T0 + k * MINUTE_MS for k in range(3, 7)]
    naive = await source("BTCUSDT", "1m", datetime(2025, 5, 20, 0, 3), 4)  # naive means UTC
    assert naive == got
    just_after = datetime(2025, 5, 20, 0, 3, tzinfo=UTC) + timedelta(microseconds=1)
    assert (await source("BTCUSDT", "1m", just_after, 1))[0].timestamp == T0 + 4 * MINUTE_MS
    hourly = await source("BTCUSDT", "1h", datetime(2025, 5, 20, 0, 30, tzinfo=UTC), 3)
    assert [c.timestamp for c in hourly] == [T0 + k * 60 * MINUTE_MS for k in (1, 2, 3)]
    assert await source("BTCUSDT", "1m", datetime(2030, 1, 1, tzinfo=UTC), 5) == []
    before = await source("BTCUSDT", "1d", datetime(2020, 1, 1, tzinfo=UTC), 100)
    assert len(before) == 7 and before[0].timestamp == T0


async def test_lookup_errors() -> None:
    source = sample()
    with pytest.raises(UnknownSymbolError, match=r"'ETHUSDT'.*known symbols: BTCUSDT") as info:
        await source("ETHUSDT", "1m", datetime(2025, 5, 20, tzinfo=UTC), 5)
    assert isinstance(info.value, KeyError) and isinstance(info.value, CandleError)
    with pytest.raises(CandleError, match="unknown interval '7m'"):
        await source("BTCUSDT", "7m", datetime(2025, 5, 20, tzinfo=UTC), 5)
    with pytest.raises(CandleError, match="limit must be >= 1, got 0"):
        await source("BTCUSDT", "1m", datetime(2025, 5, 20, tzinfo=UTC), 0)
    with pytest.raises(CandleError, match="limit"):
        source.closed_candles("BTCUSDT", "5m", T0 + 10**7, 0)
    with pytest.raises(CandleError, match="count"):
        source.average_price("BTCUSDT", T0 + 10**7, 0)
    with pytest.raises(UnknownSymbolError):
        source.average_price("ETHUSDT", T0 + 10**7, 5)
    with pytest.raises(UnknownSymbolError):
        source.first_timestamp("ETHUSDT")


@cache
def reference_buckets(use_gappy: bool, step: int) -> list[Candle]:
    """Brute-force aggregation, written independently of the adapter."""
    source = gappy() if use_gappy else sample()
    buckets: dict[int, list[Candle]] = {}
    for c in source.next_candles("BTCUSDT", "1m", 0, 10**6):
        buckets.setdefault(c.timestamp - c.timestamp % step, []).append(c)
    return [
        Candle(
            start,
            group[0].open,
            max(c.high for c in group),
            min(c.low for c in group),
            group[-1].close,
            math.fsum(c.volume for c in group),
        )
        for start, group in sorted(buckets.items())
    ]


@settings(max_examples=300, deadline=None)
@given(
    when_ms=st.integers(T0 - 3 * 86_400_000, T0 + 10 * 86_400_000),
    limit=st.integers(1, 400),
    interval=st.sampled_from(INTERVALS),
    use_gappy=st.booleans(),
)
def test_closed_candles_never_returns_an_open_candle(when_ms: int, limit: int, interval: str, use_gappy: bool) -> None:
    source = gappy() if use_gappy else sample()
    step = CANDLE_INTERVALS[interval] * MINUTE_MS
    got = source.closed_candles("BTCUSDT", interval, when_ms, limit)
    assert len(got) <= limit
    assert all(c.timestamp + step <= when_ms for c in got)
    assert all(a.timestamp < b.timestamp for a, b in pairwise(got))
    expected = [c for c in reference_buckets(use_gappy, step) if c.timestamp + step <= when_ms][-limit:]
    assert got == expected


@settings(max_examples=200, deadline=None)
@given(
    since_ms=st.integers(T0 - 86_400_000, T0 + 8 * 86_400_000),
    limit=st.integers(1, 300),
    interval=st.sampled_from(INTERVALS),
    use_gappy=st.booleans(),
)
def test_next_candles_starts_at_since(since_ms: int, limit: int, interval: str, use_gappy: bool) -> None:
    source = gappy() if use_gappy else sample()
    everything = source.next_candles("BTCUSDT", interval, -(10**15), 10**9)
    expected = [c for c in everything if c.timestamp >= since_ms][:limit]
    assert source.next_candles("BTCUSDT", interval, since_ms, limit) == expected


def test_partial_buckets_at_the_edges_and_around_gaps() -> None:
    rows = [(T0 + k * MINUTE_MS, 100.0 + k, 101.0 + k, 99.0 + k, 100.5 + k, 1.0) for k in (3, 4, 5, 61, 62)]
    source = MemoryCandles.from_candles("BTCUSDT", rows)
    hourly = source.closed_candles("BTCUSDT", "1h", T0 + 10 * 60 * MINUTE_MS, 10)
    assert hourly == [
        Candle(T0, 103.0, 106.0, 102.0, 105.5, 3.0),
        Candle(T0 + 60 * MINUTE_MS, 161.0, 163.0, 160.0, 162.5, 2.0),
    ]
    assert source.closed_candles("BTCUSDT", "1h", T0 + 60 * MINUTE_MS - 1, 10) == []
    assert source.closed_candles("BTCUSDT", "1h", T0 + 60 * MINUTE_MS, 10) == hourly[:1]
    assert source.closed_candles("BTCUSDT", "5m", T0 + 5 * MINUTE_MS, 10)[0].open == 103.0


def test_daily_buckets_start_at_utc_midnight() -> None:
    days = sample().closed_candles("BTCUSDT", "1d", T0 + 7 * 86_400_000, 100)
    assert len(days) == 7
    assert all(c.timestamp % 86_400_000 == 0 for c in days)
    minutes = sample().next_candles("BTCUSDT", "1m", T0, 1440)
    assert days[0].open == minutes[0].open and days[0].close == minutes[-1].close
    assert days[0].high == max(c.high for c in minutes) and days[0].low == min(c.low for c in minutes)


def test_returned_lists_are_copies() -> None:
    source = MemoryCandles.from_candles("BTCUSDT", sample().next_candles("BTCUSDT", "1m", 0, 100))
    got = source.closed_candles("BTCUSDT", "1m", T0 + 10 * MINUTE_MS, 5)
    got.clear()
    assert len(source.closed_candles("BTCUSDT", "1m", T0 + 10 * MINUTE_MS, 5)) == 5


# -- average price ---------------------------------------------------------------------------------


def reference_vwap(candles: list[Candle], when_ms: int, count: int) -> float | None:
    window = [c for c in candles if c.timestamp + MINUTE_MS <= when_ms][-count:]
    if not window:
        return None
    volume = math.fsum(c.volume for c in window)
    if volume == 0:
        return math.fsum((c.high + c.low + c.close) / 3 for c in window) / len(window)
    return math.fsum((c.high + c.low + c.close) / 3 * c.volume for c in window) / volume


@settings(max_examples=300, deadline=None)
@given(
    when_ms=st.integers(T0 - 86_400_000, T0 + 8 * 86_400_000),
    count=st.integers(1, 3000),
    use_gappy=st.booleans(),
)
def test_average_price_equals_direct_vwap(when_ms: int, count: int, use_gappy: bool) -> None:
    source = gappy() if use_gappy else sample()
    expected = reference_vwap(source.next_candles("BTCUSDT", "1m", 0, 10**6), when_ms, count)
    got = source.average_price("BTCUSDT", when_ms, count)
    if expected is None:
        assert got is None
    else:
        assert got is not None and abs(got - expected) <= 1e-12 * expected


def test_average_price_precision_at_the_end_of_130k_candles() -> None:
    """Running sums over a long series must not drift: 13 back-to-back copies of the real week (131,040
    candles of real prices and volumes, re-timed) stand in for the 90-day file, which is too big to ship."""
    week = sample().next_candles("BTCUSDT", "1m", 0, 10**6)
    span = week[-1].timestamp + MINUTE_MS - week[0].timestamp
    source = MemoryCandles.from_candles(
        "BTCUSDT", [msgspec.structs.replace(c, timestamp=c.timestamp + k * span) for k in range(13) for c in week]
    )
    candles = source.next_candles("BTCUSDT", "1m", 0, 10**6)
    assert len(candles) == 13 * len(week) > 130_000
    rng = random.Random(1)
    ends = [len(candles), *(rng.randrange(100_000, len(candles)) for _ in range(300))]
    quietest = min(range(len(candles)), key=lambda i: candles[i].volume)
    ends.append(quietest + 1)
    worst = 0.0
    for n, end in enumerate(ends):
        for count in (1, 2, 5, 20, 64, 65, 500, 100_000) if n < 5 else (1, 2, 5, 20, 64, 65, 500):
            when_ms = candles[end - 1].timestamp + MINUTE_MS
            window = candles[max(0, end - count) : end]
            expected = reference_vwap(window, when_ms, count)
            got = source.average_price("BTCUSDT", when_ms, count)
            assert expected is not None and got is not None
            worst = max(worst, abs(got - expected) / expected)
    assert worst < 1e-9
    assert worst < 1e-14  # what the double-double prefix sums actually achieve


def test_average_price_edges() -> None:
    rows = [(T0 + k * MINUTE_MS, 100.0, 103.0, 97.0, 100.0 + k, 0.0) for k in range(4)]
    source = MemoryCandles.from_candles("BTCUSDT", rows)
    assert source.average_price("BTCUSDT", T0 + MINUTE_MS - 1, 5) is None
    assert source.average_price("BTCUSDT", T0 + MINUTE_MS, 5) == 100.0  # zero volume: mean typical
    assert source.average_price("BTCUSDT", T0 + 10 * MINUTE_MS, 2) == pytest.approx((100 + 2 / 3 + 101) / 2)
    assert source.average_price("BTCUSDT", T0 + 10 * MINUTE_MS, 100) == pytest.approx(100.5)
    weighted = MemoryCandles.from_candles(
        "BTCUSDT", [(T0, 10.0, 10.0, 10.0, 10.0, 1.0), (T0 + MINUTE_MS, 20.0, 20.0, 20.0, 20.0, 3.0)]
    )
    assert weighted.average_price("BTCUSDT", T0 + 2 * MINUTE_MS, 2) == 17.5
    assert weighted.average_price("BTCUSDT", T0 + 2 * MINUTE_MS - 1, 2) == 10.0


# -- the bundled sample by name ----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["BTCUSDT-1m-7d.csv", "BTCUSDT-1m-7d.csv.gz"])
def test_the_bundled_sample_loads_by_its_bare_name_anywhere(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The README's `CsvCandles("BTCUSDT-1m-7d.csv")` runs in an empty directory (issue item 15)."""
    monkeypatch.chdir(tmp_path)
    source = CsvCandles(name)
    assert source.paths == {"BTCUSDT": bundled_sample_path()}
    assert source.next_candles("BTCUSDT", "1m", 0, 20_000) == sample().next_candles("BTCUSDT", "1m", 0, 20_000)


def test_a_real_file_of_the_sample_name_wins_and_other_names_are_not_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "BTCUSDT-1m-7d.csv", [HEADER, *good_rows(3)])
    assert len(CsvCandles("BTCUSDT-1m-7d.csv").next_candles("BTCUSDT", "1m", 0, 100)) == 3
    for missing in ("sub/BTCUSDT-1m-7d.csv", "BTCUSDT-1m-30d.csv", "ETHUSDT-1m-7d.csv"):
        with pytest.raises((CandleError, OSError), match=missing.rsplit("/", 1)[-1]):
            CsvCandles(missing)

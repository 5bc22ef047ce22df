"""The candle store (engine/candle_store.py) and the batch conversion change speed, never answers.

A callback exchange with the store and one without it (CC_CANDLE_STORE_MAX_CANDLES=0) must answer
every read of a random sequence identically, candles or error message, on random data that includes
malformed candles of every kind the validation knows; a tick still only sees candles closed by its
time; memory per key stays bounded.
"""

from __future__ import annotations

import asyncio
import math
from datetime import datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import backtest_kit as bk
from backtest_kit.engine.candle_store import CandleStore
from backtest_kit.engine.errors import CandleError
from backtest_kit.engine.exchange import ExchangeClient, coerce_candle, coerce_candles

M = 60_000
T0 = 1_747_699_200_000  # 2025-05-20 00:00 UTC, on every grid
FIELDS = ("timestamp", "open", "high", "low", "close", "volume")

BAD_KINDS = ("nan_close", "inf_high", "neg_volume", "zero_open", "spike_up", "spike_down", "hl_swap",
             "str_value", "short", "none", "bool_ts", "off_grid", "dup_ts", "missing_key", "float_ts")


def make_row(slot: int, price: float, shape: str, bad: str | None) -> Any:
    """One raw candle as a user's callback might return it; `bad` makes it malformed (float_ts is fine)."""
    ts: Any = T0 + slot * M
    o, c = price, price * 1.002
    h, low, v = max(o, c) * 1.001, min(o, c) * 0.999, 2.5
    if bad == "nan_close":
        c = math.nan
    elif bad == "inf_high":
        h = math.inf
    elif bad == "neg_volume":
        v = -1.0
    elif bad == "zero_open":
        o = 0.0
    elif bad == "spike_up":
        h = price * 1000
    elif bad == "spike_down":
        low = price / 1000
    elif bad == "hl_swap":
        h, low = low, h
    elif bad == "bool_ts":
        ts = True
    elif bad == "off_grid":
        ts += 1
    elif bad == "dup_ts":
        ts -= M
    elif bad == "float_ts":
        ts = float(ts)
    values: list[Any] = [ts, o, h, low, c, v]
    if bad == "str_value":
        values[4] = str(c)
    if bad == "none":
        return None
    if bad == "short":
        return tuple(values[:5])
    if shape == "dict" or bad == "missing_key":
        row = dict(zip(FIELDS, values, strict=True))
        if bad == "missing_key":
            del row["volume"]
        return row
    if shape == "list":
        return values
    if shape == "candle" and bad in (None, "nan_close", "inf_high", "neg_volume", "zero_open", "spike_up",
                                     "spike_down", "hl_swap", "off_grid", "dup_ts"):
        return bk.Candle(int(ts), float(o), float(h), float(low), float(c), float(v))
    return tuple(values)


@st.composite
def datasets(draw: st.DrawFn, bad_rate: float = 0.04, gaps: bool = False) -> dict[int, Any]:
    """slot -> raw candle; prices wander slowly so only the planted anomalies are anomalies."""
    n = draw(st.integers(20, 160))
    shape = draw(st.sampled_from(("tuple", "list", "dict", "candle", "mixed")))
    price = 100.0
    rows: dict[int, Any] = {}
    for slot in range(n):
        price *= 1 + draw(st.floats(-0.003, 0.003))
        if gaps and draw(st.floats(0, 1)) < 0.1:
            continue
        bad = draw(st.sampled_from(BAD_KINDS)) if draw(st.floats(0, 1)) < bad_rate else None
        kind = draw(st.sampled_from(("tuple", "list", "dict", "candle"))) if shape == "mixed" else shape
        rows[slot] = make_row(slot, price, kind, bad)
    return rows


@st.composite
def reads(draw: st.DrawFn, start_in_data: bool = True) -> list[tuple[int, int]]:
    """(limit, when_ms): mostly forward in time like ticks, sometimes back, whens on and off the minute.

    `start_in_data`: windows never reach before the first candle. A window with missing slots (before
    the data starts, or gaps) is padded by the source with candles that close after `when`; without a
    store they take part in validation, with a store a fully known window is not re-fetched (see
    `ExchangeClient.get_candles`), so malformed data is only compared on windows without holes."""
    out = []
    minute = draw(st.integers(1, 30))
    for _ in range(draw(st.integers(1, 60))):
        minute = max(0, minute + draw(st.sampled_from((0, 1, 1, 1, 2, 5, -3, -40))))
        limit = draw(st.sampled_from((1, 5, 5, 50, draw(st.integers(1, 90)))))
        if start_in_data:  # before the data starts the source pads the window with later candles
            limit = max(1, min(limit, minute))
        out.append((limit, T0 + minute * M + draw(st.sampled_from((0, 0, 1, 30_000, M - 1)))))
    return out


class Source:
    """A user's callback over `rows`: up to `limit` candles at or after `since`, ascending by slot."""

    def __init__(self, rows: dict[int, Any]) -> None:
        self.slots = sorted(rows)
        self.rows = rows
        self.calls: list[tuple[int, int]] = []

    async def __call__(self, symbol: str, interval: str, since: datetime, limit: int) -> list[Any]:
        since_ms = int(since.timestamp() * 1000)
        self.calls.append((since_ms, limit))
        first = -(-(since_ms - T0) // M)
        return [self.rows[s] for s in self.slots if s >= first][:limit]


def client(source: Any, store: int) -> ExchangeClient:
    engine = bk.Engine()
    engine.set_config(CC_GET_CANDLES_RETRY_COUNT=1, CC_GET_CANDLES_RETRY_DELAY_MS=0,
                      CC_CANDLE_STORE_MAX_CANDLES=store)
    engine.add_exchange(exchange_name="x", get_candles=source)
    return engine.exchange("x")


async def answer(ex: ExchangeClient, limit: int, when: int) -> Any:
    try:
        return await ex.get_candles("BTCUSDT", "1m", limit, when)
    except (bk.ExchangeError, CandleError) as exc:
        return (type(exc).__name__, str(exc))


def run_both(rows: dict[int, Any], plan: list[tuple[int, int]], store: int) -> tuple[list[Any], list[Any]]:
    async def go() -> tuple[list[Any], list[Any]]:
        plain, stored = client(Source(rows), 0), client(Source(rows), store)
        return ([await answer(plain, lim, w) for lim, w in plan],
                [await answer(stored, lim, w) for lim, w in plan])
    return asyncio.run(go())


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(datasets(), reads(), st.sampled_from((1, 7, 64, 1000)))
def test_with_and_without_the_store_every_read_answers_the_same(
    rows: dict[int, Any], plan: list[tuple[int, int]], store: int
) -> None:
    plain, stored = run_both(rows, plan, store)
    assert stored == plain


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(datasets(bad_rate=0.0, gaps=True), reads(start_in_data=False), st.sampled_from((1, 7, 64, 1000)))
def test_with_gaps_in_the_data_the_reads_answer_the_same(
    rows: dict[int, Any], plan: list[tuple[int, int]], store: int
) -> None:
    plain, stored = run_both(rows, plan, store)
    assert stored == plain


def test_the_planted_anomalies_are_caught_with_the_same_message() -> None:
    rows = {s: make_row(s, 100.0, "tuple", None) for s in range(60)}
    rows[40] = make_row(40, 100.0, "tuple", "spike_up")
    plan = [(5, T0 + m * M) for m in range(5, 50)]
    plain, stored = run_both(rows, plan, 1000)
    assert stored == plain
    errors = [a for a in stored if isinstance(a, tuple)]
    assert len(errors) == 5  # every window holding slot 40 (closed by 41..45 minutes)
    assert "BTCUSDT candle #4 " in errors[0][1] and "anomalously high price high=" in errors[0][1]
    assert "BTCUSDT candle #0 " in errors[-1][1]


def test_a_known_window_is_served_without_asking_the_source() -> None:
    source = Source({s: make_row(s, 100.0, "tuple", None) for s in range(200)})
    ex = client(source, 1000)

    async def go() -> None:
        first = await ex.get_candles("BTCUSDT", "1m", 50, T0 + 100 * M)
        assert source.calls == [(T0 + 50 * M, 50)]
        again = await ex.get_candles("BTCUSDT", "1m", 5, T0 + 100 * M + 30_000)
        assert again == first[-5:] and len(source.calls) == 1
        nxt = await ex.get_candles("BTCUSDT", "1m", 50, T0 + 101 * M)
        assert source.calls[-1] == (T0 + 100 * M, 1)  # only the candle that closed since
        assert nxt[:-1] == first[1:] and nxt[-1].timestamp == T0 + 100 * M

    asyncio.run(go())


def test_a_tick_sees_only_candles_closed_by_its_time_and_the_forming_one_is_not_kept() -> None:
    """The source answers the forming candle too (a live exchange does); it is neither returned nor
    stored, so the next tick reads its final values."""
    final = {s: make_row(s, 100.0, "tuple", None) for s in range(30)}
    forming = dict(final)
    forming[20] = (T0 + 20 * M, 100.0, 100.5, 99.5, 100.1, 0.5)  # slot 20 still open at 20:30
    source = Source(forming)
    ex = client(source, 1000)

    async def go() -> None:
        at = await ex.get_candles("BTCUSDT", "1m", 5, T0 + 20 * M + 30_000)
        assert [c.timestamp for c in at] == [T0 + s * M for s in range(15, 20)]
        source.rows = final
        later = await ex.get_candles("BTCUSDT", "1m", 5, T0 + 21 * M)
        assert later[-1] == coerce_candle(final[20], 0, "BTCUSDT")
        assert all(c.timestamp + M <= T0 + 21 * M for c in later)

    asyncio.run(go())


def test_memory_per_key_is_a_bounded_ring() -> None:
    source = Source({s: make_row(s, 100.0, "tuple", None) for s in range(3000)})
    ex = client(source, 1000)

    async def go() -> None:
        for m in range(60, 3000):
            got = await ex.get_candles("BTCUSDT", "1m", 50 if m % 5 == 0 else 5, T0 + m * M)
            assert got[-1].timestamp == T0 + (m - 1) * M
            store = ex._stores[("BTCUSDT", "1m")]
            assert len(store.candles) <= store.capacity + store.capacity // 4
        assert store.capacity == 100  # 2 x the largest read (50), above the 64 floor
        assert store.lo == store.candles[0].timestamp and store.hi == T0 + 2999 * M

    asyncio.run(go())


def test_merge_and_eviction_rules() -> None:
    candles = [bk.Candle(T0 + s * M, 1.0, 1.0, 1.0, 1.0, 1.0) for s in range(200)]
    store = CandleStore(M, 10)
    assert store.capacity == 10  # min(max_candles, 64)
    store.merge(T0, T0 + 12 * M, candles[:12])  # 12 <= 10 + 10 // 4: kept
    assert len(store.candles) == 12 and store.lo == T0
    store.merge(T0 + 12 * M, T0 + 13 * M, candles[12:13])  # 13 > 12: oldest dropped down to 10
    assert [c.timestamp for c in store.candles] == [T0 + s * M for s in range(3, 13)]
    assert (store.lo, store.hi) == (T0 + 3 * M, T0 + 13 * M)
    store.merge(T0 + 50 * M, T0 + 52 * M, candles[50:52])  # disjoint: replaces
    assert (store.lo, store.hi, len(store.candles)) == (T0 + 50 * M, T0 + 52 * M, 2)
    store.merge(T0 + 48 * M, T0 + 51 * M, [candles[48], candles[50]])  # overlapping: union, 49 a gap
    assert [c.timestamp for c in store.candles] == [T0 + 48 * M, T0 + 50 * M, T0 + 51 * M]
    assert store.covers(T0 + 48 * M, T0 + 52 * M) and not store.covers(T0 + 47 * M, T0 + 52 * M)
    assert store.window(T0 + 49 * M, T0 + 51 * M) == [candles[50]]


raw_values = st.one_of(st.integers(-5, 2**70), st.floats(allow_nan=True, allow_infinity=True), st.booleans(),
                       st.none(), st.text(max_size=2))
raw_rows = st.one_of(
    st.tuples(*[raw_values] * 6), st.lists(raw_values, min_size=4, max_size=7),
    st.fixed_dictionaries({f: raw_values for f in FIELDS}),
    st.builds(lambda *a: bk.Candle(*a), st.integers(0, 10**13), *[st.floats(0.1, 1e6)] * 5),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.one_of(raw_rows, st.builds(make_row, st.integers(0, 100), st.floats(1, 1e5),
                                              st.sampled_from(("tuple", "list", "dict", "candle")),
                                              st.one_of(st.none(), st.sampled_from(BAD_KINDS)))),
                max_size=8),
       st.integers(0, 60))
def test_batch_conversion_equals_the_per_candle_path(batch: list[Any], first_index: int) -> None:
    def slow() -> Any:
        try:
            return [coerce_candle(c, first_index + i, "X") for i, c in enumerate(batch)]
        except (CandleError, OverflowError) as exc:
            return (type(exc).__name__, str(exc))

    try:
        fast: Any = coerce_candles(batch, "X", first_index)
    except (CandleError, OverflowError) as exc:
        fast = (type(exc).__name__, str(exc))
    expected = slow()
    if isinstance(expected, list):
        assert isinstance(fast, list)
        assert [tuple(map(repr, (c.timestamp, c.open, c.high, c.low, c.close, c.volume))) for c in fast] == \
            [tuple(map(repr, (c.timestamp, c.open, c.high, c.low, c.close, c.volume))) for c in expected]
        assert all(type(c.timestamp) is int for c in fast)
    else:
        assert fast == expected


def test_numbers_named_from_the_cached_head_in_a_tail_error() -> None:
    rows = {s: make_row(s, 100.0, "tuple", None) for s in range(60)}
    rows[55] = make_row(55, 100.0, "dict", "missing_key")
    plain, stored = run_both(rows, [(50, T0 + 55 * M), (50, T0 + 56 * M)], 1000)
    assert isinstance(stored[0], list)
    assert stored == plain
    assert "BTCUSDT candle #49: malformed candle" in stored[1][1]


@pytest.mark.parametrize("store", [0, 1000])
def test_anomaly_reference_uses_the_whole_window(store: int) -> None:
    """The tail's single candle is judged against the median of the window, not against itself."""
    rows = {s: make_row(s, 100.0, "tuple", None) for s in range(60)}
    rows[40] = (T0 + 40 * M, 3000.0, 3000.0, 3000.0, 3000.0, 1.0)  # 30x the window, consistent OHLC
    plain, stored = run_both(rows, [(5, T0 + 40 * M), (5, T0 + 41 * M)], store)
    assert stored == plain
    assert isinstance(stored[0], list) and "anomalously high price open=3000.0" in stored[1][1]


def test_a_numpy_array_answer_is_read_like_rows_of_numbers() -> None:
    np = pytest.importorskip("numpy")
    rows = [make_row(s, 100.0, "tuple", None) for s in range(10)]
    array = np.array(rows, dtype=np.float64)

    async def arrays(symbol: str, interval: str, since: datetime, limit: int) -> Any:
        first = (int(since.timestamp() * 1000) - T0) // M
        return array[max(0, first):max(0, first) + limit]

    async def go() -> None:
        got = await client(arrays, 1000).get_candles("BTCUSDT", "1m", 5, T0 + 10 * M)
        assert got == [coerce_candle(r, 0, "X") for r in rows[5:]]
        assert all(type(c.timestamp) is int for c in got)
        bad = array.copy()
        bad[7, 4] = np.nan

        async def nan_source(symbol: str, interval: str, since: datetime, limit: int) -> Any:
            first = (int(since.timestamp() * 1000) - T0) // M
            return bad[first:first + limit]

        with pytest.raises(CandleError, match=r"candle #2 \(timestamp \d+\): close is not finite: nan"):
            await client(nan_source, 1000).get_candles("BTCUSDT", "1m", 5, T0 + 10 * M)

    asyncio.run(go())

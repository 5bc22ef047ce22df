"""Data quality
([hardening #7](../docs/design/decisions.md#hardening-7-symmetric-candle-anomaly-filter-default-factor-20),
[#8](../docs/design/decisions.md#hardening-8-stale-live-data-fails-the-tick)): the anomaly filter is
symmetric, gaps and stale live data are reported.

- The exchange client rejects a price above reference x factor exactly as it rejects one below
  reference / factor (same factor, same "reject the answer" behaviour, error naming the candle).
- The in-memory / CSV sources drop such candles at load time and report them (a `CandleDataWarning`,
  the `dropped` attribute, and the engine logger once the exchange is first used).
- Loading reports gaps in the 1m series (count, largest, first location).
- Live mode fails a tick whose newest closed 1m candle is older than `CC_LIVE_MAX_CANDLE_AGE_MS`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import pytest
from helpers import REFERENCE_CONFIG, T0, M, always, candle, dt, flat_candles, long, make_engine, ms, setup
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import backtest_kit as bk
from backtest_kit.engine.config import Config
from backtest_kit.engine.exchange import validate_candles

SYMBOL = "BTCUSDT"


# ------------------------------------------------------------------------- #7 the exchange client's filter
def spiked(base: float, n: int, index: int, k: float) -> list[bk.Candle]:
    """`n` flat candles at `base` with every price of candle `index` multiplied by `k`."""
    out = flat_candles(T0, n, base, spread=0.0)
    p = base * k
    out[index] = candle(out[index].timestamp, p, p, p, p)
    return out


def verdict(candles: list[bk.Candle], factor: float) -> str | None:
    """None when the answer passes, else "low" / "high" from the filter's error message."""
    config = Config(CC_GET_CANDLES_PRICE_ANOMALY_THRESHOLD_FACTOR=factor)
    try:
        validate_candles(candles, SYMBOL, M, config)
    except bk.CandleError as exc:
        text = str(exc)
        assert "anomalously" in text, text
        return "low" if "anomalously low" in text else "high"
    return None


@settings(max_examples=300, deadline=None)
@given(
    base=st.floats(1e-3, 1e6),
    log_k=st.floats(-12.0, 12.0),
    factor=st.sampled_from([2.0, 10.0, 50.0, 1000.0, 12_345.0]),
    n=st.integers(5, 40),
    data=st.data(),
)
def test_filter_is_symmetric_in_log_space(base: float, log_k: float, factor: float, n: int, data: Any) -> None:
    """A candle k times the median is rejected exactly when one 1/k times it is, on the matching side."""
    assume(abs(abs(log_k) - math.log(factor)) > 1e-6)  # not on the boundary, where rounding decides
    index = data.draw(st.integers(0, n - 1))
    k = math.exp(log_k)
    up, down = verdict(spiked(base, n, index, k), factor), verdict(spiked(base, n, index, 1 / k), factor)
    outside = abs(log_k) > math.log(factor)
    assert (up is not None) == (down is not None) == outside
    if outside:
        assert {up, down} == {"low", "high"}
        assert up == ("high" if k > 1 else "low")


@settings(max_examples=200, deadline=None)
@given(base=st.floats(1e-3, 1e6), k=st.floats(1e-9, 1.0), n=st.integers(5, 40))
def test_downward_rule_is_unchanged(base: float, k: float, n: int) -> None:
    """[Lifecycle §11.3](../docs/design/lifecycle.md#113-retries-and-the-anomaly-filter) (the reference,
    one-sided): below reference / factor is rejected, anything at or above it passes."""
    candles = spiked(base, n, n // 2, k)
    rejected = verdict(candles, 1000.0)
    assert (rejected == "low") == (base * k < base / 1000.0)


def test_upward_spike_error_names_candle_field_reference_and_ceiling() -> None:
    with pytest.raises(bk.CandleError) as info:
        config = Config(CC_GET_CANDLES_PRICE_ANOMALY_THRESHOLD_FACTOR=1000)
        validate_candles(spiked(42_000.0, 10, 7, 2000.0), SYMBOL, M, config)
    text = str(info.value)
    assert f"{SYMBOL} candle #7" in text and "anomalously high price open=84000000.0" in text
    assert "reference 42000.0" in text and "ceiling 42000000.0" in text


async def test_spike_fakes_no_take_profit_in_a_backtest() -> None:
    """The issue's case: one candle with high/close x100 closed a long at its take profit (+2.6 %).

    At the default factor (20) the x100 print is now above the ceiling: the fast-forward's answer is
    rejected (reported on listen_error) and the position runs to its expiry on the real prices.
    """
    engine = make_engine()
    good = flat_candles(T0 - 60 * M, 60 + 200, 100.0, spread=0.1)
    spike_at = T0 + 10 * M
    data = [candle(c.timestamp, c.open, c.high * 100, c.low, c.close * 100) if c.timestamp == spike_at else c
            for c in good]

    async def source(symbol: str, interval: str, since: datetime, limit: int) -> list[bk.Candle]:
        start = ms(since)
        return [c for c in data if c.timestamp >= start][:limit]

    h = setup(engine, None, always(long(103, 95, 30)), minutes=60, get_candles=source)
    results = await h.run()
    assert [r.close_reason for r in results if isinstance(r, bk.ClosedResult)].count("take_profit") == 0
    assert any("anomalously high price" in str(e) and "ceiling" in str(e) for e in h.errors)


# ------------------------------------------------------------------------- #7/#8 load-time checks of local data
HEADER = "timestamp_ms,open,high,low,close,volume"


def write_csv(path: Any, candles: list[bk.Candle]) -> Any:
    lines = [HEADER, *(f"{c.timestamp},{c.open!r},{c.high!r},{c.low!r},{c.close!r},{c.volume!r}" for c in candles)]
    path.write_text("\n".join(lines) + "\n")
    return path


def quality_warnings(record: Any) -> list[str]:
    return [str(w.message) for w in record if issubclass(w.category, bk.CandleDataWarning)]


@contextmanager
def recording() -> Iterator[list[warnings.WarningMessage]]:
    """Every warning raised inside, none filtered out (pytest.warns insists on at least one)."""
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        yield record


def test_gap_free_csv_loads_without_a_warning(tmp_path: Any) -> None:
    path = write_csv(tmp_path / "BTCUSDT.csv", flat_candles(T0, 300, 100.0))
    with recording() as record:
        source = bk.CsvCandles(path)
    assert quality_warnings(record) == []
    assert source.gaps == {} and source.dropped == {} and source.load_warnings == []


def test_csv_gaps_are_reported_with_count_largest_and_first_location(tmp_path: Any) -> None:
    """The issue's case: a 30-minute hole (plus a smaller later one) in a CSV loaded silently."""
    data = flat_candles(T0, 300, 100.0)
    holed = data[:100] + data[130:200] + data[205:]  # 30 missing after row 99, then 5 after row 199
    path = write_csv(tmp_path / "BTCUSDT.csv", holed)
    with pytest.warns(bk.CandleDataWarning) as record:
        source = bk.CsvCandles(path)
    gaps = source.gaps[SYMBOL]
    assert gaps == bk.CandleGaps(count=2, missing=35, largest=30, first_after=T0 + 99 * M,
                                 first_resume=T0 + 130 * M, first_index=100)
    [text] = quality_warnings(record)
    # line 102: the header is line 1, so input row 100 (the first after the hole) is line 102
    for needle in ("2 gap(s)", "35 candle(s) missing", "largest 30 minute(s)", "line 102 of BTCUSDT.csv",
                   "2024-01-01 01:39", "2024-01-01 02:10"):
        assert needle in text, (needle, text)
    # a replay of it hands the findings on, for the engine logger
    assert bk.ReplayExchange(source, bk.VirtualClock(dt(T0))).load_warnings == source.load_warnings == [text]
    # the data is still served, hole included
    assert [c.timestamp for c in source.closed_candles(SYMBOL, "1m", T0 + 131 * M, 2)] == [T0 + 99 * M, T0 + 130 * M]


@settings(max_examples=150, deadline=None)
@given(
    log_k=st.floats(-10.0, 10.0),
    factor=st.sampled_from([3.0, 50.0, 1000.0]),
    n=st.integers(5, 3000),
    data=st.data(),
)
def test_load_time_filter_is_symmetric(log_k: float, factor: float, n: int, data: Any) -> None:
    """A candle k times its neighbours is dropped exactly when one 1/k times them is; nothing else is."""
    assume(abs(abs(log_k) - math.log(factor)) > 1e-6)
    index = data.draw(st.integers(0, n - 1))
    k = math.exp(log_k)
    outcomes = []
    for scale in (k, 1 / k):
        with recording() as record:
            source = bk.MemoryCandles({SYMBOL: spiked(100.0, n, index, scale)}, anomaly_factor=factor)
        dropped = source.dropped.get(SYMBOL, ())
        assert [d.index for d in dropped] in ([], [index])
        served = source.next_candles(SYMBOL, "1m", T0, n)
        assert len(served) == n - len(dropped)
        if dropped:
            assert dropped[0].field == ("high" if scale > 1 else "low") and dropped[0].reference == 100.0
            assert any("dropped 1 BTCUSDT candle" in t for t in quality_warnings(record))
        outcomes.append(bool(dropped))
    assert outcomes[0] == outcomes[1] == (abs(log_k) > math.log(factor))


def test_anomaly_factor_is_validated() -> None:
    for bad in (0, 1, -5, math.nan, math.inf, "1000", True):
        with pytest.raises(bk.CandleError, match=r"anomaly_factor: expected a finite number > 1 or None"):
            bk.MemoryCandles({SYMBOL: flat_candles(T0, 5, 100.0)}, anomaly_factor=bad)
    off = bk.MemoryCandles({SYMBOL: spiked(100.0, 10, 3, 1e6)}, anomaly_factor=None)
    assert off.dropped == {} and len(off.next_candles(SYMBOL, "1m", T0, 10)) == 10


async def test_csv_spike_is_dropped_reported_and_fakes_no_take_profit(tmp_path: Any) -> None:
    """The issue's case on a CSV, which had no anomaly filter at all: a high/close print far above the
    rest closed a long at its take profit: the issue's x100, above the default factor (20)."""
    data = flat_candles(T0 - 60 * M, 60 + 200, 100.0, spread=0.1)
    spike = 70  # T0 + 10 minutes
    c = data[spike]
    data[spike] = candle(c.timestamp, c.open, c.high * 100, c.low, c.close * 100)
    path = write_csv(tmp_path / "BTCUSDT.csv", data)
    with pytest.warns(bk.CandleDataWarning) as record:
        source = bk.CsvCandles(path)
    [dropped] = source.dropped[SYMBOL]
    assert (dropped.index, dropped.timestamp, dropped.field) == (spike, T0 + 10 * M, "high")
    assert dropped.value == pytest.approx(10_010.0)
    texts = quality_warnings(record)
    assert any(f"line {spike + 2} of BTCUSDT.csv" in t and "high 10010" in t and "20x" in t for t in texts)
    assert any("1 gap(s)" in t for t in texts)  # the dropped candle leaves a one-minute hole

    engine = make_engine()
    logged: list[tuple[str, tuple[Any, ...]]] = []

    class Recorder:
        def log(self, topic: str, *args: Any) -> None: ...
        def debug(self, topic: str, *args: Any) -> None: ...
        def info(self, topic: str, *args: Any) -> None: ...
        def warn(self, topic: str, *args: Any) -> None:
            logged.append((topic, args))

    engine.set_logger(Recorder())
    h = setup(engine, None, always(long(103, 95, 30)), minutes=60, get_candles=source)
    results = await h.run()
    assert results and all(not isinstance(r, bk.ClosedResult) or r.close_reason == "time_expired" for r in results)
    assert h.errors == []
    # the engine repeats the load findings through its logger when the exchange is first used
    assert [args[0] for topic, args in logged if topic == "exchange mem: candle data"] == source.load_warnings


# ------------------------------------------------------------------------- #8 stale live data
TTL = 60_001  # the default CC_TICK_TTL_MS


def live_engine(tmp_path: Any, source: Any, clock: bk.VirtualClock, **config: Any) -> tuple[bk.Engine, list[Any]]:
    engine = bk.Engine(clock=clock, persist_dir=tmp_path / "data", dump_dir=tmp_path / "dump")
    engine.set_config({**REFERENCE_CONFIG, **config}, unsafe=True)
    engine.add_exchange(exchange_name="mem", get_candles=source)
    engine.add_strategy(strategy_name="s", interval="1m", get_signal=lambda symbol, when: None)
    seen: list[Any] = []  # (clock ms, tick action or the error)
    engine.listen_signal_live(lambda r: seen.append((clock.now_ms(), r.action)))
    engine.listen_error(lambda e: seen.append((clock.now_ms(), e)))
    return engine, seen


async def drive(engine: bk.Engine, clock: bk.VirtualClock, seen: list[Any], ticks: int) -> None:
    """Run the live loop on the virtual clock until `ticks` ticks (results or errors) happened, then stop."""
    handle = engine.live.background(SYMBOL, strategy_name="s", exchange_name="mem")
    with clock.attach():
        while len(seen) < ticks:
            await clock.sleep(TTL / 2000)
        handle()
        await handle.wait()


class StalledFeed(bk.ReplayExchange):
    """A live feed that stops sending candles: unlike a replay, it never says its data has ended."""

    def data_end_ms(self, symbol: str) -> int | None:
        return None


@pytest.mark.parametrize("limit", [180_000, 600_000])
@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_live_tick_on_a_stalled_feed_is_a_clear_error(tmp_path: Any, kind: str, limit: int) -> None:
    """The feed's last candle opens at T0 + 9 min (closes T0 + 10 min); ticks run every TTL from T0.

    A tick is fine while the newest closed candle is at most CC_LIVE_MAX_CANDLE_AGE_MS old and fails
    with StaleDataError (symbol, close time, age, limit) from then on, each tick, without stopping
    the run. An awaited source is asked for the usual 5 candles; past 5 minutes without one it looks
    back as far as the limit, so a younger hole keeps the old "no closed 1m candles" error.
    """
    memory = bk.MemoryCandles({SYMBOL: flat_candles(T0 - 60 * M, 70, 100.0)})
    clock = bk.VirtualClock(dt(T0))
    source: Any = StalledFeed(memory, clock)
    if kind == "async":
        replay = source

        async def source(symbol: str, interval: str, since: datetime, limit: int) -> list[bk.Candle]:
            return await replay(symbol, interval, since, limit)

    engine, seen = live_engine(tmp_path, source, clock, CC_LIVE_MAX_CANDLE_AGE_MS=limit)
    await drive(engine, clock, seen, 10 + limit // M + 8)
    close = T0 + 10 * M
    for now, what in seen:
        age = now - close
        if age > limit:
            assert isinstance(what, bk.StaleDataError), (age, what)
            assert (what.symbol, what.limit_ms) == (SYMBOL, limit)
            text = str(what)
            assert SYMBOL in text and f"CC_LIVE_MAX_CANDLE_AGE_MS={limit}" in text
            assert f"{what.age_ms / 1000:g} s before this tick" in text
            if what.close_time_ms is not None:
                assert (what.close_time_ms, what.age_ms) == (close, age)
                assert str(close) in text and "the newest closed 1m candle closed at" in text
            else:  # an awaited source's look-back window held no candle: the age is a lower bound
                assert kind == "async" and limit < what.age_ms <= age
                assert "no 1m candle opened at or after" in text
        elif kind == "async" and age > 5 * M:
            assert type(what) is bk.ExchangeError and "no closed 1m candles" in str(what), (age, what)
        else:
            assert what == "idle", (age, what)
    stale = [w for _, w in seen if isinstance(w, bk.StaleDataError)]
    assert len(stale) >= 5  # every later tick failed, and the run went on
    assert any(w.close_time_ms == close for w in stale)
    assert [i.status for i in await engine.live.list()] == ["done"]


async def test_stale_check_off_and_three_minutes_stale_by_default(tmp_path: Any) -> None:
    """Default limit (2 min) flags the issue's 3-minute-stale candles; 0 turns the check off."""
    memory = bk.MemoryCandles({SYMBOL: flat_candles(T0 - 60 * M, 60, 100.0)})  # last closes at T0
    start = T0 + 3 * M
    clock = bk.VirtualClock(dt(start))
    engine, seen = live_engine(tmp_path / "a", StalledFeed(memory, clock), clock)
    assert engine.config.CC_LIVE_MAX_CANDLE_AGE_MS == bk.get_default_config().CC_LIVE_MAX_CANDLE_AGE_MS == 120_000
    await drive(engine, clock, seen, 1)
    assert isinstance(seen[0][1], bk.StaleDataError) and seen[0][1].age_ms == 3 * M

    clock = bk.VirtualClock(dt(start))
    engine, seen = live_engine(tmp_path / "b", StalledFeed(memory, clock), clock, CC_LIVE_MAX_CANDLE_AGE_MS=0)
    await drive(engine, clock, seen, 3)
    assert [w for _, w in seen] == ["idle", "idle", "idle"]


def test_max_candle_age_config_is_validated() -> None:
    engine = bk.Engine()
    for bad, needle in ((-1, ">= 0"), (30_000, "0 (off) or >= 60000"), (1.5, "whole number"), ("x", "whole number")):
        with pytest.raises(bk.ConfigError, match="CC_LIVE_MAX_CANDLE_AGE_MS") as info:
            engine.set_config(CC_LIVE_MAX_CANDLE_AGE_MS=bad)
        assert needle in str(info.value)
    engine.set_config(CC_LIVE_MAX_CANDLE_AGE_MS=60_000)
    engine.set_config(CC_LIVE_MAX_CANDLE_AGE_MS=0)
    assert engine.config.CC_LIVE_MAX_CANDLE_AGE_MS == 0

"""Performance metrics: percentiles and aggregates against a recomputation, bounded memory, opt-in."""

from __future__ import annotations

import math
import statistics
from typing import Any

import pytest
from helpers import T0, M, flat_candles, long, make_engine, once, setup
from hypothesis import given, settings
from hypothesis import strategies as st

import backtest_kit as bk
from backtest_kit.engine.models import PerformanceEvent
from backtest_kit.reports.performance_stats import (
    MAX_SAMPLES,
    PerformanceStats,
    nearest_rank,
    performance_report,
)

try:
    import numpy as np
except ImportError:  # pragma: no cover - numpy comes with the test environment
    np = None  # type: ignore[assignment]


def event(duration: float, metric: str = "backtest_timeframe", *, ts: float = 0.0,
          previous: float | None = None, symbol: str = "BTCUSDT") -> PerformanceEvent:
    return PerformanceEvent(timestamp=ts, previous_timestamp=previous, metric_type=metric, duration=duration,
                            strategy_name="s", exchange_name="mem", symbol=symbol, backtest=True)


def recompute_rank(values: list[float], p: int) -> float:
    """The definition, written out: the element at ceil(n * p / 100) - 1 of the sorted values, >= 0."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(len(ordered) * p / 100) - 1)]


def test_reference_example_percentiles() -> None:
    # Rule 87: durations [1, 2, 3, 4] -> median 2, p95 4, p99 4.
    store = PerformanceStats()
    for d in (3.0, 1.0, 4.0, 2.0):
        store.add(event(d))
    m = store.data("BTCUSDT", "s").metric_stats["backtest_timeframe"]
    assert (m.median, m.p95, m.p99) == (2.0, 4.0, 4.0)
    assert nearest_rank([1.0, 2.0], 50) == 1.0  # the median of two values is the smaller one
    assert nearest_rank([], 50) == 0.0


durations = st.lists(st.floats(0, 1e6, allow_nan=False, allow_infinity=False), min_size=1, max_size=300)


@settings(max_examples=200, deadline=None)
@given(durations, st.lists(st.floats(0, 1e4, allow_nan=False), max_size=300))
def test_metric_stats_match_a_recomputation(values: list[float], gaps: list[float]) -> None:
    store = PerformanceStats()
    waits: list[float] = []
    t = 1_700_000_000_000.0
    previous: float | None = None
    for i, d in enumerate(values):
        t += gaps[i] if i < len(gaps) else 1.0
        store.add(event(d, ts=t, previous=previous))
        if previous is not None:
            waits.append(t - previous)
        previous = t
    data = store.data("BTCUSDT", "s")
    m = data.metric_stats["backtest_timeframe"]
    assert data.total_events == m.count == len(values) == m.sample_size
    assert m.total_duration == pytest.approx(math.fsum(values), rel=1e-9, abs=1e-6)
    assert data.total_duration == pytest.approx(math.fsum(values), rel=1e-9, abs=1e-6)
    assert m.avg_duration == pytest.approx(statistics.fmean(values), rel=1e-9, abs=1e-6)
    assert (m.min_duration, m.max_duration) == (min(values), max(values))
    assert m.std_dev == pytest.approx(statistics.pstdev(values), rel=1e-6, abs=1e-3)
    for p, got in ((50, m.median), (95, m.p95), (99, m.p99)):
        assert got == recompute_rank(values, p)
        if np is not None:
            assert got == float(np.percentile(np.array(values), p, method="inverted_cdf"))
    if waits:
        assert m.avg_wait_time == pytest.approx(statistics.fmean(waits), rel=1e-9, abs=1e-6)
        assert (m.min_wait_time, m.max_wait_time) == pytest.approx((min(waits), max(waits)))
    else:
        assert (m.avg_wait_time, m.min_wait_time, m.max_wait_time) == (0.0, 0.0, 0.0)
    assert [e.duration for e in data.events] == list(reversed(values))  # newest first


@settings(max_examples=100, deadline=None)
@given(durations, st.integers(1, 50))
def test_percentiles_cover_the_most_recent_samples_only(values: list[float], cap: int) -> None:
    store = PerformanceStats(max_samples=cap)
    for d in values:
        store.add(event(d))
    data = store.data("BTCUSDT", "s")
    m = data.metric_stats["backtest_timeframe"]
    recent = values[-cap:]
    assert m.count == len(values) and m.sample_size == len(recent)
    assert m.median == recompute_rank(recent, 50) and m.p99 == recompute_rank(recent, 99)
    assert (m.min_duration, m.max_duration) == (min(values), max(values))  # exact over every event
    assert len(data.events) == len(recent)


def test_memory_is_bounded_per_metric() -> None:
    store = PerformanceStats()
    n = MAX_SAMPLES + 500
    for i in range(n):
        store.add(event(float(i), "live_tick"))
    store.add(event(1.0, "backtest_total"))
    data = store.data("BTCUSDT", "s")
    tick = data.metric_stats["live_tick"]
    assert tick.count == n and tick.sample_size == MAX_SAMPLES
    assert tick.median == float(500 + MAX_SAMPLES // 2 - 1)  # over the last 10 000 values 500 .. 10 499
    assert tick.min_duration == 0.0
    assert len(data.events) == MAX_SAMPLES and data.total_events == n + 1
    store.clear()
    assert store.data("BTCUSDT", "s").total_events == 0
    with pytest.raises(ValueError, match="max_samples"):
        PerformanceStats(0)


# ---------------------------------------------------------------------------------------------------------
# The facade: opt-in collection
# ---------------------------------------------------------------------------------------------------------


async def _backtest(engine: bk.Engine) -> None:
    h = setup(engine, flat_candles(T0, 60, 100.0), once(long(101, 99, 5)), start=T0 + 10 * M, minutes=20)
    await h.run()


async def test_disabled_by_default_and_nothing_is_timed(tmp_path: Any) -> None:
    engine = make_engine(tmp_path)
    assert not engine.performance.enabled
    assert not engine.bus.has_listeners("performance")  # the backtest loop skips every timing
    await _backtest(engine)
    data = await engine.performance.get_data("BTCUSDT", "s")
    assert data.total_events == 0 and data.metric_stats == {} and data.events == []
    assert await engine.performance.get_report("BTCUSDT", "s") == (
        "# Performance Report: s\n\nNo performance metrics recorded yet."
    )


async def test_enabled_collects_backtest_metrics(tmp_path: Any) -> None:
    # Rules 85/86: a backtest gives backtest_total, backtest_timeframe (and backtest_signal) metrics.
    engine = make_engine(tmp_path)
    disable = engine.performance.enable()
    assert engine.performance.enable() == disable  # idempotent
    assert engine.bus.listener_count("performance") == 1
    await _backtest(engine)
    data = await engine.performance.get_data("BTCUSDT", "s")
    assert {"backtest_total", "backtest_timeframe", "backtest_signal"} <= set(data.metric_stats)
    assert data.metric_stats["backtest_total"].count == 1
    assert data.total_events == sum(m.count for m in data.metric_stats.values()) == len(data.events)
    assert data.strategy_name == "s" and data.symbol == "BTCUSDT"
    total = data.metric_stats["backtest_total"]
    assert total.max_duration >= data.metric_stats["backtest_timeframe"].max_duration
    report = await engine.performance.get_report("BTCUSDT", "s")
    assert report.startswith("# Performance Report: s\n\n**Total events:** ")
    disable()
    assert not engine.performance.enabled and not engine.bus.has_listeners("performance")
    assert (await engine.performance.get_data("BTCUSDT", "s")).total_events == data.total_events  # kept
    path = await engine.performance.dump("BTCUSDT", "s")
    assert path == tmp_path / "dump" / "performance" / "BTCUSDT_s.md"
    assert path.read_text() == report
    engine.performance.clear("BTCUSDT", "s")
    assert (await engine.performance.get_data("BTCUSDT", "s")).total_events == 0
    assert bk.Performance is bk.default_engine.performance


def test_report_layout() -> None:
    store = PerformanceStats()
    for d in (1.0, 2.0, 3.0, 4.0):
        store.add(event(d, "backtest_timeframe", ts=d * 10, previous=d * 10 - 5))
    store.add(event(30.0, "backtest_total", ts=100.0, previous=40.0))
    lines = performance_report("sma", store.data("BTCUSDT", "sma")).split("\n")
    assert lines[:11] == [
        "# Performance Report: sma",
        "",
        "**Total events:** 5",
        "**Total execution time:** 40.00ms",
        "**Number of metric types:** 2",
        "",
        "## Time Distribution",
        "",
        "- **backtest_total**: 75.0% (30.00ms total)",  # sorted by total duration, descending
        "- **backtest_timeframe**: 25.0% (10.00ms total)",
        "",
    ]
    assert lines[11:14] == ["## Detailed Metrics", "", (
        "| Metric Type | Count | Total (ms) | Avg (ms) | Min (ms) | Max (ms) | Std Dev (ms) | Median (ms) | "
        "P95 (ms) | P99 (ms) | Avg Wait (ms) | Min Wait (ms) | Max Wait (ms) |")]
    assert lines[14] == "| " + " | ".join(["---"] * 13) + " |"
    assert lines[15] == ("| backtest_total | 1 | 30.00 | 30.00 | 30.00 | 30.00 | 0.00 | 30.00 | 30.00 | 30.00 | "
                         "60.00 | 60.00 | 60.00 |")
    assert lines[16] == ("| backtest_timeframe | 4 | 10.00 | 2.50 | 1.00 | 4.00 | 1.12 | 2.00 | 4.00 | 4.00 | "
                         "5.00 | 5.00 | 5.00 |")
    assert lines[17] == "" and lines[18].startswith("**Note:**")

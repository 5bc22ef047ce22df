"""Statistics: the running aggregate must equal the batch recomputation; the live store stays bounded."""

from __future__ import annotations

import math
from typing import Any

import msgspec
import pytest
from helpers import (
    RESULT_BASE,
    active_result,
    closed_result,
    example_trades,
    expected_pnl,
    idle_result,
    iso_ms,
    opened_result,
    trade_signal,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from backtest_kit.engine.models import (
    CancelledResult,
    ClosedResult,
    CloseReason,
    IdleResult,
    ScheduledResult,
    SignalRow,
)
from backtest_kit.reports.mode_stats import BacktestStats, LiveStats
from backtest_kit.reports.stats import (
    MAX_EVENTS,
    Statistics,
    TradeAggregate,
    round_minutes,
    statistics_from_aggregate,
    statistics_from_trades,
)

SYMBOL = "BTCUSDT"
STRATEGY = "macd-crossover"
MINUTE = 60_000

NUMERIC_FIELDS = (
    "win_rate",
    "avg_pnl",
    "total_pnl",
    "std_dev",
    "sharpe_ratio",
    "annualized_sharpe_ratio",
    "sortino_ratio",
    "profit_factor",
    "expectancy",
    "certainty_ratio",
    "expected_yearly_returns",
    "max_drawdown",
    "max_drawdown_duration_ms",
    "avg_trade_duration_minutes",
)
COUNT_FIELDS = ("total_trades", "winning_trades", "losing_trades", "close_reasons")


def closed(
    pnl: float,
    pending_at: int,
    close_ts: int,
    *,
    sid: str = "s",
    reason: CloseReason = "take_profit",
    current_price: float = 101.0,
    **kw: Any,
) -> ClosedResult:
    """A closed trade given by its PnL and its times (the signal's fields by keyword)."""
    return closed_result(trade_signal(sid, pending_at, **kw), pnl, close_ts, current_price, reason)


def aggregate_stats(trades: list[ClosedResult]) -> Statistics:
    agg = TradeAggregate()
    for t in trades:
        agg.add(t)
    return statistics_from_aggregate(agg, events=[], signals=[])


def assert_same(a: Statistics, b: Statistics) -> None:
    for f in COUNT_FIELDS:
        assert getattr(a, f) == getattr(b, f), f
    for f in NUMERIC_FIELDS:
        x, y = getattr(a, f), getattr(b, f)
        if y is None:
            assert x is None, f
        else:
            assert x is not None, f
            assert math.isfinite(x), f
            assert x == pytest.approx(y, rel=1e-9, abs=1e-9), f


# --- the worked example of [events §4.10](../docs/design/events-and-api.md#410-worked-example)


P1, P2, P3 = (expected_pnl("long", 96400, 97850), expected_pnl("long", 97000, 96000),
              expected_pnl("short", 98000, 95900))


def test_example_pnls() -> None:
    assert [round(p, 4) for p in (P1, P2, P3)] == [1.1013, -1.4287, 1.7469]


@pytest.mark.parametrize("source", ["aggregate", "batch", "store"])
def test_example_figures(source: str) -> None:
    trades = example_trades()
    if source == "aggregate":
        s = aggregate_stats(trades)
    elif source == "batch":
        s = statistics_from_trades(trades)
    else:
        store = BacktestStats()
        for t in trades:
            store.add(t)
        s = store.data()
    assert (s.total_trades, s.winning_trades, s.losing_trades) == (3, 2, 1)
    assert s.win_rate == pytest.approx(2 / 3)
    assert round((s.win_rate or 0) * 100, 2) == 66.67
    assert s.avg_pnl == pytest.approx((P1 + P2 + P3) / 3)
    assert round(s.avg_pnl or 0, 2) == 0.47
    assert s.total_pnl == pytest.approx(P1 + P2 + P3)
    assert round(s.total_pnl or 0, 2) == 1.42
    assert round(s.std_dev or 0, 3) == 1.370
    assert round(s.sharpe_ratio or 0, 3) == 0.345
    assert round(s.annualized_sharpe_ratio or 0, 3) == 6.597
    assert s.annualized_sharpe_ratio == pytest.approx((s.sharpe_ratio or 0) * math.sqrt(365))
    assert round(s.certainty_ratio or 0, 3) == 0.997
    assert round(s.expected_yearly_returns or 0, 2) == 1597.76
    assert s.max_drawdown == pytest.approx(-P2)  # peak 1.1013 → cumulative −0.3273
    assert round(s.max_drawdown or 0, 2) == 1.43
    # Below the 1.1013 peak from 2025-12-01T10:47 until regained at 2025-12-02T05:00.
    assert s.max_drawdown_duration_ms == iso_ms("2025-12-02T05:00:00") - iso_ms("2025-12-01T10:47:00")
    assert s.profit_factor == pytest.approx((P1 + P3) / -P2)
    assert s.sortino_ratio == pytest.approx(((P1 + P2 + P3) / 3) / math.sqrt(P2**2 / 3))
    assert s.expectancy == pytest.approx(2 / 3 * ((P1 + P3) / 2) - 1 / 3 * -P2)
    assert s.avg_trade_duration_minutes == pytest.approx((47 + 120 + 300) / 3)
    assert s.close_reasons == {"take_profit": 2, "stop_loss": 1}
    if source != "aggregate":
        assert [t.signal.id for t in s.signals] == ["c3f1", "b2e9", "a1d4"]  # newest first


# --- running aggregate == batch -----------------------------------------------------------------

REASONS: list[CloseReason] = ["take_profit", "stop_loss", "time_expired"]

trade_specs = st.lists(
    st.tuples(
        st.integers(-5000, 5000).map(lambda k: k / 100),  # pnl %, 2 decimals (zero included)
        st.integers(0, 10 * 86_400_000),  # gap before the entry, ms
        st.integers(0, 3 * 86_400_000),  # trade duration, ms (0 allowed)
        st.sampled_from(REASONS),
    ),
    max_size=60,
)


def build(specs: list[tuple[float, int, int, CloseReason]]) -> list[ClosedResult]:
    out = []
    t = 1_700_000_000_000
    for i, (pnl, gap, dur, reason) in enumerate(specs):
        pending = t + gap
        t = pending + dur
        out.append(closed(pnl, pending, t, sid=f"s{i}", reason=reason))
    return out


@settings(max_examples=400, deadline=None)
@given(trade_specs)
def test_aggregate_equals_batch(specs: list[tuple[float, int, int, CloseReason]]) -> None:
    trades = build(specs)
    assert_same(aggregate_stats(trades), statistics_from_trades(trades))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(-1e3, 1e3, allow_nan=False, allow_subnormal=False), max_size=40))
def test_aggregate_never_leaks_nan(pnls: list[float]) -> None:
    trades = [closed(p, i * 1000, i * 1000 + 500, sid=str(i)) for i, p in enumerate(pnls)]
    s = aggregate_stats(trades)
    for f in NUMERIC_FIELDS:
        v = getattr(s, f)
        assert v is None or math.isfinite(v)
    if pnls:
        assert s.max_drawdown is not None and s.max_drawdown >= 0
        assert s.std_dev is not None and s.std_dev >= 0


def test_equal_pnls_give_zero_std_and_zero_sharpe() -> None:
    # 0.1 + 0.1 + 0.1 = 0.30000000000000004: a naive std dev is ~1e-17 and Sharpe ~1e16.
    trades = [closed(0.1, i * 1000, i * 1000 + 10, sid=str(i)) for i in range(3)]
    for s in (aggregate_stats(trades), statistics_from_trades(trades)):
        assert s.std_dev == 0.0
        assert s.sharpe_ratio == 0.0
        assert s.annualized_sharpe_ratio == 0.0


# --- rules with zero / special cases ------------------------------------------------------------


@pytest.mark.parametrize("make", [lambda: aggregate_stats([]), lambda: statistics_from_trades([])])
def test_empty_gives_none(make: object) -> None:
    s = make()  # type: ignore[operator]
    assert (s.total_trades, s.winning_trades, s.losing_trades) == (0, 0, 0)
    assert s.close_reasons == {}
    for f in NUMERIC_FIELDS:
        assert getattr(s, f) is None, f
    assert s.win_rate_percent is None


def test_empty_stores_give_none() -> None:
    for s in (BacktestStats().data(), LiveStats().data()):
        assert s.total_trades == 0 and s.events == [] and s.signals == []
        for f in NUMERIC_FIELDS:
            assert getattr(s, f) is None, f


def test_reference_zero_rules_without_losses() -> None:
    trades = [closed(1.0, 0, 0, sid="a"), closed(1.0, 0, 0, sid="b"), closed(0.0, 0, 0, sid="c")]
    s = statistics_from_trades(trades)
    assert_same(aggregate_stats(trades), s)
    assert s.certainty_ratio == 0.0  # no losses
    assert s.profit_factor is None
    assert s.sortino_ratio is None
    assert s.expected_yearly_returns == 0.0  # zero mean duration
    assert s.max_drawdown == 0.0 and s.max_drawdown_duration_ms == 0
    assert (s.winning_trades, s.losing_trades) == (2, 0)  # zero PnL is neither
    one = statistics_from_trades([closed(2.0, 0, MINUTE)])
    assert one.std_dev == 0.0 and one.sharpe_ratio == 0.0


def test_drawdown_from_initial_peak_is_timed_from_first_entry() -> None:
    trades = [closed(-1.0, 1000, 5000, sid="a"), closed(-0.5, 6000, 9000, sid="b")]
    for s in (aggregate_stats(trades), statistics_from_trades(trades)):
        assert s.max_drawdown == pytest.approx(1.5)
        assert s.max_drawdown_duration_ms == 8000  # still under water at the last close
        assert s.profit_factor == 0.0


def test_round_minutes_rounds_half_up() -> None:
    assert round_minutes(150_000) == 3  # 2.5 min: JS Math.round → 3 (Python round → 2)
    assert round_minutes(89_999) == 1
    assert round_minutes(0) == 0


def test_aliases() -> None:
    s = statistics_from_trades(example_trades())
    assert (s.win_count, s.loss_count, s.total_closed) == (2, 1, 3)
    assert s.win_rate_percent == pytest.approx(200 / 3)


def test_statistics_serialises() -> None:
    store = BacktestStats()
    for t in example_trades():
        store.add(t)
    data = msgspec.json.decode(msgspec.json.encode(store.data()))
    assert data["total_trades"] == 3 and len(data["signals"]) == 3 and len(data["events"]) == 3


# --- backtest store -----------------------------------------------------------------------------


def test_backtest_store_keeps_every_trade_and_ignores_others() -> None:
    store = BacktestStats(max_events=5)
    trades = build([(float(i % 7 - 3), 1000, 60_000, "take_profit") for i in range(300)])
    sig = trades[0].signal
    base: dict[str, Any] = {
        "symbol": SYMBOL,
        "strategy_name": STRATEGY,
        "exchange_name": "x",
        "current_price": 1.0,
    }
    store.add(IdleResult(**base, backtest=True))
    store.add(CancelledResult(**base, backtest=True, signal=sig, close_timestamp=5))
    for t in trades:
        store.add(t)
    s = store.data()
    assert s.total_trades == 300 == len(s.signals) == len(store)
    assert s.signals[0] is trades[-1] and s.signals[-1] is trades[0]
    assert [e.signal_id for e in s.events] == [t.signal.id for t in trades[::-1][:5]]
    assert s.events[0].duration == 1 and s.events[0].action == "closed"
    assert_same(s, statistics_from_trades(trades))
    store.clear()
    assert store.data().total_trades == 0


# --- live store ---------------------------------------------------------------------------------

BASE: dict[str, Any] = {**RESULT_BASE, "backtest": False}


def live_closed(sig: SignalRow, pnl: float, close_ts: int) -> ClosedResult:
    return closed_result(sig, pnl, close_ts, 101.0, "take_profit" if pnl > 0 else "stop_loss", backtest=False)


def test_idle_ticks_collapse_into_the_newest_row() -> None:
    live = LiveStats()
    live.add(idle_result(1.0), 1000)
    live.add(idle_result(2.0), 2000)
    live.add(idle_result(3.0), 3000)
    ev = live.data().events
    assert len(ev) == 1
    assert (ev[0].timestamp, ev[0].current_price, ev[0].action, ev[0].symbol) == (3000, 3.0, "idle", SYMBOL)

    sig = trade_signal("x", 4000)
    live.add(opened_result(sig), 4000)
    live.add(live_closed(sig, 1.0, 10 * MINUTE), 10 * MINUTE)
    live.add(idle_result(4.0), 11 * MINUTE)  # newest row is closed → a new idle row at the front
    live.add(idle_result(5.0), 12 * MINUTE)  # collapses into it
    ev = live.data().events
    assert [e.action for e in ev] == ["idle", "closed", "opened", "idle"]
    assert ev[0].timestamp == 12 * MINUTE and ev[0].current_price == 5.0
    assert ev[-1].timestamp == 3000  # the old idle row is not touched


def test_active_row_is_updated_in_place() -> None:
    live = LiveStats()
    a, b = trade_signal("a", 1000), trade_signal("b", 2000)
    live.add(opened_result(a), 0)
    live.add(active_result(a, 101.0, 10.0, 0.0), 5000)
    live.add(opened_result(b), 0)
    live.add(active_result(b, 50.0), 6000)
    live.add(active_result(a, 105.0, 50.0, 0.0), 7000)  # a's row is not at the front
    live.add(active_result(b, 51.0), 8000)
    ev = live.data().events
    assert [(e.action, e.signal_id) for e in ev] == [
        ("active", "b"),
        ("opened", "b"),
        ("active", "a"),
        ("opened", "a"),
    ]
    assert (ev[2].timestamp, ev[2].current_price, ev[2].percent_tp) == (7000, 105.0, 50.0)
    assert (ev[0].timestamp, ev[0].current_price) == (8000, 51.0)
    assert ev[3].timestamp == 1000  # opened uses pending_at
    assert ev[3].open_price == ev[3].current_price == 100.0


def test_active_row_evicted_then_reinserted() -> None:
    live = LiveStats(max_events=3)
    a = trade_signal("a", 0)
    live.add(active_result(a, 1.0), 1)
    for i in range(3):
        live.add(opened_result(trade_signal(f"o{i}", i)), 0)
    assert "a" not in [e.signal_id for e in live.data().events]
    live.add(active_result(a, 2.0), 2)  # its old row is gone: a fresh row at the front
    ev = live.data().events
    assert len(ev) == 3
    assert (ev[0].signal_id, ev[0].current_price) == ("a", 2.0)
    live.add(active_result(a, 3.0), 3)
    ev = live.data().events
    assert [e.signal_id for e in ev] == ["a", "o2", "o1"] and ev[0].current_price == 3.0


def test_scheduled_cancelled_and_closed_rows() -> None:
    live = LiveStats()
    sched = trade_signal("s", 0, scheduled_at=1000)
    live.add(ScheduledResult(**BASE, current_price=100.0, signal=sched), 1000)
    live.add(
        CancelledResult(**BASE, current_price=99.0, signal=sched, close_timestamp=1000 + 150_000),
        0,
    )
    sig = trade_signal("c", 10_000)
    live.add(live_closed(sig, -2.0, 10_000 + 150_000), 0)
    s = live.data()
    ev = s.events
    assert [e.action for e in ev] == ["closed", "cancelled", "scheduled"]
    assert ev[0].timestamp == 160_000 and ev[0].duration == 3 and ev[0].pnl == -2.0
    assert ev[0].close_reason == "stop_loss"
    assert ev[1].timestamp == 151_000 and ev[1].duration == 3 and ev[1].pnl is None
    assert ev[2].timestamp == 1000
    assert [r.signal.id for r in s.signals] == ["c"]
    assert s.total_trades == 1 and s.losing_trades == 1


def test_live_deque_is_bounded_but_statistics_cover_every_trade() -> None:
    live = LiveStats()
    assert live.max_events == MAX_EVENTS == 25
    all_closed: list[ClosedResult] = []
    now = 0
    adds = 0
    i = 0
    while adds < 100_000:
        sig = trade_signal(f"sig{i}", now)
        live.add(opened_result(sig), now)
        adds += 1
        for k in range(5):
            now += MINUTE
            live.add(active_result(sig, 100.0 + k), now)
            adds += 1
        now += MINUTE
        c = live_closed(sig, ((i * 37) % 11 - 5) / 3, now)
        all_closed.append(c)
        live.add(c, now)
        adds += 1
        for _ in range(3):
            now += MINUTE
            live.add(idle_result(), now)
            adds += 1
        assert len(live) <= MAX_EVENTS
        i += 1
    assert len(live._active) <= 2 * MAX_EVENTS + 1
    s = live.data()
    assert len(s.events) == MAX_EVENTS
    assert s.total_trades == len(all_closed) == live.aggregate.count
    assert_same(s, statistics_from_trades(all_closed))
    assert s.signals == [r for r in all_closed[::-1][: len(s.signals)]]
    assert {e.action for e in s.events} == {"idle", "closed", "active", "opened"}
    assert [e.action for e in s.events[:4]] == ["idle", "closed", "active", "opened"]
    live.clear()
    assert live.data().total_trades == 0 and live.data().events == []


def test_live_data_is_a_snapshot() -> None:
    live = LiveStats()
    a = trade_signal("a", 0)
    live.add(active_result(a, 1.0), 1)
    snap = live.data()
    live.add(active_result(a, 2.0), 2)
    assert snap.events[0].current_price == 1.0
    assert live.data().events[0].current_price == 2.0


def test_max_events_must_be_positive() -> None:
    with pytest.raises(ValueError):
        LiveStats(max_events=0)

"""Schedule statistics: counts on crafted backtests with limit signals, the store rules, the report."""

from __future__ import annotations

from typing import Any

import pytest
from helpers import T0, M, candles_from_path, dt, flat_candles, long, make_engine, once, setup
from hypothesis import given, settings
from hypothesis import strategies as st

import backtest_kit as bk
from backtest_kit.engine.models import (
    ActiveResult,
    CancelledResult,
    ClosedResult,
    IdleResult,
    OpenedResult,
    PnL,
    ScheduledResult,
    SignalRow,
)
from backtest_kit.reports.schedule_stats import MAX_SCHEDULE_EVENTS, ScheduleStats, schedule_report

SYMBOL = "BTCUSDT"


# ---------------------------------------------------------------------------------------------------------
# End to end: crafted backtests
# ---------------------------------------------------------------------------------------------------------


def _activating_path() -> list[bk.Candle]:
    """100 for 16 minutes, a dip to 94 (fills a long limit at 95 at minute 17), then up through 110."""
    closes = [100.0] * 16 + [96, 94, 100, 105, 111] + [111.0] * 40
    return candles_from_path(T0, closes, spread=0.5)


async def test_limit_signal_that_fills_counts_as_scheduled_and_opened(tmp_path: Any) -> None:
    engine = make_engine(tmp_path, CC_SCHEDULE_AWAIT_MINUTES=10)
    h = setup(engine, _activating_path(), once(long(110, 90, 60, price_open=95)), start=T0 + 10 * M, minutes=30)
    results = await h.run()
    assert [r.action for r in results] == ["closed"]
    closed = results[0]
    assert closed.signal.scheduled_at == T0 + 10 * M and closed.signal.pending_at == T0 + 17 * M

    data = await engine.schedule.get_data(SYMBOL, "s")
    assert (data.total_scheduled, data.total_opened, data.total_cancelled, data.total_events) == (1, 1, 0, 2)
    assert data.activation_rate == 1.0 and data.cancellation_rate == 0.0
    assert data.activation_rate_percent == 100.0
    assert data.avg_activation_time == 7.0  # minutes from scheduled_at to the fill
    assert data.avg_wait_time is None
    assert [e.action for e in data.events] == ["opened", "scheduled"]  # newest first
    opened, scheduled = data.events
    assert opened.timestamp == T0 + 17 * M and opened.duration == 7 and opened.current_price == 95
    assert scheduled.timestamp == T0 + 10 * M and scheduled.duration is None
    assert opened.signal_id == scheduled.signal_id == closed.signal.id


async def test_limit_signal_that_times_out_counts_as_cancelled(tmp_path: Any) -> None:
    engine = make_engine(tmp_path, CC_SCHEDULE_AWAIT_MINUTES=10)
    h = setup(engine, flat_candles(T0, 60, 100.0), once(long(110, 90, 60, price_open=95)),
              start=T0 + 10 * M, minutes=30)
    results = await h.run()
    assert [r.action for r in results] == ["cancelled"]
    data = await engine.schedule.get_data(SYMBOL, "s")
    assert (data.total_scheduled, data.total_opened, data.total_cancelled) == (1, 0, 1)
    assert data.activation_rate == 0.0 and data.cancellation_rate == 1.0
    assert data.avg_wait_time == 10.0 and data.avg_activation_time is None
    assert data.events[0].action == "cancelled" and data.events[0].duration == 10


async def test_market_signals_and_idle_runs_record_nothing(tmp_path: Any) -> None:
    # Rule 82: a strategy that never signals -> zeros and nulls; a market entry is not "scheduled".
    engine = make_engine(tmp_path)
    setup(engine, _activating_path(), once(long(110, 90, 60)), start=T0 + 10 * M, minutes=30)
    await engine.backtest.run(SYMBOL, strategy_name="s", exchange_name="mem", frame_name="f").__anext__()
    data = await engine.schedule.get_data(SYMBOL, "s")
    assert (data.total_scheduled, data.total_opened, data.total_cancelled, data.total_events) == (0, 0, 0, 0)
    assert data.activation_rate is None and data.cancellation_rate is None
    assert data.avg_wait_time is None and data.avg_activation_time is None
    assert data.events == []
    assert schedule_report("s", data) == "# Scheduled Signals Report: s\n\nNo scheduled signals recorded yet."


async def test_newest_event_is_the_scheduled_one_while_the_fill_is_reported(tmp_path: Any) -> None:
    # Rule 84: checked inside on_open (the fill), before the trade closed.
    seen: list[tuple[int, str]] = []
    engine = make_engine(tmp_path, CC_SCHEDULE_AWAIT_MINUTES=10)

    async def on_open(*args: Any) -> None:
        data = await engine.schedule.get_data(SYMBOL, "s")
        seen.append((data.total_scheduled, data.events[0].action))

    h = setup(engine, _activating_path(), once(long(110, 90, 60, price_open=95)), start=T0 + 10 * M,
              minutes=30, callbacks={"on_open": on_open})
    await h.run()
    assert seen == [(1, "scheduled")]


async def test_store_is_cleared_when_a_new_run_of_the_pair_starts(tmp_path: Any) -> None:
    engine = make_engine(tmp_path, CC_SCHEDULE_AWAIT_MINUTES=10)
    start = T0 + 10 * M
    # A limit signal on the first tick of every run.
    setup(engine, _activating_path(), lambda s, w: long(110, 90, 60, price_open=95) if w == dt(start) else None,
          start=start, minutes=30)
    for _ in range(2):
        results = [r async for r in engine.backtest.run(SYMBOL, strategy_name="s", exchange_name="mem",
                                                        frame_name="f")]
        assert [r.action for r in results] == ["closed"]  # each run fills and closes one limit signal
    data = await engine.schedule.get_data(SYMBOL, "s")
    assert (data.total_scheduled, data.total_opened) == (1, 1)  # the second run's only; the first's is gone


async def test_unknown_strategy_and_dump(tmp_path: Any) -> None:
    engine = make_engine(tmp_path, CC_SCHEDULE_AWAIT_MINUTES=10)
    h = setup(engine, _activating_path(), once(long(110, 90, 60, price_open=95)), start=T0 + 10 * M, minutes=30)
    await h.run()
    with pytest.raises(bk.UnknownNameError):
        await engine.schedule.get_data(SYMBOL, "nope")
    path = await engine.schedule.dump(SYMBOL, "s")
    assert path == tmp_path / "dump" / "schedule" / "BTCUSDT_s.md"
    text = path.read_text()
    assert text == await engine.schedule.get_report(SYMBOL, "s")
    assert bk.Schedule is bk.default_engine.schedule


# ---------------------------------------------------------------------------------------------------------
# The store on synthetic results (live-style sequences)
# ---------------------------------------------------------------------------------------------------------


def row(sid: str, scheduled_at: int, pending_at: int, *, is_scheduled: bool, position: str = "long") -> SignalRow:
    return SignalRow(
        id=sid, position=position, price_open=95.0, price_take_profit=110.0,  # type: ignore[arg-type]
        price_stop_loss=90.0, minute_estimated_time=60, note="a | b\nc", symbol=SYMBOL, strategy_name="s",
        exchange_name="mem", scheduled_at=scheduled_at, pending_at=pending_at, is_scheduled=is_scheduled,
    )


BASE = {"symbol": SYMBOL, "strategy_name": "s", "exchange_name": "mem", "backtest": False}


def scheduled(sid: str, at: int) -> ScheduledResult:
    return ScheduledResult(**BASE, current_price=100.0, signal=row(sid, at, at, is_scheduled=True))


def opened(sid: str, at: int, fill: int) -> OpenedResult:
    return OpenedResult(**BASE, current_price=95.0, signal=row(sid, at, fill, is_scheduled=False))


def closed(sid: str, at: int, fill: int, close: int) -> ClosedResult:
    return ClosedResult(**BASE, current_price=110.0, signal=row(sid, at, fill, is_scheduled=False),
                        close_reason="take_profit", close_timestamp=close, pnl=PnL(1.0, 95.0, 110.0))


def cancelled(sid: str, at: int, close: int) -> CancelledResult:
    return CancelledResult(**BASE, current_price=100.0, signal=row(sid, at, at, is_scheduled=True),
                           close_timestamp=close)


def test_live_sequence_counts_the_fill_once() -> None:
    store = ScheduleStats()
    store.add(IdleResult(**BASE, current_price=100.0))
    store.add(scheduled("a", T0))
    store.add(ActiveResult(**BASE, current_price=99.0, signal=row("a", T0, T0, is_scheduled=True),
                           percent_tp=0.0, percent_sl=0.0))
    store.add(opened("a", T0, T0 + 3 * M))
    store.add(ActiveResult(**BASE, current_price=99.0, signal=row("a", T0, T0 + 3 * M, is_scheduled=False),
                           percent_tp=10.0, percent_sl=0.0))
    store.add(closed("a", T0, T0 + 3 * M, T0 + 9 * M))  # already counted at the `opened` result
    data = store.data()
    assert (data.total_scheduled, data.total_opened, data.total_cancelled) == (1, 1, 0)
    assert [e.action for e in data.events] == ["opened", "scheduled"]
    assert data.avg_activation_time == 3.0


def test_restored_scheduled_signal_fill_is_recognised_by_its_times() -> None:
    store = ScheduleStats()
    store.add(opened("restored", T0, T0 + 5 * M))  # scheduled before a restart: never seen as scheduled
    store.add(opened("market", T0 + 6 * M, T0 + 6 * M))  # a market entry: not a fill
    store.add(closed("market", T0 + 6 * M, T0 + 6 * M, T0 + 8 * M))
    data = store.data()
    assert (data.total_scheduled, data.total_opened) == (0, 1)
    assert data.activation_rate is None  # nothing scheduled in this run: no rate


def test_table_is_bounded_but_counts_are_exact() -> None:
    store = ScheduleStats()
    n = MAX_SCHEDULE_EVENTS  # n scheduled + n cancelled events
    for i in range(n):
        store.add(scheduled(str(i), T0 + i * 10 * M))
        store.add(cancelled(str(i), T0 + i * 10 * M, T0 + i * 10 * M + 4 * M))
    data = store.data()
    assert len(data.events) == MAX_SCHEDULE_EVENTS and len(store) == MAX_SCHEDULE_EVENTS
    assert (data.total_events, data.total_scheduled, data.total_cancelled) == (2 * n, n, n)
    assert data.cancellation_rate == 1.0 and data.avg_wait_time == 4.0
    assert data.events[0].signal_id == str(n - 1)
    assert "newest 250 of 500 events" in schedule_report("s", data)
    store.clear()
    assert store.data().total_events == 0 and len(store) == 0
    with pytest.raises(ValueError, match="max_events"):
        ScheduleStats(0)


# A lifecycle: (limit?, filled?, minutes waited, gap after); a market signal ignores the last two flags.
lifecycles = st.lists(st.tuples(st.booleans(), st.booleans(), st.integers(0, 600), st.integers(1, 600)),
                      max_size=40)


@settings(max_examples=150, deadline=None)
@given(lifecycles, st.booleans())
def test_counts_and_averages_match_a_recomputation(specs: list[tuple[bool, bool, int, int]], live: bool) -> None:
    store = ScheduleStats()
    t = T0
    fills: list[int] = []
    waits: list[int] = []
    limits = 0
    for i, (limit, filled, wait_min, gap) in enumerate(specs):
        sid = f"s{i}"
        if not limit:
            store.add(opened(sid, t, t))
            store.add(closed(sid, t, t, t + M))
        else:
            limits += 1
            store.add(scheduled(sid, t))
            if filled:
                fill = t + wait_min * M
                if live:
                    store.add(opened(sid, t, fill))
                store.add(closed(sid, t, fill, fill + M))  # backtest: the close reveals the fill
                fills.append(wait_min * M)
            else:
                store.add(cancelled(sid, t, t + wait_min * M))
                waits.append(wait_min * M)
        t += (wait_min + gap + 2) * M
    data = store.data()
    assert data.total_scheduled == limits
    assert data.total_opened == len(fills) and data.total_cancelled == len(waits)
    assert data.total_events == limits + len(fills) + len(waits)
    if limits:
        assert data.activation_rate == pytest.approx(len(fills) / limits)
        assert data.cancellation_rate == pytest.approx(len(waits) / limits)
        assert data.activation_rate + data.cancellation_rate == pytest.approx(1.0)  # type: ignore[operator]
    else:
        assert data.activation_rate is None and data.cancellation_rate is None
    if fills:
        assert data.avg_activation_time == pytest.approx(sum(fills) / len(fills) / M)
    else:
        assert data.avg_activation_time is None
    if waits:
        assert data.avg_wait_time == pytest.approx(sum(waits) / len(waits) / M)
    else:
        assert data.avg_wait_time is None
    assert len(data.events) == min(data.total_events, MAX_SCHEDULE_EVENTS)


# ---------------------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------------------


def test_report_layout() -> None:
    store = ScheduleStats()
    store.add(scheduled("a", T0))
    store.add(closed("a", T0, T0 + 3 * M, T0 + 9 * M))
    store.add(scheduled("b", T0 + 10 * M))
    store.add(cancelled("b", T0 + 10 * M, T0 + 130 * M))
    lines = schedule_report("limit-strat", store.data()).split("\n")
    assert lines[0] == "# Scheduled Signals Report: limit-strat" and lines[1] == ""
    assert lines[2] == ("| Timestamp | Action | Symbol | Signal ID | Position | Current Price | Entry Price | "
                        "Take Profit | Stop Loss | Wait Time (min) |")
    assert lines[3] == "| " + " | ".join(["---"] * 10) + " |"
    assert lines[4] == ("| 2024-01-01T02:10:00.000Z | CANCELLED | BTCUSDT | b | LONG | 100.00000000 USD | "
                        "95.00000000 USD | 110.00000000 USD | 90.00000000 USD | 120 |")
    assert lines[5].split(" | ")[1] == "SCHEDULED" and lines[5].endswith("| N/A |")
    assert lines[6].split(" | ")[1] == "OPENED" and lines[6].endswith("| 3 |")
    assert lines[-8:] == [
        "**Total events:** 4",
        "**Scheduled signals:** 2",
        "**Opened signals:** 1",
        "**Cancelled signals:** 1",
        "**Activation rate:** 50.00% (higher is better)",
        "**Cancellation rate:** 50.00% (lower is better)",
        "**Average activation time:** 3.00 minutes",
        "**Average wait time (cancelled):** 120.00 minutes",
    ]
    with_note = schedule_report("limit-strat", store.data(), show_note=True).split("\n")
    assert "| Note |" in with_note[2]
    assert "| a \\| b c |" in with_note[4]  # pipes escaped, line breaks flattened


def test_short_positions_are_upper_cased() -> None:
    store = ScheduleStats()
    store.add(ScheduledResult(**BASE, current_price=100.0,
                              signal=row("z", T0, T0, is_scheduled=True, position="short")))
    assert "| SHORT |" in schedule_report("s", store.data())

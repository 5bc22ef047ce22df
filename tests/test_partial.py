"""Partial profit / loss levels
([risk-sizing §3](../docs/design/risk-sizing-portfolio.md#3-partial-profit-and-loss-levels),
[rules 54–65](../docs/design/risk-sizing-portfolio.md#8-acceptance-rules);
[lifecycle §7.3](../docs/design/lifecycle.md#73-progress-percentages) live example).

Port notes: a backtest tracks levels when something consumes them (a partial listener subscribed
before the run, `on_partial_*` callbacks, or `Partial.track_backtests = True`), so the tests that
read `Partial.get_data` after a backtest either listen or set the flag; live runs always track.
The milestone timestamp in a backtest is the close time of the evaluated candle.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import msgspec
import pytest
from helpers import (
    T0,
    M,
    MemoryPersist,
    candle,
    candles_from_path,
    dt,
    live_until_closed,
    long,
    make_engine,
    once,
    short,
)
from hypothesis import given, settings
from hypothesis import strategies as st

import backtest_kit as bk
from backtest_kit.engine.lifecycle import progress_of, window_vwap
from backtest_kit.portfolio.partial import LevelTracker

SYMBOL = "BTCUSDT"


# --------------------------------------------------------------------------------------------- harness
class Recorder:
    def __init__(self, engine: bk.Engine) -> None:
        self.events: list[tuple[str, bk.PartialEvent]] = []
        engine.listen_partial_profit(lambda e: self.events.append(("profit", e)))
        engine.listen_partial_loss(lambda e: self.events.append(("loss", e)))

    def levels(self, side: str) -> list[int]:
        return [e.level for s, e in self.events if s == side]


def backtest(engine: bk.Engine, path: Sequence[float], signal: bk.SignalDto, *, callbacks: Any = None,
             start_price: float = 100.0, flat: bool = False) -> None:
    """A flat `start_price` history, then one candle per price of `path` from T0 on (open = previous
    close, or open = high = low = close when `flat`)."""
    closes = [start_price] * 10 + list(path) + [path[-1]] * 5
    if flat:
        candles = [candle(T0 + (i - 10) * M, p, p, p, p) for i, p in enumerate(closes)]
    else:
        candles = candles_from_path(T0 - 10 * M, closes)
    engine.add_exchange(exchange_name="mem", get_candles=bk.MemoryCandles({SYMBOL: candles}))
    get_signal = once(signal)

    engine.add_strategy(strategy_name="s", interval="1m", get_signal=get_signal, callbacks=callbacks)
    engine.add_frame(frame_name="f", interval="1m", start_date=dt(T0),
                     end_date=dt(T0) + timedelta(minutes=len(path) + 2))


async def run(engine: bk.Engine) -> list[bk.FinishedResult]:
    return [r async for r in engine.backtest.run(SYMBOL, strategy_name="s", exchange_name="mem", frame_name="f")]


def ramp(start: float, step: float, n: int) -> list[float]:
    return [start + step * (i + 1) for i in range(n)]


# ------------------------------------------------------------------------------------- strategy callbacks
@pytest.mark.parametrize(("position", "step", "side"), [
    ("long", 0.5, "profit"), ("long", -0.5, "loss"), ("short", -0.5, "profit"), ("short", 0.5, "loss")])
async def test_rule54_55_callbacks_every_evaluation(position: str, step: float, side: str) -> None:
    engine = make_engine()
    calls: dict[str, list[tuple[float, bool]]] = {"profit": [], "loss": []}
    callbacks = {
        "on_partial_profit": lambda sym, row, price, pct, bt: calls["profit"].append((pct, bt)),
        "on_partial_loss": lambda sym, row, price, pct, bt: calls["loss"].append((pct, bt)),
    }
    signal = (long(tp=110, sl=90, minutes=120) if position == "long" else short(tp=90, sl=110, minutes=120))
    backtest(engine, ramp(100, step, 25), signal, callbacks=callbacks)
    results = await run(engine)
    assert results[0].close_reason == ("take_profit" if side == "profit" else "stop_loss")
    other = "loss" if side == "profit" else "profit"
    assert len(calls[side]) >= 5 and calls[other] == []
    pcts = [p for p, _ in calls[side]]
    assert all(bt for _, bt in calls[side]) and all(0 <= p <= 100 for p in pcts)
    assert all(a < b for a, b in itertools.pairwise(pcts))


# ------------------------------------------------------------------------------------- milestone events
async def test_rule56_and_62_data_and_report_after_a_rising_long() -> None:
    engine = make_engine()
    engine.partial.track_backtests = True
    backtest(engine, ramp(100, 0.5, 25), long(tp=110, sl=90, minutes=120))
    await run(engine)
    data = await engine.partial.get_data(SYMBOL, "s")
    assert data.total_profit > 0 and data.total_loss == 0 and data.total_events == len(data.event_list)
    assert [e.level for e in data.event_list] == sorted((e.level for e in data.event_list), reverse=True)
    report = await engine.partial.get_report(SYMBOL, "s")
    lines = report.split("\n")
    assert lines[0] == "# Partial Profit/Loss Report: BTCUSDT:s" and lines[1] == ""
    assert lines[2] == ("| Action | Symbol | Strategy | Signal ID | Position | Level % | Current Price | Timestamp "
                        "| Mode |")
    assert "| PROFIT | BTCUSDT | s |" in lines[4] and "| LONG | +" in lines[4] and lines[4].endswith("| Backtest |")
    assert lines[-3:] == [f"**Total events:** {data.total_events}", f"**Profit events:** {data.total_profit}",
                          "**Loss events:** 0"]


async def test_rule57_each_level_once_even_when_crossed_again() -> None:
    engine = make_engine(CC_AVG_PRICE_CANDLES_COUNT=1)
    rec = Recorder(engine)
    path = [101.0, 102.5, 101.2, 102.5, 103.0, *ramp(103, 0.5, 15)]
    backtest(engine, path, long(tp=110, sl=90, minutes=120))
    await run(engine)
    profit = rec.levels("profit")
    assert len(profit) >= 3 and len(profit) == len(set(profit)) and rec.levels("loss") == []
    assert profit == sorted(profit)


@pytest.mark.parametrize(("position", "side"), [("long", "profit"), ("long", "loss")])
async def test_rule58_59_percent_steps(position: str, side: str) -> None:
    engine = make_engine(CC_AVG_PRICE_CANDLES_COUNT=1)
    rec = Recorder(engine)
    sign = 1 if side == "profit" else -1
    path = [100 * (1 + sign * p / 100) for p in (5, 12, 25, 35, 50, 55)]
    signal = long(tp=160, sl=40, minutes=120)
    backtest(engine, path, signal)
    await run(engine)
    levels = rec.levels(side)
    assert set(levels) <= {10, 20, 30, 40, 50, 60, 70, 80, 90} and len(levels) >= 4
    assert levels == sorted(set(levels))
    assert rec.levels("loss" if side == "profit" else "profit") == []


async def test_rule60_once_listeners() -> None:
    engine = make_engine()
    got: list[int] = []
    engine.listen_partial_profit_once(lambda e: True, lambda e: got.append(e.level))
    backtest(engine, ramp(100, 0.5, 25), long(tp=110, sl=90, minutes=120))
    await run(engine)
    assert got == [10]
    engine2 = make_engine()
    lost: list[int] = []
    engine2.listen_partial_loss_once(lambda e: True, lambda e: lost.append(e.level))
    backtest(engine2, ramp(100, -0.5, 25), long(tp=110, sl=90, minutes=120))
    await run(engine2)
    assert lost == [10]


async def test_rule61_event_fields() -> None:
    engine = make_engine()
    rec = Recorder(engine)
    backtest(engine, ramp(100, 0.5, 25), long(tp=110, sl=90, minutes=120))
    await run(engine)
    events = [e for _, e in rec.events]
    assert events and all(isinstance(e.level, int) and e.symbol == SYMBOL and e.backtest for e in events)
    assert all(e.strategy_name == "s" and e.exchange_name == "mem" for e in events)
    assert [e.level for e in events] == sorted({e.level for e in events})
    assert all(a.timestamp < b.timestamp for a, b in itertools.pairwise(events))


async def test_rule63_never_traded_symbol() -> None:
    engine = make_engine()
    backtest(engine, ramp(100, 0.5, 5), long(tp=110, sl=90, minutes=120))
    data = await engine.partial.get_data("ETHUSDT", "s")
    assert (data.total_events, data.total_profit, data.total_loss, data.event_list) == (0, 0, 0, [])
    assert await engine.partial.get_report("ETHUSDT", "s") == (
        "# Partial Profit/Loss Report: ETHUSDT:s\n\nNo partial profit/loss events recorded yet.")
    with pytest.raises(bk.UnknownNameError):
        await engine.partial.get_data("ETHUSDT", "nope")


async def test_rule64_a_jump_emits_every_level_in_order_same_timestamp() -> None:
    engine = make_engine(CC_AVG_PRICE_CANDLES_COUNT=1)
    rec = Recorder(engine)
    backtest(engine, [103.5, 103.5, 103.5], long(tp=110, sl=90, minutes=120), flat=True)
    await run(engine)
    first = [e for _, e in rec.events if e.timestamp == rec.events[0][1].timestamp]
    assert [e.level for e in first] == [10, 20, 30]
    assert {e.current_price for e in first} == {103.5}
    assert rec.levels("profit") == [10, 20, 30]  # never repeated on the flat candles after the jump


async def test_backtest_without_a_consumer_tracks_nothing() -> None:
    """Hot path: no listener, no callbacks, no flag -> no tracker in backtests."""
    engine = make_engine()
    backtest(engine, ramp(100, 0.5, 25), long(tp=110, sl=90, minutes=120))
    await run(engine)
    assert (await engine.partial.get_data(SYMBOL, "s")).total_events == 0
    # a notifier with its default filter (no backtest events) does not turn tracking on either
    engine2 = make_engine()
    engine2.add_notifier(bk.LogNotifier())
    backtest(engine2, ramp(100, 0.5, 25), long(tp=110, sl=90, minutes=120))
    await run(engine2)
    assert (await engine2.partial.get_data(SYMBOL, "s")).total_events == 0
    await engine2.close()


async def test_partial_dump_and_clear(tmp_path: Any) -> None:
    engine = make_engine(tmp_path)
    engine.partial.track_backtests = True
    backtest(engine, ramp(100, 0.5, 25), long(tp=110, sl=90, minutes=120))
    await run(engine)
    path = await engine.partial.dump(SYMBOL, "s")
    assert path == tmp_path / "dump" / "partial" / "BTCUSDT_s.md"
    assert path.read_text().startswith("# Partial Profit/Loss Report: BTCUSDT:s")
    engine.partial.clear()
    assert (await engine.partial.get_data(SYMBOL, "s")).total_events == 0


# ----------------------------------------------------------- the vectorised replay equals per-candle calls
async def _slow(row: bk.SignalRow, candles: list[bk.Candle], start: int, end_ts: int, count: int) -> list[Any]:
    engine = bk.Engine()
    out: list[Any] = []
    engine.listen_partial_profit(lambda e: out.append(("p", e.level, e.current_price, e.timestamp)))
    engine.listen_partial_loss(lambda e: out.append(("l", e.level, e.current_price, e.timestamp)))
    tracker = LevelTracker(engine, SYMBOL, "s", True)
    for i in range(start, len(candles)):  # what StrategyInstance._replay_progress does
        c = candles[i]
        if end_ts and c.timestamp >= end_ts:
            break
        price = window_vwap(candles, i + 1, count)
        pt, ps = progress_of(row, price)
        if pt or ps:
            await tracker.progress(row, price, pt, ps, c.timestamp + M)
    return out


async def _fast(row: bk.SignalRow, candles: list[bk.Candle], start: int, end_ts: int, count: int) -> list[Any]:
    engine = bk.Engine()
    out: list[Any] = []
    engine.listen_partial_profit(lambda e: out.append(("p", e.level, e.current_price, e.timestamp)))
    engine.listen_partial_loss(lambda e: out.append(("l", e.level, e.current_price, e.timestamp)))
    await LevelTracker(engine, SYMBOL, "s", True).replay(row, candles, start, end_ts, count)
    return out


@settings(max_examples=150, deadline=None)
@given(seed=st.integers(0, 10**9), count=st.integers(1, 7), n=st.integers(1, 80),
       position=st.sampled_from(["long", "short"]), zero_volume=st.booleans(), cut=st.integers(0, 90))
async def test_replay_equals_per_candle_progress(seed: int, count: int, n: int, position: str, zero_volume: bool,
                                                 cut: int) -> None:
    rnd = random.Random(seed)
    price = 100.0
    candles = []
    for i in range(n + 6):
        o = price
        price = max(1.0, price * (1 + rnd.uniform(-0.03, 0.03)))
        vol = 0.0 if zero_volume and rnd.random() < 0.5 else rnd.uniform(0, 10)
        candles.append(candle(T0 + (i - 5) * M, o, max(o, price) * 1.001, min(o, price) * 0.999, price, vol))
    tp, sl = (110.0, 90.0) if position == "long" else (90.0, 110.0)
    row = bk.SignalRow(id="x", position=position, price_open=100.0, price_take_profit=tp,  # type: ignore[arg-type]
                       price_stop_loss=sl, minute_estimated_time=999, note="", symbol=SYMBOL, strategy_name="s",
                       exchange_name="mem", scheduled_at=T0, pending_at=T0, is_scheduled=False)
    start = min(5, len(candles) - 1)
    end_ts = candles[min(len(candles) - 1, start + cut)].timestamp if cut < 80 else 0
    assert await _fast(row, candles, start, end_ts, count) == await _slow(row, candles, start, end_ts, count)


# ----------------------------------------- live ([lifecycle §7.3](../docs/design/lifecycle.md#73-progress-percentages))
SEGMENTS = (94.0, 95.0, 98.0, 100.6, 103.2, 105.5)
TTL = 5 * 60_000


def segment_price(ts: int) -> float:
    if ts < T0:
        return 95.0
    return SEGMENTS[min(len(SEGMENTS) - 1, (ts - T0) // TTL)]


async def segment_candles(symbol: str, interval: str, since: datetime, limit: int) -> list[bk.Candle]:
    start = int(since.timestamp() * 1000)
    out = []
    for k in range(limit):
        p = segment_price(start + k * M)
        out.append(candle(start + k * M, p, p, p, p))
    return out


def live_engine(tmp_path: Any, clock: bk.VirtualClock, backend: MemoryPersist) -> bk.Engine:
    engine = make_engine(tmp_path, clock=clock, CC_TICK_TTL_MS=TTL)
    engine.use_persist(backend)
    engine.add_exchange(exchange_name="mem", get_candles=segment_candles)
    get_signal = once(long(tp=105, sl=90, minutes=600))

    engine.add_strategy(strategy_name="s", interval="1m", get_signal=get_signal)
    return engine


async def test_live_example_95_105_90(tmp_path: Any) -> None:
    backend = MemoryPersist()
    clock = bk.VirtualClock(dt(T0))
    engine = live_engine(tmp_path, clock, backend)
    rec = Recorder(engine)
    ticks: list[bk.TickResult] = []
    docs: list[Any] = []
    closed = asyncio.Event()

    def on_tick(r: bk.TickResult) -> None:
        ticks.append(r)
        data = backend.data.get(("partial", "BTCUSDT-s"))
        docs.append(None if data is None else msgspec.json.decode(data))
        if r.action == "closed":
            closed.set()

    engine.listen_signal_live(on_tick)
    handle = engine.live.background(SYMBOL, strategy_name="s", exchange_name="mem")
    await asyncio.wait_for(closed.wait(), 10)
    handle()
    await handle.wait()
    await engine.close()

    assert [r.action for r in ticks] == ["opened", "active", "active", "active", "active", "active", "closed"]
    assert ticks[0].signal.price_open == 95.0
    active = [(round(r.percent_tp, 6), round(r.percent_sl, 6)) for r in ticks if r.action == "active"]
    assert active == [(0, 20), (0, 0), (30, 0), (56, 0), (82, 0)]
    assert ticks[-1].close_reason == "take_profit" and ticks[-1].pnl.price_close != 0
    assert [(s, e.level) for s, e in rec.events] == [
        ("loss", 10), ("loss", 20), ("profit", 10), ("profit", 20), ("profit", 30), ("profit", 40), ("profit", 50),
        ("profit", 60), ("profit", 70), ("profit", 80)]
    assert [e.current_price for s, e in rec.events][:2] == [94.0, 94.0]
    times = [e.timestamp for _, e in rec.events]
    assert times[0] == T0 + TTL and times[2] == T0 + 3 * TTL and times[-1] == T0 + 5 * TTL
    assert all(not e.backtest for _, e in rec.events)
    sid = ticks[0].signal.id
    assert docs[1] == {sid: {"profit_levels": [], "loss_levels": [10, 20]}}  # persisted in live mode
    assert docs[5] == {sid: {"profit_levels": [10, 20, 30, 40, 50, 60, 70, 80], "loss_levels": [10, 20]}}
    assert docs[-1] is None and ("partial", "BTCUSDT-s") not in backend.data  # removed on close
    data = await engine.partial.get_data(SYMBOL, "s")
    assert (data.total_profit, data.total_loss) == (8, 2)
    assert "| Live |" in await engine.partial.get_report(SYMBOL, "s")


async def test_rule65_live_restart_does_not_re_emit(tmp_path: Any) -> None:
    backend = MemoryPersist()
    clock = bk.VirtualClock(dt(T0))
    engine = live_engine(tmp_path, clock, backend)
    rec = Recorder(engine)
    holder: dict[str, bk.CancelHandle] = {}
    crashed = asyncio.Event()

    def crash_after_30(e: bk.PartialEvent) -> None:
        if e.level == 30:
            holder["h"].task.cancel()  # a crash right after the tick that reached 30 %
            crashed.set()

    engine.listen_partial_profit(crash_after_30)
    holder["h"] = engine.live.background(SYMBOL, strategy_name="s", exchange_name="mem")
    await asyncio.wait_for(crashed.wait(), 10)
    with contextlib.suppress(asyncio.CancelledError):
        await holder["h"].task
    assert rec.levels("profit") == [10, 20, 30] and rec.levels("loss") == [10, 20]

    engine2 = live_engine(tmp_path, bk.VirtualClock(clock.now()), backend)
    rec2 = Recorder(engine2)
    await live_until_closed(engine2, SYMBOL)
    assert rec2.levels("profit") == [40, 50, 60, 70, 80] and rec2.levels("loss") == []


async def test_corrupt_partial_document_is_reported_and_quarantined(tmp_path: Any) -> None:
    backend = MemoryPersist()
    backend.data[("partial", "BTCUSDT-s")] = b'{"x": {"profit_levels": [10, 30]}}'  # not a prefix
    engine = live_engine(tmp_path, bk.VirtualClock(dt(T0)), backend)
    errors: list[BaseException] = []
    engine.listen_error(errors.append)
    rec = Recorder(engine)
    await live_until_closed(engine, SYMBOL)
    assert len(rec.events) == 10
    assert any(isinstance(e, bk.PersistError) and "partial levels BTCUSDT-s" in str(e) for e in errors)
    assert ("partial", "BTCUSDT-s.corrupt") in backend.data


async def test_rule65_backtests_write_no_partial_documents() -> None:
    engine = make_engine()
    backend = MemoryPersist()
    engine.use_persist(backend)
    Recorder(engine)
    backtest(engine, ramp(100, 0.5, 25), long(tp=110, sl=90, minutes=120))
    await run(engine)
    assert backend.log == []

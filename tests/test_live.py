"""Live mode on a VirtualClock: the tick loop, stop / cancel semantics, errors, listeners, list, stats.

No test sleeps for real. Two ways of driving time are used:

- free running: the test task is not attached to the clock, so virtual time jumps whenever every live
  loop sleeps, and the loops race through their ticks while the test awaits something else;
- driven: the test attaches itself to the clock *after* starting the runs (a task inherits its
  creator's clock ownership, so attaching first would make the runs share the test's ownership).
  Time then stands still until the test sleeps on the clock, which makes "what happened by tick N"
  and "the run ended without the clock moving" exact.
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import os
import sys
import threading
import tracemalloc
from collections.abc import Callable, Iterator, Sequence
from contextlib import aclosing, contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from helpers import REFERENCE_CONFIG, T0, M, MemoryPersist, candles_from_path, concat, dt, flat_candles, long

import backtest_kit as bk
from backtest_kit.engine.models import ActiveResult, ClosedResult, OpenedResult, PnL, SignalRow
from backtest_kit.reports.mode_stats import LiveStats

TTL = 60_001  # the default CC_TICK_TTL_MS
SYMBOL = "BTCUSDT"


# ---------------------------------------------------------------------------------------------- harness
@dataclass
class World:
    """A fresh engine on a VirtualClock with a replay exchange "mem" and recorders of what happened."""

    engine: bk.Engine
    clock: bk.VirtualClock
    events: list[tuple[int, bk.TickResult]] = field(default_factory=list)  # (clock ms, result)
    done: list[bk.DoneEvent] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)
    calls: list[tuple[str, int]] = field(default_factory=list)  # get_signal calls: (symbol, when ms)
    callbacks: list[tuple[str, Any]] = field(default_factory=list)  # (callback name, signal id / symbol)

    def actions(self, symbol: str | None = None) -> list[str]:
        return [r.action for _, r in self.events if symbol is None or r.symbol == symbol]

    def times(self) -> list[int]:
        return [t for t, _ in self.events]

    def start(self, symbol: str = SYMBOL, strategy: str = "s") -> bk.CancelHandle:
        return self.engine.live.background(symbol, strategy_name=strategy, exchange_name="mem")

    async def until(self, predicate: Callable[[], bool], *, max_ticks: int = 10_000) -> None:
        """Driven mode: advance the clock half a tick at a time until `predicate()` holds."""
        for _ in range(2 * max_ticks):
            if predicate():
                return
            await self.clock.sleep(TTL / 2000)
        raise AssertionError("condition not reached")

    async def finish(self, *handles: bk.CancelHandle) -> None:
        """Driven mode: let time pass until every run has ended."""
        await self.until(lambda: all(h.task.done() for h in handles))
        for h in handles:
            await h.wait()


@contextmanager
def driving(clock: bk.VirtualClock) -> Iterator[None]:
    with clock.attach():
        yield


def make_world(
    tmp_path: Path,
    get_signal: Callable[[str, datetime], Any] | None = None,
    *,
    candles: Sequence[bk.Candle] | None = None,
    symbols: Sequence[str] = (SYMBOL,),
    strategies: Sequence[str] = ("s",),
    interval: str = "1m",
    get_candles: Any = None,
    extra_callbacks: dict[str, Any] | None = None,
    **config: Any,
) -> World:
    clock = bk.VirtualClock(dt(T0))
    engine = bk.Engine(clock=clock, persist_dir=tmp_path / "data", dump_dir=tmp_path / "dump")
    engine.set_config({**REFERENCE_CONFIG, **config}, unsafe=True)
    w = World(engine, clock)
    if candles is None:
        candles = flat_candles(T0 - 60 * M, 3 * 1440, 100.0)
    source = bk.MemoryCandles({s: list(candles) for s in symbols})
    engine.add_exchange(exchange_name="mem", get_candles=get_candles or bk.ReplayExchange(source, clock))
    fn = get_signal or (lambda symbol, when: None)

    async def recording_signal(symbol: str, when: datetime) -> Any:
        w.calls.append((symbol, clock.now_ms()))
        result = fn(symbol, when)
        return await result if inspect.isawaitable(result) else result

    def recorder(name: str) -> Callable[..., None]:
        def cb(symbol: str, row: Any = None, *rest: Any) -> None:
            w.callbacks.append((name, getattr(row, "id", symbol)))

        return cb

    callbacks = {name: recorder(name) for name in ("on_open", "on_close", "on_cancel", "on_schedule")}
    callbacks.update(extra_callbacks or {})
    for strategy in strategies:
        engine.add_strategy(strategy_name=strategy, interval=interval, get_signal=recording_signal,
                            callbacks=callbacks)
    engine.listen_signal_live(lambda r: w.events.append((clock.now_ms(), r)))
    engine.listen_done_live(w.done.append)
    engine.listen_error(w.errors.append)
    return w


def first_then_none(*signals: Any) -> Callable[[str, datetime], Any]:
    queue = list(signals)
    return lambda symbol, when: queue.pop(0) if queue else None


def ramp(start: float, end: float, minutes: int) -> list[float]:
    return [start + (end - start) * i / minutes for i in range(1, minutes + 1)]


def no_leaked_tasks() -> None:
    assert asyncio.all_tasks() == {asyncio.current_task()}


# ---------------------------------------------------------------------------------------------- the loop
async def test_run_yields_opened_closed_cancelled_every_tick_ttl(tmp_path: Path) -> None:
    w = make_world(
        tmp_path,
        first_then_none(long(110, 90, 10), long(110, 90, 10, price_open=95)),  # market, then a limit
        CC_SCHEDULE_AWAIT_MINUTES=5,
    )
    results: list[bk.TickResult] = []
    async with aclosing(w.engine.live.run(SYMBOL, strategy_name="s", exchange_name="mem")) as run:
        async for result in run:
            results.append(result)
            if len(results) == 3:
                break
    assert [r.action for r in results] == ["opened", "closed", "cancelled"]
    closed, cancelled = results[1], results[2]
    assert isinstance(closed, bk.ClosedResult) and closed.close_reason == "time_expired"
    assert closed.close_timestamp == closed.signal.pending_at + 10 * TTL  # first tick >= 10 minutes on
    assert isinstance(cancelled, bk.CancelledResult)
    assert cancelled.close_timestamp - cancelled.signal.scheduled_at == 5 * TTL
    # every tick reached the listeners, one TICK_TTL apart, starting at the clock's start
    times = w.times()
    assert times[0] == T0
    assert {b - a for a, b in pairwise(times)} == {TTL}
    assert set(w.actions()) == {"opened", "active", "closed", "scheduled", "cancelled"}
    # a foreground run publishes no done event; breaking out ends it
    assert w.done == []
    assert [i.status for i in await w.engine.live.list()] == ["done"]
    no_leaked_tasks()


async def test_breaking_out_of_run_without_aclosing_is_cleaned_up_by_the_loop(tmp_path: Path) -> None:
    """A bare `break` leaves the generator to the event loop's finaliser (another task and context)."""
    w = make_world(tmp_path, first_then_none(long(110, 90, 3)))
    logged: list[str] = []
    asyncio.get_running_loop().set_exception_handler(lambda loop, ctx: logged.append(str(ctx)))
    async for result in w.engine.live.run(SYMBOL, strategy_name="s", exchange_name="mem"):
        assert result.action == "opened"
        break
    for _ in range(20):
        await asyncio.sleep(0)
    assert [i.status for i in await w.engine.live.list()] == ["done"]
    assert w.clock.attached == 0
    assert logged == []
    no_leaked_tasks()


async def test_run_never_ends_on_its_own(tmp_path: Path) -> None:
    w = make_world(tmp_path)
    handle = w.start()
    with driving(w.clock):
        await w.until(lambda: len(w.events) >= 2000, max_ticks=3000)
        assert not handle.task.done()
        assert [i.status for i in await w.engine.live.list()] == ["running"]
        handle()
        await handle.wait()
    assert len(w.calls) == len(w.events)  # idle every tick, a get_signal call every minute
    assert len(w.done) == 1


def test_unknown_names_raise_at_call_time(tmp_path: Path) -> None:
    w = make_world(tmp_path)
    with pytest.raises(bk.UnknownNameError, match="strategy nope not found"):
        w.engine.live.run(SYMBOL, strategy_name="nope", exchange_name="mem")
    with pytest.raises(bk.UnknownNameError, match="exchange nope not found"):
        w.engine.live.run(SYMBOL, strategy_name="s", exchange_name="nope")
    with pytest.raises(bk.RunStateError, match="running asyncio event loop"):
        w.engine.live.background(SYMBOL, strategy_name="s", exchange_name="mem")  # no loop here


# ---------------------------------------------------------------------------------------------- stopping
async def test_cancel_while_idle_ends_promptly_with_one_done(tmp_path: Path) -> None:
    w = make_world(tmp_path)
    handle = w.start()
    with driving(w.clock):
        await w.until(lambda: len(w.events) >= 5)
        at_cancel = w.clock.now_ms()
        handle()  # plain code, not a callback
        await handle.wait()  # the clock cannot move while this (attached) task waits
        assert w.clock.now_ms() == at_cancel
    assert w.done == [bk.DoneEvent(symbol=SYMBOL, strategy_name="s", exchange_name="mem", backtest=False)]
    assert [(i.symbol, i.strategy_name, i.exchange_name, i.status, i.error)
            for i in await w.engine.live.list()] == [(SYMBOL, "s", "mem", "done", None)]
    no_leaked_tasks()


async def test_cancel_twice_from_another_thread_and_after_the_end(tmp_path: Path) -> None:
    w = make_world(tmp_path)
    handle = w.start()
    with driving(w.clock):
        await w.until(lambda: len(w.events) >= 3)
        threads = [threading.Thread(target=handle) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        handle()
        await handle.wait()
    handle()  # after the end: harmless
    await w.engine.live.stop(SYMBOL, "s")
    for _ in range(10):
        await asyncio.sleep(0)
    assert len(w.done) == 1
    assert w.errors == []
    no_leaked_tasks()


async def test_stop_while_scheduled_drops_it_as_cancelled(tmp_path: Path) -> None:
    w = make_world(tmp_path, lambda s, when: long(110, 90, 30, price_open=95))  # 95 is never reached
    handle = w.start()
    with driving(w.clock):
        await w.until(lambda: "scheduled" in w.actions())
        await w.until(lambda: len(w.events) >= 3)  # waiting: active ticks of the limit signal
        calls, at_stop = len(w.calls), w.clock.now_ms()
        await w.engine.live.stop(SYMBOL, "s")
        await handle.wait()
        assert w.clock.now_ms() == at_stop  # dropped at the tick the stop's wake-up caused
    assert w.actions()[-1] == "cancelled"
    assert w.actions().count("cancelled") == 1
    assert [name for name, _ in w.callbacks] == ["on_schedule", "on_cancel"]
    assert len(w.calls) == calls == 1
    assert len(w.done) == 1


async def test_stop_while_scheduled_foreground_run_ends_after_yielding_cancelled(tmp_path: Path) -> None:
    w = make_world(tmp_path, lambda s, when: long(110, 90, 30, price_open=95))

    async def consume() -> list[bk.TickResult]:
        return [r async for r in w.engine.live.run(SYMBOL, strategy_name="s", exchange_name="mem")]

    task = asyncio.create_task(consume())
    with driving(w.clock):
        await w.until(lambda: "scheduled" in w.actions())
        await w.engine.live.stop(SYMBOL, "s")
        results = await task
    assert [r.action for r in results] == ["cancelled"]
    assert w.done == []  # foreground runs publish no done event
    no_leaked_tasks()


@pytest.mark.parametrize("outcome", ["time_expired", "take_profit", "stop_loss"])
async def test_stop_while_open_keeps_monitoring_until_the_close(tmp_path: Path, outcome: str) -> None:
    after = {"time_expired": [100.0] * 60, "take_profit": ramp(100, 120, 30), "stop_loss": ramp(100, 80, 30)}
    candles = concat(flat_candles(T0 - 60 * M, 70, 100.0),
                     candles_from_path(T0 + 10 * M, after[outcome] + [100.0] * 3000))
    w = make_world(tmp_path, lambda s, when: long(110, 90, 40), candles=candles)
    handle = w.start()
    with driving(w.clock):
        await w.until(lambda: "opened" in w.actions())
        await w.until(lambda: len(w.events) >= 3)
        calls = len(w.calls)
        await w.engine.live.stop(SYMBOL, "s")
        stopped_at = len(w.events)
        await w.finish(handle)
    assert len(w.calls) == calls == 1  # no new signal after the stop
    after_stop = w.actions()[stopped_at:]
    assert after_stop[-1] == "closed" and set(after_stop[:-1]) == {"active"} and len(after_stop) > 3
    closed = w.events[-1][1]
    assert isinstance(closed, bk.ClosedResult) and closed.close_reason == outcome
    assert [name for name, _ in w.callbacks] == ["on_open", "on_close"]
    assert len(w.done) == 1
    assert [i.status for i in await w.engine.live.list()] == ["done"]
    stats = await w.engine.live.get_data(SYMBOL, "s")
    assert stats.total_trades == 1


async def test_cancel_on_every_tick_while_open_does_not_spin(tmp_path: Path) -> None:
    """cancel() called again and again (here from a listener on every tick) keeps the tick period."""
    w = make_world(tmp_path, first_then_none(long(110, 90, 30)))
    handle: bk.CancelHandle | None = None

    def cancel_again(result: bk.TickResult) -> None:
        if handle is not None and result.action != "opened":
            handle()

    w.engine.listen_signal_live(cancel_again)
    handle = w.start()
    await asyncio.wait_for(handle.wait(), 5)
    assert w.actions() == ["opened"] + ["active"] * 30 + ["closed"]  # one extra tick: the stop's wake-up
    gaps = [b - a for a, b in pairwise(w.times())]
    assert gaps == [TTL, 0] + [TTL] * 29
    assert len(w.done) == 1


async def test_stop_before_start_does_not_affect_a_later_run(tmp_path: Path) -> None:
    w = make_world(tmp_path, first_then_none(long(110, 90, 5)))
    await w.engine.live.stop(SYMBOL, "s")  # prepares the pair only
    assert [i.status for i in await w.engine.live.list()] == ["idle"]
    handle = w.start()
    with driving(w.clock):
        await w.until(lambda: "closed" in w.actions())
        handle()
        await handle.wait()
    assert w.actions()[0] == "opened"


async def test_background_while_running_reuses_the_task_and_restarts_after_the_end(tmp_path: Path) -> None:
    w = make_world(tmp_path, first_then_none(long(110, 90, 3)))
    first = w.start()
    second = w.start()
    assert second.task is first.task
    with driving(w.clock):
        await w.until(lambda: "closed" in w.actions())
        second()
        await first.wait()
        assert (await w.engine.live.get_data(SYMBOL, "s")).total_trades == 1
        third = w.start()  # a fresh run: new task, statistics start over
        assert third.task is not first.task
        await w.until(lambda: len(w.events) > 10)
        third()
        await third.wait()
    assert (await w.engine.live.get_data(SYMBOL, "s")).total_trades == 0
    assert len(w.done) == 2


# ---------------------------------------------------------------------------------------------- errors
async def test_get_signal_errors_are_reported_and_the_loop_goes_on(tmp_path: Path) -> None:
    attempts = 0

    def flaky(symbol: str, when: datetime) -> Any:
        nonlocal attempts
        attempts += 1
        if attempts <= 3:
            raise ValueError(f"boom {attempts}")
        return long(110, 90, 5) if attempts == 4 else None

    w = make_world(tmp_path, flaky)
    handle = w.start()
    with driving(w.clock):
        await w.until(lambda: "closed" in w.actions())
        handle()
        await handle.wait()
    assert [str(e) for e in w.errors] == ["boom 1", "boom 2", "boom 3"]
    assert w.actions()[:5] == ["idle", "idle", "idle", "opened", "active"]
    assert {b - a for a, b in pairwise(w.times())} == {TTL}
    assert len(w.done) == 1


async def test_get_candles_errors_fail_the_tick_which_is_retried_a_tick_later(tmp_path: Path) -> None:
    source = bk.MemoryCandles({SYMBOL: flat_candles(T0 - 60 * M, 3 * 1440, 100.0)})
    down = (T0 + 3 * TTL, T0 + 6 * TTL)  # the exchange fails for the ticks 3, 4, 5 and 6
    clock_box: list[bk.VirtualClock] = []

    async def get_candles(symbol: str, interval: str, since: datetime, limit: int) -> list[bk.Candle]:
        now = clock_box[0].now_ms()
        if down[0] <= now <= down[1]:
            raise ConnectionError(f"exchange down at {now}")
        return [c for c in await source(symbol, interval, since, limit) if c.timestamp + M <= now]

    w = make_world(tmp_path, first_then_none(long(110, 90, 10)), get_candles=get_candles)
    clock_box.append(w.clock)
    error_times: list[int] = []
    w.engine.listen_error(lambda e: error_times.append(w.clock.now_ms()))
    handle = w.start()
    with driving(w.clock):
        await w.until(lambda: "closed" in w.actions())
        handle()
        await handle.wait()
    assert error_times == [T0 + k * TTL for k in (3, 4, 5, 6)]
    assert all(isinstance(e, bk.ExchangeError) for e in w.errors)
    # the position opened at tick 0 survived the outage and expired on time
    assert w.actions()[:4] == ["opened", "active", "active", "active"]
    ticks = sorted(w.times() + error_times)
    assert {b - a for a, b in pairwise(ticks)} == {TTL}
    closed = [r for _, r in w.events if isinstance(r, bk.ClosedResult)]
    assert len(closed) == 1 and closed[0].close_reason == "time_expired"
    assert len(w.done) == 1


async def test_raising_listener_and_callback_never_stop_the_run(tmp_path: Path) -> None:
    def bad_callback(*args: Any) -> None:
        raise RuntimeError("callback")

    def bad_listener(result: bk.TickResult) -> None:
        raise RuntimeError("listener")

    w = make_world(tmp_path, first_then_none(long(110, 90, 3)), extra_callbacks={"on_active": bad_callback})

    w.engine.listen_signal_live(bad_listener)
    handle = w.start()
    with driving(w.clock):
        await w.until(lambda: "closed" in w.actions())
        handle()
        await handle.wait()
    assert [str(e) for e in w.errors].count("listener") == len(w.events) >= 4
    assert [str(e) for e in w.errors].count("callback") == w.actions().count("active") == 2
    assert w.actions() == ["opened", "active", "active", "closed"] + ["idle"] * (len(w.events) - 4)
    assert len(w.done) == 1


class FailingClock(bk.VirtualClock):
    """Its sleep fails after a few calls: the run's task fails."""

    def __init__(self, fail_after: int) -> None:
        super().__init__(dt(T0))
        self.left = fail_after

    async def sleep(self, seconds: float) -> None:
        self.left -= 1
        if self.left < 0:
            raise OSError("clock broke")
        await super().sleep(seconds)


async def test_list_reports_a_failed_run_as_done_with_its_error(tmp_path: Path) -> None:
    clock = FailingClock(fail_after=3)
    engine = bk.Engine(clock=clock, persist_dir=tmp_path / "data", dump_dir=tmp_path / "dump")
    engine.set_config(REFERENCE_CONFIG, unsafe=True)
    source = bk.MemoryCandles({SYMBOL: flat_candles(T0 - 60 * M, 200, 100.0)})
    engine.add_exchange(exchange_name="mem", get_candles=bk.ReplayExchange(source, clock))
    engine.add_strategy(strategy_name="s", interval="1m", get_signal=lambda s, w: None)
    exits: list[BaseException] = []
    done: list[bk.DoneEvent] = []
    engine.listen_exit(exits.append)
    engine.listen_done_live(done.append)
    handle = engine.live.background(SYMBOL, strategy_name="s", exchange_name="mem")
    await asyncio.wait_for(asyncio.shield(handle.task), 5)
    [info] = await engine.live.list()
    assert info.status == "done" and info.error is not None and "clock broke" in info.error
    assert [str(e) for e in exits] == ["clock broke"]
    assert len(done) == 1


# ---------------------------------------------------------------------------------------------- listeners
async def test_done_reaches_listeners_once_after_every_signal_event(tmp_path: Path) -> None:
    w = make_world(tmp_path, first_then_none(long(110, 90, 3)))
    seen: list[str] = []

    async def slow_signal(result: bk.TickResult) -> None:
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        seen.append(result.action)

    async def slow_done(event: bk.DoneEvent) -> None:
        await asyncio.sleep(0)
        seen.append("done")

    w.engine.listen_signal_live(slow_signal)
    w.engine.listen_done_live(slow_done)
    handle = w.start()
    with driving(w.clock):
        await w.until(lambda: "closed" in w.actions())
        handle()
        handle()
        await w.engine.live.stop(SYMBOL, "s")
        await handle.wait()
    assert seen[-1] == "done" and seen.count("done") == 1
    assert seen[:-1] == w.actions()


async def test_listener_ordering_across_many_pairs(tmp_path: Path) -> None:
    symbols = [f"S{i:02d}USDT" for i in range(10)]
    strategies = ("a", "b")

    def get_signal(symbol: str, when: datetime) -> Any:
        minute = (int(when.timestamp() * 1000) - T0) // M
        return long(110, 90, 2) if (minute + int(symbol[1:3])) % 7 == 0 else None

    w = make_world(tmp_path, get_signal, symbols=symbols, strategies=strategies)
    global_order: list[tuple[str, str, int]] = []
    async_order: list[tuple[str, str, int]] = []
    done_order: list[tuple[str, str]] = []
    delivered: list[bool] = []
    inflight = 0
    max_inflight = 0

    def key(r: bk.TickResult) -> tuple[str, str, int]:
        return (r.symbol, r.strategy_name, w.clock.now_ms())

    w.engine.listen_signal(lambda r: global_order.append(key(r)))

    async def slow(r: bk.TickResult) -> None:
        nonlocal inflight, max_inflight
        inflight += 1
        max_inflight = max(max_inflight, inflight)
        await asyncio.sleep(0)
        async_order.append(key(r))
        inflight -= 1

    async def on_done(event: bk.DoneEvent) -> None:
        await asyncio.sleep(0)
        pair = (event.symbol, event.strategy_name)
        done_order.append(pair)
        # every event of this pair already reached the slow signal listener
        emitted = sum(1 for _, r in w.events if (r.symbol, r.strategy_name) == pair)
        delivered.append(sum(1 for s, st, _ in async_order if (s, st) == pair) == emitted)

    w.engine.listen_signal_live(slow)
    w.engine.listen_done_live(on_done)
    handles = [w.start(s, st) for s in symbols for st in strategies]
    with driving(w.clock):
        await w.until(lambda: len(w.events) >= 40 * len(handles))
        for h in handles:
            h()
        await w.finish(*handles)
    pairs = {(s, st) for s in symbols for st in strategies}
    sync_order = [(r.symbol, r.strategy_name, t) for t, r in w.events]
    assert max_inflight == 1  # one event at a time
    assert async_order == sync_order == global_order  # everyone sees the emission order
    assert [t for *_, t in sync_order] == sorted(t for *_, t in sync_order)  # time never goes back
    for pair in pairs:  # per pair: one tick per TICK_TTL, but a stop wakes a pair with a position at once
        times = [t for s, st, t in sync_order if (s, st) == pair]
        gaps = [b - a for a, b in pairwise(times)]
        assert sum(1 for g in gaps if g != TTL) <= 1 and all(0 <= g <= TTL for g in gaps)
        actions = [r.action for _, r in w.events if (r.symbol, r.strategy_name) == pair]
        trades = [a for a in actions if a in ("opened", "closed")]
        assert trades == ["opened", "closed"] * (len(trades) // 2)  # lifecycle order, every trade closed
    assert set(done_order) == pairs and len(done_order) == len(w.done) == len(handles)
    assert delivered == [True] * len(handles)
    assert all(i.status == "done" for i in await w.engine.live.list())


async def test_list_shows_three_running_pairs_then_done(tmp_path: Path) -> None:
    symbols = ["AAAUSDT", "BBBUSDT", "CCCUSDT"]
    w = make_world(tmp_path, symbols=symbols)
    await w.engine.live.stop("DDDUSDT", "s")  # created by a facade call, never started
    handles = [w.start(s) for s in symbols]
    with driving(w.clock):
        await w.until(lambda: len(w.events) >= 9)
        items = await w.engine.live.list()
        assert {(i.symbol, i.status) for i in items} == {(s, "running") for s in symbols} | {("DDDUSDT", "idle")}
        assert len({i.id for i in items}) == 4
        for h in handles:
            h()
        await w.finish(*handles)
    items = await w.engine.live.list()
    assert {(i.symbol, i.strategy_name, i.exchange_name, i.status) for i in items if i.symbol != "DDDUSDT"} == {
        (s, "s", "mem", "done") for s in symbols
    }


# ---------------------------------------------------------------------------------------------- statistics
async def test_statistics_report_and_dump(tmp_path: Path) -> None:
    candles = concat(flat_candles(T0 - 60 * M, 60, 100.0),
                     candles_from_path(T0, ([100.0] * 5 + ramp(100, 112, 10) + ramp(112, 100, 10)) * 40))
    async def around_the_price(symbol: str, when: datetime) -> bk.SignalDto:
        price = await bk.get_average_price(symbol)
        return long(price * 1.05, price * 0.95, 30)

    w = make_world(tmp_path, around_the_price, candles=candles)
    handle = w.start()
    with driving(w.clock):
        await w.until(lambda: w.actions().count("closed") >= 10)
        handle()
        await w.finish(handle)
    stats = await w.engine.live.get_data(SYMBOL, "s")
    closed = [r for _, r in w.events if isinstance(r, bk.ClosedResult)]
    assert stats.total_trades == len(closed) >= 10
    assert stats.total_pnl == pytest.approx(sum(r.pnl.pnl_percentage for r in closed))
    assert len(stats.events) <= w.engine.config.MAX_EVENTS == 25
    assert [e.timestamp for e in stats.events] == sorted((e.timestamp for e in stats.events), reverse=True)
    report = await w.engine.live.get_report(SYMBOL, "s")
    assert report.startswith("# Live Trading Report: s")
    path = await w.engine.live.dump(SYMBOL, "s")
    assert path == tmp_path / "dump" / "live" / f"{SYMBOL}_s.md"
    assert path.read_text().startswith("# Live Trading Report: s")
    custom = await w.engine.live.dump(SYMBOL, "s", tmp_path / "elsewhere")
    assert custom == tmp_path / "elsewhere" / f"{SYMBOL}_s.md"


def _results(n_signals: int) -> list[list[bk.TickResult]]:
    """Per signal: opened, 5 active ticks, closed (7 events), with distinct signal ids."""
    out = []
    for k in range(n_signals):
        row = SignalRow(id=f"sig-{k}", position="long", price_open=100.0, price_take_profit=110.0,
                        price_stop_loss=90.0, minute_estimated_time=60, note="", symbol=SYMBOL,
                        strategy_name="s", exchange_name="mem", scheduled_at=T0 + k * M, pending_at=T0 + k * M,
                        is_scheduled=False)
        names = {"symbol": SYMBOL, "strategy_name": "s", "exchange_name": "mem"}
        trade: list[bk.TickResult] = [OpenedResult(**names, current_price=100.0, backtest=False, signal=row)]
        trade += [ActiveResult(**names, current_price=100.0 + i, backtest=False, signal=row,
                               percent_tp=10.0 * i, percent_sl=0.0) for i in range(5)]
        pnl = PnL(1.0 if k % 3 else -0.5, 100.0, 101.0)
        trade.append(ClosedResult(**names, current_price=101.0, backtest=False, signal=row,
                                  close_reason="take_profit", close_timestamp=T0 + k * M + 5 * M, pnl=pnl))
        out.append(trade)
    return out


def _deep_size(root: object) -> int:
    """Bytes reachable from `root` (each object counted once)."""
    seen: set[int] = set()
    stack = [root]
    total = 0
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, type):
            continue
        seen.add(id(obj))
        total += sys.getsizeof(obj)
        stack.extend(gc.get_referents(obj))
    return total


def test_live_stats_memory_is_flat_over_a_million_events() -> None:
    """[Decision 12](../docs/design/decisions.md#decision-12-bounded-live-table-exact-statistics): a
    bounded deque of MAX_EVENTS rows plus O(1) running aggregates.

    A million tick results go through the live store. Its reachable size is the same after 100 000
    and after 1 000 000 events, and of everything allocated during the last 200 000 events (traced
    by tracemalloc) almost nothing is still held at the end.
    """
    trades = _results(1000)
    per_trade = len(trades[0])
    stats = LiveStats(25)
    n = 0

    def feed(until: int) -> None:
        nonlocal n
        while n < until:
            for result in trades[(n // per_trade) % len(trades)]:
                stats.add(result, T0 + n)
                n += 1

    feed(100_000)
    size_100k = _deep_size(stats)
    feed(800_000)
    gc.collect()
    tracemalloc.start()
    try:
        feed(1_000_000)
        gc.collect()
        held = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert held < 64 * 1024
    assert abs(_deep_size(stats) - size_100k) < 4 * 1024
    data = stats.data()
    assert len(data.events) == 25
    assert data.total_trades == n // per_trade


async def _long_run(ticks: int, checkpoints: int = 4) -> dict[int, int]:
    """A VirtualClock live run of `ticks` 1-second ticks, one 1-minute trade after another (opened,
    59 active ticks, closed). The first half runs untraced (warm-up); tracemalloc then follows the
    second half: returns, at `checkpoints` evenly spaced ticks, the bytes allocated since the
    warm-up that are still held."""
    clock = bk.VirtualClock(dt(T0))
    engine = bk.Engine(clock=clock)
    engine.use_persist(MemoryPersist(record=False))
    engine.set_config({**REFERENCE_CONFIG, "CC_TICK_TTL_MS": 1000}, unsafe=True)
    source = bk.MemoryCandles({SYMBOL: flat_candles(T0 - 60 * M, ticks * 1000 // M + 200, 100.0)})
    engine.add_exchange(exchange_name="mem", get_candles=bk.ReplayExchange(source, clock))
    engine.add_strategy(strategy_name="s", interval="1m", get_signal=lambda s, when: long(100.5, 99.5, 1))
    sizes: dict[int, int] = {}
    count = 0
    warmup = ticks // 2
    every = (ticks - warmup) // checkpoints
    handle: bk.CancelHandle | None = None

    def checkpoint(r: bk.TickResult) -> None:
        nonlocal count
        count += 1
        if count == warmup:
            gc.collect()
            tracemalloc.start()
        elif count > warmup and (count - warmup) % every == 0:
            gc.collect()
            sizes[count] = tracemalloc.get_traced_memory()[0]
        if count == ticks and handle is not None:
            handle()

    engine.listen_signal_live(checkpoint)
    try:
        handle = engine.live.background(SYMBOL, strategy_name="s", exchange_name="mem")
        await handle.wait()
    finally:
        tracemalloc.stop()
    stats = await engine.live.get_data(SYMBOL, "s")
    assert stats.total_trades >= ticks // 61 - 1 and len(stats.events) == 25
    return sizes


async def test_live_run_memory_is_flat_end_to_end() -> None:
    """The whole live path (loop, clock, bus, statistics, persistence) keeps no per-tick state.

    20 000 ticks by default (~3 s); BK_LIVE_MEMORY_TICKS=1000000 runs the million-tick version.
    """
    ticks = int(os.environ.get("BK_LIVE_MEMORY_TICKS", "20000"))
    sizes = await _long_run(ticks)
    held = [sizes[k] for k in sorted(sizes)]
    assert len(held) == 4
    assert max(held) < 64 * 1024, sizes  # what the traced half allocated and still holds
    assert held[-1] - held[0] < 16 * 1024, sizes  # and it does not grow with the ticks

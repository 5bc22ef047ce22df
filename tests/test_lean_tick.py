"""The lean live tick (issue "Speed", items 3 and 4): the get_signal watchdog, the SystemClock tick
wheel, and sync listeners called directly after an async one.

No test sleeps on time to pass for its own sake. The get_signal timeout is a wall-clock bound, so the
overrun tests use a 0.05 s limit, as tests/test_backtest.py does, and wait for events, not for time.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_live import SYMBOL, TTL, make_world

import backtest_kit as bk
from backtest_kit.engine.bus import EventBus
from backtest_kit.engine.clock import _WHEELS
from backtest_kit.engine.strategy import _WATCHDOGS

HANG_GUARD = 20  # seconds of wall time before a deadlocked test fails instead of hanging


# ------------------------------------------------------------------------------ get_signal watchdog
async def test_overrunning_get_signal_on_a_virtual_clock_is_cancelled_reported_and_the_pair_goes_on(
    tmp_path: Path,
) -> None:
    never = asyncio.Event()
    cancelled: list[bool] = []
    calls = [0]
    third = asyncio.Event()

    async def get_signal(symbol: str, when: datetime) -> None:
        calls[0] += 1
        if calls[0] == 3:
            third.set()
        if calls[0] == 1:
            try:
                await never.wait()
            except asyncio.CancelledError:
                cancelled.append(True)
                raise
        return None

    w = make_world(tmp_path, get_signal, CC_MAX_SIGNAL_GENERATION_SECONDS=0.05)
    handle = w.start()  # not driven: the pair alone holds virtual time, so the hang freezes it
    await asyncio.wait_for(third.wait(), HANG_GUARD)
    handle()
    await asyncio.wait_for(handle.wait(), HANG_GUARD)
    assert cancelled == [True]
    timeouts = [e for e in w.errors if isinstance(e, bk.SignalTimeoutError)]
    assert len(timeouts) == 1 and "CC_MAX_SIGNAL_GENERATION_SECONDS=0.05" in str(timeouts[0])
    assert w.actions()[0] == "idle"  # the overrun tick ended idle, and later ticks ran
    first, second = w.calls[0][1], w.calls[1][1]
    assert second - first == TTL  # time stood still while the call hung: the next tick is one period on
    assert not handle.task.cancelled() and handle.task.cancelling() == 0
    assert not _WATCHDOGS[asyncio.get_running_loop()].running


async def test_get_signal_swallowing_the_cancel_is_no_error_and_leaves_the_task_uncancelled(
    tmp_path: Path,
) -> None:
    """As with `asyncio.timeout`: a call that swallows the cancellation returns normally, and the
    pair's task is not left with a pending cancel count (a later timeout in it would misfire)."""
    never = asyncio.Event()
    seen_cancelling: list[int] = []
    calls = [0]
    second = asyncio.Event()

    async def get_signal(symbol: str, when: datetime) -> None:
        calls[0] += 1
        if calls[0] == 2:
            second.set()
        task = asyncio.current_task()
        assert task is not None
        seen_cancelling.append(task.cancelling())
        if calls[0] == 1:
            with contextlib.suppress(asyncio.CancelledError):
                await never.wait()
        return None

    w = make_world(tmp_path, get_signal, CC_MAX_SIGNAL_GENERATION_SECONDS=0.05)
    handle = w.start()
    await asyncio.wait_for(second.wait(), HANG_GUARD)
    handle()
    await asyncio.wait_for(handle.wait(), HANG_GUARD)
    assert seen_cancelling[:2] == [0, 0]
    assert not [e for e in w.errors if isinstance(e, bk.SignalTimeoutError)]


async def test_cancelling_the_pair_inside_get_signal_is_a_cancel_not_a_timeout(tmp_path: Path) -> None:
    entered = asyncio.Event()
    never = asyncio.Event()

    async def get_signal(symbol: str, when: datetime) -> None:
        entered.set()
        await never.wait()

    w = make_world(tmp_path, get_signal, CC_MAX_SIGNAL_GENERATION_SECONDS=60)
    handle = w.start()
    await asyncio.wait_for(entered.wait(), HANG_GUARD)
    handle.task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await handle.task
    assert not [e for e in w.errors if isinstance(e, bk.SignalTimeoutError)]
    assert not _WATCHDOGS[asyncio.get_running_loop()].running  # the call left the watchdog


async def test_watchdog_cancels_only_the_calls_that_overran() -> None:
    """Two pairs' calls under one watchdog: the slow one is cut, the quick one is untouched even
    though the watchdog's timer was armed for it first."""
    engine = bk.Engine()
    engine.set_config({"CC_MAX_SIGNAL_GENERATION_SECONDS": 0.05}, unsafe=True)
    release_quick = asyncio.Event()
    outcome: dict[str, str] = {}

    async def get_signal(symbol: str, when: datetime) -> None:
        try:
            if symbol == "QUICK":
                await release_quick.wait()
            else:
                await asyncio.Event().wait()
        except asyncio.CancelledError:
            outcome[symbol] = "cancelled"
            raise
        outcome[symbol] = "returned"

    from backtest_kit.engine.strategy import _watchdog

    watchdog = _watchdog()
    loop = asyncio.get_running_loop()

    async def call(symbol: str, seconds: float) -> str:
        task = asyncio.current_task()
        assert task is not None
        deadline = watchdog.enter(task, seconds)
        try:
            await get_signal(symbol, datetime.now())
            return "ok"
        except asyncio.CancelledError:
            if deadline.expired and task.uncancel() <= deadline.cancelling:
                deadline.expired = False
                return "timeout"
            raise
        finally:
            watchdog.leave(deadline)

    quick = loop.create_task(call("QUICK", 0.01))  # armed first, with the earlier deadline
    slow = loop.create_task(call("SLOW", 0.05))
    await asyncio.sleep(0)
    release_quick.set()
    assert await asyncio.wait_for(quick, HANG_GUARD) == "ok"
    assert await asyncio.wait_for(slow, HANG_GUARD) == "timeout"
    assert outcome == {"QUICK": "returned", "SLOW": "cancelled"}
    assert not watchdog.running and watchdog.handle is None
    await engine.close()


# ---------------------------------------------------------------------------------- SystemClock wheel
async def test_system_clock_timers_share_a_bucket_never_fire_early_and_cancel_alone() -> None:
    clock = bk.SystemClock()
    loop = asyncio.get_running_loop()
    start = loop.time()
    timers = [clock.timer(0.02) for _ in range(50)]
    wheel = _WHEELS[loop]
    assert len(wheel.buckets) <= 2  # 50 timers due within the same millisecond or two
    timers[0].cancel()
    await asyncio.wait_for(asyncio.gather(*timers[1:]), HANG_GUARD)
    assert loop.time() >= start + 0.02
    assert timers[0].cancelled() and all(t.result() is None for t in timers[1:])
    assert not wheel.buckets


async def test_a_stop_wakes_a_pair_sleeping_on_the_system_clock_at_once(tmp_path: Path) -> None:
    """The tick-wheel wait is interruptible like the old helper task: with a one-hour tick period a
    stopped idle pair ends right away."""
    clock = bk.SystemClock()
    engine = bk.Engine(clock=clock, persist_dir=tmp_path / "data", dump_dir=tmp_path / "dump")
    engine.set_config({"CC_TICK_TTL_MS": 3_600_000}, unsafe=True)
    wall = clock.now_ms()  # read once: two reads may straddle a minute boundary
    now = wall - wall % 60_000
    candles = [(now + (i - 120) * 60_000, 100.0, 100.1, 99.9, 100.0, 1.0) for i in range(180)]
    engine.add_exchange(exchange_name="mem", get_candles=bk.ReplayExchange(bk.MemoryCandles({SYMBOL: candles}), clock))
    ticked = asyncio.Event()
    engine.add_strategy(strategy_name="s", interval="1m", get_signal=lambda s, w: ticked.set())
    handle = engine.live.background(SYMBOL, strategy_name="s", exchange_name="mem")
    await asyncio.wait_for(ticked.wait(), HANG_GUARD)
    for _ in range(5):
        await asyncio.sleep(0)  # let the pair reach its inter-tick wait
    handle()
    await asyncio.wait_for(handle.wait(), HANG_GUARD)
    assert handle.task.done() and not handle.task.cancelled()
    await engine.close()


# --------------------------------------------------------------------------- mixed sync/async listeners
@settings(max_examples=60, deadline=None)
@given(
    kinds=st.lists(st.tuples(st.booleans(), st.integers(0, 3)), min_size=1, max_size=8),
    publishers=st.lists(st.integers(1, 5), min_size=1, max_size=4),
)
def test_property_mixed_listeners_get_each_event_once_in_order_one_call_at_a_time(
    kinds: list[tuple[bool, int]], publishers: list[int]
) -> None:
    """Listeners are sync or async (yielding `n` times); several publishers run concurrently.

    Every listener gets every event exactly once, each publisher's events in its emission order, and
    never two calls at once. A sync listener placed after an async one sees exactly the order in which
    the last async listener before it finished the events (it is called straight after it), and a
    publisher's `emit` returns only after every listener got its event.
    """

    async def scenario() -> None:
        bus = EventBus()
        seen: list[list[tuple[int, int]]] = [[] for _ in kinds]
        busy = [False] * len(kinds)
        overlaps: list[int] = []

        def make(i: int, is_async: bool, yields: int) -> Any:
            if not is_async:
                def sync_listener(event: tuple[int, int]) -> None:
                    if busy[i]:
                        overlaps.append(i)
                    seen[i].append(event)

                return sync_listener

            async def async_listener(event: tuple[int, int]) -> None:
                if busy[i]:
                    overlaps.append(i)
                busy[i] = True
                for _ in range(yields):
                    await asyncio.sleep(0)
                seen[i].append(event)
                busy[i] = False

            return async_listener

        for i, (is_async, yields) in enumerate(kinds):
            bus.subscribe("signal", make(i, is_async, yields))

        async def publisher(p: int, count: int) -> None:
            for k in range(count):
                await bus.emit("signal", (p, k))
                assert all((p, k) in s for s in seen)  # delivered to everyone before emit returned

        await asyncio.wait_for(asyncio.gather(*(publisher(p, n) for p, n in enumerate(publishers))), HANG_GUARD)
        assert not overlaps
        expected = sorted((p, k) for p, n in enumerate(publishers) for k in range(n))
        for s in seen:
            assert sorted(s) == expected
            for p in range(len(publishers)):
                assert [k for q, k in s if q == p] == list(range(publishers[p]))
        last_async: int | None = None
        for i, (is_async, _) in enumerate(kinds):
            if is_async:
                last_async = i
            elif last_async is not None:
                assert seen[i] == seen[last_async]

    asyncio.run(scenario())


async def test_sync_listener_after_an_async_one_unsubscribed_mid_delivery_misses_that_event() -> None:
    bus = EventBus()
    got: list[int] = []
    unsubscribe: list[Any] = []

    async def first(event: int) -> None:
        await asyncio.sleep(0)
        if event == 1:
            unsubscribe[0]()

    bus.subscribe("signal", first)
    unsubscribe.append(bus.subscribe("signal", got.append))
    for event in range(3):
        await bus.emit("signal", event)
    assert got == [0]


async def test_sync_listener_after_an_async_one_raising_is_reported_and_delivery_goes_on() -> None:
    bus = EventBus()
    errors: list[BaseException] = []
    got: list[int] = []
    bus.subscribe("error", errors.append)

    async def first(event: int) -> None:
        await asyncio.sleep(0)

    def boom(event: int) -> None:
        raise ValueError(f"boom {event}")

    bus.subscribe("signal", first)
    bus.subscribe("signal", boom)
    bus.subscribe("signal", got.append)
    await bus.emit("signal", 7)
    assert got == [7] and [str(e) for e in errors] == ["boom 7"]


# ------------------------------------------------------------------------------------------- uvloop
def test_cli_runs_on_uvloop_when_installed() -> None:
    uvloop = pytest.importorskip("uvloop")  # the `fast` extra; CI installs it
    from backtest_kit.cli.app import _run

    async def which() -> int:
        return int(isinstance(asyncio.get_running_loop(), uvloop.Loop))

    assert _run(which()) == 1


def test_live_pairs_tick_and_time_out_on_uvloop(tmp_path: Path) -> None:
    """The tick wheel and the get_signal watchdog only use portable loop APIs: on uvloop a stuck call
    is cut and reported, the pair ticks on, and a stop ends it."""
    uvloop = pytest.importorskip("uvloop")
    clock = bk.SystemClock()

    async def scenario() -> None:
        engine = bk.Engine(clock=clock, persist_dir=tmp_path / "data", dump_dir=tmp_path / "dump")
        engine.set_config({"CC_TICK_TTL_MS": 1, "CC_MAX_SIGNAL_GENERATION_SECONDS": 0.05}, unsafe=True)
        wall = clock.now_ms()  # read once: two reads may straddle a minute boundary
        now = wall - wall % 60_000
        candles = [(now + (i - 120) * 60_000, 100.0, 100.1, 99.9, 100.0, 1.0) for i in range(180)]
        source = bk.MemoryCandles({SYMBOL: candles})
        engine.add_exchange(exchange_name="mem", get_candles=bk.ReplayExchange(source, clock))
        errors: list[BaseException] = []
        engine.listen_error(errors.append)
        calls = [0]
        ticks = [0]
        enough = asyncio.Event()

        async def get_signal(symbol: str, when: datetime) -> None:
            calls[0] += 1
            if calls[0] == 1:
                await asyncio.Event().wait()

        def on_tick(result: bk.TickResult) -> None:
            ticks[0] += 1
            if ticks[0] >= 3:
                enough.set()

        engine.add_strategy(strategy_name="s", interval="1m", get_signal=get_signal)
        engine.listen_signal_live(on_tick)
        handle = engine.live.background(SYMBOL, strategy_name="s", exchange_name="mem")
        await asyncio.wait_for(enough.wait(), HANG_GUARD)
        handle()
        await asyncio.wait_for(handle.wait(), HANG_GUARD)
        await engine.close()
        assert [type(e) for e in errors] == [bk.SignalTimeoutError]

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(scenario())

"""Clocks: SystemClock is UTC wall time; VirtualClock jumps only when every attached task sleeps on it."""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime, timedelta, timezone

import pytest

import backtest_kit as bk
from backtest_kit.engine.clock import Clock, clock_now_ms

T0 = datetime(2025, 3, 1, tzinfo=UTC)
GUARD = 10  # wall-clock seconds: only a safety net against a hang, never a timing assertion


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


async def spin(n: int = 20) -> None:
    """Let the loop run a few rounds (pure yielding, no wall-clock wait)."""
    for _ in range(n):
        await asyncio.sleep(0)


# --------------------------------------------------------------------------- SystemClock
def test_system_clock_now_is_aware_utc() -> None:
    clock = bk.SystemClock()
    now = clock.now()
    assert now.tzinfo is not None
    assert now.utcoffset() == timedelta(0)
    assert abs((now - datetime.now(UTC)).total_seconds()) < 60
    assert isinstance(clock, Clock)
    assert abs(clock_now_ms(clock) - int(now.timestamp() * 1000)) < 60_000


async def test_system_clock_sleep_zero_and_negative_return() -> None:
    clock = bk.SystemClock()
    await asyncio.wait_for(clock.sleep(0), GUARD)
    await asyncio.wait_for(clock.sleep(-5), GUARD)
    with clock.attach():
        pass


# --------------------------------------------------------------------------- VirtualClock basics
def test_virtual_clock_start_and_protocol() -> None:
    clock = bk.VirtualClock(T0)
    assert clock.now() == T0
    assert clock.now().utcoffset() == timedelta(0)
    assert isinstance(clock, Clock)
    assert clock_now_ms(clock) == int(T0.timestamp() * 1000)
    with pytest.raises(ValueError):
        bk.VirtualClock(datetime(2025, 1, 1))
    other_tz = datetime(2025, 3, 1, 3, tzinfo=timezone(timedelta(hours=3)))
    assert bk.VirtualClock(other_tz).now() == T0


async def test_sleep_without_attached_tasks_advances_exactly() -> None:
    clock = bk.VirtualClock(T0)
    await asyncio.wait_for(clock.sleep(3600), GUARD)
    assert clock.now() == at(3600)
    await asyncio.wait_for(clock.sleep(0.5), GUARD)
    assert clock.now() == at(3600.5)
    await clock.sleep(0)  # zero does not move time
    assert clock.now() == at(3600.5)


async def test_two_attached_tasks_wake_in_order_at_the_right_times() -> None:
    clock = bk.VirtualClock(T0)
    log: list[tuple[str, datetime]] = []

    async def worker(name: str, seconds: float, times: int) -> None:
        with clock.attach():
            for _ in range(times):
                await clock.sleep(seconds)
                log.append((name, clock.now()))

    await asyncio.wait_for(asyncio.gather(worker("slow", 30, 1), worker("fast", 10, 2)), GUARD)
    assert log == [("fast", at(10)), ("fast", at(20)), ("slow", at(30))]
    assert clock.attached == 0


async def test_time_holds_while_an_attached_task_is_busy() -> None:
    clock = bk.VirtualClock(T0)
    busy_waiting = asyncio.Event()
    release = asyncio.Event()
    log: list[tuple[str, datetime]] = []

    async def busy() -> None:
        with clock.attach():
            busy_waiting.set()
            await release.wait()  # busy with something that is not the clock
            log.append(("busy-released", clock.now()))
            await clock.sleep(100)
            log.append(("busy", clock.now()))

    async def sleeper() -> None:
        with clock.attach():
            await clock.sleep(10)
            log.append(("sleeper", clock.now()))

    t_busy = asyncio.create_task(busy())
    await busy_waiting.wait()
    t_sleep = asyncio.create_task(sleeper())
    await spin(50)
    assert clock.now() == T0
    assert not t_sleep.done()
    assert log == []
    release.set()
    await asyncio.wait_for(asyncio.gather(t_busy, t_sleep), GUARD)
    assert log == [("busy-released", T0), ("sleeper", at(10)), ("busy", at(100))]


async def test_detached_task_no_longer_holds_time() -> None:
    clock = bk.VirtualClock(T0)
    leave = asyncio.Event()
    entered = asyncio.Event()

    async def holder() -> None:
        with clock.attach():
            entered.set()
            await leave.wait()
        await asyncio.Event().wait()  # keeps running, but detached

    async def sleeper() -> datetime:
        with clock.attach():
            await clock.sleep(5)
            return clock.now()

    h = asyncio.create_task(holder())
    await entered.wait()
    s = asyncio.create_task(sleeper())
    await spin()
    assert not s.done()
    leave.set()
    assert await asyncio.wait_for(s, GUARD) == at(5)
    h.cancel()
    with pytest.raises(asyncio.CancelledError):
        await h


async def test_sleep_in_child_task_counts_for_its_owner() -> None:
    clock = bk.VirtualClock(T0)
    log: list[tuple[str, datetime]] = []

    async def owner() -> None:
        with clock.attach():
            child = asyncio.create_task(clock.sleep(50))  # inherits the owner's context
            await child  # the owner waits on its child, which waits on the clock
            log.append(("owner", clock.now()))

    async def other() -> None:
        with clock.attach():
            await clock.sleep(80)
            log.append(("other", clock.now()))

    await asyncio.wait_for(asyncio.gather(owner(), other()), GUARD)
    assert log == [("owner", at(50)), ("other", at(80))]


async def test_nested_attach_in_child_task_shares_the_owner() -> None:
    clock = bk.VirtualClock(T0)

    async def child() -> None:
        with clock.attach():  # same owner: does not add a second party to wait for
            await clock.sleep(20)

    async def owner() -> None:
        with clock.attach():
            assert clock.attached == 1
            await asyncio.create_task(child())
            assert clock.attached == 1

    await asyncio.wait_for(owner(), GUARD)
    assert clock.now() == at(20)
    assert clock.attached == 0


async def test_cancelled_sleep_removes_its_wake_up() -> None:
    clock = bk.VirtualClock(T0)
    release = asyncio.Event()
    log: list[tuple[str, datetime]] = []

    async def owner() -> None:
        with clock.attach():
            child = asyncio.create_task(clock.sleep(10))
            await asyncio.sleep(0)
            child.cancel()
            with pytest.raises(asyncio.CancelledError):
                await child
            await release.wait()  # busy: the cancelled sleep must not count as "waiting"
            await clock.sleep(100)
            log.append(("owner", clock.now()))

    async def other() -> None:
        with clock.attach():
            await clock.sleep(5)
            log.append(("other", clock.now()))

    t_owner = asyncio.create_task(owner())
    await spin()
    t_other = asyncio.create_task(other())
    await spin(50)
    assert clock.now() == T0  # owner is busy: time holds although a (cancelled) sleep was pending
    assert not t_other.done()
    release.set()
    await asyncio.wait_for(asyncio.gather(t_owner, t_other), GUARD)
    assert log == [("other", at(5)), ("owner", at(100))]


async def test_cancelling_a_sleeping_task_leaves_others_on_time() -> None:
    clock = bk.VirtualClock(T0)
    started = asyncio.Event()

    async def doomed() -> None:
        with clock.attach():
            started.set()
            await clock.sleep(10)

    async def survivor() -> datetime:
        with clock.attach():
            await clock.sleep(30)
            return clock.now()

    gate = asyncio.Event()

    async def holder() -> None:
        with clock.attach():
            await gate.wait()

    h = asyncio.create_task(holder())
    await spin()
    d = asyncio.create_task(doomed())
    await started.wait()
    s = asyncio.create_task(survivor())
    await spin()
    d.cancel()
    with pytest.raises(asyncio.CancelledError):
        await d
    gate.set()
    await h
    assert await asyncio.wait_for(s, GUARD) == at(30)


async def test_advance_wakes_due_sleepers() -> None:
    clock = bk.VirtualClock(T0)
    gate = asyncio.Event()
    entered = asyncio.Event()

    async def holder() -> None:  # keeps time from jumping on its own
        with clock.attach():
            entered.set()
            await gate.wait()

    async def sleeper() -> datetime:
        with clock.attach():
            await clock.sleep(100)
            return clock.now()

    h = asyncio.create_task(holder())
    await entered.wait()
    s = asyncio.create_task(sleeper())
    await spin()
    clock.advance(60)
    await spin()
    assert clock.now() == at(60)
    assert not s.done()
    clock.advance(40)
    assert await asyncio.wait_for(s, GUARD) == at(100)
    clock.advance(0.25)
    assert clock.now() == at(100.25)
    gate.set()
    await h


async def test_day_of_minute_ticks_runs_fast_in_virtual_time() -> None:
    clock = bk.VirtualClock(T0)
    end = at(24 * 3600)
    iterations = 0

    async def loop() -> None:
        nonlocal iterations
        with clock.attach():
            while clock.now() < end:
                await clock.sleep(60.001)
                iterations += 1

    await asyncio.wait_for(loop(), GUARD)
    assert iterations == 1440
    assert clock.now_ms() - int(T0.timestamp() * 1000) == 1440 * 60_001


async def test_many_attached_tasks_interleave_in_virtual_time_order() -> None:
    clock = bk.VirtualClock(T0)
    log: list[tuple[int, int]] = []

    async def ticker(period: int) -> None:
        with clock.attach():
            for _ in range(5):
                await clock.sleep(period)
                log.append((clock.now_ms() - int(T0.timestamp() * 1000), period))

    await asyncio.wait_for(asyncio.gather(*(ticker(p) for p in (7, 3, 5))), GUARD)
    times = [t for t, _ in log]
    assert times == sorted(times)
    for period in (7, 3, 5):
        assert [t for t, p in log if p == period] == [period * 1000 * k for k in range(1, 6)]


@pytest.mark.parametrize("seconds", [-3600, -0.001, float("nan"), float("inf"), float("-inf")])
def test_advance_refuses_to_move_time_backwards_or_by_a_non_finite_amount(seconds: float) -> None:
    clock = bk.VirtualClock(T0)
    with pytest.raises(ValueError, match=r"forward only.*got " + re.escape(repr(seconds))):
        clock.advance(seconds)
    assert clock.now() == T0  # unchanged


def test_advance_by_zero_or_more_moves_time_forward() -> None:
    clock = bk.VirtualClock(T0)
    clock.advance(0)
    assert clock.now() == T0
    clock.advance(3600)
    assert clock.now() == at(3600)

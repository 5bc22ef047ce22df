"""Clocks: the live loop asks the engine's clock for "now" and for its inter-tick sleep.

`VirtualClock` makes live runs testable in milliseconds: time stands still while any attached task
is working, and jumps straight to the earliest wake-up as soon as every attached task sleeps on the
clock. A task that is busy with something else (a listener, a network request) holds time still,
so no tick is skipped or reordered the way a "loop looks idle" heuristic would.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import weakref
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from contextvars import ContextVar
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, TypeVar, runtime_checkable

__all__ = ["Clock", "SystemClock", "VirtualClock", "clock_now_ms"]

T = TypeVar("T")


@runtime_checkable
class Clock(Protocol):
    """What the engine needs from a clock."""

    def now(self) -> datetime:
        """Current time, timezone-aware UTC."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait `seconds` of this clock's time."""
        ...


class _TickWheel:
    """Inter-tick wake-ups of every live pair on one loop, one `loop.call_at` per millisecond bucket.

    Why: a task per tick (`ensure_future(clock.sleep)`) was ~23 % of a live tick's samples, and each
    pair's own timer handle costs a push on the loop's heap. Pairs sharing a period mostly land in
    the same few buckets, so 10,000 pairs cost a handful of handles per period and one future each.
    A wake-up is rounded up to the next millisecond: never early, at most 1 ms late.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.buckets: dict[int, list[asyncio.Future[None]]] = {}

    def after(self, seconds: float) -> asyncio.Future[None]:
        loop = self.loop
        fut: asyncio.Future[None] = loop.create_future()
        slot = math.ceil((loop.time() + max(0.0, seconds)) * 1000)
        bucket = self.buckets.get(slot)
        if bucket is None:
            bucket = self.buckets[slot] = []
            loop.call_at(slot / 1000, self._fire, slot)
        bucket.append(fut)
        return fut

    def _fire(self, slot: int) -> None:
        for fut in self.buckets.pop(slot, ()):
            if not fut.done():  # a stop may have cancelled it
                fut.set_result(None)


_WHEELS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _TickWheel] = weakref.WeakKeyDictionary()


def _wheel() -> _TickWheel:
    loop = asyncio.get_running_loop()
    wheel = _WHEELS.get(loop)
    if wheel is None:
        wheel = _WHEELS[loop] = _TickWheel(loop)
    return wheel


class SystemClock:
    """Wall-clock time and `asyncio.sleep`."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    def now_ms(self) -> int:
        return int(datetime.now(UTC).timestamp() * 1000)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))

    def timer(self, seconds: float) -> asyncio.Future[None]:
        """A future resolved once `seconds` have passed; cancel it to drop the timer.

        The live loop's inter-tick sleep: unlike `sleep` it needs no task, and timers of many pairs
        share one loop handle per millisecond (`_TickWheel`)."""
        return _wheel().after(seconds)

    @contextmanager
    def attach(self) -> Iterator[None]:
        """No-op: wall-clock time passes on its own."""
        yield


class VirtualClock:
    """Simulated time that advances only when every attached task waits on `sleep`.

    "Attached" is carried by a context variable, so a helper task spawned by an attached task
    (e.g. an interruptible sleep) sleeps on its owner's behalf.
    """

    def __init__(self, start: datetime | None = None) -> None:
        start = start or datetime(2025, 1, 1, tzinfo=UTC)
        if start.tzinfo is None:
            raise ValueError(f"VirtualClock start must be timezone-aware, got {start!r}")
        self._now_ms = int(start.timestamp() * 1000)
        self._sleepers: list[tuple[int, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()
        self._owner: ContextVar[object | None] = ContextVar(f"virtual_clock_{id(self)}", default=None)
        self._attached: dict[object, int] = {}
        self._owner_sleeps: dict[object, set[asyncio.Future[Any]]] = {}
        self._check_pending = False

    def now(self) -> datetime:
        return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=self._now_ms)

    def now_ms(self) -> int:
        return self._now_ms

    @property
    def attached(self) -> int:
        """How many owners time waits for."""
        return len(self._attached)

    @contextmanager
    def attach(self) -> Iterator[None]:
        """Make time wait for the current task: it jumps only while this task sleeps on the clock."""
        owner = self._owner.get()
        token = None
        if owner is None or owner not in self._attached:
            owner = object()
            token = self._owner.set(owner)
        self._attached[owner] = self._attached.get(owner, 0) + 1
        try:
            yield
        finally:
            left = self._attached[owner] - 1
            if left:
                self._attached[owner] = left
            else:
                del self._attached[owner]
                self._owner_sleeps.pop(owner, None)
            if token is not None:
                # an async generator may be finalised in another context; the owner is gone anyway
                with suppress(ValueError):
                    self._owner.reset(token)
            self._schedule_check()

    def advance(self, seconds: float) -> None:
        """Move time forward by hand and wake every sleeper that is due.

        Only forward: a clock that went back would hand the engine a "now" before candles and
        signals it has already seen, which no real clock does, so a negative (or non-finite)
        `seconds` is refused rather than silently producing an impossible run.
        """
        if not math.isfinite(seconds) or seconds < 0:
            raise ValueError(
                f"VirtualClock.advance(seconds) moves time forward only: seconds must be a finite number >= 0, "
                f"got {seconds!r}"
            )
        self._now_ms += round(seconds * 1000)
        self._wake_due()

    async def sleep(self, seconds: float) -> None:
        loop = asyncio.get_running_loop()
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = loop.create_future()
        heapq.heappush(self._sleepers, (self._now_ms + max(1, round(seconds * 1000)), next(self._seq), fut))
        owner = self._owner.get()
        owned = self._owner_sleeps.setdefault(owner, set()) if owner in self._attached else None
        if owned is not None:
            owned.add(fut)
        self._schedule_check()
        try:
            await fut
        finally:
            if not fut.done():
                fut.cancel()
            if owned is not None:
                owned.discard(fut)
            self._schedule_check()

    def timer(self, seconds: float) -> asyncio.Future[None]:
        """A future resolved once `seconds` of clock time have passed; cancel it to drop the timer.

        Registered at once (a task calling `sleep` registers only when it first runs, and time may
        jump past its deadline before that) and owned by no one: it never makes anyone look idle.
        """
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._now_ms + max(1, round(seconds * 1000)), next(self._seq), fut))
        self._schedule_check()
        return fut

    async def wait_on(self, fut: asyncio.Future[T]) -> T:
        """Await `fut`, which another task resolves, without holding time still.

        An attached task waiting for another one (the event bus: a listener still busy with another
        pair's event) cannot go on before that one does. Counted as working, it would freeze time
        while the other task sleeps on the clock: a deadlock. So the wait counts as a sleep, and stops
        counting the moment `fut` is resolved, before this task even runs again, so time never jumps
        past a task that was just handed its turn.
        """
        owner = self._owner.get()
        if owner not in self._attached:
            return await fut
        owned = self._owner_sleeps.setdefault(owner, set())
        owned.add(fut)
        self._schedule_check()
        try:
            return await fut
        finally:
            owned.discard(fut)
            self._schedule_check()

    def _schedule_check(self) -> None:
        # Deferred to the loop so that tasks woken in this step get to run (and maybe sleep
        # again) before we decide that everyone is waiting.
        if self._check_pending:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._check_pending = True
        loop.call_soon(self._check)

    def _all_waiting(self) -> bool:
        return all(any(not f.done() for f in self._owner_sleeps.get(owner, ())) for owner in self._attached)

    def _check(self) -> None:
        self._check_pending = False
        while self._sleepers and self._sleepers[0][2].done():
            heapq.heappop(self._sleepers)
        if not self._sleepers or not self._all_waiting():
            return
        self._now_ms = max(self._now_ms, self._sleepers[0][0])
        self._wake_due()

    def _wake_due(self) -> None:
        while self._sleepers and (self._sleepers[0][0] <= self._now_ms or self._sleepers[0][2].done()):
            _, _, fut = heapq.heappop(self._sleepers)
            if not fut.done():
                fut.set_result(None)


def clock_now_ms(clock: Clock) -> int:
    """Milliseconds since the epoch on `clock` (fast path when the clock offers `now_ms`)."""
    now_ms = getattr(clock, "now_ms", None)
    if now_ms is not None:
        return int(now_ms())
    return int(clock.now().timestamp() * 1000)

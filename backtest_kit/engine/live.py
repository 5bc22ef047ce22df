"""Live mode: one asyncio task per (symbol, strategy) on the caller's loop, ticking every TICK_TTL.

The loop never ends on its own. A stop
([decision 6](../../docs/design/decisions.md#decision-6-stop-keeps-open-positions-monitored)) ends new
signals at once, drops a waiting limit signal as `cancelled`, keeps monitoring an open position to its
close, then ends; `done_live` fires exactly once for a background run. The inter-tick sleep runs on the
engine clock and is woken by a stop, so a stopped idle run ends promptly, and a `VirtualClock` makes
days of ticks take milliseconds.

Cost per tick matters at thousands of pairs: on the `SystemClock` the inter-tick wait is a plain
future resolved by `SystemClock.timer` (one loop timer per millisecond bucket shared by all pairs,
no task per tick), and the get_signal timeout is one watchdog per loop (`strategy._SignalWatchdog`),
not an `asyncio.timeout` per call.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from contextlib import ExitStack, contextmanager
from typing import TYPE_CHECKING, Protocol

from .channels import DONE_LIVE, PERFORMANCE, SIGNAL, SIGNAL_LIVE
from .clock import SystemClock
from .gc_policy import RunSettling, live_gc
from .models import PerformanceEvent, TickResult
from .ports import Services
from .runner import CancelHandle, RunHooks, RunnerBase, RunRecord, RunStores

if TYPE_CHECKING:
    from .strategy import StrategyInstance

__all__ = ["LiveRunner", "LiveSink"]

_YIELDED = frozenset({"opened", "closed", "cancelled"})
_NEVER = 2**63  # "no data end": later than any clock reading


class LiveSink(Protocol):
    """The statistics store a live run feeds (`reports.mode_stats.LiveStats`)."""

    def add(self, result: TickResult, now_ms: int) -> None: ...


class LiveRunner(RunnerBase[TickResult]):
    """The live run loop behind `bk.Live`: run / background / stop / list (the composition root adds
    the statistics and reports: `system/modes.py`)."""

    backtest = False
    mode = "live"
    done_channel = DONE_LIVE

    def __init__(self, engine: Services, hooks: RunHooks, stores: RunStores[LiveSink]) -> None:
        super().__init__(engine, hooks)
        self.stores = stores
        self._holding: set[tuple[str, str]] = set()  # runs holding the engine's persist lock

    def _ended(self, record: RunRecord) -> None:
        """The run is over: give back its hold on the persist directory."""
        key = (record.symbol, record.strategy_name)
        if key in self._holding:
            self._holding.discard(key)
            self.hooks.release_persist()

    def forget_holds(self) -> None:
        """The engine closed and released the persist directory itself: no run holds it any more."""
        self._holding.clear()

    def _prepare(
        self, symbol: str, strategy_name: str, exchange_name: str, source: str, standby: bool = False
    ) -> tuple[RunRecord, AsyncIterator[TickResult]]:
        engine = self.engine
        schema = engine.registry.strategies.get(strategy_name, f"Live.{source}")
        engine.registry.exchanges.get(exchange_name, f"Live.{source}")
        instance = self.hooks.make_instance(schema, exchange_name, symbol, backtest=False, source=f"Live.{source}")
        self.hooks.hold_persist()  # a second engine on this persist directory fails here, touching nothing
        try:
            record = self._start(symbol, strategy_name, exchange_name)
        except BaseException:
            self.hooks.release_persist()
            raise
        self._holding.add((symbol, strategy_name))
        record.instance = instance
        record.lease = self.hooks.lease_for(symbol, strategy_name)
        record.standby = standby
        self.stores.reset(symbol, strategy_name)
        if record.lease is None:
            return record, self._loop(record, instance)
        return record, self._leased(record, instance)

    def run(
        self, symbol: str, *, strategy_name: str, exchange_name: str, standby: bool = False
    ) -> AsyncGenerator[TickResult, None]:
        """Opened, closed and cancelled results as they happen; ends only after a stop.

        To leave early, close it (`async with contextlib.aclosing(Live.run(...)) as results:`);
        a bare `break` leaves that to the event loop's async-generator finaliser. `standby`: see
        `background`.
        """
        record, body = self._prepare(symbol, strategy_name, exchange_name, "run", standby)
        return self._iterate(record, body)

    def background(
        self, symbol: str, *, strategy_name: str, exchange_name: str, standby: bool = False
    ) -> CancelHandle:
        """Start the pair as a task on the running loop; returns its cancel handle.

        With state in Redis or PostgreSQL the run first takes the pair's lease (`engine/lease.py`):
        when another process holds it, the run fails with `LeaseHeldError`, or with `standby=True`
        waits (a stop ends the wait) and takes over once the holder's lease ends, restoring its
        position. A run whose lease was taken over ends with `LeaseLostError`.
        """
        existing = self._running_handle(symbol, strategy_name)
        if existing is not None:
            return existing
        record, body = self._prepare(symbol, strategy_name, exchange_name, "background", standby)
        return self._background(record, body)

    async def _leased(self, record: RunRecord, instance: StrategyInstance) -> AsyncIterator[TickResult]:
        """The run loop under the pair's lease: acquire (or wait as a standby) before anything is read,
        so a takeover restores the newest state; give it back when the run ends."""
        lease = record.lease
        assert lease is not None

        def wake() -> None:  # the lease was lost: end the inter-tick sleep, the loop then stops
            if record.wake is not None:
                record.wake.set()
            if record.sleeper is not None:
                record.sleeper.cancel()

        lease.on_lost = wake
        try:
            if not await lease.acquire(standby=record.standby, stopped=lambda: record.stop_requested,
                                       wake=record.wake):
                return
            body = self._loop(record, instance)
            try:
                async for result in body:
                    yield result
            finally:
                if isinstance(body, AsyncGenerator):
                    await body.aclose()
        finally:
            await lease.release()

    @contextmanager
    def _gc_policy(self) -> Iterator[RunSettling | None]:
        """The run under the live GC policy (engine/gc_policy.py), unless CC_LIVE_GC_TUNING is off."""
        if not self.engine.config.CC_LIVE_GC_TUNING:
            yield None
            return
        run = live_gc.run_started()
        try:
            yield run
        finally:
            run.ended()

    @contextmanager
    def _attached(self) -> Iterator[None]:
        attach = getattr(self.engine.clock, "attach", None)
        if attach is None:
            yield
            return
        with attach():
            yield

    async def _loop(self, record: RunRecord, instance: StrategyInstance) -> AsyncIterator[TickResult]:
        engine = self.engine
        bus = engine.bus
        publish = bus.publish
        stats = self.stores.stats(record.symbol, record.strategy_name)
        schedule = self.stores.schedule(record.symbol, record.strategy_name)
        last_perf: float | None = None
        data_end = instance.exchange.data_end_ms(record.symbol)  # a replay runs out; an exchange never
        end = _NEVER if data_end is None else data_end
        with self._gc_policy() as settling, ExitStack() as attached:
            attached.enter_context(self._attached())
            while True:
                if record.lease is not None and record.lease.lost is not None:
                    raise record.lease.lost  # another process owns the pair now: stop trading it
                if instance.stopped and not instance.has_signal:
                    if instance.restored:
                        return
                    try:  # a stop before the first tick must still find and monitor a stored position
                        await instance.restore(engine.now_ms())
                    except Exception as exc:
                        await engine.report_error(exc)
                        await self._sleep(record)
                        continue
                    if not instance.has_signal:
                        return
                now = engine.now_ms()
                timed = bus.has_listeners(PERFORMANCE)
                started = time.perf_counter() if timed else 0.0
                try:
                    result = await instance.tick(now)
                except Exception as exc:
                    if settling is not None:
                        settling.settled()
                        settling = None
                    await engine.report_error(exc)
                    if now >= end:
                        self._data_exhausted(record, instance, now)
                        return
                    await self._sleep(record)
                    continue
                if settling is not None:
                    settling.settled()  # the pair's lazily built state exists now: freeze it
                    settling = None
                stats.add(result, now)
                schedule.add(result)
                pending = publish(SIGNAL_LIVE, result)
                if pending is not None:
                    await pending
                pending = publish(SIGNAL, result)
                if pending is not None:
                    await pending
                if instance.store is not None:  # deletes only after the listeners saw the close
                    await instance.sync_store()
                if timed:
                    last_perf = await self._perf(started, last_perf, record)
                if result.action in _YIELDED:
                    # Detached while the consumer holds the result: an abandoned `async for` is closed
                    # right here, from the event loop's finaliser task, outside this task's context.
                    attached.close()
                    yield result
                    attached.enter_context(self._attached())
                if instance.stopped and not instance.has_signal:
                    return
                if now >= end:
                    self._data_exhausted(record, instance, now)
                    return
                if record.wake is None:
                    await self._sleep(record)
                    continue
                sleeper = self._sleeper(record)  # `_sleep`, inlined: no coroutine per tick
                if sleeper is None:
                    continue
                try:
                    await sleeper
                except asyncio.CancelledError:
                    if not self._woken(record, sleeper):
                        raise
                finally:
                    self._slept(record, sleeper)

    def _data_exhausted(self, record: RunRecord, instance: StrategyInstance, now: int) -> None:
        """The replay's data ran out: end the run like a stop would, minus the wait for an open position.

        No later price exists, so an open position could never close: it stays open (and persisted,
        as after a kill) and `get_data` reports it as open with its unrealised PnL.
        """
        record.data_exhausted = True
        instance.stop()
        left = "" if instance.pending is None else f"; position {instance.pending.id} left open"
        self.engine.logger.info(f"live {record.symbol} {record.strategy_name}: the replay data ended "
                                f"at {now}, run finished{left}")

    async def _sleep(self, record: RunRecord) -> None:
        """Sleep one tick period on the engine clock, or less if a stop arrives."""
        if record.wake is None:
            await self.engine.clock.sleep(self.engine.config.CC_TICK_TTL_MS / 1000)
            return
        sleeper = self._sleeper(record)
        if sleeper is None:
            return
        try:
            await sleeper  # a broken clock's error propagates
        except asyncio.CancelledError:
            if not self._woken(record, sleeper):
                raise  # our own task is being cancelled, not woken
        finally:
            self._slept(record, sleeper)

    def _sleeper(self, record: RunRecord) -> asyncio.Future[None] | None:
        """Start one tick period's wait: the future to await, or None when there is nothing to wait for.

        Split from `_sleep` so the live loop can await it inline: a coroutine per tick, alive for the
        whole period, was one more object for the cyclic GC to walk per pair (engine/gc_policy.py).
        """
        wake = record.wake
        assert wake is not None  # `_sleep` waits without one
        if wake.is_set():
            wake.clear()
            return None
        seconds = self.engine.config.CC_TICK_TTL_MS / 1000
        clock = self.engine.clock
        sleeper: asyncio.Future[None]
        # the fast path for the wall clock, unless a subclass overrides its sleep and not its timer
        if isinstance(clock, SystemClock) and (
            type(clock).sleep is SystemClock.sleep or type(clock).timer is not SystemClock.timer
        ):
            sleeper = clock.timer(seconds)  # no task per tick: a future resolved by a shared bucket timer
        else:
            # Any other clock, VirtualClock included: a helper task running its sleep, which a stop
            # cancels. On a VirtualClock the helper registers its sleep one loop step later than the
            # pair would, and code reacting to a pair's event (a test stopping the run on a close)
            # relies on that step before time jumps: kept as it was.
            sleeper = asyncio.ensure_future(clock.sleep(seconds))
        record.sleeper = sleeper  # a stop cancels it (RunRecord.request_stop)
        return sleeper

    @staticmethod
    def _woken(record: RunRecord, sleeper: asyncio.Future[None]) -> bool:
        """The wait was cancelled: by a stop (True: go on) or by a cancellation of our own task?"""
        wake = record.wake
        task = asyncio.current_task()
        return sleeper.cancelled() and wake is not None and wake.is_set() and not (
            task is not None and task.cancelling()
        )

    @staticmethod
    def _slept(record: RunRecord, sleeper: asyncio.Future[None]) -> None:
        """The wait is over, however it ended: drop the sleeper, and the wake-up it may have had."""
        record.sleeper = None
        if not sleeper.done():
            sleeper.cancel()
        if record.wake is not None:
            record.wake.clear()

    async def _perf(self, started: float, previous: float | None, record: RunRecord) -> float:
        now = time.time() * 1000
        await self.engine.bus.emit(PERFORMANCE, PerformanceEvent(
            timestamp=now, previous_timestamp=previous, metric_type="live_tick",
            duration=(time.perf_counter() - started) * 1000, strategy_name=record.strategy_name,
            exchange_name=record.exchange_name, symbol=record.symbol, backtest=False,
        ))
        return now

"""Backtest mode: frames from `add_frame`, one tick per frame, fast-forward over 1m candles.

Hot path notes: the loop publishes through `bus.publish`, which returns None (no await) when every
listener is a plain function; progress and performance events are only built when someone
listens; frames are computed arithmetically, so memory does not grow with the number of frames; frames
whose tick could only return an idle result nobody sees are skipped (`StrategyInstance.quiet_until`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Protocol

from .channels import DONE_BACKTEST, PERFORMANCE, PROGRESS, SIGNAL, SIGNAL_BACKTEST
from .errors import SchemaError
from .intervals import FRAME_INTERVALS, MINUTE_MS
from .models import (
    FinishedResult,
    OpenedResult,
    PerformanceEvent,
    ProgressEvent,
    ScheduledResult,
    SignalRow,
    TickResult,
)
from .ports import Services
from .runner import CancelHandle, RunHooks, RunnerBase, RunRecord, RunStores

# Frames between two turns given to the event loop (a power of two less one, tested with an AND).
_YIELD_MASK = 1023

if TYPE_CHECKING:
    from .strategy import StrategyInstance

__all__ = ["BacktestRunner", "BacktestSink"]


class BacktestSink(Protocol):
    """The statistics store a backtest run feeds (`reports.mode_stats.BacktestStats`)."""

    def add(self, result: TickResult) -> None:
        """A tick or fast-forward result; idle results of frames the loop skipped are not given."""

    def set_open(self, signal: SignalRow | None, price: float) -> None:
        """The frames ended with `signal` still open at `price` (None: flat)."""


class BacktestRunner(RunnerBase[FinishedResult]):
    """The backtest run loop behind `bk.Backtest`: run / background / stop / list (the composition
    root adds the statistics and reports: `system/modes.py`)."""

    backtest = True
    mode = "backtest"
    done_channel = DONE_BACKTEST

    def __init__(self, engine: Services, hooks: RunHooks, stores: RunStores[BacktestSink]) -> None:
        super().__init__(engine, hooks)
        self.stores = stores

    def _prepare(
        self, symbol: str, strategy_name: str, exchange_name: str, frame_name: str, source: str
    ) -> tuple[RunRecord, AsyncIterator[FinishedResult]]:
        engine = self.engine
        schema = engine.registry.strategies.get(strategy_name, f"Backtest.{source}")
        engine.registry.exchanges.get(exchange_name, f"Backtest.{source}")
        frame = engine.registry.frames.get(frame_name, f"Backtest.{source}")
        instance = self.hooks.make_instance(schema, exchange_name, symbol, backtest=True, source=f"Backtest.{source}")
        record = self._start(symbol, strategy_name, exchange_name)
        record.instance = instance
        self.stores.reset(symbol, strategy_name)
        step = FRAME_INTERVALS[frame.interval] * MINUTE_MS
        start = int(frame.start_date.timestamp() * 1000)
        end = int(frame.end_date.timestamp() * 1000)
        if frame.on_timeframe is not None:
            try:
                frame.on_timeframe(frame.start_date, frame.end_date, frame.interval)
            except Exception as exc:
                engine.logger.warn(f"frame {frame_name}: on_timeframe raised", repr(exc))
        return record, self._loop(record, instance, start, end, step)

    def run(
        self, symbol: str, *, strategy_name: str, exchange_name: str, frame_name: str
    ) -> AsyncIterator[FinishedResult]:
        """Closed and cancelled results in time order; names are checked now, before iteration."""
        record, body = self._prepare(symbol, strategy_name, exchange_name, frame_name, "run")
        return self._iterate(record, body)

    def background(
        self, symbol: str, *, strategy_name: str, exchange_name: str, frame_name: str
    ) -> CancelHandle:
        """Run without a consumer; returns the cancel handle. `done_backtest` fires at the end."""
        existing = self._running_handle(symbol, strategy_name)
        if existing is not None:
            return existing
        record, body = self._prepare(symbol, strategy_name, exchange_name, frame_name, "background")
        return self._background(record, body)

    async def _loop(
        self, record: RunRecord, instance: StrategyInstance, start: int, end: int, step: int
    ) -> AsyncIterator[FinishedResult]:
        engine = self.engine
        bus = engine.bus
        publish = bus.publish
        stats = self.stores.stats(record.symbol, record.strategy_name)
        schedule = self.stores.schedule(record.symbol, record.strategy_name)
        total = (end - start) // step + 1 if end >= start else 0
        names = {"symbol": record.symbol, "strategy_name": record.strategy_name,
                 "exchange_name": record.exchange_name}
        run_started = time.perf_counter()
        last_perf: float | None = None
        result: TickResult | None = None
        i = 0
        frames_run = 0
        # a throttle no longer than the frame step never leaves a frame to skip: no per-frame check then
        may_skip = instance.interval_ms > step
        while i < total:
            frames_run += 1
            if not frames_run & _YIELD_MASK:
                # A backtest over an in-memory source never suspends by itself: give the event loop a
                # turn now and then, so cancel(), a Ctrl-C handler and the embedding app's other
                # tasks are not starved until the last frame (cost: one AND per frame).
                await asyncio.sleep(0)
            if bus.has_listeners(PROGRESS):
                await bus.emit(PROGRESS, ProgressEvent(**names, total_frames=total, processed_frames=i,
                                                         progress=i / total))
            if instance.stopped and not instance.has_signal:
                break
            timed = bus.has_listeners(PERFORMANCE)
            when = start + i * step
            if may_skip and instance.pending is None and instance.scheduled is None and not timed:
                # Frames whose tick would only return an idle result that no listener, callback or
                # statistic sees are skipped up to the throttle's next slot (`quiet_until` says why
                # nothing else can happen); the last frame always ticks, its price ends the run.
                quiet = instance.quiet_until(when)
                if quiet is not None and not (
                    bus.has_listeners(SIGNAL_BACKTEST) or bus.has_listeners(SIGNAL) or bus.has_listeners(PROGRESS)
                ):
                    target = min(-((start - quiet) // step), total - 1)  # first frame at or after `quiet`
                    if target > i:
                        i = target
                        continue
            frame_started = time.perf_counter() if timed else 0.0
            try:
                result = await instance.tick(when)
            except Exception as exc:
                await engine.report_error(exc)
                i += 1
                continue
            stats.add(result)
            pending = publish(SIGNAL_BACKTEST, result)
            if pending is not None:
                await pending
            pending = publish(SIGNAL, result)
            if pending is not None:
                await pending
            action = result.action
            if action == "opened" or action == "scheduled":
                assert isinstance(result, OpenedResult | ScheduledResult)
                schedule.add(result)
                signal_started = time.perf_counter() if timed else 0.0
                finished = await self._fast_forward(instance, result, when)
                if finished is not None:
                    stats.add(finished)
                    schedule.add(finished)
                    pending = publish(SIGNAL_BACKTEST, finished)
                    if pending is not None:
                        await pending
                    pending = publish(SIGNAL, finished)
                    if pending is not None:
                        await pending
                    if timed:
                        last_perf = await self._perf("backtest_signal", signal_started, last_perf, record)
                    yield finished
                    i = max(i + 1, (finished.close_timestamp - start) // step + 1)
                    if timed:
                        last_perf = await self._perf("backtest_timeframe", frame_started, last_perf, record)
                    continue
                filled = instance.pending
                if filled is not None and filled.pending_at > when:
                    # A limit signal filled on the last candle the fast-forward had: the tick path
                    # takes over strictly after the fill, never on frames before the position existed.
                    i = max(i, (filled.pending_at - start) // step)
            elif action == "closed" or action == "cancelled":
                schedule.add(result)
                # a close found on the tick path
                # ([decision 8](../../docs/design/decisions.md#decision-8-backtestrun-yields-every-finished-trade))
                yield result  # type: ignore[misc]
            if timed:
                last_perf = await self._perf("backtest_timeframe", frame_started, last_perf, record)
            i += 1
        if result is not None:  # the frame ended: a position still open is reported, not dropped
            stats.set_open(instance.pending, result.current_price)
        if bus.has_listeners(PROGRESS):
            await bus.emit(PROGRESS, ProgressEvent(**names, total_frames=total, processed_frames=total,
                                                     progress=1.0))
        if bus.has_listeners(PERFORMANCE):
            await self._perf("backtest_total", run_started, last_perf, record)

    async def _fast_forward(
        self, instance: StrategyInstance, result: OpenedResult | ScheduledResult, when: int
    ) -> FinishedResult | None:
        """Fetch the 1m candles the new signal can live through and resolve it over them."""
        config = self.engine.config
        buffer = config.CC_AVG_PRICE_CANDLES_COUNT
        row = result.signal
        count = buffer + row.minute_estimated_time + 1
        if result.action == "scheduled":
            count += config.CC_SCHEDULE_AWAIT_MINUTES
        try:
            candles = await instance.exchange.get_next_candles(
                instance.symbol, "1m", when - buffer * MINUTE_MS, count
            )
            return await instance.fast_forward(candles, when)
        except Exception as exc:
            await self.engine.report_error(exc)
            return None

    async def _perf(self, metric: str, started: float, previous: float | None, record: RunRecord) -> float:
        now = time.time() * 1000
        await self.engine.bus.emit(PERFORMANCE, PerformanceEvent(
            timestamp=now, previous_timestamp=previous, metric_type=metric,
            duration=(time.perf_counter() - started) * 1000, strategy_name=record.strategy_name,
            exchange_name=record.exchange_name, symbol=record.symbol, backtest=True,
        ))
        return now


def _check_symbol(symbol: object) -> None:
    if not isinstance(symbol, str) or not symbol:
        raise SchemaError(f"symbol: expected a non-empty string, got {symbol!r}")

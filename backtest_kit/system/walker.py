"""`bk.Walker`: backtest several strategies on one symbol, in order, and rank them by a metric
([risk-sizing §4](../../docs/design/risk-sizing-portfolio.md#4-walker)).

A walker is a run mode built on `Backtest`: each strategy's step is one full `Backtest.run` of
(symbol, strategy, the walker's exchange, the walker's frame) followed by `Backtest.get_data`
(`_backtest_strategy`), so a strategy's statistics in a walker are exactly those of a separate
backtest. With `executor=` (an object following `system/jobs.py`'s `Executor` protocol) the steps
become one `BacktestJob` per strategy, run wherever the executor runs them (a process pool, Ray);
their results are fed, in the walker's strategy order, through the same ranking and event path.

Either way a walker leaves the backtest side as a run of its backtests would: afterwards
`Backtest.get_data` / `get_report` / `dump` of each walked strategy give that strategy's walker
statistics. A job's result rebuilds the pair's `Backtest` store here (`_keep_job_result`: its closed
trades, which also feed `bk.Heat` through that store, and the position it ended with), replacing what
a previous run left, just as a `Backtest.run` in this process starts the pair afresh. No signal,
progress or performance events are published for a job's trades: they happened in another process,
and replaying them as if live would run user listeners (notifiers, order executors) a second time for
nothing that happens now; the walker's own progress and walker events are published as usual.

Per strategy, in order: `on_strategy_start`; the backtest; on failure the error is published on the
`error` channel, `on_strategy_error` is called and the strategy is skipped (not counted, no progress
or walker event); else the walker-progress event, `on_strategy_complete`, then the walker event
(stored first, then published, then yielded). At the end `on_complete` and the walker-complete event.
`background` adds the walker-done event.

Stopping. `Walker.stop` and the cancel function publish one stop request per strategy (channel
`walker_stop`, filtered by symbol and walker) and stop the strategy's backtest gracefully: the current
strategy finishes and is still reported, the remaining ones never start, and the complete event fires
with the partial ranking. Unlike the reference, the cancel function does not publish the done event
itself: done fires exactly once, when the walker task has really ended, after every other event of
the run, as for `Backtest` and `Live`
([decision 6](../../docs/design/decisions.md#decision-6-stop-keeps-open-positions-monitored)).
"""

from __future__ import annotations

import asyncio
import inspect
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from ..engine.bus import enter_run
from ..engine.channels import DONE_WALKER, EXIT, WALKER, WALKER_COMPLETE, WALKER_PROGRESS, WALKER_STOP
from ..engine.errors import BacktestKitError, RunStateError, SchemaError
from ..engine.foreground import aclose_quietly, follow_in_foreground
from ..engine.models import (
    DoneEvent,
    InstanceStatus,
    WalkerContract,
    WalkerInstanceInfo,
    WalkerProgressEvent,
    WalkerResults,
    WalkerStopEvent,
)
from ..engine.naming import name_file_stem
from ..engine.ports import Services
from ..engine.registry import WalkerSchema
from ..reports.report import save_report
from ..reports.stats import Statistics
from ..reports.walker_stats import (
    WalkerData,
    WalkerEvent,
    WalkerStore,
    WalkerSummary,
    is_better,
    metric_value,
    walker_report,
)
from .jobs import BacktestJob, Executor, JobResult, resolve_executor
from .modes import BacktestFacade

__all__ = ["WalkerCancel", "WalkerFacade"]

Outcome = Statistics | BaseException
"""A strategy's step: its statistics, or the error that made it fail."""


@dataclass(eq=False)
class _WalkerRecord:
    """One (symbol, walker): its status, background task and stop flags."""

    symbol: str
    walker_name: str
    exchange_name: str
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    status: InstanceStatus = "idle"
    error: str | None = None
    task: asyncio.Task[None] | None = None
    loop: asyncio.AbstractEventLoop | None = None
    stop_requested: bool = False
    done_published: bool = False
    stopped: set[str] = field(default_factory=set)  # strategies a stop request named during this run

    def info(self) -> WalkerInstanceInfo:
        return WalkerInstanceInfo(id=self.id, symbol=self.symbol, walker_name=self.walker_name,
                                  exchange_name=self.exchange_name, status=self.status, error=self.error)

    def halted(self, strategy_name: str) -> bool:
        return self.stop_requested or strategy_name in self.stopped


class WalkerCancel:
    """Returned by `Walker.background`: call it (from anywhere, any number of times, never raises) to
    stop the walker after its current strategy; `await handle.wait()` waits for the end (done event)."""

    def __init__(self, facade: WalkerFacade, record: _WalkerRecord, task: asyncio.Task[None]) -> None:
        self._facade = facade
        self._record = record
        self.task = task

    def __call__(self) -> None:
        record = self._record
        loop = record.loop
        try:
            if loop is not None and loop.is_running() and not _on_loop_thread(loop):
                loop.call_soon_threadsafe(self._facade.request_stop, record)
            else:
                self._facade.request_stop(record)
        except Exception:  # never raise from a signal handler or a closed loop
            pass

    async def wait(self) -> None:
        await asyncio.shield(self.task)

    def __repr__(self) -> str:
        r = self._record
        return f"<WalkerCancel {r.symbol} {r.walker_name} status={r.status}>"


class WalkerFacade:
    """`bk.Walker`: run / background / stop / get_data / get_report / dump / list."""

    def __init__(self, engine: Services, backtest: BacktestFacade) -> None:
        self.engine = engine
        self.backtest = backtest  # its per-pair stores also receive the results of executor jobs
        self.store = WalkerStore()
        self._records: dict[tuple[str, str], _WalkerRecord] = {}

    # ------------------------------------------------------------------ names and records
    def _check(self, symbol: object, walker_name: str, method: str, *, run: bool) -> WalkerSchema:
        """Walker, then (run/background) its exchange and frame, then every strategy and its risk
        ([events §2.4](../../docs/design/events-and-api.md#24-name-validation))."""
        if not isinstance(symbol, str) or not symbol:
            raise SchemaError(f"symbol: expected a non-empty string, got {symbol!r}")
        source = f"Walker.{method}"
        registry = self.engine.registry
        walker = registry.walkers.get(walker_name, source)
        if run:
            registry.exchanges.get(walker.exchange_name, source)
            registry.frames.get(walker.frame_name, source)
        for strategy_name in walker.strategies:
            self.engine.check_strategy(strategy_name, source)
        return walker

    def _record(self, symbol: str, walker: WalkerSchema) -> _WalkerRecord:
        key = (symbol, walker.walker_name)
        record = self._records.get(key)
        if record is None:
            record = self._records[key] = _WalkerRecord(symbol, walker.walker_name, walker.exchange_name)
        return record

    def _prepare(
        self, symbol: str, walker_name: str, executor: Executor | str | None, method: str
    ) -> tuple[_WalkerRecord, WalkerSchema, AsyncGenerator[WalkerEvent, None]]:
        walker = self._check(symbol, walker_name, method, run=True)
        # a name builds an executor this run owns (closed at its end); an object belongs to the caller
        owned = isinstance(executor, str)
        resolved = None if executor is None else resolve_executor(executor)
        record = self._record(symbol, walker)
        if record.status == "running":
            raise RunStateError(f"walker {walker_name!r} on {symbol} is already running; stop it first")
        record.status = "running"
        record.error = None
        record.exchange_name = walker.exchange_name
        record.stop_requested = False
        record.done_published = False
        record.stopped = set()
        record.loop = _running_loop()
        # the walker's stores start afresh, and so do the backtest and schedule stores of every strategy
        self.store.reset(symbol, walker_name)
        for strategy_name in walker.strategies:
            self.backtest.pair_stats.reset(symbol, strategy_name)
        return record, walker, self._walk(record, walker, resolved, owned)

    # ------------------------------------------------------------------ public API
    def run(
        self, symbol: str, *, walker_name: str, executor: Executor | str | None = None
    ) -> AsyncIterator[WalkerEvent]:
        """One walker event per successfully backtested strategy, in the walker's order; names are
        checked now, before iteration. `executor` runs the backtests as jobs (see the module docstring):
        a name ("sequential", "local", "ray") or an `Executor` object."""
        record, _, body = self._prepare(symbol, walker_name, executor, "run")
        return self._iterate(record, body)

    def background(
        self, symbol: str, *, walker_name: str, executor: Executor | str | None = None
    ) -> WalkerCancel:
        """Run without a consumer; returns the cancel function. `done_walker` fires at the end.

        A walker of the pair still running in the background is reused (a new handle is returned).
        """
        existing = self._records.get((symbol, walker_name))
        if existing is not None and existing.status == "running" and existing.task is not None:
            return WalkerCancel(self, existing, existing.task)
        loop = _running_loop()
        if loop is None:
            raise RunStateError("Walker.background needs a running asyncio event loop")
        record, _, body = self._prepare(symbol, walker_name, executor, "background")
        engine = self.engine

        async def consume() -> None:
            enter_run(True)  # the backtest per-delivery listener timeout, done and exit included
            try:
                async for _ in body:
                    pass
            except Exception as exc:
                record.error = repr(exc)
                engine.logger.warn("walker background run failed", repr(exc))
                await engine.bus.emit(EXIT, exc)
            finally:
                await aclose_quietly(body)
                record.status = "done"
                await self._publish_done(record)

        task = loop.create_task(consume(), name=f"backtest-kit walker {symbol} {walker_name}")
        record.task = task
        self.backtest.hooks.track_task(task)
        return WalkerCancel(self, record, task)

    async def stop(self, symbol: str, walker_name: str) -> None:
        """Stop the walker after its current strategy (reported as usual); the rest never start."""
        walker = self._check(symbol, walker_name, "stop", run=False)
        self._record(symbol, walker)
        for strategy_name in walker.strategies:
            await self.engine.bus.emit(
                WALKER_STOP, WalkerStopEvent(symbol=symbol, strategy_name=strategy_name, walker_name=walker_name))
            self.backtest.request_stop_pair(symbol, strategy_name)

    def request_stop(self, record: _WalkerRecord) -> None:
        """The cancel function's stop, on the loop thread: stop requests (not awaited) and the current
        strategy's backtest stopped gracefully. Repeated calls change nothing."""
        if record.stop_requested:
            return
        record.stop_requested = True
        walker = self.engine.registry.walkers.get(record.walker_name)
        for strategy_name in walker.strategies:
            self.engine.bus.publish_soon(WALKER_STOP, WalkerStopEvent(
                symbol=record.symbol, strategy_name=strategy_name, walker_name=record.walker_name))
            self.backtest.request_stop_pair(record.symbol, strategy_name)

    def request_stop_all(self) -> None:
        """Stop every running walker (`Engine.close`), so none starts its next strategy."""
        for record in self._records.values():
            if record.status == "running":
                self.request_stop(record)

    async def list(self) -> list[WalkerInstanceInfo]:
        """Every (symbol, walker) run, started in the background or stopped, with its status."""
        return [r.info() for r in self._records.values()]

    async def get_data(self, symbol: str, walker_name: str) -> WalkerData:
        """The latest run's results of the pair; `RunStateError` when no strategy result arrived yet."""
        walker = self._check(symbol, walker_name, "get_data", run=False)
        return self.store.data(symbol, walker_name, walker.metric)

    async def get_report(self, symbol: str, walker_name: str) -> str:
        return walker_report(await self.get_data(symbol, walker_name))

    async def dump(self, symbol: str, walker_name: str, path: str | Path | None = None) -> Path | None:
        """Write the report to `<path or dump_dir/walker>/<walker>.md` (name percent-encoded); returns
        the path, or None when the write failed (logged)."""
        text = await self.get_report(symbol, walker_name)
        base = Path(path) if path is not None else Path(self.engine.dump_dir) / "walker"
        return await save_report(base / f"{name_file_stem(walker_name)}.md", text, self.engine.logger, "walker")

    # ------------------------------------------------------------------ the run
    async def _backtest_strategy(self, symbol: str, strategy_name: str, walker: WalkerSchema) -> Statistics:
        """One strategy's step in this process: a full `Backtest.run` on the walker's exchange and frame
        (normal signal / progress / performance events, no done event), then its statistics."""
        async for _ in self.backtest.run(symbol, strategy_name=strategy_name, exchange_name=walker.exchange_name,
                                         frame_name=walker.frame_name):
            pass
        return await self.backtest.get_data(symbol, strategy_name)

    async def _in_process(self, record: _WalkerRecord, walker: WalkerSchema) -> AsyncIterator[tuple[str, Outcome]]:
        for strategy_name in walker.strategies:
            # a turn for the event loop between strategies: a backtest over in-memory candles may never
            # suspend, and a cancel(), Ctrl-C or Engine.close() queued meanwhile must be seen here
            await asyncio.sleep(0)
            if record.halted(strategy_name):
                return
            await self._callback(walker.callbacks.on_strategy_start, strategy_name, record.symbol)
            try:
                stats = await self._backtest_strategy(record.symbol, strategy_name, walker)
            except Exception as exc:
                yield strategy_name, exc
                continue
            yield strategy_name, stats

    def _job(self, symbol: str, walker: WalkerSchema, index: int, strategy_name: str) -> BacktestJob:
        """The job of one strategy, built from the registered schemas (they travel with it)."""
        registry = self.engine.registry
        source = "Walker.run"
        strategy = registry.strategies.get(strategy_name, source)
        risks = (registry.risks.get(strategy.risk_name, source),) if strategy.risk_name is not None else ()
        sizing = registry.sizings.get(strategy.sizing_name, source) if strategy.sizing_name is not None else None
        return BacktestJob(
            job_id=f"{walker.walker_name}/{index}/{strategy_name}", symbol=symbol, strategy=strategy,
            exchange=registry.exchanges.get(walker.exchange_name, source),
            frame=registry.frames.get(walker.frame_name, source), risks=risks, sizing=sizing,
            config=msgspec.structs.asdict(self.engine.config),
        )

    def _keep_job_result(self, symbol: str, strategy_name: str, result: JobResult, executor_name: str) -> None:
        """Make the pair's `Backtest` store what the job's own store was, so `Backtest.get_data` after
        an executor walker equals the walker event's statistics, as after an in-process walker.

        The store is replaced first (a second walker run never adds to the first), as `Backtest.run`
        does for a run in this process; its closed trades feed `bk.Heat` through the store's sink, the
        only path by which a job's trades reach the heatmap.
        """
        stats = result.stats
        if stats is None:  # a failed job: the caller reports it, and the store stays as `_prepare` left it
            return
        pair_stats = self.backtest.pair_stats
        pair_stats.reset(symbol, strategy_name)
        pair_stats.stats(symbol, strategy_name).replay(
            reversed(stats.signals), result.open_signal, result.last_price)  # newest first in `stats`
        if stats.open_positions and result.open_signal is None:
            self.engine.logger.warn(
                f"executor {executor_name!r} returned no open_signal for strategy {strategy_name!r} on {symbol}: "
                "Backtest.get_data shows its trades but not the position open at the end (build results with "
                "system/job_worker.run_job to carry it)")

    async def _from_executor(
        self, record: _WalkerRecord, walker: WalkerSchema, executor: Executor
    ) -> AsyncIterator[tuple[str, Outcome]]:
        """The executor's results (completion order) released in the walker's strategy order.

        `on_strategy_start` is called as each strategy's result is taken up, so the callbacks keep the
        in-process order. A stop closes the executor's iterator (jobs not started are cancelled); the
        executor itself belongs to the caller and is not closed.
        """
        entries: list[tuple[str, BacktestJob | BaseException]] = []
        for index, strategy_name in enumerate(walker.strategies):
            try:
                entries.append((strategy_name, self._job(record.symbol, walker, index, strategy_name)))
            except Exception as exc:  # e.g. an unknown sizing: this strategy fails, the others run
                entries.append((strategy_name, exc))
        name = getattr(executor, "name", type(executor).__name__)

        def outcome(strategy_name: str, entry: BacktestJob | BaseException, result: JobResult | None) -> Outcome:
            if isinstance(entry, BaseException):
                return entry
            if result is None:
                return BacktestKitError(f"executor {name!r} returned no result for strategy {strategy_name!r} "
                                        f"(job {entry.job_id!r})")
            if result.error is not None or result.stats is None:
                return BacktestKitError(f"strategy {strategy_name!r} failed in executor {name!r}: {result.error}")
            self._keep_job_result(record.symbol, strategy_name, result, name)
            return result.stats

        stream = executor.run([entry for _, entry in entries if isinstance(entry, BacktestJob)])
        arrived: dict[str, JobResult] = {}
        index = 0
        try:
            async for result in stream:
                arrived[result.job_id] = result
                while index < len(entries):
                    strategy_name, entry = entries[index]
                    if isinstance(entry, BacktestJob) and entry.job_id not in arrived:
                        break
                    if record.halted(strategy_name):
                        return
                    index += 1
                    await self._callback(walker.callbacks.on_strategy_start, strategy_name, record.symbol)
                    job_result = arrived.pop(entry.job_id) if isinstance(entry, BacktestJob) else None
                    yield strategy_name, outcome(strategy_name, entry, job_result)
            for strategy_name, entry in entries[index:]:  # the stream ended: failures and missing results
                if record.halted(strategy_name):
                    return
                await self._callback(walker.callbacks.on_strategy_start, strategy_name, record.symbol)
                yield strategy_name, outcome(strategy_name, entry, None)
        finally:
            await aclose_quietly(stream)

    async def _walk(
        self, record: _WalkerRecord, walker: WalkerSchema, executor: Executor | None, owned: bool = False
    ) -> AsyncGenerator[WalkerEvent, None]:
        engine = self.engine
        bus = engine.bus
        symbol = record.symbol
        callbacks = walker.callbacks

        def on_stop(event: WalkerStopEvent) -> None:
            if event.symbol == symbol and event.walker_name == walker.walker_name:
                record.stopped.add(event.strategy_name)

        unsubscribe = bus.subscribe(WALKER_STOP, on_stop)
        total = len(walker.strategies)
        best_metric: float | None = None
        best_strategy: str | None = None
        best_stats: Statistics | None = None
        tested = 0
        names = {"walker_name": walker.walker_name, "exchange_name": walker.exchange_name,
                 "frame_name": walker.frame_name, "symbol": symbol}
        outcomes = self._in_process(record, walker) if executor is None else self._from_executor(
            record, walker, executor)
        try:
            async for strategy_name, outcome in outcomes:
                if isinstance(outcome, BaseException):
                    await engine.report_error(outcome)
                    await self._callback(callbacks.on_strategy_error, strategy_name, symbol, outcome)
                    continue
                value = metric_value(outcome, walker.metric)
                if is_better(walker.metric, value, best_metric):
                    best_metric, best_strategy, best_stats = value, strategy_name, outcome
                tested += 1
                await bus.emit(WALKER_PROGRESS, WalkerProgressEvent(
                    **names, total_strategies=total, processed_strategies=tested, progress=tested / total))
                await self._callback(callbacks.on_strategy_complete, strategy_name, symbol, outcome, value)
                event: WalkerEvent = WalkerContract(
                    **names, strategy_name=strategy_name, stats=outcome, metric_value=value, metric=walker.metric,
                    best_metric=best_metric, best_strategy=best_strategy, strategies_tested=tested,
                    total_strategies=total,
                )
                self.store.add(event)  # stored before any listener sees it
                await bus.emit(WALKER, event)
                yield event
        finally:
            unsubscribe()
            await aclose_quietly(outcomes)
            if owned and executor is not None:
                await executor.aclose()
        results: WalkerSummary = WalkerResults(
            walker_name=walker.walker_name, symbol=symbol, exchange_name=walker.exchange_name,
            frame_name=walker.frame_name, metric=walker.metric, total_strategies=total,
            best_strategy=best_strategy, best_metric=best_metric, best_stats=best_stats,
        )
        await self._callback(callbacks.on_complete, results)
        await bus.emit(WALKER_COMPLETE, results)

    def _iterate(self, record: _WalkerRecord, body: AsyncGenerator[WalkerEvent, None]) -> AsyncIterator[WalkerEvent]:
        """The foreground iteration: the record's status follows it; the walker's own steps (and its
        clean-up) run under the backtest per-delivery listener timeout (the consumer's code between
        items does not)."""
        return follow_in_foreground(record, body, True)

    async def _publish_done(self, record: _WalkerRecord) -> None:
        if record.done_published:
            return
        record.done_published = True
        await self.engine.bus.drain()  # stop requests published from sync code reach listeners first
        await self.engine.bus.emit(DONE_WALKER, DoneEvent(
            symbol=record.symbol, strategy_name=record.walker_name, exchange_name=record.exchange_name, backtest=True))

    async def _callback(self, fn: Callable[..., Any] | None, *args: Any) -> None:
        """Call a walker callback (sync or async); one that raises is reported on the error channel and
        never stops the walker, like a raising listener."""
        if fn is None:
            return
        try:
            result = fn(*args)
            if inspect.isawaitable(result):
                await result
        except Exception as exc:
            self.engine.logger.warn(f"walker callback {getattr(fn, '__qualname__', 'callback')} raised", repr(exc))
            await self.engine.report_error(exc)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _on_loop_thread(loop: asyncio.AbstractEventLoop) -> bool:
    return _running_loop() is loop

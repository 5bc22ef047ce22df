"""`bk.Sweep`: run a strategy factory over a grid or an Optuna search of its parameters, with walk-forward.

    sweep = bk.Sweep(make_strategy, {"fast": [5, 10, 20], "slow": [30, 60]}, symbols=["BTCUSDT"],
                     walk_forward=bk.WalkForward(train_days=3, test_days=1), metric="sharpe_ratio")
    result = await sweep.run()
    result.best, result.splits, result.rows, result.dump()

What it runs. `make_strategy(**params)` returns a `get_signal`; every parameter set is backtested on
every symbol in every split of every frame, as one `BacktestJob` each, through an executor
(`executor="local"`: a process pool; `"sequential"`: this process; `"ray"`; or an `Executor` object).
Because a job carries the factory and its parameters rather than the built `get_signal`, the factory
must be a module-level function when jobs leave the process (a closure it returns need not pickle).

Which engine. The exchange, the frames and (optionally, `strategy_name=`) a registered strategy
used as a template (its interval, callbacks, risk profile and sizing; the factory replaces its
`get_signal`) are read from `engine`'s registry, `bk.default_engine` by default, when `run()` is
called; each job then runs on a fresh engine of its own with that engine's config. So a sweep is set
up exactly like a backtest: register, then `bk.Sweep(...)` (or `bk.Sweep(..., engine=my_engine)`).

How it chooses. Without walk-forward each frame is one in-sample window and the rows are exactly
what `Backtest.run` gives for each parameter set. With `walk_forward=WalkForward(...)` each frame is
cut into (train, test) splits (`walk_forward.py`); on each split the parameter set with the best mean
metric over the symbols on the train window is chosen and then backtested on the test window, so
`SweepResult.splits` shows in-sample against out-of-sample figures. With `optuna=N`, each split gets
its own study of N trials (`sampler`, `seed`: reproducible), asked in batches of `trials_per_batch`
so an executor can run them in parallel. Ranking: see `ranking.py` (None and failures last).

Failures and interruption. A factory that raises, or a backtest that fails, makes that job's row
carry the error (naming the parameters) and ranks it last; the sweep goes on. `stop()` (the CLI's
Ctrl-C) or cancelling the task running `run()` stops it: jobs not started are dropped, finished rows
are kept; `stop()` makes `run()` return the partial result (`interrupted=True`), a cancellation
re-raises after storing it in `sweep.result`.

Progress. `sweep.listen_progress(callback)` (like `bk.listen_progress`, returning an unsubscribe
function; the callback may be sync or async) gets a `SweepProgress` after every finished job. It is
not an engine bus event: sweep jobs run on private engines, possibly in other processes, and the
sweep itself sits above any one engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import inspect
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal, cast

from ..engine import default_slot
from ..engine.errors import RunStateError, SchemaError
from ..engine.intervals import FRAME_INTERVALS, MINUTE_MS
from ..engine.registry import ExchangeSchema, FrameSchema, RiskSchema, SizingSchema, StrategySchema, make_strategy
from ..system.engine import Engine
from ..system.jobs import BacktestJob, Executor, JobResult
from .executors import make_executor
from .grid import ParamSpace, ParamSpec, check_space, grid_points
from .optuna_search import check_searchable, import_optuna, make_study, suggest_params, tell
from .ranking import check_metric, mean_score, metric_value, rank_key
from .sweep_models import RankedParams, SplitChoice, SweepProgress, SweepRow, error_summary
from .sweep_report import SweepResult
from .walk_forward import Split, WalkForward, Window
from .windowed import clip_candles

__all__ = ["Sweep"]

_log = logging.getLogger("backtest_kit.sweep")

Phase = Literal["in_sample", "out_of_sample"]
ProgressCallback = Callable[[SweepProgress], Any]


def unbuilt_get_signal(symbol: str, when: datetime) -> None:
    """The template strategy's `get_signal` when no strategy is registered for the sweep: every job
    replaces it with `make_strategy(**params)`, so it is never called (module-level: it pickles)."""
    raise RuntimeError("a sweep job's get_signal is built by its strategy factory")


@dataclass(frozen=True)
class _Unit:
    """One split of one frame: the jobs' frames and exchanges of its train and test windows."""

    frame: str
    split: int | None
    train: Window
    test: Window | None
    train_frame: FrameSchema
    train_exchange: ExchangeSchema
    test_frame: FrameSchema | None = None
    test_exchange: ExchangeSchema | None = None


@dataclass(frozen=True)
class _Candidate:
    params: dict[str, Any]
    trial: int | None = None


@dataclass(frozen=True)
class _Plan:
    name: str
    engine: Engine
    symbols: tuple[str, ...]
    strategy: StrategySchema
    risks: tuple[RiskSchema, ...]
    sizing: SizingSchema | None
    config: Any
    units: tuple[_Unit, ...]
    points: tuple[dict[str, Any], ...]  # the grid; empty for an Optuna search


@dataclass
class _State:
    total: int
    candidates: list[list[_Candidate]]
    results: dict[tuple[Phase, int, int, str], JobResult] = field(default_factory=dict)
    keys: dict[str, tuple[Phase, int, int, str]] = field(default_factory=dict)
    chosen: dict[int, int] = field(default_factory=dict)
    finished: int = 0
    failed: int = 0
    interrupted: bool = False


def _symbols(symbols: Any) -> tuple[str, ...]:
    items = [symbols] if isinstance(symbols, str) else symbols
    if not isinstance(items, Sequence) or not items:
        raise SchemaError(f"symbols: expected a symbol or a non-empty list of symbols, got {symbols!r}")
    for s in items:
        if not isinstance(s, str) or not s.strip():
            raise SchemaError(f"symbols: expected non-empty strings, got {s!r}")
    if len(set(items)) != len(items):
        raise SchemaError(f"symbols: a symbol is listed twice: {list(items)!r}")
    return tuple(items)


def _names(label: str, value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, Sequence) or not items or not all(isinstance(v, str) and v for v in items):
        raise SchemaError(f"{label}: expected a name or a non-empty list of names, got {value!r}")
    return tuple(items)


def _params_key(params: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    return tuple((k, repr(v)) for k, v in params.items())


class Sweep:
    """A parameter sweep of a strategy factory (see the module docstring for the whole story)."""

    def __init__(
        self,
        make_strategy: Callable[..., Any],
        params: ParamSpace,
        *,
        symbols: str | Sequence[str],
        exchange_name: str | None = None,
        frames: str | Sequence[str] | None = None,
        strategy_name: str | None = None,
        interval: str = "5m",
        metric: str = "sharpe_ratio",
        walk_forward: WalkForward | None = None,
        optuna: int | None = None,
        sampler: Any = None,
        seed: int | None = None,
        trials_per_batch: int = 4,
        executor: str | Executor = "local",
        executor_options: Mapping[str, Any] | None = None,
        engine: Engine | None = None,
        name: str | None = None,
    ) -> None:
        if not callable(make_strategy):
            raise SchemaError(f"make_strategy: expected a strategy factory (params -> get_signal), "
                              f"got {make_strategy!r}")
        self.make_strategy = make_strategy
        self.space: dict[str, ParamSpec] = check_space(params)
        self.symbols = _symbols(symbols)
        self.exchange_name = exchange_name
        self.frames = _names("frames", frames)
        self.strategy_name = strategy_name
        self.interval = interval
        self.metric = check_metric(metric)
        if walk_forward is not None and not isinstance(walk_forward, WalkForward):
            raise SchemaError(f"walk_forward: expected a WalkForward or None, got {walk_forward!r}")
        self.walk_forward = walk_forward
        if optuna is not None and (isinstance(optuna, bool) or not isinstance(optuna, int) or optuna < 1):
            raise SchemaError(f"optuna: expected a number of trials >= 1 or None, got {optuna!r}")
        self.optuna = optuna
        if optuna is not None:
            check_searchable(self.space)
        self.sampler = sampler
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise SchemaError(f"seed: expected a whole number or None, got {seed!r}")
        self.seed = seed
        if isinstance(trials_per_batch, bool) or not isinstance(trials_per_batch, int) or trials_per_batch < 1:
            raise SchemaError(f"trials_per_batch: expected a whole number >= 1, got {trials_per_batch!r}")
        self.trials_per_batch = trials_per_batch
        self.executor = executor
        self.executor_options = dict(executor_options or {})
        self.engine = engine
        if name is not None and (not isinstance(name, str) or not name.strip()):
            raise SchemaError(f"name: expected a non-empty string, got {name!r}")
        self.name = name
        self.result: SweepResult | None = None
        """The last run's result; also set when the run was cancelled (its finished rows)."""
        self._listeners: list[ProgressCallback] = []
        self._stop_event: asyncio.Event | None = None

    # ------------------------------------------------------------------------------------------- public

    def listen_progress(self, callback: ProgressCallback) -> Callable[[], None]:
        """Call `callback(SweepProgress)` after every finished job; returns the unsubscribe function."""
        if not callable(callback):
            raise SchemaError(f"callback: expected a callable, got {callback!r}")
        self._listeners.append(callback)

        def unsubscribe() -> None:
            if callback in self._listeners:
                self._listeners.remove(callback)

        return unsubscribe

    def stop(self) -> None:
        """Stop a running sweep: the job in flight is dropped, no new job starts, and `run()` returns
        the finished rows (`interrupted=True`). Does nothing when the sweep is not running."""
        if self._stop_event is not None:
            self._stop_event.set()

    async def run(self) -> SweepResult:
        """Run every job and return the result (also kept in `self.result`)."""
        if self._stop_event is not None:
            raise RunStateError(f"sweep {self.name or ''!r} is already running")
        if self.optuna is not None:
            import_optuna()  # fail before any job when the extra is missing
        plan = self._plan()
        own_executor = isinstance(self.executor, str)
        executor = make_executor(self.executor, **self.executor_options)
        state = self._initial_state(plan)
        self._stop_event = asyncio.Event()
        started = time.perf_counter()
        try:
            if self.optuna is None:
                await self._grid_search(plan, executor, state)
            else:
                await self._optuna_search(plan, executor, state)
            self._choose_all(plan, state)
            if self.walk_forward is not None and not state.interrupted:
                await self._test_choices(plan, executor, state)
        except asyncio.CancelledError:
            state.interrupted = True
            raise
        finally:
            self._stop_event = None
            if own_executor:
                await executor.aclose()
            if state.interrupted:
                self._choose_all(plan, state)  # the splits table shows what the finished rows chose
            self.result = self._result(plan, state, executor.name, time.perf_counter() - started)
        return self.result

    # --------------------------------------------------------------------------------------- planning

    def _plan(self) -> _Plan:
        engine = cast(Engine, self.engine if self.engine is not None else default_slot.default_engine)
        registry = engine.registry
        exchange = self._exchange(engine)
        source = exchange.get_candles
        known = getattr(source, "symbols", None)
        if isinstance(known, tuple | list):
            for symbol in self.symbols:
                if symbol not in known:
                    raise SchemaError(f"symbols: {symbol!r} is not in the data of exchange "
                                      f"{exchange.exchange_name!r} (symbols: {', '.join(known)})")
        if self.strategy_name is not None:
            strategy = registry.strategies.get(self.strategy_name, "Sweep")
        else:
            label = self.name or getattr(self.make_strategy, "__name__", None) or "sweep"
            strategy = make_strategy(label, self.interval, unbuilt_get_signal, None, None, None, None)
        risks = (registry.risks.get(strategy.risk_name, "Sweep"),) if strategy.risk_name else ()
        sizing = registry.sizings.get(strategy.sizing_name, "Sweep") if strategy.sizing_name else None
        frame_names = self.frames or tuple(f.frame_name for f in engine.list_frames())
        if not frame_names:
            raise SchemaError("frames: no frame is registered on the engine; add_frame(...) first or pass frames=")
        units = tuple(u for name in frame_names for u in self._units(registry.frames.get(name, "Sweep"), exchange))
        points = () if self.optuna is not None else tuple(grid_points(self.space))
        return _Plan(
            name=self.name or strategy.strategy_name, engine=engine, symbols=self.symbols, strategy=strategy,
            risks=risks, sizing=sizing, config=engine.get_config(), units=units, points=points,
        )

    def _exchange(self, engine: Engine) -> ExchangeSchema:
        if self.exchange_name is not None:
            return engine.registry.exchanges.get(self.exchange_name, "Sweep")
        names = [e.exchange_name for e in engine.list_exchanges()]
        if len(names) != 1:
            raise SchemaError(f"exchange_name: {'no exchange is' if not names else 'several exchanges are'} "
                              f"registered ({', '.join(names) or 'none'}); name the one to sweep on")
        return engine.registry.exchanges.get(names[0], "Sweep")

    def _units(self, frame: FrameSchema, exchange: ExchangeSchema) -> list[_Unit]:
        if self.walk_forward is None:
            whole = Window(frame.start_date, frame.end_date)
            return [_Unit(frame.frame_name, None, whole, None, frame, exchange)]
        step = FRAME_INTERVALS[frame.interval] * MINUTE_MS
        splits = self.walk_forward.splits(frame.start_date, frame.end_date, step)
        return [self._split_unit(frame, exchange, split, step) for split in splits]

    @staticmethod
    def _split_unit(frame: FrameSchema, exchange: ExchangeSchema, split: Split, step: int) -> _Unit:
        assert split.test is not None

        def window_frame(window: Window, kind: str) -> FrameSchema:
            # the last tick is one frame step before the window's end: the next window's first tick
            return FrameSchema(f"{frame.frame_name}#{split.index}-{kind}", frame.interval, window.start,
                               window.end - timedelta(milliseconds=step), frame.note)

        def window_exchange(window: Window) -> ExchangeSchema:
            return dataclasses.replace(exchange, get_candles=clip_candles(exchange.get_candles, window.end_ms))

        return _Unit(frame.frame_name, split.index, split.train, split.test,
                     window_frame(split.train, "train"), window_exchange(split.train),
                     window_frame(split.test, "test"), window_exchange(split.test))

    def _initial_state(self, plan: _Plan) -> _State:
        per_unit = len(plan.points) if self.optuna is None else self.optuna
        tested = len(plan.units) if self.walk_forward is not None else 0
        total = (per_unit * len(plan.units) + tested) * len(plan.symbols)
        candidates = [[_Candidate(p) for p in plan.points] for _ in plan.units]
        return _State(total=total, candidates=candidates)

    def _job(self, plan: _Plan, state: _State, phase: Phase, unit_index: int, candidate: int,
             symbol: str) -> BacktestJob:
        unit = plan.units[unit_index]
        frame, exchange = ((unit.train_frame, unit.train_exchange) if phase == "in_sample"
                           else (unit.test_frame, unit.test_exchange))
        assert frame is not None and exchange is not None
        job_id = f"{phase}/{unit_index}/{candidate}/{symbol}"
        state.keys[job_id] = (phase, unit_index, candidate, symbol)
        return BacktestJob(
            job_id=job_id, symbol=symbol, strategy=plan.strategy, exchange=exchange, frame=frame,
            risks=plan.risks, sizing=plan.sizing, params=dict(state.candidates[unit_index][candidate].params),
            config=plan.config, strategy_factory=self.make_strategy,
        )

    # -------------------------------------------------------------------------------------- execution

    async def _execute(self, plan: _Plan, executor: Executor, jobs: list[BacktestJob], phase: Phase,
                       state: _State) -> None:
        """Feed `jobs` to the executor and record each result as it comes.

        Each result is awaited in a task of its own, raced against `stop()`: a stop drops the job in
        flight at once (however long it runs) without cancelling the caller's task, and a result
        that finished is always recorded whole, never half a backtest. A stop sets `state.interrupted`.
        """
        stream = executor.run(jobs)
        stop = self._stop_event
        assert stop is not None
        try:
            while True:
                if stop.is_set():
                    state.interrupted = True
                    return
                pending: asyncio.Future[JobResult] = asyncio.ensure_future(anext(stream))
                stopping = asyncio.ensure_future(stop.wait())
                try:
                    await asyncio.wait((pending, stopping), return_when=asyncio.FIRST_COMPLETED)
                finally:
                    stopping.cancel()
                    if not pending.done():
                        pending.cancel()
                        with contextlib.suppress(asyncio.CancelledError, Exception):
                            await pending
                if pending.cancelled():
                    state.interrupted = True
                    return
                try:
                    result = pending.result()
                except StopAsyncIteration:
                    return
                key = state.keys.get(result.job_id)
                if key is None:
                    _log.warning("executor %s returned an unknown job %r", executor.name, result.job_id)
                    continue
                state.results[key] = result
                state.finished += 1
                state.failed += 0 if result.ok else 1
                await self._emit(SweepProgress(name=plan.name, finished=state.finished, total=state.total,
                                               failed=state.failed, phase=phase, result=result))
        finally:
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                await aclose()

    async def _emit(self, event: SweepProgress) -> None:
        for callback in list(self._listeners):
            try:
                outcome = callback(event)
                if inspect.isawaitable(outcome):
                    await outcome
            except Exception as exc:  # a display bug must not lose hours of backtests
                _log.warning("sweep progress listener %r raised: %r", callback, exc)

    async def _grid_search(self, plan: _Plan, executor: Executor, state: _State) -> None:
        jobs = [self._job(plan, state, "in_sample", u, c, s)
                for u in range(len(plan.units)) for c in range(len(plan.points)) for s in plan.symbols]
        await self._execute(plan, executor, jobs, "in_sample", state)

    async def _optuna_search(self, plan: _Plan, executor: Executor, state: _State) -> None:
        assert self.optuna is not None
        studies = [make_study(self.metric, self.sampler, None if self.seed is None else self.seed + i,
                              f"{plan.name}#{i}") for i in range(len(plan.units))]
        remaining = self.optuna
        while remaining > 0:
            batch = min(self.trials_per_batch, remaining)
            asked: list[tuple[int, int, Any]] = []
            for u, study in enumerate(studies):
                for _ in range(batch):
                    trial = study.ask()
                    state.candidates[u].append(_Candidate(suggest_params(trial, self.space), trial.number))
                    asked.append((u, len(state.candidates[u]) - 1, trial))
            jobs = [self._job(plan, state, "in_sample", u, c, s) for u, c, _ in asked for s in plan.symbols]
            await self._execute(plan, executor, jobs, "in_sample", state)
            if state.interrupted:
                return  # a partial batch is not told: the study is dropped anyway
            for u, c, trial in asked:  # in asking order: the study does not depend on completion order
                tell(studies[u], trial, self._score(plan, state, u, c))
            remaining -= batch

    def _score(self, plan: _Plan, state: _State, unit: int, candidate: int) -> float | None:
        """Mean metric over the symbols on the train window; None when a job failed or is missing."""
        results = [state.results.get(("in_sample", unit, candidate, s)) for s in plan.symbols]
        if any(r is None or not r.ok for r in results):
            return None
        return mean_score(metric_value(r.stats, self.metric) for r in results if r is not None)

    def _choose_all(self, plan: _Plan, state: _State) -> None:
        for u in range(len(plan.units)):
            best: tuple[tuple[int, float], int] | None = None
            for c in range(len(state.candidates[u])):
                results = [state.results.get(("in_sample", u, c, s)) for s in plan.symbols]
                if any(r is None or not r.ok for r in results):
                    continue  # a set that failed anywhere is never chosen
                key = rank_key(self._score(plan, state, u, c), self.metric)
                if best is None or key < best[0]:
                    best = (key, c)
            if best is not None:
                state.chosen[u] = best[1]

    async def _test_choices(self, plan: _Plan, executor: Executor, state: _State) -> None:
        jobs = [self._job(plan, state, "out_of_sample", u, c, s)
                for u, c in sorted(state.chosen.items()) if plan.units[u].test is not None for s in plan.symbols]
        state.total = state.finished + len(jobs)
        await self._execute(plan, executor, jobs, "out_of_sample", state)

    # ---------------------------------------------------------------------------------------- results

    def _result(self, plan: _Plan, state: _State, executor_name: str, elapsed: float) -> SweepResult:
        rows: list[SweepRow] = []
        splits: list[SplitChoice] = []
        for u, unit in enumerate(plan.units):
            chosen = state.chosen.get(u)
            for c, candidate in enumerate(state.candidates[u]):
                for symbol in plan.symbols:
                    row = self._row(plan, state, u, c, candidate, symbol, chosen == c)
                    if row is not None:
                        rows.append(row)
            splits.append(self._split_choice(plan, state, u, unit, chosen))
        return SweepResult(
            name=plan.name, metric=self.metric, search="grid" if self.optuna is None else "optuna",
            param_names=tuple(self.space), rows=rows, splits=splits, ranking=self._ranking(rows),
            interrupted=state.interrupted, total_jobs=state.total, finished_jobs=state.finished,
            failed_jobs=state.failed, elapsed_seconds=elapsed, executor=executor_name,
            walk_forward=self.walk_forward is not None, dump_dir=plan.engine.dump_dir,
        )

    def _row(self, plan: _Plan, state: _State, u: int, c: int, candidate: _Candidate, symbol: str,
             chosen: bool) -> SweepRow | None:
        unit = plan.units[u]
        train = state.results.get(("in_sample", u, c, symbol))
        if train is None:
            return None  # never ran (interrupted)
        test = state.results.get(("out_of_sample", u, c, symbol)) if chosen else None
        error, traceback = train.error, train.error
        summary = error_summary(error)
        if error is None and test is not None and test.error is not None:
            summary, traceback = f"out of sample: {error_summary(test.error)}", test.error
        return SweepRow(
            params=dict(candidate.params), symbol=symbol, frame=unit.frame, split=unit.split, train=unit.train,
            test=unit.test, metric=self.metric, in_sample=metric_value(train.stats, self.metric),
            out_of_sample=None if test is None else metric_value(test.stats, self.metric),
            trades_in_sample=None if train.stats is None else train.stats.total_trades,
            trades_out_of_sample=None if test is None or test.stats is None else test.stats.total_trades,
            chosen=chosen and self.walk_forward is not None, error=summary, trial=candidate.trial,
            error_traceback=traceback, in_sample_stats=train.stats,
            out_of_sample_stats=None if test is None else test.stats,
        )

    def _split_choice(self, plan: _Plan, state: _State, u: int, unit: _Unit, chosen: int | None) -> SplitChoice:
        params = None if chosen is None else dict(state.candidates[u][chosen].params)
        in_sample = None if chosen is None else self._score(plan, state, u, chosen)
        out_of_sample: float | None = None
        if chosen is not None and unit.test is not None:
            tests = [state.results.get(("out_of_sample", u, chosen, s)) for s in plan.symbols]
            if all(t is not None and t.ok for t in tests):
                out_of_sample = mean_score(metric_value(t.stats, self.metric) for t in tests if t is not None)
        candidates = sum(1 for c in range(len(state.candidates[u]))
                         if any(("in_sample", u, c, s) in state.results for s in plan.symbols))
        return SplitChoice(frame=unit.frame, split=unit.split, train=unit.train, test=unit.test, params=params,
                           in_sample=in_sample, out_of_sample=out_of_sample, candidates=candidates)

    def _ranking(self, rows: list[SweepRow]) -> list[RankedParams]:
        groups: dict[tuple[tuple[str, str], ...], list[SweepRow]] = {}
        for row in rows:
            groups.setdefault(_params_key(row.params), []).append(row)
        ranked: list[tuple[tuple[int, float], int, RankedParams]] = []
        for order, members in enumerate(groups.values()):
            errors = sum(1 for r in members if r.in_sample_stats is None)  # failed in sample
            score = None if errors else mean_score(r.in_sample for r in members)
            tested = [r.out_of_sample for r in members if r.chosen]
            oos = mean_score(tested) if tested else None
            item = RankedParams(params=dict(members[0].params), score=score, out_of_sample=oos, runs=len(members),
                                errors=errors)
            ranked.append((rank_key(score, self.metric), order, item))
        ranked.sort(key=lambda t: (t[0], t[1]))
        return [item for _, _, item in ranked]


"""`bk.Sweep`: grid and Optuna searches of a strategy factory, walk-forward splits, ranking, failures,
cancellation and the dumped report — every figure checked against a plain in-process backtest."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import backtest_kit as bk
from backtest_kit import demo
from backtest_kit.engine import default_slot
from backtest_kit.engine.context import get_candles
from backtest_kit.engine.errors import SchemaError
from backtest_kit.research import executors as executors_module
from backtest_kit.research.ranking import metric_value, rank_key
from backtest_kit.research.windowed import ClippedSyncCandles
from backtest_kit.system import jobs as jobs_module
from backtest_kit.system.job_worker import run_job_async
from backtest_kit.system.jobs import BacktestJob, JobResult
from backtest_kit.testing import comparable_statistics, make_engine

SYMBOLS = ("BTCUSDT", "BTCTWIN")  # the bundled week twice, under two names: two symbols, one file
START = datetime(2025, 5, 21, tzinfo=UTC)
END = datetime(2025, 5, 23, tzinfo=UTC)
GRID = {"fast": [5, 10], "slow": [30, 60]}


def _source() -> bk.CsvCandles:
    path = bk.bundled_sample_path()
    return bk.CsvCandles(dict.fromkeys(SYMBOLS, path))


def _engine(**kwargs: Any) -> bk.Engine:
    engine = make_engine(**kwargs)
    engine.add_exchange(exchange_name="csv", get_candles=_source())
    engine.add_frame(frame_name="two-days", interval="1m", start_date=START, end_date=END)
    return engine


def _sweep(engine: bk.Engine, params: Any = None, **kwargs: Any) -> bk.Sweep:
    options: dict[str, Any] = {"symbols": list(SYMBOLS), "engine": engine, "executor": "sequential"}
    options.update(kwargs)
    return bk.Sweep(demo.make_strategy, GRID if params is None else params, **options)


async def _backtest(source: Any, get_signal: Any, symbol: str, start: datetime, end: datetime,
                    strategy_name: str = "make_strategy") -> bk.Statistics:
    """The reference: one plain Backtest.run of `get_signal` on its own engine (named as the sweep's jobs)."""
    engine = make_engine()
    engine.add_exchange(exchange_name="csv", get_candles=source)
    engine.add_strategy(strategy_name=strategy_name, interval="5m", get_signal=get_signal)
    engine.add_frame(frame_name="ref", interval="1m", start_date=start, end_date=end)
    async for _ in engine.backtest.run(symbol, strategy_name=strategy_name, exchange_name="csv", frame_name="ref"):
        pass
    stats = await engine.backtest.get_data(symbol, strategy_name)
    await engine.close()
    return stats


# ------------------------------------------------------------------------------------------------ grid


async def test_a_grid_of_two_params_on_two_symbols_has_a_row_per_run_equal_to_its_own_backtest() -> None:
    result = await _sweep(_engine()).run()
    assert len(result.rows) == 2 * 2 * 2
    assert {(tuple(r.params.items()), r.symbol) for r in result.rows} == {
        ((("fast", f), ("slow", s)), sym) for f in (5, 10) for s in (30, 60) for sym in SYMBOLS
    }
    assert result.finished_jobs == result.total_jobs == 8 and result.failed_jobs == 0
    traded = 0
    for row in result.rows:
        assert row.error is None and row.in_sample_stats is not None
        expected = await _backtest(_source(), demo.make_strategy(**row.params), row.symbol, START, END)
        assert comparable_statistics(row.in_sample_stats) == comparable_statistics(expected)
        assert row.in_sample == metric_value(expected, "sharpe_ratio")
        assert row.trades_in_sample == expected.total_trades
        traded += expected.total_trades
    assert traded > 0
    ranked = [r.score for r in result.ranking]
    assert ranked == sorted(ranked, key=lambda v: rank_key(v, "sharpe_ratio"))
    assert result.best == dict(result.ranking[0].params)


async def test_the_best_params_are_those_with_the_best_mean_over_the_symbols() -> None:
    result = await _sweep(_engine(), metric="total_pnl").run()
    means: dict[tuple[int, int], float] = {}
    for row in result.rows:
        assert row.in_sample is not None
        key = (row.params["fast"], row.params["slow"])
        means[key] = means.get(key, 0.0) + row.in_sample / len(SYMBOLS)
    best = max(means, key=lambda k: means[k])
    assert result.best == {"fast": best[0], "slow": best[1]}
    assert result.best_score == pytest.approx(means[best])


# ----------------------------------------------------------------------------------------- ranking


def test_rank_key_puts_higher_first_except_drawdown_and_none_always_last() -> None:
    assert sorted([1.0, None, 3.0, -2.0], key=lambda v: rank_key(v, "sharpe_ratio")) == [3.0, 1.0, -2.0, None]
    assert sorted([1.0, None, 3.0, 0.5], key=lambda v: rank_key(v, "max_drawdown")) == [0.5, 1.0, 3.0, None]


def make_quiet_or_sma(quiet: bool, fast: int = 10) -> Any:
    """A factory whose `quiet=True` strategy never trades (every figure None)."""
    if quiet:
        async def never(symbol: str, when: datetime) -> None:
            return None
        return never
    return demo.make_strategy(fast=fast)


@pytest.mark.parametrize("metric", ["max_drawdown", "sharpe_ratio"])
async def test_a_parameter_set_without_the_figure_ranks_last_in_either_direction(metric: str) -> None:
    sweep = bk.Sweep(make_quiet_or_sma, {"quiet": [True, False], "fast": [5, 10]}, symbols="BTCUSDT",
                     engine=_engine(), executor="sequential", metric=metric)
    result = await sweep.run()
    assert [r.params["quiet"] for r in result.ranking] == [False, False, True, True]
    assert [r.score is None for r in result.ranking] == [False, False, True, True]
    scores = [r.score for r in result.ranking[:2]]
    assert scores == sorted(scores, reverse=metric != "max_drawdown")  # drawdown: lower first


# ------------------------------------------------------------------------------------------ failures


async def test_a_factory_that_raises_is_reported_with_its_params_and_the_sweep_goes_on() -> None:
    result = await _sweep(_engine(), {"fast": [10, 40], "slow": [30]}).run()  # slow <= fast raises
    failed = [r for r in result.rows if r.error is not None]
    assert {r.symbol for r in failed} == set(SYMBOLS) and all(r.params == {"fast": 40, "slow": 30} for r in failed)
    for row in failed:
        assert "{'fast': 40, 'slow': 30}" in row.error  # type: ignore[operator]
        assert "slow: must be greater than fast (40), got 30" in row.error  # type: ignore[operator]
        assert row.in_sample is None and row.in_sample_stats is None
        assert "Traceback" in (row.error_traceback or "")
    assert all(r.error is None for r in result.rows if r.params["fast"] == 10)
    assert result.failed_jobs == 2 and result.finished_jobs == 4
    assert result.ranking[-1].params == {"fast": 40, "slow": 30} and result.ranking[-1].errors == 2
    assert result.best == {"fast": 10, "slow": 30}


# -------------------------------------------------------------------------------------- walk-forward


@settings(max_examples=200, deadline=None)
@given(
    minutes=st.integers(min_value=1, max_value=60 * 24 * 40),
    step=st.sampled_from([1, 5, 15, 60, 240]),
    train=st.floats(min_value=0.01, max_value=10),
    test=st.floats(min_value=0.01, max_value=5),
    folds=st.none() | st.integers(min_value=1, max_value=12),
    anchored=st.booleans(),
)
def test_walk_forward_test_windows_follow_their_train_window_and_never_overlap(
    minutes: int, step: int, train: float, test: float, folds: int | None, anchored: bool,
) -> None:
    start = datetime(2025, 1, 1, 0, 7, tzinfo=UTC)
    end = start + timedelta(minutes=minutes)
    wf = bk.WalkForward(folds=folds, anchored=anchored) if folds else bk.WalkForward(train, test, anchored=anchored)
    try:
        splits = wf.splits(start, end, step * 60_000)
    except SchemaError as exc:
        assert "walk_forward" in str(exc)
        return
    assert splits
    previous_test_end = None
    for i, split in enumerate(splits):
        assert split.index == i and split.test is not None
        assert start <= split.train.start < split.train.end <= split.test.start < split.test.end <= end
        for bound in (split.train.start, split.train.end, split.test.start, split.test.end):
            assert (bound - start) % timedelta(minutes=step) == timedelta(0)  # on the frame's tick grid
        if anchored:
            assert split.train.start == start
        if previous_test_end is not None:
            assert split.test.start >= previous_test_end  # test windows never overlap
        previous_test_end = split.test.end


def test_walk_forward_rejects_bad_settings_naming_them() -> None:
    with pytest.raises(SchemaError, match=r"walk_forward.train_days: expected a positive number of days, got -1"):
        bk.WalkForward(train_days=-1, test_days=1)
    with pytest.raises(SchemaError, match=r"walk_forward.folds: expected a whole number >= 1, got 0"):
        bk.WalkForward(folds=0)
    with pytest.raises(SchemaError, match=r"train_days=5 \+ test_days=1 do not fit"):
        bk.WalkForward(train_days=5, test_days=1).splits(START, END, 60_000)


class RecordingExecutor:
    """Runs jobs in this process like the sequential executor and keeps them for inspection."""

    name = "recording"

    def __init__(self) -> None:
        self.jobs: list[BacktestJob] = []

    async def run(self, jobs: Sequence[BacktestJob]) -> AsyncIterator[JobResult]:
        for job in jobs:
            self.jobs.append(job)
            yield await run_job_async(job)

    async def aclose(self) -> None:
        return None


SEEN: list[tuple[str, int, int]] = []  # (symbol, tick time, newest candle close) of every peeking call


def make_peeker(fast: int) -> Any:
    """A strategy that reads as far ahead as the engine lets it (and trades the SMA cross)."""
    inner = demo.make_strategy(fast=fast)

    async def peek(symbol: str, when: datetime) -> Any:
        candles = await get_candles(symbol, "1m", 1000)
        SEEN.append((symbol, int(when.timestamp() * 1000), candles[-1].timestamp + 60_000 if candles else 0))
        return await inner(symbol, when)

    return peek


async def test_a_walk_forward_job_sees_no_candle_after_its_window_even_when_a_position_is_open() -> None:
    SEEN.clear()
    recorder = RecordingExecutor()
    wf = bk.WalkForward(train_days=0.5, test_days=0.25)
    sweep = bk.Sweep(make_peeker, {"fast": [5, 10]}, symbols=list(SYMBOLS), engine=_engine(), executor=recorder,
                     walk_forward=wf)
    result = await sweep.run()
    splits = wf.splits(START, END, 60_000)
    assert len(result.splits) == len(splits) == 6
    by_frame = {job.frame.frame_name: job for job in recorder.jobs}
    for split in splits:
        assert split.test is not None
        train = by_frame[f"two-days#{split.index}-train"]
        test = by_frame[f"two-days#{split.index}-test"]
        assert train.frame.start_date == split.train.start and train.frame.end_date < split.train.end
        assert test.frame.start_date == split.test.start >= split.train.end
        for job, window in ((train, split.train), (test, split.test)):
            source = job.exchange.get_candles
            assert isinstance(source, ClippedSyncCandles) and source.end_ms == window.end_ms
            # what a fast-forward from near the end would read: nothing closing after the window
            ahead = source.next_candles(job.symbol, "1m", window.end_ms - 30 * 60_000, 10_000)
            assert ahead and ahead[-1].timestamp + 60_000 == window.end_ms
    assert SEEN and all(close <= when for _, when, close in SEEN)  # get_candles never looks ahead
    # The strongest check: every train and test figure equals a backtest on data that *ends* at the
    # window's end, while on the whole data some differ (a position open at the end was resolved by
    # the next window's prices): so the clipping is what keeps the windows apart.
    full = _source()
    rows = [r for r in result.rows if r.symbol == "BTCUSDT"]
    differs = 0
    for row in rows:
        windows = [(row.train, row.in_sample_stats)] + ([(row.test, row.out_of_sample_stats)] if row.chosen else [])
        for window, stats in windows:
            assert window is not None and stats is not None
            candles = [c for c in full.next_candles("BTCUSDT", "1m", 0, 20_000)
                       if c.timestamp + 60_000 <= window.end_ms]
            last_tick = window.end - timedelta(minutes=1)
            truncated = await _backtest(bk.MemoryCandles({"BTCUSDT": candles}), make_peeker(row.params["fast"]),
                                        "BTCUSDT", window.start, last_tick, strategy_name="make_peeker")
            assert comparable_statistics(stats) == comparable_statistics(truncated)
            whole = await _backtest(full, make_peeker(row.params["fast"]), "BTCUSDT", window.start, last_tick,
                                    strategy_name="make_peeker")
            differs += comparable_statistics(whole) != comparable_statistics(truncated)
    assert differs > 0


async def test_walk_forward_chooses_on_train_and_scores_the_choice_on_the_next_test_window() -> None:
    result = await _sweep(_engine(), walk_forward=bk.WalkForward(folds=3)).run()
    assert len(result.splits) == 3
    assert result.total_jobs == result.finished_jobs == 3 * (4 + 1) * 2
    for choice in result.splits:
        assert choice.test is not None and choice.params is not None and choice.candidates == 4
        split_rows = [r for r in result.rows if r.split == choice.split]
        means = {}
        for r in split_rows:
            means.setdefault((r.params["fast"], r.params["slow"]), []).append(r.in_sample)
        best = max(means, key=lambda k: sum(means[k]) / len(SYMBOLS))
        assert dict(choice.params) == {"fast": best[0], "slow": best[1]}
        chosen = [r for r in split_rows if r.chosen]
        assert {r.symbol for r in chosen} == set(SYMBOLS) and all(r.params == choice.params for r in chosen)
        assert all(r.out_of_sample_stats is not None for r in chosen)
        assert all(r.out_of_sample is None and r.out_of_sample_stats is None for r in split_rows if not r.chosen)
        oos = [r.out_of_sample for r in chosen]
        assert choice.out_of_sample == pytest.approx(sum(v for v in oos if v is not None) / len(oos))


# ------------------------------------------------------------------------------------------- optuna


async def test_optuna_with_a_seed_is_reproducible_and_stays_in_the_ranges() -> None:
    params = {"fast": bk.IntRange(3, 15), "slow": range(30, 91, 30), "take_profit": bk.FloatRange(0.5, 2.0)}

    async def once() -> bk.SweepResult:
        return await _sweep(_engine(), params, optuna=6, seed=7, trials_per_batch=3).run()

    first, second = await once(), await once()
    assert first.search == "optuna" and len(first.rows) == 6 * len(SYMBOLS)
    assert [r.params for r in first.rows] == [r.params for r in second.rows]
    assert [r.trial for r in first.rows[::2]] == list(range(6))
    assert first.best == second.best and first.best is not None
    for row in first.rows:
        assert 3 <= row.params["fast"] <= 15 and row.params["slow"] in (30, 60, 90)
        assert 0.5 <= row.params["take_profit"] <= 2.0
    assert len({tuple(r.params.items()) for r in first.rows}) > 1  # it did search


async def test_optuna_without_the_extra_fails_before_any_job_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "optuna", None)  # import optuna -> ImportError
    with pytest.raises(ImportError, match=r"pip install 'backtest-kit\[optuna\]'"):
        await _sweep(_engine(), optuna=3).run()


# ------------------------------------------------------------------------------- progress and stopping


async def test_progress_counts_every_finished_job() -> None:
    sweep = _sweep(_engine(), walk_forward=bk.WalkForward(folds=2))
    events: list[bk.SweepProgress] = []
    seen_async: list[int] = []

    async def also_async(event: bk.SweepProgress) -> None:
        seen_async.append(event.finished)

    sweep.listen_progress(events.append)
    off = sweep.listen_progress(also_async)
    off()
    result = await sweep.run()
    assert [e.finished for e in events] == list(range(1, result.total_jobs + 1))
    assert events[-1].total == result.total_jobs == 2 * 5 * 2 and events[-1].progress == 1.0
    assert [e.phase for e in events].count("out_of_sample") == 2 * 2
    assert seen_async == []


class StopAfter:
    """A test executor: runs jobs via run_job_async and cancels the sweep's task after `k` results."""

    name = "stop-after"

    def __init__(self, k: int) -> None:
        self.k = k
        self.task: asyncio.Task[Any] | None = None
        self.closed = False
        self.started = 0

    async def run(self, jobs: Sequence[BacktestJob]) -> AsyncIterator[JobResult]:
        for i, job in enumerate(jobs):
            if i == self.k and self.task is not None:
                self.task.cancel()  # Ctrl-C arriving while job k+1 would start
                await asyncio.sleep(0)
            self.started += 1
            yield await run_job_async(job)

    async def aclose(self) -> None:
        self.closed = True


async def test_cancelling_a_sweep_keeps_the_finished_rows() -> None:
    executor = StopAfter(3)
    sweep = _sweep(_engine(), executor=executor)
    task = asyncio.ensure_future(sweep.run())
    executor.task = task
    with pytest.raises(asyncio.CancelledError):
        await task
    assert sweep.result is not None and sweep.result.interrupted
    assert len(sweep.result.rows) == 3 == sweep.result.finished_jobs
    assert executor.started == 3
    assert not executor.closed  # an executor object belongs to its owner, who closes it


async def test_stop_returns_the_partial_result() -> None:
    sweep = _sweep(_engine())
    sweep.listen_progress(lambda event: sweep.stop() if event.finished == 5 else None)
    result = await sweep.run()
    assert result.interrupted and len(result.rows) == 5 and result.total_jobs == 8
    assert "Interrupted" in result.to_markdown()


# ------------------------------------------------------------------------------------ engine, executor


async def test_the_default_engine_and_the_default_executor_name(monkeypatch: pytest.MonkeyPatch) -> None:
    engine = _engine()
    monkeypatch.setattr(default_slot, "default_engine", engine)
    monkeypatch.setitem(jobs_module._EXECUTORS, "local", executors_module.SequentialExecutor)
    sweep = bk.Sweep(demo.make_strategy, {"fast": [5]}, symbols="BTCUSDT")
    assert sweep.executor == "local"
    result = await sweep.run()
    assert len(result.rows) == 1 and result.rows[0].error is None and result.dump_dir == engine.dump_dir


async def test_a_registered_strategy_is_the_template_of_every_job() -> None:
    engine = _engine()
    engine.add_strategy(strategy_name="hourly-sma", interval="1h", get_signal=demo.get_signal)
    recorder = RecordingExecutor()
    result = await bk.Sweep(demo.make_strategy, {"fast": [5]}, symbols="BTCUSDT", engine=engine,
                            strategy_name="hourly-sma", executor=recorder).run()
    assert result.name == "hourly-sma"
    assert [(j.strategy.strategy_name, j.strategy.interval) for j in recorder.jobs] == [("hourly-sma", "1h")]


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"metric": "sharp"}, r"metric: unknown metric 'sharp'"),
    ({"params": {"fast": []}}, r"params.fast: expected at least one value, got \[\]"),
    ({"params": {"fast": 5}}, r"params.fast: expected a list of values, a range, IntRange or FloatRange, got 5"),
    ({"optuna": 0}, r"optuna: expected a number of trials >= 1 or None, got 0"),
    ({"symbols": []}, r"symbols: expected a symbol or a non-empty list of symbols"),
    ({"params": {"fast": bk.FloatRange(1, 2)}}, r"params.fast: FloatRange\(1, 2\) has no step"),
])
async def test_bad_sweep_settings_are_schema_errors_naming_the_field(kwargs: dict[str, Any], message: str) -> None:
    params = kwargs.pop("params", GRID)
    with pytest.raises(SchemaError, match=message):
        await _sweep(_engine(), params, **kwargs).run()


async def test_a_symbol_missing_from_the_data_is_named_before_any_job() -> None:
    with pytest.raises(SchemaError, match=r"symbols: 'ETHUSDT' is not in the data of exchange 'csv'"):
        await _sweep(_engine(), symbols=["ETHUSDT"]).run()


# -------------------------------------------------------------------------------------------- dumps


async def test_dump_writes_markdown_csv_and_a_png_under_dump_sweep(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    result = await _sweep(_engine(directory=tmp_path), name="sma/grid", walk_forward=bk.WalkForward(folds=2)).run()
    files = result.dump()
    assert files.markdown == tmp_path / "dump" / "sweep" / "sma%2Fgrid.md"
    assert files.csv == files.markdown.with_suffix(".csv") and files.chart == files.markdown.with_suffix(".png")
    text = files.markdown.read_text(encoding="utf-8")
    assert text.startswith("# Sweep sma/grid\n") and "![sharpe_ratio by parameters](sma%2Fgrid.png)" in text
    assert "## Walk-forward splits" in text and f"fast={result.best['fast']}" in text  # type: ignore[index]
    lines = files.csv.read_text(encoding="utf-8").splitlines()
    assert lines[0].startswith("fast,slow,symbol,frame,split,train_start") and len(lines) == 1 + len(result.rows)
    assert files.chart is not None and files.chart.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


async def test_a_one_parameter_sweep_plots_a_line(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    result = await _sweep(_engine(), {"fast": [3, 5, 10]}).run()
    files = result.dump(tmp_path, plot=True)
    assert files.chart is not None and files.chart.stat().st_size > 0
    no_chart = result.dump(tmp_path / "plain", plot=False)
    assert no_chart.chart is None and "![" not in no_chart.markdown.read_text(encoding="utf-8")


def test_grid_points_are_the_cartesian_product_in_declaration_order() -> None:
    from backtest_kit.research.grid import grid_points

    assert grid_points({"a": [1, 2], "b": bk.IntRange(3, 7, 2)}) == [
        {"a": 1, "b": 3}, {"a": 1, "b": 5}, {"a": 1, "b": 7}, {"a": 2, "b": 3}, {"a": 2, "b": 5}, {"a": 2, "b": 7},
    ]
    assert grid_points({"x": bk.FloatRange(0.1, 0.3, step=0.1)}) == [{"x": 0.1}, {"x": 0.2}, {"x": 0.3}]


async def test_walk_forward_jobs_pickle_and_give_the_same_figures_in_a_worker_process() -> None:
    import pickle
    from concurrent.futures import ProcessPoolExecutor

    from backtest_kit.system.job_worker import run_job

    recorder = RecordingExecutor()
    result = await _sweep(_engine(), {"fast": [10]}, symbols="BTCUSDT", executor=recorder,
                          walk_forward=bk.WalkForward(folds=1)).run()
    job = next(j for j in recorder.jobs if j.frame.frame_name.endswith("-test"))
    copy = pickle.loads(pickle.dumps(job))
    assert copy.strategy_factory is demo.make_strategy
    assert copy.exchange.get_candles.end_ms == job.exchange.get_candles.end_ms
    with ProcessPoolExecutor(max_workers=1) as pool:
        remote = await asyncio.get_running_loop().run_in_executor(pool, run_job, job)
    row = next(r for r in result.rows if r.chosen)
    assert remote.stats is not None and row.out_of_sample_stats is not None
    assert comparable_statistics(remote.stats) == comparable_statistics(row.out_of_sample_stats)

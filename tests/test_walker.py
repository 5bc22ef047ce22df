"""Walker: strategies compared on one symbol
([risk-sizing §4](../docs/design/risk-sizing-portfolio.md#4-walker)).

Backtests run on the bundled BTCUSDT week (one day of it), so every strategy closes real trades.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import pytest

import backtest_kit as bk
from backtest_kit.demo import get_signal as sma_signal
from backtest_kit.engine.registry import WALKER_METRICS
from backtest_kit.reports.stats import Statistics
from backtest_kit.reports.walker_stats import WalkerStrategyResult, is_better, rank_results
from backtest_kit.research import make_executor
from backtest_kit.system.jobs import BacktestJob, JobResult
from backtest_kit.testing import comparable_statistics, make_engine

SYMBOL = "BTCUSDT"
SOURCE = bk.CsvCandles(bk.bundled_sample_path())
START = datetime.fromtimestamp(SOURCE.first_timestamp(SYMBOL) / 1000, UTC) + timedelta(minutes=60)


async def inverse_signal(symbol: str, when: datetime) -> bk.SignalDto | None:
    """The SMA crossover traded the other way round (a different, deterministic result)."""
    signal = await sma_signal(symbol, when)
    if signal is None:
        return None
    price = (signal.price_take_profit + signal.price_stop_loss) / 2
    if signal.position == "long":
        return bk.SignalDto(position="short", price_take_profit=price * 0.99, price_stop_loss=price * 1.01,
                            minute_estimated_time=240)
    return bk.SignalDto(position="long", price_take_profit=price * 1.01, price_stop_loss=price * 0.99,
                        minute_estimated_time=240)


async def wide_signal(symbol: str, when: datetime) -> bk.SignalDto | None:
    """The SMA crossover with a 2 % take profit and stop loss."""
    signal = await sma_signal(symbol, when)
    if signal is None:
        return None
    price = (signal.price_take_profit + signal.price_stop_loss) / 2
    up, down = (1.02, 0.98) if signal.position == "long" else (0.98, 1.02)
    return bk.SignalDto(position=signal.position, price_take_profit=price * up, price_stop_loss=price * down,
                        minute_estimated_time=480)


def never_signal(symbol: str, when: datetime) -> None:
    return None


async def held_signal(symbol: str, when: datetime) -> bk.SignalDto | None:
    """The SMA crossover, but from hour 18 on with 30 % bands and no time limit: trades close in the
    morning and the day ends with a position still open (an open position at the end of the frame)."""
    signal = await sma_signal(symbol, when)
    if signal is None or when < START + timedelta(hours=18):
        return signal
    price = (signal.price_take_profit + signal.price_stop_loss) / 2
    up, down = (1.3, 0.7) if signal.position == "long" else (0.7, 1.3)
    return bk.SignalDto(position=signal.position, price_take_profit=price * up, price_stop_loss=price * down,
                        minute_estimated_time=100_000)


SIGNALS: dict[str, Any] = {"sma": sma_signal, "inverse": inverse_signal, "wide": wide_signal,
                           "sma-twin": sma_signal, "idle": never_signal, "held": held_signal}


def register(engine: bk.Engine, *names: str, sizing: dict[str, str] | None = None) -> None:
    """Exchange "csv", frame "day" and the named strategies of `SIGNALS` (one day of the bundled data)."""
    if "csv" not in engine.registry.exchanges:
        engine.add_exchange(exchange_name="csv", get_candles=SOURCE)
        engine.add_frame(frame_name="day", interval="1m", start_date=START, end_date=START + timedelta(days=1))
    for name in names:
        engine.add_strategy(strategy_name=name, interval="5m", get_signal=SIGNALS[name],
                            sizing_name=(sizing or {}).get(name))


def walker_engine(*names: str, metric: str = "sharpe_ratio", callbacks: Any = None, **kw: Any) -> bk.Engine:
    engine = make_engine(**kw)
    register(engine, *names)
    engine.add_walker(walker_name="w", exchange_name="csv", frame_name="day", strategies=list(names),
                      metric=metric, callbacks=callbacks)
    return engine


async def separate_backtest(name: str) -> Statistics:
    engine = make_engine()
    register(engine, name)
    async for _ in engine.backtest.run(SYMBOL, strategy_name=name, exchange_name="csv", frame_name="day"):
        pass
    return await engine.backtest.get_data(SYMBOL, name)


async def walk(engine: bk.Engine, **kw: Any) -> list[bk.WalkerContract[Statistics]]:
    return [event async for event in engine.walker.run(SYMBOL, walker_name="w", **kw)]


# ---------------------------------------------------------------------------------------------------------
# Exactness and ranking
# ---------------------------------------------------------------------------------------------------------


async def test_each_strategy_gets_exactly_the_statistics_of_a_separate_backtest() -> None:
    engine = walker_engine("sma", "inverse", "wide")
    events = await walk(engine)
    assert [e.strategy_name for e in events] == ["sma", "inverse", "wide"]
    for event in events:
        alone = await separate_backtest(event.strategy_name)
        assert alone.total_trades > 0
        assert comparable_statistics(event.stats) == comparable_statistics(alone)
        # the walker's own Backtest store holds the same run
        stored = await engine.backtest.get_data(SYMBOL, event.strategy_name)
        assert comparable_statistics(stored) == comparable_statistics(alone)
    assert [e.metric_value for e in events] == [e.stats.sharpe_ratio for e in events]


@pytest.mark.parametrize("metric", WALKER_METRICS)
async def test_best_strategy_is_the_best_metric_higher_or_for_drawdown_lower(metric: str) -> None:
    engine = walker_engine("sma", "inverse", "wide", metric=metric)
    events = await walk(engine)
    values = {e.strategy_name: getattr(e.stats, metric) for e in events}
    assert all(v is not None for v in values.values())
    pick = min if metric == "max_drawdown" else max
    best = pick(values.values())
    expected = next(name for name, v in values.items() if v == best)  # the earliest of a tie
    data = await engine.walker.get_data(SYMBOL, "w")
    assert (data.best_strategy, data.best_metric, data.metric) == (expected, best, metric)
    assert data.best_stats is not None and comparable_statistics(data.best_stats) == comparable_statistics(events[
        [e.strategy_name for e in events].index(expected)].stats)
    # the best so far only ever improves
    bests = [e.best_metric for e in events]
    assert all(b is not None for b in bests)
    ordered = sorted(bests, reverse=metric == "max_drawdown")  # type: ignore[type-var]
    assert bests == ordered


async def test_ties_keep_the_earlier_strategy_and_a_none_metric_is_never_best() -> None:
    engine = walker_engine("idle", "sma", "sma-twin")
    completes: list[bk.WalkerResults[Statistics]] = []
    engine.listen_walker_complete(completes.append)
    events = await walk(engine)
    idle, sma, twin = events
    assert idle.stats.total_trades == 0 and idle.metric_value is None
    assert (idle.best_strategy, idle.best_metric) == (None, None)
    assert sma.metric_value is not None and sma.metric_value == twin.metric_value
    assert (sma.best_strategy, twin.best_strategy) == ("sma", "sma")
    assert completes[0].best_strategy == "sma"


async def test_no_usable_metric_leaves_every_best_field_none() -> None:
    engine = walker_engine("idle")
    completes: list[bk.WalkerResults[Statistics]] = []
    engine.listen_walker_complete(completes.append)
    events = await walk(engine)
    assert len(events) == 1 and events[0].strategies_tested == 1
    (done,) = completes
    assert (done.best_strategy, done.best_metric, done.best_stats) == (None, None, None)
    report = await engine.walker.get_report(SYMBOL, "w")
    assert "## Best Strategy: null" in report and "**Best sharpe_ratio:** N/A" in report
    assert "No closed signals available." in report


def result(name: str, value: float | None) -> WalkerStrategyResult:
    stats = msgspec.convert({"total_trades": 0, "winning_trades": 0, "losing_trades": 0, "close_reasons": {},
                             "events": [], "signals": [], **{f: None for f in (
                                 "win_rate", "avg_pnl", "total_pnl", "std_dev", "sharpe_ratio",
                                 "annualized_sharpe_ratio", "sortino_ratio", "profit_factor", "expectancy",
                                 "certainty_ratio", "expected_yearly_returns", "max_drawdown",
                                 "max_drawdown_duration_ms", "avg_trade_duration_minutes")}}, Statistics)
    return WalkerStrategyResult(strategy_name=name, stats=stats, metric_value=value)


def test_ranking_rules() -> None:
    assert is_better("sharpe_ratio", 1.0, None) and is_better("sharpe_ratio", 2.0, 1.0)
    assert not is_better("sharpe_ratio", 1.0, 1.0)  # a tie keeps the earlier one
    assert not is_better("sharpe_ratio", None, None) and not is_better("sharpe_ratio", None, -5.0)
    assert is_better("max_drawdown", 1.0, 2.0) and not is_better("max_drawdown", 3.0, 2.0)
    assert not is_better("max_drawdown", 2.0, 2.0)
    rows = [result("a", None), result("b", 1.0), result("c", 3.0), result("d", 1.0)]
    assert [r.strategy_name for r in rank_results(rows, "total_pnl")] == ["c", "b", "d", "a"]
    assert [r.strategy_name for r in rank_results(rows, "max_drawdown")] == ["b", "d", "c", "a"]


def test_walker_metrics_are_statistics_fields() -> None:
    fields = set(Statistics.__struct_fields__)
    assert set(WALKER_METRICS) <= fields
    assert WALKER_METRICS[0] == "sharpe_ratio"


# ---------------------------------------------------------------------------------------------------------
# Events, callbacks, order
# ---------------------------------------------------------------------------------------------------------


async def test_events_and_callbacks_in_order_with_their_payloads() -> None:
    log: list[tuple[Any, ...]] = []
    data_in_on_complete: list[bk.WalkerData] = []
    engine: bk.Engine

    async def on_complete(results: bk.WalkerResults[Statistics]) -> None:
        log.append(("on_complete", results.best_strategy))
        data_in_on_complete.append(await engine.walker.get_data(SYMBOL, "w"))

    callbacks = {
        "on_strategy_start": lambda name, symbol: log.append(("start", name, symbol)),
        "on_strategy_complete": lambda name, symbol, stats, value: log.append(("complete", name, value)),
        "on_complete": on_complete,
    }
    engine = walker_engine("sma", "inverse", metric="avg_pnl", callbacks=callbacks)
    engine.listen_walker_progress(lambda e: log.append(("progress", e.processed_strategies, e.progress)))
    engine.listen_walker(lambda e: log.append(("walker", e.strategy_name, e.strategies_tested)))
    engine.listen_walker_complete(lambda r: log.append(("walker_complete", r.total_strategies)))
    engine.listen_done_walker(lambda e: log.append(("done",)))
    once: list[bk.WalkerContract[Statistics]] = []
    engine.listen_walker_once(lambda e: e.strategy_name == "inverse", once.append)
    backtest_progress: list[bk.ProgressEvent] = []
    engine.listen_progress(backtest_progress.append)
    done_backtest: list[bk.DoneEvent] = []
    engine.listen_done_backtest(done_backtest.append)

    events = await walk(engine)

    values = [e.metric_value for e in events]
    assert log == [
        ("start", "sma", SYMBOL), ("progress", 1, 0.5), ("complete", "sma", values[0]), ("walker", "sma", 1),
        ("start", "inverse", SYMBOL), ("progress", 2, 1.0), ("complete", "inverse", values[1]),
        ("walker", "inverse", 2),
        ("on_complete", events[-1].best_strategy), ("walker_complete", 2),
    ]  # no done event for a foreground run
    assert [e.strategy_name for e in once] == ["inverse"] and once[0] is events[1]
    last = events[-1]
    assert (last.walker_name, last.exchange_name, last.frame_name, last.symbol, last.metric) == (
        "w", "csv", "day", SYMBOL, "avg_pnl")
    assert last.strategies_tested == last.total_strategies == 2
    assert {"sharpe_ratio", "win_rate", "total_pnl"} <= set(Statistics.__struct_fields__)
    # the backtests ran normally (their progress events) but published no backtest done event
    assert {e.strategy_name for e in backtest_progress} == {"sma", "inverse"} and done_backtest == []
    (data,) = data_in_on_complete
    assert (data.walker_name, data.symbol, data.metric, data.total_strategies) == ("w", SYMBOL, "avg_pnl", 2)
    assert data.best_strategy is not None
    assert [r.strategy_name for r in data.strategy_results] == ["sma", "inverse"]


async def test_background_publishes_done_once_after_everything_else() -> None:
    engine = walker_engine("sma", "inverse")
    log: list[Any] = []
    engine.listen_walker(lambda e: log.append("walker"))
    engine.listen_walker_complete(lambda r: log.append("complete"))
    engine.listen_done_walker(log.append)
    once: list[bk.DoneEvent] = []
    engine.listen_done_walker_once(lambda e: e.strategy_name == "w", once.append)
    handle = engine.walker.background(SYMBOL, walker_name="w")
    assert [i.status for i in await engine.walker.list()] == ["running"]
    await handle.wait()
    done = bk.DoneEvent(symbol=SYMBOL, strategy_name="w", exchange_name="csv", backtest=True)
    assert log == ["walker", "walker", "complete", done]
    assert once == [done]
    (info,) = await engine.walker.list()
    assert (info.symbol, info.walker_name, info.exchange_name, info.status, info.error) == (
        SYMBOL, "w", "csv", "done", None)


async def test_a_raising_walker_listener_or_callback_never_stops_the_walker() -> None:
    def boom(*args: Any) -> None:
        raise RuntimeError("listener boom")

    engine = walker_engine("sma", "inverse", callbacks={"on_strategy_complete": boom})
    errors: list[BaseException] = []
    engine.listen_error(errors.append)
    engine.listen_walker(boom)
    engine.listen_walker_progress(boom)
    events = await walk(engine)
    assert [e.strategy_name for e in events] == ["sma", "inverse"]
    assert len([e for e in errors if str(e) == "listener boom"]) == 6


# ---------------------------------------------------------------------------------------------------------
# Failures, stop and cancel
# ---------------------------------------------------------------------------------------------------------


async def test_a_failing_strategy_is_reported_and_skipped() -> None:
    engine = make_engine()
    register(engine, "sma", "wide", sizing={"wide": "no-such-sizing"})  # fails when its backtest starts
    register(engine, "inverse")
    failed: list[tuple[str, str, BaseException]] = []
    engine.add_walker(walker_name="w", exchange_name="csv", frame_name="day", strategies=["sma", "wide", "inverse"],
                      callbacks={"on_strategy_error": lambda name, symbol, exc: failed.append((name, symbol, exc))})
    errors: list[BaseException] = []
    engine.listen_error(errors.append)
    progress: list[bk.WalkerProgressEvent] = []
    engine.listen_walker_progress(progress.append)
    completes: list[bk.WalkerResults[Statistics]] = []
    engine.listen_walker_complete(completes.append)

    events = await walk(engine)

    assert [e.strategy_name for e in events] == ["sma", "inverse"]
    assert [(e.strategies_tested, e.total_strategies) for e in events] == [(1, 3), (2, 3)]
    assert [p.processed_strategies for p in progress] == [1, 2]
    ((name, symbol, exc),) = failed
    assert (name, symbol) == ("wide", SYMBOL) and isinstance(exc, bk.UnknownNameError)
    assert "sizing no-such-sizing not found" in str(exc)
    assert exc in errors
    assert completes[0].best_strategy in {"sma", "inverse"}
    assert [r.strategy_name for r in (await engine.walker.get_data(SYMBOL, "w")).strategy_results] == [
        "sma", "inverse"]


async def test_stop_during_the_first_strategy_reports_it_and_skips_the_rest() -> None:
    started: list[str] = []
    engine = walker_engine("sma", "inverse", "wide",
                           callbacks={"on_strategy_start": lambda name, symbol: started.append(name)})

    async def stop_at_first_close(result: bk.TickResult) -> None:
        if result.action == "closed" and result.strategy_name == "sma":
            await engine.walker.stop(SYMBOL, "w")

    engine.listen_signal_backtest(stop_at_first_close)
    stops: list[bk.WalkerStopEvent] = []
    engine.listen_walker_stop(stops.append)
    completes: list[bk.WalkerResults[Statistics]] = []
    engine.listen_walker_complete(completes.append)
    events = await walk(engine)
    assert started == ["sma"]
    (event,) = events
    assert event.stats.total_trades == 1  # the backtest ended at its next safe point after the stop
    assert [(e.symbol, e.walker_name, e.strategy_name) for e in stops] == [
        (SYMBOL, "w", "sma"), (SYMBOL, "w", "inverse"), (SYMBOL, "w", "wide")]
    (done,) = completes
    assert (done.total_strategies, done.best_strategy) == (3, "sma" if event.metric_value is not None else None)
    # a stop while the walker is not running prepares nothing: the next run is whole
    engine2 = walker_engine("sma", "inverse")
    await engine2.walker.stop(SYMBOL, "w")  # not running: nothing to stop, the next run is whole
    assert [e.strategy_name for e in await walk(engine2)] == ["sma", "inverse"]


async def test_cancel_stops_after_the_current_strategy_and_done_fires_once() -> None:
    engine = walker_engine("sma", "inverse", "wide")
    handles: list[bk.WalkerCancel] = []
    log: list[Any] = []

    def cancel_on_first(event: bk.WalkerProgressEvent) -> None:
        handles[0]()
        handles[0]()  # twice is harmless

    engine.listen_walker_progress(cancel_on_first)
    engine.listen_walker(lambda e: log.append(e.strategy_name))
    engine.listen_walker_complete(lambda r: log.append(("complete", r.best_strategy is not None)))
    engine.listen_done_walker(lambda e: log.append("done"))
    handles.append(engine.walker.background(SYMBOL, walker_name="w"))
    await handles[0].wait()
    handles[0]()  # after the end too
    await engine.bus.drain()
    assert log == ["sma", ("complete", True), "done"]
    assert [i.status for i in await engine.walker.list()] == ["done"]


async def test_engine_close_stops_a_background_walker_before_its_next_strategy() -> None:
    started: list[str] = []
    engine = walker_engine("sma", "inverse", "wide",
                           callbacks={"on_strategy_start": lambda name, symbol: started.append(name)})
    names: list[str] = []
    closing: list[asyncio.Task[None]] = []

    def close_on_first(event: bk.WalkerContract[Statistics]) -> None:
        names.append(event.strategy_name)
        closing.append(asyncio.get_running_loop().create_task(engine.close()))

    engine.listen_walker(close_on_first)
    engine.walker.background(SYMBOL, walker_name="w")
    while not closing:
        await asyncio.sleep(0)
    await closing[0]
    # the walker gives the loop a turn between strategies: close() ran before "inverse" started
    assert started == names == ["sma"]


async def test_a_second_concurrent_run_is_refused_and_background_reuses_the_running_one() -> None:
    engine = walker_engine("sma")
    first = engine.walker.background(SYMBOL, walker_name="w")
    assert engine.walker.background(SYMBOL, walker_name="w").task is first.task
    with pytest.raises(bk.RunStateError, match="already running"):
        engine.walker.run(SYMBOL, walker_name="w")
    await first.wait()


# ---------------------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------------------

GOOD: dict[str, Any] = {"walker_name": "w", "exchange_name": "csv", "frame_name": "day", "strategies": ["sma"]}


@pytest.mark.parametrize(("change", "field", "value"), [
    ({"walker_name": ""}, "walker_name", "''"),
    ({"walker_name": 7}, "walker_name", "7"),
    ({"exchange_name": None}, "exchange_name", "None"),
    ({"frame_name": ""}, "frame_name", "''"),
    ({"strategies": "sma"}, "strategies", "'sma'"),
    ({"strategies": []}, "strategies", "[]"),
    ({"strategies": ["sma", 3]}, "strategies[1]", "3"),
    ({"strategies": ["sma", "sma"]}, "strategies", "'sma'"),
    ({"metric": "sharpeRatio"}, "metric", "'sharpeRatio'"),
    ({"metric": "total_trades"}, "metric", "'total_trades'"),
    ({"callbacks": {"on_finish": print}}, "callbacks", "'on_finish'"),
    ({"callbacks": {"on_complete": 5}}, "callbacks.on_complete", "5"),
    ({"note": 5}, "note", "5"),
])
def test_add_walker_rejects_bad_input_naming_field_and_value(change: dict[str, Any], field: str, value: str) -> None:
    engine = make_engine()
    with pytest.raises(bk.SchemaError) as info:
        engine.add_walker(**{**GOOD, **change})
    assert str(info.value).startswith(f"{field}:") and value in str(info.value)
    assert engine.list_walkers() == []  # nothing recorded: a corrected retry succeeds
    assert engine.add_walker(**GOOD).walker_name == "w"


def test_add_walker_defaults_duplicates_and_list() -> None:
    engine = make_engine()
    on_complete = print
    schema = engine.add_walker(**GOOD, note="compare", callbacks={"on_complete": on_complete})
    assert (schema.metric, schema.strategies, schema.note) == ("sharpe_ratio", ("sma",), "compare")
    assert schema.callbacks.on_complete is on_complete
    with pytest.raises(bk.SchemaError, match="already exist"):
        engine.add_walker(**GOOD)
    engine.add_walker(**{**GOOD, "walker_name": "w2", "metric": "max_drawdown"})
    assert [w.walker_name for w in engine.list_walkers()] == ["w", "w2"]
    assert bk.list_walkers is not None and bk.add_walker is not None


@pytest.mark.parametrize(("missing", "message"), [
    ("walker", "walker nope not found source=Walker.run"),
    ("exchange", "exchange nope not found source=Walker.run"),
    ("frame", "frame nope not found source=Walker.run"),
    ("strategy", "strategy nope not found source=Walker.run"),
])
def test_run_checks_names_at_the_call_in_order(missing: str, message: str) -> None:
    engine = make_engine()
    register(engine, "sma")
    fields = {"exchange": "exchange_name", "frame": "frame_name"}
    walker: dict[str, Any] = {**GOOD}
    if missing in fields:
        walker[fields[missing]] = "nope"
    if missing == "strategy":
        walker["strategies"] = ["sma", "nope"]
    engine.add_walker(**walker)
    with pytest.raises(bk.UnknownNameError, match=message):
        engine.walker.run(SYMBOL, walker_name="nope" if missing == "walker" else "w")  # not iterated
    with pytest.raises(bk.SchemaError, match="symbol: expected a non-empty string, got ''"):
        engine.walker.run("", walker_name="w")


async def test_get_data_before_any_result_fails_clearly() -> None:
    engine = walker_engine("sma")
    with pytest.raises(bk.RunStateError, match="No walker data available - no results added yet"):
        await engine.walker.get_data(SYMBOL, "w")
    with pytest.raises(bk.UnknownNameError, match="walker nope not found"):
        await engine.walker.get_report(SYMBOL, "nope")


# ---------------------------------------------------------------------------------------------------------
# Report and dump
# ---------------------------------------------------------------------------------------------------------


async def test_report_layout(tmp_path: Path) -> None:
    engine = walker_engine("sma", "inverse", directory=tmp_path)
    events = await walk(engine)
    report = await engine.walker.get_report(SYMBOL, "w")
    lines = report.split("\n")
    best = max(events, key=lambda e: e.metric_value or float("-inf"))
    assert lines[:12] == [
        "# Walker Comparison Report: w", "", f"**Symbol:** {SYMBOL}", "**Exchange:** csv", "**Frame:** day",
        "**Optimization Metric:** sharpe_ratio", "**Strategies Tested:** 2", "",
        f"## Best Strategy: {best.strategy_name}", "", f"**Best sharpe_ratio:** {best.metric_value:.2f}",
        f"**Total Signals:** {best.stats.total_trades}",
    ]
    top = "| Rank | Strategy | sharpe_ratio | Total Signals | Win Rate | Avg PNL | Total PNL | Sharpe Ratio | Std Dev |"
    assert top in lines
    assert lines[lines.index("## Top Strategies Comparison") + 4].startswith(f"| 1 | {best.strategy_name} |")
    header = "| Strategy | Signal ID | Symbol | Position | PNL (net) | Close Reason | Open Time | Close Time |"
    start = lines.index(header)
    total = sum(e.stats.total_trades for e in events)
    assert all(line.startswith(("| sma |", "| inverse |")) for line in lines[start + 2: start + 2 + total])
    assert lines[-1].startswith("**Note:** Higher values are better")
    path = await engine.walker.dump(SYMBOL, "w")
    assert path == tmp_path / "dump" / "walker" / "w.md" and path.read_text() == report


async def test_dump_names_the_file_by_the_percent_encoded_walker_name(tmp_path: Path) -> None:
    engine = make_engine(directory=tmp_path)
    register(engine, "sma")
    engine.add_walker(**{**GOOD, "walker_name": "../up/w 1"})
    async for _ in engine.walker.run(SYMBOL, walker_name="../up/w 1"):
        pass
    path = await engine.walker.dump(SYMBOL, "../up/w 1", path=tmp_path / "custom")
    assert path == tmp_path / "custom" / "%2E.%2Fup%2Fw%201.md" and path.exists()


# ---------------------------------------------------------------------------------------------------------
# The executor path (system/jobs.py's Executor protocol)
# ---------------------------------------------------------------------------------------------------------


class InProcessExecutor:
    """A test double of the Executor protocol: each job's backtest on its own fresh Engine, in this
    process, results yielded in *reverse* submission order (completion order is not the walker's)."""

    name = "in-process-test"

    def __init__(self, fail: Sequence[str] = ()) -> None:
        self.fail = set(fail)
        self.jobs: list[BacktestJob] = []
        self.closed = False

    async def _run_one(self, job: BacktestJob) -> JobResult:
        started = time.perf_counter()
        base = dict(job.config)
        engine = bk.Engine(config=base)
        registry = engine.registry
        registry.exchanges.add(job.exchange.exchange_name, job.exchange)
        registry.frames.add(job.frame.frame_name, job.frame)
        for risk in job.risks:
            registry.risks.add(risk.risk_name, risk)
        if job.sizing is not None:
            registry.sizings.add(job.sizing.sizing_name, job.sizing)
        registry.strategies.add(job.strategy.strategy_name, job.strategy)
        stats: Statistics | None = None
        error: str | None = None
        try:
            if job.strategy.strategy_name in self.fail:
                raise RuntimeError(f"worker lost running {job.strategy.strategy_name}")
            async for _ in engine.backtest.run(job.symbol, strategy_name=job.strategy.strategy_name,
                                               exchange_name=job.exchange.exchange_name,
                                               frame_name=job.frame.frame_name):
                pass
            stats = await engine.backtest.get_data(job.symbol, job.strategy.strategy_name)
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
        finally:
            await engine.close()
        return JobResult(job_id=job.job_id, symbol=job.symbol, strategy_name=job.strategy.strategy_name,
                         frame_name=job.frame.frame_name, params=dict(job.params), stats=stats, error=error,
                         elapsed_seconds=time.perf_counter() - started, worker=self.name)

    async def run(self, jobs: Sequence[BacktestJob]) -> AsyncIterator[JobResult]:
        self.jobs = list(jobs)
        try:
            for job in reversed(jobs):
                yield await self._run_one(job)
        finally:
            self.closed = True

    async def aclose(self) -> None:
        pass


async def test_executor_results_go_through_the_same_path_in_strategy_order() -> None:
    in_process = await walk(walker_engine("sma", "inverse", "wide"))
    engine = walker_engine("sma", "inverse", "wide", CC_PERCENT_FEE=0.1)
    log: list[Any] = []
    engine.listen_walker_progress(lambda e: log.append(("progress", e.processed_strategies)))
    engine.listen_walker(lambda e: log.append(("walker", e.strategy_name)))
    executor = InProcessExecutor()
    events = await walk(engine, executor=executor)
    assert [e.strategy_name for e in events] == ["sma", "inverse", "wide"]
    assert log == [("progress", 1), ("walker", "sma"), ("progress", 2), ("walker", "inverse"),
                   ("progress", 3), ("walker", "wide")]
    for mine, theirs in zip(events, in_process, strict=True):
        assert comparable_statistics(mine.stats) == comparable_statistics(theirs.stats)
        assert (mine.metric_value, mine.best_strategy, mine.best_metric) == (
            theirs.metric_value, theirs.best_strategy, theirs.best_metric)
    # one job per strategy, built from the registered schemas
    job = executor.jobs[0]
    assert [j.strategy.strategy_name for j in executor.jobs] == ["sma", "inverse", "wide"]
    assert job.strategy is engine.registry.strategies.get("sma")
    assert job.exchange is engine.registry.exchanges.get("csv") and job.frame is engine.registry.frames.get("day")
    assert (job.symbol, job.risks, job.sizing) == (SYMBOL, (), None)
    assert job.config["CC_PERCENT_FEE"] == 0.1 and len({j.job_id for j in executor.jobs}) == 3
    assert executor.closed


async def test_executor_job_with_risk_and_sizing_carries_their_schemas() -> None:
    engine = make_engine()
    register(engine)
    engine.add_risk(risk_name="one", max_concurrent_positions=1)
    engine.add_sizing(sizing_name="fixed", get_quantity=lambda *a: 1.0)
    engine.add_strategy(strategy_name="sized", interval="5m", get_signal=sma_signal, risk_name="one",
                        sizing_name="fixed")
    engine.add_walker(walker_name="w", exchange_name="csv", frame_name="day", strategies=["sized"])
    executor = InProcessExecutor()
    events = await walk(engine, executor=executor)
    (job,) = executor.jobs
    assert job.risks == (engine.registry.risks.get("one"),) and job.sizing is engine.registry.sizings.get("fixed")
    assert events[0].stats.total_trades > 0


async def test_executor_failures_are_reported_and_skipped() -> None:
    engine = make_engine()
    register(engine, "sma", "inverse")
    register(engine, "wide", sizing={"wide": "no-such-sizing"})  # its job cannot even be built
    failed: list[str] = []
    engine.add_walker(walker_name="w", exchange_name="csv", frame_name="day", strategies=["sma", "inverse", "wide"],
                      callbacks={"on_strategy_error": lambda name, symbol, exc: failed.append(name)})
    errors: list[BaseException] = []
    engine.listen_error(errors.append)
    executor = InProcessExecutor(fail=["sma"])
    events = await walk(engine, executor=executor)
    assert [e.strategy_name for e in events] == ["inverse"]
    assert events[0].strategies_tested == 1 and events[0].total_strategies == 3
    assert failed == ["sma", "wide"]
    assert [j.strategy.strategy_name for j in executor.jobs] == ["sma", "inverse"]
    assert any("worker lost running sma" in str(e) and "in-process-test" in str(e) for e in errors)
    assert any(isinstance(e, bk.UnknownNameError) for e in errors)


async def test_executor_must_follow_the_protocol() -> None:
    engine = walker_engine("sma")
    with pytest.raises(bk.SchemaError, match=r"executor: expected a name .* or an object with run"):
        engine.walker.run(SYMBOL, walker_name="w", executor=object())  # type: ignore[arg-type]


async def test_walker_facade_is_an_engine_attribute_and_module_level() -> None:
    engine = make_engine()
    assert engine.Walker is engine.walker and engine.Heat is engine.heat
    assert bk.Walker is bk.default_engine.walker and bk.Heat is bk.default_engine.heat
    assert dataclasses.is_dataclass(bk.WalkerSchema)


async def test_an_executor_name_runs_the_strategies_as_jobs_and_feeds_the_heatmap() -> None:
    """`executor="sequential"` (a registered name): the same statistics as in process, the executor
    built for the run is the run's own, and the trades reach this engine's heatmap."""
    reference_engine = walker_engine("sma")
    reference = [event async for event in reference_engine.walker.run(SYMBOL, walker_name="w")]
    engine = walker_engine("sma")
    events = [event async for event in engine.walker.run(SYMBOL, walker_name="w", executor="sequential")]
    assert [e.strategy_name for e in events] == [e.strategy_name for e in reference]
    assert [comparable_statistics(e.stats) for e in events] == [comparable_statistics(e.stats) for e in reference]
    heat = await engine.heat.get_data(events[0].strategy_name)
    reference_heat = await reference_engine.heat.get_data(events[0].strategy_name)
    assert heat == reference_heat
    assert sum(row.total_trades for row in heat.symbols) == events[0].stats.total_trades > 0


async def test_an_unknown_executor_name_is_refused_before_anything_runs() -> None:
    engine = walker_engine("sma")
    with pytest.raises(bk.SchemaError, match="unknown executor 'cluster'"):
        engine.walker.run(SYMBOL, walker_name="w", executor="cluster")


# ---------------------------------------------------------------------------------------------------------
# After an executor walker, Backtest.get_data / get_report hold what an in-process walker leaves
# ---------------------------------------------------------------------------------------------------------

WALKED = ("sma", "inverse", "held")  # "held" ends the day with a position open


async def backtest_data(engine: bk.Engine, names: Sequence[str]) -> dict[str, Any]:
    return {name: comparable_statistics(await engine.backtest.get_data(SYMBOL, name)) for name in names}


async def test_an_executor_walker_leaves_backtest_get_data_as_an_in_process_walker() -> None:
    """A real process pool: each walked strategy's `Backtest.get_data` equals the in-process walker's
    (fresh engine) and the walker event's statistics, open position included; its report lists the
    trades."""
    reference_engine = walker_engine(*WALKED)
    await walk(reference_engine)
    reference = await backtest_data(reference_engine, WALKED)

    engine = walker_engine(*WALKED)
    events = await walk(engine, executor="local")
    assert [e.strategy_name for e in events] == list(WALKED)
    assert await backtest_data(engine, WALKED) == reference
    for event in events:
        stored = await engine.backtest.get_data(SYMBOL, event.strategy_name)
        assert stored.total_trades == event.stats.total_trades > 0
        assert comparable_statistics(stored) == comparable_statistics(event.stats)
        report = await engine.backtest.get_report(SYMBOL, event.strategy_name)
        assert f"**Closed signals:** {event.stats.total_trades}" in report
        assert all(signal.signal.id in report for signal in event.stats.signals)
    held = await engine.backtest.get_data(SYMBOL, "held")
    assert held.open_positions == 1 and held.unrealized_pnl is not None


async def test_a_second_executor_walker_replaces_the_backtest_data_instead_of_adding_to_it() -> None:
    """Two executor walkers on one engine leave what two in-process walkers leave: each strategy's
    backtest statistics once (not doubled), and the heatmap fed once per run (it is never cleared)."""
    reference_engine = walker_engine(*WALKED)
    for _ in range(2):
        await walk(reference_engine)

    engine = walker_engine(*WALKED)
    executor = make_executor("local", max_workers=2)  # one pool for both runs
    try:
        first = await walk(engine, executor=executor)
        second = await walk(engine, executor=executor)
    finally:
        await executor.aclose()
    assert await backtest_data(engine, WALKED) == await backtest_data(reference_engine, WALKED)
    for one, two in zip(first, second, strict=True):
        stored = await engine.backtest.get_data(SYMBOL, two.strategy_name)
        assert stored.total_trades == two.stats.total_trades == one.stats.total_trades > 0
        heat = await engine.heat.get_data(two.strategy_name)
        assert heat == await reference_engine.heat.get_data(two.strategy_name)
        assert sum(row.total_trades for row in heat.symbols) == 2 * two.stats.total_trades


async def test_a_result_without_its_open_signal_keeps_the_trades_and_warns(caplog: pytest.LogCaptureFixture) -> None:
    """An executor that builds its own `JobResult` (no `open_signal`) still fills the backtest store with
    the trades; the position open at the end cannot be rebuilt, which is logged, not silently lost."""
    engine = walker_engine("held")
    with caplog.at_level("WARNING", logger="backtest_kit"):
        (event,) = await walk(engine, executor=InProcessExecutor())
    stored = await engine.backtest.get_data(SYMBOL, "held")
    assert event.stats.open_positions == 1 and stored.open_positions == 0
    without_open = msgspec.structs.replace(event.stats, open_positions=0, unrealized_pnl=None)
    assert comparable_statistics(stored) == comparable_statistics(without_open)
    assert any("no open_signal for strategy 'held'" in r.getMessage() for r in caplog.records)

"""Executors: the same jobs give the same statistics in this process, a local process pool and Ray.

Everything is real: a real `ProcessPoolExecutor` (forkserver workers), a real local Ray started once
per session (`ray.init(num_cpus=2)`), real candles (the bundled BTC week and a real ETH day from
tests/data). Ray tests skip only when `ray` is not installed.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import pickle
import sys
from collections.abc import AsyncIterator, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import pytest

from backtest_kit import demo
from backtest_kit.adapters import CsvCandles, MemoryCandles, bundled_sample_path
from backtest_kit.engine.context import get_candles
from backtest_kit.engine.errors import CandleError, SchemaError
from backtest_kit.engine.models import SignalDto
from backtest_kit.research import LocalExecutor, RayExecutor, SequentialExecutor, make_executor
from backtest_kit.research.ray_executor import _for_the_object_store
from backtest_kit.system.jobs import BacktestJob, Executor, JobResult
from backtest_kit.testing import comparable_statistics, make_engine

ETH_DAY = Path(__file__).parent / "data" / "ETHUSDT-1m-2025-05-20.csv.gz"
LOG_ENV = "BK_TEST_EXECUTOR_LOG"
"""File that `CountingCsvCandles` appends "load <pid>" lines to, from any process (spawned workers
inherit the environment at start-up)."""


# -- module-level strategy pieces (importable by workers) -----------------------------------------------


def _log(line: str, path: str | None = None) -> None:
    path = path or os.environ.get(LOG_ENV)
    if path:
        with open(path, "a") as f:
            f.write(f"{line}\n")


async def momentum_signal(symbol: str, when: datetime) -> SignalDto | None:
    """A second strategy: follow a 0.3 % move over the last hour, TP/SL 0.8 %."""
    candles = await get_candles(symbol, "1m", 61)
    if len(candles) < 61:
        return None
    move = candles[-1].close / candles[0].close - 1
    price = candles[-1].close
    if move > 0.003:
        return SignalDto(position="long", price_take_profit=price * 1.008, price_stop_loss=price * 0.992,
                         minute_estimated_time=120)
    if move < -0.003:
        return SignalDto(position="short", price_take_profit=price * 0.992, price_stop_loss=price * 1.008,
                         minute_estimated_time=120)
    return None


def make_signal(fast: int, slow: int = 30, fail: bool = False, die: bool = False, log: str = "") -> Any:
    """Sweep-style factory; `fail` raises (a failing job), `die` kills the worker process outright;
    `log` names a file to note the start in (a parameter: forkserver workers do not see later env changes)."""
    _log(f"start {os.getpid()} {fast}", log)
    if fail:
        raise ValueError(f"fast={fast} is not allowed")
    if die:
        os._exit(3)

    async def get_signal(symbol: str, when: datetime) -> SignalDto | None:
        candles = await get_candles(symbol, "1m", slow + 1)
        if len(candles) < slow + 1:
            return None
        closes = [c.close for c in candles]
        now = sum(closes[-fast:]) / fast - sum(closes[-slow:]) / slow
        before = sum(closes[-fast - 1:-1]) / fast - sum(closes[-slow - 1:-1]) / slow
        price = closes[-1]
        if before <= 0 < now:
            return SignalDto(position="long", price_take_profit=price * 1.01, price_stop_loss=price * 0.99,
                             minute_estimated_time=240)
        if before >= 0 > now:
            return SignalDto(position="short", price_take_profit=price * 0.99, price_stop_loss=price * 1.01,
                             minute_estimated_time=240)
        return None

    return get_signal


class CountingCsvCandles(CsvCandles):
    """CsvCandles that logs every load (from the files, or rebuilt from a pickle) with the process's pid."""

    def __init__(self, source: Any, symbol: str | None = None, *, anomaly_factor: float | None = 10.0) -> None:
        super().__init__(source, symbol, anomaly_factor=anomaly_factor)

    def _init_storage(self, anomaly_factor: float | None) -> None:
        _log(f"load {os.getpid()}")
        super()._init_storage(anomaly_factor)


# -- jobs ----------------------------------------------------------------------------------------------


def _jobs(source: CsvCandles | None = None, *, copies: int = 1, **params: Any) -> list[BacktestJob]:
    """demo + momentum on BTC (bundled week) and ETH (a real day), plus factory jobs with `params`."""
    engine = make_engine()
    csv = source or CsvCandles({"BTCUSDT": bundled_sample_path(), "ETHUSDT": ETH_DAY})
    exchange = engine.add_exchange(exchange_name="csv", get_candles=csv)
    sma = engine.add_strategy(strategy_name=demo.STRATEGY_NAME, interval="5m", get_signal=demo.get_signal)
    momentum = engine.add_strategy(strategy_name="momentum", interval="1m", get_signal=momentum_signal)
    frames = {}
    for symbol in ("BTCUSDT", "ETHUSDT"):
        first, last = csv.first_timestamp(symbol), csv.last_timestamp(symbol)
        frames[symbol] = engine.add_frame(
            frame_name=f"all-{symbol}", interval="1m",
            start_date=datetime.fromtimestamp(first / 1000, UTC) + timedelta(minutes=61),
            end_date=datetime.fromtimestamp(last / 1000, UTC),
        )
    config = engine.get_config()
    jobs = []
    for copy in range(copies):
        for symbol in ("BTCUSDT", "ETHUSDT"):
            for strategy in (sma, momentum):
                jobs.append(BacktestJob(job_id=f"{strategy.strategy_name}/{symbol}/{copy}", symbol=symbol,
                                        strategy=strategy, exchange=exchange, frame=frames[symbol], config=config))
            if params:
                jobs.append(BacktestJob(job_id=f"sweep/{symbol}/{copy}", symbol=symbol, strategy=sma,
                                        exchange=exchange, frame=frames[symbol], config=config,
                                        params=params, strategy_factory=make_signal))
    return jobs


async def _collect(executor: Executor, jobs: Sequence[BacktestJob]) -> dict[str, JobResult]:
    results = {}
    async with contextlib.aclosing(executor.run(jobs)) as stream:  # type: ignore[type-var]
        async for result in stream:
            results[result.job_id] = result
    return results


def _assert_same(got: dict[str, JobResult], expected: dict[str, JobResult]) -> None:
    assert got.keys() == expected.keys()
    for job_id, result in got.items():
        want = expected[job_id].stats
        assert result.stats is not None and want is not None, (result.error, expected[job_id].error)
        assert comparable_statistics(result.stats) == comparable_statistics(want), job_id
        assert result.params == expected[job_id].params
        # the position open at the end travels too (a Walker rebuilds the Backtest store from it)
        assert _open_position(result) == _open_position(expected[job_id]), job_id


def _open_position(result: JobResult) -> tuple[Any, float]:
    """(`open_signal` with its random id blanked, `last_price`)."""
    signal = result.open_signal
    return (None if signal is None else msgspec.structs.replace(signal, id="<id>")), result.last_price


# -- fixtures ------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def ray_session() -> Iterator[Any]:
    """One local Ray for the session; test modules are importable by its workers via PYTHONPATH."""
    ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'backtest-kit[ray]')")
    here = str(Path(__file__).parent)
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (here, *sys.path) if p)  # Ray workers inherit it
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    finally:
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved
    yield ray
    ray.shutdown()


@pytest.fixture
def log_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "events.log"
    path.touch()
    monkeypatch.setenv(LOG_ENV, str(path))
    return path


def _events(path: Path, kind: str) -> list[list[str]]:
    return [line.split()[1:] for line in path.read_text().splitlines() if line.split()[0] == kind]


@pytest.fixture(params=["local", "ray"])
async def executor(request: pytest.FixtureRequest) -> AsyncIterator[Executor]:
    if request.param == "ray":
        request.getfixturevalue("ray_session")
        made = make_executor("ray")
    else:
        made = make_executor("local", max_workers=2)
    yield made
    await made.aclose()


# -- same results everywhere -------------------------------------------------------------------------


async def test_the_same_jobs_give_the_same_statistics_as_sequential(executor: Executor) -> None:
    jobs = _jobs(fast=5, slow=20)
    expected = await _collect(SequentialExecutor(), jobs)
    got = await _collect(executor, jobs)
    assert sorted(got) == sorted(expected) == sorted(job.job_id for job in jobs)
    assert all(r.ok for r in got.values()), [r.error for r in got.values()]
    _assert_same(got, expected)
    assert sum(r.stats.total_trades for r in got.values() if r.stats) > 0
    assert {r.worker.split(":")[-1] for r in got.values()} != {str(os.getpid())}  # ran elsewhere


async def test_a_failing_job_is_reported_with_its_params_and_the_rest_finish(executor: Executor) -> None:
    jobs = _jobs(fast=7, fail=True)
    results = await _collect(executor, jobs)
    assert len(results) == len(jobs)
    failed = {job_id: r for job_id, r in results.items() if not r.ok}
    assert set(failed) == {"sweep/BTCUSDT/0", "sweep/ETHUSDT/0"}
    for result in failed.values():
        assert result.stats is None and result.params == {"fast": 7, "fail": True}
        assert "fast=7 is not allowed" in (result.error or "") and "'fail': True" in (result.error or "")
    assert all(r.stats is not None for job_id, r in results.items() if job_id not in failed)


async def test_a_job_that_kills_its_worker_fails_alone(executor: Executor) -> None:
    jobs = _jobs(fast=5, die=True)
    results = await _collect(executor, jobs)
    assert len(results) == len(jobs)
    failed = sorted(job_id for job_id, r in results.items() if not r.ok)
    assert failed == ["sweep/BTCUSDT/0", "sweep/ETHUSDT/0"]
    for job_id in failed:
        assert job_id in (results[job_id].error or "")
    assert all(r.stats is not None for job_id, r in results.items() if job_id not in failed)


async def test_closing_early_cancels_the_jobs_not_started(executor: Executor, log_file: Path) -> None:
    jobs = [job for job in _jobs(copies=8, fast=5, log=str(log_file)) if job.strategy_factory is not None]  # 16
    stream = executor.run(jobs)
    first = await stream.__anext__()
    assert first.ok, first.error
    await stream.aclose()  # type: ignore[attr-defined]
    started = _events(log_file, "start")
    assert 1 <= len(started) <= 6 < len(jobs)  # the one done, those running, at most a couple in the hand-over
    if isinstance(executor, LocalExecutor):
        for pid in {int(pid) for pid, _ in started}:
            assert not Path(f"/proc/{pid}").exists(), f"worker {pid} left running"
    again = await _collect(executor, jobs[:2])  # the executor is still usable
    assert all(r.ok for r in again.values())


async def test_cancelling_the_consumer_like_ctrl_c_stops_the_workers(log_file: Path) -> None:
    """Ctrl-C under asyncio.run cancels the main task: the run's `finally` must stop the pool."""
    jobs = [job for job in _jobs(copies=8, fast=5, log=str(log_file)) if job.strategy_factory is not None]
    executor = LocalExecutor(max_workers=2)
    got_one = asyncio.Event()
    kept: list[JobResult] = []

    async def consume() -> None:
        async for result in executor.run(jobs):
            kept.append(result)
            got_one.set()

    task = asyncio.create_task(consume())
    await got_one.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert executor._pool is None and len(kept) < len(jobs)
    for pid in {int(pid) for pid, _ in _events(log_file, "start")}:
        assert not Path(f"/proc/{pid}").exists(), f"worker {pid} left running"
    await executor.aclose()


# -- local executor specifics ------------------------------------------------------------------------


async def test_candles_are_loaded_once_per_worker(log_file: Path) -> None:
    source = CountingCsvCandles({"BTCUSDT": bundled_sample_path(), "ETHUSDT": ETH_DAY})
    jobs = _jobs(source, copies=3)  # 12 jobs on 2 workers
    executor = LocalExecutor(max_workers=2, start_method="spawn")  # spawn: workers see LOG_ENV
    try:
        results = await _collect(executor, jobs)
    finally:
        await executor.aclose()
    assert all(r.ok for r in results.values())
    loads = [pid for (pid,) in _events(log_file, "load") if int(pid) != os.getpid()]
    workers = {r.worker.split(":")[-1] for r in results.values()}
    assert len(loads) == len(set(loads)), f"a worker loaded the candles twice: {loads}"
    assert workers <= set(loads) and len(loads) <= 2


async def test_recycled_workers_still_give_the_same_results() -> None:
    jobs = _jobs()
    expected = await _collect(SequentialExecutor(), jobs)
    executor = LocalExecutor(max_workers=2, max_tasks_per_child=1)
    try:
        got = await _collect(executor, jobs)
    finally:
        await executor.aclose()
    assert len({r.worker for r in got.values()}) == len(jobs)  # a fresh process for every job
    _assert_same(got, expected)


async def _never(symbol: str, when: datetime) -> None:
    return None


def _closure_factory() -> Any:
    async def inner(symbol: str, when: datetime) -> None:
        return None
    return inner


@pytest.mark.parametrize("get_signal", [lambda symbol, when: None, _closure_factory()], ids=["lambda", "closure"])
async def test_an_unpicklable_job_names_the_job_and_the_culprit(get_signal: Any) -> None:
    job = _jobs()[0]
    bad = BacktestJob(job_id="bad-1", symbol=job.symbol, exchange=job.exchange, frame=job.frame,
                      strategy=type(job.strategy)(strategy_name="x", interval="5m", get_signal=get_signal))
    executor = LocalExecutor(max_workers=1)
    with pytest.raises(SchemaError) as caught:
        await _collect(executor, [job, bad])
    text = str(caught.value)
    assert "job 'bad-1'" in text and "get_signal of strategy 'x' is a lambda/closure" in text
    assert "needs a module-level function" in text
    assert executor._pool is None  # nothing was started


async def test_a_factory_job_does_not_need_a_picklable_registered_get_signal() -> None:
    jobs = [dataclasses.replace(job, strategy=dataclasses.replace(job.strategy, get_signal=_closure_factory()))
            for job in _jobs(fast=5) if job.strategy_factory is not None]
    expected = await _collect(SequentialExecutor(), jobs)
    executor = LocalExecutor(max_workers=2)
    try:
        got = await _collect(executor, jobs)
    finally:
        await executor.aclose()
    _assert_same(got, expected)


def test_a_csv_source_pickles_as_its_files_and_is_rebuilt_once_per_process(tmp_path: Path) -> None:
    path = tmp_path / "BTCUSDT-1m.csv.gz"
    path.write_bytes(bundled_sample_path().read_bytes())
    source = CsvCandles(path)
    blob = pickle.dumps(source)
    assert len(blob) < 1000  # paths and fingerprints, not 10k candles
    first, second = pickle.loads(blob), pickle.loads(blob)
    assert first is second and first is not source
    assert first.closed_candles("BTCUSDT", "1h", source.last_timestamp("BTCUSDT"), 24) == \
        source.closed_candles("BTCUSDT", "1h", source.last_timestamp("BTCUSDT"), 24)
    changed = CsvCandles(path, anomaly_factor=None)  # another cache key: rebuilt, after the file changes
    os.utime(path, ns=(0, 0))  # the file is touched (replaced, edited) after it was loaded
    with pytest.raises(CandleError, match="changed after it was loaded"):
        pickle.loads(pickle.dumps(changed))


def test_executor_options_are_checked() -> None:
    with pytest.raises(SchemaError, match="max_workers"):
        make_executor("local", max_workers=0)
    with pytest.raises(SchemaError, match="max_tasks_per_child"):
        make_executor("local", max_tasks_per_child=0)
    with pytest.raises(SchemaError, match="num_cpus"):
        make_executor("ray", address="auto", num_cpus=2)
    assert make_executor("local").max_workers >= 1  # type: ignore[attr-defined]


# -- ray executor specifics --------------------------------------------------------------------------


async def test_ray_uses_an_initialised_ray_and_leaves_it_running(ray_session: Any) -> None:
    executor = RayExecutor(num_cpus=None)
    results = await _collect(executor, _jobs()[:2])
    assert all(r.ok for r in results.values())
    assert executor.started_ray is False
    await executor.aclose()
    assert ray_session.is_initialized()


def test_csv_candles_travel_to_ray_as_their_data() -> None:
    job = _jobs()[0]
    shipped = _for_the_object_store(job.exchange)
    assert isinstance(shipped.get_candles, MemoryCandles) and not isinstance(shipped.get_candles, CsvCandles)
    assert len(pickle.dumps(shipped)) > 100_000  # the candles themselves: nodes need no files
    source, copy = job.exchange.get_candles, shipped.get_candles
    assert isinstance(source, CsvCandles) and isinstance(copy, MemoryCandles)
    when = source.last_timestamp("ETHUSDT")
    assert copy.closed_candles("ETHUSDT", "15m", when, 50) == source.closed_candles("ETHUSDT", "15m", when, 50)


def test_sequential_local_and_ray_are_registered() -> None:
    assert isinstance(make_executor("sequential"), SequentialExecutor)
    assert isinstance(make_executor("local", max_workers=1), LocalExecutor)
    assert isinstance(make_executor("ray"), RayExecutor)  # Ray starts on the first run, not here
    assert asyncio.iscoroutinefunction(LocalExecutor.aclose)


def two_day_demo_job() -> BacktestJob:
    """The demo strategy over two days of the bundled candles (imported by `_JOIN_SCRIPT` too)."""
    engine = make_engine()
    source = CsvCandles(bundled_sample_path())
    exchange = engine.add_exchange(exchange_name="csv", get_candles=source)
    strategy = engine.add_strategy(strategy_name=demo.STRATEGY_NAME, interval="5m", get_signal=demo.get_signal)
    start = datetime.fromtimestamp(source.first_timestamp("BTCUSDT") / 1000, UTC) + timedelta(hours=2)
    frame = engine.add_frame(frame_name="two-days", interval="1m", start_date=start, end_date=start + timedelta(days=2))
    return BacktestJob(job_id="joined", symbol="BTCUSDT", strategy=strategy, exchange=exchange, frame=frame,
                       config=engine.get_config())


def _driver_output(script: str, **env: str) -> dict[str, str]:
    """Run `script` as a fresh Ray driver (this test module importable) and return its printed lines,
    keyed by their first word."""
    import subprocess

    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
        env={**os.environ, **env, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), *sys.path])},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return dict(line.split(" ", 1) for line in done.stdout.splitlines() if " " in line)


_JOIN_SCRIPT = """
import asyncio
import ray
from backtest_kit.research.ray_executor import RayExecutor
from test_executors import two_day_demo_job

async def main():
    executor = RayExecutor()
    results = [r async for r in executor.run([two_day_demo_job()])]
    print("joined", ray.get_runtime_context().gcs_address, "started", executor.started_ray)
    print("trades", results[0].stats.total_trades if results[0].ok else results[0].error)
    await executor.aclose()
    try:
        RayExecutor(num_cpus=1)._ensure_ray()
    except Exception as exc:
        print("refused", type(exc).__name__, exc)

asyncio.run(main())
"""


async def test_a_second_driver_joins_a_running_ray_through_ray_address(ray_session: Any) -> None:
    """`RAY_ADDRESS` (as `ray start --head` users set it for the CLI) joins that Ray instead of
    starting one: a fresh process runs a job on the session's Ray, with the same statistics as here;
    `num_cpus=` beside it is refused with a message naming both."""
    address = ray_session.get_runtime_context().gcs_address
    lines = await asyncio.to_thread(_driver_output, _JOIN_SCRIPT, RAY_ADDRESS=address)
    assert lines["joined"] == f"{address} started True"  # its driver connected; the cluster is the session's
    here = await _collect(SequentialExecutor(), [two_day_demo_job()])
    assert here["joined"].stats is not None and lines["trades"] == str(here["joined"].stats.total_trades)
    assert "SchemaError" in lines["refused"] and "num_cpus=1" in lines["refused"] and address in lines["refused"]
    assert ray_session.is_initialized()  # the joining driver's shutdown left the session's Ray running


_OWN_RAY_SCRIPT = """
import asyncio, os, ray
from ray._private import ray_constants, worker
from backtest_kit.research.ray_executor import RayExecutor
from test_executors import two_day_demo_job

def processes():
    return sorted(worker._global_node.all_processes)

async def main():
    executor = RayExecutor(num_cpus=1)
    results = [r async for r in executor.run([two_day_demo_job()])]
    print("lean", executor.started_ray, ",".join(executor.lean_parts))
    print("trades", results[0].stats.total_trades if results[0].ok else results[0].error)
    print("niceness", ray.get(ray.remote(lambda: os.nice(0)).remote()))
    print("services", " ".join(processes()))
    await executor.aclose()
    stock = RayExecutor(num_cpus=1, lean_start=False)
    stock._ensure_ray()
    print("stock", stock.started_ray, ",".join(stock.lean_parts) or "-", " ".join(processes()))
    await stock.aclose()
    quiet = RayExecutor(num_cpus=1, init_options={"log_to_driver": False})
    results = [r async for r in quiet.run([two_day_demo_job()])]
    print("quiet", ",".join(quiet.lean_parts), results[0].stats.total_trades if results[0].ok else results[0].error)
    print("quiet-services", " ".join(processes()))
    await quiet.aclose()

asyncio.run(main())
"""


def test_a_local_ray_started_by_the_executor_is_lean_runs_at_normal_priority_and_gives_the_same_results() -> None:
    """A local Ray the executor starts for a sweep starts lean (`research/ray_start.py`: no autoscaler
    monitor, no API server, a quick wait for the raylet), gives the same statistics as a sequential run,
    and runs its workers at niceness 0, as the local pool's are: Ray's default (15) hands every core to
    any other process. `lean_start=False` starts Ray's stock services. With `log_to_driver=False` the
    log monitor is not started either, and the job still runs. A fresh process: the test session's own
    Ray was started by a fixture, not by the executor."""
    pytest.importorskip("ray", reason="ray is not installed (pip install 'backtest-kit[ray]')")
    from ray._private import ray_constants

    lines = _driver_output(_OWN_RAY_SCRIPT)
    assert lines["lean"] == "True no-monitor,no-api-server,fast-registration"
    here = asyncio.run(_collect(SequentialExecutor(), [two_day_demo_job()]))
    assert here["joined"].stats is not None and lines["trades"] == str(here["joined"].stats.total_trades)
    assert lines["niceness"] == "0"
    lean_services = lines["services"].split()
    assert ray_constants.PROCESS_TYPE_RAYLET in lean_services and ray_constants.PROCESS_TYPE_GCS_SERVER in lean_services
    assert ray_constants.PROCESS_TYPE_MONITOR not in lean_services
    assert ray_constants.PROCESS_TYPE_DASHBOARD not in lean_services
    assert ray_constants.PROCESS_TYPE_LOG_MONITOR in lean_services  # its output is forwarded by default
    started, parts, *stock_services = lines["stock"].split()
    assert (started, parts) == ("True", "-")
    assert {ray_constants.PROCESS_TYPE_MONITOR, ray_constants.PROCESS_TYPE_DASHBOARD} <= set(stock_services)
    parts, trades = lines["quiet"].split()
    assert parts == "no-monitor,no-api-server,fast-registration,no-log-monitor" and trades == lines["trades"]
    quiet_services = lines["quiet-services"].split()
    assert ray_constants.PROCESS_TYPE_LOG_MONITOR not in quiet_services
    assert ray_constants.PROCESS_TYPE_RAYLET in quiet_services

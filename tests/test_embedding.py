"""The engine inside an existing asyncio application: shared loop, clean start and stop, no leaks.

Everything runs on a VirtualClock (nothing sleeps for real), except the OS-signal test, which sends
SIGINT / SIGTERM to this process once the handlers are in place.
"""

from __future__ import annotations

import asyncio
import functools
import os
import re
import signal
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from helpers import REFERENCE_CONFIG, T0, M, candles_from_path, dt, long

import backtest_kit as bk

SYMBOLS = ("BTCUSDT", "ETHUSDT", "SOLUSDT")
PACKAGE = Path(bk.__file__).resolve().parent


def waves(n: int) -> list[float]:
    return [100 + 3 * ((i % 40) - 20 if (i // 40) % 2 else 20 - (i % 40)) / 20 for i in range(n)]


def make_engine(tmp_path: Path, get_signal: Callable[[str, datetime], Any] | None = None) -> bk.Engine:
    clock = bk.VirtualClock(dt(T0))
    engine = bk.Engine(clock=clock, persist_dir=tmp_path / "data", dump_dir=tmp_path / "dump")
    engine.set_config(REFERENCE_CONFIG, unsafe=True)
    source = bk.MemoryCandles({s: candles_from_path(T0 - 60 * M, waves(3000), spread=0.2) for s in SYMBOLS})
    engine.add_exchange(exchange_name="replay", get_candles=bk.ReplayExchange(source, clock))

    async def around_the_price(symbol: str, when: datetime) -> bk.SignalDto:
        price = await bk.get_average_price(symbol)
        return long(price * 1.01, price * 0.99, 30)

    engine.add_strategy(strategy_name="s", interval="5m", get_signal=get_signal or around_the_price)
    return engine


def only_this_task() -> bool:
    return asyncio.all_tasks() == {asyncio.current_task()}


async def test_engine_in_a_task_group_next_to_other_tasks(tmp_path: Path) -> None:
    engine = make_engine(tmp_path)
    clock = engine.clock
    assert isinstance(clock, bk.VirtualClock)
    queue: asyncio.Queue[bk.TickResult | None] = asyncio.Queue()
    engine.listen_signal_live(queue.put_nowait)  # the app's own consumer reads a queue
    closed: list[bk.ClosedResult] = []
    heartbeats: list[int] = []
    done: list[bk.DoneEvent] = []
    engine.listen_done_live(done.append)
    handles: list[bk.CancelHandle] = []
    app_stopping = asyncio.Event()

    async def consumer() -> None:
        while (item := await queue.get()) is not None:
            if isinstance(item, bk.ClosedResult):
                closed.append(item)

    async def heartbeat() -> None:  # another task on the same (virtual) clock
        while not app_stopping.is_set():
            heartbeats.append(clock.now_ms())
            await clock.sleep(600)

    async def supervisor() -> None:
        handles.extend(engine.live.background(s, strategy_name="s", exchange_name="replay") for s in SYMBOLS)
        while len(closed) < 10:
            await asyncio.sleep(0)
        for handle in handles:
            handle()
        for handle in handles:
            await handle.wait()
        app_stopping.set()
        queue.put_nowait(None)

    async with asyncio.TaskGroup() as group:
        group.create_task(consumer())
        group.create_task(heartbeat())
        group.create_task(supervisor())
    assert len(closed) >= 10 and len(done) == len(SYMBOLS)
    assert {i.status for i in await engine.live.list()} == {"done"}
    assert len(heartbeats) > 3 and heartbeats == sorted(heartbeats)
    assert only_this_task()


async def test_cancelling_the_app_task_ends_a_foreground_run_cleanly(tmp_path: Path) -> None:
    engine = make_engine(tmp_path)
    seen: list[str] = []

    async def trader() -> None:
        async for result in engine.live.run("BTCUSDT", strategy_name="s", exchange_name="replay"):
            seen.append(result.action)

    task = asyncio.create_task(trader())
    while len(seen) < 6:
        await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    [info] = await engine.live.list()
    assert (info.status, info.error) == ("done", None)
    assert engine.clock.attached == 0  # type: ignore[attr-defined]
    assert only_this_task()


async def test_hard_cancel_of_a_background_task_still_ends_with_one_done(tmp_path: Path) -> None:
    engine = make_engine(tmp_path)
    done: list[bk.DoneEvent] = []
    engine.listen_done_live(done.append)
    events: list[bk.TickResult] = []
    engine.listen_signal_live(events.append)
    handle = engine.live.background("ETHUSDT", strategy_name="s", exchange_name="replay")
    while len(events) < 50:
        await asyncio.sleep(0)
    handle.task.cancel()  # abandon: no graceful stop
    with pytest.raises(asyncio.CancelledError):
        await handle.wait()
    handle()  # the graceful cancel afterwards is a no-op
    assert len(done) == 1
    assert [i.status for i in await engine.live.list()] == ["done"]
    assert only_this_task()


async def test_async_with_engine_closes_every_run(tmp_path: Path) -> None:
    events: list[bk.TickResult] = []
    async with make_engine(tmp_path) as engine:
        engine.listen_signal_live(events.append)
        for s in SYMBOLS:
            engine.live.background(s, strategy_name="s", exchange_name="replay")
        while len(events) < 100:
            await asyncio.sleep(0)
    assert {i.status for i in await engine.live.list()} == {"done"}
    for s in SYMBOLS:  # each run closed its last position before ending
        mine = [e.action for e in events if e.symbol == s]
        assert mine.count("opened") == mine.count("closed")
    assert only_this_task()


async def test_cancel_from_a_timer(tmp_path: Path) -> None:
    engine = make_engine(tmp_path, lambda symbol, when: None)
    handle = engine.live.background("SOLUSDT", strategy_name="s", exchange_name="replay")
    asyncio.get_running_loop().call_later(0, handle)
    await asyncio.wait_for(handle.wait(), 5)
    assert only_this_task()


@pytest.mark.skipif(not hasattr(signal, "SIGTERM") or os.name != "posix", reason="POSIX signals")
async def test_install_signal_handlers_cancels_on_sigint_and_sigterm(tmp_path: Path) -> None:
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for sig in (signal.SIGINT, signal.SIGTERM):
        engine = make_engine(tmp_path, lambda symbol, when: None)
        done: list[bk.DoneEvent] = []
        engine.listen_done_live(done.append)
        handle = engine.live.background("BTCUSDT", strategy_name="s", exchange_name="replay")
        repeats: list[int] = []
        uninstall = bk.install_signal_handlers(handle, on_repeat=functools.partial(repeats.append, 1))
        try:
            for _ in range(20):
                await asyncio.sleep(0)
            os.kill(os.getpid(), sig)
            await asyncio.wait_for(handle.wait(), 5)
            os.kill(os.getpid(), sig)  # a second signal goes to on_repeat
            for _ in range(20):
                await asyncio.sleep(0)
        finally:
            uninstall()
            uninstall()  # idempotent
        assert len(done) == 1 and repeats == [1]
    assert {s: signal.getsignal(s) for s in before} == before


def test_install_signal_handlers_outside_the_main_thread_is_an_error() -> None:
    import threading

    errors: list[BaseException] = []

    def worker() -> None:
        loop = asyncio.new_event_loop()
        try:
            bk.install_signal_handlers(lambda: None, loop=loop)
        except RuntimeError as exc:
            errors.append(exc)
        finally:
            loop.close()

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert len(errors) == 1 and "main thread" in str(errors[0])


def test_the_library_never_runs_or_blocks_the_loop_itself() -> None:
    """Only the CLI (an application) and a worker process's entry point (`run_job`, which owns its
    whole process) may start a loop; nothing in the engine sleeps the thread. One exception:
    `research/ray_start.py` polls for the raylet from inside Ray's own `ray.init`, which blocks its
    thread by Ray's design (it sleeps a second between tries); the poll shortens that block."""
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        relative = path.relative_to(PACKAGE)
        if "cli" in relative.parts or relative.as_posix() == "system/job_worker.py":
            continue
        if relative.as_posix() == "research/ray_start.py":
            text = path.read_text(encoding="utf-8")
            assert len(re.findall(r"(?<![\w.])time\.sleep\(", text)) == 1  # the poll, and nothing else
            assert "asyncio" not in text and "run_until_complete" not in text
            continue
        text = path.read_text(encoding="utf-8")
        for pattern in (r"asyncio\.run\(", r"run_until_complete", r"(?<![\w.])time\.sleep\(", r"new_event_loop"):
            if re.search(pattern, text):
                offenders.append((path.name, pattern))
    assert offenders == []


async def test_close_with_timeout_cancels_a_run_that_cannot_finish(tmp_path: Path) -> None:
    """A run stuck in a tick (an exchange that never answers) is cancelled once `close(timeout=…)` runs out."""
    never = asyncio.Event()
    entered = asyncio.Event()

    async def hanging(symbol: str, interval: str, since: datetime, limit: int) -> list[bk.Candle]:
        entered.set()
        await never.wait()
        return []

    engine = bk.Engine(clock=bk.VirtualClock(datetime(2025, 1, 1, tzinfo=UTC)), persist_dir=tmp_path / "data")
    engine.add_exchange(exchange_name="hang", get_candles=hanging)
    engine.add_strategy(strategy_name="s", interval="1m", get_signal=lambda symbol, when: None)
    handle = engine.live.background("BTCUSDT", strategy_name="s", exchange_name="hang")
    await entered.wait()
    await engine.close(timeout=0.05)
    assert handle.task.done()
    assert [t for t in asyncio.all_tasks() if t is not asyncio.current_task()] == []
    assert (await engine.live.list())[0].status == "done"


async def test_a_backtest_over_memory_data_leaves_the_loop_to_other_tasks(tmp_path: Path) -> None:
    """A backtest whose source never suspends still gives the event loop a turn every 1024 frames:
    another task of the app runs, and a cancel() issued from it ends the run long before its last
    frame (before, the whole frame ran first)."""
    engine = bk.Engine(persist_dir=tmp_path / "data", dump_dir=tmp_path / "dump")
    source = bk.CsvCandles(bk.bundled_sample_path())
    symbol = source.symbols[0]
    first, last = source.first_timestamp(symbol), source.last_timestamp(symbol)
    engine.add_exchange(exchange_name="csv", get_candles=source)
    engine.add_strategy(strategy_name="idle", interval="1m", get_signal=lambda symbol, when: None)
    engine.add_frame(frame_name="week", interval="1m", start_date=datetime.fromtimestamp(first / 1000, UTC),
                     end_date=datetime.fromtimestamp(last / 1000, UTC))
    seen: list[bk.ProgressEvent] = []
    engine.listen_progress(seen.append)
    handle = engine.backtest.background(symbol, strategy_name="idle", exchange_name="csv", frame_name="week")
    await asyncio.sleep(0)  # the run starts
    while not seen:
        await asyncio.sleep(0)
    processed_when_we_ran = seen[-1].processed_frames
    handle()
    await handle.wait()
    total = seen[-1].total_frames
    assert total > 5000
    assert processed_when_we_ran < 2048  # this task ran within the first turns of the loop
    assert max(e.processed_frames for e in seen[:-1]) < total // 2  # the cancel took effect early

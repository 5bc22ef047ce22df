"""The run commands: `backtest` over a frame of historical candles and `live` (or a `--replay` paper run).

Split out of `app.py`. Both commands load a strategy, build the engine and its target, run in the
background under an `Interrupt` (Ctrl-C stops gracefully, a second one abandons), then print or emit
the statistics, write the reports and return the exit code: 1 when no tick ever worked, 130 when a
backtest or replay was interrupted, else 0.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from typing import TextIO

from ..adapters.replay import ReplayExchange
from ..engine.backtest import BacktestRunner
from ..engine.clock import VirtualClock
from ..engine.live import LiveRunner
from ..engine.models import ProgressEvent, TickResult
from ..engine.registry import FrameSchema
from ..execution.ccxt import CcxtExecutor
from ..execution.paper import PaperExecutor
from .common import PROG, apply_config, dump_reports, emit_json, print_files, stdout_to_stderr, strategy_spec
from .dashboard import start_dashboard
from .loader import CliEngine, CliError, Target, build_target, load_strategy, utc
from .outcome import Interrupt, RunLog, until_done, write_line
from .render import LiveStatus, Progress, make_progress, print_summary, summary_rows

__all__ = ["MINUTE_MS", "PacedClock", "cmd_backtest", "cmd_live"]

MINUTE_MS = 60_000


def _frame_text(engine: CliEngine, frame_name: str) -> str:
    f = engine.registry.frames.get(frame_name)
    fmt = "%Y-%m-%d %H:%M"
    return f"{f.start_date.strftime(fmt)} .. {f.end_date.strftime(fmt)} UTC every {f.interval}"


def _finish(log: RunLog, interrupted: bool, args: argparse.Namespace, what: str) -> int:
    """The exit code, after the closing lines on stderr: 1 never worked, 130 interrupted, else 0."""
    if log.failed_ticks() is not None:
        log.failure(sys.stderr, prog=PROG, debug=args.debug)
        return 1
    log.summarise(sys.stderr)
    if interrupted:
        write_line(f"{PROG}: interrupted: the report covers the {what} up to the interruption")
        return 130
    return 0


# ---------------------------------------------------------------------------------------------------------
# backtest
# ---------------------------------------------------------------------------------------------------------


def _check_frame_in_data(target: Target, frame: FrameSchema) -> None:
    """A frame no tick of which could see a fresh candle is an error, not an empty (or stale) run."""
    source = target.source
    if source is None:
        return
    first = source.first_timestamp(target.symbol)
    last_close = source.last_timestamp(target.symbol) + MINUTE_MS
    start = int(frame.start_date.timestamp() * 1000)
    end = int(frame.end_date.timestamp() * 1000)
    if end < first + MINUTE_MS or start >= last_close:
        raise CliError(f"the frame {frame.frame_name!r} ({utc(start).isoformat()} .. {utc(end).isoformat()}) lies "
                       f"outside the data of {target.symbol} ({utc(first).isoformat()} .. "
                       f"{utc(last_close).isoformat()}); choose --from/--to inside it")


class _Frames:
    """Progress listener: remembers how far the backtest got (for the "interrupted after X of Y" title).

    The backtest runner itself gives the event loop a turn every 1024 frames, so a Ctrl-C handler
    runs during a backtest over a local file too.
    """

    def __init__(self) -> None:
        self.processed = 0
        self.total = 0

    def __call__(self, event: ProgressEvent) -> None:
        self.total = event.total_frames
        if event.processed_frames < event.total_frames:  # the closing event says "all", even after a stop
            self.processed = event.processed_frames


class _Trades:
    """Closed trades and their PnL for the progress display (the run goes on in the background)."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.count = 0
        self.pnl = 0.0

    def __call__(self, result: TickResult) -> None:
        if result.action == "closed":
            self.count += 1
            self.pnl += result.pnl.pnl_percentage  # type: ignore[union-attr]
            self.progress.on_trade(self.count, self.pnl)


async def cmd_backtest(args: argparse.Namespace) -> int:
    engine = CliEngine(dump_dir=args.dump_dir)  # backtests never persist state
    try:
        with stdout_to_stderr(args.json):
            apply_config(engine, args.config)
            ref = load_strategy(strategy_spec(args))
            target = await build_target(
                engine, ref, data=args.data, symbol=args.symbol, strategy_name=args.strategy_name,
                exchange=args.exchange, interval=args.interval, warmup_minutes=args.warmup, frame=True,
                frame_name=args.frame_name, start=args.start, end=args.end, frame_interval=args.frame_interval,
            )
            assert target.frame_name is not None
            frame = engine.registry.frames.get(target.frame_name)
            _check_frame_in_data(target, frame)
            log = RunLog(engine.signal_calls)
            engine.listen_error(log)
            engine.listen_signal_backtest_once(lambda _: True, log.on_result)  # "any tick worked": once
            if args.performance:
                engine.performance.enable()
            progress = make_progress(f"{target.strategy_name} {target.symbol}", enabled=not args.no_progress)
            frames = _Frames()
            unsubscribe = [engine.listen_progress(progress.on_progress), engine.listen_progress(frames),
                           engine.listen_signal_backtest(_Trades(progress))]
            started = time.perf_counter()
            handle = engine.backtest.background(target.symbol, strategy_name=target.strategy_name,
                                                exchange_name=target.exchange_name, frame_name=target.frame_name)
            with Interrupt(handle, abandon=handle.task.cancel) as interrupt:
                try:
                    await until_done(handle.task)
                finally:
                    progress.close()
                    for off in unsubscribe:
                        off()
                elapsed = time.perf_counter() - started
                await _raise_run_failure(engine.backtest, target)
                stats = await engine.backtest.get_data(target.symbol, target.strategy_name)
                schedule = await engine.schedule.get_data(target.symbol, target.strategy_name)
                performance = (await engine.performance.get_data(target.symbol, target.strategy_name)
                               if args.performance else None)
                files = await dump_reports(engine, target, args, live=False)
                markdown = (await engine.backtest.get_report(target.symbol, target.strategy_name)
                            if args.markdown and not args.json else None)
    finally:
        await engine.close()

    interrupted = interrupt.received > 0
    if not interrupted:
        frames.processed = frames.total
    if args.json:
        emit_json({
            "command": "backtest",
            "strategy_name": target.strategy_name,
            "symbol": target.symbol,
            "exchange_name": target.exchange_name,
            "frame": {"name": frame.frame_name, "interval": frame.interval,
                      "start": frame.start_date.isoformat(), "end": frame.end_date.isoformat()},
            "elapsed_seconds": round(elapsed, 6),
            "interrupted": interrupted,
            "frames": {"processed": frames.processed, "total": frames.total},
            "statistics": stats,
            "schedule": schedule,
            "performance": performance,
            "errors": log.document(),
            "files": files,
        })
        return _finish(log, interrupted, args, "backtest")
    out = sys.stdout
    if markdown is not None:
        out.write(markdown + "\n")
    else:
        title = (f"Backtest {target.strategy_name} on {target.symbol} ({target.exchange_name}), "
                 f"{_frame_text(engine, target.frame_name)} — {elapsed:.2f}s")
        if interrupted:
            title += f" — interrupted after {frames.processed} of {frames.total} frames"
        rows = summary_rows(stats)
        if schedule.total_scheduled:
            rate = schedule.activation_rate_percent
            rows.append(("Limit signals", f"{schedule.total_scheduled} scheduled, {schedule.total_opened} filled, "
                                          f"{schedule.total_cancelled} cancelled"
                                          + ("" if rate is None else f" ({rate:.1f}% filled)")))
        print_summary(title, rows, out)
    print_files(files, out)
    return _finish(log, interrupted, args, "backtest")


async def _raise_run_failure(runner: BacktestRunner | LiveRunner, target: Target) -> None:
    """A background run that crashed (not a failing tick: those are reported and the run goes on)."""
    for info in await runner.list():
        if info.symbol == target.symbol and info.strategy_name == target.strategy_name and info.error:
            raise CliError(f"the {runner.mode} run of {target.strategy_name!r} on {target.symbol} failed: {info.error}")


# ---------------------------------------------------------------------------------------------------------
# live
# ---------------------------------------------------------------------------------------------------------


class PacedClock(VirtualClock):
    """The `--speed FACTOR` replay clock: virtual time, paced to FACTOR times real time.

    Every sleep first waits `seconds / FACTOR` of real time, then lets virtual time jump by exactly
    `seconds` under the `VirtualClock` rules. "Now" never comes from the wall clock, so the tick times
    — and with them the trades — are the same on every run however busy the machine is; only the
    time the replay takes varies. (Reading the wall clock, as a scaled clock did, shifted every tick
    by the processing lag and changed which candles a tick saw.)
    """

    def __init__(self, factor: float) -> None:
        super().__init__(datetime(1970, 1, 1, tzinfo=UTC))
        self.factor = factor

    async def sleep(self, seconds: float) -> None:
        if seconds > 0:
            await asyncio.sleep(seconds / self.factor)
        await super().sleep(seconds)


async def cmd_live(args: argparse.Namespace) -> int:
    replay = args.replay is not None
    if not replay and (args.start is not None or args.end is not None or args.speed is not None):
        raise CliError("--from, --to and --speed apply to a replay only (add --replay CSV)")
    if args.trade and (replay or args.paper):
        raise CliError("--trade sends real orders on a live exchange: it goes with neither --replay nor --paper")
    if args.sandbox and not (args.exchange or "").startswith("ccxt:") and not args.trade:
        raise CliError("--sandbox applies to --exchange ccxt:<id> (or to --trade)")
    temp_dir: str | None = None
    clock: VirtualClock | None = None
    if replay:
        clock = VirtualClock(datetime(1970, 1, 1, tzinfo=UTC)) if args.speed is None else PacedClock(args.speed)
        persist_dir = args.persist_dir or (temp_dir := tempfile.mkdtemp(prefix="backtest-kit-replay-"))
    else:
        persist_dir = args.persist_dir or "./data"
    engine = CliEngine(replay=replay, clock=clock, persist_dir=persist_dir, dump_dir=args.dump_dir)
    out = sys.stdout  # the real stdout: with --json everything else printed goes to stderr
    try:
        with stdout_to_stderr(args.json):
            apply_config(engine, args.config)
            ref = load_strategy(strategy_spec(args))
            target = await build_target(
                engine, ref, data=[], symbol=args.symbol, strategy_name=args.strategy_name,
                exchange=args.exchange, interval=args.interval, warmup_minutes=args.warmup, frame=False,
                replay_csv=args.replay, sandbox=args.sandbox,
            )
            window: tuple[int, int] | None = None
            if replay:
                assert clock is not None
                window = _replay_window(engine, target, args)
                clock.advance((window[0] - clock.now_ms()) / 1000)
            elif target.source is not None:
                raise CliError(f"exchange {target.exchange_name!r} serves candles from a file, which has no "
                               "candles for the current time: add --replay CSV for a paper run over history, "
                               "or use a real exchange with --exchange ccxt:<id>")
            return await _run_live(engine, target, args, window, out)
    finally:
        await engine.close()
        if temp_dir is not None:
            shutil.rmtree(temp_dir, ignore_errors=True)


def _replay_window(engine: CliEngine, target: Target, args: argparse.Namespace) -> tuple[int, int]:
    """(start, end) ms of the replay; the replay exchange ends the run at `end` (data end or --to)."""
    exchange = engine.registry.exchanges.get(target.exchange_name).get_candles
    assert isinstance(exchange, ReplayExchange)
    first = exchange.first_timestamp(target.symbol)
    last_close = exchange.last_timestamp(target.symbol) + MINUTE_MS
    start_ms = int(args.start.timestamp() * 1000) if args.start is not None else first + args.warmup * MINUTE_MS
    end_ms = min(int(args.end.timestamp() * 1000), last_close) if args.end is not None else last_close
    if not first <= start_ms < end_ms:
        raise CliError(f"the replay window {utc(start_ms).isoformat()} .. {utc(end_ms).isoformat()} "
                       f"is outside the data ({utc(first).isoformat()} .. {utc(last_close).isoformat()})")
    exchange.end_ms = end_ms
    return start_ms, end_ms


async def _run_live(
    engine: CliEngine, target: Target, args: argparse.Namespace, window: tuple[int, int] | None, out: TextIO,
) -> int:
    replay = window is not None
    log = RunLog(engine.signal_calls)
    engine.listen_error(log)
    if args.performance:
        engine.performance.enable()
    mode = "replay" if replay else "live"
    status = LiveStatus(f"{mode} {target.strategy_name} {target.symbol}", enabled=not args.no_progress,
                        start_ms=window[0] if window else None, end_ms=window[1] if window else None)

    def on_tick(result: TickResult) -> None:
        if result.symbol == target.symbol and result.strategy_name == target.strategy_name:
            log.on_result(result)
            status.on_tick(result, engine.now_ms())

    engine.listen_signal_live(on_tick)
    if args.trade:  # real orders: checked before the run (a ccxt exchange, keys, the venue asked for)
        executor = CcxtExecutor(target.exchange_name, sandbox=True if args.sandbox else None)
        executor.check(engine.exchange(target.exchange_name))
        engine.add_order_executor(strategy_name=target.strategy_name, executor=executor, trade=True)
    elif replay if args.paper is None else args.paper:
        # paper orders by default on a replay: the report shows realised (fill) PnL next to the model's;
        # going live for real is --trade (CcxtExecutor, trade=True) instead
        engine.add_order_executor(strategy_name=target.strategy_name, executor=PaperExecutor())
    if args.dashboard is not None:  # before the run starts: its ticks are timed from the first one
        dashboard = await start_dashboard(args.dashboard, engine=engine)  # closed with the engine
        write_line(f"dashboard at {dashboard.url}")
    started = time.perf_counter()
    handle = engine.live.background(target.symbol, strategy_name=target.strategy_name,
                                    exchange_name=target.exchange_name)
    if not args.no_progress:
        stops = ("Ctrl-C stops (an open position is still watched to its close)" if window is None else
                 f"until {utc(window[1]).isoformat()}; Ctrl-C stops early (the report is still written)")
        write_line(f"{mode} {target.strategy_name} on {target.symbol} ({target.exchange_name}); {stops}, "
                   "a second Ctrl-C ends at once")
    with Interrupt(handle, abandon=handle.task.cancel) as interrupt:
        try:
            await until_done(handle.task)
        finally:
            status.close()
        elapsed = time.perf_counter() - started
        stats = await engine.live.get_data(target.symbol, target.strategy_name)
        schedule = await engine.schedule.get_data(target.symbol, target.strategy_name)
        performance = (await engine.performance.get_data(target.symbol, target.strategy_name)
                       if args.performance else None)
        files = await dump_reports(engine, target, args, live=True)
        report = await engine.live.get_report(target.symbol, target.strategy_name)
    # Ctrl-C is how a real live run ends (exit 0); a replay it cuts short is incomplete (exit 130).
    interrupted = replay and interrupt.received > 0
    if args.json:
        emit_json({
            "command": "live",
            "mode": mode,
            "strategy_name": target.strategy_name,
            "symbol": target.symbol,
            "exchange_name": target.exchange_name,
            "replay": None if window is None else {
                "csv": args.replay, "speed": "virtual" if args.speed is None else args.speed,
                "start": utc(window[0]).isoformat(), "end": utc(window[1]).isoformat(),
            },
            "elapsed_seconds": round(elapsed, 6),
            "interrupted": interrupt.received > 0,
            "ticks": status.ticks,
            "open_position": status.position if stats.open_positions else None,
            "statistics": stats,
            "schedule": schedule,
            "performance": performance,
            "errors": log.document(),
            "files": files,
        }, out)
        return _finish(log, interrupted, args, "replay")
    out.write(report + "\n")
    print_files(files, out)
    return _finish(log, interrupted, args, "replay")

"""`backtest-kit` (and `python -m backtest_kit`): run backtests, live / paper runs, and read reports.

    backtest-kit backtest                         # the bundled SMA demo over the bundled BTCUSDT week
    backtest-kit backtest my_strategy.py --data BTCUSDT-1m-30d.csv --from 2025-06-01 --to 2025-06-10
    backtest-kit backtest pkg.strategies:register --config CC_PERCENT_FEE=0.075 --json
    backtest-kit live --replay BTCUSDT-1m-7d.csv  # live mode over history on a virtual clock
    backtest-kit live my_strategy.py --exchange ccxt:binance --symbol BTCUSDT
    backtest-kit report                           # list the dumped reports; `report NAME` prints one

Exit codes: 0 success, 1 the run failed (the message names the problem: a missing file, an unknown
config key, a strategy that does not import, a frame outside the data, or a run that never worked
because every tick or every get_signal call failed: how many, the first error and its file:line),
2 a usage error (unknown option, bad value), 130 interrupted. Ctrl-C (or SIGTERM) stops a backtest
or a replay gracefully: the report is still written and the summary printed, then the exit code is
130; a second Ctrl-C abandons an open position. Ctrl-C is how a real live run ends, so there it
exits 0. With `--json` stdout carries exactly one JSON document; progress, status lines, warnings
and anything the strategy prints go to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import msgspec

from .. import __version__
from ..adapters.replay import ReplayExchange
from ..engine.backtest import BacktestRunner
from ..engine.clock import VirtualClock
from ..engine.errors import BacktestKitError
from ..engine.intervals import FRAME_INTERVALS, SIGNAL_INTERVALS
from ..engine.live import LiveRunner
from ..engine.models import ProgressEvent, TickResult
from ..engine.registry import FrameSchema
from ..reports.plots import equity_png_path
from .loader import CliEngine, CliError, Target, build_target, load_strategy, utc
from .outcome import Interrupt, RunLog, until_done, write_line
from .render import LiveStatus, Progress, make_progress, print_summary, summary_rows

__all__ = [
    "PROG",
    "PacedClock",
    "apply_config",
    "build_parser",
    "cmd_backtest",
    "cmd_live",
    "cmd_report",
    "config_item",
    "dump_reports",
    "emit_json",
    "main",
    "parse_value",
    "positive_int",
    "print_files",
    "speed",
    "stdout_to_stderr",
    "strategy_spec",
    "when",
]

PROG = "backtest-kit"
MINUTE_MS = 60_000


# ---------------------------------------------------------------------------------------------------------
# Argument types
# ---------------------------------------------------------------------------------------------------------


def parse_value(raw: str) -> Any:
    """A `--config` value: true/false, an int, a float, else the string (the engine names bad types)."""
    text = raw.strip()
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if re.fullmatch(r"[+-]?\d+", text):
        return int(text)
    try:
        return float(text)
    except ValueError:
        return text


def config_item(text: str) -> tuple[str, Any]:
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (e.g. CC_PERCENT_FEE=0.1), got {text!r}")
    return key, parse_value(raw)


def when(text: str) -> datetime:
    """ISO 8601 date or date-time (naive = UTC), or milliseconds since the epoch."""
    value = text.strip()
    if re.fullmatch(r"\d{11,}", value):
        return datetime.fromtimestamp(int(value) / 1000, UTC)
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected an ISO date such as 2025-05-21 or 2025-05-21T06:00 (UTC), got {text!r}"
        ) from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def speed(text: str) -> float | None:
    """`virtual` (None: as fast as possible) or a positive factor of real time."""
    if text.strip().lower() == "virtual":
        return None
    try:
        factor = float(text)
    except ValueError:
        factor = float("nan")
    if not 0 < factor < float("inf"):
        raise argparse.ArgumentTypeError(f"expected 'virtual' or a positive factor such as 60, got {text!r}")
    return factor


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}")
    return value


# ---------------------------------------------------------------------------------------------------------
# Parser
# ---------------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Run one trading strategy in backtest or live mode and read its reports.",
        epilog="Run `backtest-kit COMMAND --help` for the options of a command.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    common = argparse.ArgumentParser(add_help=False)
    g = common.add_argument_group("strategy")
    g.add_argument("strategy_pos", nargs="?", metavar="STRATEGY",
                   help="file.py, file.py:function, package.module or package.module:function "
                        "(default: the bundled SMA-crossover demo)")
    g.add_argument("--strategy", "-s", dest="strategy", metavar="SPEC", help="same as STRATEGY")
    g.add_argument("--strategy-name", metavar="NAME",
                   help="which registered strategy to run (or the name given to a bare get_signal)")
    g.add_argument("--symbol", metavar="SYMBOL", help="default: the symbol register() returns or the data's first")
    g.add_argument("--exchange", metavar="NAME",
                   help="a registered exchange, or ccxt:<id> (e.g. ccxt:binance) for a ccxt exchange")
    g.add_argument("--interval", default="5m", choices=SIGNAL_INTERVALS,
                   help="get_signal throttle when the CLI registers a bare get_signal (default 5m)")
    g.add_argument("--warmup", type=positive_int, default=60, metavar="MINUTES",
                   help="minutes of data skipped before the first tick when the CLI picks the start (default 60)")
    g.add_argument("--config", "-c", type=config_item, action="append", default=[], metavar="KEY=VALUE",
                   help="engine setting, repeatable (e.g. -c CC_PERCENT_FEE=0.075 -c CC_PERCENT_SLIPPAGE=0)")
    o = common.add_argument_group("output")
    o.add_argument("--json", action="store_true",
                   help="print one JSON document (statistics and written files) to stdout, nothing else")
    o.add_argument("--markdown", action="store_true",
                   help="backtest: print the full markdown report instead of the summary (live always prints it)")
    o.add_argument("--dump-dir", default="dump", metavar="DIR", help="where reports are written (default ./dump)")
    o.add_argument("--no-dump", action="store_true", help="write no report files")
    o.add_argument("--no-plot", action="store_true", help="no equity-curve PNG even when matplotlib is installed")
    o.add_argument("--performance", action="store_true",
                   help="time the engine's steps and write the performance report")
    o.add_argument("--no-progress", action="store_true", help="no progress bar / status line on stderr")
    o.add_argument("--verbose", "-v", action="store_true", help="show the engine's log on stderr")
    o.add_argument("--debug", action="store_true", help="show the full traceback when the run fails")

    bt = sub.add_parser("backtest", parents=[common], help="backtest a strategy over historical candles",
                        description="Backtest a strategy over a frame of historical candles.")
    d = bt.add_argument_group("data and frame")
    d.add_argument("--data", action="append", default=[], metavar="CSV",
                   help="1m candle CSV (timestamp_ms,open,high,low,close,volume; .gz ok), repeatable; "
                        "default: the strategy's own data, else the bundled BTCUSDT week")
    d.add_argument("--from", dest="start", type=when, metavar="ISO", help="frame start (UTC)")
    d.add_argument("--to", dest="end", type=when, metavar="ISO", help="frame end (UTC)")
    d.add_argument("--frame-interval", choices=list(FRAME_INTERVALS), metavar="INTERVAL",
                   help="tick spacing of the frame (default: the registered frame's, else 1m)")
    d.add_argument("--frame-name", metavar="NAME", help="which registered frame to use")
    bt.set_defaults(handler=cmd_backtest)

    lv = sub.add_parser("live", parents=[common], help="run live, or paper-trade over history with --replay",
                        description="Run a strategy in live mode until Ctrl-C; with --replay CSV, run live "
                                    "mode over that history on a simulated clock until the data ends.")
    r = lv.add_argument_group("replay")
    r.add_argument("--replay", metavar="CSV", help="paper run: live mode over this 1m candle CSV")
    r.add_argument("--speed", type=speed, default=None, metavar="virtual|FACTOR",
                   help="replay clock: 'virtual' (as fast as possible, default) or a factor of real time")
    r.add_argument("--from", dest="start", type=when, metavar="ISO", help="replay start (default: data start + warmup)")
    r.add_argument("--to", dest="end", type=when, metavar="ISO", help="replay end (default: end of the data)")
    r.add_argument("--persist-dir", metavar="DIR",
                   help="state directory (default ./data live; a temporary one for a replay)")
    lv.set_defaults(handler=cmd_live)

    rp = sub.add_parser("report", help="list the dumped reports or print one",
                        description="List the reports written by `dump`, or print the one named.")
    rp.add_argument("name", nargs="?", metavar="NAME",
                    help="report to print: its path under the dump directory without .md "
                         "(backtest/BTCUSDT_sma-cross), its file name, or its strategy (sma-cross) "
                         "when that names only one report")
    rp.add_argument("--dump-dir", default="dump", metavar="DIR", help="default ./dump")
    rp.add_argument("--json", action="store_true", help="print JSON")
    rp.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    rp.set_defaults(handler=cmd_report, verbose=False)
    return parser


# ---------------------------------------------------------------------------------------------------------
# Shared helpers
# ---------------------------------------------------------------------------------------------------------


def apply_config(engine: CliEngine, items: list[tuple[str, Any]]) -> None:
    if items:
        engine.set_config(dict(items))


def strategy_spec(args: argparse.Namespace) -> str | None:
    if args.strategy_pos and args.strategy and args.strategy_pos != args.strategy:
        raise CliError(f"two strategies given: {args.strategy_pos!r} and --strategy {args.strategy!r}")
    return args.strategy or args.strategy_pos  # type: ignore[no-any-return]


@contextlib.contextmanager
def stdout_to_stderr(active: bool) -> Iterator[None]:
    """With --json, whatever the strategy prints must not corrupt the JSON document on stdout."""
    if not active:
        yield
        return
    with contextlib.redirect_stdout(sys.stderr):
        yield


def emit_json(document: dict[str, Any], out: TextIO | None = None) -> None:
    out = out or sys.stdout
    out.write(json.dumps(msgspec.to_builtins(document), indent=2, allow_nan=False) + "\n")
    out.flush()


def _path(p: Path | None) -> str | None:
    return None if p is None else str(p)


def _linked_chart(report: Path | None) -> Path | None:
    if report is None:
        return None
    png = equity_png_path(report)
    try:
        linked = f"]({png.name})" in report.read_text(encoding="utf-8")
    except OSError:
        return None
    return png if linked and png.exists() else None


async def dump_reports(engine: CliEngine, target: Target, args: argparse.Namespace, *, live: bool) -> dict[str, Any]:
    """Write the run's reports (and the chart); returns {kind: path or None}."""
    files: dict[str, Any] = {}
    if args.no_dump:
        return files
    runner = engine.live if live else engine.backtest
    report = await runner.dump(target.symbol, target.strategy_name, plot=not args.no_plot)
    files["report"] = _path(report)
    files["chart"] = _path(_linked_chart(report))
    schedule = await engine.schedule.get_data(target.symbol, target.strategy_name)
    files["schedule"] = (_path(await engine.schedule.dump(target.symbol, target.strategy_name))
                         if schedule.total_events else None)
    if args.performance:
        files["performance"] = _path(await engine.performance.dump(target.symbol, target.strategy_name))
    return files


def print_files(files: dict[str, Any], out: TextIO) -> None:
    shown = [(k, v) for k, v in files.items() if v]
    if not shown:
        return
    out.write("\n")
    for kind, path in shown:
        out.write(f"  {kind + ':':<13}{path}\n")
    out.flush()


def _setup_logging(verbose: bool) -> None:
    if verbose:
        logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")


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
    """Progress listener: remembers how far the backtest got and lets the event loop breathe.

    A backtest over a local file never suspends on its own, so without a periodic yield a Ctrl-C
    handler (an event-loop callback) would only run after the last frame.
    """

    EVERY = 256  # frames between yields: a few hundred microseconds of work

    def __init__(self) -> None:
        self.processed = 0
        self.total = 0
        self._calls = 0

    def __call__(self, event: ProgressEvent) -> Awaitable[None] | None:
        self.total = event.total_frames
        if event.processed_frames < event.total_frames:  # the closing event says "all", even after a stop
            self.processed = event.processed_frames
        self._calls += 1
        return asyncio.sleep(0) if self._calls % self.EVERY == 0 else None


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
                replay_csv=args.replay,
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


# ---------------------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------------------


def _reports(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.md") if p.is_file())


def _title(path: Path) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            first = f.readline().strip()
    except OSError:
        return ""
    return first.removeprefix("# ").strip()


def _name(root: Path, path: Path) -> str:
    return path.relative_to(root).with_suffix("").as_posix()


def _matching(root: Path, paths: list[Path], wanted: str) -> list[Path]:
    """Reports named `wanted`: the full name (`backtest/BTCUSDT_sma-cross`), else the file name
    (`BTCUSDT_sma-cross`), else the strategy part, optionally with its folder (`sma-cross`,
    `backtest/sma-cross`: the names reports had before they carried the symbol)."""
    exact = [p for p in paths if _name(root, p) == wanted]
    if exact:
        return exact
    by_stem = [p for p in paths if p.stem == wanted]
    if by_stem:
        return by_stem
    folder, _, leaf = wanted.rpartition("/")
    return [p for p in paths if p.stem.endswith(f"_{leaf}")
            and (not folder or p.parent.relative_to(root).as_posix() == folder)]


async def cmd_report(args: argparse.Namespace) -> int:
    root = Path(args.dump_dir)
    if not root.is_dir():
        raise CliError(f"no reports: {root} does not exist (run `{PROG} backtest` first, or give --dump-dir)")
    paths = _reports(root)
    if args.name is None:
        entries: list[dict[str, Any]] = []
        for p in paths:
            chart = _linked_chart(p)
            entries.append({
                "name": _name(root, p), "title": _title(p), "path": str(p),
                "modified": datetime.fromtimestamp(p.stat().st_mtime, UTC).isoformat(timespec="seconds"),
                "chart": _path(chart),
            })
        if args.json:
            emit_json({"command": "report", "dump_dir": str(root), "reports": entries})
            return 0
        if not entries:
            sys.stdout.write(f"no reports in {root}\n")
            return 0
        width = max(len(e["name"]) for e in entries)
        for e in entries:
            mark = "  [chart]" if e["chart"] else ""
            sys.stdout.write(f"{e['name'].ljust(width)}  {e['modified']}  {e['title']}{mark}\n")
        return 0
    matches = _matching(root, paths, args.name.removesuffix(".md"))
    if not matches:
        known = ", ".join(_name(root, p) for p in paths) or "none"
        raise CliError(f"no report named {args.name!r} in {root} (available: {known})")
    if len(matches) > 1:
        names = [_name(root, p) for p in matches]
        raise CliError(f"{args.name!r} matches {len(names)} reports: {', '.join(names)}; "
                       f"name one of them, e.g. `{PROG} report {names[0]}`")
    path = matches[0]
    text = path.read_text(encoding="utf-8")
    if args.json:
        emit_json({"command": "report", "name": _name(root, path), "path": str(path), "title": _title(path),
                   "chart": _path(_linked_chart(path)), "markdown": text})
    else:
        sys.stdout.write(text + ("" if text.endswith("\n") else "\n"))
    return 0


# ---------------------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code (argparse exits with 2 itself on a usage error)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    _setup_logging(getattr(args, "verbose", False))
    try:
        code: int = asyncio.run(args.handler(args))
        return code
    except KeyboardInterrupt:
        sys.stderr.write(f"{PROG}: interrupted\n")
        return 130
    except (CliError, BacktestKitError, OSError) as exc:
        if args.debug:
            raise
        message = str(exc) or type(exc).__name__
        if isinstance(exc, OSError) and exc.filename is not None and str(exc.filename) not in message:
            message = f"{message}: {exc.filename}"
        sys.stderr.write(f"{PROG}: error: {message}\n")
        return 1
    except Exception as exc:
        if args.debug:
            raise
        sys.stderr.write(f"{PROG}: error: unexpected {type(exc).__name__}: {exc} "
                         "(run with --debug for the traceback)\n")
        return 1


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())


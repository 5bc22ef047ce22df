"""The command line's grammar: argument types (`--config KEY=VALUE`, `--from ISO`, `--speed`) and the parser.

Split out of `app.py` so the options of every command can be read in one place, apart from what the
commands do (`run.py`, `report.py`) and from how `main` turns their outcome into an exit code. An
argument type raises `argparse.ArgumentTypeError`, which argparse reports as a usage error (exit 2).
"""

from __future__ import annotations

import argparse
import re
from datetime import UTC, datetime
from typing import Any

from .. import __version__
from ..engine.intervals import FRAME_INTERVALS, SIGNAL_INTERVALS
from .common import PROG
from .dashboard import DEFAULT_LISTEN, TOKEN_ENV, add_dashboard_parser, host_port
from .report import cmd_report
from .run import cmd_backtest, cmd_live
from .sweep import add_sweep_parser
from .walk import add_walk_parser

__all__ = ["build_parser", "config_item", "parse_value", "positive_int", "speed", "when"]


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
    r.add_argument("--paper", action=argparse.BooleanOptionalAction, default=None,
                   help="fill the signals as paper orders against the candles (PaperExecutor) and report the "
                        "realised PnL next to the model's (default: on with --replay, off live)")
    lv.add_argument("--dashboard", nargs="?", type=host_port, const=host_port(DEFAULT_LISTEN), metavar="HOST:PORT",
                    help=f"serve the live dashboard while it runs (default {DEFAULT_LISTEN}; port 0: any free "
                         f"one; a non-loopback HOST needs a token in {TOKEN_ENV})")
    t = lv.add_argument_group("real orders")
    t.add_argument("--trade", action="store_true",
                   help="send the signals as real orders (CcxtExecutor, exactly once) on the ccxt exchange; "
                        "needs its API keys (<ID>_API_KEY / <ID>_SECRET). Without it no order is ever sent")
    t.add_argument("--sandbox", action="store_true",
                   help="register --exchange ccxt:<id> in sandbox (testnet) mode; with --trade, refuse an "
                        "exchange that is not in sandbox mode")
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

    add_sweep_parser(sub, when, config_item, positive_int, SIGNAL_INTERVALS, FRAME_INTERVALS)
    add_walk_parser(sub, when, config_item, positive_int, SIGNAL_INTERVALS, FRAME_INTERVALS)
    add_dashboard_parser(sub)
    return parser

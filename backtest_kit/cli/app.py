"""`backtest-kit` (and `python -m backtest_kit`): run backtests, live / paper runs, and read reports.

    backtest-kit backtest                         # the bundled SMA demo over the bundled BTCUSDT week
    backtest-kit backtest my_strategy.py --data BTCUSDT-1m-30d.csv --from 2025-06-01 --to 2025-06-10
    backtest-kit backtest pkg.strategies:register --config CC_PERCENT_FEE=0.075 --json
    backtest-kit live --replay BTCUSDT-1m-7d.csv  # live mode over history on a virtual clock
    backtest-kit live my_strategy.py --exchange ccxt:binance --symbol BTCUSDT
    backtest-kit report                           # list the dumped reports; `report NAME` prints one
    backtest-kit sweep --param fast=5,10 --param slow=30,60 --folds 3   # parameter sweep (cli/sweep.py)

Exit codes: 0 success, 1 the run failed (the message names the problem: a missing file, an unknown
config key, a strategy that does not import, a frame outside the data, or a run that never worked
because every tick or every get_signal call failed: how many, the first error and its file:line),
2 a usage error (unknown option, bad value), 130 interrupted. Ctrl-C (or SIGTERM) stops a backtest
or a replay gracefully: the report is still written and the summary printed, then the exit code is
130; a second Ctrl-C abandons an open position. Ctrl-C is how a real live run ends, so there it
exits 0. With `--json` stdout carries exactly one JSON document; progress, status lines, warnings
and anything the strategy prints go to stderr.

The command line is split by job: `arguments.py` (argument types and the parser), `run.py` (the
`backtest` and `live` commands), `report.py` (the `report` command), `common.py` (what they share),
with `loader.py`, `outcome.py` and `render.py` below them; this module is the entry point, `main`,
and every name it used to define stays importable from here.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Coroutine
from typing import Any

from ..engine.errors import BacktestKitError
from .arguments import build_parser, config_item, parse_value, positive_int, speed, when
from .common import PROG, apply_config, dump_reports, emit_json, print_files, stdout_to_stderr, strategy_spec
from .loader import CliError
from .report import cmd_report
from .run import MINUTE_MS as MINUTE_MS
from .run import PacedClock, cmd_backtest, cmd_live

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


def _setup_logging(verbose: bool) -> None:
    if verbose:
        logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")


def _run(main: Coroutine[Any, Any, int]) -> int:
    """Run the command on uvloop when it is installed (the `fast` extra), else on asyncio's loop.

    A live run of thousands of pairs spends much of its time in the event loop itself (timers,
    futures, task steps); uvloop does that work in C. The library itself runs on whatever loop its
    caller provides: only the CLI, which owns its loop, chooses."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code (argparse exits with 2 itself on a usage error)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    _setup_logging(getattr(args, "verbose", False))
    try:
        code: int = _run(args.handler(args))
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


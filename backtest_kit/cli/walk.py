"""The `walk` command: compare strategies on one symbol and frame and rank them by a metric (`bk.Walker`).

    backtest-kit walk                                   # the demo's three SMA crossovers on the bundled week
    backtest-kit walk --metric total_pnl --executor sequential
    backtest-kit walk my_strategies.py --strategy fast --strategy slow --json

The strategies come from a module (`file.py` or `pkg.module`; default `backtest_kit.demo`): its
`WALK_STRATEGIES` dict (name -> get_signal) when it has one, else the functions named by `--strategy`,
else every public `async def` whose first parameter is `symbol`. Each strategy's backtest is one job of
the executor (`--executor local` by default: a process pool, so the functions must be module-level;
`ray`; or `sequential`, this process). Data and frame are chosen as for `sweep`. The report goes to
`<dump-dir>/walker/<name>.md`.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any, TextIO

import msgspec

from ..engine.models import WalkerContract
from ..reports.walker_stats import WalkerData, rank_results
from ..system.engine import Engine
from .common import PROG, emit_json, print_files, stdout_to_stderr
from .job_progress import JobTally, make_job_progress
from .loader import CliError, _import_file, _import_module
from .outcome import Interrupt, until_done, write_line
from .render import print_summary
from .sweep import SWEEP_EXCHANGE, SWEEP_FRAME, add_data_arguments, register_data

__all__ = ["DEFAULT_MODULE", "add_walk_parser", "cmd_walk", "load_strategies"]

DEFAULT_MODULE = "backtest_kit.demo"
WALKER_NAME = "walk"


def _is_signal_function(value: Any) -> bool:
    if not inspect.iscoroutinefunction(value):
        return False
    params = list(inspect.signature(value).parameters)
    return bool(params) and params[0] == "symbol"


def load_strategies(spec: str | None, names: list[str]) -> dict[str, Callable[..., Any]]:
    """Strategy name -> get_signal from the module `spec` names (see the module docstring)."""
    target = spec or DEFAULT_MODULE
    is_file = target.endswith(".py") or "/" in target
    from pathlib import Path

    module: ModuleType = _import_file(Path(target)) if is_file else _import_module(target)
    table = getattr(module, "WALK_STRATEGIES", None)
    if names:
        found: dict[str, Callable[..., Any]] = {}
        for name in names:
            fn = table.get(name) if isinstance(table, dict) else None
            fn = fn if fn is not None else getattr(module, name, None)
            if fn is None or not callable(fn):
                raise CliError(f"--strategy {name!r}: {target} has no such get_signal function")
            found[name] = fn
        return found
    if isinstance(table, dict) and table:
        return {str(k): v for k, v in table.items()}
    functions = {name: fn for name, fn in vars(module).items()
                 if not name.startswith("_") and _is_signal_function(fn) and getattr(fn, "__module__", None)
                 == module.__name__}
    if len(functions) < 2:
        raise CliError(f"{target}: found {len(functions)} strategy function(s) (async def f(symbol, when)); "
                       "a walk compares two or more: name them with --strategy or define WALK_STRATEGIES")
    return functions


async def cmd_walk(args: argparse.Namespace) -> int:
    engine = Engine(dump_dir=args.dump_dir)
    events: list[WalkerContract[Any]] = []
    failures: list[str] = []
    data: WalkerData | None = None
    files: dict[str, Any] = {}
    try:
        with stdout_to_stderr(args.json):
            if args.config:
                engine.set_config(dict(args.config))
            strategies = load_strategies(args.module or args.strategy_module, list(args.strategy))
            symbols = register_data(engine, args)
            symbol = symbols[0]
            for name, fn in strategies.items():
                engine.add_strategy(strategy_name=name, interval=args.interval, get_signal=fn)
            tally = JobTally(total=len(strategies))
            progress = make_job_progress(f"walk {symbol}", enabled=not args.no_progress)

            def on_error(strategy_name: str, _symbol: str, error: BaseException) -> None:
                failures.append(f"{strategy_name}: {error}")
                tally.finished += 1
                tally.failed += 1
                progress(tally)

            def on_result(event: WalkerContract[Any]) -> None:
                events.append(event)
                tally.finished += 1
                progress(tally)

            engine.add_walker(walker_name=args.name, exchange_name=SWEEP_EXCHANGE, frame_name=SWEEP_FRAME,
                              strategies=list(strategies), metric=args.metric,
                              callbacks={"on_strategy_error": on_error})
            engine.listen_walker(on_result)
            cancel = engine.walker.background(symbol, walker_name=args.name, executor=args.executor)
            task = asyncio.ensure_future(cancel.wait())
            with Interrupt(cancel, abandon=task.cancel) as interrupt:
                try:
                    await until_done(task)
                finally:
                    progress.close()
            if events:
                data = await engine.walker.get_data(symbol, args.name)
                if not args.no_dump:
                    path = await engine.walker.dump(symbol, args.name)
                    files = {"report": None if path is None else str(path)}
    finally:
        await engine.close()
    if args.json:
        emit_json({"command": "walk", "walker": args.name, "symbol": symbol, "metric": args.metric,
                   "executor": args.executor,
                   "best_strategy": None if data is None else data.best_strategy,
                   "best_metric": None if data is None else data.best_metric,
                   "results": [{"strategy": e.strategy_name, "metric_value": e.metric_value,
                                "stats": _summary(e)} for e in events],
                   "failed": failures, "files": files})
    else:
        _print(events, data, failures, args, sys.stdout)
        print_files(files, sys.stdout)
    if not events:
        write_line(f"{PROG}: every strategy of the walk failed ({len(failures)}); the first: "
                   f"{failures[0] if failures else 'none ran'}")
        return 1
    if interrupt.received:
        write_line(f"{PROG}: interrupted: the report covers the {len(events)} strategies that finished")
        return 130
    return 0


_SUMMARY_FIELDS = ("total_trades", "win_rate", "total_pnl", "sharpe_ratio", "max_drawdown", "profit_factor")


def _summary(event: WalkerContract[Any]) -> dict[str, Any]:
    stats = msgspec.to_builtins(event.stats)
    return {k: stats.get(k) for k in _SUMMARY_FIELDS}


def _fmt(value: float | None) -> str:
    return "N/A" if value is None else f"{value:.4f}"


def _print(events: list[WalkerContract[Any]], data: WalkerData | None, failures: list[str],
           args: argparse.Namespace, out: TextIO) -> None:
    rows = [("Metric", args.metric), ("Executor", args.executor),
            ("Best strategy", f"{data.best_strategy} ({_fmt(data.best_metric)})" if data else "N/A")]
    for i, r in enumerate(rank_results(data.strategy_results, args.metric) if data else []):
        figures = f"{r.stats.total_trades} trades, total PnL {_fmt(r.stats.total_pnl)}%"
        rows.append((f"#{i + 1} {r.strategy_name}", f"{args.metric} {_fmt(r.metric_value)}, {figures}"))
    rows.extend(("failed", text) for text in failures)
    print_summary(f"Walk {args.name} ({len(events)} of {len(events) + len(failures)} strategies)", rows, out)


def add_walk_parser(sub: Any, when: Any, config_item: Any, positive_int: Any, intervals: Any,
                    frame_intervals: Any) -> None:
    """The `walk` subcommand's options (called by `arguments.build_parser`, which owns the shared types)."""
    from ..engine.registry import WALKER_METRICS
    from ..research.executors import EXECUTOR_NAMES

    wk = sub.add_parser("walk", help="compare strategies on one symbol and rank them by a metric (Walker)",
                        description="Backtest several strategies on the same data and frame and rank them.")
    g = wk.add_argument_group("strategies")
    g.add_argument("module", nargs="?", metavar="MODULE",
                   help="file.py or pkg.module holding the strategies (default: backtest_kit.demo)")
    g.add_argument("--module", "-m", dest="strategy_module", metavar="MODULE", help="same as MODULE")
    g.add_argument("--strategy", "-s", action="append", default=[], metavar="NAME",
                   help="repeatable: a get_signal function (or WALK_STRATEGIES key) of the module")
    g.add_argument("--metric", default="sharpe_ratio", choices=list(WALKER_METRICS), metavar="METRIC",
                   help=f"what ranks the strategies (default sharpe_ratio; one of {', '.join(WALKER_METRICS)})")
    g.add_argument("--interval", default="5m", choices=intervals, help="get_signal throttle (default 5m)")
    g.add_argument("--config", "-c", type=config_item, action="append", default=[], metavar="KEY=VALUE",
                   help="engine setting, repeatable")
    add_data_arguments(wk.add_argument_group("data and frame"), when, positive_int, frame_intervals,
                       symbol_help="the symbol (default: the data's first)")
    o = wk.add_argument_group("execution and output")
    o.add_argument("--executor", default="local", choices=list(EXECUTOR_NAMES),
                   help="where the backtests run: local (process pool, default), ray, sequential (this process)")
    o.add_argument("--name", default=WALKER_NAME, help=f"walker and report name (default {WALKER_NAME})")
    o.add_argument("--json", action="store_true", help="print one JSON document (results, best, files)")
    o.add_argument("--dump-dir", default="dump", metavar="DIR", help="the report goes to DIR/walker/ (default ./dump)")
    o.add_argument("--no-dump", action="store_true", help="write no report file")
    o.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    o.add_argument("--verbose", "-v", action="store_true", help="show the engine's log on stderr")
    o.add_argument("--debug", action="store_true", help="show the full traceback when the walk fails")
    wk.set_defaults(handler=cmd_walk)

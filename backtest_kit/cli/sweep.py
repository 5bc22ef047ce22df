"""The `sweep` command: a grid or an Optuna search of a strategy factory's parameters (`bk.Sweep`).

    backtest-kit sweep                                        # the demo's fast=5,10,20 x slow=30,60
    backtest-kit sweep --param fast=5,10 --param slow=30,60 --folds 3 --metric total_pnl
    backtest-kit sweep my_strategies.py:make_strategy --optuna 50 --param fast=5..30 --param tp=0.5..2.0 --seed 1

`--param NAME=V1,V2,...` lists values (each an int, a float, true/false or a string);
`--param NAME=LOW..HIGH[:STEP]` is a range, both ends included: whole numbers when LOW and HIGH are
whole, else real numbers (a grid needs a STEP for those, Optuna does not). The strategy is a factory
`make_strategy(**params) -> get_signal` named as `file.py[:function]` or `pkg.module[:function]`
(default function `make_strategy`; default strategy the bundled demo's). Data and frame are chosen as
for `backtest`: the `--data` CSVs (the bundled week by default), `--from/--to` (default: the data after
`--warmup` minutes). Reports go to `<dump-dir>/sweep/<name>.md`, `.csv` and `.png`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
from datetime import timedelta
from pathlib import Path
from types import ModuleType
from typing import Any, TextIO

from ..adapters import CsvCandles, bundled_sample_path
from ..adapters.candles import resolve_sample_name
from ..research.grid import FloatRange, IntRange, ParamSpec
from ..research.optuna_search import import_optuna
from ..research.sweep import Sweep
from ..research.sweep_report import SweepResult
from ..research.walk_forward import WalkForward
from ..system.engine import Engine
from .common import PROG, emit_json, print_files, stdout_to_stderr, strategy_spec
from .job_progress import make_job_progress
from .loader import CliError, _import_file, _import_module, utc
from .outcome import Interrupt, until_done, write_line
from .render import print_summary

__all__ = [
    "DEFAULT_FACTORY",
    "DEFAULT_GRID",
    "add_data_arguments",
    "cmd_sweep",
    "load_factory",
    "param_item",
    "register_data",
]

DEFAULT_FACTORY = "backtest_kit.demo:make_strategy"
DEFAULT_GRID: dict[str, ParamSpec] = {"fast": [5, 10, 20], "slow": [30, 60]}
SWEEP_FRAME = "sweep-frame"
SWEEP_EXCHANGE = "csv"
_RANGE = re.compile(r"^\s*(?P<low>[^.:]+(?:\.\d+)?)\s*\.\.\s*(?P<high>[^:]+?)\s*(?::\s*(?P<step>\S+))?\s*$")
_INT = re.compile(r"^[+-]?\d+$")


def _scalar(text: str) -> Any:
    value = text.strip()
    if value.lower() in ("true", "false"):
        return value.lower() == "true"
    if _INT.match(value):
        return int(value)
    try:
        return float(value)
    except ValueError:
        return value


def _number(text: str, param: str, original: str) -> int | float:
    value = _scalar(text)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise argparse.ArgumentTypeError(f"--param {param}: {text.strip()!r} is not a number in {original!r}")
    return value


def param_item(text: str) -> tuple[str, ParamSpec]:
    """`NAME=V1,V2,...` or `NAME=LOW..HIGH[:STEP]` (see the module docstring); a usage error otherwise."""
    name, sep, raw = text.partition("=")
    name = name.strip()
    if not sep or not name.isidentifier() or not raw.strip():
        raise argparse.ArgumentTypeError(
            f"--param: expected NAME=V1,V2,... or NAME=LOW..HIGH[:STEP] (e.g. fast=5,10,20 or fast=5..20), got {text!r}"
        )
    ranged = _RANGE.match(raw) if ".." in raw else None
    if ranged is None:
        if ".." in raw:
            raise argparse.ArgumentTypeError(f"--param {name}: expected LOW..HIGH[:STEP], got {raw!r}")
        values = [v for v in raw.split(",")]
        if any(not v.strip() for v in values):
            raise argparse.ArgumentTypeError(f"--param {name}: an empty value in {raw!r}")
        return name, [_scalar(v) for v in values]
    low, high = _number(ranged["low"], name, raw), _number(ranged["high"], name, raw)
    step = None if ranged["step"] is None else _number(ranged["step"], name, raw)
    try:
        if isinstance(low, int) and isinstance(high, int) and (step is None or isinstance(step, int)):
            return name, IntRange(low, high, 1 if step is None else step)
        return name, FloatRange(float(low), float(high), None if step is None else float(step))
    except Exception as exc:  # SchemaError naming the field: say which --param
        raise argparse.ArgumentTypeError(f"--param {name}={raw}: {exc}") from None


def load_factory(spec: str | None) -> Any:
    """The factory `spec` names: `file.py[:function]` or `pkg.module[:function]` (default `make_strategy`)."""
    spec = spec or DEFAULT_FACTORY
    target, sep, attr = spec.rpartition(":")
    if not sep or not target or "/" in attr or "\\" in attr:
        target, attr = spec, ""
    is_file = target.endswith(".py") or os.sep in target or "/" in target or Path(target).is_file()
    module: ModuleType = _import_file(Path(target)) if is_file else _import_module(target)
    attr = attr or "make_strategy"
    factory = getattr(module, attr, None)
    if factory is None or not callable(factory):
        raise CliError(f"{target} has no strategy factory {attr!r} (a function params -> get_signal); "
                       f"name it as {target}:<function>")
    return factory


def _walk_forward(args: argparse.Namespace) -> WalkForward | None:
    if args.folds is not None:
        if args.train_days is not None or args.test_days is not None:
            raise CliError("give either --folds or --train-days with --test-days, not both")
        return WalkForward(folds=args.folds, anchored=args.anchored)
    if args.train_days is None and args.test_days is None:
        if args.anchored:
            raise CliError("--anchored needs --folds or --train-days/--test-days")
        return None
    if args.train_days is None or args.test_days is None:
        raise CliError("--train-days and --test-days go together")
    return WalkForward(train_days=args.train_days, test_days=args.test_days, anchored=args.anchored)


def register_data(engine: Engine, args: argparse.Namespace) -> list[str]:
    """Register the data's exchange and the frame; returns the symbols to sweep."""
    for path in args.data:
        if not resolve_sample_name(path).is_file():
            raise CliError(f"data file not found: {path}")
    paths: list[str] = list(args.data) or [str(bundled_sample_path())]
    source = CsvCandles(paths[0]) if len(paths) == 1 else CsvCandles(paths)
    engine.add_exchange(exchange_name=SWEEP_EXCHANGE, get_candles=source)
    symbols: list[str] = list(args.symbol) or [source.symbols[0]]
    for symbol in symbols:
        if symbol not in source.symbols:
            raise CliError(f"symbol {symbol!r} is not in the data (symbols: {', '.join(source.symbols)})")
    first = max(source.first_timestamp(s) for s in symbols)
    last = min(source.last_timestamp(s) for s in symbols)
    start = args.start or utc(first) + timedelta(minutes=args.warmup)
    end = args.end or utc(last)
    if end <= start:
        raise CliError(f"the frame ends before it starts: --from {start.isoformat()} --to {end.isoformat()}")
    engine.add_frame(frame_name=SWEEP_FRAME, interval=args.frame_interval, start_date=start, end_date=end)
    return symbols


def _space(args: argparse.Namespace, default_strategy: bool) -> dict[str, ParamSpec]:
    if not args.param:
        if default_strategy:
            return dict(DEFAULT_GRID)
        raise CliError("give the parameters to sweep with --param NAME=V1,V2 (or NAME=LOW..HIGH with --optuna)")
    space: dict[str, ParamSpec] = {}
    for name, spec in args.param:
        if name in space:
            raise CliError(f"--param {name} is given twice")
        space[name] = spec
    return space


async def cmd_sweep(args: argparse.Namespace) -> int:
    engine = Engine(dump_dir=args.dump_dir)
    try:
        with stdout_to_stderr(args.json):
            if args.config:
                engine.set_config(dict(args.config))
            spec = strategy_spec(args)
            factory = load_factory(spec)
            space = _space(args, spec is None)
            if args.optuna is not None:
                try:
                    optuna = import_optuna()
                except ImportError as exc:
                    raise CliError(str(exc)) from None
                if not args.verbose:
                    optuna.logging.set_verbosity(optuna.logging.WARNING)
            symbols = register_data(engine, args)
            sweep = Sweep(
                factory, space, symbols=symbols, exchange_name=SWEEP_EXCHANGE, frames=SWEEP_FRAME,
                interval=args.interval, metric=args.metric, walk_forward=_walk_forward(args), optuna=args.optuna,
                sampler=args.sampler, seed=args.seed, executor=args.executor, engine=engine, name=args.name,
            )
            progress = make_job_progress(f"sweep {args.name or getattr(factory, '__name__', 'strategy')}",
                                         enabled=not args.no_progress)
            sweep.listen_progress(progress)
            task = asyncio.ensure_future(sweep.run())
            with Interrupt(sweep.stop, abandon=task.cancel) as interrupt:
                try:
                    await until_done(task)
                finally:
                    progress.close()
            result = sweep.result
            if result is None:  # abandoned before anything was planned
                raise CliError("the sweep was abandoned before it started")
            files = {} if args.no_dump else result.dump(args.dump_dir, plot=not args.no_plot).to_dict()
    finally:
        await engine.close()
    interrupted = result.interrupted or interrupt.received > 0
    if args.json:
        emit_json({"command": "sweep", **result.to_dict(), "files": files})
    else:
        _print_result(result, sys.stdout)
        print_files(files, sys.stdout)
    if result.finished_jobs and result.failed_jobs == result.finished_jobs:
        first = next((r for r in result.rows if r.error), None)
        write_line(f"{PROG}: every job of the sweep failed ({result.failed_jobs}); the first: "
                   f"{None if first is None else first.error}")
        return 1
    if interrupted:
        write_line(f"{PROG}: interrupted: the report covers the {result.finished_jobs} jobs that finished")
        return 130
    return 0


def _fmt(value: float | None) -> str:
    return "N/A" if value is None else f"{value:.4f}"


def _params(params: Any) -> str:
    return "N/A" if params is None else ", ".join(f"{k}={v}" for k, v in params.items())


def _print_result(result: SweepResult, out: TextIO) -> None:
    rows = [
        ("Metric", result.metric),
        ("Jobs", f"{result.finished_jobs} of {result.total_jobs} finished, {result.failed_jobs} failed "
                 f"({result.executor}, {result.elapsed_seconds:.2f}s)"),
        ("Best parameters", f"{_params(result.best)} (score {_fmt(result.best_score)})"),
    ]
    if result.walk_forward:
        for s in result.splits:
            rows.append((f"Split {s.split}", f"{_params(s.params)}: in-sample {_fmt(s.in_sample)}, "
                                             f"out-of-sample {_fmt(s.out_of_sample)} (test {s.test})"))
    for i, r in enumerate(result.ranking[:10]):
        failed = f" ({r.errors} failed)" if r.errors else ""
        rows.append((f"#{i + 1}", f"{_params(r.params)}: {_fmt(r.score)}{failed}"))
    print_summary(f"Sweep {result.name} ({result.search}, {len(result.rows)} runs)", rows, out)


def add_data_arguments(group: Any, when: Any, positive_int: Any, frame_intervals: Any, *, symbol_help: str) -> None:
    """The data and frame options `sweep` and `walk` share (`register_data` reads them)."""
    group.add_argument("--data", action="append", default=[], metavar="CSV",
                       help="1m candle CSV, repeatable (default: the bundled BTCUSDT week)")
    group.add_argument("--symbol", action="append", default=[], metavar="SYMBOL", help=symbol_help)
    group.add_argument("--from", dest="start", type=when, metavar="ISO", help="frame start (UTC)")
    group.add_argument("--to", dest="end", type=when, metavar="ISO", help="frame end (UTC)")
    group.add_argument("--warmup", type=positive_int, default=60, metavar="MINUTES",
                       help="minutes of data skipped before the frame when --from is not given (default 60)")
    group.add_argument("--frame-interval", default="1m", choices=list(frame_intervals), metavar="INTERVAL",
                       help="tick spacing of the frame (default 1m)")


def add_sweep_parser(sub: Any, when: Any, config_item: Any, positive_int: Any, intervals: Any,
                     frame_intervals: Any) -> None:
    """The `sweep` subcommand's options (called by `arguments.build_parser`, which owns the shared types)."""
    from ..research.executors import EXECUTOR_NAMES
    from ..research.ranking import METRICS

    sw = sub.add_parser("sweep", help="sweep a strategy factory's parameters (grid or Optuna, walk-forward)",
                        description="Backtest a strategy factory over a grid or an Optuna search of its "
                                    "parameters, optionally with walk-forward splits, and rank the results.")
    g = sw.add_argument_group("strategy and parameters")
    g.add_argument("strategy_pos", nargs="?", metavar="FACTORY",
                   help="file.py[:function] or pkg.module[:function], a factory params -> get_signal "
                        "(default: backtest_kit.demo:make_strategy)")
    g.add_argument("--strategy", "-s", dest="strategy", metavar="SPEC", help="same as FACTORY")
    g.add_argument("--param", "-p", type=param_item, action="append", default=[], metavar="NAME=VALUES",
                   help="repeatable: NAME=V1,V2,... or NAME=LOW..HIGH[:STEP] (default with the demo: "
                        "fast=5,10,20 slow=30,60)")
    g.add_argument("--optuna", type=int, metavar="N", help="search with Optuna, N trials per split (optuna extra)")
    g.add_argument("--sampler", default="tpe", choices=["tpe", "random", "cmaes", "qmc"], help="Optuna sampler")
    g.add_argument("--seed", type=int, help="Optuna seed: the same trials on every run")
    g.add_argument("--metric", default="sharpe_ratio", choices=list(METRICS), metavar="METRIC",
                   help=f"what ranks the parameter sets (default sharpe_ratio; one of {', '.join(METRICS)})")
    g.add_argument("--interval", default="5m", choices=intervals, help="get_signal throttle (default 5m)")
    g.add_argument("--config", "-c", type=config_item, action="append", default=[], metavar="KEY=VALUE",
                   help="engine setting for every job, repeatable")
    d = sw.add_argument_group("data, frame and walk-forward")
    add_data_arguments(d, when, positive_int, frame_intervals,
                       symbol_help="repeatable (default: the data's first symbol)")
    d.add_argument("--train-days", type=float, metavar="DAYS", help="walk-forward: train window length")
    d.add_argument("--test-days", type=float, metavar="DAYS", help="walk-forward: test window length")
    d.add_argument("--folds", type=int, metavar="K", help="walk-forward: K splits of K+1 equal segments")
    d.add_argument("--anchored", action="store_true", help="walk-forward: train windows start at the frame start")
    o = sw.add_argument_group("execution and output")
    o.add_argument("--executor", default="local", choices=list(EXECUTOR_NAMES),
                   help="where jobs run: local (process pool, default), ray, sequential (this process)")
    o.add_argument("--name", help="report name (default: the factory's name)")
    o.add_argument("--json", action="store_true", help="print one JSON document (rows, splits, ranking, best)")
    o.add_argument("--dump-dir", default="dump", metavar="DIR", help="reports go to DIR/sweep/ (default ./dump)")
    o.add_argument("--no-dump", action="store_true", help="write no report files")
    o.add_argument("--no-plot", action="store_true", help="no PNG chart even when matplotlib is installed")
    o.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    o.add_argument("--verbose", "-v", action="store_true", help="show the engine's (and Optuna's) log on stderr")
    o.add_argument("--debug", action="store_true", help="show the full traceback when the sweep fails")
    sw.set_defaults(handler=cmd_sweep)

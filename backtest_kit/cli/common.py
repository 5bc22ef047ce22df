"""What the CLI's commands share: config and strategy arguments, stdout under `--json`, report files.

Split out of `app.py`: the run commands (`run.py`) and the report command (`report.py`) both write
JSON documents and name report files and charts; the helpers they share live here so that neither
command module imports the other.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

import msgspec

from ..reports.plots import equity_png_path
from .loader import CliEngine, CliError, Target

__all__ = ["PROG", "apply_config", "dump_reports", "emit_json", "print_files", "stdout_to_stderr", "strategy_spec"]

PROG = "backtest-kit"


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

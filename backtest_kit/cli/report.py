"""`backtest-kit report`: list the reports a run dumped, or print the one named.

Split out of `app.py`: this command reads the dump directory only (no engine, no strategy), and its
name matching (full name, file name, or strategy alone when that names one report) is its own job.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .common import PROG, _linked_chart, _path, emit_json
from .loader import CliError

__all__ = ["cmd_report"]


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

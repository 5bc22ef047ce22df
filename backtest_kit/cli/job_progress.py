"""Progress of a batch of research jobs (a sweep, a walk) on stderr: finished of total jobs, failures, ETA.

Separate from `render.py`'s backtest bar, which counts frames and trades of one run: here the unit is
a whole backtest. rich draws the bar on a terminal (the `cli` extra); otherwise one plain line per
10 % step (and the last), so a log or CI output stays short.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Any, Protocol, TextIO

from .render import format_seconds, rich_available

__all__ = ["JobCount", "JobProgress", "JobTally", "make_job_progress"]


class JobCount(Protocol):
    """What the bar shows: a `SweepProgress`, or a `JobTally` of a walk."""

    @property
    def finished(self) -> int: ...
    @property
    def total(self) -> int: ...
    @property
    def failed(self) -> int: ...
    @property
    def progress(self) -> float: ...


@dataclass
class JobTally:
    """A running count of finished jobs (the walk command's strategies), in the shape of `JobCount`."""

    total: int
    finished: int = 0
    failed: int = 0

    @property
    def progress(self) -> float:
        return self.finished / self.total if self.total else 1.0


class JobProgress(Protocol):
    def __call__(self, event: JobCount) -> None: ...
    def close(self) -> None: ...


class _Null:
    def __call__(self, event: JobCount) -> None:
        pass

    def close(self) -> None:
        pass


class _Plain:
    def __init__(self, label: str, stream: TextIO) -> None:
        self.label = label
        self.stream = stream
        self.started = time.monotonic()
        self.last_decile = -1

    def __call__(self, event: JobCount) -> None:
        decile = int(event.progress * 10)
        if decile == self.last_decile and event.finished < event.total:
            return
        self.last_decile = decile
        elapsed = time.monotonic() - self.started
        eta = elapsed / event.progress * (1 - event.progress) if event.progress > 0 else float("inf")
        self.stream.write(f"{self.label}: {event.finished}/{event.total} jobs ({event.progress * 100:3.0f}%), "
                          f"{event.failed} failed  {format_seconds(elapsed)} < {format_seconds(eta)}\n")
        self.stream.flush()

    def close(self) -> None:
        pass


class _Rich:
    def __init__(self, label: str) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TaskProgressColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.progress: Any = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), TaskProgressColumn(), MofNCompleteColumn(),
            TextColumn("jobs  {task.fields[failed]} failed"), TimeElapsedColumn(), TextColumn("ETA"),
            TimeRemainingColumn(), console=Console(stderr=True), refresh_per_second=10,
        )
        self.task: Any = self.progress.add_task(label, total=None, failed=0)
        self.progress.start()

    def __call__(self, event: JobCount) -> None:
        self.progress.update(self.task, total=event.total, completed=event.finished, failed=event.failed)

    def close(self) -> None:
        self.progress.stop()


def make_job_progress(label: str, *, enabled: bool, stream: TextIO = sys.stderr) -> JobProgress:
    """rich on a terminal, plain lines otherwise, or nothing."""
    if not enabled:
        return _Null()
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):
        tty = False
    if tty and stream is sys.stderr and rich_available():
        try:
            return _Rich(label)
        except Exception:  # a broken terminal or rich version: plain text still works
            pass
    return _Plain(label, stream)

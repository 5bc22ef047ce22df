"""What a sweep gives back: its rows, the choice made on each split, the ranking and the progress events.

Plain frozen dataclasses, separate from the code that runs a sweep (`sweep.py`) and from the result
as a whole with its files (`sweep_report.py`), so each of those imports these and not the other.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from ..reports.stats import Statistics
from ..system.jobs import JobResult
from .walk_forward import Window

__all__ = [
    "RankedParams",
    "SplitChoice",
    "SweepProgress",
    "SweepRow",
    "error_summary",
]


def error_summary(error: str | None) -> str | None:
    """The last line of a job's traceback text: the exception that stopped it, with its message."""
    if error is None:
        return None
    lines = [line for line in error.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else error


@dataclass(frozen=True)
class SweepRow:
    """One parameter set on one symbol in one split of one frame.

    `in_sample` is the metric on the split's train window (the whole frame without walk-forward);
    `out_of_sample` the metric on its test window, measured only for the parameter set chosen on
    the train window (`chosen`), else None. `error` is the failed job's exception line (its full text
    in `error_traceback`); a row with an error has no figures. `trial` is the Optuna trial number.
    """

    params: Mapping[str, Any]
    symbol: str
    frame: str
    split: int | None
    train: Window
    test: Window | None
    metric: str
    in_sample: float | None
    out_of_sample: float | None = None
    trades_in_sample: int | None = None
    trades_out_of_sample: int | None = None
    chosen: bool = False
    error: str | None = None
    trial: int | None = None
    error_traceback: str | None = field(default=None, repr=False)
    in_sample_stats: Statistics | None = field(default=None, repr=False, compare=False)
    out_of_sample_stats: Statistics | None = field(default=None, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        """The row as JSON-ready builtins (no statistics objects, no traceback)."""
        return {
            "params": dict(self.params),
            "symbol": self.symbol,
            "frame": self.frame,
            "split": self.split,
            "train_start": self.train.start.isoformat(),
            "train_end": self.train.end.isoformat(),
            "test_start": None if self.test is None else self.test.start.isoformat(),
            "test_end": None if self.test is None else self.test.end.isoformat(),
            "trial": self.trial,
            "metric": self.metric,
            "in_sample": self.in_sample,
            "out_of_sample": self.out_of_sample,
            "trades_in_sample": self.trades_in_sample,
            "trades_out_of_sample": self.trades_out_of_sample,
            "chosen": self.chosen,
            "error": self.error,
        }


@dataclass(frozen=True)
class SplitChoice:
    """The parameter set chosen on one split's train window and how it did on the test window.

    `in_sample` / `out_of_sample` are the metric's mean over the symbols; a large gap between them is
    what overfitting looks like. `params` is None when every candidate failed on the train window.
    """

    frame: str
    split: int | None
    train: Window
    test: Window | None
    params: Mapping[str, Any] | None
    in_sample: float | None
    out_of_sample: float | None
    candidates: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "frame": self.frame,
            "split": self.split,
            "train_start": self.train.start.isoformat(),
            "train_end": self.train.end.isoformat(),
            "test_start": None if self.test is None else self.test.start.isoformat(),
            "test_end": None if self.test is None else self.test.end.isoformat(),
            "params": None if self.params is None else dict(self.params),
            "in_sample": self.in_sample,
            "out_of_sample": self.out_of_sample,
            "candidates": self.candidates,
        }


@dataclass(frozen=True)
class RankedParams:
    """A parameter set's standing over the whole sweep: `score` is its mean in-sample metric over every
    symbol and split it ran on (None when it failed anywhere or never had the figure, ranking last);
    `out_of_sample` the mean over the test windows where it was the choice."""

    params: Mapping[str, Any]
    score: float | None
    out_of_sample: float | None
    runs: int
    errors: int

    def to_dict(self) -> dict[str, Any]:
        return {"params": dict(self.params), "score": self.score, "out_of_sample": self.out_of_sample,
                "runs": self.runs, "errors": self.errors}


@dataclass(frozen=True)
class SweepProgress:
    """A sweep job finished: `finished` of `total` jobs so far (`failed` of them with an error).

    `phase` is "in_sample" for train-window (or whole-frame) jobs and "out_of_sample" for test-window
    jobs. `total` is known up front; it shrinks when a split has no parameter set to test.
    """

    name: str
    finished: int
    total: int
    failed: int
    phase: Literal["in_sample", "out_of_sample"]
    result: JobResult

    @property
    def progress(self) -> float:
        return self.finished / self.total if self.total else 1.0


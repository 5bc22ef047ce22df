"""Walk-forward splits: a frame cut into consecutive (train, test) windows.

Parameters are chosen on a train window and scored on the test window that follows it, never on
data the choice has seen, so the out-of-sample figures show how much of the in-sample figure was
overfitting. Two ways to cut a frame (`WalkForward`):

- `train_days=N, test_days=M`: a train window of N days, then a test window of M days; the next
  split starts M days later (rolling), so the test windows tile the frame after the first train
  window. A tail shorter than a whole test window is left out.
- `folds=k`: the frame cut into k + 1 equal segments; split i trains on segment i and tests on
  segment i + 1.

`anchored=True` keeps every train window's start at the frame start (an expanding window) instead.

A `Window` is half-open, `[start, end)`: its backtest ticks from `start` to the last frame step
before `end` and is given only candles that closed by `end` (`windowed.clip_candles`), so not even
the fast-forward of a position still open at the end can read the next window's prices. Window
bounds fall on the frame's tick grid (start + a whole number of frame steps), so a window's ticks
are ticks of the frame.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime

from ..engine.errors import SchemaError

__all__ = ["Split", "WalkForward", "Window"]

_DAY_MS = 86_400_000


def _ms(when: datetime) -> int:
    return int(when.timestamp() * 1000)


def _dt(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


@dataclass(frozen=True)
class Window:
    """The half-open time range `[start, end)` of one backtest of a split."""

    start: datetime
    end: datetime

    @property
    def start_ms(self) -> int:
        return _ms(self.start)

    @property
    def end_ms(self) -> int:
        return _ms(self.end)

    def __str__(self) -> str:
        fmt = "%Y-%m-%d %H:%M"
        return f"{self.start.strftime(fmt)} .. {self.end.strftime(fmt)}"


@dataclass(frozen=True)
class Split:
    """Split `index`: parameters chosen on `train` are scored on `test`, which starts at or after
    `train.end` (`test` is None for a sweep without walk-forward: the whole frame is in-sample)."""

    index: int
    train: Window
    test: Window | None


def _positive(label: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        raise SchemaError(f"walk_forward.{label}: expected a positive number of days, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class WalkForward:
    """How to cut a frame: `train_days` + `test_days`, or `folds`; `anchored` for expanding train windows."""

    train_days: float | None = None
    test_days: float | None = None
    folds: int | None = None
    anchored: bool = False

    def __post_init__(self) -> None:
        if self.folds is not None:
            if self.train_days is not None or self.test_days is not None:
                raise SchemaError("walk_forward: give either folds or train_days + test_days, not both")
            if isinstance(self.folds, bool) or not isinstance(self.folds, int) or self.folds < 1:
                raise SchemaError(f"walk_forward.folds: expected a whole number >= 1, got {self.folds!r}")
            return
        if self.train_days is None or self.test_days is None:
            raise SchemaError(
                f"walk_forward: give train_days and test_days (or folds), got train_days={self.train_days!r} "
                f"test_days={self.test_days!r}"
            )
        _positive("train_days", self.train_days)
        _positive("test_days", self.test_days)

    def splits(self, start: datetime, end: datetime, step_ms: int) -> list[Split]:
        """The splits of the span `[start, end)` on a grid of `step_ms` (the frame interval)."""
        if step_ms <= 0:
            raise SchemaError(f"walk_forward: the frame step must be positive, got {step_ms} ms")
        first, last = _ms(start), _ms(end)
        units = (last - first) // step_ms  # whole frame steps in the span
        bounds = self._bounds(units, step_ms, start, end)
        return [
            Split(i, Window(_dt(first + a * step_ms), _dt(first + b * step_ms)),
                  Window(_dt(first + b * step_ms), _dt(first + c * step_ms)))
            for i, (a, b, c) in enumerate(bounds)
        ]

    def _bounds(self, units: int, step_ms: int, start: datetime, end: datetime) -> list[tuple[int, int, int]]:
        """(train start, train end = test start, test end) of each split, in frame steps from the start."""
        span = f"{start.isoformat()} .. {end.isoformat()}"
        if self.folds is not None:
            segment = units // (self.folds + 1)
            if segment < 1:
                raise SchemaError(f"walk_forward.folds: {self.folds} folds need {self.folds + 1} segments of at "
                                  f"least one frame step, but the frame {span} has {units} steps")
            return [(0 if self.anchored else i * segment, (i + 1) * segment, (i + 2) * segment)
                    for i in range(self.folds)]
        assert self.train_days is not None and self.test_days is not None
        train = round(self.train_days * _DAY_MS) // step_ms
        test = round(self.test_days * _DAY_MS) // step_ms
        if train < 1 or test < 1:
            raise SchemaError(f"walk_forward: train_days={self.train_days} and test_days={self.test_days} must "
                              f"each be at least one frame step ({step_ms // 60_000} min)")
        if train + test > units:
            raise SchemaError(f"walk_forward: train_days={self.train_days} + test_days={self.test_days} do not fit "
                              f"in the frame {span} ({units * step_ms / _DAY_MS:.2f} days)")
        count = (units - train) // test
        return [(0 if self.anchored else k * test, train + k * test, train + (k + 1) * test) for k in range(count)]

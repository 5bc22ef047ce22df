"""Research at scale: many backtests (Sweep, Walker jobs) run by an executor — in this process, a local
process pool or a Ray cluster — all through the `system.jobs` contract, so results do not depend on
where they ran."""

from __future__ import annotations

from .executors import EXECUTOR_NAMES, SequentialExecutor, make_executor
from .grid import FloatRange, IntRange
from .local_pool import LocalExecutor
from .ranking import LOWER_IS_BETTER, METRICS
from .ray_executor import RayExecutor
from .sweep import Sweep
from .sweep_models import RankedParams, SplitChoice, SweepProgress, SweepRow
from .sweep_report import SweepFiles, SweepResult
from .walk_forward import Split, WalkForward, Window
from .windowed import clip_candles

__all__ = [
    "EXECUTOR_NAMES",
    "LOWER_IS_BETTER",
    "METRICS",
    "FloatRange",
    "IntRange",
    "LocalExecutor",
    "RankedParams",
    "RayExecutor",
    "SequentialExecutor",
    "Split",
    "SplitChoice",
    "Sweep",
    "SweepFiles",
    "SweepProgress",
    "SweepResult",
    "SweepRow",
    "WalkForward",
    "Window",
    "clip_candles",
    "make_executor",
]

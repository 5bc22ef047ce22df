"""Research at scale: many backtests (Sweep, Walker jobs) run by an executor — in this process, a local
process pool or a Ray cluster — all through the `system.jobs` contract, so results do not depend on
where they ran."""

from __future__ import annotations

from .executors import EXECUTOR_NAMES, SequentialExecutor, make_executor
from .local_pool import LocalExecutor
from .ray_executor import RayExecutor

__all__ = ["EXECUTOR_NAMES", "LocalExecutor", "RayExecutor", "SequentialExecutor", "make_executor"]

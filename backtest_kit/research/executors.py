"""Executors by name, and the sequential one (this process, one job after the other).

`make_executor("sequential" | "local" | "ray", **options)` is how Walker, Sweep and the CLI pick where
jobs run; an `Executor` object may be passed instead of a name. The sequential executor is the
reference the others are tested against: the same jobs give the same statistics everywhere.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any, Final

from ..system.job_worker import run_job_async
from ..system.jobs import BacktestJob, Executor, JobResult, register_executor, resolve_executor
from .local_pool import LocalExecutor
from .ray_executor import RayExecutor

__all__ = ["EXECUTOR_NAMES", "SequentialExecutor", "make_executor"]


class SequentialExecutor:
    """Runs every job in this process, on this event loop, one after the other (no extra service,
    no pickling: closures and lambdas work here and only here)."""

    name = "sequential"

    async def run(self, jobs: Sequence[BacktestJob]) -> AsyncIterator[JobResult]:
        for job in jobs:
            yield await run_job_async(job)

    async def aclose(self) -> None:
        return None


for _name, _factory in (
    ("sequential", SequentialExecutor),
    ("local", LocalExecutor),  # options: max_workers, max_tasks_per_child, start_method
    # options: address, num_cpus, max_retries, init_options, lean_start (Ray is imported on the first run)
    ("ray", RayExecutor),
):
    register_executor(_name, _factory)

EXECUTOR_NAMES: Final = ("sequential", "local", "ray")


def make_executor(executor: str | Executor, **options: Any) -> Executor:
    """The executor called `executor` (built with `options`), or `executor` itself when it is one."""
    return resolve_executor(executor, **options)

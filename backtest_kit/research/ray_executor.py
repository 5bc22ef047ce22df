"""The "ray" executor: jobs as Ray tasks, on this machine or on a Ray cluster (`pip install backtest-kit[ray]`).

- `address=None` starts a private local Ray (a lean one, 1.5-2.8 s sooner here: no autoscaler monitor,
  no API server with the dashboard off, a quick wait for the raylet, no log monitor when
  `init_options={"log_to_driver": False}`; `research/ray_start.py`, `lean_start=False` for Ray's
  stock start-up), or joins the cluster the `RAY_ADDRESS` environment
  variable names (so `RAY_ADDRESS=auto backtest-kit sweep --executor ray` joins a Ray kept running
  with `ray start --head`: sweeps then skip Ray's seconds of start-up); `"auto"` joins the cluster
  started on this node with `ray start`; `"ray://head:10001"` connects as a Ray
  client. If Ray is already initialised in this process the executor uses it as it is and never
  shuts it down; it shuts down only a Ray it started itself (in `aclose()`).
- Candle data travels through Ray's object store, once per distinct exchange: each exchange schema
  of a submission is `ray.put` once and tasks receive the reference, and a worker keeps what it has
  fetched, so it deserialises a data set once however many jobs it runs. A `CsvCandles` is shipped
  as its candles (`in_memory()`), not its paths, so nodes need no copy of the files; candles pickle
  as typed columns (`adapters/candle_transfer.py`: 90 days of two symbols put in ~0.1 s, not ~0.8 s).
- Ray pickles tasks with cloudpickle, which also handles lambdas and closures; the local executor's
  module-level rule is still the portable choice (the same jobs then run everywhere).
- A job that raises yields a `JobResult` with `error`; a worker that dies does too (tasks are not
  retried by default, since a backtest that kills its worker will do it again: `max_retries=`).
  Closing the iterator cancels the tasks not finished (`ray.cancel`) and keeps what was yielded.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import os
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import nullcontext
from typing import Any, Final, cast

from ..adapters.candles import CsvCandles
from ..engine.errors import SchemaError
from ..engine.redact import redact
from ..engine.registry import ExchangeSchema
from ..system.job_worker import run_job
from ..system.jobs import BacktestJob, JobResult
from .ray_start import lean_ray_start

__all__ = ["RayExecutor"]

_WORKER_EXCHANGES: dict[str, ExchangeSchema] = {}
"""Per Ray worker process: exchange schemas fetched from the object store, by object id."""
_WORKER_EXCHANGES_MAX: Final = 16


def _import_ray() -> Any:
    try:
        return importlib.import_module("ray")
    except ImportError as exc:
        raise SchemaError(
            "the ray executor needs Ray: pip install 'backtest-kit[ray]' (or use executor='local')"
        ) from exc


def _run_on_worker(job: BacktestJob, exchange_ref: list[Any]) -> JobResult:
    """The Ray task: the job's exchange comes from the object store (fetched once per worker).

    The reference is wrapped in a list so that Ray passes the reference instead of resolving (and
    deserialising) the object again for every task.
    """
    ray = _import_ray()
    ref = exchange_ref[0]
    key = ref.hex()
    exchange = _WORKER_EXCHANGES.get(key)
    if exchange is None:
        exchange = ray.get(ref)
        while len(_WORKER_EXCHANGES) >= _WORKER_EXCHANGES_MAX:
            del _WORKER_EXCHANGES[next(iter(_WORKER_EXCHANGES))]
        _WORKER_EXCHANGES[key] = exchange
    return run_job(dataclasses.replace(job, exchange=exchange))


def _for_the_object_store(exchange: ExchangeSchema) -> ExchangeSchema:
    """The exchange as sent to Ray: a CSV source travels as its candles (nodes may lack the files)."""
    source = exchange.get_candles
    if isinstance(source, CsvCandles):
        return dataclasses.replace(exchange, get_candles=source.in_memory())
    return exchange


def _error_result(job: BacktestJob, text: str) -> JobResult:
    return JobResult(
        job_id=job.job_id, symbol=job.symbol, strategy_name=job.strategy.strategy_name,
        frame_name=job.frame.frame_name, params=dict(job.params), error=redact(text),
    )


class RayExecutor:
    """Runs jobs as Ray tasks (one CPU each) wherever `address` points; see the module notes."""

    name = "ray"

    def __init__(
        self,
        address: str | None = None,
        *,
        num_cpus: int | None = None,
        max_retries: int = 0,
        init_options: Mapping[str, Any] | None = None,
        lean_start: bool = True,
    ) -> None:
        if num_cpus is not None and (isinstance(num_cpus, bool) or not isinstance(num_cpus, int) or num_cpus < 1):
            raise SchemaError(f"ray executor: num_cpus must be a positive integer or None, got {num_cpus!r}")
        if num_cpus is not None and address is not None:
            raise SchemaError("ray executor: num_cpus= sizes a local Ray; a cluster at address= has its own CPUs")
        self.address = address
        self.num_cpus = num_cpus
        self.max_retries = max_retries
        self.init_options = dict(init_options or {})
        self.lean_start = lean_start
        self.lean_parts: tuple[str, ...] = ()
        """The parts of the lean start applied when this executor started its local Ray (`LEAN_PARTS`)."""
        self.started_ray = False
        """Whether this executor called `ray.init` (and so shuts Ray down in `aclose`)."""
        self._remote: Any = None

    def _ensure_ray(self) -> Any:
        ray = _import_ray()
        if not ray.is_initialized():
            options: dict[str, Any] = {"include_dashboard": False, **self.init_options}
            joins = self.address is not None or bool(os.environ.get("RAY_ADDRESS"))
            if self.num_cpus is not None:
                if joins:  # ray.init would refuse with a message that does not name the variable
                    raise SchemaError(
                        f"ray executor: num_cpus={self.num_cpus} sizes a local Ray, but RAY_ADDRESS="
                        f"{os.environ.get('RAY_ADDRESS')!r} joins a running one (its CPUs are its own); "
                        "drop one of them"
                    )
                options["num_cpus"] = self.num_cpus
            if not joins:
                # A local Ray started for this sweep: its workers run at normal priority. Ray's default
                # (nice 15) makes them yield every core to any other process, which on a laptop or CI
                # box halved the sweep's speed (measured: 0.80x of sequential at nice 15, 1.29x at 0).
                system_config = dict(options.get("_system_config") or {})
                system_config.setdefault("worker_niceness", 0)
                options["_system_config"] = system_config
            lean = self.lean_start and not joins
            forwards_output = options.get("log_to_driver") is not False
            with lean_ray_start(log_to_driver=forwards_output) if lean else nullcontext(()) as parts:
                ray.init(address=self.address, **options)
            self.lean_parts = parts
            self.started_ray = True
        if self._remote is None:
            self._remote = ray.remote(num_cpus=1, max_retries=self.max_retries)(_run_on_worker)
        return ray

    async def aclose(self) -> None:
        """Shut Ray down if this executor started it; a Ray initialised by the caller stays up."""
        if self.started_ray:
            self.started_ray = False
            self._remote = None
            ray = _import_ray()
            await asyncio.to_thread(ray.shutdown)

    async def run(self, jobs: Sequence[BacktestJob]) -> AsyncIterator[JobResult]:
        """Submit every job, then yield results as tasks complete.

        Ray is started (or joined) on the calling thread, not in a worker thread: `ray.init` installs
        its SIGTERM handler (which shuts the local Ray down with the process) only on the main thread.
        """
        ray = self._ensure_ray()
        exchange_refs: dict[int, tuple[ExchangeSchema, Any]] = {}  # id(schema) -> (schema kept alive, ref)
        pending: dict[asyncio.Future[JobResult], tuple[BacktestJob, Any]] = {}
        try:
            for job in jobs:
                entry = exchange_refs.get(id(job.exchange))
                if entry is None:
                    entry = (job.exchange, ray.put(_for_the_object_store(job.exchange)))
                    exchange_refs[id(job.exchange)] = entry
                try:
                    task = self._remote.remote(dataclasses.replace(job, exchange=cast(Any, None)), [entry[1]])
                except Exception as exc:
                    raise SchemaError(
                        f"job {job.job_id!r} cannot be sent to Ray: {type(exc).__name__}: {exc}"
                    ) from exc
                pending[asyncio.wrap_future(task.future())] = (job, task)
            while pending:
                done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for future in done:
                    job, _task = pending.pop(future)
                    error = future.exception()
                    if error is None:
                        yield future.result()
                    else:
                        yield _error_result(job, f"job {job.job_id!r} (params {dict(job.params)!r}) failed on Ray: "
                                                 f"{type(error).__name__}: {error}")
        finally:
            for future, (_job, task) in pending.items():
                future.cancel()
                ray.cancel(task, force=False)

"""The unit of research work: one whole backtest, described so that another process can run it.

Walker, Sweep and the executors (`backtest_kit.research`) all speak this contract, so the same job
gives the same `Statistics` whether it runs in this process, in a local process pool or on a Ray
cluster. A job carries the *schemas* themselves (not names of a registry), because a worker process
has no registry of its own: everything it needs travels with the job and must therefore pickle.
Callables pickle by reference, so `get_signal`, `get_candles` and strategy factories must be
module-level functions (or picklable objects such as `CsvCandles`) when a job leaves the process.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from ..engine.config import Config
from ..engine.errors import SchemaError
from ..engine.models import SignalRow
from ..engine.registry import ExchangeSchema, FrameSchema, RiskSchema, SizingSchema, StrategySchema
from ..reports.stats import Statistics

__all__ = [
    "MAX_JOB_WARNINGS",
    "BacktestJob",
    "Executor",
    "ExecutorFactory",
    "JobResult",
    "executor_names",
    "file_modules",
    "register_executor",
    "register_file_module",
    "resolve_executor",
]

MAX_JOB_WARNINGS: Final = 10
"""Errors the engine reported during one job (a tick whose get_signal raised, a bad candle) are kept
as warning texts up to this many; the job still counts as run, as a `Backtest.run` would."""


@dataclass(frozen=True)
class BacktestJob:
    """One backtest of `strategy` on `symbol` over `frame`, with its exchange and optional risk/sizing.

    `job_id` is unique within one submission and stable across executors (results are matched and
    ordered by it, never by completion order). `params` are the sweep parameters that built the
    strategy (empty for a Walker job); they travel back unchanged in the `JobResult`.
    """

    job_id: str
    symbol: str
    strategy: StrategySchema
    exchange: ExchangeSchema
    frame: FrameSchema
    risks: tuple[RiskSchema, ...] = ()
    sizing: SizingSchema | None = None
    params: Mapping[str, Any] = field(default_factory=dict)
    config: Config | Mapping[str, Any] | None = None
    """The submitting engine's whole `Config` (so a worker computes exactly what this process would),
    or overrides of the defaults."""
    strategy_factory: Callable[..., Any] | None = None
    """When set (a Sweep job), the worker builds `get_signal = strategy_factory(**params)` and uses it
    instead of `strategy.get_signal`: a closure built by a factory does not pickle, the factory does.
    A factory that raises fails the job, naming the parameters."""


@dataclass(frozen=True)
class JobResult:
    """What a job gave: its statistics, or the error that stopped it (type, message and traceback text).

    Exactly one of `stats` and `error` is set. `error` is text, not the exception object, because an
    exception raised in a worker need not pickle back (and may carry secrets; the text is redacted).

    `open_signal` / `last_price` are the position the frame ended with (None: flat) and the last price
    the run saw. `stats` already counts that position (`open_positions`, `unrealized_pnl`) but does not
    hold it, and the submitting engine needs it to rebuild the job's `Backtest` store (a Walker job:
    `Backtest.get_data` recomputes the unrealized PnL from the position when it is read). `run_job`
    fills them; an executor that builds its own results without them loses only that position.
    """

    job_id: str
    symbol: str
    strategy_name: str
    frame_name: str
    params: Mapping[str, Any]
    stats: Statistics | None = None
    error: str | None = None
    elapsed_seconds: float = 0.0
    worker: str = ""
    warnings: tuple[str, ...] = ()
    open_signal: SignalRow | None = None
    last_price: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None


class Executor(Protocol):
    """Runs backtest jobs somewhere; yields one `JobResult` per job, in completion order.

    A job that raises yields a result with `error` set and never stops the others. Closing the
    iterator early (Ctrl-C, `stop`) cancels the jobs not yet started and keeps what finished.
    """

    name: str

    def run(self, jobs: Sequence[BacktestJob]) -> AsyncIterator[JobResult]: ...

    async def aclose(self) -> None: ...



ExecutorFactory = Callable[..., Executor]

_EXECUTORS: dict[str, ExecutorFactory] = {}
"""Executors by name. `backtest_kit.research` registers "sequential", "local" and "ray" when it is
imported (which `import backtest_kit` does), so the Walker here can accept a name without importing
the layer above it."""


def register_executor(name: str, factory: ExecutorFactory) -> None:
    """Make `factory(**options)` available as `executor=name` to Walker, Sweep and the CLI."""
    if not isinstance(name, str) or not name:
        raise SchemaError(f"executor name: expected a non-empty string, got {name!r}")
    _EXECUTORS[name] = factory


def executor_names() -> tuple[str, ...]:
    return tuple(_EXECUTORS)


def resolve_executor(executor: str | Executor, **options: Any) -> Executor:
    """The executor registered as `executor` (built with `options`), or `executor` itself when it is one."""
    if not isinstance(executor, str):
        if not callable(getattr(executor, "run", None)):
            raise SchemaError(
                f"executor: expected a name ({', '.join(_EXECUTORS) or 'none registered'}) or an object with "
                f"run(jobs) (the Executor protocol of system/jobs.py), got {executor!r}"
            )
        return executor
    factory = _EXECUTORS.get(executor)
    if factory is None:
        raise SchemaError(f"executor: unknown executor {executor!r}; known: {', '.join(_EXECUTORS)}")
    return factory(**options)


_FILE_MODULES: dict[str, str] = {}
"""Modules imported from a file under a made-up name (the CLI's `strategy.py`): name -> file path.
A worker process cannot import such a name, so the local executor sends this table with each job and
the worker loads the same files under the same names before it unpickles the job."""


def register_file_module(name: str, path: str) -> None:
    """Record that module `name` was loaded from the file `path` (see `_FILE_MODULES`)."""
    _FILE_MODULES[name] = path


def file_modules() -> dict[str, str]:
    return dict(_FILE_MODULES)

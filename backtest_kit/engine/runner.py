"""What the Backtest and Live runners share: run instances, background tasks, cancel, list, the stores they feed.

One `RunRecord` per (symbol, strategy) of a mode
([decision 11](../../docs/design/decisions.md#decision-11-instances-are-keyed-by-mode-symbol-and-strategy):
modes never share state). Background runs hand back a `CancelHandle`: callable from anywhere (a signal
handler, a timer, another thread, any number of times), it performs the graceful stop of
[decision 6](../../docs/design/decisions.md#decision-6-stop-keeps-open-positions-monitored) and never
raises.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Protocol, TypeVar

from .bus import enter_run
from .channels import EXIT, Channel
from .errors import RunStateError, SchemaError
from .foreground import aclose_quietly, follow_in_foreground
from .models import DoneEvent, InstanceInfo, InstanceStatus, TickResult
from .ports import Services

if TYPE_CHECKING:
    from .lease import PairLease
    from .strategy import StrategyInstance

__all__ = ["CancelHandle", "ResultSink", "RunHooks", "RunRecord", "RunStores", "RunnerBase"]

R = TypeVar("R", bound=TickResult)


@dataclass(eq=False)
class RunRecord:
    """One (symbol, strategy) of one mode."""

    symbol: str
    strategy_name: str
    exchange_name: str
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    status: InstanceStatus = "idle"
    error: str | None = None
    instance: StrategyInstance | None = None
    task: asyncio.Task[None] | None = None
    stop_requested: bool = False
    done_published: bool = False
    wake: asyncio.Event | None = None
    sleeper: asyncio.Future[None] | None = None  # the live loop's inter-tick sleep, while it sleeps
    loop: asyncio.AbstractEventLoop | None = None
    data_exhausted: bool = False  # a live replay ended because its data ran out
    lease: PairLease | None = None  # live on a shared store: the pair's lease (engine/lease.py)
    standby: bool = False  # live: wait for a lease another process holds instead of failing

    def info(self) -> InstanceInfo:
        return InstanceInfo(
            id=self.id, symbol=self.symbol, strategy_name=self.strategy_name,
            exchange_name=self.exchange_name, status=self.status, error=self.error,
        )

    def request_stop(self) -> None:
        """Flag the stop and wake a sleeping live loop; must run on the record's loop thread."""
        first = not self.stop_requested
        self.stop_requested = True
        if self.instance is not None:
            self.instance.stop()
        if first and self.wake is not None:  # only once: a repeated cancel() must not spin the loop
            self.wake.set()
            if self.sleeper is not None:
                self.sleeper.cancel()


class CancelHandle:
    """Returned by `background()`: call it to stop the run gracefully; `await handle.wait()` for the end."""

    def __init__(self, record: RunRecord, task: asyncio.Task[None]) -> None:
        self._record = record
        self.task = task

    def __call__(self) -> None:
        record = self._record
        loop = record.loop
        try:
            if loop is not None and loop.is_running() and not _on_loop_thread(loop):
                loop.call_soon_threadsafe(record.request_stop)
            else:
                record.request_stop()
        except Exception:  # never raise from a signal handler or a closed loop
            pass

    async def wait(self) -> None:
        """Wait until the run has ended (its done event was published)."""
        await asyncio.shield(self.task)

    def __repr__(self) -> str:
        r = self._record
        return f"<CancelHandle {r.symbol} {r.strategy_name} status={r.status}>"


def _on_loop_thread(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


S_co = TypeVar("S_co", covariant=True)


class ResultSink(Protocol):
    """A store fed with every tick result of a run (the schedule statistics of `reports/`)."""

    def add(self, result: TickResult) -> None: ...


class RunStores(Protocol[S_co]):
    """Where the runs of one mode record their results: the statistics and schedule stores, which
    live in `reports/` and are handed to the runner by the composition root."""

    def reset(self, symbol: str, strategy_name: str) -> None:
        """A run of the pair starts: its statistics start afresh."""

    def stats(self, symbol: str, strategy_name: str) -> S_co:
        """The pair's statistics store (created empty on first use)."""

    def schedule(self, symbol: str, strategy_name: str) -> ResultSink:
        """The pair's schedule statistics store."""


@dataclass(frozen=True)
class RunHooks:
    """What only the composition root can do, handed to the runners as plain callables."""

    make_instance: Callable[..., StrategyInstance]
    """`(schema, exchange_name, symbol, *, backtest, source)`: a wired strategy instance."""
    track_task: Callable[[asyncio.Task[Any]], None]
    """Keep a background run's task until it ends (`close` waits for it)."""
    hold_persist: Callable[[], None]
    """A live run starts: own the persist directory (raises `PersistError` if another engine does)."""
    release_persist: Callable[[], None]
    """A live run ended: give the persist directory back (the last one does)."""
    lease_for: Callable[[str, str], PairLease | None] = lambda symbol, strategy_name: None
    """`(symbol, strategy_name)`: the lease the live run of the instance just made must hold, if any."""


class RunnerBase(Generic[R]):
    """Instances, background tasks and statistics of one mode."""

    backtest: bool
    mode: str
    done_channel: ClassVar[Channel[DoneEvent]]

    def __init__(self, engine: Services, hooks: RunHooks) -> None:
        self.engine = engine
        self.hooks = hooks
        self._records: dict[tuple[str, str], RunRecord] = {}

    # ------------------------------------------------------------------ records
    def _record(self, symbol: str, strategy_name: str, exchange_name: str) -> RunRecord:
        key = (symbol, strategy_name)
        record = self._records.get(key)
        if record is None:
            record = RunRecord(symbol, strategy_name, exchange_name)
            self._records[key] = record
        elif exchange_name:
            record.exchange_name = exchange_name
        return record

    def _start(self, symbol: str, strategy_name: str, exchange_name: str) -> RunRecord:
        if not isinstance(symbol, str) or not symbol:
            raise SchemaError(f"symbol: expected a non-empty string, got {symbol!r}")
        record = self._record(symbol, strategy_name, exchange_name)
        if record.status == "running":
            raise RunStateError(
                f"{self.mode} run of {strategy_name!r} on {symbol} is already running; stop it first"
            )
        record.status = "running"
        record.error = None
        record.stop_requested = False
        record.done_published = False
        record.data_exhausted = False
        record.loop = _running_loop()
        record.wake = asyncio.Event() if record.loop is not None else None
        return record

    def ended(self, symbol: str, strategy_name: str) -> bool:
        """Whether the pair was run in this mode and its run is over."""
        record = self._records.get((symbol, strategy_name))
        return record is not None and record.status != "running"

    def exchange_name_of(self, symbol: str, strategy_name: str) -> str:
        """The exchange of the pair's latest run in this mode ("" if never run)."""
        record = self._records.get((symbol, strategy_name))
        return record.exchange_name if record is not None else ""

    def request_stop_pair(self, symbol: str, strategy_name: str) -> None:
        """Graceful stop of one pair from sync code on the loop thread (a walker's cancel); a pair
        never started is left alone, so a later run is not affected."""
        record = self._records.get((symbol, strategy_name))
        if record is not None:
            record.request_stop()

    def request_stop_all(self) -> None:
        """Graceful stop of every run of this mode (`Engine.close`)."""
        for record in self._records.values():
            record.request_stop()

    async def list(self) -> list[InstanceInfo]:
        """Every pair started or stopped in this mode, with its status."""
        return [r.info() for r in self._records.values()]

    async def stop(self, symbol: str, strategy_name: str) -> None:
        """Graceful stop: no new signals, an open position runs to its close, then the run ends."""
        self.engine.registry.strategies.get(strategy_name, f"{self.mode}.stop")
        record = self._record(symbol, strategy_name, "")
        record.request_stop()

    # ------------------------------------------------------------------ running
    def _iterate(self, record: RunRecord, body: AsyncIterator[R]) -> AsyncGenerator[R, None]:
        """Wrap a run body so the record's status follows the foreground iteration (`foreground.py`)."""
        return follow_in_foreground(record, body, self.backtest, lambda: self._ended(record))

    def _running_handle(self, symbol: str, strategy_name: str) -> CancelHandle | None:
        """The cancel handle of the pair's background run when it is running already (`background`
        called again returns it instead of failing), else None."""
        existing = self._records.get((symbol, strategy_name))
        if existing is not None and existing.status == "running" and existing.task is not None:
            return CancelHandle(existing, existing.task)
        return None

    def _background(self, record: RunRecord, body: AsyncIterator[R]) -> CancelHandle:
        loop = record.loop
        if loop is None:
            raise RunStateError(f"{self.mode}.background needs a running asyncio event loop")

        async def consume() -> None:
            enter_run(self.backtest)  # the run's per-delivery listener timeout, done and exit included
            try:
                async for _ in body:
                    pass
            except Exception as exc:
                record.error = repr(exc)
                self.engine.logger.warn(f"{self.mode} background run failed", repr(exc))
                await self.engine.bus.emit(EXIT, exc)
            finally:
                await aclose_quietly(body)
                record.status = "done"
                self._ended(record)
                await self._publish_done(record)

        task = loop.create_task(consume(), name=f"backtest-kit {self.mode} {record.symbol} {record.strategy_name}")
        record.task = task
        self.hooks.track_task(task)
        return CancelHandle(record, task)

    async def _publish_done(self, record: RunRecord) -> None:
        if record.done_published:
            return
        record.done_published = True
        await self.engine.bus.drain()  # events published from sync code reach listeners before done
        await self.engine.bus.emit(
            self.done_channel,
            DoneEvent(symbol=record.symbol, strategy_name=record.strategy_name,
                      exchange_name=record.exchange_name, backtest=self.backtest),
        )

    def _ended(self, record: RunRecord) -> None:
        """Hook: a run's body has finished (whatever the reason)."""


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None

"""The per-pair signal state machine (the reference's ClientStrategy), for both modes.

One `StrategyInstance` per (mode, symbol, strategy) run. It owns at most one pending position or one
waiting limit signal. `tick(now)` advances it on the tick path (live, and backtests between
fast-forwards); `fast_forward(candles, when)` resolves a fresh signal over 1m candles in a backtest.
The rules themselves are pure functions in `lifecycle.py`; this class sequences them with the user's
`get_signal`, callbacks, risk, sizing, persistence and the event bus.
"""

from __future__ import annotations

import asyncio
import inspect
import time
import types
import uuid
import weakref
from bisect import bisect_left
from collections.abc import Awaitable, Callable, Generator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgspec

from . import context
from .config import Config
from .errors import SignalTimeoutError, SignalValidationError
from .exchange import ExchangeClient
from .hooks import PartialTracker, RiskGate, SignalStore, Sizer
from .intervals import MINUTE_MS, SIGNAL_INTERVALS
from .lifecycle import (
    close_on_price,
    is_immediate,
    pnl_of,
    progress_of,
    scan_pending,
    scan_scheduled,
    scheduled_on_price,
    window_vwap,
)
from .logger import EngineLogger
from .models import (
    ActiveResult,
    CancelledResult,
    Candle,
    ClosedResult,
    CloseReason,
    FinishedResult,
    IdleResult,
    OpenedResult,
    ScheduledResult,
    SignalDto,
    SignalRow,
    TickResult,
    decode_signal_dto,
)
from .notes import normalize_note
from .registry import StrategySchema
from .validation import validate_signal
from .voids import SignalVoids

__all__ = ["RunEnv", "StrategyInstance"]


class _Deadline:
    """One running `get_signal` call under the watchdog: its task, its wall-clock deadline, and
    whether the watchdog cancelled it (so its CancelledError becomes a SignalTimeoutError)."""

    __slots__ = ("at", "cancelling", "expired", "task")

    def __init__(self, task: asyncio.Task[Any], at: float) -> None:
        self.task = task
        self.at = at
        self.cancelling = task.cancelling()
        self.expired = False


class _SignalWatchdog:
    """One wall-clock timer per event loop bounding every running `get_signal` call.

    Why not `asyncio.timeout` per call: that costs a Timeout object, a timer handle pushed on the
    loop's heap and a reschedule on every tick of every pair, ~35 µs of a ~95 µs live tick. Here a
    call costs a dict insert and delete; the single timer handle fires only at the earliest deadline
    of the calls running then (with one timeout for all calls, at most once per timeout period), and
    cancels the calls that overran the way `asyncio.timeout` would: `task.cancel()`, then
    `uncancel()` when the call exits so an outer cancellation is never mistaken for a timeout.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.running: dict[_Deadline, None] = {}
        self.handle: asyncio.TimerHandle | None = None

    def enter(self, task: asyncio.Task[Any], seconds: float) -> _Deadline:
        at = self.loop.time() + seconds
        entry = _Deadline(task, at)
        self.running[entry] = None
        handle = self.handle
        if handle is None or handle.when() > at:
            if handle is not None:
                handle.cancel()
            self.handle = self.loop.call_at(at, self._fire)
        return entry

    def leave(self, entry: _Deadline) -> None:
        self.running.pop(entry, None)  # the timer stays armed: it re-arms (or stops) when it fires

    def _fire(self) -> None:
        self.handle = None
        now = self.loop.time()
        earliest: float | None = None
        for entry in list(self.running):
            if entry.at <= now:
                del self.running[entry]
                entry.expired = True
                entry.task.cancel()
            elif earliest is None or entry.at < earliest:
                earliest = entry.at
        if earliest is not None:
            self.handle = self.loop.call_at(earliest, self._fire)


_WATCHDOGS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _SignalWatchdog] = weakref.WeakKeyDictionary()


def _watchdog() -> _SignalWatchdog:
    loop = asyncio.get_running_loop()
    watchdog = _WATCHDOGS.get(loop)
    if watchdog is None:
        watchdog = _WATCHDOGS[loop] = _SignalWatchdog(loop)
    return watchdog

_replace = msgspec.structs.replace


@dataclass(slots=True)
class RunEnv:
    """What an instance needs from its engine."""

    config: Callable[[], Config]
    logger: EngineLogger
    report_error: Callable[[BaseException], Awaitable[None]]
    voids: SignalVoids | None = None  # entries the exchange refused: dropped at the next live tick


class StrategyInstance:
    """State and transitions of one (mode, symbol, strategy) pair."""

    def __init__(
        self,
        *,
        env: RunEnv,
        schema: StrategySchema,
        exchange: ExchangeClient,
        symbol: str,
        backtest: bool,
        risk: RiskGate | None = None,
        sizer: Sizer | None = None,
        partial: PartialTracker | None = None,
        store: SignalStore | None = None,
    ) -> None:
        self.env = env
        self.schema = schema
        self.exchange = exchange
        self.symbol = symbol
        self.backtest = backtest
        self.strategy_name = schema.strategy_name
        self.exchange_name = exchange.name
        self.callbacks = schema.callbacks
        self.interval_ms = SIGNAL_INTERVALS[schema.interval] * MINUTE_MS
        self.risk = risk
        self.sizer = sizer
        self.partial = partial
        self.store = store
        self.pending: SignalRow | None = None
        self.scheduled: SignalRow | None = None
        self.last_signal_ms: int | None = None
        self.stopped = False
        self.restored = store is None
        self._hold = False  # a snapshot was just set aside: open nothing on this tick
        # a closed position whose risk slot waits for the signal's delete to be stored (a shared profile:
        # portfolio/shared_risk.py), so a stored signal never lacks its slot
        self._release_after_delete: SignalRow | None = None
        self._get_signal_is_async = inspect.iscoroutinefunction(schema.get_signal)

    # ------------------------------------------------------------------ helpers
    @property
    def has_signal(self) -> bool:
        return self.pending is not None or self.scheduled is not None

    def stop(self) -> None:
        """No new signals from now on; a waiting limit signal is dropped at the next tick."""
        self.stopped = True

    def _context(self, now_ms: int) -> context.ExecutionContext:
        return context.ExecutionContext(self.symbol, now_ms, self.backtest, self.exchange, self.strategy_name)

    async def _callback(self, fn: Callable[..., Any] | None, now_ms: int, *args: Any) -> None:
        """Run a user callback inside the tick's context; its failure is reported, never fatal."""
        if fn is None:
            return
        token = context.enter(self._context(now_ms))
        try:
            result = fn(*args)
            if inspect.isawaitable(result):
                await result
        except Exception as exc:
            await self.env.report_error(exc)
        finally:
            context.leave(token)

    async def _price(self, now_ms: int) -> float:
        # live: refuse a price from a stalled feed
        # ([hardening #8](../../docs/design/decisions.md#hardening-8-stale-live-data-fails-the-tick))
        if not self.backtest:
            return await self.exchange.live_price(self.symbol, now_ms)
        price = self.exchange.average_price_now(self.symbol, now_ms)
        if price is None:
            price = await self.exchange.average_price(self.symbol, now_ms)
        return price

    def _base(self, price: float) -> dict[str, Any]:
        return {
            "symbol": self.symbol,
            "strategy_name": self.strategy_name,
            "exchange_name": self.exchange_name,
            "current_price": price,
            "backtest": self.backtest,
        }

    async def _set_pending(self, row: SignalRow | None) -> None:
        self.pending = row
        if self.store is not None:
            await self.store.save_pending(row)

    async def _set_scheduled(self, row: SignalRow | None) -> None:
        self.scheduled = row
        if self.store is not None:
            await self.store.save_scheduled(row)

    async def _restore(self, now_ms: int) -> bool:
        """Read the stored state once; a load that raises leaves `restored` False (retried next tick).

        True when a stored snapshot was set aside as invalid: the tick then opens nothing, so a
        position nobody understood is never replaced in the same instant
        ([hardening item 6](../../docs/design/decisions.md#hardening-6-a-tick-that-set-a-snapshot-aside-opens-nothing)).
        """
        assert self.store is not None
        rejected_before = getattr(self.store, "rejected", 0)
        pending, scheduled = await self.store.load()
        self.restored = True
        if pending is not None and self._owned(pending):
            self.pending = pending
            if self.risk is not None:  # re-count it even if a crash lost the risk write
                await self.risk.restore(pending)
        release_stale = getattr(self.risk, "release_stale", None)
        if self.pending is None and release_stale is not None:
            await release_stale()  # a slot left by a kill between the slot and the signal write
        if scheduled is not None and self._owned(scheduled):
            if self.pending is not None and scheduled.id == self.pending.id:
                await self.store.save_scheduled(None)  # crash between activation's two writes
            else:
                self.scheduled = scheduled
                # [lifecycle rule 45](../../docs/design/lifecycle.md#16-acceptance-criteria) (on_active:
                # [decision 10](../../docs/design/decisions.md#decision-10-on_active-fires-on-every-active-tick))
                if self.callbacks.on_schedule is not None:
                    try:
                        price = await self._price(now_ms)
                    except Exception as exc:
                        await self.env.report_error(exc)
                    else:
                        await self._callback(
                            self.callbacks.on_schedule, now_ms, self.symbol, scheduled, price, self.backtest
                        )
        return bool(getattr(self.store, "rejected", 0) != rejected_before)

    async def restore(self, now_ms: int) -> None:
        """Restore the stored state now if it was not yet (the live loop, before honouring a stop)."""
        if not self.restored and self.store is not None:
            self._hold = await self._restore(now_ms)

    async def _store_ready(self) -> bool:
        """Retry unsynced persistence; False (error reported) while the stored state is unknown."""
        store = self.store
        if store is None or (store.healthy and self._release_after_delete is None):
            return True
        try:
            if not store.healthy:
                await store.flush()
            await self._release_deferred()
        except Exception as exc:
            await self.env.report_error(exc)
            return False
        return self._release_after_delete is None  # no new position while the old slot is still held

    async def sync_store(self) -> None:
        """Apply deferred deletes once the tick's result reached the listeners (live loop)."""
        store = self.store
        if store is None or not (store.has_deferred or self._release_after_delete is not None):
            return
        try:
            if store.has_deferred:
                await store.flush()
            await self._release_deferred()
        except Exception as exc:
            await self.env.report_error(exc)

    async def _release_deferred(self) -> None:
        """Release the risk slot of a closed position once its signal's delete is stored."""
        row = self._release_after_delete
        if row is not None and self.risk is not None and self.store is not None and not self.store.has_deferred:
            await self.risk.release(row)
            self._release_after_delete = None

    async def _forget(self, scheduled: bool) -> None:
        """A save raised: the write may still have landed, so make sure the store ends empty."""
        if self.store is None:
            return
        try:
            if scheduled:
                await self.store.save_scheduled(None)
            else:
                await self.store.save_pending(None)
        except Exception as exc:
            await self.env.report_error(exc)

    def _owned(self, row: SignalRow) -> bool:
        return (
            row.strategy_name == self.strategy_name
            and row.exchange_name == self.exchange_name
            and row.symbol == self.symbol
        )

    # ------------------------------------------------------------------ tick
    async def tick(self, now_ms: int) -> TickResult:
        """One step on the tick path at `now_ms`."""
        hold = self._hold
        if not self.restored:
            hold = await self._restore(now_ms)
        self._hold = False
        store_ready = await self._store_ready() if self.store is not None else True
        voided = self._voided()
        if voided is not None:
            return await self._void(voided[0], voided[1], now_ms)
        if self.pending is not None:
            return await self._monitor_pending(self.pending, now_ms)
        if self.scheduled is not None:
            if self.stopped:
                return await self._cancel(self.scheduled, await self._price(now_ms), now_ms)
            return await self._monitor_scheduled(self.scheduled, now_ms)
        price = await self._price(now_ms)  # a dead exchange fails the tick once, here
        if not self.stopped and store_ready and not hold and (
            self.last_signal_ms is None or now_ms - self.last_signal_ms >= self.interval_ms
        ):
            self.last_signal_ms = now_ms
            opened = await self._generate(price, now_ms)
            if opened is not None:
                return opened
        return await self._idle(price, now_ms)

    def _voided(self) -> tuple[SignalRow, str] | None:
        """The pair's signal and why, when its entry order was refused (`engine/voids.py`), else None."""
        voids = self.env.voids
        if voids is None or not len(voids):
            return None
        row = self.pending if self.pending is not None else self.scheduled
        if row is None:
            return None
        reason = voids.take(self.strategy_name, self.symbol, row.id)
        if reason is None:
            return None
        return row, reason

    async def _void(self, row: SignalRow, reason: str, now_ms: int) -> CancelledResult:
        """Drop `row`: its entry order never filled, so there is no position; the risk slot is released."""
        self.env.logger.warn(f"signal {row.id} ({self.symbol}/{self.strategy_name}) dropped: {reason}")
        if self.pending is None:  # a waiting limit signal: the usual cancel (it holds no slot)
            return await self._cancel(row, row.price_open, now_ms)
        await self._end_position(row)
        cb = self.callbacks
        if cb.on_write is not None:
            await self._callback(cb.on_write, now_ms, self.symbol, None, self.backtest)
        result = CancelledResult(**self._base(row.price_open), signal=row, close_timestamp=now_ms)
        if cb.on_tick is not None:
            await self._callback(cb.on_tick, now_ms, self.symbol, result, self.backtest)
        return result

    def quiet_until(self, now_ms: int) -> int | None:
        """Backtest only: when every tick from `now_ms` up to (not including) the returned time would
        provably do nothing but return an idle result, that time (the throttle's next slot); else None.

        What an idle tick does ([lifecycle §4.7](../../docs/design/lifecycle.md#47-idle-procedure)):
        read the price (which may fail and report an error), maybe call `get_signal` (throttle), call
        `on_idle` and `on_tick`, return `idle`. Here
        none of it can happen: no position or limit signal, not stopped, no snapshot to restore or set
        aside, the throttle closed until `last_signal_ms + interval`, no `on_idle`/`on_tick`, and a
        price read that cannot fail or be seen: a synchronous source with `prices_persist` (a pure
        read that keeps answering) that answered at `last_signal_ms`, since a tick reads the price
        before its throttle check. The runner adds what only it knows (no listener for the results).
        """
        last = self.last_signal_ms
        if (
            last is None or not self.backtest or self.pending is not None or self.scheduled is not None
            or self.stopped or self._hold or not self.restored or self.store is not None
        ):
            return None
        cb = self.callbacks
        if cb.on_idle is not None or cb.on_tick is not None:
            return None
        source = self.exchange.sync_source
        if source is None or getattr(source, "prices_persist", False) is not True:
            return None
        resume = last + self.interval_ms
        return resume if resume > now_ms else None

    async def _idle(self, price: float, now_ms: int) -> IdleResult:
        cb = self.callbacks
        if cb.on_idle is not None:
            await self._callback(cb.on_idle, now_ms, self.symbol, price, self.backtest)
        result = IdleResult(
            symbol=self.symbol, strategy_name=self.strategy_name, exchange_name=self.exchange_name,
            current_price=price, backtest=self.backtest,
        )
        if cb.on_tick is not None:
            await self._callback(cb.on_tick, now_ms, self.symbol, result, self.backtest)
        return result

    async def _call_get_signal(self, now_ms: int) -> Any:
        when = datetime.fromtimestamp(now_ms / 1000, UTC)
        token = context.enter(self._context(now_ms))
        try:
            if self._get_signal_is_async:
                # The first step runs by hand: a call that returns without suspending (a throttled or
                # cached strategy, a backtest over an in-memory source: nearly every call) gives the
                # loop no turn, so no timer could have cut it, and it skips the watchdog entirely.
                started = time.monotonic()
                coro = self.schema.get_signal(self.symbol, when)
                try:
                    step = coro.send(None)
                except StopIteration as stop:
                    return stop.value
                return await self._finish_get_signal(coro, step, started)
            result = self.schema.get_signal(self.symbol, when)
            if inspect.isawaitable(result):
                result = await result
            return result
        finally:
            context.leave(token)

    async def _finish_get_signal(self, coro: Any, step: Any, started: float) -> Any:
        """The rest of a `get_signal` call that suspended, under the watchdog: its deadline counts from
        the call's start (`started`, `time.monotonic`), as if it had been armed before the first step."""
        timeout = self.env.config().CC_MAX_SIGNAL_GENERATION_SECONDS
        task = asyncio.current_task()
        assert task is not None
        watchdog = _watchdog()
        deadline = watchdog.enter(task, timeout - (time.monotonic() - started))
        try:
            return await _resume(coro, step)
        except asyncio.CancelledError:
            if deadline.expired and task.uncancel() <= deadline.cancelling:
                deadline.expired = False  # uncancelled: the finally must not do it again
                raise SignalTimeoutError(
                    f"get_signal of strategy {self.strategy_name!r} for {self.symbol} took longer than "
                    f"CC_MAX_SIGNAL_GENERATION_SECONDS={timeout} and was cancelled"
                ) from None
            deadline.expired = False
            raise
        finally:
            watchdog.leave(deadline)
            if deadline.expired:  # the call swallowed the watchdog's cancel: take it back
                task.uncancel()

    async def _generate(self, price: float, now_ms: int) -> TickResult | None:
        """Ask for a signal; any failure is reported and the tick ends idle
        ([lifecycle §4.2](../../docs/design/lifecycle.md#42-generation))."""
        try:
            raw = await self._call_get_signal(now_ms)
            if not raw or self.stopped:
                return None
            dto = decode_signal_dto(raw)
            row = self._build_row(dto, price, now_ms)
            validate_signal(row, price, self.env.config())
        except Exception as exc:
            await self.env.report_error(exc)
            return None
        if row.is_scheduled:
            return await self._schedule(row, price, now_ms)
        return await self._open(row, price, now_ms)

    def _build_row(self, dto: SignalDto, price: float, now_ms: int) -> SignalRow:
        limit = not isinstance(dto.price_open, msgspec.UnsetType)
        if limit:
            # [Decision 5](../../docs/design/decisions.md#decision-5-bad-values-are-rejected-never-coerced):
            # never coerce. A SignalDto built in Python is not type-checked by msgspec, so "100" or True
            # must reach validation as is (float() would accept them).
            raw: Any = dto.price_open
            if raw is None:
                raise SignalValidationError(
                    f"Invalid signal for {dto.position} position: price_open is None; "
                    "omit price_open for a market entry"
                )
            numeric = isinstance(raw, int | float) and not isinstance(raw, bool)
            price_open = float(raw) if numeric else raw
            scheduled = numeric and not is_immediate(dto.position, price_open, price)
            signal_id = str(uuid.uuid4())
        else:
            price_open, scheduled = price, False
            signal_id = dto.id or str(uuid.uuid4())
        return SignalRow(
            id=signal_id,
            position=dto.position,
            price_open=price_open,
            price_take_profit=dto.price_take_profit,
            price_stop_loss=dto.price_stop_loss,
            minute_estimated_time=dto.minute_estimated_time,
            note=normalize_note(dto.note),
            symbol=self.symbol,
            strategy_name=self.strategy_name,
            exchange_name=self.exchange_name,
            scheduled_at=now_ms,
            pending_at=now_ms,
            is_scheduled=scheduled,
        )

    async def _with_quantity(self, row: SignalRow, price: float) -> SignalRow:
        if self.sizer is None:
            return row
        quantity = await self.sizer.quantity(row, price)
        return row if quantity is None else _replace(row, quantity=quantity)

    async def _open(self, row: SignalRow, price: float, now_ms: int) -> TickResult | None:
        """An immediate entry: risk, sizing, persist, then report it opened."""
        try:
            row = await self._with_quantity(row, price)
            if self.risk is not None and not await self.risk.try_open(row, row.price_open, now_ms):
                return None
            try:
                await self._set_pending(row)
            except Exception:
                self.pending = None
                await self._forget(scheduled=False)
                if self.risk is not None:
                    await self.risk.release(row)
                raise
        except Exception as exc:
            await self.env.report_error(exc)
            return None
        await self._opened(row, now_ms)
        cb = self.callbacks
        result = OpenedResult(
            symbol=self.symbol, strategy_name=self.strategy_name, exchange_name=self.exchange_name,
            current_price=row.price_open, backtest=self.backtest, signal=row,
        )
        if cb.on_tick is not None:
            await self._callback(cb.on_tick, now_ms, self.symbol, result, self.backtest)
        return result

    async def _schedule(self, row: SignalRow, price: float, now_ms: int) -> TickResult | None:
        try:
            if self.risk is not None and not await self.risk.check(row, price, now_ms):
                return None
            try:
                await self._set_scheduled(row)
            except Exception:
                self.scheduled = None
                await self._forget(scheduled=True)
                raise
        except Exception as exc:
            await self.env.report_error(exc)
            return None
        cb = self.callbacks
        if cb.on_schedule is not None:
            await self._callback(cb.on_schedule, now_ms, self.symbol, row, price, self.backtest)
        result = ScheduledResult(**self._base(price), signal=row)
        if cb.on_tick is not None:
            await self._callback(cb.on_tick, now_ms, self.symbol, result, self.backtest)
        return result

    async def _monitor_pending(self, row: SignalRow, now_ms: int) -> TickResult:
        price = await self._price(now_ms)
        decision = close_on_price(row, price, now_ms)
        if decision is not None:
            return await self._close(row, decision[0], decision[1], now_ms)
        percent_tp, percent_sl = progress_of(row, price)
        await self._progress(row, price, percent_tp, percent_sl, now_ms)
        cb = self.callbacks
        if cb.on_active is not None:
            await self._callback(cb.on_active, now_ms, self.symbol, row, price, self.backtest)
        result = ActiveResult(**self._base(price), signal=row, percent_tp=percent_tp, percent_sl=percent_sl)
        if cb.on_tick is not None:
            await self._callback(cb.on_tick, now_ms, self.symbol, result, self.backtest)
        return result

    async def _progress(
        self, row: SignalRow, price: float, percent_tp: float, percent_sl: float, now_ms: int
    ) -> None:
        if self.partial is not None:
            try:
                await self.partial.progress(row, price, percent_tp, percent_sl, now_ms)
            except Exception as exc:
                await self.env.report_error(exc)
        cb = self.callbacks
        if percent_tp > 0 and cb.on_partial_profit is not None:
            await self._callback(cb.on_partial_profit, now_ms, self.symbol, row, price, percent_tp, self.backtest)
        elif percent_sl > 0 and cb.on_partial_loss is not None:
            await self._callback(cb.on_partial_loss, now_ms, self.symbol, row, price, percent_sl, self.backtest)

    async def _monitor_scheduled(self, row: SignalRow, now_ms: int) -> TickResult:
        price = await self._price(now_ms)
        config = self.env.config()
        action = scheduled_on_price(row, price, now_ms, config.CC_SCHEDULE_AWAIT_MINUTES * MINUTE_MS)
        if action == "timeout" or action == "stop_loss":
            return await self._cancel(row, price, now_ms)
        if action == "activate":
            opened = await self._activate(row, now_ms, now_ms)
            if opened is None:
                return await self._idle(price, now_ms)
            result = OpenedResult(**self._base(opened.price_open), signal=opened)
            if self.callbacks.on_tick is not None:
                await self._callback(self.callbacks.on_tick, now_ms, self.symbol, result, self.backtest)
            return result
        result2 = ActiveResult(**self._base(price), signal=row, percent_tp=0.0, percent_sl=0.0)
        if self.callbacks.on_tick is not None:
            await self._callback(self.callbacks.on_tick, now_ms, self.symbol, result2, self.backtest)
        return result2

    async def _activate(self, row: SignalRow, pending_at: int, now_ms: int) -> SignalRow | None:
        """A limit signal filled: it becomes the pending position (or is dropped if refused)."""
        activated = _replace(row, pending_at=pending_at, is_scheduled=False)
        try:
            activated = await self._with_quantity(activated, activated.price_open)
            if self.risk is not None and not await self.risk.try_open(activated, activated.price_open, now_ms):
                await self._set_scheduled(None)
                return None
            try:
                await self._set_pending(activated)  # pending first: a crash between the writes keeps the fill
            except Exception:
                self.pending = None  # not filled: the limit signal keeps waiting, re-checked next tick
                await self._forget(scheduled=False)
                raise
            try:
                await self._set_scheduled(None)
            except Exception as exc:  # the fill is saved; restore drops a schedule with the pending id
                self.scheduled = None
                await self.env.report_error(exc)
        except Exception as exc:
            if self.pending is None and self.risk is not None:
                await self.risk.release(activated)
            await self.env.report_error(exc)
            return None
        await self._opened(activated, now_ms)
        return activated

    async def _opened(self, row: SignalRow, now_ms: int) -> None:
        """A position opened (at once, or its limit order filled): `on_write`, then `on_open`."""
        cb = self.callbacks
        if cb.on_write is not None:
            await self._callback(cb.on_write, now_ms, self.symbol, row, self.backtest)
        if cb.on_open is not None:
            await self._callback(cb.on_open, now_ms, self.symbol, row, row.price_open, self.backtest)

    async def _cancel(self, row: SignalRow, price: float, when_ms: int) -> CancelledResult:
        self.scheduled = None
        if self.store is not None:
            try:
                await self.store.save_scheduled(None)
            except Exception as exc:
                await self.env.report_error(exc)
        cb = self.callbacks
        if cb.on_cancel is not None:
            await self._callback(cb.on_cancel, when_ms, self.symbol, row, price, self.backtest)
        result = CancelledResult(**self._base(price), signal=row, close_timestamp=when_ms)
        if cb.on_tick is not None:
            await self._callback(cb.on_tick, when_ms, self.symbol, result, self.backtest)
        return result

    async def _end_position(self, row: SignalRow) -> None:
        """The position `row` is over (closed, or voided before it filled): clear its partial levels,
        release its risk slot (after the signal's delete when the gate defers it, `sync_store`) and
        delete the stored signal; each failure is reported, never fatal, and the rest still runs."""
        try:
            if self.partial is not None:
                await self.partial.clear(row)
            if self.risk is not None:
                if self.store is not None and getattr(self.risk, "deferred_release", False):
                    self._release_after_delete = row
                else:
                    await self.risk.release(row)
        except Exception as exc:
            await self.env.report_error(exc)
        self.pending = None
        if self.store is not None:
            try:
                await self.store.save_pending(None)
            except Exception as exc:
                await self.env.report_error(exc)

    async def _close(self, row: SignalRow, reason: CloseReason, close_price: float, when_ms: int) -> ClosedResult:
        config = self.env.config()
        pnl = pnl_of(row, close_price, config.CC_PERCENT_SLIPPAGE, config.CC_PERCENT_FEE)
        cb = self.callbacks
        if cb.on_close is not None:
            await self._callback(cb.on_close, when_ms, self.symbol, row, close_price, self.backtest)
        await self._end_position(row)
        if cb.on_write is not None:
            await self._callback(cb.on_write, when_ms, self.symbol, None, self.backtest)
        result = ClosedResult(
            **self._base(close_price), signal=row, close_reason=reason, close_timestamp=when_ms, pnl=pnl
        )
        if cb.on_tick is not None:
            await self._callback(cb.on_tick, when_ms, self.symbol, result, self.backtest)
        return result

    # ------------------------------------------------------------------ backtest fast-forward
    async def fast_forward(self, candles: Sequence[Candle], when_ms: int) -> FinishedResult | None:
        """Resolve the signal opened or scheduled at `when_ms` over 1m candles (backtest only).

        `candles` start a few minutes before `when_ms` (average-price buffer). Returns the closed or
        cancelled result, or None when the candles ran out first (the tick path then continues).
        """
        config = self.env.config()
        count = config.CC_AVG_PRICE_CANDLES_COUNT
        start = bisect_left(candles, when_ms, key=_timestamp)
        row: SignalRow | None = self.pending
        if row is None:
            scheduled = self.scheduled
            if scheduled is None:
                return None
            outcome, index = scan_scheduled(
                scheduled, candles, start, count, config.CC_SCHEDULE_AWAIT_MINUTES * MINUTE_MS
            )
            if outcome.kind == "cancelled":
                return await self._cancel(scheduled, outcome.price, outcome.timestamp)
            if index is None:
                return None
            row = await self._activate(scheduled, candles[index].timestamp, candles[index].timestamp)
            if row is None:
                return None
            start = index
        outcome = scan_pending(row, candles, start, count)
        if self.callbacks.on_partial_profit or self.callbacks.on_partial_loss:
            await self._replay_progress(row, candles, start, outcome.timestamp, count)
        elif self.partial is not None:  # levels only: one vectorised pass, no per-candle await
            try:
                await self.partial.replay(row, candles, start, outcome.timestamp, count)
            except Exception as exc:
                await self.env.report_error(exc)
        if outcome.kind == "open" or outcome.reason is None:
            return None
        return await self._close(row, outcome.reason, outcome.price, outcome.timestamp)

    async def _replay_progress(
        self, row: SignalRow, candles: Sequence[Candle], start: int, end_ts: int, count: int
    ) -> None:
        """Partial-level callbacks for every candle the position lived through before its close."""
        for i in range(start, len(candles)):
            c = candles[i]
            if end_ts and c.timestamp >= end_ts:
                break
            price = window_vwap(candles, i + 1, count)
            percent_tp, percent_sl = progress_of(row, price)
            if percent_tp or percent_sl:
                await self._progress(row, price, percent_tp, percent_sl, c.timestamp + MINUTE_MS)


@types.coroutine
def _resume(coro: Any, yielded: Any) -> Generator[Any, Any, Any]:
    """Await the rest of coroutine `coro` whose first step was run by hand and yielded `yielded`:
    what `yield from coro` does after its first step (values sent and exceptions thrown in by the
    task go to `coro`, its return value is ours)."""
    while True:
        try:
            sent = yield yielded
        except GeneratorExit:
            coro.close()
            raise
        except BaseException as exc:  # the task's cancel (or any throw) goes to the call
            try:
                yielded = coro.throw(exc)
            except StopIteration as stop:
                return stop.value
        else:
            try:
                yielded = coro.send(sent)
            except StopIteration as stop:
                return stop.value


def _timestamp(candle: Candle) -> int:
    return candle.timestamp

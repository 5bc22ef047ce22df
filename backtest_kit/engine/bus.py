"""The event bus: one pyee emitter, one channel per event kind, awaited in-order delivery.

Delivery contract (page 00):
- a publisher awaits delivery to every listener of the channel, in subscription order, before it
  continues, so each listener sees one run's events in emission order and a run's `done` after all
  of its earlier events;
- an async listener is never called again before its previous call returned (a per-listener lock
  serialises publishers from concurrent pair tasks);
- a listener or filter that raises is reported on the `error` channel and to the logger, and never
  skips other listeners or stops the publisher; a raising error/exit listener is only logged, so an
  error can never loop.

The hot path is synchronous: when every listener of a channel is a plain function, `publish` calls
them and returns None without creating a coroutine; only async listeners cost an await.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar

from pyee import EventEmitter

from .logger import EngineLogger

E = TypeVar("E")

CHANNELS: Final = (
    "signal",
    "signal_live",
    "signal_backtest",
    "error",
    "exit",
    "done_live",
    "done_backtest",
    "progress",
    "performance",
    "validation",
    "partial_profit",
    "partial_loss",
    "risk",
)
_QUIET_CHANNELS: Final = frozenset({"error", "exit"})

Listener = Callable[[Any], Any]
Filter = Callable[[Any], Any]
Unsubscribe = Callable[[], None]


def _is_async_callable(fn: Callable[..., Any]) -> bool:
    call = type(fn).__call__ if not inspect.isfunction(fn) and not inspect.ismethod(fn) else None
    return inspect.iscoroutinefunction(fn) or (call is not None and inspect.iscoroutinefunction(call))


class Subscription:
    """One listener on one channel. Callable, so raw pyee `emit` still reaches it."""

    __slots__ = ("_lock", "active", "bus", "callback", "channel", "filter", "is_async", "once")

    def __init__(
        self, bus: EventBus, channel: str, callback: Listener, filter: Filter | None, once: bool
    ) -> None:
        self.bus = bus
        self.channel = channel
        self.callback = callback
        self.filter = filter
        self.once = once
        self.active = True
        self.is_async = once or filter is not None or _is_async_callable(callback)
        self._lock: asyncio.Lock | None = None

    def __call__(self, event: Any) -> None:
        """Entry point for raw pyee emits: deliver in the background, tracked by `drain()`."""
        self.bus._track(self.bus._deliver_one(self, event))

    def unsubscribe(self) -> None:
        if self.active:
            self.active = False
            self.bus._remove(self)

    @property
    def lock(self) -> asyncio.Lock:
        if self._lock is None:
            self._lock = asyncio.Lock()
        return self._lock


class EventBus:
    """Channels of the engine; see the module docstring for the delivery contract."""

    def __init__(self, logger: EngineLogger | None = None) -> None:
        self.emitter = EventEmitter()
        self.logger = logger or EngineLogger()
        self._snapshots: dict[str, tuple[Subscription, ...]] = {c: () for c in CHANNELS}
        self._background: set[asyncio.Task[None]] = set()

    # ---------------------------------------------------------------- subscription
    def subscribe(
        self, channel: str, callback: Listener, *, filter: Filter | None = None, once: bool = False
    ) -> Unsubscribe:
        """Add a listener; returns an idempotent unsubscribe function."""
        if channel not in self._snapshots:
            raise ValueError(f"channel: unknown channel {channel!r}; known: {', '.join(CHANNELS)}")
        if not callable(callback):
            from .errors import SchemaError

            raise SchemaError(f"callback: expected a callable for channel {channel!r}, got {callback!r}")
        sub = Subscription(self, channel, callback, filter, once)
        self.emitter.add_listener(channel, sub)
        self._refresh(channel)
        return sub.unsubscribe

    def listener_count(self, channel: str) -> int:
        return len(self._snapshots[channel])

    def has_listeners(self, channel: str) -> bool:
        return bool(self._snapshots[channel])

    def _remove(self, sub: Subscription) -> None:
        with contextlib.suppress(KeyError):
            self.emitter.remove_listener(sub.channel, sub)
        self._refresh(sub.channel)

    def _refresh(self, channel: str) -> None:
        self._snapshots[channel] = tuple(
            s for s in self.emitter.listeners(channel) if isinstance(s, Subscription)
        )

    # ---------------------------------------------------------------- publishing
    def publish(self, channel: str, event: Any) -> Awaitable[None] | None:
        """Deliver `event`; returns None when done synchronously, else an awaitable to await."""
        subs = self._snapshots[channel]
        for index, sub in enumerate(subs):
            if sub.is_async:
                return self._deliver_from(subs, index, event)
            try:
                result = sub.callback(event)
            except Exception as exc:
                failure = self._report(sub, exc, event)
                if failure is not None:
                    return self._continue_after(failure, subs, index + 1, event)
                continue
            if result is not None and inspect.isawaitable(result):
                return self._await_then_continue(sub, result, subs, index + 1, event)
        return None

    async def emit(self, channel: str, event: Any) -> None:
        """Publish and wait until every listener has processed `event`."""
        pending = self.publish(channel, event)
        if pending is not None:
            await pending

    def publish_soon(self, channel: str, event: Any) -> None:
        """Publish from sync code (signal handlers, timers); `drain()` waits for it."""
        pending = self.publish(channel, event)
        if pending is not None:
            self._track(pending)

    async def drain(self) -> None:
        """Wait until every background delivery started so far has finished."""
        while self._background:
            await asyncio.gather(*list(self._background), return_exceptions=True)

    def _track(self, awaitable: Awaitable[None]) -> None:
        async def runner() -> None:
            await awaitable

        task = asyncio.get_running_loop().create_task(runner())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _deliver_from(self, subs: tuple[Subscription, ...], start: int, event: Any) -> None:
        for sub in subs[start:]:
            await self._deliver_one(sub, event)

    async def _continue_after(
        self, first: Awaitable[None], subs: tuple[Subscription, ...], start: int, event: Any
    ) -> None:
        await first
        await self._deliver_from(subs, start, event)

    async def _await_then_continue(
        self,
        sub: Subscription,
        result: Awaitable[Any],
        subs: tuple[Subscription, ...],
        start: int,
        event: Any,
    ) -> None:
        # a plain function that returned an awaitable (e.g. `lambda e: coro(e)`) is an async
        # listener too: run it under its lock so it never overlaps with its previous call
        sub.is_async = True
        try:
            async with sub.lock:
                await result
        except Exception as exc:
            failure = self._report(sub, exc, event)
            if failure is not None:
                await failure
        await self._deliver_from(subs, start, event)

    async def _deliver_one(self, sub: Subscription, event: Any) -> None:
        if sub.filter is not None:
            if not sub.active:
                return
            try:
                matched = sub.filter(event)
                if inspect.isawaitable(matched):
                    matched = await matched
            except Exception as exc:
                # a raising filter counts as "no match"
                failure = self._report(sub, exc, event)
                if failure is not None:
                    await failure
                return
            if not matched or not sub.active:
                return
        if sub.once:
            if not sub.active:
                return
            sub.unsubscribe()  # before the callback: fires at most once even if it raises
        async with sub.lock:
            try:
                result = sub.callback(event)
                if inspect.isawaitable(result):
                    await result
            except Exception as exc:
                failure = self._report(sub, exc, event)
                if failure is not None:
                    await failure

    def _report(self, sub: Subscription, exc: Exception, event: Any) -> Awaitable[None] | None:
        name = getattr(sub.callback, "__qualname__", repr(sub.callback))
        self.logger.warn(f"listener {name} on channel {sub.channel!r} raised", repr(exc))
        if sub.channel in _QUIET_CHANNELS:
            return None
        return self.publish("error", exc)


def as_listener(fn: Callable[[E], Any]) -> Listener:
    """Identity helper for typing user callbacks."""
    return fn

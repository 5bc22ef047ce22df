"""The event bus: one pyee emitter, one channel per event kind, awaited in-order delivery.

Delivery contract ([public API](../../docs/design/public-api.md#delivery-contract)):
- a publisher awaits delivery to every listener of the channel, in subscription order, before it
  continues, so each listener sees one run's events in emission order and a run's `done` after all
  of its earlier events;
- an async listener is never called again before its previous call returned (a per-listener FIFO
  turn serialises publishers from concurrent pair tasks);
- a listener or filter that raises is reported on the `error` channel and to the logger, and never
  skips other listeners or stops the publisher; a raising error/exit listener is only logged, so an
  error can never loop;
- unsubscribing takes effect at once: a listener removed while an event is being delivered (by an
  earlier listener, or while it waits for its turn) does not receive that event;
- a call that outlives the run's per-delivery timeout (`CC_LISTENER_TIMEOUT_SECONDS` for live runs,
  `CC_BACKTEST_LISTENER_TIMEOUT_SECONDS` for backtests, 0 = off) is cancelled and reported as a
  `ListenerTimeoutError` naming the listener and channel; delivery goes on with the next listener.

The hot path is synchronous: when every listener of a channel is a plain function, `publish` calls
them and returns None without creating a coroutine; only async listeners cost an await, and a plain
function after an async listener is still called directly (its call cannot overlap with its previous
one, so it needs no turn). Subscribing
and unsubscribing are O(1): the per-channel snapshot that `publish` iterates is rebuilt lazily, once,
by the first publish after a change.

Delivery timing (`time_deliveries`, the dashboard's metrics) costs nothing until someone asks for it:
it swaps this bus's `publish` for a timed one (an instance attribute), so a bus nobody times runs the
plain method. A run loop binds `bus.publish` when it starts, so runs started before the first
`time_deliveries` are not timed on their tick channels (every other publish is).

Timeouts and clocks. The timeout bounds a listener's own call, not its wait for its turn (a healthy
listener queued behind another pair's event must not be cut off). It is a wall-clock timer (a hang on
real I/O is a wall-clock hang whatever the engine clock says); with a simulated engine clock (e.g.
`VirtualClock`) a live delivery is also cut after the same time on the engine clock, so a listener
that sleeps on the clock behaves as it would in production. A sync listener cannot be interrupted
(it blocks the event loop), nor can a call that swallows its cancellation. On a `VirtualClock`, a
delivery waiting for its turn counts as waiting on the clock (`VirtualClock.wait_on`): the delivery
ahead of it may be sleeping on the clock, and holding time still for the waiter would freeze every
pair for good.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final, TypeVar, overload

from pyee import EventEmitter

from .channels import ALL_CHANNELS, CHANNEL_BY_NAME, ERROR, EXIT, Channel
from .clock import Clock, SystemClock
from .errors import ListenerTimeoutError, SchemaError
from .logger import EngineLogger

if TYPE_CHECKING:
    from .config import Config

__all__ = [
    "CHANNELS",
    "EventBus",
    "Filter",
    "Limit",
    "Listener",
    "Subscription",
    "Unsubscribe",
    "as_listener",
    "enter_run",
    "leave_run",
]

E = TypeVar("E")

# the channels' names (`bk.CHANNELS`); the typed constants are in `channels.py`
CHANNELS: Final[tuple[str, ...]] = tuple(channel.name for channel in ALL_CHANNELS)
_QUIET_CHANNELS: Final = frozenset({ERROR.name, EXIT.name})
_LIVE_KEY: Final = "CC_LISTENER_TIMEOUT_SECONDS"
_BACKTEST_KEY: Final = "CC_BACKTEST_LISTENER_TIMEOUT_SECONDS"

Listener = Callable[[Any], Any]
Filter = Callable[[Any], Any]
Unsubscribe = Callable[[], None]
Limit = tuple[float, str, bool]  # (seconds, config key, also on the engine clock)

# True inside a backtest run, False inside a live run, None elsewhere (no timeout: nothing to freeze).
# Set by the runners for the task (or foreground iteration) of a run; background deliveries inherit it.
_RUN_MODE: contextvars.ContextVar[bool | None] = contextvars.ContextVar("backtest_kit_run_mode", default=None)


def enter_run(backtest: bool) -> contextvars.Token[bool | None]:
    """Deliveries from the current context belong to a backtest (True) or a live run (False)."""
    return _RUN_MODE.set(backtest)


def leave_run(token: contextvars.Token[bool | None]) -> None:
    # an async generator may be finalised in another context; that context never had the mode set
    with contextlib.suppress(ValueError):
        _RUN_MODE.reset(token)


def _is_async_callable(fn: Callable[..., Any]) -> bool:
    call = type(fn).__call__ if not inspect.isfunction(fn) and not inspect.ismethod(fn) else None
    return inspect.iscoroutinefunction(fn) or (call is not None and inspect.iscoroutinefunction(call))


def _name(sub: Subscription) -> str:
    """The listener's qualified name for logs and errors; never its repr (an object's repr may show
    a token or a URL with credentials)."""
    callback = sub.callback
    for target in (callback, getattr(callback, "func", None)):  # functools.partial: its function
        name = getattr(target, "__qualname__", None)
        if isinstance(name, str):
            return name
    return f"{type(callback).__qualname__} instance"


class Subscription:
    """One listener on one channel. Callable, so raw pyee `emit` still reaches it.

    `busy` and `waiters` are the listener's FIFO turn: the delivery that holds the turn hands it
    straight to the oldest waiter, so deliveries run one at a time in arrival order.
    """

    __slots__ = ("active", "bus", "busy", "callback", "channel", "filter", "is_async", "once", "waiters")

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
        self.busy = False
        self.waiters: deque[asyncio.Future[None]] | None = None

    def __call__(self, event: Any) -> None:
        """Entry point for raw pyee emits: deliver in the background, tracked by `drain()`."""
        self.bus._track(self.bus._deliver_one(self, event))

    def unsubscribe(self) -> None:
        if self.active:
            self.active = False
            self.bus._remove(self)


class EventBus:
    """Channels of the engine; see the module docstring for the delivery contract.

    `clock` and `config` come from the engine: the config holds the per-delivery timeouts, and the
    clock tells whether a delivery must also be bounded on simulated time and lets a delivery waiting
    for its turn count as waiting on a `VirtualClock` (a bus without them never times out).
    """

    def __init__(
        self,
        logger: EngineLogger | None = None,
        *,
        clock: Clock | None = None,
        config: Callable[[], Config] | None = None,
    ) -> None:
        self.emitter = EventEmitter()
        self.logger = logger or EngineLogger()
        # keyed by each declared `Channel` and by its name: a publish through either is one dict lookup
        self._subs: dict[Channel[Any] | str, dict[Subscription, None]] = {}
        self._snapshots: dict[Channel[Any] | str, tuple[Subscription, ...] | None] = {}
        for channel in ALL_CHANNELS:
            self._subs[channel] = self._subs[channel.name] = {}
            self._snapshots[channel] = self._snapshots[channel.name] = ()
        self._background: set[asyncio.Task[None]] = set()
        self._config = config
        self._clock = clock
        self._simulated = clock is not None and not isinstance(clock, SystemClock)
        self._wait_on: Callable[[asyncio.Future[None]], Awaitable[None]] | None = getattr(clock, "wait_on", None)
        self._timers: list[Callable[[str, float], None]] = []

    # ---------------------------------------------------------------- subscription
    @overload
    def subscribe(
        self,
        channel: Channel[E],
        callback: Callable[[E], Any],
        *,
        filter: Callable[[E], Any] | None = None,
        once: bool = False,
    ) -> Unsubscribe: ...

    @overload
    def subscribe(
        self, channel: str, callback: Listener, *, filter: Filter | None = None, once: bool = False
    ) -> Unsubscribe: ...

    def subscribe(
        self,
        channel: Channel[Any] | str,
        callback: Listener,
        *,
        filter: Filter | None = None,
        once: bool = False,
    ) -> Unsubscribe:
        """Add a listener (O(1)); returns an idempotent unsubscribe function (O(1)).

        `channel` is a constant of `channels.py` (typed: mypy checks `callback` against the channel's
        event type) or a channel's name (`"signal"`, untyped)."""
        subs = self._subs.get(channel)
        if subs is None:
            raise ValueError(f"channel: unknown channel {channel!r}; known: {', '.join(CHANNELS)}")
        name = str(channel)
        if not callable(callback):
            raise SchemaError(f"callback: expected a callable for channel {name!r}, got {callback!r}")
        sub = Subscription(self, name, callback, filter, once)
        self.emitter.add_listener(name, sub)
        subs[sub] = None
        self._stale(name)
        return sub.unsubscribe

    def listener_count(self, channel: Channel[Any] | str) -> int:
        return len(self._subs[channel])

    def has_listeners(self, channel: Channel[Any] | str) -> bool:
        return bool(self._subs[channel])

    def _remove(self, sub: Subscription) -> None:
        with contextlib.suppress(KeyError):
            self.emitter.remove_listener(sub.channel, sub)
        self._subs[sub.channel].pop(sub, None)
        self._stale(sub.channel)

    def _stale(self, name: str) -> None:
        """The listeners of channel `name` changed: both of its snapshots are rebuilt on next publish."""
        snapshots = self._snapshots
        snapshots[name] = snapshots[CHANNEL_BY_NAME[name]] = None

    def _snapshot(self, channel: Channel[Any] | str) -> tuple[Subscription, ...]:
        """The listeners an event published now goes to; later changes make a new tuple."""
        subs = self._snapshots[channel] = tuple(self._subs[channel])
        return subs

    # ---------------------------------------------------------------- delivery timing
    def time_deliveries(self, observer: Callable[[str, float], None]) -> Unsubscribe:
        """Call `observer(channel_name, seconds)` once every listener of a publish has its event.

        The time is wall clock from `publish` to the end of delivery (awaited listeners included). Until
        the first observer, `publish` is the plain method; returns an idempotent remove function (the
        last one removed puts the plain method back)."""
        self._timers.append(observer)
        vars(self)["publish"] = self._timed_publish
        removed = [False]

        def remove() -> None:
            if removed[0]:
                return
            removed[0] = True
            with contextlib.suppress(ValueError):
                self._timers.remove(observer)
            if not self._timers:
                vars(self).pop("publish", None)

        return remove

    def _timed_publish(self, channel: Channel[Any] | str, event: Any) -> Awaitable[None] | None:
        started = time.perf_counter()
        pending = EventBus.publish(self, channel, event)
        if pending is None:
            self._observe(str(channel), time.perf_counter() - started)
            return None
        return self._timed_wait(str(channel), pending, started)

    async def _timed_wait(self, name: str, pending: Awaitable[None], started: float) -> None:
        try:
            await pending
        finally:
            self._observe(name, time.perf_counter() - started)

    def _observe(self, name: str, seconds: float) -> None:
        for observer in tuple(self._timers):
            try:
                observer(name, seconds)
            except Exception as exc:  # a metrics bug must never break delivery
                self.logger.warn(f"delivery timer on channel {name!r} raised", repr(exc))

    # ---------------------------------------------------------------- publishing
    @overload
    def publish(self, channel: Channel[E], event: E) -> Awaitable[None] | None: ...

    @overload
    def publish(self, channel: str, event: Any) -> Awaitable[None] | None: ...

    def publish(self, channel: Channel[Any] | str, event: Any) -> Awaitable[None] | None:
        """Deliver `event`; returns None when done synchronously, else an awaitable to await."""
        subs = self._snapshots[channel]
        if subs is None:
            subs = self._snapshot(channel)
        for index, sub in enumerate(subs):
            if sub.is_async:
                return self._deliver_from(subs, index, event)
            if not sub.active:  # unsubscribed by an earlier listener of this very event
                continue
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

    @overload
    async def emit(self, channel: Channel[E], event: E) -> None: ...

    @overload
    async def emit(self, channel: str, event: Any) -> None: ...

    async def emit(self, channel: Channel[Any] | str, event: Any) -> None:
        """Publish and wait until every listener has processed `event`."""
        pending = self.publish(channel, event)
        if pending is not None:
            await pending

    @overload
    def publish_soon(self, channel: Channel[E], event: E) -> None: ...

    @overload
    def publish_soon(self, channel: str, event: Any) -> None: ...

    def publish_soon(self, channel: Channel[Any] | str, event: Any) -> None:
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
        """Deliver to `subs[start:]` in order, once an earlier listener made delivery asynchronous.

        A plain function is called directly, as `publish` does: its call never awaits, so it cannot
        overlap with its previous call and needs no turn; routing it through `_deliver_one` cost a
        coroutine and a turn per sync listener after the first async one (1.7x for 10 mixed).
        """
        for index in range(start, len(subs)):
            sub = subs[index]
            if not sub.active:  # unsubscribed, maybe by an earlier listener of this very event
                continue
            if sub.is_async:
                await self._deliver_one(sub, event)
                continue
            try:
                result = sub.callback(event)
            except Exception as exc:
                await self._report_async(sub, exc, event)
                continue
            if result is not None and inspect.isawaitable(result):
                await self._await_then_continue(sub, result, subs, index + 1, event)
                return

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
        # listener too: run it in its turn so it never overlaps with its previous call
        sub.is_async = True
        if sub.busy:
            await self._wait_turn(sub, result)
        else:
            sub.busy = True
        failure: Exception | None = None
        try:
            if sub.active:
                limit = self._limit()
                await (result if limit is None else self._bounded(sub, result, limit))
            elif inspect.iscoroutine(result):
                result.close()  # unsubscribed while it waited: its body never runs
        except Exception as exc:
            failure = exc
        finally:
            self._pass_turn(sub)
        if failure is not None:
            await self._report_async(sub, failure, event)
        await self._deliver_from(subs, start, event)

    async def _deliver_one(self, sub: Subscription, event: Any) -> None:
        if sub.filter is not None and not await self._matches(sub, sub.filter, event):
            return
        claimed = False
        if sub.once:
            if not sub.active:
                return
            sub.unsubscribe()  # before the callback: fires at most once even if it raises
            claimed = True
        if sub.busy:
            await self._wait_turn(sub)
        else:
            sub.busy = True
        failure: Exception | None = None
        try:
            if sub.active or claimed:  # an unsubscribe while it waited for its turn wins
                result = sub.callback(event)
                if inspect.isawaitable(result):
                    limit = self._limit()
                    await (result if limit is None else self._bounded(sub, result, limit))
        except Exception as exc:
            failure = exc
        finally:
            self._pass_turn(sub)
        if failure is not None:
            await self._report_async(sub, failure, event)

    async def _matches(self, sub: Subscription, filter: Filter, event: Any) -> bool:
        if not sub.active:
            return False
        try:
            matched = filter(event)
            if inspect.isawaitable(matched):
                limit = self._limit()
                matched = await (matched if limit is None else self._bounded(sub, matched, limit))
        except Exception as exc:
            # a raising filter counts as "no match"
            await self._report_async(sub, exc, event)
            return False
        return bool(matched) and sub.active

    # ---------------------------------------------------------------- turns and timeouts
    async def _wait_turn(self, sub: Subscription, pending: Awaitable[Any] | None = None) -> None:
        """Wait until the delivery holding `sub`'s turn hands it over; `_pass_turn` must follow.

        On a `VirtualClock` the wait counts as waiting on the clock (`VirtualClock.wait_on`): the
        holder may be sleeping on the clock, and time must go on for it to finish.
        """
        waiters = sub.waiters
        if waiters is None:
            waiters = sub.waiters = deque()
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiters.append(turn)
        try:
            await (turn if self._wait_on is None else self._wait_on(turn))
        except BaseException:
            if turn.done() and not turn.cancelled():
                self._pass_turn(sub)  # handed the turn just as we were cancelled: hand it on
            else:
                turn.cancel()  # `_pass_turn` skips it
            if inspect.iscoroutine(pending):
                pending.close()
            raise

    @staticmethod
    def _pass_turn(sub: Subscription) -> None:
        waiters = sub.waiters
        while waiters:
            turn = waiters.popleft()
            if not turn.done():
                turn.set_result(None)  # `busy` stays True: the turn goes straight to the waiter
                return
        sub.busy = False

    def _limit(self) -> Limit | None:
        """The per-delivery timeout of the run publishing now, or None when it is off."""
        backtest = _RUN_MODE.get()
        get_config = self._config
        if backtest is None or get_config is None:
            return None
        config = get_config()
        seconds = config.CC_BACKTEST_LISTENER_TIMEOUT_SECONDS if backtest else config.CC_LISTENER_TIMEOUT_SECONDS
        if seconds <= 0:
            return None
        return seconds, _BACKTEST_KEY if backtest else _LIVE_KEY, self._simulated and not backtest

    async def _bounded(self, sub: Subscription, awaitable: Awaitable[Any], limit: Limit) -> Any:
        """Await a listener's (or filter's) awaitable under the current run's per-delivery timeout."""
        seconds, key, on_clock = limit
        deadline = asyncio.timeout(seconds)
        try:
            async with deadline:
                stop_watch = self._watch_clock(deadline, seconds) if on_clock else None
                try:
                    return await awaitable
                finally:
                    if stop_watch is not None:
                        stop_watch()
        except TimeoutError:
            if deadline.expired():
                raise ListenerTimeoutError(_name(sub), sub.channel, seconds, key) from None
            raise  # the listener's own TimeoutError

    def _watch_clock(self, deadline: asyncio.Timeout, seconds: float) -> Callable[[], None]:
        """Expire `deadline` after `seconds` of engine-clock time as well; returns the stop function.

        A `VirtualClock` offers `timer`, registered at once and owned by no one. Another clock gets a
        watchdog task in an empty context: on a virtual clock it must not sleep on behalf of the
        delivering pair, or the pair would look idle while its listener works.
        """
        clock = self._clock
        assert clock is not None
        loop = asyncio.get_running_loop()
        watching = [True]

        def expire() -> None:
            if watching[0] and not deadline.expired():
                deadline.reschedule(loop.time())

        def stop(handle: asyncio.Future[Any]) -> Callable[[], None]:
            def cancel() -> None:
                watching[0] = False
                handle.cancel()

            return cancel

        timer = getattr(clock, "timer", None)
        if timer is not None:
            fut: asyncio.Future[None] = timer(seconds)
            fut.add_done_callback(lambda f: None if f.cancelled() else expire())
            return stop(fut)

        async def watchdog() -> None:
            await clock.sleep(seconds)
            expire()

        return stop(loop.create_task(watchdog(), context=contextvars.Context()))

    async def _report_async(self, sub: Subscription, exc: Exception, event: Any) -> None:
        failure = self._report(sub, exc, event)
        if failure is not None:
            await failure

    def _report(self, sub: Subscription, exc: Exception, event: Any) -> Awaitable[None] | None:
        what = "timed out" if isinstance(exc, ListenerTimeoutError) else "raised"
        self.logger.warn(f"listener {_name(sub)} on channel {sub.channel!r} {what}", repr(exc))
        if sub.channel in _QUIET_CHANNELS:
            return None
        return self.publish(ERROR, exc)


def as_listener(fn: Callable[[E], Any]) -> Listener:
    """Identity helper for typing user callbacks."""
    return fn

"""The notifier protocol, the queued delivery base class and `attach_notifier` (behind `add_notifier`).

A notifier must never slow the engine down. `QueuedNotifier.submit(event)` (also `notify` and
calling the notifier) only does `put_nowait` on a bounded `asyncio.Queue`; when the queue is full the
event is dropped and counted (`stats.dropped`, with a rate-limited warning in the log). A consumer
task per notifier, started on first use, formats each event and delivers it with a per-attempt
timeout, retrying retryable failures (connection errors, timeouts, HTTP 429 and 5xx) with
exponential backoff. `await notifier.aclose(timeout)` stops accepting events, drains the queue until
the deadline, then cancels what is left (counted as dropped) and closes the connection pool;
`engine.close()` does that for every notifier added with `add_notifier`.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
import logging
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from ...engine.bus import CHANNELS
from ...engine.channels import DONE_LIVE, ERROR, PARTIAL_LOSS, PARTIAL_PROFIT, RISK, SIGNAL_LIVE
from ...engine.errors import SchemaError
from .format import default_filter, default_format
from .http import DeliveryError

if TYPE_CHECKING:
    from ...engine.ports import NotifierHost

__all__ = [
    "DEFAULT_CHANNELS",
    "Formatter",
    "Notifier",
    "NotifierStats",
    "QueuedAdapter",
    "QueuedNotifier",
    "attach_notifier",
]

DEFAULT_CHANNELS: tuple[str, ...] = tuple(
    channel.name for channel in (SIGNAL_LIVE, ERROR, RISK, PARTIAL_PROFIT, PARTIAL_LOSS, DONE_LIVE)
)
"""Channels `add_notifier` subscribes to by default (with `default_filter`: no idle/active ticks,
nothing from backtests)."""

Formatter = Callable[[Any], "str | None"]

_log = logging.getLogger("backtest_kit.notifiers")


@runtime_checkable
class Notifier(Protocol):
    """Anything with `async notify(event)`; `add_notifier` queues calls to it off the engine path."""

    async def notify(self, event: Any) -> None: ...


@dataclass
class NotifierStats:
    """Counters of one notifier (read `notifier.stats`)."""

    submitted: int = 0
    sent: int = 0
    failed: int = 0
    dropped: int = 0
    retries: int = 0
    skipped: int = 0


class QueuedNotifier:
    """Base of the network notifiers: bounded queue, consumer task, timeout, retries with backoff.

    Subclasses implement `async send(text, event)`: one attempt, raising `DeliveryError` (or any
    exception, treated as retryable) on failure. `formatter(event) -> str | None` replaces the default
    text; returning None skips the event. `logger` receives warnings (a `logging.Logger`); secrets
    listed by `_secrets()` are masked in everything logged.
    """

    name = "notifier"

    def __init__(
        self,
        *,
        formatter: Formatter | None = None,
        queue_size: int = 1000,
        retries: int = 3,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        timeout: float = 10.0,
        close_timeout: float = 5.0,
        logger: logging.Logger | None = None,
    ) -> None:
        if isinstance(queue_size, bool) or not isinstance(queue_size, int) or queue_size < 1:
            raise ValueError(f"queue_size: expected a whole number >= 1, got {queue_size!r}")
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ValueError(f"retries: expected a whole number >= 0, got {retries!r}")
        for label, value in (("backoff", backoff), ("max_backoff", max_backoff), ("timeout", timeout),
                             ("close_timeout", close_timeout)):
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ValueError(f"{label}: expected a number >= 0, got {value!r}")
        if timeout <= 0:
            raise ValueError(f"timeout: expected a number > 0, got {timeout!r}")
        self.formatter: Formatter = formatter or default_format
        self.queue_size = queue_size
        self.retries = retries
        self.backoff = float(backoff)
        self.max_backoff = float(max_backoff)
        self.timeout = float(timeout)
        self.close_timeout = float(close_timeout)
        self.logger = logger or _log
        self.stats = NotifierStats()
        self._queue: asyncio.Queue[Any] | None = None
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    # ------------------------------------------------------------------ engine side (never awaits I/O)
    def submit(self, event: Any) -> bool:
        """Queue `event` for delivery; False (and counted as dropped) when full, closed or no loop."""
        if self._closed:
            self._drop("notifier is closed")
            return False
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._drop("no running event loop")
            return False
        if self._task is None or self._task.done() or self._loop is not loop:
            self._loop = loop
            self._queue = asyncio.Queue(self.queue_size)
            # A context of its own: created inside whichever run submitted first, the consumer would
            # otherwise carry that run's execution context (symbol and time for `get_candles`), run
            # mode and virtual-clock ownership into every later delivery.
            self._task = loop.create_task(self._consume(self._queue), name=f"backtest-kit notifier {self.name}",
                                          context=contextvars.Context())
        assert self._queue is not None
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self._drop(f"queue full ({self.queue_size})")
            return False
        self.stats.submitted += 1
        return True

    def __call__(self, event: Any) -> None:
        """So a notifier can be passed to any `listen_*` function directly."""
        self.submit(event)

    async def notify(self, event: Any) -> None:
        """The `Notifier` protocol: queue the event (returns at once)."""
        self.submit(event)

    def _drop(self, why: str) -> None:
        self.stats.dropped += 1
        n = self.stats.dropped
        if n == 1 or n % 100 == 0:
            self._warn(f"notifier {self.name}: event dropped ({why}); {n} dropped so far")

    # ------------------------------------------------------------------ consumer side
    async def _consume(self, queue: asyncio.Queue[Any]) -> None:
        while True:
            event = await queue.get()
            try:
                await self._deliver(event)
            finally:
                queue.task_done()

    async def _deliver(self, event: Any) -> None:
        try:
            text = self.formatter(event)
        except Exception as exc:
            self.stats.failed += 1
            self._warn(f"notifier {self.name}: formatter raised {type(exc).__name__}: {exc}")
            return
        if text is None:
            self.stats.skipped += 1
            return
        attempt = 0
        while True:
            try:
                async with asyncio.timeout(self.timeout):
                    await self.send(text, event)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                retryable, retry_after, reason = _classify(exc, self.timeout)
                if not retryable or attempt >= self.retries:
                    self.stats.failed += 1
                    tries = f"after {attempt + 1} attempt(s)"
                    self._warn(f"notifier {self.name}: delivery failed {tries}: {reason}")
                    return
                delay = min(self.max_backoff, self.backoff * (2**attempt)) * random.uniform(0.8, 1.2)
                if retry_after is not None:
                    delay = min(self.max_backoff, max(delay, retry_after))
                attempt += 1
                self.stats.retries += 1
                self._debug(f"notifier {self.name}: attempt {attempt} failed ({reason}); retry in {delay:.2f}s")
                await asyncio.sleep(delay)
                continue
            self.stats.sent += 1
            return

    async def send(self, text: str, event: Any) -> None:
        """Deliver one message (one attempt). Subclasses override."""
        raise NotImplementedError

    async def _close_transport(self) -> None:
        """Release network resources (subclasses override)."""

    # ------------------------------------------------------------------ lifecycle
    @property
    def pending(self) -> int:
        """Events queued and not yet delivered (or given up)."""
        return self._queue.qsize() if self._queue is not None else 0

    async def flush(self, timeout: float | None = None) -> bool:
        """Wait until every queued event was delivered or given up; False if `timeout` passed first."""
        if self._queue is None or self._task is None or self._task.done() \
                or self._loop is not asyncio.get_running_loop():
            return True
        try:
            async with asyncio.timeout(timeout):
                await self._queue.join()
        except TimeoutError:
            return False
        return True

    async def aclose(self, timeout: float | None = None) -> None:
        """Stop accepting events, deliver what is queued until `timeout` (default `close_timeout`),
        drop the rest (counted), and close the connection pool. Safe to call more than once."""
        self._closed = True
        task = self._task
        if task is not None and not task.done() and self._loop is asyncio.get_running_loop():
            deadline = self.close_timeout if timeout is None else timeout
            drained = await self.flush(deadline)
            if not drained and self._queue is not None:
                left = self._queue.qsize() + 1  # + the one in flight
                self.stats.dropped += left
                self._warn(f"notifier {self.name}: closed with {left} undelivered event(s) after {deadline:g}s")
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._task = None
        try:
            await self._close_transport()
        except Exception as exc:
            self._warn(f"notifier {self.name}: close failed: {type(exc).__name__}")
        if self.stats.dropped:
            self._warn(f"notifier {self.name}: {self.stats.dropped} event(s) dropped in total")

    # ------------------------------------------------------------------ logging without secrets
    def _secrets(self) -> Iterable[str]:
        return ()

    def redact(self, text: str) -> str:
        for secret in self._secrets():
            if secret:
                text = text.replace(secret, "***")
        return text

    def _warn(self, text: str) -> None:
        with contextlib.suppress(Exception):
            self.logger.warning(self.redact(text))

    def _debug(self, text: str) -> None:
        with contextlib.suppress(Exception):
            self.logger.debug(self.redact(text))

    def __repr__(self) -> str:
        s = self.stats
        return (f"<{type(self).__name__} {self.name} sent={s.sent} failed={s.failed} dropped={s.dropped} "
                f"pending={self.pending}>")


def _classify(exc: BaseException, timeout: float) -> tuple[bool, float | None, str]:
    if isinstance(exc, DeliveryError):
        return exc.retryable, exc.retry_after, str(exc)
    if isinstance(exc, TimeoutError):
        return True, None, f"timed out after {timeout:g}s"
    return True, None, type(exc).__name__  # unknown failures: retry; never log their text (secrets)


class QueuedAdapter(QueuedNotifier):
    """Runs any `Notifier` (an object with `async notify(event)`) behind a queue with retries.

    The event is passed through unchanged; the formatter only decides whether to skip it (None).
    """

    def __init__(self, inner: Any, **options: Any) -> None:
        super().__init__(**options)
        self.inner = inner
        self.name = getattr(inner, "name", None) or type(inner).__name__

    async def send(self, text: str, event: Any) -> None:
        result = self.inner.notify(event)
        if inspect.isawaitable(result):
            await result

    async def _close_transport(self) -> None:
        close = getattr(self.inner, "aclose", None)
        if close is not None:
            result = close()
            if inspect.isawaitable(result):
                await result


def attach_notifier(
    engine: NotifierHost,
    notifier: Any,
    *,
    channels: Iterable[str] | None = None,
    filter: Callable[[Any], Any] | None = None,
    hooked: set[int] | None = None,
) -> Callable[[], None]:
    """Subscribe `notifier` to `channels` (default `DEFAULT_CHANNELS`) through `filter` (default
    `default_filter`); returns an unsubscribe function. The notifier is closed by `engine.close()`.

    `hooked`: the ids of the notifiers whose close is already a shutdown hook of `engine` (kept by the
    engine, so that a notifier added twice is closed once); None: hook this one."""
    if not hasattr(notifier, "submit"):
        if not callable(getattr(notifier, "notify", None)):
            raise SchemaError(f"notifier: expected an object with async notify(event), got {notifier!r}")
        notifier = QueuedAdapter(notifier)
    names = tuple(DEFAULT_CHANNELS if channels is None else ([channels] if isinstance(channels, str) else channels))
    for channel in names:
        if channel not in CHANNELS:
            raise SchemaError(f"channels: unknown channel {channel!r}; known: {', '.join(CHANNELS)}")
    accept = default_filter if filter is None else filter
    submit = notifier.submit
    log = engine.logger

    class Deliver:
        # With the default filter (no backtest events), a notifier does not make backtests track
        # partial levels (see PartialService.tracker).
        live_only = filter is None

        def __call__(self, event: Any) -> None:
            try:
                wanted = accept(event)
            except Exception as exc:
                log.warn(f"notifier filter raised {type(exc).__name__}", repr(exc))
                return
            if wanted:
                submit(event)

    deliver = Deliver()

    unsubscribes = [engine.bus.subscribe(channel, deliver) for channel in names]
    if hooked is None:
        hooked = set()
    if id(notifier) not in hooked:
        hooked.add(id(notifier))
        close = getattr(notifier, "aclose", None)
        if close is not None:
            engine.add_shutdown_hook(close)

    def unsubscribe() -> None:
        for fn in unsubscribes:
            fn()

    return unsubscribe

"""`NatsBridge`: publish chosen engine channels to NATS JetStream, never slowing or stalling the engine.

Engine side: the bridge subscribes a plain function to each chosen channel; it numbers the event
(its sequence in this bridge, which makes its message id) and puts it into a bounded queue with
`put_nowait`. Nothing there awaits the network, so a slow, hung or absent broker costs a tick one
dict lookup and one append. When the queue is full (the broker has been down for a while) the
event is dropped and counted (`stats.dropped`); the first drop, and every `report_every`-th after it,
is logged and published on the engine's `error` channel as an `EventsDroppedError`, so it reaches
`listen_error` and the notifiers. (The error cannot itself get into the full queue; it is not
reported in a loop.)

Broker side: one task publishes the queued events in order, each awaiting JetStream's ack (the
stream stored it). A failure (broker down, ack timeout, stream missing) is retried with capped
exponential backoff until the broker answers, with the same message id: JetStream's duplicate window
(`duplicate_window`, 2 minutes by default) stores a message whose ack was lost only once, and a
subscriber (`RemoteEvents`) drops ids it has seen. So what JetStream acknowledged is in the stream
(durability is the stream's: file storage by default), and the order of one bridge's events in the
stream is the order they were published on the bus. One publish in flight at a time (about 5,000
events/s on a local broker) is what keeps that order across an outage: with several in flight, one
lost with the connection could be stored after a later one on the retry. `max_in_flight > 1`
pipelines publishes for throughput and accepts that reordering around an outage.

The bridge creates its stream (`stream`, subjects ``<prefix>.>``) when it first connects, or uses the
one that exists. `await bridge.aclose(timeout)` (run by `engine.close()` for an attached bridge)
stops accepting events, publishes what is queued until the deadline, then counts the rest as lost
(`stats.lost`, logged) and closes the connection.

The URL may hold credentials (``nats://user:pass@host``): they are registered as secrets, and logs
and errors name the server by host and port only.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import itertools
import logging
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from ..engine.channels import ERROR, Channel
from ..engine.errors import ConfigError, EventsDroppedError
from ..engine.logger import EngineLogger
from ..engine.models import ActiveResult, IdleResult
from ..engine.redact import redact, register_secret
from .nats_wire import (
    DEFAULT_BRIDGE_CHANNELS,
    HEADER_MSG_ID,
    HEADER_SEQ,
    HEADER_SOURCE,
    check_name,
    encode_event,
    ensure_stream,
    event_names,
    import_nats,
    resolve_channels,
    subject_for,
)

if TYPE_CHECKING:
    from ..engine.ports import NotifierHost

__all__ = ["BridgeStats", "EventsDroppedError", "NatsBridge", "lifecycle_filter", "server_label"]

_log = logging.getLogger("backtest_kit.nats")


@dataclass
class BridgeStats:
    """Counters of one bridge (read `bridge.stats`).

    `queued`: accepted from the bus; `published`: acknowledged by JetStream; `dropped`: refused
    because the queue was full (or the bridge closed); `lost`: still queued when `aclose` gave up;
    `retries`: failed publish attempts retried; `skipped`: events that could not be encoded.
    """

    queued: int = 0
    published: int = 0
    dropped: int = 0
    lost: int = 0
    retries: int = 0
    skipped: int = 0


def lifecycle_filter(event: Any) -> bool:
    """The default filter: every event except idle and active ticks."""
    return not isinstance(event, IdleResult | ActiveResult)


def server_label(servers: str | list[str]) -> str:
    """``host:port`` of each server URL, for logs and errors (never a user or a password)."""
    labels = []
    for url in [servers] if isinstance(servers, str) else servers:
        try:
            parts = urlsplit(url if "://" in url else f"nats://{url}")
            labels.append(f"{parts.hostname or '?'}:{parts.port or 4222}")
        except ValueError:
            labels.append("<url>")
    return ",".join(labels)


def register_url_secrets(servers: str | list[str]) -> None:
    for url in [servers] if isinstance(servers, str) else servers:
        with contextlib.suppress(ValueError):
            parts = urlsplit(url if "://" in url else f"nats://{url}")
            register_secret(parts.password)
            if parts.password is None:  # nats://token@host: the user part is a token
                register_secret(parts.username)


@dataclass(slots=True)
class _Item:
    channel: str
    event: Any
    seq: int


class NatsBridge:
    """Publishes engine events to NATS JetStream; see the module docstring.

    `servers`: one URL or a list. `channels`: channel constants or names (default
    `DEFAULT_BRIDGE_CHANNELS`). `filter(event) -> bool` (default `lifecycle_filter`: no idle/active
    ticks). `source`: this publisher's id in message ids (default: a random one per bridge; give a
    stable one only if each process has its own). `queue_size`: events held while the broker is slow
    or away. `ack_timeout`: seconds to wait for one publish ack before retrying. `close_timeout`:
    default deadline of `aclose`. `duplicate_window`, `max_age` (seconds, 0 = keep), `max_bytes`
    (-1 = no limit) and `storage` ("file" / "memory") configure the stream if the bridge creates it.
    """

    def __init__(
        self,
        servers: str | list[str] = "nats://127.0.0.1:4222",
        *,
        stream: str = "BK_EVENTS",
        prefix: str = "bk",
        channels: Iterable[Channel[Any] | str] | Channel[Any] | str | None = None,
        filter: Callable[[Any], Any] | None = None,
        source: str | None = None,
        queue_size: int = 10_000,
        max_in_flight: int = 1,
        ack_timeout: float = 5.0,
        connect_timeout: float = 2.0,
        reconnect_wait: float = 0.5,
        max_backoff: float = 5.0,
        close_timeout: float = 5.0,
        report_every: int = 1000,
        duplicate_window: float = 120.0,
        max_age: float = 0.0,
        max_bytes: int = -1,
        storage: str = "file",
        logger: logging.Logger | None = None,
    ) -> None:
        for label, value in (("queue_size", queue_size), ("max_in_flight", max_in_flight),
                             ("report_every", report_every)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{label}: expected a whole number >= 1, got {value!r}")
        for label, number in (("ack_timeout", ack_timeout), ("connect_timeout", connect_timeout),
                              ("reconnect_wait", reconnect_wait), ("max_backoff", max_backoff),
                              ("duplicate_window", duplicate_window)):
            if isinstance(number, bool) or not isinstance(number, int | float) or number <= 0:
                raise ConfigError(f"{label}: expected a number > 0, got {number!r}")
        if isinstance(close_timeout, bool) or not isinstance(close_timeout, int | float) or close_timeout < 0:
            raise ConfigError(f"close_timeout: expected a number >= 0, got {close_timeout!r}")
        if storage not in ("file", "memory"):
            raise ConfigError(f"storage: expected 'file' or 'memory', got {storage!r}")
        if not servers:
            raise ConfigError("servers: expected a NATS URL or a list of them")
        register_url_secrets(servers)
        self.servers = servers
        self.server = server_label(servers)
        self.stream = check_name("stream", stream)
        self.prefix = check_name("prefix", prefix)
        self.channels = resolve_channels(channels, DEFAULT_BRIDGE_CHANNELS)
        self.filter: Callable[[Any], Any] = lifecycle_filter if filter is None else filter
        self.source = check_name("source", source) if source is not None else uuid.uuid4().hex[:16]
        self.queue_size = queue_size
        self.max_in_flight = max_in_flight
        self.ack_timeout = float(ack_timeout)
        self.connect_timeout = float(connect_timeout)
        self.reconnect_wait = float(reconnect_wait)
        self.max_backoff = float(max_backoff)
        self.close_timeout = float(close_timeout)
        self.report_every = report_every
        self.duplicate_window = float(duplicate_window)
        self.max_age = float(max_age)
        self.max_bytes = max_bytes
        self.storage = storage
        self.stats = BridgeStats()
        self._logger: EngineLogger = EngineLogger(logger or _log)
        self._host: NotifierHost | None = None
        self._seq = itertools.count(1)
        self._queue: asyncio.Queue[_Item] | None = None
        self._unacked = 0  # queued and not yet acknowledged (or given up), the batch in flight included
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self._reporting = False
        self._down = False  # a publish failed and none succeeded since: the broker looks away
        self._nc: Any = None
        self._js: Any = None
        self._stream_ready = False
        self._unsubscribes: list[Callable[[], None]] = []

    # ------------------------------------------------------------------ attaching
    def attach(self, engine: NotifierHost | None = None) -> Callable[[], None]:
        """Publish `engine`'s chosen channels (default: `bk.default_engine`); `engine.close()` flushes
        and closes the bridge. Returns a function that detaches it (the bridge stays open)."""
        if engine is None:
            from ..engine import default_slot

            engine = default_slot.default_engine
        if self._host is not None:
            raise ConfigError("NatsBridge.attach: this bridge is attached to an engine already")
        if self._closed:
            raise ConfigError("NatsBridge.attach: the bridge is closed")
        self._host = engine
        self._logger = engine.logger
        bus = engine.bus
        accept = self.filter
        submit = self.submit
        log = engine.logger
        for name in self.channels:
            def deliver(event: Any, name: str = name) -> None:
                try:
                    wanted = accept(event)
                except Exception as exc:
                    log.warn(f"NatsBridge filter raised {type(exc).__name__}", repr(exc))
                    return
                if wanted:
                    submit(name, event)

            deliver.__qualname__ = f"NatsBridge.deliver[{name}]"
            self._unsubscribes.append(bus.subscribe(name, deliver))
        engine.add_shutdown_hook(self.aclose)
        return self.detach

    def detach(self) -> None:
        """Stop receiving the engine's events (queued ones are still published)."""
        unsubscribes, self._unsubscribes = self._unsubscribes, []
        for unsubscribe in unsubscribes:
            unsubscribe()

    # ------------------------------------------------------------------ engine side (never awaits)
    def submit(self, channel: Channel[Any] | str, event: Any) -> bool:
        """Queue `event` of `channel` for publishing; False (counted as dropped) when the queue is full,
        the bridge is closed or no event loop runs."""
        if self._closed:
            self._drop("the bridge is closed")
            return False
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._drop("no running event loop")
            return False
        queue = self._queue
        if queue is None or self._loop is not loop or self._task is None or self._task.done():
            queue = self._start(loop)
        if queue.full():
            self._drop(f"queue full ({self.queue_size} events waiting for NATS at {self.server})")
            return False
        queue.put_nowait(_Item(str(channel), event, next(self._seq)))
        self.stats.queued += 1
        self._unacked += 1
        return True

    def _start(self, loop: asyncio.AbstractEventLoop) -> asyncio.Queue[_Item]:
        self._loop = loop
        self._nc = self._js = None  # a connection belongs to the loop that made it
        self._stream_ready = False
        queue: asyncio.Queue[_Item] = asyncio.Queue(self.queue_size)
        self._queue = queue
        self._unacked = 0
        # an empty context: the task must not inherit the publishing run's (its run mode, its share of
        # a VirtualClock) — it belongs to the bridge, not to whichever pair published first
        self._task = loop.create_task(self._run(queue), name=f"backtest-kit NatsBridge {self.source}",
                                      context=contextvars.Context())
        return queue

    def _drop(self, why: str) -> None:
        self.stats.dropped += 1
        n = self.stats.dropped
        if (n - 1) % self.report_every != 0 or self._reporting:
            return
        text = f"NatsBridge: event dropped ({why}); {n} dropped so far"
        self._logger.warn(text)
        host = self._host
        if host is None:
            return
        self._reporting = True  # the error's own delivery to this bridge must not report again
        try:
            host.bus.publish_soon(ERROR, EventsDroppedError(text, n))
        except Exception as exc:  # no running loop, a closed bus: the log line is the report
            self._logger.warn("NatsBridge: could not publish the drop report", repr(exc))
        finally:
            self._reporting = False

    # ------------------------------------------------------------------ broker side
    async def _run(self, queue: asyncio.Queue[_Item]) -> None:
        while True:
            batch = [await queue.get()]
            while len(batch) < self.max_in_flight and not queue.empty():
                batch.append(queue.get_nowait())
            try:
                await self._publish(batch)
            finally:
                for _ in batch:
                    queue.task_done()
                self._unacked -= len(batch)

    def _message(self, item: _Item) -> tuple[str, bytes, dict[str, str]] | None:
        try:
            payload = encode_event(item.event)
        except Exception as exc:
            self.stats.skipped += 1
            self._logger.warn(f"NatsBridge: cannot encode a {type(item.event).__name__} event",
                              f"{type(exc).__name__}: {exc}")
            return None
        symbol, strategy = event_names(item.event)
        msg_id = f"{self.source}-{item.seq}"
        headers = {HEADER_MSG_ID: msg_id, HEADER_SOURCE: self.source, HEADER_SEQ: str(item.seq)}
        return subject_for(self.prefix, item.channel, symbol, strategy), payload, headers

    async def _publish(self, batch: list[_Item]) -> None:
        """Publish `batch` in order, retrying until JetStream acknowledged every message (or cancelled)."""
        messages = [m for m in map(self._message, batch) if m is not None]
        attempt = 0
        while messages:
            done = 0
            try:
                js = await self._jetstream()
                if len(messages) == 1:
                    subject, payload, headers = messages[0]
                    await js.publish(subject, payload, timeout=self.ack_timeout, headers=dict(headers))
                    done = 1
                else:  # how many from the start were acknowledged; the rest is sent again
                    done = await self._publish_pipelined(js, messages)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._failed(exc)
            if done:
                self.stats.published += done
                messages = messages[done:]
                attempt = 0
                if self._down:
                    self._down = False
                    self._logger.warn(f"NatsBridge: NATS at {self.server} accepts events again",
                                      f"{self.stats.retries} retries so far")
            if messages and not done:
                self.stats.retries += 1
                await asyncio.sleep(min(self.max_backoff, self.reconnect_wait * (2 ** min(attempt, 16))))
                attempt += 1

    async def _publish_pipelined(self, js: Any, messages: list[tuple[str, bytes, dict[str, str]]]) -> int:
        """Send every message before awaiting the acks; how many from the start were acknowledged."""
        futures = []
        for subject, payload, headers in messages:
            futures.append(await js.publish_async(subject, payload, headers=dict(headers)))
        done = 0
        try:
            async with asyncio.timeout(self.ack_timeout):
                for future in futures:
                    await future
                    done += 1
        except Exception:
            if done == 0:
                raise
        finally:
            for future in futures[done:]:
                future.cancel()
        return done

    def _failed(self, exc: BaseException) -> None:
        name = type(exc).__name__
        if "NoStream" in name or "NotFound" in name:  # the stream was deleted or the store wiped
            self._stream_ready = False
        if not self._down:
            self._down = True
            queued = self._queue.qsize() if self._queue is not None else 0
            self._logger.warn(f"NatsBridge: publishing to NATS at {self.server} failed; retrying",
                              f"{name}: {redact(str(exc))}", f"{queued} event(s) queued")

    async def _jetstream(self) -> Any:
        """The JetStream context of a live connection, with the stream ensured (connects if needed)."""
        nc = self._nc
        if nc is None or nc.is_closed:
            self._stream_ready = False
            nats = import_nats()
            self._nc = self._js = None
            nc = await nats.connect(
                self.servers,
                name=f"backtest-kit bridge {self.source}",
                connect_timeout=self.connect_timeout,
                reconnect_time_wait=self.reconnect_wait,
                max_reconnect_attempts=-1,
                allow_reconnect=True,
                error_cb=self._on_error,
                disconnected_cb=self._on_disconnected,
                reconnected_cb=self._on_reconnected,
            )
            self._nc = nc
            self._js = nc.jetstream(timeout=self.ack_timeout)
        if not self._stream_ready:
            await ensure_stream(self._js, self.stream, self.prefix, duplicate_window=self.duplicate_window,
                                max_age=self.max_age, max_bytes=self.max_bytes, storage=self.storage)
            self._stream_ready = True
        return self._js

    async def _on_error(self, exc: Exception) -> None:
        if not self._down:  # connecting keeps retrying (the queue holds the events): say it once
            self._down = True
            self._logger.warn(f"NatsBridge: cannot reach NATS at {self.server}; retrying",
                              f"{type(exc).__name__}: {redact(str(exc))}")
            return
        self._logger.debug(f"NatsBridge: NATS client error at {self.server}",
                           f"{type(exc).__name__}: {redact(str(exc))}")

    async def _on_disconnected(self) -> None:
        self._logger.debug(f"NatsBridge: disconnected from NATS at {self.server}")

    async def _on_reconnected(self) -> None:
        self._logger.debug(f"NatsBridge: reconnected to NATS at {self.server}")

    # ------------------------------------------------------------------ lifecycle
    @property
    def pending(self) -> int:
        """Events queued and not yet acknowledged by JetStream (the ones in flight included)."""
        return self._unacked

    async def flush(self, timeout: float | None = None) -> bool:
        """Wait until JetStream acknowledged every queued event; False if `timeout` passed first."""
        queue, task = self._queue, self._task
        if queue is None or task is None or task.done() or self._loop is not asyncio.get_running_loop():
            return True
        try:
            async with asyncio.timeout(timeout):
                await queue.join()
        except TimeoutError:
            return False
        return True

    async def aclose(self, timeout: float | None = None) -> None:
        """Stop accepting events, publish what is queued until `timeout` (default `close_timeout`),
        count the rest as lost, and close the connection. Safe to call more than once."""
        self.detach()
        self._closed = True
        task = self._task
        if task is not None and not task.done() and self._loop is asyncio.get_running_loop():
            deadline = self.close_timeout if timeout is None else timeout
            if not await self.flush(deadline):
                left = self.pending
                self.stats.lost += left
                self._logger.warn(f"NatsBridge: closed with {left} event(s) not acknowledged by NATS at "
                                  f"{self.server} after {deadline:g}s")
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._task = None
        nc, self._nc, self._js = self._nc, None, None
        if nc is not None and not nc.is_closed:
            try:
                await asyncio.wait_for(nc.close(), self.connect_timeout)
            except Exception as exc:
                self._logger.warn(f"NatsBridge: closing the connection to {self.server} failed",
                                  type(exc).__name__)

    async def __aenter__(self) -> NatsBridge:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        s = self.stats
        return (f"<NatsBridge {self.server} stream={self.stream} published={s.published} "
                f"dropped={s.dropped} pending={self.pending}>")


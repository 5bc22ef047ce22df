"""Server-Sent Events: every connected page gets each new `Overview` snapshot, pushed, never polled.

Why snapshots and bounded queues: the engine must never wait for a browser. A change in the state only
marks it dirty; at most every `interval` seconds one snapshot is built (only while someone listens),
encoded once, and offered to each client with `put_nowait` on that client's own bounded queue. A
client too slow to take them (a phone on a bad link, a paused tab) loses its oldest queued snapshot,
counted in `dropped`, and loses nothing that matters: every snapshot is the whole state, so the next
one it reads is complete. Its socket writes happen in its own request handler, never on the
publisher's path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

__all__ = ["StreamClient", "StreamHub", "sse_message"]

_log = logging.getLogger("backtest_kit.web")


def sse_message(event: str, data: bytes) -> bytes:
    """One SSE message; `data` is single-line JSON (msgspec never writes a newline)."""
    return b"event: " + event.encode() + b"\ndata: " + data + b"\n\n"


class StreamClient:
    """One connected page: its bounded queue and how many updates it lost to being slow."""

    __slots__ = ("dropped", "queue")

    def __init__(self, size: int) -> None:
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=size)
        self.dropped = 0

    def offer(self, message: bytes | None) -> bool:
        """Queue `message` without waiting; when full, the oldest queued one goes (False: one dropped)."""
        try:
            self.queue.put_nowait(message)
            return True
        except asyncio.QueueFull:
            with contextlib.suppress(asyncio.QueueEmpty):
                self.queue.get_nowait()
            self.queue.put_nowait(message)
            self.dropped += 1
            return False


class StreamHub:
    """The connected clients and the coalescing of changes into at most one snapshot per `interval`.

    `build` returns the encoded message to send (it runs as a task on the loop, only when a client is
    connected); `on_drop` is told of each update dropped for a slow client (the metrics' counter).
    """

    def __init__(
        self,
        build: Callable[[], Awaitable[bytes]],
        *,
        interval: float = 0.25,
        queue_size: int = 8,
        on_drop: Callable[[], None] | None = None,
    ) -> None:
        self._build = build
        self.interval = interval
        self.queue_size = queue_size
        self._on_drop = on_drop
        self.clients: set[StreamClient] = set()
        self.dropped = 0
        self._scheduled: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        self._dirty = False
        self._closed = False

    def connect(self) -> StreamClient:
        client = StreamClient(self.queue_size)
        self.clients.add(client)
        return client

    def disconnect(self, client: StreamClient) -> None:
        self.clients.discard(client)

    def changed(self) -> None:
        """The state changed: schedule one broadcast (cheap; called from bus listeners)."""
        self._dirty = True
        if self._scheduled is not None or self._closed or not self.clients:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._scheduled = loop.call_later(self.interval, self._fire)

    def _fire(self) -> None:
        self._scheduled = None
        if self._task is not None and not self._task.done():
            self._scheduled = asyncio.get_running_loop().call_later(self.interval, self._fire)
            return
        self._task = asyncio.get_running_loop().create_task(self._broadcast(), name="backtest-kit dashboard stream")

    async def _broadcast(self) -> None:
        if not self._dirty or not self.clients:
            return
        self._dirty = False
        try:
            message = await self._build()
        except Exception:  # a bug in a view must not kill the stream: logged, the next change retries
            _log.exception("dashboard: building the update failed")
            return
        self.publish(message)

    def publish(self, message: bytes) -> None:
        """Offer `message` to every client (never waits)."""
        for client in tuple(self.clients):
            if not client.offer(message):
                self.dropped += 1
                if self._on_drop is not None:
                    self._on_drop()

    async def aclose(self) -> None:
        """Stop broadcasting and end every stream (each handler reads the closing `None`)."""
        self._closed = True
        if self._scheduled is not None:
            self._scheduled.cancel()
            self._scheduled = None
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for client in tuple(self.clients):
            client.offer(None)

"""The real Redis and PostgreSQL the persistence tests use, and two stand-ins for a broken network.

Addresses come from ``BK_TEST_REDIS_URL`` / ``BK_TEST_POSTGRES_DSN`` (the local servers by default;
`.ci/run` checks that both answer before the suite starts). Every backend made here gets a fresh
namespace (Redis) or a fresh schema (PostgreSQL), and `drop_backend` removes everything it stored, so
tests never see each other's state and leave nothing behind.

`SwitchableProxy` forwards TCP to a real server and can be switched "down" (it then closes every
connection at once, including the ones already forwarded) and "up" again without changing its port:
a server restart, without touching the real server. `SilentServer` accepts connections and never
answers: a hung server, for the deadline tests. A closed port is `closed_port()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import uuid
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import backtest_kit as bk

REDIS_URL = os.environ.get("BK_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
POSTGRES_DSN = os.environ.get("BK_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")


def unique_name(prefix: str) -> str:
    """A namespace / schema name no other test (or earlier run) uses."""
    return f"{prefix}{uuid.uuid4().hex[:16]}"


def make_redis(url: str = REDIS_URL, **kwargs: Any) -> bk.RedisPersist:
    kwargs.setdefault("namespace", unique_name("t-"))
    return bk.RedisPersist(url, **kwargs)


def make_postgres(dsn: str = POSTGRES_DSN, **kwargs: Any) -> bk.PostgresPersist:
    kwargs.setdefault("namespace", unique_name("t-"))
    kwargs.setdefault("schema", unique_name("bkt_"))
    return bk.PostgresPersist(dsn, **kwargs)


async def drop_backend(backend: object) -> None:
    """Close `backend` and remove everything it stored on its server (no-op for other backends)."""
    if isinstance(backend, bk.RedisPersist):
        await backend.aclose()
        import redis.asyncio as redis_asyncio

        client = redis_asyncio.Redis.from_url(REDIS_URL)
        try:
            names = [name async for name in client.scan_iter(match=f"bk:{backend.namespace}:*")]
            if names:
                await client.delete(*names)
        finally:
            await client.aclose()
    elif isinstance(backend, bk.PostgresPersist):
        await backend.aclose()
        import asyncpg

        conn = await asyncpg.connect(POSTGRES_DSN)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{backend.schema}" CASCADE')
        finally:
            await conn.close()


def with_port(url: str, port: int) -> str:
    """`url` with its host:port replaced by 127.0.0.1:`port` (user, password, path kept)."""
    parts = urlsplit(url)
    auth = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
    return urlunsplit(parts._replace(netloc=f"{auth}127.0.0.1:{port}"))


def closed_port() -> int:
    """A local port nothing listens on (bound and released: the OS will not hand it out at once)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


class SwitchableProxy:
    """A TCP forwarder to `target` on a fixed local port that can play a server going down and up."""

    def __init__(self, target_url: str) -> None:
        parts = urlsplit(target_url)
        self.target = (parts.hostname or "127.0.0.1", parts.port or 0)
        self.up = True
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> SwitchableProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def go_down(self) -> None:
        """Cut every forwarded connection and refuse (close at once) new ones until `go_up`."""
        self.up = False
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    def go_up(self) -> None:
        self.up = True

    async def close(self) -> None:
        self.go_down()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.up:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pipe(src, dst))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while chunk := await src.read(65536):
                dst.write(chunk)
                await dst.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            dst.transport.abort()
            self._writers.discard(dst)


class SilentServer:
    """Accepts TCP connections, reads whatever comes, never answers: a hung server."""

    def __init__(self) -> None:
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> SilentServer:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        for writer in self._writers:
            writer.transport.abort()
        assert self._server is not None
        self._server.close()
        with contextlib.suppress(Exception):
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        with contextlib.suppress(OSError):
            while await reader.read(65536):
                pass

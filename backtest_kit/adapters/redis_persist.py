"""Live state in Redis (``pip install 'backtest-kit[redis]'``, client: ``redis.asyncio``).

Layout: one Redis HASH per entity, ``bk:<namespace>:s:<entity>``, whose fields are the keys (raw
UTF-8 bytes) and whose values are the documents; set-aside documents go to a second HASH,
``bk:<namespace>:q:<entity>``. ``<entity>`` is percent-encoded (every byte outside ``[A-Za-z0-9_.-]``
becomes ``%XX``) and the namespace has no ``:``, so no entity or namespace can reach into another's
hash.

Why a HASH per entity rather than one string key per document:

* **Injective for free.** A hash field is an arbitrary byte string, so every key (``""``, NUL, ``:``,
  a lone surrogate via ``surrogatepass``, 10,000 characters) is stored as itself; nothing is escaped,
  hashed or truncated, and two keys can never share a field.
* **Exact, atomic listing.** ``keys()`` is one ``HKEYS``: no ``SCAN`` whose ``MATCH`` pattern could be
  confused by keys containing the separator or glob characters, and no listing half-way through a
  concurrent change.
* **Atomic operations.** A write is one ``HSET``, a delete one ``HDEL``; setting a document aside is a
  Lua script (Redis runs it atomically): copy to the quarantine hash under a new field, then remove
  it, so the bytes are never lost and never in both places.

Quarantine fields are ``<UTC timestamp>[-<n>]:<key>``; the timestamp part has no ``:``, so the field
names its original key unambiguously. Nothing is ever deleted from the quarantine hash by this class.

Connections: the client is created on the first operation (constructing a `RedisPersist` touches
nothing), reconnects by itself after the server comes back (one immediate retry on a dropped
connection, within the deadline), and is closed by `aclose` (or ``async with``). Every operation has
a deadline (`timeout`, seconds, default 5): a refused connection, a server that does not answer or a
server error becomes a `PersistError` naming the entity, the key and the server (``host:port``, never
the password). A client made on another event loop (a second ``asyncio.run``) is replaced.

Durability is what the server's configuration gives: with RDB snapshots only, or no persistence at
all, a Redis restart loses the state; run it with ``appendonly yes`` (``appendfsync always`` for the
same guarantee as `FilePersist`'s fsync) for live trading.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final, TypeVar
from urllib.parse import quote

from backtest_kit.engine.errors import ConfigError

from .remote_persist import (
    import_extra,
    safe_url,
    validate_namespace,
    validate_pool_size,
    validate_timeout,
    with_deadline,
)

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from redis.asyncio import Redis

__all__ = ["RedisPersist"]

_T = TypeVar("_T")

_PREFIX: Final = "bk"
_QUARANTINE_SCRIPT: Final = """
local value = redis.call('HGET', KEYS[1], ARGV[1])
if not value then return false end
local n = 0
local field
repeat
  if n == 0 then field = ARGV[2] .. ':' .. ARGV[1] else field = ARGV[2] .. '-' .. n .. ':' .. ARGV[1] end
  n = n + 1
until redis.call('HSETNX', KEYS[2], field, value) == 1
redis.call('HDEL', KEYS[1], ARGV[1])
return field
"""


def _key_bytes(text: str) -> bytes:
    """The hash field of `text`: its UTF-8 bytes, lone surrogates kept (every `str` round-trips)."""
    return text.encode("utf-8", "surrogatepass")


def _as_bytes(value: bytes | str) -> bytes:
    """A reply as bytes (the client is made with ``decode_responses=False``, so this is a no-op)."""
    return value.encode("utf-8", "surrogatepass") if isinstance(value, str) else bytes(value)


def _entity_part(entity: str) -> str:
    """`entity` percent-encoded: no ``:`` and no byte that could be confused with another entity."""
    return quote(_key_bytes(entity), safe="-_.")


class RedisPersist:
    """`PersistBackend` and `QuarantineBackend` in Redis: one HASH per entity (see the module docstring).

    `url`: a redis:// or rediss:// URL (a password in it is masked in every message and log line);
    `namespace`: one per deployment, 1-64 characters of ``A-Za-z0-9_.-``; `timeout`: seconds each
    operation may take, connecting and waiting for a free connection included, before it fails with
    `PersistError`; `pool_size`: the most connections (more concurrent operations wait for one).
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        namespace: str = "default",
        timeout: float = 5.0,
        pool_size: int = 16,
    ) -> None:
        if not isinstance(url, str) or not url.startswith(("redis://", "rediss://", "unix://")):
            # the URL is not echoed: it may hold a password
            raise ConfigError("RedisPersist: url must be a redis://, rediss:// or unix:// URL")
        self._url = url
        self._namespace = validate_namespace(namespace)
        self._timeout = validate_timeout(timeout)
        self._pool_size = validate_pool_size(pool_size, "RedisPersist")
        shown, self._address = safe_url(url)
        self._where = f"Redis at {self._address} (namespace {self._namespace!r})"
        self._shown_url = shown
        self._client: Redis | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._errors: tuple[type[BaseException], ...] = (OSError,)

    def __repr__(self) -> str:
        return f"RedisPersist({self._shown_url!r}, namespace={self._namespace!r}, timeout={self._timeout:g})"

    @property
    def namespace(self) -> str:
        """The deployment's namespace: every Redis key this backend touches starts ``bk:<namespace>:``."""
        return self._namespace

    @property
    def address(self) -> str:
        """``host:port`` of the server, as error messages name it."""
        return self._address

    def hash_name(self, entity: str, *, quarantine: bool = False) -> str:
        """The Redis key of `entity`'s HASH (or of its quarantine HASH); no I/O. For ``redis-cli``."""
        return f"{_PREFIX}:{self._namespace}:{'q' if quarantine else 's'}:{_entity_part(entity)}"

    # ------------------------------------------------------------------ PersistBackend

    async def read(self, entity: str, key: str) -> bytes | None:
        """The stored bytes, or None when nothing is stored under `key`."""

        async def call() -> bytes | None:
            value = await self._redis().hget(self.hash_name(entity), _key_bytes(key))
            return None if value is None else _as_bytes(value)

        return await self._run(call, "read", entity, key)

    async def write(self, entity: str, key: str, data: bytes) -> None:
        """Store `data` atomically with one ``HSET`` (a reader sees the old or the new bytes).

        The single place that changes a live document: a later fencing-token check (a lease held by
        one engine per namespace) belongs here, as a Lua script comparing the token before the HSET.
        """
        if not isinstance(data, bytes | bytearray | memoryview):
            raise TypeError(f"data for {entity!r}/{key[:80]!r} must be bytes, got {type(data).__name__}")
        payload = bytes(data)

        async def call() -> None:
            await self._redis().hset(self.hash_name(entity), _key_bytes(key), payload)

        await self._run(call, "write", entity, key)

    async def delete(self, entity: str, key: str) -> None:
        """Remove `key` (one ``HDEL``); deleting a missing key is not an error."""

        async def call() -> None:
            await self._redis().hdel(self.hash_name(entity), _key_bytes(key))

        await self._run(call, "delete", entity, key)

    async def keys(self, entity: str) -> list[str]:
        """Every key stored for `entity` (one ``HKEYS``: exact and atomic), sorted by their bytes."""

        async def call() -> list[str]:
            fields = [_as_bytes(f) for f in await self._redis().hkeys(self.hash_name(entity))]
            return [f.decode("utf-8", "surrogatepass") for f in sorted(fields)]

        return await self._run(call, "list", entity, None)

    # ------------------------------------------------------------------ QuarantineBackend

    async def quarantine(self, entity: str, key: str) -> str | None:
        """Move the stored document to the quarantine HASH (atomically, bytes unchanged); where it went.

        None when nothing is stored under `key`. The answer names the server, the HASH and the field,
        e.g. ``redis 127.0.0.1:6379 HASH 'bk:prod:q:signals' field '20250101T000000Z:BTCUSDT-rsi'``.
        """
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        target = self.hash_name(entity, quarantine=True)

        async def call() -> str | None:
            field: Any = await self._redis().eval(
                _QUARANTINE_SCRIPT, 2, self.hash_name(entity), target, _key_bytes(key), stamp
            )
            if field is None:
                return None
            name = bytes(field).decode("utf-8", "surrogatepass")
            return f"redis {self._address} HASH {target!r} field {name[:120]!r}"

        return await self._run(call, "quarantine", entity, key)

    async def quarantined(self, entity: str) -> dict[str, bytes]:
        """Every set-aside document of `entity`: quarantine field (``<stamp>:<key>``) -> bytes."""

        async def call() -> dict[str, bytes]:
            raw = await self._redis().hgetall(self.hash_name(entity, quarantine=True))
            return {_as_bytes(k).decode("utf-8", "surrogatepass"): _as_bytes(v) for k, v in raw.items()}

        return await self._run(call, "list quarantined", entity, None)

    # ------------------------------------------------------------------ connection

    async def aclose(self) -> None:
        """Close the connections (idempotent); a later operation connects again."""
        client, self._client = self._client, None
        if client is not None and self._loop is asyncio.get_running_loop():
            await client.aclose()
        self._loop = None

    async def __aenter__(self) -> RedisPersist:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def _redis(self) -> Redis:
        """The client, created on first use (and again when the event loop changed)."""
        loop = asyncio.get_running_loop()
        if self._client is not None and self._loop is loop:
            return self._client
        redis_asyncio = import_extra("redis.asyncio", "redis", "RedisPersist")
        retry_mod = import_extra("redis.asyncio.retry", "redis", "RedisPersist")
        backoff = import_extra("redis.backoff", "redis", "RedisPersist")
        exceptions = import_extra("redis.exceptions", "redis", "RedisPersist")
        self._errors = (exceptions.RedisError, OSError)
        # A blocking pool: with many pairs ticking at once, an operation beyond `pool_size` waits for a
        # free connection (within the deadline) instead of failing with "Too many connections".
        pool = redis_asyncio.BlockingConnectionPool.from_url(
            self._url,
            max_connections=self._pool_size,
            timeout=self._timeout,
            socket_timeout=self._timeout,
            socket_connect_timeout=self._timeout,
            # one immediate retry: a pooled connection the server dropped (it restarted) is replaced
            retry=retry_mod.Retry(backoff.NoBackoff(), 1),
            retry_on_error=[exceptions.ConnectionError, exceptions.TimeoutError],
            decode_responses=False,
        )
        self._client = redis_asyncio.Redis.from_pool(pool)  # owns the pool: aclose() closes both
        self._loop = loop
        return self._client

    async def _run(self, call: Callable[[], Awaitable[_T]], action: str, entity: str, key: str | None) -> _T:
        if not isinstance(entity, str) or (key is not None and not isinstance(key, str)):
            raise TypeError(f"entity and key must be str, got {type(entity).__name__} / {type(key).__name__}")
        self._redis()  # import errors surface as ImportError, not as a PersistError
        return await with_deadline(
            call, timeout=self._timeout, action=action, entity=entity, key=key, where=self._where,
            failures=self._errors,
        )

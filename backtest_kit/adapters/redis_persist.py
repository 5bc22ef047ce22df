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

Live ownership (engine/lease.py): ``bk:<namespace>:lease:<pair>`` is a pair's lease (a HASH of
``owner`` and ``token`` with a TTL, taken / renewed / released by Lua scripts), ``bk:<namespace>:fence``
holds each pair's latest fencing token (never expires, so tokens only grow), and a fenced write or
delete is a Lua script comparing the token before the ``HSET`` / ``HDEL``. A shared risk profile's
slots are ``bk:<namespace>:r:<risk>`` (field = position key), taken by one script that checks the
fence, counts the other slots and adds this one unless the limit is reached. (All keys of one
namespace must be on one Redis node: the scripts touch several keys.)

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

from backtest_kit.engine.errors import ConfigError, LeaseLostError
from backtest_kit.engine.lease import Fence, LeaseGrant, SlotAnswer

from .remote_persist import (
    default_owner,
    describe_target,
    import_extra,
    lease_lost_message,
    safe_url,
    validate_lease_ttl,
    validate_namespace,
    validate_owner,
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
# Leases (engine/lease.py). KEYS[1] the pair's lease HASH (owner, token; expires after the TTL),
# KEYS[2] the namespace's fencing-token HASH (pair -> latest token; never expires, so tokens only grow).
_ACQUIRE_SCRIPT: Final = """
local holder = redis.call('HGET', KEYS[1], 'owner')
if holder and holder ~= ARGV[2] then
  return {0, holder, tonumber(redis.call('HGET', KEYS[1], 'token')), redis.call('PTTL', KEYS[1])}
end
local token = redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
redis.call('HSET', KEYS[1], 'owner', ARGV[2], 'token', token)
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return {1, ARGV[2], token, tonumber(ARGV[3])}
"""
# ARGV: pair, owner, token, ttl. Also re-creates an expired lease nobody took over (the token is current).
_RENEW_SCRIPT: Final = """
if redis.call('HGET', KEYS[2], ARGV[1]) ~= ARGV[3] then return 0 end
redis.call('HSET', KEYS[1], 'owner', ARGV[2], 'token', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1
"""
_RELEASE_SCRIPT: Final = """
if redis.call('HGET', KEYS[2], ARGV[1]) == ARGV[2] then redis.call('DEL', KEYS[1]) end
return 1
"""
# Fenced write/delete. KEYS[1] the fencing-token HASH, KEYS[2] the entity HASH; ARGV: pair, token,
# field[, data]. The token check and the change are one script: nothing can run in between.
_FENCED_WRITE_SCRIPT: Final = """
local current = redis.call('HGET', KEYS[1], ARGV[1])
if current ~= ARGV[2] then return {0, current or ''} end
redis.call('HSET', KEYS[2], ARGV[3], ARGV[4])
return {1, current}
"""
_FENCED_DELETE_SCRIPT: Final = """
local current = redis.call('HGET', KEYS[1], ARGV[1])
if current ~= ARGV[2] then return {0, current or ''} end
redis.call('HDEL', KEYS[2], ARGV[3])
return {1, current}
"""
# Shared risk slots: KEYS[1] the fencing-token HASH, KEYS[2] the profile's slot HASH (position -> doc);
# ARGV: pair, token, position, data, limit (-1: none). Count, compare and add in one atomic step.
_TAKE_SLOT_SCRIPT: Final = """
local current = redis.call('HGET', KEYS[1], ARGV[1])
if current ~= ARGV[2] then return {0, -1, current or ''} end
local others = redis.call('HLEN', KEYS[2]) - redis.call('HEXISTS', KEYS[2], ARGV[3])
local limit = tonumber(ARGV[5])
if limit >= 0 and others >= limit then return {2, others, current} end
redis.call('HSET', KEYS[2], ARGV[3], ARGV[4])
return {1, others, current}
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
    `PersistError`; `pool_size`: the most connections (more concurrent operations wait for one);
    `lease_ttl`: seconds a pair's lease outlives its owner's last renewal (the standby takeover bound);
    `owner`: this process in lease records (default ``host:pid:random``; give a stable unique name,
    e.g. the pod name, and a restart after a crash takes its pairs back without waiting the TTL).
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        namespace: str = "default",
        timeout: float = 5.0,
        pool_size: int = 16,
        lease_ttl: float = 10.0,
        owner: str | None = None,
    ) -> None:
        if not isinstance(url, str) or not url.startswith(("redis://", "rediss://", "unix://")):
            # the URL is not echoed: it may hold a password
            raise ConfigError("RedisPersist: url must be a redis://, rediss:// or unix:// URL")
        self._url = url
        self._namespace = validate_namespace(namespace)
        self._timeout = validate_timeout(timeout)
        self._pool_size = validate_pool_size(pool_size, "RedisPersist")
        self._lease_ttl = validate_lease_ttl(lease_ttl, "RedisPersist")
        self._owner = default_owner() if owner is None else validate_owner(owner, "RedisPersist")
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

        Unfenced: a live run writes its pair's state through `write_fenced` (engine/lease.py).
        """
        payload = self._payload(entity, key, data)

        async def call() -> None:
            await self._redis().hset(self.hash_name(entity), _key_bytes(key), payload)

        await self._run(call, "write", entity, key)

    @staticmethod
    def _payload(entity: str, key: str, data: bytes) -> bytes:
        if not isinstance(data, bytes | bytearray | memoryview):
            raise TypeError(f"data for {entity!r}/{key[:80]!r} must be bytes, got {type(data).__name__}")
        return bytes(data)

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

    # ------------------------------------------------------------------ leases (engine/lease.py)

    @property
    def lease_ttl(self) -> float:
        """Seconds a lease lives without renewal."""
        return self._lease_ttl

    @property
    def owner(self) -> str:
        """This process in lease records."""
        return self._owner

    def lease_key(self, pair: str) -> str:
        """The Redis key of `pair`'s lease HASH (fields ``owner``, ``token``); no I/O."""
        return f"{_PREFIX}:{self._namespace}:lease:{_entity_part(pair)}"

    def fence_key(self) -> str:
        """The namespace's fencing-token HASH (field = pair, value = its latest token); no I/O."""
        return f"{_PREFIX}:{self._namespace}:fence"

    async def acquire_lease(self, pair: str) -> LeaseGrant:
        """Take `pair`'s lease when free, expired or already this owner's; always a new token."""
        ttl_ms = max(1, round(self._lease_ttl * 1000))

        async def call() -> LeaseGrant:
            reply: Any = await self._redis().eval(
                _ACQUIRE_SCRIPT, 2, self.lease_key(pair), self.fence_key(), _key_bytes(pair), self._owner, ttl_ms
            )
            granted, holder, token, ttl = reply
            return LeaseGrant(bool(granted), _as_bytes(holder).decode("utf-8", "replace"), int(token), int(ttl))

        return await self._run(call, "acquire the lease of", "lease", pair)

    async def renew_lease(self, pair: str, token: int) -> bool:
        ttl_ms = max(1, round(self._lease_ttl * 1000))

        async def call() -> bool:
            reply: Any = await self._redis().eval(
                _RENEW_SCRIPT, 2, self.lease_key(pair), self.fence_key(), _key_bytes(pair), self._owner,
                str(token), ttl_ms,
            )
            return bool(reply)

        return await self._run(call, "renew the lease of", "lease", pair)

    async def release_lease(self, pair: str, token: int) -> None:
        async def call() -> None:
            await self._redis().eval(_RELEASE_SCRIPT, 2, self.lease_key(pair), self.fence_key(),
                                     _key_bytes(pair), str(token))

        await self._run(call, "release the lease of", "lease", pair)

    async def write_fenced(self, entity: str, key: str, data: bytes, fence: Fence) -> None:
        """`write`, refused with `LeaseLostError` unless `fence` holds the pair's latest token."""
        payload = self._payload(entity, key, data)
        await self._fenced("write", entity, key, fence, _FENCED_WRITE_SCRIPT, self.hash_name(entity),
                           _key_bytes(key), payload)

    async def delete_fenced(self, entity: str, key: str, fence: Fence) -> None:
        """`delete`, refused with `LeaseLostError` unless `fence` holds the pair's latest token."""
        await self._fenced("delete", entity, key, fence, _FENCED_DELETE_SCRIPT, self.hash_name(entity),
                           _key_bytes(key))

    async def _fenced(self, action: str, entity: str, key: str, fence: Fence, script: str, target: str,
                      *args: bytes) -> None:
        async def call() -> tuple[int, bytes]:
            reply: Any = await self._redis().eval(
                script, 2, self.fence_key(), target, _key_bytes(fence.pair), str(fence.token), *args
            )
            return int(reply[0]), _as_bytes(reply[1])

        done, current = await self._run(call, action, entity, key)
        if not done:
            raise LeaseLostError(lease_lost_message(action, describe_target(entity, key), self._where, fence,
                                                    current.decode() or None))

    # ------------------------------------------------------------------ shared risk slots

    def risk_key(self, risk_name: str) -> str:
        """The HASH of a risk profile's held slots (field = position key, value = its document)."""
        return f"{_PREFIX}:{self._namespace}:r:{_entity_part(risk_name)}"

    async def risk_slots(self, risk_name: str) -> dict[str, bytes]:
        async def call() -> dict[str, bytes]:
            raw = await self._redis().hgetall(self.risk_key(risk_name))
            return {_as_bytes(k).decode("utf-8", "surrogatepass"): _as_bytes(v) for k, v in raw.items()}

        return await self._run(call, "list the slots of", "risk", risk_name)

    async def take_risk_slot(
        self, risk_name: str, position: str, data: bytes, *, limit: int | None, fence: Fence
    ) -> SlotAnswer:
        """Count the profile's other slots and add this one unless `limit` are held: one Lua script."""

        async def call() -> tuple[int, int, bytes]:
            reply: Any = await self._redis().eval(
                _TAKE_SLOT_SCRIPT, 2, self.fence_key(), self.risk_key(risk_name), _key_bytes(fence.pair),
                str(fence.token), _key_bytes(position), bytes(data), -1 if limit is None else limit,
            )
            return int(reply[0]), int(reply[1]), _as_bytes(reply[2])

        status, others, current = await self._run(call, "take a slot of", "risk", risk_name)
        if status == 0:
            raise LeaseLostError(lease_lost_message("take a slot", f"of risk profile {risk_name!r}", self._where,
                                                    fence, current.decode() or None))
        return SlotAnswer(status == 1, others)

    async def drop_risk_slot(self, risk_name: str, position: str, *, fence: Fence) -> None:
        await self._fenced("release a slot of", "risk", risk_name, fence, _FENCED_DELETE_SCRIPT,
                           self.risk_key(risk_name), _key_bytes(position))

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

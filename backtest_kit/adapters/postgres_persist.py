"""Live state in PostgreSQL (``pip install 'backtest-kit[postgres]'``, client: ``asyncpg``).

Layout: two tables in `schema` (default ``public``), created on first use, shared by every
deployment and told apart by a ``namespace`` column:

* ``backtest_kit_state (namespace, entity, key, data, updated_at)``, one row per document;
* ``backtest_kit_quarantine (id, namespace, entity, key, data, quarantined_at)``, the documents the
  engine could not restore, never deleted by this class.
* ``backtest_kit_lease (namespace, pair, owner, token, expires_at)``, one row per live pair ever
  owned: its lease and latest fencing token (engine/lease.py; why a row and not an advisory lock: at
  `acquire_lease`);
* ``backtest_kit_risk_slot (namespace, risk, position, data)``, the held slots of shared risk profiles.

Why these choices:

* **A namespace column, not a table per namespace.** The namespace is then a bound parameter, never
  SQL text (no identifier quoting of user input), a new deployment needs no DDL, and one grant
  covers all of them. It is still validated (1-64 characters of ``A-Za-z0-9_.-``) so it reads the
  same as in Redis and logs.
* **Entity and key are ``bytea``.** ``text`` cannot hold NUL or a lone surrogate; the UTF-8 bytes
  (``surrogatepass``) of any `str` can, so every key is stored as itself and read back exactly.
* **The primary key is on digests.** A btree row may not exceed ~2.7 kB, and keys may be longer
  (10,000 characters); ``entity_digest`` / ``key_digest`` are generated columns, ``sha256`` of the
  bytes, computed by the server, and unique together with the namespace. A sha256 collision is not a
  practical concern; the full key is stored too, and that is what `keys` returns.
* **Every change is one statement.** A write is one upsert (``INSERT ... ON CONFLICT DO UPDATE``),
  which PostgreSQL runs atomically (a reader sees the old or the new row; concurrent writers of one
  key serialize on its row lock); setting a document aside is one ``WITH moved AS (DELETE ...
  RETURNING) INSERT ...``, so the bytes are in exactly one of the two tables at every instant.

Connections: an asyncpg pool (`pool_size` connections at most) is created on the first operation
(constructing a `PostgresPersist` touches nothing); a connection the server dropped is replaced and
the operation retried once, within the deadline; `aclose` (or ``async with``) closes the pool. Every
operation has a deadline (`timeout`, seconds, default 5): a refused connection, a server that does not
answer or an SQL error becomes a `PersistError` naming the entity, the key and the server
(``host:port``, never the password). A pool made on another event loop is replaced.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar

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

__all__ = ["PostgresPersist"]

_T = TypeVar("_T")

_SCHEMA_PATTERN: Final = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_STATE: Final = "backtest_kit_state"
_QUARANTINE: Final = "backtest_kit_quarantine"
_LEASE: Final = "backtest_kit_lease"
_SLOT: Final = "backtest_kit_risk_slot"
_DDL: Final = """
CREATE SCHEMA IF NOT EXISTS {schema};
CREATE TABLE IF NOT EXISTS {schema}.{state} (
    namespace     text        NOT NULL,
    entity        bytea       NOT NULL,
    key           bytea       NOT NULL,
    data          bytea       NOT NULL,
    updated_at    timestamptz NOT NULL DEFAULT now(),
    entity_digest bytea       GENERATED ALWAYS AS (sha256(entity)) STORED,
    key_digest    bytea       GENERATED ALWAYS AS (sha256(key)) STORED,
    PRIMARY KEY (namespace, entity_digest, key_digest)
);
CREATE TABLE IF NOT EXISTS {schema}.{quarantine} (
    id             bigserial   PRIMARY KEY,
    namespace      text        NOT NULL,
    entity         bytea       NOT NULL,
    key            bytea       NOT NULL,
    data           bytea       NOT NULL,
    quarantined_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS {schema}.{lease} (
    namespace   text        NOT NULL,
    pair        bytea       NOT NULL,
    owner       text        NOT NULL,
    token       bigint      NOT NULL,
    expires_at  timestamptz NOT NULL,
    pair_digest bytea       GENERATED ALWAYS AS (sha256(pair)) STORED,
    PRIMARY KEY (namespace, pair_digest)
);
CREATE TABLE IF NOT EXISTS {schema}.{slot} (
    namespace       text        NOT NULL,
    risk            bytea       NOT NULL,
    position        bytea       NOT NULL,
    data            bytea       NOT NULL,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    risk_digest     bytea       GENERATED ALWAYS AS (sha256(risk)) STORED,
    position_digest bytea       GENERATED ALWAYS AS (sha256(position)) STORED,
    PRIMARY KEY (namespace, risk_digest, position_digest)
);
"""
# Concurrent `CREATE ... IF NOT EXISTS` of one name can still collide in the catalog: serialize them.
_DDL_LOCK: Final = 0x6B74_5F70_6572  # an arbitrary, fixed advisory-lock id ("bt_per")


def _b(text: str) -> bytes:
    """The stored form of an entity or key: UTF-8 bytes, lone surrogates kept (every `str` round-trips)."""
    return text.encode("utf-8", "surrogatepass")


def _payload(entity: str, key: str, data: bytes) -> bytes:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError(f"data for {entity!r}/{key[:80]!r} must be bytes, got {type(data).__name__}")
    return bytes(data)


class PostgresPersist:
    """`PersistBackend` and `QuarantineBackend` in PostgreSQL (see the module docstring).

    `dsn`: a ``postgresql://user:password@host:port/database`` URL (the password is masked in every
    message and log line); `namespace`: one per deployment; `schema`: where the two tables live (a
    lower-case SQL identifier; created if missing); `timeout`: seconds each operation may take,
    connecting and waiting for a free
    connection included, before it fails with `PersistError`; `pool_size`: the most connections
    (more concurrent operations wait for one); `lease_ttl` and `owner`: as for `RedisPersist`.
    """

    def __init__(
        self,
        dsn: str = "postgresql://postgres@127.0.0.1:5432/postgres",
        *,
        namespace: str = "default",
        schema: str = "public",
        timeout: float = 5.0,
        pool_size: int = 16,
        lease_ttl: float = 10.0,
        owner: str | None = None,
    ) -> None:
        if not isinstance(dsn, str) or not dsn.startswith(("postgresql://", "postgres://")):
            # the DSN is not echoed: it may hold a password
            raise ConfigError("PostgresPersist: dsn must be a postgresql:// or postgres:// URL")
        if not isinstance(schema, str) or _SCHEMA_PATTERN.fullmatch(schema) is None:
            raise ConfigError(f"PostgresPersist: schema must be a lower-case SQL identifier, got {schema!r}")
        self._dsn = dsn
        self._namespace = validate_namespace(namespace)
        self._schema = schema
        self._timeout = validate_timeout(timeout)
        self._pool_size = validate_pool_size(pool_size, "PostgresPersist")
        self._lease_ttl = validate_lease_ttl(lease_ttl, "PostgresPersist")
        self._owner = default_owner() if owner is None else validate_owner(owner, "PostgresPersist")
        self._shown_dsn, self._address = safe_url(dsn)
        self._where = f"PostgreSQL at {self._address} (schema {schema!r}, namespace {self._namespace!r})"
        self._state = f'"{schema}".{_STATE}'
        self._quarantine = f'"{schema}".{_QUARANTINE}'
        self._lease = f'"{schema}".{_LEASE}'
        self._slot = f'"{schema}".{_SLOT}'
        self._pool: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connecting: asyncio.Lock | None = None
        self._errors: tuple[type[BaseException], ...] = (OSError,)
        self._lost: tuple[type[BaseException], ...] = ()

    def __repr__(self) -> str:
        return (f"PostgresPersist({self._shown_dsn!r}, namespace={self._namespace!r}, "
                f"schema={self._schema!r}, timeout={self._timeout:g})")

    @property
    def namespace(self) -> str:
        """The deployment's namespace: the ``namespace`` column of every row this backend touches."""
        return self._namespace

    @property
    def schema(self) -> str:
        """The schema holding ``backtest_kit_state`` and ``backtest_kit_quarantine``."""
        return self._schema

    @property
    def address(self) -> str:
        """``host:port`` of the server, as error messages name it."""
        return self._address

    # ------------------------------------------------------------------ PersistBackend

    async def read(self, entity: str, key: str) -> bytes | None:
        """The stored bytes, or None when nothing is stored under `key`."""
        sql = (f"SELECT data FROM {self._state} "
               "WHERE namespace = $1 AND entity_digest = sha256($2) AND key_digest = sha256($3)")
        value = await self._run("read", entity, key, lambda c: c.fetchval(sql, self._namespace, _b(entity), _b(key)))
        return None if value is None else bytes(value)

    async def write(self, entity: str, key: str, data: bytes) -> None:
        """Store `data` atomically with one upsert (a reader sees the old or the new bytes).

        Unfenced: a live run writes its pair's state through `write_fenced` (engine/lease.py).
        """
        payload = _payload(entity, key, data)
        await self._run("write", entity, key,
                        lambda c: c.execute(self._upsert_sql, self._namespace, _b(entity), _b(key), payload))

    @property
    def _upsert_sql(self) -> str:
        return (f"INSERT INTO {self._state} AS s (namespace, entity, key, data) VALUES ($1, $2, $3, $4) "
                "ON CONFLICT (namespace, entity_digest, key_digest) "
                "DO UPDATE SET data = EXCLUDED.data, updated_at = now()")

    async def delete(self, entity: str, key: str) -> None:
        """Remove `key` (one DELETE); deleting a missing key is not an error."""
        sql = (f"DELETE FROM {self._state} "
               "WHERE namespace = $1 AND entity_digest = sha256($2) AND key_digest = sha256($3)")
        await self._run("delete", entity, key, lambda c: c.execute(sql, self._namespace, _b(entity), _b(key)))

    async def keys(self, entity: str) -> list[str]:
        """Every key stored for `entity` (one SELECT: exact and consistent), sorted by their bytes."""
        sql = f"SELECT key FROM {self._state} WHERE namespace = $1 AND entity_digest = sha256($2) ORDER BY key"
        rows = await self._run("list", entity, None, lambda c: c.fetch(sql, self._namespace, _b(entity)))
        return [bytes(row[0]).decode("utf-8", "surrogatepass") for row in rows]

    # ------------------------------------------------------------------ leases (engine/lease.py)
    # A lease is a row (owner, token, expires_at) rather than an advisory lock: an advisory lock belongs
    # to one server session, so it would pin a pooled connection per pair, vanish silently with a
    # dropped connection, and carry no fencing token. The row is changed by one statement at a time
    # (the row lock serializes competing acquirers); expiry uses the server's clock only, so client
    # clocks never matter. The row outlives its lease, so the token only grows.

    @property
    def lease_ttl(self) -> float:
        """Seconds a lease lives without renewal."""
        return self._lease_ttl

    @property
    def owner(self) -> str:
        """This process in lease records."""
        return self._owner

    async def acquire_lease(self, pair: str) -> LeaseGrant:
        """Take `pair`'s lease when free, expired or already this owner's; always a new token."""
        ttl_ms = max(1, round(self._lease_ttl * 1000))
        take = (f"INSERT INTO {self._lease} AS l (namespace, pair, owner, token, expires_at) "
                "VALUES ($1, $2, $3, 1, clock_timestamp() + $4 * interval '1 millisecond') "
                "ON CONFLICT (namespace, pair_digest) DO UPDATE SET owner = EXCLUDED.owner, "
                "token = l.token + 1, expires_at = EXCLUDED.expires_at "
                "WHERE l.expires_at <= clock_timestamp() OR l.owner = EXCLUDED.owner RETURNING token")
        holder = (f"SELECT owner, token, GREATEST(0, (extract(epoch FROM expires_at - clock_timestamp()) * 1000)"
                  f"::bigint) FROM {self._lease} WHERE namespace = $1 AND pair_digest = sha256($2)")

        async def query(conn: Any) -> LeaseGrant:
            token = await conn.fetchval(take, self._namespace, _b(pair), self._owner, ttl_ms)
            if token is not None:
                return LeaseGrant(True, self._owner, int(token), ttl_ms)
            row = await conn.fetchrow(holder, self._namespace, _b(pair))
            if row is None:  # released and deleted in between: ask again on the next poll
                return LeaseGrant(False, "?", 0, 0)
            return LeaseGrant(False, str(row[0]), int(row[1]), int(row[2]))

        return await self._run("acquire the lease of", "lease", pair, query)

    async def renew_lease(self, pair: str, token: int) -> bool:
        ttl_ms = max(1, round(self._lease_ttl * 1000))
        sql = (f"UPDATE {self._lease} SET owner = $3, expires_at = clock_timestamp() + $5 * interval "
               "'1 millisecond' WHERE namespace = $1 AND pair_digest = sha256($2) AND token = $4 RETURNING 1")
        done = await self._run("renew the lease of", "lease", pair,
                               lambda c: c.fetchval(sql, self._namespace, _b(pair), self._owner, token, ttl_ms))
        return done is not None

    async def release_lease(self, pair: str, token: int) -> None:
        sql = (f"UPDATE {self._lease} SET expires_at = clock_timestamp() "
               "WHERE namespace = $1 AND pair_digest = sha256($2) AND token = $3")
        await self._run("release the lease of", "lease", pair,
                        lambda c: c.execute(sql, self._namespace, _b(pair), token))

    async def _fence_ok(self, conn: Any, fence: Fence) -> tuple[bool, str | None]:
        """Inside a transaction: lock the pair's lease row (FOR SHARE) and compare its token.

        The share lock makes an acquisition (an UPDATE of that row) wait until this transaction ends,
        so a new owner reads the state only after a write checked under the old token has committed;
        and a write arriving after the acquisition committed sees the new token (READ COMMITTED
        re-reads the locked row) and is refused.
        """
        current = await conn.fetchval(
            f"SELECT token FROM {self._lease} WHERE namespace = $1 AND pair_digest = sha256($2) FOR SHARE",
            self._namespace, _b(fence.pair))
        return current == fence.token, None if current is None else str(current)

    async def write_fenced(self, entity: str, key: str, data: bytes, fence: Fence) -> None:
        """`write`, refused with `LeaseLostError` unless `fence` holds the pair's latest token."""
        payload = _payload(entity, key, data)

        async def query(conn: Any) -> tuple[bool, str | None]:
            async with conn.transaction():
                ok, current = await self._fence_ok(conn, fence)
                if ok:
                    await conn.execute(self._upsert_sql, self._namespace, _b(entity), _b(key), payload)
                return ok, current

        self._raise_lost("write", describe_target(entity, key), fence,
                         await self._run("write", entity, key, query))

    async def delete_fenced(self, entity: str, key: str, fence: Fence) -> None:
        """`delete`, refused with `LeaseLostError` unless `fence` holds the pair's latest token."""
        sql = (f"DELETE FROM {self._state} "
               "WHERE namespace = $1 AND entity_digest = sha256($2) AND key_digest = sha256($3)")

        async def query(conn: Any) -> tuple[bool, str | None]:
            async with conn.transaction():
                ok, current = await self._fence_ok(conn, fence)
                if ok:
                    await conn.execute(sql, self._namespace, _b(entity), _b(key))
                return ok, current

        self._raise_lost("delete", describe_target(entity, key), fence,
                         await self._run("delete", entity, key, query))

    def _raise_lost(self, action: str, target: str, fence: Fence, answer: tuple[bool, str | None]) -> None:
        ok, current = answer
        if not ok:
            raise LeaseLostError(lease_lost_message(action, target, self._where, fence, current))

    # ------------------------------------------------------------------ shared risk slots

    async def risk_slots(self, risk_name: str) -> dict[str, bytes]:
        sql = f"SELECT position, data FROM {self._slot} WHERE namespace = $1 AND risk_digest = sha256($2)"
        rows = await self._run("list the slots of", "risk", risk_name,
                               lambda c: c.fetch(sql, self._namespace, _b(risk_name)))
        return {bytes(r[0]).decode("utf-8", "surrogatepass"): bytes(r[1]) for r in rows}

    async def take_risk_slot(
        self, risk_name: str, position: str, data: bytes, *, limit: int | None, fence: Fence
    ) -> SlotAnswer:
        """Count the profile's other slots and add this one unless `limit` are held, in one transaction
        serialized per profile by a transaction-level advisory lock (no row needs to exist first, and
        it is released at commit or when the connection dies)."""
        payload = _payload("risk", risk_name, data)
        lock = ("SELECT pg_advisory_xact_lock(('x' || encode(substr(sha256($1 || '\\x00'::bytea || $2), 1, 8), "
                "'hex'))::bit(64)::bigint)")
        count = (f"SELECT count(*) FROM {self._slot} WHERE namespace = $1 AND risk_digest = sha256($2) "
                 "AND position_digest <> sha256($3)")
        upsert = (f"INSERT INTO {self._slot} (namespace, risk, position, data) VALUES ($1, $2, $3, $4) "
                  "ON CONFLICT (namespace, risk_digest, position_digest) "
                  "DO UPDATE SET data = EXCLUDED.data, updated_at = now()")

        async def query(conn: Any) -> tuple[bool, str | None, bool, int]:
            async with conn.transaction():
                ok, current = await self._fence_ok(conn, fence)
                if not ok:
                    return False, current, False, -1
                await conn.execute(lock, self._namespace.encode(), _b(risk_name))
                others = int(await conn.fetchval(count, self._namespace, _b(risk_name), _b(position)))
                if limit is not None and others >= limit:
                    return True, current, False, others
                await conn.execute(upsert, self._namespace, _b(risk_name), _b(position), payload)
                return True, current, True, others

        ok, current, taken, others = await self._run("take a slot of", "risk", risk_name, query)
        self._raise_lost("take a slot", f"of risk profile {risk_name!r}", fence, (ok, current))
        return SlotAnswer(taken, others)

    async def drop_risk_slot(self, risk_name: str, position: str, *, fence: Fence) -> None:
        sql = (f"DELETE FROM {self._slot} WHERE namespace = $1 AND risk_digest = sha256($2) "
               "AND position_digest = sha256($3)")

        async def query(conn: Any) -> tuple[bool, str | None]:
            async with conn.transaction():
                ok, current = await self._fence_ok(conn, fence)
                if ok:
                    await conn.execute(sql, self._namespace, _b(risk_name), _b(position))
                return ok, current

        self._raise_lost("release a slot", f"of risk profile {risk_name!r}", fence,
                         await self._run("release a slot of", "risk", risk_name, query))

    # ------------------------------------------------------------------ QuarantineBackend

    async def quarantine(self, entity: str, key: str) -> str | None:
        """Move the stored document to ``backtest_kit_quarantine`` in one statement; where it went.

        None when nothing is stored under `key`. The answer names the server, the table and the row,
        e.g. ``postgresql 127.0.0.1:5432 table "public".backtest_kit_quarantine id=17``.
        """
        sql = (f"WITH moved AS (DELETE FROM {self._state} "
               "WHERE namespace = $1 AND entity_digest = sha256($2) AND key_digest = sha256($3) "
               "RETURNING namespace, entity, key, data) "
               f"INSERT INTO {self._quarantine} (namespace, entity, key, data) "
               "SELECT namespace, entity, key, data FROM moved RETURNING id")
        row_id = await self._run("quarantine", entity, key,
                                 lambda c: c.fetchval(sql, self._namespace, _b(entity), _b(key)))
        if row_id is None:
            return None
        return f"postgresql {self._address} table {self._quarantine} id={row_id}"

    async def quarantined(self, entity: str) -> list[tuple[str, bytes]]:
        """Every set-aside document of `entity`, oldest first: (key, bytes)."""
        sql = (f"SELECT key, data FROM {self._quarantine} WHERE namespace = $1 AND entity = $2 ORDER BY id")
        rows = await self._run("list quarantined", entity, None,
                               lambda c: c.fetch(sql, self._namespace, _b(entity)))
        return [(bytes(r[0]).decode("utf-8", "surrogatepass"), bytes(r[1])) for r in rows]

    # ------------------------------------------------------------------ connection

    async def aclose(self) -> None:
        """Close the pool (idempotent); a later operation connects again."""
        pool, self._pool = self._pool, None
        if pool is not None and self._loop is asyncio.get_running_loop():
            await pool.close()
        self._loop = None

    async def __aenter__(self) -> PostgresPersist:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _get_pool(self) -> Any:
        """The pool, made on first use (tables created then), and again when the event loop changed."""
        loop = asyncio.get_running_loop()
        if self._pool is not None and self._loop is loop:
            return self._pool
        if self._connecting is None or self._loop is not loop:
            self._connecting, self._loop, self._pool = asyncio.Lock(), loop, None
        async with self._connecting:
            if self._pool is None:
                asyncpg = import_extra("asyncpg", "postgres", "PostgresPersist")
                pool = await asyncpg.create_pool(
                    self._dsn, min_size=0, max_size=self._pool_size, timeout=self._timeout,
                    command_timeout=self._timeout,
                )
                try:
                    async with pool.acquire() as conn, conn.transaction():
                        await conn.execute(f"SELECT pg_advisory_xact_lock({_DDL_LOCK})")
                        await conn.execute(_DDL.format(schema=f'"{self._schema}"', state=_STATE,
                                                       quarantine=_QUARANTINE, lease=_LEASE, slot=_SLOT))
                except BaseException:
                    pool.terminate()
                    raise
                self._pool = pool
        return self._pool

    def _load_errors(self) -> None:
        asyncpg = import_extra("asyncpg", "postgres", "PostgresPersist")
        self._errors = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError)
        self._lost = (asyncpg.ConnectionDoesNotExistError, asyncpg.InterfaceError, ConnectionError)

    async def _run(
        self, action: str, entity: str, key: str | None, query: Callable[[Any], Awaitable[_T]]
    ) -> _T:
        """One statement on a pooled connection, under the deadline; one retry when the server had
        dropped the connection (it restarted), since every statement here is safe to repeat."""
        if not isinstance(entity, str) or (key is not None and not isinstance(key, str)):
            raise TypeError(f"entity and key must be str, got {type(entity).__name__} / {type(key).__name__}")
        if not self._lost:
            self._load_errors()  # an ImportError naming the extra, not a PersistError

        async def call() -> _T:
            pool = await self._get_pool()
            for attempt in (1, 2):
                try:
                    async with pool.acquire() as conn:
                        return await query(conn)
                except self._lost:
                    if attempt == 2:
                        raise
            raise AssertionError("unreachable")

        return await with_deadline(call, timeout=self._timeout, action=action, entity=entity, key=key,
                                   where=self._where, failures=self._errors)

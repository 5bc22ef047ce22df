"""The persistence protocol: where live state (pending/scheduled signals, risk positions, partial
levels) is kept between process runs. Backtests never call it.

Entities used by the engine: "signals", "schedules", "risk", "partial", and "orders" (the order
journal of a strategy with an order executor). Keys are free text (a symbol
and a strategy name joined by "-"); a backend must make any key safe for its own storage.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final, Protocol, TypeVar, runtime_checkable

from .errors import PersistError

__all__ = [
    "ENTITY_ORDERS",
    "ENTITY_PARTIAL",
    "ENTITY_RISK",
    "ENTITY_SCHEDULES",
    "ENTITY_SIGNALS",
    "PersistBackend",
    "PersistObserver",
    "QuarantineBackend",
    "read_snapshot",
    "set_aside",
    "timed_backend",
]

T = TypeVar("T")

ENTITY_SIGNALS: Final = "signals"
ENTITY_SCHEDULES: Final = "schedules"
ENTITY_RISK: Final = "risk"
ENTITY_PARTIAL: Final = "partial"
ENTITY_ORDERS: Final = "orders"
"""The order journal (`execution/journal.py`): one document per client order id, intent then answer."""


@runtime_checkable
class PersistBackend(Protocol):
    """Async key-value storage of serialized snapshots, one namespace per entity."""

    async def read(self, entity: str, key: str) -> bytes | None:
        """The stored bytes, or None when nothing is stored under `key`."""
        ...

    async def write(self, entity: str, key: str, data: bytes) -> None:
        """Store `data` atomically: a reader sees the old bytes or the new bytes, never a mix."""
        ...

    async def delete(self, entity: str, key: str) -> None:
        """Remove `key`; deleting a missing key is not an error."""
        ...

    async def keys(self, entity: str) -> list[str]:
        """Every key stored for `entity`."""
        ...


async def set_aside(backend: PersistBackend, entity: str, key: str) -> str | None:
    """Move an invalid snapshot aside when the backend can (never delete it); where it went, or None."""
    if isinstance(backend, QuarantineBackend):
        return await backend.quarantine(entity, key)
    return None


async def read_snapshot(
    backend: PersistBackend,
    entity: str,
    key: str,
    parse: Callable[[bytes], T],
    what: str,
    report_error: Callable[[BaseException], Awaitable[None]],
) -> T | None:
    """Read and parse one stored document; never raises
    ([decision 4](../../docs/design/decisions.md#decision-4-restored-state-is-validated)).

    A failed read is reported; a document `parse` rejects (it raises ValueError, msgspec's errors
    or TypeError) is reported as a PersistError naming `what`, set aside when the backend can, and
    not restored. None means "nothing usable stored".
    """
    try:
        data = await backend.read(entity, key)
    except Exception as exc:
        await report_error(exc)
        return None
    if data is None:
        return None
    try:
        return parse(data)
    except (ValueError, TypeError) as exc:  # msgspec.DecodeError / ValidationError are ValueErrors
        reason = exc
    try:
        where = await set_aside(backend, entity, key)
        fate = f"; moved aside to {where}" if where else ""
    except Exception as exc:
        fate = f"; could not be moved aside: {exc!r}"
    await report_error(PersistError(f"{what}: stored document is invalid and was not restored ({reason}){fate}"))
    return None


@runtime_checkable
class QuarantineBackend(Protocol):
    """Optional: a backend that can set a corrupted snapshot aside instead of deleting it."""

    async def quarantine(self, entity: str, key: str) -> str | None:
        """Move the stored value aside (e.g. `<file>.corrupt-<timestamp>`); returns where it went."""
        ...


PersistObserver = Callable[[str, str, float], None]
"""`observer(operation, entity, seconds)`: one persistence call took `seconds` (wall clock)."""


class _Timed:
    """A backend that times each call of `inner` for an observer (the dashboard's metrics).

    Only read/write/delete/keys are timed; any other attribute (`path_for`, ...) is the inner
    backend's. Built by `timed_backend`, which adds `quarantine` only when the inner backend has it,
    so `isinstance(..., QuarantineBackend)` answers as it would for the inner one.
    """

    def __init__(self, inner: PersistBackend, observer: PersistObserver) -> None:
        self.inner = inner
        self._observer = observer

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def _done(self, op: str, entity: str, started: float) -> None:
        with contextlib.suppress(Exception):  # a metrics bug must never fail a save
            self._observer(op, entity, time.perf_counter() - started)

    async def read(self, entity: str, key: str) -> bytes | None:
        started = time.perf_counter()
        try:
            return await self.inner.read(entity, key)
        finally:
            self._done("read", entity, started)

    async def write(self, entity: str, key: str, data: bytes) -> None:
        started = time.perf_counter()
        try:
            await self.inner.write(entity, key, data)
        finally:
            self._done("write", entity, started)

    async def delete(self, entity: str, key: str) -> None:
        started = time.perf_counter()
        try:
            await self.inner.delete(entity, key)
        finally:
            self._done("delete", entity, started)

    async def keys(self, entity: str) -> list[str]:
        started = time.perf_counter()
        try:
            return await self.inner.keys(entity)
        finally:
            self._done("keys", entity, started)


class _TimedQuarantine(_Timed):
    async def quarantine(self, entity: str, key: str) -> str | None:
        inner = self.inner
        assert isinstance(inner, QuarantineBackend)
        return await inner.quarantine(entity, key)


def timed_backend(inner: PersistBackend, observer: PersistObserver) -> PersistBackend:
    """`inner`, with every read/write/delete/keys call timed for `observer`."""
    if isinstance(inner, QuarantineBackend):
        return _TimedQuarantine(inner, observer)
    return _Timed(inner, observer)

"""The persistence protocol: where live state (pending/scheduled signals, risk positions, partial
levels) is kept between process runs. Backtests never call it.

Entities used by the engine: "signals", "schedules", "risk", "partial". Keys are free text (a symbol
and a strategy name joined by "-"); a backend must make any key safe for its own storage.
"""

from __future__ import annotations

from typing import Final, Protocol, runtime_checkable

ENTITY_SIGNALS: Final = "signals"
ENTITY_SCHEDULES: Final = "schedules"
ENTITY_RISK: Final = "risk"
ENTITY_PARTIAL: Final = "partial"


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


@runtime_checkable
class QuarantineBackend(Protocol):
    """Optional: a backend that can set a corrupted snapshot aside instead of deleting it."""

    async def quarantine(self, entity: str, key: str) -> str | None:
        """Move the stored value aside (e.g. `<file>.corrupt-<timestamp>`); returns where it went."""
        ...

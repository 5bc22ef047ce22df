"""Ownership of a live (symbol, strategy) pair in a shared store: a lease with a fencing token.

Why: with state in Redis or PostgreSQL, two processes can start the same pair (a deploy overlapping
the old one, a standby). Both would trade it and overwrite each other's state. So a live run first
takes the pair's **lease** in the store (`LeaseBackend.acquire_lease`): granted when nobody holds it,
when the holder's time-to-live ran out (its process died), or when the holder is this same `owner`
(a restart of a killed process under a stable name takes over at once). Each grant increments the
pair's **fencing token**, kept forever in the store, so tokens are monotonic per pair.

Every state write of the pair carries the token (`Fence`): the server compares it with the pair's
latest token in the same atomic step as the write (a Lua script in Redis, a row lock in PostgreSQL)
and refuses it when a newer owner exists, raising `LeaseLostError`. A paused old owner (a long GC, a
frozen VM, a network partition) can therefore never overwrite its successor's state, whatever its
clocks say; on the refusal it stops trading the pair. A write whose lease merely expired, with no
successor yet, is accepted: nobody else owns the pair (classic fencing, time is only a hint).

The owner renews the lease every third of its TTL (wall time, a task per held lease). A standby run
(`Live.background(..., standby=True)`) polls until the lease is free, so it takes over at most
``TTL + poll`` after its owner died, and then restores the stored position like any restart: after
the grant, so it reads the newest state, and a restored position is monitored, never opened again.

This module only holds the protocol and the client side; the server side lives in the adapters
(`RedisPersist`, `PostgresPersist`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import NamedTuple, Protocol, TypeVar, runtime_checkable

from .errors import LeaseHeldError, LeaseLostError, PersistError
from .persist import PersistBackend, QuarantineBackend

__all__ = [
    "Fence",
    "FencedPersist",
    "LeaseBackend",
    "LeaseGrant",
    "PairLease",
    "SharedRiskBackend",
    "SlotAnswer",
]

_T = TypeVar("_T")


class Fence(NamedTuple):
    """The lease a write is made under: the pair's key and the fencing token this owner was granted."""

    pair: str
    token: int


class LeaseGrant(NamedTuple):
    """An answer of `acquire_lease`: whether it was granted, and who holds the lease now (with which
    token and how many milliseconds of its TTL are left)."""

    granted: bool
    owner: str
    token: int
    ttl_ms: int


class SlotAnswer(NamedTuple):
    """An answer of `take_risk_slot`: whether the slot is held now, and how many positions of the
    profile other than this pair's the store held when deciding."""

    taken: bool
    others: int


@runtime_checkable
class LeaseBackend(Protocol):
    """A store that can grant pair leases and check fencing tokens on writes (Redis, PostgreSQL)."""

    @property
    def lease_ttl(self) -> float:
        """Seconds a lease lives without renewal: the takeover bound after its owner dies."""
        ...

    @property
    def owner(self) -> str:
        """Who this process is in lease records (unique per live process)."""
        ...

    async def acquire_lease(self, pair: str) -> LeaseGrant: ...

    async def renew_lease(self, pair: str, token: int) -> bool:
        """Extend the lease; False when a newer token exists (the lease is lost)."""
        ...

    async def release_lease(self, pair: str, token: int) -> None:
        """Let a standby take over at once (no-op when a newer token exists)."""
        ...

    async def write_fenced(self, entity: str, key: str, data: bytes, fence: Fence) -> None:
        """`write` refused (`LeaseLostError`) unless `fence.token` is still the pair's latest."""
        ...

    async def delete_fenced(self, entity: str, key: str, fence: Fence) -> None:
        """`delete` refused (`LeaseLostError`) unless `fence.token` is still the pair's latest."""
        ...


@runtime_checkable
class SharedRiskBackend(Protocol):
    """A store that counts a risk profile's open positions for every process sharing it."""

    async def risk_slots(self, risk_name: str) -> dict[str, bytes]:
        """Every held slot of the profile: position key -> stored `ActivePosition` document."""
        ...

    async def take_risk_slot(
        self, risk_name: str, position: str, data: bytes, *, limit: int | None, fence: Fence
    ) -> SlotAnswer:
        """Atomically: refuse a stale fence (`LeaseLostError`), count the other slots, and store this
        one unless `limit` of them are held. `limit=None` stores it unconditionally (a restore)."""
        ...

    async def drop_risk_slot(self, risk_name: str, position: str, *, fence: Fence) -> None:
        """Release the pair's slot (fenced; a missing slot is not an error)."""
        ...


class PairLease:
    """The lease of one live run's pair: acquire (or wait as a standby), renew, fence, release.

    `lost` is set once the store refused this owner (a renewal or a fenced write): from then on
    every fenced operation raises it without asking the server, and the live loop ends the run.
    """

    def __init__(
        self,
        backend: LeaseBackend,
        pair: str,
        what: str,
        report_error: Callable[[BaseException], Awaitable[None]],
        log_info: Callable[[str], None],
    ) -> None:
        self.backend = backend
        self.pair = pair
        self.what = what  # "live BTCUSDT/sma" for messages
        self.token: int | None = None
        self.lost: LeaseLostError | None = None
        self.on_lost: Callable[[], None] | None = None  # the live loop wakes up to end the run
        self._report_error = report_error
        self._log_info = log_info
        self._renewer: asyncio.Task[None] | None = None

    @property
    def poll_seconds(self) -> float:
        """How often a standby asks for the lease: a quarter of the TTL, at most one second."""
        return min(self.backend.lease_ttl / 4, 1.0)

    async def acquire(self, *, standby: bool, stopped: Callable[[], bool], wake: asyncio.Event | None) -> bool:
        """Take the lease; False when a stop arrived while waiting as a standby.

        Without `standby` a lease held by another owner raises `LeaseHeldError` naming the holder.
        """
        waiting = False
        while True:
            grant = await self.backend.acquire_lease(self.pair)
            if grant.granted:
                self.token, self.lost = grant.token, None
                self._renewer = asyncio.get_running_loop().create_task(
                    self._renew_forever(), name=f"backtest-kit lease {self.pair}")
                return True
            if not standby:
                raise LeaseHeldError(
                    f"{self.what}: the pair is owned by {grant.owner!r} (fencing token {grant.token}, lease "
                    f"expires in {grant.ttl_ms / 1000:g} s unless renewed); nothing was traded. Stop that "
                    "process, or start this run with standby=True to take over when its lease ends"
                )
            if stopped():
                return False
            if not waiting:
                waiting = True
                self._log_info(f"{self.what}: standby, waiting for the lease held by {grant.owner!r}")
            if wake is None:
                await asyncio.sleep(self.poll_seconds)
                continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.poll_seconds):
                    await wake.wait()
            if stopped():
                return False

    def fence(self) -> Fence:
        """The fence of the next write; raises `LeaseLostError` when this owner is not current."""
        if self.lost is not None:
            raise LeaseLostError(str(self.lost))
        if self.token is None:
            raise LeaseLostError(f"{self.what}: no lease held on pair {self.pair!r}; nothing is written")
        return Fence(self.pair, self.token)

    async def fenced(self, call: Callable[[Fence], Awaitable[_T]]) -> _T:
        """Run one fenced store operation; a refusal marks the lease lost before propagating."""
        try:
            return await call(self.fence())
        except LeaseLostError as exc:
            self.mark_lost(exc)
            raise

    def mark_lost(self, error: LeaseLostError) -> None:
        if self.lost is None:
            self.lost = error
            if self.on_lost is not None:
                self.on_lost()

    async def release(self) -> None:
        """Stop renewing and give the lease back (a standby takes over at once); never raises."""
        renewer, self._renewer = self._renewer, None
        if renewer is not None:
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await renewer
        token, self.token = self.token, None
        if token is None or self.lost is not None:
            return
        try:
            await self.backend.release_lease(self.pair, token)
        except Exception as exc:  # it expires by itself
            await self._report_error(exc)

    async def _renew_forever(self) -> None:
        """Renew every third of the TTL; a refusal loses the lease, a failing server is retried."""
        token = self.token
        assert token is not None
        while True:
            await asyncio.sleep(self.backend.lease_ttl / 3)
            try:
                renewed = await self.backend.renew_lease(self.pair, token)
            except PersistError as exc:
                await self._report_error(exc)
                continue
            if not renewed:
                error = LeaseLostError(
                    f"{self.what}: lease of pair {self.pair!r} lost (fencing token {token} is no longer the "
                    "latest: another process took the pair over); this run stops trading it"
                )
                self.mark_lost(error)
                await self._report_error(error)
                return


class FencedPersist:
    """A `PersistBackend` view for one pair: writes and deletes carry the pair's fence, reads don't.

    The store of a live instance sees this instead of the backend itself, so every state write of the
    pair is checked by the server against the pair's latest fencing token.
    """

    def __init__(self, backend: LeaseBackend, lease: PairLease) -> None:
        self._backend = backend
        self._lease = lease
        if not isinstance(backend, PersistBackend):
            raise TypeError(f"{type(backend).__name__} is a LeaseBackend but not a PersistBackend")
        self._plain: PersistBackend = backend

    def __getattr__(self, name: str) -> object:  # path_for, namespace, address: as the backend says
        return getattr(self._plain, name)

    async def read(self, entity: str, key: str) -> bytes | None:
        return await self._plain.read(entity, key)

    async def keys(self, entity: str) -> list[str]:
        return await self._plain.keys(entity)

    async def write(self, entity: str, key: str, data: bytes) -> None:
        await self._lease.fenced(lambda fence: self._backend.write_fenced(entity, key, data, fence))

    async def delete(self, entity: str, key: str) -> None:
        await self._lease.fenced(lambda fence: self._backend.delete_fenced(entity, key, fence))

    async def quarantine(self, entity: str, key: str) -> str | None:
        """Setting an invalid document aside (not fenced: it keeps the bytes, never loses them)."""
        if isinstance(self._plain, QuarantineBackend):
            return await self._plain.quarantine(entity, key)
        return None

"""`PersistedSignalStore`: the live instance's pending and scheduled signal, kept in a `PersistBackend`.

Layout ([decision 14](../../docs/design/decisions.md#decision-14-persistence-layout-follows-the-seed)):
entity ``"signals"`` holds the pending row and entity ``"schedules"`` the waiting limit row, both under
the key ``"<symbol>-<strategy>"`` with each name escaped so that no two pairs share a key
(`naming.pair_key`: ``BTC-PERP`` / ``x`` is ``BTC%2DPERP-x``; plain names are unchanged); with the
default `FilePersist` that is ``<persist_dir>/signals/<symbol>-<strategy>.json`` and
``<persist_dir>/schedules/<symbol>-<strategy>.json``. A row is msgspec JSON of `SignalRow`; "no row" is
the absence of the key. A pair whose key changed with the escaping (a name holding ``-``, ``:`` or
``%``) also looks under the old plain-join key when nothing is stored under the new one, and takes the
row over (rewritten under the new key, then the old file removed) only when the row names this pair.

Ordering rules (what survives a crash at any instant):

* **Writes are immediate.** `save_pending(row)` / `save_scheduled(row)` return only once the backend
  stored the bytes, so a row is on disk before its ``opened`` / ``scheduled`` event is emitted. A
  failed write raises `PersistError`; the caller treats the position as not opened.
* **Deletes are deferred until the tick's event was delivered.** `save_*(None)` only records the
  intention; the live loop calls `flush()` after the listeners received the tick's result (and the
  next tick retries when that failed). So a crash never loses a ``closed`` / ``cancelled``
  notification: either the listeners saw it, or the row is still stored and the restarted instance
  closes it again (same id). Listeners see a close at least once across crashes, an open at most once
  (a crash between the write and the delivery restores the position silently; ``on_active`` fires on
  its first tick after the restart).
* **A failed operation leaves the store unhealthy** (`healthy` is False) with the intended state kept
  in memory; `flush()` retries it. The strategy refuses to open or schedule a new position while the
  store is unhealthy (the previous state might still be on disk).

Restore (`load`) validates strictly: msgspec decoding with ``strict=True`` plus sanity checks (positive
finite prices, take profit / stop loss on the right side, ``minute_estimated_time >= 1``, timestamps
after the epoch, ``is_scheduled`` matching the entity, symbol / strategy / exchange matching this
instance). An invalid snapshot is reported through the error channel with the entity, key, location
and reason, moved aside by a `QuarantineBackend` (``<file>.corrupt-<timestamp>``; a backend without
quarantine leaves it untouched), and not restored. A backend *read* failure raises `PersistError`, so
the instance's first tick fails and the restore is retried on the next tick
([lifecycle PD-7](../../docs/design/lifecycle.md#pd-7-restored-data)).
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import Final

import msgspec

from .errors import LeaseLostError, PersistError
from .models import SignalRow
from .naming import legacy_pair_key, pair_key
from .persist import ENTITY_SCHEDULES, ENTITY_SIGNALS, PersistBackend, set_aside

__all__ = ["PersistedSignalStore", "decode_signal_row", "encode_signal_row", "signal_key"]

_ENCODER: Final = msgspec.json.Encoder()
_DECODER: Final = msgspec.json.Decoder(SignalRow, strict=True)


def signal_key(symbol: str, strategy_name: str) -> str:
    """The key of a (symbol, strategy) pair in the "signals" and "schedules" entities (injective)."""
    return pair_key(symbol, strategy_name)


def encode_signal_row(row: SignalRow) -> bytes:
    """The stored form of a row: compact msgspec JSON (floats round-trip exactly)."""
    return _ENCODER.encode(row)


def _row_problems(row: SignalRow, *, scheduled: bool) -> list[str]:
    problems: list[str] = []
    for name in ("id", "symbol", "strategy_name", "exchange_name"):
        if not getattr(row, name):
            problems.append(f"{name} is empty")
    prices_ok = True
    for name in ("price_open", "price_take_profit", "price_stop_loss"):
        value = getattr(row, name)
        if not math.isfinite(value) or value <= 0:
            problems.append(f"{name} must be a positive finite number, got {value!r}")
            prices_ok = False
    if prices_ok:
        op, tp, sl = row.price_open, row.price_take_profit, row.price_stop_loss
        if row.position == "long" and not sl < op < tp:
            problems.append(f"a long needs stop loss < open < take profit, got {sl!r}, {op!r}, {tp!r}")
        if row.position == "short" and not tp < op < sl:
            problems.append(f"a short needs take profit < open < stop loss, got {tp!r}, {op!r}, {sl!r}")
    if row.quantity is not None and (not math.isfinite(row.quantity) or row.quantity < 0):
        problems.append(f"quantity must be a finite number >= 0, got {row.quantity!r}")
    if row.minute_estimated_time < 1:
        problems.append(f"minute_estimated_time must be >= 1, got {row.minute_estimated_time!r}")
    if row.scheduled_at <= 0:
        problems.append(f"scheduled_at must be after the epoch, got {row.scheduled_at!r}")
    if row.pending_at <= 0:
        problems.append(f"pending_at must be after the epoch, got {row.pending_at!r}")
    elif row.pending_at < row.scheduled_at:
        problems.append(f"pending_at {row.pending_at!r} is before scheduled_at {row.scheduled_at!r}")
    if row.is_scheduled != scheduled:
        where = "a scheduled row" if scheduled else "a pending row"
        problems.append(f"is_scheduled is {row.is_scheduled!r} in {where}")
    return problems


def decode_signal_row(data: bytes, *, scheduled: bool) -> SignalRow:
    """Decode and sanity-check a stored row; raises ValueError naming every problem."""
    try:
        row = _DECODER.decode(data)
    except msgspec.DecodeError as exc:  # ValidationError is a DecodeError
        raise ValueError(str(exc)) from None
    problems = _row_problems(row, scheduled=scheduled)
    if problems:
        raise ValueError("; ".join(problems))
    return row


def row_of_old_layout(data: bytes, key: str, *, scheduled: bool) -> bool:
    """True when `data` is a valid row of *another* pair whose old plain-join key was `key`."""
    try:
        row = decode_signal_row(bytes(data), scheduled=scheduled)
    except ValueError:
        return False
    return key == legacy_pair_key(row.symbol, row.strategy_name) != signal_key(row.symbol, row.strategy_name)


def _preview(data: bytes, limit: int = 60) -> str:
    return repr(data[:limit]) + (f"...({len(data)} bytes)" if len(data) > limit else "")


class PersistedSignalStore:
    """The `SignalStore` of one live (symbol, strategy) instance, backed by `persist_for(entity)`.

    `persist_for` is looked up on every operation, so `Engine.use_persist` applies to instances that
    already exist. Callers serialize operations per instance (the live loop does): the store itself
    holds no lock.
    """

    def __init__(
        self,
        persist_for: Callable[[str], PersistBackend],
        symbol: str,
        strategy_name: str,
        report_error: Callable[[BaseException], Awaitable[None]],
        *,
        exchange_name: str | None = None,
        check_row: Callable[[SignalRow], list[str]] | None = None,
    ) -> None:
        self._persist_for = persist_for
        self.symbol = symbol
        self.strategy_name = strategy_name
        self.exchange_name = exchange_name
        self.key = signal_key(symbol, strategy_name)
        legacy = legacy_pair_key(symbol, strategy_name)
        self._legacy_key = legacy if legacy != self.key else None
        self._report_error = report_error
        self._check_row = check_row  # the engine's creation-time checks plus clock sanity (item 5)
        self.rejected = 0  # snapshots set aside by `load` so far (the instance waits a tick after one)
        # entity -> intended row (None = delete) not yet confirmed by the backend, in arrival order
        self._unsynced: dict[str, SignalRow | None] = {}
        self._failed = False  # the last attempt for some unsynced entry raised

    # ------------------------------------------------------------------ state
    @property
    def healthy(self) -> bool:
        """True when the backend holds exactly the state last saved (nothing to retry or apply)."""
        return not self._unsynced

    @property
    def has_deferred(self) -> bool:
        """Work the caller should apply now: deferred deletes not yet attempted (not failed retries)."""
        return bool(self._unsynced) and not self._failed

    def intended(self, entity: str) -> SignalRow | None:
        """The unsynced state of `entity` (None = delete), for diagnostics."""
        return self._unsynced.get(entity)

    # ------------------------------------------------------------------ SignalStore
    async def load(self) -> tuple[SignalRow | None, SignalRow | None]:
        """(pending, scheduled) as stored; invalid snapshots are reported, quarantined and skipped.

        Raises `PersistError` when the backend cannot be read (or a bad snapshot cannot be set
        aside), so the caller retries instead of starting without knowing the stored state.
        """
        pending = await self._load(ENTITY_SIGNALS, scheduled=False)
        scheduled = await self._load(ENTITY_SCHEDULES, scheduled=True)
        return pending, scheduled

    async def save_pending(self, row: SignalRow | None) -> None:
        await self._save(ENTITY_SIGNALS, row)

    async def save_scheduled(self, row: SignalRow | None) -> None:
        await self._save(ENTITY_SCHEDULES, row)

    async def flush(self) -> None:
        """Apply every unsynced operation (deferred deletes, failed writes); raises `PersistError`."""
        for entity in list(self._unsynced):
            if entity not in self._unsynced:
                continue
            await self._sync(entity, self._unsynced[entity])
        self._failed = False

    # ------------------------------------------------------------------ internals
    async def _save(self, entity: str, row: SignalRow | None) -> None:
        self._unsynced.pop(entity, None)
        self._unsynced[entity] = row  # (re)insert: a newer intention replaces an older one
        if row is None:
            return  # deferred until the tick's event was delivered (module docstring)
        await self._sync(entity, row)

    async def _sync(self, entity: str, row: SignalRow | None) -> None:
        """Apply `row`; on success it is synced unless a newer intention replaced it meanwhile."""
        try:
            await self._apply(entity, row)
        except PersistError:
            self._failed = True
            raise
        if self._unsynced.get(entity, _MISSING) is row:
            del self._unsynced[entity]

    async def _apply(self, entity: str, row: SignalRow | None) -> None:
        action = "delete" if row is None else "write"
        try:
            backend = self._persist_for(entity)
            if row is None:
                await backend.delete(entity, self.key)
            else:
                await backend.write(entity, self.key, encode_signal_row(row))
        except Exception as exc:
            raise self._error(action, entity, exc) from exc

    def _error(self, action: str, entity: str, exc: BaseException) -> PersistError:
        detail = str(exc) if isinstance(exc, PersistError) else f"{type(exc).__name__}: {exc}"
        if isinstance(exc, LeaseLostError):  # the class tells the live loop to stop trading the pair
            return LeaseLostError(f"cannot {action} the {_what(entity)} of {self.symbol}/{self.strategy_name} "
                                  f"(entity {entity!r}, key {self.key!r}): {detail}")
        retry = "the restore is retried" if action == "read" else "the state is kept in memory and retried"
        return PersistError(
            f"cannot {action} the {_what(entity)} of {self.symbol}/{self.strategy_name} "
            f"(entity {entity!r}, key {self.key!r}): {detail}; {retry} on the next tick"
        )

    async def _load(self, entity: str, *, scheduled: bool) -> SignalRow | None:
        try:
            backend = self._persist_for(entity)
            data = await backend.read(entity, self.key)
        except Exception as exc:
            raise self._error("read", entity, exc) from exc
        if data is None:
            return await self._load_legacy(backend, entity, scheduled=scheduled)
        try:
            row = decode_signal_row(bytes(data), scheduled=scheduled)
            self._check_owner(row)
            self._check(row)
        except ValueError as exc:
            if row_of_old_layout(data, self.key, scheduled=scheduled):
                return None  # another pair's file from before the escaping: its owner takes it over
            await self._reject(backend, entity, bytes(data), str(exc))
            return None
        return row

    async def _load_legacy(self, backend: PersistBackend, entity: str, *, scheduled: bool) -> SignalRow | None:
        """A row an older version stored under the plain-join key, taken over only when it is ours.

        That key may belong to another pair (``BTC-PERP``/``x`` and ``BTC``/``PERP-x`` shared it), so a
        row naming another pair, or one that does not decode, is left exactly where it is.
        """
        if self._legacy_key is None:
            return None
        try:
            data = await backend.read(entity, self._legacy_key)
        except Exception as exc:
            raise self._error("read", entity, exc) from exc
        if data is None:
            return None
        try:
            row = decode_signal_row(bytes(data), scheduled=scheduled)
            self._check_owner(row)
        except ValueError:
            return None
        try:
            await backend.write(entity, self.key, bytes(data))  # new key first: a crash keeps one copy
            await backend.delete(entity, self._legacy_key)
        except Exception as exc:
            raise self._error("write", entity, exc) from exc
        return row

    def _check(self, row: SignalRow) -> None:
        """Restored rows pass the checks new signals pass
        ([decision 4](../../docs/design/decisions.md#decision-4-restored-state-is-validated),
        [hardening item 5](../../docs/design/decisions.md#hardening-5-restored-rows-pass-the-checks-of-new-signals))."""
        if self._check_row is None:
            return
        problems = self._check_row(row)
        if problems:
            raise ValueError("; ".join(problems))

    def _check_owner(self, row: SignalRow) -> None:
        problems = []
        if row.symbol != self.symbol:
            problems.append(f"symbol {row.symbol!r} is not {self.symbol!r}")
        if row.strategy_name != self.strategy_name:
            problems.append(f"strategy_name {row.strategy_name!r} is not {self.strategy_name!r}")
        if self.exchange_name is not None and row.exchange_name != self.exchange_name:
            problems.append(f"exchange_name {row.exchange_name!r} is not {self.exchange_name!r}")
        if problems:
            raise ValueError("belongs to another instance: " + "; ".join(problems))

    async def _reject(self, backend: PersistBackend, entity: str, data: bytes, reason: str) -> None:
        """Report an invalid snapshot and set it aside; never delete it."""
        self.rejected += 1
        where = _location(backend, entity, self.key)
        try:
            moved = await set_aside(backend, entity, self.key)
        except Exception as exc:
            raise PersistError(
                f"invalid {_what(entity)} snapshot for {self.symbol}/{self.strategy_name} "
                f"(entity {entity!r}, key {self.key!r}{where}) could not be moved aside: {exc}; "
                "the restore is retried on the next tick"
            ) from exc
        fate = f"moved to {moved}" if moved else "left in place (the backend cannot quarantine)"
        await self._report_error(PersistError(
            f"invalid {_what(entity)} snapshot for {self.symbol}/{self.strategy_name} "
            f"(entity {entity!r}, key {self.key!r}{where}): {reason}; content {_preview(data)}; "
            f"not restored, {fate}"
        ))


_MISSING: Final = object()


def _what(entity: str) -> str:
    return {ENTITY_SIGNALS: "pending signal", ENTITY_SCHEDULES: "scheduled signal"}.get(entity, entity)


def _location(backend: PersistBackend, entity: str, key: str) -> str:
    path_for = getattr(backend, "path_for", None)
    if path_for is None:
        return ""
    try:
        return f", file {path_for(entity, key)}"
    except Exception:
        return ""

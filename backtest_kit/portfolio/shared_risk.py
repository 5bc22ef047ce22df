"""A live risk profile shared by several processes: its positions are counted in the store.

Why: `PairRiskGate` counts a profile's positions in the engine's memory (restored from the stored
signals at start), which is exact for one process. Two processes sharing a `max_concurrent_positions`
on Redis or PostgreSQL would each count only their own and together exceed the limit. So when the
profile's state and the pairs' leases live in one `SharedRiskBackend`, each open position holds a
**slot** in the store (one per pair: ``bk:<ns>:r:<risk>`` in Redis, ``backtest_kit_risk_slot`` in
PostgreSQL), and opening is one atomic server-side step: check the pair's fencing token, count the
other slots, add this one unless the limit is reached (`take_risk_slot`).

Slot life, and why each step is where it is:

* **Taken before the signal is written** (`try_open`), so a stored signal always has its slot.
* **Released only after the signal's deferred delete reached the store** (`deferred_release`: the
  strategy instance calls `release` after its store flushed), so a kill between the two leaves a slot
  without a signal (counted one position too many, the safe side), never a signal without its slot.
* **A killed owner's slots stay**: they are real open positions. Whoever owns the pair next restores
  the position (`restore` re-asserts the slot, no limit check: it is already open) and releases the
  slot exactly once when it closes; a pair restored with no position drops a slot left behind by a
  kill between the slot and the signal write (`release_stale`).
* **Every slot change is fenced** by the pair's lease, so an old owner cannot release or take a slot
  after a takeover.

Validations run on a snapshot of the slots read just before (`active_positions`); only the built-in
limit is re-checked atomically by the server, so a custom validation counting positions across
processes may see a snapshot a moment old.
"""

from __future__ import annotations

import msgspec

from ..engine.lease import PairLease, SharedRiskBackend
from ..engine.models import SignalRow
from .risk import ActivePosition, PairRiskGate, RiskState, _Verdict

__all__ = ["SharedRiskGate"]

_DECODER = msgspec.json.Decoder(ActivePosition)


class SharedRiskGate(PairRiskGate):
    """The `RiskGate` of one live pair over a profile counted in a `SharedRiskBackend`."""

    deferred_release = True
    """The instance calls `release` only after the closed signal's delete was stored (module docstring)."""

    def __init__(
        self, state: RiskState, symbol: str, strategy_name: str, exchange_name: str,
        backend: SharedRiskBackend, lease: PairLease,
    ) -> None:
        super().__init__(state, symbol, strategy_name, exchange_name)
        self.backend = backend
        self.lease = lease
        state.shared_refresh = self.refresh

    async def refresh(self) -> None:
        """Read the profile's slots into `state.positions` (what validations and `Risk.get_positions` see).

        A slot whose document does not decode still counts on the server; it is reported and left out
        of the snapshot.
        """
        state = self.state
        raw = await self.backend.risk_slots(state.name)
        positions: dict[str, ActivePosition] = {}
        for key, data in raw.items():
            try:
                positions[key] = _DECODER.decode(data)
            except (ValueError, TypeError) as exc:
                await state.service.engine.report_error(
                    ValueError(f"risk {state.name}: stored slot {key!r} does not decode ({exc}); it still counts"))
        state.positions = positions

    async def check(self, row: SignalRow, current_price: float, now_ms: int) -> bool:
        """Checkpoint A for a limit signal: evaluate on a fresh snapshot, take nothing."""
        await self.refresh()
        verdict = await self._evaluate(row, current_price, now_ms)
        await self._conclude(verdict)
        return verdict.ok

    async def try_open(self, row: SignalRow, current_price: float, now_ms: int) -> bool:
        """Validations on a fresh snapshot, then the atomic check-and-take of the limit in the store."""
        state = self.state
        limit = state.schema.max_concurrent_positions
        async with state.lock:  # pairs of this process ask one at a time; other processes: the server
            await self.refresh()
            verdict = await self._evaluate(row, current_price, now_ms)
            if verdict.ok:
                position = ActivePosition(
                    signal=row, symbol=self.symbol, strategy_name=self.strategy_name,
                    exchange_name=self.exchange_name, open_timestamp=now_ms,
                )
                data = msgspec.json.encode(position)
                answer = await self.lease.fenced(lambda fence: self.backend.take_risk_slot(
                    state.name, self.key, data, limit=limit, fence=fence))
                if answer.taken:
                    state.positions[self.key] = position
                else:
                    args = msgspec.structs.replace(verdict.args, active_position_count=answer.others)
                    verdict = _Verdict(False, args, f"max_concurrent_positions={limit} reached", [])
        await self._conclude(verdict)
        return verdict.ok

    async def release(self, row: SignalRow) -> None:
        """The pair's position closed and its signal is deleted: give the slot back (fenced)."""
        await self.lease.fenced(lambda fence: self.backend.drop_risk_slot(self.state.name, self.key, fence=fence))
        self.state.positions.pop(self.key, None)

    async def restore(self, row: SignalRow) -> None:
        """The pair restored this open position: its slot is held, whatever the count (it is open)."""
        position = ActivePosition(
            signal=row, symbol=self.symbol, strategy_name=self.strategy_name,
            exchange_name=self.exchange_name, open_timestamp=row.pending_at,
        )
        data = msgspec.json.encode(position)
        await self.lease.fenced(lambda fence: self.backend.take_risk_slot(
            self.state.name, self.key, data, limit=None, fence=fence))
        self.state.positions[self.key] = position

    async def release_stale(self) -> None:
        """The pair restored no position: a slot of its left by a kill before the signal write goes."""
        await self.lease.fenced(lambda fence: self.backend.drop_risk_slot(self.state.name, self.key, fence=fence))
        self.state.positions.pop(self.key, None)

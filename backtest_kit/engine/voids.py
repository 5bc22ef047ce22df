"""Signals whose entry order the exchange refused: the model must drop them (no position, slot freed).

Why here: a signal opens in the model before its entry order is answered. When the exchange then
refuses the order (insufficient balance, a filter) the model would otherwise hold a position that does
not exist and keep the strategy's risk slot taken until a take profit or stop loss nobody can trade.
The order executor asks for the void (`request`); the pair's next live tick takes it (`take`) and drops
the signal as a `CancelledResult`, releasing its risk slot. Keyed by (strategy, symbol, signal id), so a
void never touches another signal; an unused entry is dropped once the pair's signal is another one.
"""

from __future__ import annotations

__all__ = ["SignalVoids"]

_CAP = 10_000  # voids not yet taken (a pair that never ticks again); the oldest are dropped beyond


class SignalVoids:
    """Pending "drop this signal" requests, with their reason."""

    def __init__(self) -> None:
        self._pending: dict[tuple[str, str, str], str] = {}

    def request(self, strategy_name: str, symbol: str, signal_id: str, reason: str) -> None:
        self._pending[(strategy_name, symbol, signal_id)] = reason
        if len(self._pending) > _CAP:
            self._pending.pop(next(iter(self._pending)))

    def take(self, strategy_name: str, symbol: str, signal_id: str) -> str | None:
        """The reason `signal_id` must be dropped (the request is consumed), or None."""
        return self._pending.pop((strategy_name, symbol, signal_id), None)

    def __len__(self) -> int:
        return len(self._pending)

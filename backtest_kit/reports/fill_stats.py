"""Realised PnL from fills: the closed trades as their orders filled, next to the model's PnL.

A `FillBook` belongs to one pair's statistics store and exists only once an order event arrived for the
pair (an order executor is attached), so a run without one keeps every figure exactly as before. It
takes the pair's order events (`add_order`) and closed results (`add_closed`) in any order: a trade is
folded into the running sums once its close is known and its exit filled the whole filled entry.
Pure module: no asyncio and no I/O.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Final

import msgspec

from ..engine.models import ClosedResult, OrderEvent, Position
from .stats import Statistics, TradeFill, finite_or_none

__all__ = ["FillBook", "realized_pnl_percent"]

_PENDING_CAP: Final = 10_000  # signals waiting for fills or a close; the oldest are dropped beyond
_TOLERANCE: Final = 1e-9


def realized_pnl_percent(
    position: Position, amount: float, entry_price: float, exit_price: float, fees: float
) -> float:
    """(exit − entry) × amount (reversed for a short) minus fees, over the entry notional, in percent."""
    gross = (exit_price - entry_price) * amount
    if position == "short":
        gross = -gross
    return (gross - fees) / (entry_price * amount) * 100.0


@dataclass(slots=True)
class _Side:
    """The latest state of every order of one role of a signal (client order id -> filled, avg, fee)."""

    orders: dict[str, tuple[float, float, float]] = field(default_factory=dict)

    def add(self, event: OrderEvent) -> None:
        price = event.average_price
        if event.filled > 0 and price is not None:
            self.orders[event.client_order_id] = (event.filled, price, event.fee)

    def totals(self) -> tuple[float, float, float]:
        """(filled amount, average price, fees) over the role's orders."""
        filled = sum(f for f, _, _ in self.orders.values())
        if filled <= 0:
            return 0.0, 0.0, 0.0
        price = sum(f * p for f, p, _ in self.orders.values()) / filled
        return filled, price, sum(fee for _, _, fee in self.orders.values())


@dataclass(slots=True)
class _Pending:
    entry: _Side = field(default_factory=_Side)
    exit: _Side = field(default_factory=_Side)
    closed: ClosedResult | None = None


class FillBook:
    """Per-pair fills: running sums over the filled trades, plus their `TradeFill` rows (the most recent
    `max_rows`, or all when None)."""

    __slots__ = ("_pending", "count", "max_rows", "realized_sum", "rows", "slippage_sum")

    def __init__(self, max_rows: int | None = None) -> None:
        self.max_rows = max_rows
        self._pending: OrderedDict[str, _Pending] = OrderedDict()
        self.rows: OrderedDict[str, TradeFill] = OrderedDict()
        self.count = 0
        self.realized_sum = 0.0
        self.slippage_sum = 0.0

    def _entry(self, signal_id: str) -> _Pending | None:
        if signal_id in self.rows:
            return None  # already folded: a late duplicate event changes nothing
        pending = self._pending.get(signal_id)
        if pending is None:
            pending = self._pending[signal_id] = _Pending()
            if len(self._pending) > _PENDING_CAP:
                self._pending.popitem(last=False)
        return pending

    def add_order(self, event: OrderEvent) -> None:
        if event.role == "cancel":
            return
        pending = self._entry(event.signal_id)
        if pending is None:
            return
        (pending.entry if event.role == "entry" else pending.exit).add(event)
        self._settle(event.signal_id, pending)

    def add_closed(self, result: ClosedResult) -> None:
        pending = self._entry(result.signal.id)
        if pending is None:
            return
        pending.closed = result
        self._settle(result.signal.id, pending)

    def _settle(self, signal_id: str, pending: _Pending) -> None:
        closed = pending.closed
        if closed is None:
            return
        amount, entry_price, entry_fee = pending.entry.totals()
        exited, exit_price, exit_fee = pending.exit.totals()
        if amount <= 0 or exited < amount * (1 - _TOLERANCE):
            return
        fees = entry_fee + exit_fee
        realized = realized_pnl_percent(closed.signal.position, amount, entry_price, exit_price, fees)
        model = closed.pnl.pnl_percentage
        row = TradeFill(signal_id=signal_id, position=closed.signal.position, amount=amount,
                        entry_price=entry_price, exit_price=exit_price, fees=fees, realized_pnl=realized,
                        model_pnl=model, slippage=realized - model)
        del self._pending[signal_id]
        self.rows[signal_id] = row
        if self.max_rows is not None and len(self.rows) > self.max_rows:
            self.rows.popitem(last=False)
        self.count += 1
        self.realized_sum += realized
        self.slippage_sum += realized - model

    def apply(self, stats: Statistics) -> Statistics:
        """`stats` with the realised figures (`filled_trades`, `realized_pnl`, `fill_slippage`, `fills`)."""
        if not self.count:
            return stats
        return msgspec.structs.replace(
            stats, filled_trades=self.count, realized_pnl=finite_or_none(self.realized_sum),
            fill_slippage=finite_or_none(self.slippage_sum), fills=dict(reversed(self.rows.items())),
        )

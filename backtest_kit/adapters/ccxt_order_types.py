"""What the order gateway is given and gives back: `OrderIntent`, `OrderState`, `Fill` and its errors.

Split out of `ccxt_orders.py` so the values an executor stores and compares (the intent it journals
before sending, the state it reconciles against) can be read without the retry machinery. All are
frozen: an intent is the promise "this order, under this client order id, at most once".
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from ..engine.errors import BacktestKitError, SchemaError

__all__ = ["Fill", "OrderIntent", "OrderNeedsAttention", "OrderRejected", "OrderState", "TradingDisabledError"]

CLIENT_ORDER_ID = re.compile(r"^[.A-Z:/a-z0-9_-]{1,36}$")
"""Binance's rule for `newClientOrderId` (other exchanges accept a subset of what this allows)."""
FINAL_STATUSES = frozenset({"closed", "canceled", "expired", "rejected"})


class OrderRejected(BacktestKitError, ValueError):
    """The order was refused, before sending (precision, minimums, balance) or by the exchange, and
    is known NOT to exist: re-sending the same intent would fail the same way."""

    def __init__(self, message: str, *, client_order_id: str, field: str, value: Any = None,
                 limit: Any = None, reason: str = "") -> None:
        super().__init__(message)
        self.client_order_id = client_order_id
        self.field = field  # "amount", "price", "cost", "balance", "exchange", ...
        self.value = value
        self.limit = limit
        self.reason = reason


class OrderNeedsAttention(BacktestKitError):
    """After the bounded attempts it is still unknown whether the order exists: a person (or a later
    reconciliation by `client_order_id`) must decide; it must not simply be sent again."""

    def __init__(self, message: str, *, client_order_id: str, attempts: int, last_error: str) -> None:
        super().__init__(message)
        self.client_order_id = client_order_id
        self.attempts = attempts
        self.last_error = last_error


class TradingDisabledError(BacktestKitError, PermissionError):
    """An order was about to be sent by a gateway built without `trade=True`."""


@dataclass(frozen=True, slots=True)
class OrderIntent:
    """One order to place exactly once. `client_order_id` is the idempotency key sent with every
    request; `price` is the limit price, or for a market order the expected price (used only for the
    minimum-notional and balance checks, never sent). `role` is informational ("entry", "take_profit",
    "stop_loss", "close"); `reduce_only` is sent to contract markets only (spot has no such flag)."""

    client_order_id: str
    symbol: str
    side: str
    type: str
    amount: float
    price: float | None = None
    reduce_only: bool = False
    role: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.client_order_id, str) or not CLIENT_ORDER_ID.match(self.client_order_id):
            raise SchemaError(f"client_order_id: expected 1-36 characters of [A-Za-z0-9._:/-], "
                              f"got {self.client_order_id!r}")
        if not isinstance(self.symbol, str) or not self.symbol:
            raise SchemaError(f"symbol: expected a non-empty string, got {self.symbol!r}")
        if self.side not in ("buy", "sell"):
            raise SchemaError(f"side: expected 'buy' or 'sell', got {self.side!r}")
        if self.type not in ("market", "limit"):
            raise SchemaError(f"type: expected 'market' or 'limit', got {self.type!r}")
        if not _positive(self.amount):
            raise SchemaError(f"amount: expected a finite number > 0, got {self.amount!r}")
        if self.price is not None and not _positive(self.price):
            raise SchemaError(f"price: expected a finite number > 0 or None, got {self.price!r}")
        if self.type == "limit" and self.price is None:
            raise SchemaError("price: a limit order needs a price, got None")


@dataclass(frozen=True, slots=True)
class Fill:
    """One trade of an order."""

    trade_id: str | None
    price: float
    amount: float
    fee: float
    fee_currency: str | None
    timestamp: int | None


@dataclass(frozen=True, slots=True)
class OrderState:
    """An order as the exchange knows it, normalized from ccxt's order structure.

    `status` is ccxt's: "open" (partially filled orders too — see `filled`), "closed" (filled),
    "canceled", "expired" (e.g. a market order that ran out of liquidity, partly filled), "rejected".
    `fee` is the sum of the trades' fees in `fee_currency` (the first trade's currency)."""

    client_order_id: str
    exchange_id: str | None
    symbol: str
    side: str
    type: str
    status: str
    amount: float
    filled: float
    remaining: float
    price: float | None
    average: float | None
    fee: float
    fee_currency: str | None
    trades: tuple[Fill, ...] = field(default_factory=tuple)
    timestamp: int | None = None
    exchange_status: str | None = None  # the exchange's own word, e.g. Binance's "PARTIALLY_FILLED"

    @property
    def is_final(self) -> bool:
        """Nothing more will happen to this order."""
        return self.status in FINAL_STATUSES

    @property
    def partially_filled(self) -> bool:
        return 0 < self.filled < self.amount


def _positive(value: Any) -> bool:
    return (not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value)
            and value > 0)

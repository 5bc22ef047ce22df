"""`CcxtGateway`: the execution protocol's `OrderGateway` over the ccxt order gateway
(`adapters/ccxt_orders.py`), so `JournaledExecutor`'s exactly-once rules drive real exchange orders.

What this layer adds to the ccxt gateway, and why:

- **Types.** `OrderRequest` becomes an `OrderIntent` under the same client order id (an exit is
  `reduce_only`, which only contract markets receive); the exchange's `OrderState` becomes an
  `OrderEvent` with the exchange order id, the cumulative fill, its average price and the fee.
- **A re-send after a restart goes through `resume`, never `place`.** The journal re-sends an
  unanswered intent only after `fetch` said the exchange has no such id; that id is remembered here, and
  the following `place` waits out `resend_after` (the `recvWindow` of every order: a late copy of the
  lost request is refused by then) and calls `resume`, which looks the id up once more before sending
  (on Binance a *filled* order's id is accepted again, so sending blind could double a filled entry).
- **Fees in quote currency.** The statistics add fees as quote amounts. A fee the exchange took in the
  base asset (Binance's default for a buy) is converted at the fill's average price, and an *entry*
  then reports as `filled` what the position holds (bought minus that fee): the exit sells exactly
  that. A fee in a third asset (BNB) cannot be converted without its price: it is reported as 0 with
  `fee_currency` naming the asset (documented in the README).
- **Refusals and unknowns.** `OrderRejected` (balance, filters, precision: the order provably does not
  exist) is a `rejected` event with the reason; for an entry the executor then asks the engine to drop
  the signal; a refused exit leaves the position open on the exchange and is reported on `listen_error`.
  `OrderNeedsAttention` (still unknown after the bounded attempts) is reported on `listen_error` and
  the order is *parked*: a `submitted` event whose `reason` starts with "needs attention", after which
  this process asks the exchange nothing more about it (a restart tries once more). Never a loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from ..adapters.ccxt_exchange import CcxtExchange
from ..adapters.ccxt_orders import (
    OrderGateway as CcxtOrderGateway,
)
from ..adapters.ccxt_orders import (
    OrderIntent,
    OrderNeedsAttention,
    OrderRejected,
    OrderState,
)
from ..engine.models import OrderEvent, OrderRequest, OrderStatus

__all__ = ["ATTENTION", "CcxtGateway", "order_event"]

ATTENTION = "needs attention"
"""How the `reason` of a parked order's event starts."""
Sleep = Callable[[float], Awaitable[None]]


class CcxtGateway:
    """An execution `OrderGateway` over one ccxt exchange per engine exchange name (see the module doc).

    `resolve(exchange_name)` gives the `CcxtExchange` of an order's `exchange_name`; `options` are the
    ccxt `OrderGateway`'s (`attempts`, `retry_delay`, `resend_after`, `check_balance`, `sleep`).
    """

    places_real_orders = True

    def __init__(self, resolve: Callable[[str], CcxtExchange], *, trade: bool, now_ms: Callable[[], int],
                 report_error: Callable[[BaseException], Awaitable[None]], sleep: Sleep = asyncio.sleep,
                 **options: Any) -> None:
        self._resolve = resolve
        self.trade = trade
        self._now_ms = now_ms
        self._report_error = report_error
        self._sleep = sleep
        self._options = options
        self._gateways: dict[str, CcxtOrderGateway] = {}
        self._absent: set[str] = set()  # ids `fetch` found missing: the next `place` is a re-send
        self.parked: dict[str, OrderEvent] = {}  # client order id -> its "needs attention" event

    def gateway(self, exchange_name: str) -> CcxtOrderGateway:
        found = self._gateways.get(exchange_name)
        if found is None:
            found = self._gateways[exchange_name] = CcxtOrderGateway(
                self._resolve(exchange_name), trade=self.trade, sleep=self._sleep, **self._options)
        return found

    async def place(self, request: OrderRequest) -> OrderEvent:
        parked = self.parked.get(request.client_order_id)
        if parked is not None:
            return parked
        gateway = self.gateway(request.exchange_name)
        intent = _intent(request)
        try:
            if request.client_order_id in self._absent:
                await self._sleep(gateway.resend_after)  # the lost request's recvWindow runs out first
                state = await gateway.resume(intent)
                self._absent.discard(request.client_order_id)
            else:
                state = await gateway.place(intent)
        except OrderRejected as exc:
            self._absent.discard(request.client_order_id)
            if request.role == "exit":  # the position stays open on the exchange: someone must know
                await self._report_error(exc)
            return _without_venue(request, "rejected", self._now_ms(), f"refused ({exc.field}): {exc.reason or exc}")
        except OrderNeedsAttention as exc:
            return await self._park(request, exc)
        return await self._event(gateway, request, state)

    async def fetch(self, request: OrderRequest) -> OrderEvent | None:
        parked = self.parked.get(request.client_order_id)
        if parked is not None:
            return parked  # never retried from here: a person (or a restart) decides
        gateway = self.gateway(request.exchange_name)
        try:
            state = await gateway.fetch(request.client_order_id, request.symbol)
        except OrderNeedsAttention as exc:
            return await self._park(request, exc)
        if state is None:
            self._absent.add(request.client_order_id)
            return None
        return await self._event(gateway, request, state)

    async def cancel(self, request: OrderRequest) -> OrderEvent:
        gateway = self.gateway(request.exchange_name)
        try:
            state = await gateway.cancel(request.client_order_id, request.symbol)
        except OrderRejected as exc:  # the exchange has no such order: nothing to cancel, nothing filled
            return _without_venue(request, "cancelled", self._now_ms(), exc.reason or str(exc))
        self.parked.pop(request.client_order_id, None)  # the exchange answered: its state is known now
        return await self._event(gateway, request, state)

    async def aclose(self) -> None:
        """Nothing to close: each `CcxtExchange` is closed by the engine that registered it."""

    async def _park(self, request: OrderRequest, exc: OrderNeedsAttention) -> OrderEvent:
        await self._report_error(exc)
        event = _without_venue(request, "submitted", self._now_ms(), f"{ATTENTION}: {exc}")
        self.parked[request.client_order_id] = event
        return event

    async def _event(self, gateway: CcxtOrderGateway, request: OrderRequest, state: OrderState) -> OrderEvent:
        client, unified = await gateway.exchange._market(request.symbol)
        market = client.market(unified)
        return order_event(request, state, base=str(market.get("base")), quote=str(market.get("quote")),
                           now_ms=self._now_ms())


def _intent(request: OrderRequest) -> OrderIntent:
    return OrderIntent(request.client_order_id, request.symbol, request.side, request.type, request.amount,
                       price=request.price, reduce_only=request.role == "exit", role=request.role)


def _status(state: OrderState) -> OrderStatus:
    if state.status == "closed":
        return "filled"
    if state.status in ("canceled", "expired"):
        return "cancelled"
    if state.status == "rejected":
        return "rejected"
    return "partially_filled" if state.filled > 0 else "submitted"


def order_event(request: OrderRequest, state: OrderState, *, base: str, quote: str, now_ms: int) -> OrderEvent:
    """`state` as the `OrderEvent` of `request`: fees in `quote`, an entry's fill net of a base-asset fee."""
    filled, fee, currency = state.filled, state.fee, state.fee_currency
    average = state.average if state.average is not None else (state.price if filled > 0 else None)
    if currency == base and fee:
        if request.role == "entry" and request.side == "buy":
            filled = max(0.0, filled - fee)  # the position is what was received
        fee = fee * (average or 0.0)
        currency = quote
    elif currency is not None and currency != quote:
        fee = 0.0  # a third asset (BNB): no price to convert at; see the module docstring
    return OrderEvent(
        signal_id=request.signal_id, role=request.role, client_order_id=request.client_order_id,
        exchange_order_id=state.exchange_id, symbol=request.symbol, strategy_name=request.strategy_name,
        exchange_name=request.exchange_name, side=request.side, type=request.type, price=request.price,
        amount=state.amount, filled=filled, average_price=average, fee=fee, status=_status(state),
        timestamp=now_ms, backtest=request.backtest, reason=state.exchange_status if _status(state) in (
            "rejected", "cancelled") else None, fee_currency=currency or quote,
    )


def _without_venue(request: OrderRequest, status: OrderStatus, now_ms: int, reason: str) -> OrderEvent:
    """An event for an order the exchange holds nothing of (refused, unknown, or parked)."""
    return OrderEvent(
        signal_id=request.signal_id, role=request.role, client_order_id=request.client_order_id,
        exchange_order_id=None, symbol=request.symbol, strategy_name=request.strategy_name,
        exchange_name=request.exchange_name, side=request.side, type=request.type, price=request.price,
        amount=request.amount, filled=0.0, average_price=None, fee=0.0, status=status, timestamp=now_ms,
        backtest=request.backtest, reason=reason,
    )

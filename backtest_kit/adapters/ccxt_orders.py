"""Sending orders through a ccxt exchange exactly once: `OrderGateway`.

    gateway = OrderGateway(exchange, trade=True)          # exchange: a CcxtExchange (sandbox=True for a testnet)
    state = await gateway.place(OrderIntent("sig42-entry", "BTCUSDT", "buy", "market", 0.01, price=65_000))
    state = await gateway.resume(intent)                   # after a restart: look up first, send only if absent

Why it is built this way:

- **The client order id is the idempotency key.** Every request carries it (`clientOrderId` in ccxt's
  params, which ccxt's binance sends as `newClientOrderId`; look-ups and cancels use
  `origClientOrderId`), so the exchange can always be asked "does this order exist?".
- **An ambiguous failure is never answered by sending again.** A timeout, a dropped connection, a
  5xx, a 429/418 or an unreadable answer may come *after* the exchange accepted the order. The
  gateway then looks the order up by client order id and re-sends only when the exchange answers
  "no such order" — and only once `resend_after` seconds have passed since the ambiguous send, the
  `recvWindow` it sends with each order, after which the exchange refuses the old request if it
  arrives late. A "Duplicate order sent." answer means the order is already there: it is fetched.
- **Retries are bounded and spaced** (`attempts`, `retry_delay` doubling; `sleep` and `monotonic` are
  injectable so tests run without waiting). After the bound: `OrderNeedsAttention`, never a guess.
- **Rejections happen before sending when they can**: amount and price go through ccxt's
  `amount_to_precision` / `price_to_precision`; the market's minimum amount, price range and minimum
  notional, and the free balance, are checked first, and a failure is an `OrderRejected` naming the
  field, the value and the limit. A rejection from the exchange (a filter, insufficient balance) is an
  `OrderRejected` too: the order provably does not exist.
- **Safety**: nothing is sent unless the gateway was built with `trade=True`; `sandbox=True` on the
  `CcxtExchange` is ccxt's `set_sandbox_mode(True)`. Error messages and log lines are scrubbed of the
  keys and of signatures (`engine/redact.py`), and ccxt's exceptions are not chained.

Restart: an intent journaled but not known to be placed is given to `resume(intent)`, never to
`place(intent)`: `place` sends first, which is right only for an id never sent before (on Binance a
client order id is unique among *open* orders only, so a filled order's id would be accepted again).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from ..engine.redact import redact
from .ccxt_errors import scrub
from .ccxt_exchange import CcxtExchange
from .ccxt_order_types import (
    Fill,
    OrderIntent,
    OrderNeedsAttention,
    OrderRejected,
    OrderState,
    TradingDisabledError,
)

__all__ = ["Fill", "OrderGateway", "OrderIntent", "OrderNeedsAttention", "OrderRejected", "OrderState",
           "TradingDisabledError"]

DUPLICATE_MESSAGE = "Duplicate order sent."
"""Binance's -2010 answer to a client order id that an open order already has."""
Sleep = Callable[[float], Awaitable[None]]


class OrderGateway:
    """Places, looks up and cancels orders of one `CcxtExchange` by client order id, exactly once."""

    class _Ambiguous(Exception):  # internal: never leaves the gateway
        """A request failed in a way that says nothing about whether the exchange acted on it."""

    def __init__(
        self,
        exchange: CcxtExchange,
        *,
        trade: bool = False,
        attempts: int = 5,
        retry_delay: float = 1.0,
        resend_after: float = 5.0,
        check_balance: bool = True,
        sleep: Sleep = asyncio.sleep,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if not isinstance(exchange, CcxtExchange):
            raise TypeError(f"exchange: expected a CcxtExchange, got {type(exchange).__name__}")
        if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1:
            raise ValueError(f"attempts: expected a whole number >= 1, got {attempts!r}")
        for name, value in (("retry_delay", retry_delay), ("resend_after", resend_after)):
            if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
                raise ValueError(f"{name}: expected seconds >= 0, got {value!r}")
        self.exchange = exchange
        self.trade = trade is True
        self.attempts = attempts
        self.retry_delay = float(retry_delay)
        self.resend_after = float(resend_after)
        self.check_balance = check_balance
        self._sleep = sleep
        self._monotonic = monotonic

    def __repr__(self) -> str:
        return (f"OrderGateway({self.exchange!r}, trade={self.trade}, sandbox={self.exchange.sandbox}, "
                f"attempts={self.attempts})")

    # -------------------------------------------------------------- the public calls
    async def place(self, intent: OrderIntent) -> OrderState:
        """Send `intent` (a client order id never sent before) and return the order's state."""
        self._require_trade("place", intent.client_order_id)
        client, unified = await self.exchange._market(intent.symbol)
        amount, price, reference = await self._prepare(client, unified, intent)
        if self.check_balance:
            await self._check_balance(client, unified, intent, amount, reference)
        return await self._send(client, unified, intent, amount, price)

    async def resume(self, intent: OrderIntent) -> OrderState:
        """`intent` after a restart: the order if the exchange has it, else `place(intent)`."""
        self._require_trade("resume", intent.client_order_id)
        client, unified = await self.exchange._market(intent.symbol)
        found = await self._retrying(intent.client_order_id, lambda: self._lookup(client, unified, intent))
        return found if found is not None else await self.place(intent)

    async def fetch(self, client_order_id: str, symbol: str) -> OrderState | None:
        """The order with `client_order_id` on `symbol`, or None when the exchange has none."""
        client, unified = await self.exchange._market(symbol)
        probe = OrderIntent(client_order_id, symbol, "buy", "market", 1.0)  # side/type filled in from the order
        return await self._retrying(client_order_id, lambda: self._lookup(client, unified, probe))

    async def cancel(self, client_order_id: str, symbol: str) -> OrderState:
        """Cancel the open order `client_order_id`; an order already finished is returned as it is."""
        self._require_trade("cancel", client_order_id)
        client, unified = await self.exchange._market(symbol)
        probe = OrderIntent(client_order_id, symbol, "buy", "market", 1.0)

        async def attempt() -> OrderState | None:
            import ccxt

            try:
                order = await client.cancel_order(None, unified, {"origClientOrderId": client_order_id})
            except ccxt.OrderNotFound:
                return await self._lookup(client, unified, probe)  # already filled / cancelled, or unknown
            except Exception as exc:
                error = self._classify(exc, probe, "cancel")
                raise error from None
            return await self._state(client, unified, order, probe)

        state = await self._retrying(client_order_id, attempt)
        if state is None:
            raise OrderRejected(f"order {client_order_id} ({unified}): cannot cancel, the exchange has no such "
                                "order", client_order_id=client_order_id, field="client_order_id",
                                value=client_order_id, reason="unknown order")
        return state

    # -------------------------------------------------------------- sending, exactly once
    async def _send(self, client: Any, unified: str, intent: OrderIntent, amount: float,
                    price: float | None) -> OrderState:
        params: dict[str, Any] = {"clientOrderId": intent.client_order_id}
        if self.resend_after > 0:
            params["recvWindow"] = min(60_000, int(self.resend_after * 1000))
        if intent.reduce_only and client.market(unified).get("contract"):
            params["reduceOnly"] = True
        ambiguous_at: float | None = None
        last = ""
        for attempt in range(1, self.attempts + 1):
            if attempt > 1:
                await self._sleep(self._delay(attempt - 1))
            if ambiguous_at is not None:
                try:
                    found = await self._lookup(client, unified, intent)
                    wait = self.resend_after - (self._monotonic() - ambiguous_at)
                    if found is None and wait > 0:  # a late copy of the request could still be accepted
                        await self._sleep(wait)
                        found = await self._lookup(client, unified, intent)
                except self._Ambiguous as exc:
                    last = str(exc)
                    continue
                if found is not None:
                    self._log("warn", f"order {intent.client_order_id}: found on the exchange after an "
                                      f"unanswered request; not sent again ({found.status})")
                    return found
            ambiguous_at = self._monotonic()
            try:
                order = await client.create_order(unified, intent.type, intent.side, amount,
                                                  price if intent.type == "limit" else None, params)
            except Exception as exc:
                outcome = self._classify(exc, intent, "place")
                if isinstance(outcome, OrderRejected):
                    raise outcome from None
                last = str(outcome)
                if DUPLICATE_MESSAGE in last:  # the exchange has it: fetch it, never send it again
                    ambiguous_at = self._monotonic() - self.resend_after
                self._log("warn", f"order {intent.client_order_id}: outcome unknown (attempt {attempt} of "
                                  f"{self.attempts}), reconciling by client order id", last)
                continue
            return await self._state(client, unified, order, intent)
        raise OrderNeedsAttention(
            f"order {intent.client_order_id} ({unified} {intent.side} {intent.type} {amount}): still unknown "
            f"after {self.attempts} attempts; not sent again. Last error: {last}",
            client_order_id=intent.client_order_id, attempts=self.attempts, last_error=last)

    async def _retrying(self, client_order_id: str,
                        call: Callable[[], Awaitable[OrderState | None]]) -> OrderState | None:
        """`call()` until it answers, at most `attempts` times, spaced; then `OrderNeedsAttention`."""
        last = ""
        for attempt in range(1, self.attempts + 1):
            if attempt > 1:
                await self._sleep(self._delay(attempt - 1))
            try:
                return await call()
            except self._Ambiguous as exc:
                last = str(exc)
        raise OrderNeedsAttention(
            f"order {client_order_id}: the exchange did not answer after {self.attempts} attempts. "
            f"Last error: {last}", client_order_id=client_order_id, attempts=self.attempts, last_error=last)

    def _delay(self, retry: int) -> float:
        return float(self.retry_delay * 2 ** (retry - 1))

    async def _lookup(self, client: Any, unified: str, intent: OrderIntent) -> OrderState | None:
        """The order by client order id; None only when the exchange says it has no such order."""
        import ccxt

        try:
            order = await client.fetch_order(None, unified, {"origClientOrderId": intent.client_order_id})
        except ccxt.OrderNotFound:
            return None
        except Exception as exc:
            error = self._classify(exc, intent, "look up")
            raise error from None
        return await self._state(client, unified, order, intent)

    def _classify(self, exc: Exception, intent: OrderIntent, what: str) -> OrderRejected | OrderGateway._Ambiguous:
        """A definitive refusal (`OrderRejected`: nothing was done) or an ambiguous failure."""
        import ccxt

        text = self._scrub(f"{type(exc).__name__}: {exc}")
        if len(text) > 300:
            text = text[:300] + "…"
        if isinstance(exc, ccxt.InvalidOrder) and DUPLICATE_MESSAGE in str(exc):
            return self._Ambiguous(text)
        if isinstance(exc, ccxt.ExchangeError) and not isinstance(exc, ccxt.OperationFailed):
            insufficient = isinstance(exc, ccxt.InsufficientFunds)
            return OrderRejected(
                f"order {intent.client_order_id} ({intent.symbol} {intent.side} {intent.type}): the exchange "
                f"refused to {what} it{' (insufficient balance)' if insufficient else ''}: {text}",
                client_order_id=intent.client_order_id, field="balance" if insufficient else "exchange",
                reason=text)
        return self._Ambiguous(text)  # timeouts, dropped connections, 5xx, 429/418, unreadable answers

    # -------------------------------------------------------------- checks before sending
    async def _prepare(self, client: Any, unified: str,
                       intent: OrderIntent) -> tuple[float, float | None, float]:
        """Amount and price at the market's precision, and the price the notional is judged at."""
        market = client.market(unified)
        limits = market.get("limits") or {}
        amount_min = (limits.get("amount") or {}).get("min")
        try:
            amount = float(client.amount_to_precision(unified, intent.amount))
        except Exception:
            amount = 0.0
        if amount <= 0 or (amount_min is not None and amount < amount_min):
            raise self._rejected(intent, "amount", intent.amount, amount_min,
                                 f"amount {intent.amount!r} ({amount!r} at the market's precision) is below the "
                                 f"minimum amount {amount_min!r} of {unified}")
        amount_max = (limits.get("amount") or {}).get("max")
        if amount_max is not None and amount > amount_max:
            raise self._rejected(intent, "amount", amount, amount_max,
                                 f"amount {amount!r} is above the maximum amount {amount_max!r} of {unified}")
        price = float(client.price_to_precision(unified, intent.price)) if intent.price is not None else None
        if intent.type == "limit":
            price_limits = limits.get("price") or {}
            low, high = price_limits.get("min"), price_limits.get("max")
            if price is None or price <= 0 or (low is not None and price < low) or (high is not None and price > high):
                raise self._rejected(intent, "price", intent.price, (low, high),
                                     f"price {intent.price!r} ({price!r} at the market's precision) is outside "
                                     f"{unified}'s price range [{low!r}, {high!r}]")
        reference = price if price is not None else await self._last_price(client, unified, intent)
        cost_min = (limits.get("cost") or {}).get("min")
        if cost_min is not None and amount * reference < cost_min:
            raise self._rejected(intent, "cost", amount * reference, cost_min,
                                 f"notional {amount!r} x {reference!r} = {amount * reference!r} is below the "
                                 f"minimum notional {cost_min!r} of {unified}")
        return amount, price, reference

    async def _last_price(self, client: Any, unified: str, intent: OrderIntent) -> float:
        """The latest 1m close: the price a market order without an expected price is judged at."""
        try:
            rows = await client.fetch_ohlcv(unified, "1m", None, 1)
        except Exception as exc:
            error = self.exchange._translate(exc, f"fetch_ohlcv({unified!r}) for order {intent.client_order_id}")
            raise error from None
        if not rows:
            raise self._rejected(intent, "price", None, None, f"no recent price of {unified} to judge a market "
                                 "order by; give the intent an expected price")
        return float(rows[-1][4])

    async def _check_balance(self, client: Any, unified: str, intent: OrderIntent, amount: float,
                             reference: float) -> None:
        market = client.market(unified)
        currency, need = (market["quote"], amount * reference) if intent.side == "buy" else (market["base"], amount)
        try:
            balance = await client.fetch_balance()
        except Exception as exc:
            error = self.exchange._translate(exc, f"fetch_balance for order {intent.client_order_id}")
            raise error from None
        free = float((balance.get(currency) or {}).get("free") or 0.0)
        if free < need:
            raise self._rejected(intent, "balance", free, need,
                                 f"free {currency} balance {free!r} is below the {need!r} the order needs")

    def _rejected(self, intent: OrderIntent, field: str, value: Any, limit: Any, reason: str) -> OrderRejected:
        return OrderRejected(
            f"order {intent.client_order_id} ({intent.symbol} {intent.side} {intent.type}) not sent: {reason}",
            client_order_id=intent.client_order_id, field=field, value=value, limit=limit, reason=reason)

    def _require_trade(self, what: str, client_order_id: str) -> None:
        if not self.trade:
            raise TradingDisabledError(
                f"OrderGateway({self.exchange.exchange_name}): refusing to {what} order {client_order_id}: "
                "trading is off; build the gateway with trade=True to send real orders (and the exchange "
                "with sandbox=True for the exchange's testnet)")
        if not self.exchange.has_credentials:
            raise TradingDisabledError(
                f"OrderGateway({self.exchange.exchange_name}): cannot {what} order {client_order_id}: the "
                f"exchange has no API key and secret (api_key=/secret=, or {self.exchange.exchange_id.upper()}"
                "_API_KEY / _SECRET)")

    # -------------------------------------------------------------- ccxt's order as an OrderState
    async def _state(self, client: Any, unified: str, order: dict[str, Any], intent: OrderIntent) -> OrderState:
        filled = float(order.get("filled") or 0.0)
        raw_trades = list(order.get("trades") or [])
        if filled > 0 and not raw_trades and order.get("id") is not None:
            try:  # a looked-up order carries no fills: its trades hold the fees
                raw_trades = await client.fetch_my_trades(unified, None, None, {"orderId": order["id"]})
            except Exception as exc:
                error = self._classify(exc, intent, "list the trades of")
                raise (error if isinstance(error, self._Ambiguous) else self._Ambiguous(str(error))) from None
        fills = tuple(_fill(t) for t in raw_trades)
        fee_currency = next((f.fee_currency for f in fills if f.fee_currency), None)
        fee = sum(f.fee for f in fills if f.fee_currency == fee_currency)
        amount = float(order.get("amount") or intent.amount)
        info = order.get("info") or {}
        return OrderState(
            client_order_id=str(order.get("clientOrderId") or intent.client_order_id),
            exchange_id=str(order["id"]) if order.get("id") is not None else None,
            symbol=str(order.get("symbol") or unified), side=str(order.get("side") or intent.side),
            type=str(order.get("type") or intent.type), status=str(order.get("status") or "open"),
            amount=amount, filled=filled,
            remaining=float(order["remaining"]) if order.get("remaining") is not None else amount - filled,
            price=_float(order.get("price")), average=_float(order.get("average")), fee=fee,
            fee_currency=fee_currency, trades=fills, timestamp=order.get("timestamp"),
            exchange_status=str(info["status"]) if isinstance(info, dict) and "status" in info else None,
        )

    # -------------------------------------------------------------- text
    def _scrub(self, text: str) -> str:
        return redact(scrub(text, self.exchange._secrets()))

    def _log(self, level: str, topic: str, *args: Any) -> None:
        self.exchange._log(level, topic, *args)


def _float(value: Any) -> float | None:
    return float(value) if value is not None and value != "" else None


def _fill(trade: dict[str, Any]) -> Fill:
    fee = trade.get("fee") or {}
    return Fill(trade_id=str(trade["id"]) if trade.get("id") is not None else None,
                price=float(trade.get("price") or 0.0), amount=float(trade.get("amount") or 0.0),
                fee=float(fee.get("cost") or 0.0), fee_currency=fee.get("currency"),
                timestamp=trade.get("timestamp"))

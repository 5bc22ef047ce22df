"""The order side of the local Binance-protocol test server: accounts, orders, trades and matching.

Kept apart from `binance_server.py` (the HTTP layer) so the rules can be read in one place. What a
test can rely on, and why each rule is what it is:

- **Prices come from the server's 1m candles.** "The current candle" is the 1m candle containing the
  server's `now` (the one still forming). A **market order fills immediately at that candle's open**
  (the next open after the last closed candle — what a backtest entering "at the next open" assumes),
  or at the newest earlier candle's close when there is none. A market order larger than the
  per-candle liquidity fills what there is and **expires the rest** (status `EXPIRED` with a partial
  `executedQty`), as Binance does when a MARKET order runs out of book.
- **Limit orders** that are marketable on arrival (a buy at or above the current open, a sell at or
  below) fill at the open as a taker. The rest rests, and fills at its limit price (as a maker) on
  each **later, closed** candle that touches it (`low <= price` for a buy, `high >= price` for a sell),
  at most `liquidity` per candle — so a large order fills over several candles (`PARTIALLY_FILLED`).
  The candle the order arrived in is not used: part of its range happened before the order existed.
- **Balances move with fills**: placing locks the quote (buy: quantity x limit price, or the market
  price) or the base (sell); a fill spends the lock and credits the other asset minus commission
  (`fee_rate`, charged in the received asset, Binance's default); cancel / expire unlocks the rest.
  Not enough free balance is Binance's -2010 "Account has insufficient balance for requested action."
- **Client order ids** are unique among *open* orders, as on Binance ("Duplicate order sent.", -2010):
  the id of a filled or cancelled order may be used again, which is exactly why a client must look an
  id up before re-sending. `unique_ids="all"` makes every id unique forever instead.
- **Filters** are checked like Binance's (-1013 "Filter failure: LOT_SIZE" / "PRICE_FILTER" /
  "NOTIONAL") so a client that skipped its own checks is caught.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from decimal import ROUND_DOWN, Decimal, InvalidOperation
from typing import Any, Protocol

from backtest_kit.engine.intervals import MINUTE_MS
from backtest_kit.engine.models import Candle

ZERO = Decimal(0)
OPEN_STATUSES = ("NEW", "PARTIALLY_FILLED")
INSUFFICIENT = "Account has insufficient balance for requested action."
DUPLICATE = "Duplicate order sent."


class CandleSource(Protocol):
    def closed_candles(self, symbol: str, interval: str, when_ms: int, limit: int) -> list[Candle]: ...
    def next_candles(self, symbol: str, interval: str, since_ms: int, limit: int) -> list[Candle]: ...


class MarketSpec(Protocol):
    base: str
    quote: str
    tick_size: str
    step_size: str
    min_qty: str
    min_notional: str


class Reject(Exception):
    """A Binance error answer: HTTP `status`, Binance `code`, `msg`."""

    def __init__(self, status: int, code: int, msg: str) -> None:
        super().__init__(msg)
        self.status, self.code, self.msg = status, code, msg


def fmt(value: Decimal) -> str:
    return f"{value:.8f}"


@dataclass
class Trade:
    id: int
    order_id: int
    symbol: str
    price: Decimal
    qty: Decimal
    commission: Decimal
    commission_asset: str
    time: int
    is_buyer: bool
    is_maker: bool

    def fill_json(self) -> dict[str, Any]:
        """The entry of a FULL order answer's `fills`."""
        return {"price": fmt(self.price), "qty": fmt(self.qty), "commission": fmt(self.commission),
                "commissionAsset": self.commission_asset, "tradeId": self.id}

    def json(self) -> dict[str, Any]:
        """A `/api/v3/myTrades` row."""
        return {"symbol": self.symbol, "id": self.id, "orderId": self.order_id, "orderListId": -1,
                "price": fmt(self.price), "qty": fmt(self.qty), "quoteQty": fmt(self.price * self.qty),
                "commission": fmt(self.commission), "commissionAsset": self.commission_asset, "time": self.time,
                "isBuyer": self.is_buyer, "isMaker": self.is_maker, "isBestMatch": True}


@dataclass
class Order:
    order_id: int
    client_order_id: str
    symbol: str
    side: str  # BUY / SELL
    type: str  # MARKET / LIMIT
    quantity: Decimal
    price: Decimal  # the limit price; 0 for a market order, as Binance shows it
    lock_price: Decimal  # the quote locked per unit of a buy
    time: int
    candle: int  # open time of the 1m candle the order arrived in
    time_in_force: str = "GTC"
    status: str = "NEW"
    executed: Decimal = ZERO
    quote: Decimal = ZERO
    update_time: int = 0
    matched_until: int = 0  # the last candle (open time) this order was matched against
    fills: list[Trade] = field(default_factory=list)

    @property
    def is_open(self) -> bool:
        return self.status in OPEN_STATUSES

    @property
    def remaining(self) -> Decimal:
        return self.quantity - self.executed

    def json(self, resp_type: str = "RESULT") -> dict[str, Any]:
        """The order as Binance answers POST (ACK / RESULT / FULL), GET and DELETE /api/v3/order."""
        head = {"symbol": self.symbol, "orderId": self.order_id, "orderListId": -1,
                "clientOrderId": self.client_order_id}
        if resp_type == "ACK":
            return {**head, "transactTime": self.time}
        body = {**head, "transactTime": self.update_time or self.time, "price": fmt(self.price),
                "origQty": fmt(self.quantity), "executedQty": fmt(self.executed),
                "cummulativeQuoteQty": fmt(self.quote), "status": self.status, "timeInForce": self.time_in_force,
                "type": self.type, "side": self.side, "workingTime": self.time, "selfTradePreventionMode": "NONE"}
        if resp_type == "FULL":
            body["fills"] = [t.fill_json() for t in self.fills]
        if resp_type == "GET":
            del body["transactTime"]
            body.update({"stopPrice": fmt(ZERO), "icebergQty": fmt(ZERO), "time": self.time,
                         "updateTime": self.update_time or self.time, "isWorking": True,
                         "origQuoteOrderQty": fmt(ZERO)})
        return body


class Book:
    """Every account balance, order and trade of the server, and the matching of orders to candles."""

    def __init__(
        self,
        candles: CandleSource,
        markets: dict[str, Any],
        balances: dict[str, str | float],
        *,
        liquidity: str | float | None = None,
        fee_rate: str | float = "0.001",
        unique_ids: str = "open",
    ) -> None:
        if unique_ids not in ("open", "all"):
            raise ValueError(f"unique_ids: expected 'open' (Binance) or 'all', got {unique_ids!r}")
        self.candles = candles
        self.markets = markets  # symbol -> MarketSpec
        self.free: dict[str, Decimal] = {asset: Decimal(str(v)) for asset, v in balances.items()}
        self.locked: dict[str, Decimal] = {asset: ZERO for asset in self.free}
        self.liquidity = Decimal(str(liquidity)) if liquidity is not None else None
        self.fee_rate = Decimal(str(fee_rate))
        self.unique_ids = unique_ids
        self.orders: list[Order] = []
        self.trades: list[Trade] = []
        self.placed: Counter[str] = Counter()  # accepted orders per client order id

    # ------------------------------------------------------------------ queries
    def orders_for(self, client_order_id: str) -> list[Order]:
        return [o for o in self.orders if o.client_order_id == client_order_id]

    def find(self, symbol: str, order_id: str | None, client_order_id: str | None) -> Order | None:
        if order_id is None and client_order_id is None:
            raise Reject(400, -1102, "Param 'origClientOrderId' or 'orderId' must be sent, but both were empty/null!")
        for order in reversed(self.orders):  # the newest, when an id was reused
            if order.symbol != symbol:
                continue
            if order_id is not None and str(order.order_id) == order_id:
                return order
            if order_id is None and order.client_order_id == client_order_id:
                return order
        return None

    def balances_json(self) -> list[dict[str, str]]:
        return [{"asset": a, "free": fmt(self.free[a]), "locked": fmt(self.locked.get(a, ZERO))} for a in self.free]

    # ------------------------------------------------------------------ placing and cancelling
    def place(self, now: int, q: dict[str, str]) -> Order:
        symbol = q.get("symbol", "")
        spec = self.markets.get(symbol)
        if spec is None:
            raise Reject(400, -1121, "Invalid symbol.")
        side, otype = q.get("side", ""), q.get("type", "")
        if side not in ("BUY", "SELL"):
            raise Reject(400, -1102, "Mandatory parameter 'side' was not sent, was empty/null, or malformed.")
        if otype not in ("MARKET", "LIMIT"):
            raise Reject(400, -1116, "Invalid orderType.")
        cid = q.get("newClientOrderId", "")
        if not cid:
            raise Reject(400, -1102, "Mandatory parameter 'newClientOrderId' was not sent (this server wants one).")
        qty = _decimal(q, "quantity")
        price = _decimal(q, "price") if otype == "LIMIT" else ZERO
        if otype == "LIMIT" and q.get("timeInForce") not in ("GTC", "IOC", "FOK"):
            raise Reject(400, -1102, "Mandatory parameter 'timeInForce' was not sent, was empty/null, or malformed.")
        if any(o.client_order_id == cid and (self.unique_ids == "all" or o.is_open) for o in self.orders):
            raise Reject(400, -2010, DUPLICATE)
        candle = self.current_candle(symbol, now)
        ref = Decimal(str(candle.open if candle.timestamp == now - now % MINUTE_MS else candle.close))
        self._check_filters(spec, qty, price if otype == "LIMIT" else ref, otype)
        lock_price = price if otype == "LIMIT" else ref
        need_asset, need = (spec.quote, qty * lock_price) if side == "BUY" else (spec.base, qty)
        if self.free.get(need_asset, ZERO) < need:
            raise Reject(400, -2010, INSUFFICIENT)
        self.free[need_asset] -= need
        self.locked[need_asset] = self.locked.get(need_asset, ZERO) + need
        order = Order(order_id=len(self.orders) + 1, client_order_id=cid, symbol=symbol, side=side, type=otype,
                      quantity=qty, price=price, lock_price=lock_price, time=now,
                      candle=now - now % MINUTE_MS, time_in_force=q.get("timeInForce", "GTC"), update_time=now)
        order.matched_until = order.candle
        self.orders.append(order)
        self.placed[cid] += 1
        marketable = otype == "MARKET" or (price >= ref if side == "BUY" else price <= ref)
        if marketable:
            self._fill(order, spec, ref, self._cap(order.remaining), now, maker=False)
        if otype == "MARKET" and order.remaining > 0:
            self._close(order, spec, "EXPIRED", now)
        return order

    def cancel(self, now: int, symbol: str, order_id: str | None, client_order_id: str | None) -> Order:
        order = self.find(symbol, order_id, client_order_id)
        if order is None or not order.is_open:
            raise Reject(400, -2011, "Unknown order sent.")
        self._close(order, self.markets[symbol], "CANCELED", now)
        return order

    # ------------------------------------------------------------------ matching
    def current_candle(self, symbol: str, now: int) -> Candle:
        """The 1m candle containing `now`, else the newest one before it."""
        rows = self.candles.closed_candles(symbol, "1m", now + MINUTE_MS, 1)
        if not rows:
            raise Reject(400, -1013, "Market is closed.")
        return rows[-1]

    def match(self, now: int) -> None:
        """Fill resting limit orders against every candle closed by `now` that they have not seen."""
        for order in self.orders:
            if not order.is_open:
                continue
            spec = self.markets[order.symbol]
            start = order.matched_until + MINUTE_MS
            for candle in self.candles.next_candles(order.symbol, "1m", start, 100_000):
                if candle.timestamp + MINUTE_MS > now:
                    break
                order.matched_until = candle.timestamp
                touched = candle.low <= order.price if order.side == "BUY" else candle.high >= order.price
                if touched:
                    self._fill(order, spec, order.price, self._cap(order.remaining),
                               candle.timestamp + MINUTE_MS - 1, maker=True)
                if not order.is_open:
                    break

    def _cap(self, qty: Decimal) -> Decimal:
        return qty if self.liquidity is None else min(qty, self.liquidity)

    def _fill(self, order: Order, spec: MarketSpec, price: Decimal, qty: Decimal, when: int, *, maker: bool) -> None:
        if qty <= 0:
            return
        buy = order.side == "BUY"
        if buy:
            self.locked[spec.quote] -= qty * order.lock_price
            self.free[spec.quote] += qty * (order.lock_price - price)  # price improvement comes back
            commission, asset = qty * self.fee_rate, spec.base
            self.free[spec.base] = self.free.get(spec.base, ZERO) + qty - commission
        else:
            self.locked[spec.base] -= qty
            commission, asset = qty * price * self.fee_rate, spec.quote
            self.free[spec.quote] = self.free.get(spec.quote, ZERO) + qty * price - commission
        trade = Trade(id=len(self.trades) + 1, order_id=order.order_id, symbol=order.symbol, price=price, qty=qty,
                      commission=commission, commission_asset=asset, time=when, is_buyer=buy, is_maker=maker)
        self.trades.append(trade)
        order.fills.append(trade)
        order.executed += qty
        order.quote += qty * price
        order.update_time = when
        order.status = "FILLED" if order.remaining <= 0 else "PARTIALLY_FILLED"

    def _close(self, order: Order, spec: MarketSpec, status: str, now: int) -> None:
        """End an open order as `status` and unlock what its unfilled rest held."""
        rest = order.remaining
        asset, amount = (spec.quote, rest * order.lock_price) if order.side == "BUY" else (spec.base, rest)
        self.locked[asset] -= amount
        self.free[asset] += amount
        order.status = status
        order.update_time = now

    @staticmethod
    def _check_filters(spec: MarketSpec, qty: Decimal, price: Decimal, otype: str) -> None:
        step, tick = Decimal(spec.step_size), Decimal(spec.tick_size)
        if qty < Decimal(spec.min_qty) or qty != (qty / step).to_integral_value(ROUND_DOWN) * step:
            raise Reject(400, -1013, "Filter failure: LOT_SIZE")
        if otype == "LIMIT" and (price <= 0 or price != (price / tick).to_integral_value(ROUND_DOWN) * tick):
            raise Reject(400, -1013, "Filter failure: PRICE_FILTER")
        if qty * price < Decimal(spec.min_notional):
            raise Reject(400, -1013, "Filter failure: NOTIONAL")


def _decimal(q: dict[str, str], name: str) -> Decimal:
    try:
        value = Decimal(q[name])
    except (KeyError, InvalidOperation):
        raise Reject(400, -1102, f"Mandatory parameter '{name}' was not sent, was empty/null, or malformed.") from None
    if not value.is_finite() or value <= 0:
        raise Reject(400, -1102, f"Mandatory parameter '{name}' was not sent, was empty/null, or malformed.")
    return value

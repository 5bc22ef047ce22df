"""Paper trading: `PaperGateway` fills orders against the candle stream; `PaperExecutor` is the
journalled executor over it, the default of `backtest-kit live --replay`.

Fill rules (1m candles from the strategy's exchange, never one the engine clock has not reached):

- market: the open of the first candle opening at or after the order's time;
- limit: the first candle opening at or after the order's time whose range touches the price (low <= a
  buy limit, high >= a sell limit), at the limit price, or at the candle's open when it opened through
  it (a gap fills at the better price, as an exchange would);
- fee: `CC_PERCENT_FEE` percent of the filled notional, in the quote currency; no extra slippage (the
  gap between the model price and the next open *is* the slippage this measures).

A live candle is only used once it has closed (its range is known); a backtest may use the candle
opening at the event's instant, whose open is known then. Moving to real orders is replacing
`PaperExecutor()` by a journalled executor over a real gateway (`add_order_executor(..., trade=True)`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..engine.exchange import ExchangeClient
from ..engine.intervals import MINUTE_MS
from ..engine.models import Candle, OrderEvent, OrderRequest, OrderStatus, SignalLifecycleEvent, SignalRow
from .journaled import JournaledExecutor
from .protocol import ExecutorContext

__all__ = ["PaperExecutor", "PaperGateway"]

_BATCH = 500


@dataclass(slots=True)
class _PaperOrder:
    request: OrderRequest
    exchange_order_id: str
    status: OrderStatus = "submitted"
    filled: float = 0.0
    average_price: float | None = None
    fee: float = 0.0
    timestamp: int = 0
    scanned_until: int = 0  # candles before this open time were checked already (limits)
    reason: str | None = None


class PaperGateway:
    """An `OrderGateway` that keeps its orders in memory and fills them from candles (rules above).

    `now_ms` is the instant the venue lives at, set by `PaperExecutor` before every call (the event's
    time in a backtest, the engine clock live); `bind` gives it the exchange clients and the fee.
    """

    places_real_orders = False

    def __init__(self) -> None:
        self.orders: dict[str, _PaperOrder] = {}
        self.now_ms = 0
        self.backtest = False
        self.fee_percent = 0.0
        self._exchange: ExchangeClient | None = None
        self._context: ExecutorContext | None = None
        self._sequence = 0

    def bind(self, context: ExecutorContext) -> None:
        self._context = context

    def _client(self, exchange_name: str) -> ExchangeClient:
        assert self._context is not None, "PaperGateway used before PaperExecutor.start"
        self.fee_percent = self._context.config().CC_PERCENT_FEE
        return self._context.exchange(exchange_name)

    async def place(self, request: OrderRequest) -> OrderEvent:
        order = self.orders.get(request.client_order_id)
        if order is None:
            self._sequence += 1
            order = self.orders[request.client_order_id] = _PaperOrder(
                request=request, exchange_order_id=f"paper-{self._sequence}", timestamp=self.now_ms,
                scanned_until=request.timestamp,
            )
            await self._try_fill(order)
        return self._event(order)

    async def fetch(self, request: OrderRequest) -> OrderEvent | None:
        order = self.orders.get(request.client_order_id)
        if order is None:
            return None
        await self._try_fill(order)
        return self._event(order)

    async def cancel(self, request: OrderRequest) -> OrderEvent:
        order = self.orders.get(request.client_order_id)
        if order is None:
            order = _PaperOrder(request=request, exchange_order_id="", status="cancelled", timestamp=self.now_ms,
                                reason="unknown order")
            return self._event(order)
        await self._try_fill(order)  # a fill up to now happened before the cancel arrived
        if order.status not in ("filled", "cancelled", "rejected"):
            order.status = "cancelled"
            order.reason = "cancelled by the executor"
            order.timestamp = self.now_ms
        return self._event(order)

    async def _try_fill(self, order: _PaperOrder) -> None:
        if order.status != "submitted":
            return
        request = order.request
        client = self._client(request.exchange_name)
        # live: only closed candles (a candle's range is known when it closes); a backtest may use the
        # candle opening right now for a market order (its open is known at that instant)
        horizon = self.now_ms if (self.backtest and request.type == "market") else self.now_ms - MINUTE_MS
        since = order.scanned_until
        while since <= horizon:
            candles: Sequence[Candle] = await client.get_next_candles(request.symbol, "1m", since, _BATCH)
            usable = [c for c in candles if since <= c.timestamp <= horizon]
            for candle in usable:
                price = _fill_price(request, candle)
                if price is not None:
                    self._fill(order, price, candle.timestamp)
                    return
            if not usable or len(candles) < _BATCH:
                if usable:
                    order.scanned_until = usable[-1].timestamp + MINUTE_MS
                return
            since = order.scanned_until = usable[-1].timestamp + MINUTE_MS

    def _fill(self, order: _PaperOrder, price: float, when: int) -> None:
        amount = order.request.amount
        order.status = "filled"
        order.filled = amount
        order.average_price = price
        order.fee = abs(price * amount) * self.fee_percent / 100
        order.timestamp = max(when, order.timestamp)

    def _event(self, order: _PaperOrder) -> OrderEvent:
        r = order.request
        return OrderEvent(
            signal_id=r.signal_id, role=r.role, client_order_id=r.client_order_id,
            exchange_order_id=order.exchange_order_id or None, symbol=r.symbol, strategy_name=r.strategy_name,
            exchange_name=r.exchange_name, side=r.side, type=r.type, price=r.price, amount=r.amount,
            filled=order.filled, average_price=order.average_price, fee=order.fee, status=order.status,
            timestamp=order.timestamp, backtest=r.backtest, reason=order.reason, fee_currency="quote",
        )


def _fill_price(request: OrderRequest, candle: Candle) -> float | None:
    if request.type == "market":
        return candle.open
    limit = request.price
    assert limit is not None, "a limit order has a price"
    if request.side == "buy":
        return min(limit, candle.open) if candle.low <= limit else None
    return max(limit, candle.open) if candle.high >= limit else None


class PaperExecutor(JournaledExecutor):
    """The journalled executor over a `PaperGateway`: paper fills, real bookkeeping (journal, events,
    realised PnL). `amount` sizes orders of signals without a quantity (default 1 unit)."""

    def __init__(self, *, amount: float = 1.0) -> None:
        self.paper = PaperGateway()
        super().__init__(self.paper, amount=amount)

    async def start(self, context: ExecutorContext) -> None:
        await super().start(context)
        self.paper.bind(context)

    def _at(self, now_ms: int, backtest: bool) -> None:
        self.paper.now_ms = now_ms
        self.paper.backtest = backtest

    async def restore(self, symbol: str, open_signals: Sequence[SignalRow], *, backtest: bool) -> None:
        self._at(0 if backtest else self.context.now_ms(), backtest)  # a backtest has no "now" before its events
        await super().restore(symbol, open_signals, backtest=backtest)

    async def poll(self, symbol: str, now_ms: int, *, backtest: bool) -> None:
        self._at(now_ms, backtest)
        await super().poll(symbol, now_ms, backtest=backtest)

    async def on_signal(self, event: SignalLifecycleEvent) -> None:
        self._at(event.timestamp if event.backtest else self.context.now_ms(), event.backtest)
        await super().on_signal(event)

"""The order gateway against the local Binance-protocol server, with the real ccxt client.

What is proven here: the server's orders look like Binance's to ccxt (status, fills, fees, balances);
an order whose answer is lost after it was accepted exists exactly once and is reported right; 5xx /
429 / 418 before acceptance lead to exactly one order; a duplicate client order id is fetched, not
placed again; timeouts end, after bounded and spaced attempts, in `OrderNeedsAttention`; insufficient
balance, precision and minimum notional are `OrderRejected` naming the field (before sending when
they can be); partial fills and cancels are reported; nothing is sent without `trade=True`; keys
never appear in an error. A property test throws random fault sequences at `place`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import ccxt
import pytest
from binance_server import ACCOUNT, KLINES, ORDER, BinanceServer, Symbol
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import backtest_kit as bk
from backtest_kit.adapters.ccxt_exchange import CcxtExchange
from backtest_kit.adapters.ccxt_orders import (
    OrderGateway,
    OrderIntent,
    OrderNeedsAttention,
    OrderRejected,
    TradingDisabledError,
)
from backtest_kit.engine.errors import SchemaError

KEY = "vmPUZE6mv9SD5VNHk4HlWFsOr6aKE2zvsw0MuIgwCIPy6utIco14y7Ju91duEh8A"
SECRET = "NhqPtmdSJYdKjVHjA7PZj4Mge3R5YNiP1e3UZjInClVN65XAbvqqM6A7H5fATj0j"
M = 60_000
T0 = 1_700_000_040_000 - 1_700_000_040_000 % M
SYMBOL = "BTCUSDT"
NOW = T0 + 2 * M + 5  # inside candle 2 (open 100)


def candle_rows(count: int = 40) -> list[list[float]]:
    """Flat at 100 (high 101, low 99); from candle 5 on the low reaches 97 (a buy limit at 98 fills)."""
    return [[T0 + i * M, 100.0, 101.0, 99.0 if i < 5 else 97.0, 100.0, 10.0] for i in range(count)]


CANDLES = bk.MemoryCandles.from_candles(SYMBOL, candle_rows(), anomaly_factor=None)
Venue = Callable[..., Awaitable[tuple[BinanceServer, OrderGateway]]]


class Sleeps:
    """The gateway's injected sleep: records the spacing, waits for nothing."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


@pytest.fixture
async def venue(binance_server_factory: Any) -> AsyncIterator[Venue]:
    """`await venue(balances=..., liquidity=..., timeout=..., **gateway_kwargs)` -> (server, gateway)."""
    exchanges: list[CcxtExchange] = []

    async def make(*, balances: dict[str, str] | None = None, liquidity: str | None = None, timeout: int = 2000,
                   slow_seconds: float = 5.0, unique_ids: str = "open",
                   **kwargs: Any) -> tuple[BinanceServer, OrderGateway]:
        server = await binance_server_factory(
            CANDLES, now_ms=lambda: NOW, api_keys={KEY: SECRET}, slow_seconds=slow_seconds,
            balances=balances or {"USDT": "10000", "BTC": "1"}, liquidity=liquidity, unique_ids=unique_ids,
            symbols={SYMBOL: Symbol(SYMBOL, "BTC", "USDT")})
        exchange = CcxtExchange("binance", "binance", api_urls=server.api_urls(), api_key=KEY, secret=SECRET,
                                config={"enableRateLimit": False, "timeout": timeout, "timeout_on_exit": 0})
        exchanges.append(exchange)
        options = {"trade": True, "retry_delay": 0.0, "resend_after": 0.0, "sleep": Sleeps(), **kwargs}
        return server, OrderGateway(exchange, **options)

    yield make
    for exchange in exchanges:
        await exchange.close()


def posts(server: BinanceServer, cid: str) -> int:
    return sum(1 for method, q in server.order_requests if method == "POST" and q.get("newClientOrderId") == cid)


def market(cid: str, amount: float = 0.5, side: str = "buy", **kw: Any) -> OrderIntent:
    return OrderIntent(cid, SYMBOL, side, "market", amount, **kw)


def limit(cid: str, amount: float, price: float, side: str = "buy") -> OrderIntent:
    return OrderIntent(cid, SYMBOL, side, "limit", amount, price=price)


# ---------------------------------------------------------------------- the server, through plain ccxt
async def test_server_orders_are_binance_shaped_for_ccxt(venue: Venue) -> None:
    server, gateway = await venue()
    client, unified = await gateway.exchange._market(SYMBOL)
    order = await client.create_order(unified, "market", "buy", 0.5, None, {"clientOrderId": "raw-1"})
    assert (order["status"], order["filled"], order["average"], order["clientOrderId"]) == ("closed", 0.5, 100.0,
                                                                                           "raw-1")
    assert order["fee"] == {"cost": 0.0005, "currency": "BTC"}  # 0.1% in the received asset
    looked_up = await client.fetch_order(None, unified, {"origClientOrderId": "raw-1"})
    assert looked_up["id"] == order["id"] and looked_up["status"] == "closed"
    trades = await client.fetch_my_trades(unified, None, None, {"orderId": order["id"]})
    assert [(t["price"], t["amount"], t["fee"]["cost"]) for t in trades] == [(100.0, 0.5, 0.0005)]
    resting = await client.create_order(unified, "limit", "buy", 1.0, 98.0, {"clientOrderId": "raw-2"})
    assert resting["status"] == "open" and resting["filled"] == 0
    assert [o["clientOrderId"] for o in await client.fetch_open_orders(unified)] == ["raw-2"]
    balance = await client.fetch_balance()
    assert balance["USDT"] == {"free": 10000 - 50 - 98, "used": 98, "total": 10000 - 50}
    assert balance["BTC"]["free"] == pytest.approx(1.4995)
    # a duplicate of an open order's id is refused as Binance does; a filled order's id is not
    with pytest.raises(ccxt.InvalidOrder, match="Duplicate order sent"):
        await client.create_order(unified, "limit", "buy", 1.0, 98.0, {"clientOrderId": "raw-2"})
    await client.create_order(unified, "market", "buy", 0.1, None, {"clientOrderId": "raw-1"})
    assert len(server.orders_for("raw-1")) == 2 and len(server.orders_for("raw-2")) == 1
    # the resting order fills when a later closed candle touches it (candle 5: low 97)
    server.set_now(T0 + 5 * M + 1)
    assert (await client.fetch_order(resting["id"], unified))["status"] == "open"
    server.set_now(T0 + 6 * M)
    filled = await client.fetch_order(resting["id"], unified)
    assert filled["status"] == "closed" and filled["average"] == 98.0


async def test_server_checks_signatures_on_order_endpoints(venue: Venue) -> None:
    server, gateway = await venue()
    client, unified = await gateway.exchange._market(SYMBOL)
    client.secret = "wrong" + SECRET[5:]
    with pytest.raises(ccxt.AuthenticationError, match="-1022"):
        await client.create_order(unified, "market", "buy", 0.5, None, {"clientOrderId": "sig-1"})
    assert server.orders_for("sig-1") == []


# ---------------------------------------------------------------------- exactly once
@pytest.mark.parametrize("fault", ["lost", "lost_timeout", "accepted_503"])
async def test_a_lost_reply_after_a_fill_gives_exactly_one_order(venue: Venue, fault: str) -> None:
    """The order was accepted and filled, the answer never arrived: found by client id, not re-sent."""
    server, gateway = await venue(timeout=300, slow_seconds=5.0)
    server.fail(fault, path=ORDER, method="POST")
    state = await gateway.place(market("lost-1"))
    assert len(server.orders_for("lost-1")) == 1 and posts(server, "lost-1") == 1
    assert (state.status, state.filled, state.average, state.exchange_id) == ("closed", 0.5, 100.0, "1")
    assert state.fee == pytest.approx(0.0005) and state.fee_currency == "BTC" and len(state.trades) == 1
    assert server.faults_served[fault] == 1


@pytest.mark.parametrize("fault", ["500", "503", "429", "418", "html", "truncated"])
async def test_a_failure_before_acceptance_is_reconciled_then_sent_once(venue: Venue, fault: str) -> None:
    sleeps = Sleeps()
    server, gateway = await venue(retry_delay=0.25, sleep=sleeps)
    server.fail(fault, times=2, path=ORDER, method="POST")
    state = await gateway.place(market("retry-1"))
    assert len(server.orders_for("retry-1")) == 1 and state.status == "closed"
    assert server.requests_to(ORDER) == ["POST", "GET", "POST", "GET", "POST"]  # looked up before each re-send
    gets = [q for method, q in server.order_requests if method == "GET"]
    assert [q["origClientOrderId"] for q in gets] == ["retry-1", "retry-1"]
    assert sleeps.calls == [0.25, 0.5]  # spaced, doubling


async def test_a_duplicate_client_id_is_fetched_not_placed_again(venue: Venue) -> None:
    server, gateway = await venue()
    first = await gateway.place(limit("dup-1", 1.0, 98.0))
    assert first.status == "open"
    again = await gateway.place(limit("dup-1", 1.0, 98.0))  # e.g. a re-run that did not know
    assert len(server.orders_for("dup-1")) == 1
    assert again.exchange_id == first.exchange_id and again.status == "open"


async def test_resume_after_a_fill_does_not_place_again(venue: Venue) -> None:
    """Binance lets a *filled* order's id be used again, so after a restart only a look-up is safe."""
    server, gateway = await venue()
    placed = await gateway.place(market("resume-1"))
    resumed = await gateway.resume(market("resume-1"))
    assert resumed.exchange_id == placed.exchange_id and len(server.orders_for("resume-1")) == 1
    fresh = await gateway.resume(market("resume-2"))  # never sent: resume places it
    assert fresh.status == "closed" and len(server.orders_for("resume-2")) == 1
    await gateway.place(market("resume-1"))  # what resume avoids: the server accepts the id again
    assert len(server.orders_for("resume-1")) == 2


async def test_timeouts_end_in_needs_attention_after_bounded_spaced_attempts(venue: Venue) -> None:
    sleeps = Sleeps()
    server, gateway = await venue(timeout=200, slow_seconds=5.0, attempts=3, retry_delay=1.0, sleep=sleeps)
    server.fail("slow", times=10, path=ORDER)
    with pytest.raises(OrderNeedsAttention) as info:
        await gateway.place(market("slow-1"))
    error = info.value
    assert error.client_order_id == "slow-1" and error.attempts == 3 and "RequestTimeout" in error.last_error
    assert "not sent again" in str(error)
    assert sleeps.calls == [1.0, 2.0]
    # one send, then each retry looked up first: the unanswered send was never blindly repeated
    assert server.requests_to(ORDER) == ["POST", "GET", "GET"]
    assert server.orders_for("slow-1") == []


async def test_fetch_gives_up_with_needs_attention_too(venue: Venue) -> None:
    server, gateway = await venue(attempts=2)
    server.fail("503", times=2, path=ORDER, method="GET")
    with pytest.raises(OrderNeedsAttention, match=r"did not answer after 2 attempts"):
        await gateway.fetch("nope-1", SYMBOL)
    assert await gateway.fetch("nope-1", SYMBOL) is None


# ---------------------------------------------------------------------- rejections
async def test_insufficient_balance_is_rejected_before_sending(venue: Venue) -> None:
    server, gateway = await venue(balances={"USDT": "40", "BTC": "0"})
    with pytest.raises(OrderRejected) as info:
        await gateway.place(market("poor-1", 0.5))
    assert (info.value.field, info.value.value, info.value.limit) == ("balance", 40.0, 50.0)
    assert "free USDT balance 40.0 is below the 50.0" in str(info.value)
    with pytest.raises(OrderRejected, match=r"free BTC balance 0\.0"):
        await gateway.place(market("poor-2", 0.5, side="sell"))
    assert server.counts[ORDER] == 0


@pytest.mark.parametrize("injected", [False, True])
async def test_the_exchange_refusing_for_balance_is_a_rejection(venue: Venue, injected: bool) -> None:
    server, gateway = await venue(balances={"USDT": "40" if not injected else "10000"}, check_balance=False)
    if injected:
        server.fail("insufficient", path=ORDER, method="POST")
    with pytest.raises(OrderRejected) as info:
        await gateway.place(market("poor-3", 0.5))
    assert info.value.field == "balance"
    assert "Account has insufficient balance for requested action." in info.value.reason
    assert server.requests_to(ORDER) == ["POST"] and server.orders_for("poor-3") == []  # refused: not retried


async def test_precision_and_minimums_are_checked_before_sending(venue: Venue) -> None:
    server, gateway = await venue()
    with pytest.raises(OrderRejected) as info:
        await gateway.place(market("tiny-1", 0.000004))  # below the lot step 0.00001
    assert info.value.field == "amount" and info.value.limit == 0.00001
    with pytest.raises(OrderRejected) as info:
        await gateway.place(limit("tiny-2", 0.04, 100.0))  # 4 USDT < 5 USDT minimum notional
    assert (info.value.field, info.value.value, info.value.limit) == ("cost", pytest.approx(4.0), 5.0)
    assert "minimum notional 5.0" in str(info.value)
    with pytest.raises(OrderRejected, match="minimum notional"):
        await gateway.place(market("tiny-3", 0.04))  # a market order is judged at the last close
    assert server.counts[ORDER] == 0 and server.counts[KLINES] == 1
    state = await gateway.place(limit("round-1", 0.0723456, 98.019))
    sent = [q for method, q in server.order_requests if method == "POST"][-1]
    assert (sent["quantity"], sent["price"]) == ("0.07234", "98.02")  # truncated / rounded to the filters
    assert state.amount == 0.07234
    with pytest.raises(SchemaError, match="side: expected 'buy' or 'sell', got 'long'"):
        OrderIntent("bad", SYMBOL, "long", "market", 1.0)
    with pytest.raises(SchemaError, match="client_order_id"):
        OrderIntent("has spaces", SYMBOL, "buy", "market", 1.0)


# ---------------------------------------------------------------------- partial fills and cancels
async def test_partial_fills_are_reported(venue: Venue) -> None:
    server, gateway = await venue(liquidity="0.4")
    state = await gateway.place(limit("part-1", 1.0, 98.0))
    assert (state.status, state.filled) == ("open", 0.0)
    server.set_now(T0 + 6 * M)  # candle 5 closed, touched 98: 0.4 of 1.0 filled
    state = await gateway.fetch("part-1", SYMBOL) or pytest.fail("order not found")
    assert (state.status, state.exchange_status, state.filled, state.remaining) == ("open", "PARTIALLY_FILLED",
                                                                                   0.4, 0.6)
    assert state.partially_filled and state.fee == pytest.approx(0.0004) and len(state.trades) == 1
    server.set_now(T0 + 8 * M)  # two more candles: filled
    state = await gateway.fetch("part-1", SYMBOL) or pytest.fail("order not found")
    assert (state.status, state.filled, state.average, len(state.trades)) == ("closed", 1.0, 98.0, 3)
    # a market order larger than the liquidity fills what there is; the rest expires (as on Binance)
    expired = await gateway.place(market("part-2", 1.0))
    assert (expired.status, expired.filled, expired.is_final) == ("expired", 0.4, True)


async def test_cancel(venue: Venue) -> None:
    server, gateway = await venue()
    await gateway.place(limit("cancel-1", 1.0, 98.0))
    client, _ = await gateway.exchange._market(SYMBOL)
    assert (await client.fetch_balance())["USDT"]["used"] == 98.0
    state = await gateway.cancel("cancel-1", SYMBOL)
    assert (state.status, state.filled, state.is_final) == ("canceled", 0.0, True)
    assert (await client.fetch_balance())["USDT"] == {"free": 10000.0, "used": 0.0, "total": 10000.0}
    again = await gateway.cancel("cancel-1", SYMBOL)  # cancelling twice: the finished order, no error
    assert again.status == "canceled"
    server.fail("lost", path=ORDER, method="DELETE")
    await gateway.place(limit("cancel-2", 1.0, 98.0))
    assert (await gateway.cancel("cancel-2", SYMBOL)).status == "canceled"
    with pytest.raises(OrderRejected, match="no such order"):
        await gateway.cancel("never-placed", SYMBOL)


# ---------------------------------------------------------------------- safety
async def test_nothing_is_sent_without_trade_true(venue: Venue) -> None:
    server, gateway = await venue(trade=False)
    for call in (gateway.place(market("safe-1")), gateway.resume(market("safe-1")),
                 gateway.cancel("safe-1", SYMBOL)):
        with pytest.raises(TradingDisabledError, match="build the gateway with trade=True"):
            await call
    assert server.counts[ORDER] == 0 and server.counts[ACCOUNT] == 0
    assert await gateway.fetch("safe-1", SYMBOL) is None  # reading is allowed
    keyless = OrderGateway(CcxtExchange("nokeys", "binance", api_urls=server.api_urls()), trade=True)
    with pytest.raises(TradingDisabledError, match="no API key and secret"):
        await keyless.place(market("safe-2"))


async def test_sandbox_uses_ccxt_sandbox_mode() -> None:
    exchange = CcxtExchange("binance-test", "binance", sandbox=True, api_key=KEY, secret=SECRET)
    gateway = OrderGateway(exchange, trade=True)
    client = exchange._get_client()
    assert client.isSandboxModeEnabled and "testnet" in client.urls["api"]["private"]
    assert "sandbox=True" in repr(gateway) and KEY not in repr(gateway)
    await exchange.close()


async def test_keys_and_signatures_never_reach_an_error(venue: Venue) -> None:
    server, gateway = await venue(attempts=2)
    server.fail("500", times=4, path=ORDER)
    with pytest.raises(OrderNeedsAttention) as info:
        await gateway.place(market("leak-1"))
    signatures = [q["signature"] for _, q in server.requests if "signature" in q]
    text = f"{info.value} {info.value.last_error}"
    assert signatures and "ExchangeNotAvailable" in text
    assert not [s for s in (KEY, SECRET, *signatures) if s in text]


# ---------------------------------------------------------------------- a property
FAST_FAULTS = ["500", "503", "429", "418", "html", "truncated", "lost", "accepted_503", "insufficient"]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(post_faults=st.lists(st.sampled_from(FAST_FAULTS), max_size=4),
       get_faults=st.lists(st.sampled_from(["500", "429", "html"]), max_size=3),
       kind=st.sampled_from(["market", "limit"]))
def test_any_fault_sequence_gives_at_most_one_order(post_faults: list[str], get_faults: list[str],
                                                    kind: str) -> None:
    """Whatever fails, in whatever order: never two orders for one client id; a returned state is the
    order the server holds; `OrderRejected` means there is none."""

    async def scenario() -> None:
        server = await BinanceServer(CANDLES, now_ms=lambda: NOW, api_keys={KEY: SECRET}, balances={"USDT": "10000"},
                                     symbols={SYMBOL: Symbol(SYMBOL, "BTC", "USDT")}).start()
        exchange = CcxtExchange("binance", "binance", api_urls=server.api_urls(), api_key=KEY, secret=SECRET,
                                config={"enableRateLimit": False, "timeout": 2000})
        gateway = OrderGateway(exchange, trade=True, attempts=4, retry_delay=0, resend_after=0, sleep=Sleeps())
        for fault in post_faults:
            server.fail(fault, path=ORDER, method="POST")
        for fault in get_faults:
            server.fail(fault, path=ORDER, method="GET")
        intent = market("prop-1") if kind == "market" else limit("prop-1", 0.5, 98.0)
        try:
            try:
                state = await gateway.place(intent)
            except OrderRejected:
                assert server.orders_for("prop-1") == []
            except OrderNeedsAttention:
                assert len(server.orders_for("prop-1")) <= 1
            else:
                orders = server.orders_for("prop-1")
                assert len(orders) == 1 and state.exchange_id == str(orders[0].order_id)
        finally:
            await exchange.close()
            await server.close()

    asyncio.run(scenario())

"""A local Binance-spot-protocol REST server for testing the ccxt adapter with the real ccxt client.

It speaks the public endpoints ccxt's `binance` uses for spot market data — `/api/v3/exchangeInfo`,
`/api/v3/klines`, `/api/v3/ping`, `/api/v3/time` — on 127.0.0.1 with an OS-assigned port, serving
real candles from a `MemoryCandles` / `CsvCandles` store (any interval, aggregated from 1m).

- `now_ms`: the server's "now". `/api/v3/klines` never returns a candle that has not opened by then
  (like Binance it does return the candle that is still forming) and `/api/v3/time` reports it, so
  a live run on a `VirtualClock` sees exactly what a real exchange would show at that moment.
- `/api/v3/klines` honours `symbol`, `interval`, `startTime`, `endTime` and `limit` (default 500, at
  most 1000 — more is a -1130 error, as on Binance); rows are Binance's 12-field arrays, prices as
  strings with 8 decimals (exact, see `_fmt`).
- `/api/v3/account` (the signed endpoint behind ccxt's `fetch_balance`) checks the `X-MBX-APIKEY`
  header against `api_keys` (key -> secret) and the HMAC-SHA256 `signature` of the query, as Binance
  does (-2015 / -1022 errors otherwise), so a test can prove real credentials were used.
- Fault injection: `server.fail(kind, times=n, path=...)` queues faults for the next requests to a
  path: HTTP 429 / 418 / 500 / 503, `"slow"` (answer after `slow_seconds`, past a short client
  timeout), `"html"` (a 200 with an HTML page), `"truncated"` (a 200 with cut-off JSON) and
  `"empty"` (a 200 with `[]`).
- Orders (the rules are in `binance_orders.py`): signed `POST / GET / DELETE /api/v3/order`
  (`newClientOrderId`, `origClientOrderId`, `orderId`; ACK / RESULT / FULL answers), `GET
  /api/v3/openOrders`, `GET /api/v3/myTrades`; `/api/v3/account` balances move with fills. Market
  orders fill at the current 1m candle's open, limit orders on later candles that touch them, at
  most `liquidity` per candle. `set_now(ms)` / `advance(ms)` move the server's clock and match.
- Order faults: `"lost"` (the order is accepted and matched, then the connection is closed without
  an answer), `"lost_timeout"` (accepted and matched, the answer held past the client's timeout),
  `"accepted_503"` (accepted, then a 503 — Binance's "execution status unknown"), `"insufficient"`
  (a -2010 insufficient-balance rejection). `fail(..., method="POST")` aims a fault at one method.
  `on_order(phase, order)` (phases `"received"`, `"accepted"` of a POST, `"lookup"` of a GET) lets a
  test act at an exact point;
  `await wait_idle()` returns once no request is being handled.
- Every request is counted per path (`server.counts`) and recorded (`server.requests`), so a test
  can assert markets were loaded once, that pagination happened, and that no other endpoint (sapi,
  fapi, dapi, ...) was called (`server.unknown`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import time
import urllib.parse
from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import web
from binance_orders import Book, Order, Reject

from backtest_kit.adapters.candles import MemoryCandles
from backtest_kit.engine.errors import CandleError
from backtest_kit.engine.intervals import CANDLE_INTERVALS, MINUTE_MS

KLINES = "/api/v3/klines"
EXCHANGE_INFO = "/api/v3/exchangeInfo"
PING = "/api/v3/ping"
TIME = "/api/v3/time"
ACCOUNT = "/api/v3/account"
ORDER = "/api/v3/order"
OPEN_ORDERS = "/api/v3/openOrders"
MY_TRADES = "/api/v3/myTrades"
KNOWN_PATHS = frozenset({KLINES, EXCHANGE_INFO, PING, TIME, ACCOUNT, ORDER, OPEN_ORDERS, MY_TRADES})
AFTER_FAULTS = ("lost", "lost_timeout", "accepted_503")
"""Faults applied after the request was handled: the order exists, the client does not learn it."""
FAULTS = ("429", "418", "500", "503", "slow", "html", "truncated", "empty", "insufficient", *AFTER_FAULTS)
DEFAULT_BALANCES: dict[str, str | float] = {"BTC": "0.5", "USDT": "1000"}
OrderHook = Callable[[str, Order | None], Awaitable[bool | None]]
"""`on_order(phase, order)`: returning False at "received" drops the request (lost on the way in)."""
MAX_LIMIT = 1000
_QUOTES = ("USDT", "USDC", "FDUSD", "BUSD", "BTC", "ETH", "BNB", "EUR", "TRY")


@dataclass
class Symbol:
    """One spot market of exchangeInfo."""

    symbol: str
    base: str
    quote: str
    tick_size: str = "0.01"
    step_size: str = "0.00001"
    min_qty: str = "0.00001"
    min_notional: str = "5.00000000"


def split_symbol(symbol: str) -> tuple[str, str]:
    for quote in _QUOTES:
        if symbol.endswith(quote) and len(symbol) > len(quote):
            return symbol[: -len(quote)], quote
    raise ValueError(f"cannot split {symbol!r} into base and quote; pass Symbol(...) explicitly")


def _fmt(value: float) -> str:
    """Binance's 8-decimal strings, or the shortest exact repr when 8 decimals would change the float
    (sums of aggregated volumes), so candles arrive bit-identical to the source's."""
    text = f"{value:.8f}"
    return text if float(text) == value else repr(value)


class BinanceServer:
    """The server; `await start()` binds it, `url` / `api_urls()` say where it is, `await close()`."""

    def __init__(
        self,
        candles: MemoryCandles,
        *,
        now_ms: Callable[[], int] | None = None,
        symbols: Mapping[str, Symbol] | None = None,
        slow_seconds: float = 1.0,
        api_keys: Mapping[str, str] | None = None,
        balances: Mapping[str, str | float] | None = None,
        liquidity: str | float | None = None,
        fee_rate: str | float = "0.001",
        unique_ids: str = "open",
    ) -> None:
        self.candles = candles
        self.now_ms: Callable[[], int] = now_ms or (lambda: int(time.time() * 1000))
        self.symbols: dict[str, Symbol] = dict(symbols) if symbols is not None else {}
        for name in candles.symbols:
            if name not in self.symbols:
                base, quote = split_symbol(name)
                self.symbols[name] = Symbol(name, base, quote)
        self.slow_seconds = slow_seconds
        self.api_keys: dict[str, str] = dict(api_keys or {})
        self.counts: Counter[str] = Counter()
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.headers: list[dict[str, str]] = []  # request headers, to check what a client sent
        self.unknown: list[str] = []
        self.methods: list[tuple[str, str]] = []  # (method, path) of every request, faulted ones included
        self.faults_served: Counter[str] = Counter()
        self._faults: dict[str, deque[tuple[str, str | None]]] = {}
        self.book = Book(candles, self.symbols, dict(balances if balances is not None else DEFAULT_BALANCES),
                         liquidity=liquidity, fee_rate=fee_rate, unique_ids=unique_ids)
        self.order_requests: list[tuple[str, dict[str, str]]] = []  # (method, signed params) of /api/v3/order
        self.on_order: OrderHook | None = None
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._closing = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.url = ""

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> BinanceServer:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        # handler_cancellation: a slow handler is cancelled when the client gives up on it.
        self._runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]  # the port the OS picked
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def close(self) -> None:
        self._closing.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def api_urls(self) -> dict[str, str]:
        """Every entry ccxt's binance has in `urls['api']`, pointed here (unknown paths are counted)."""
        import ccxt

        out: dict[str, str] = {}
        for key, value in ccxt.binance().urls["api"].items():
            if isinstance(value, str):
                path = value.split("://", 1)[-1].partition("/")[2]
                out[key] = f"{self.url}/{path}"
        return out

    # ------------------------------------------------------------------ fault injection
    def fail(self, kind: str, times: int = 1, *, path: str = KLINES, method: str | None = None) -> None:
        """Answer the next `times` requests to `path` (of `method`, else any) with fault `kind` (FAULTS)."""
        if kind not in FAULTS:
            raise ValueError(f"unknown fault {kind!r}; expected one of {FAULTS}")
        self._faults.setdefault(path, deque()).extend([(kind, method)] * times)

    def _take_fault(self, path: str, method: str) -> str | None:
        queue = self._faults.get(path)
        for i, (kind, wanted) in enumerate(queue or ()):
            if wanted is None or wanted == method:
                assert queue is not None
                del queue[i]
                self.faults_served[kind] += 1
                return kind
        return None

    # ------------------------------------------------------------------ clock and orders
    def set_now(self, ms: int) -> None:
        """Move the server's clock to `ms` and match resting orders against the candles closed by then."""
        self.now_ms = lambda: ms
        self.book.match(ms)

    def advance(self, ms: int) -> None:
        self.set_now(self.now_ms() + ms)

    def requests_to(self, path: str) -> list[str]:
        """The method of every request to `path`, in order (faulted and timed-out ones included)."""
        return [method for method, p in self.methods if p == path]

    def orders_for(self, client_order_id: str) -> list[Order]:
        """Every order the server accepted under `client_order_id` (more than one is a duplicate)."""
        return self.book.orders_for(client_order_id)

    def pending_faults(self, path: str = KLINES) -> int:
        return len(self._faults.get(path, ()))

    def clear_faults(self) -> None:
        self._faults.clear()

    def klines_queries(self) -> list[dict[str, str]]:
        """The query of every /api/v3/klines request, in order."""
        return [query for path, query in self.requests if path == KLINES]

    # ------------------------------------------------------------------ dispatch
    async def wait_idle(self) -> None:
        """Until no request is being handled (a dead client's last request included)."""
        for _ in range(3):  # let requests already in the socket buffers reach a handler
            await asyncio.sleep(0)
        await self._idle.wait()

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        self._in_flight += 1
        self._idle.clear()
        try:
            return await self._dispatch_counted(request)
        finally:
            self._in_flight -= 1
            if self._in_flight == 0:
                self._idle.set()

    async def _dispatch_counted(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        self.counts[path] += 1
        self.requests.append((path, dict(request.query)))
        self.headers.append(dict(request.headers))
        self.methods.append((request.method, path))
        kind = self._take_fault(path, request.method)
        if kind is not None and kind not in AFTER_FAULTS:
            fault = await self._fault(kind)
            if fault is not None:
                return fault
        handler = self._handlers().get(path)
        if handler is None:
            self.unknown.append(path)
            return _error(404, -1, f"unknown endpoint {request.method} {path}")
        response = await handler(request)
        if kind == "lost":  # handled, then the connection drops: the client never sees the answer
            if request.transport is not None:
                request.transport.abort()
            return response
        if kind == "lost_timeout":  # handled, then held until the client has given up
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), self.slow_seconds)
            return response
        if kind == "accepted_503":
            return web.json_response({"code": -1001, "msg": "Internal error; unable to process your request. "
                                      "Please try again."}, status=503)
        return response

    def _handlers(self) -> dict[str, Callable[[web.Request], Awaitable[web.StreamResponse]]]:
        return {KLINES: self._klines, EXCHANGE_INFO: self._exchange_info, PING: self._ping, TIME: self._time,
                ACCOUNT: self._account, ORDER: self._order, OPEN_ORDERS: self._open_orders,
                MY_TRADES: self._my_trades}

    async def _fault(self, kind: str) -> web.StreamResponse | None:
        if kind in ("429", "418"):
            return web.json_response(
                {"code": -1003, "msg": "Too many requests; current limit is 6000 request weight per 1 MINUTE."},
                status=int(kind), headers={"Retry-After": "1"},
            )
        if kind in ("500", "503"):
            return web.Response(status=int(kind), text="<html><body>Service Unavailable</body></html>",
                                content_type="text/html")
        if kind == "html":
            return web.Response(status=200, text="<!DOCTYPE html><html><body><h1>Maintenance</h1></body></html>",
                                content_type="text/html")
        if kind == "truncated":
            return web.Response(status=200, text='[[1747699200000,"105573.73000000","105597.1',
                                content_type="application/json")
        if kind == "empty":
            return web.json_response([])
        if kind == "insufficient":
            return _error(400, -2010, "Account has insufficient balance for requested action.")
        # slow: answer normally, but only after the client's timeout has passed
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._closing.wait(), self.slow_seconds)
        return None

    async def _ping(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({})

    async def _time(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({"serverTime": self.now_ms()})

    async def _signed(self, request: web.Request) -> dict[str, str] | web.Response:
        """The parameters of a signed request (query, or form body for POST), or the error answer: the
        key must be known and `signature` the HMAC-SHA256 of the rest, as on Binance."""
        secret = self.api_keys.get(request.headers.get("X-MBX-APIKEY", ""))
        if secret is None:
            return _error(401, -2015, "Invalid API-key, IP, or permissions for action.")
        raw = await request.text() if request.method == "POST" else request.query_string
        payload, _, signature = raw.rpartition("&signature=")
        expected = hmac.new(secret.encode(), payload.encode(), hashlib.sha256).hexdigest()
        if not payload or not hmac.compare_digest(signature, expected):
            return _error(400, -1022, "Signature for this request is not valid.")
        return dict(urllib.parse.parse_qsl(payload, keep_blank_values=True))

    async def _account(self, request: web.Request) -> web.StreamResponse:
        params = await self._signed(request)
        if isinstance(params, web.Response):
            return params
        return web.json_response({
            "makerCommission": 10, "takerCommission": 10, "canTrade": True, "canWithdraw": False,
            "canDeposit": False, "updateTime": self.now_ms(), "accountType": "SPOT", "permissions": ["SPOT"],
            "balances": self.book.balances_json(),
        })

    async def _order(self, request: web.Request) -> web.StreamResponse:
        """POST places, GET looks up, DELETE cancels; by `orderId` or the client's own id."""
        params = await self._signed(request)
        if isinstance(params, web.Response):
            return params
        self.order_requests.append((request.method, params))
        now = self.now_ms()
        self.book.match(now)
        try:
            if request.method == "POST":
                if self.on_order is not None and await self.on_order("received", None) is False:
                    if request.transport is not None:
                        request.transport.abort()
                    return _error(503, -1, "dropped before it reached the matching engine")
                order = self.book.place(now, params)
                if self.on_order is not None:
                    await self.on_order("accepted", order)
                return web.json_response(order.json(params.get("newOrderRespType", "FULL")))
            symbol = params.get("symbol", "")
            order_id, cid = params.get("orderId"), params.get("origClientOrderId")
            if request.method == "DELETE":
                return web.json_response(self.book.cancel(now, symbol, order_id, cid).json("RESULT"))
            found = self.book.find(symbol, order_id, cid)
            if self.on_order is not None:
                await self.on_order("lookup", found)
            if found is None:
                return _error(400, -2013, "Order does not exist.")
            return web.json_response(found.json("GET"))
        except Reject as exc:
            return _error(exc.status, exc.code, exc.msg)

    async def _open_orders(self, request: web.Request) -> web.StreamResponse:
        params = await self._signed(request)
        if isinstance(params, web.Response):
            return params
        self.book.match(self.now_ms())
        symbol = params.get("symbol")
        return web.json_response([o.json("GET") for o in self.book.orders
                                  if o.is_open and (symbol is None or o.symbol == symbol)])

    async def _my_trades(self, request: web.Request) -> web.StreamResponse:
        params = await self._signed(request)
        if isinstance(params, web.Response):
            return params
        self.book.match(self.now_ms())
        symbol, order_id = params.get("symbol", ""), params.get("orderId")
        return web.json_response([t.json() for t in self.book.trades
                                  if t.symbol == symbol and (order_id is None or str(t.order_id) == order_id)])

    async def _exchange_info(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({
            "timezone": "UTC",
            "serverTime": self.now_ms(),
            "rateLimits": [
                {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": 6000},
                {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": 100},
            ],
            "exchangeFilters": [],
            "symbols": [self._symbol_info(s) for s in self.symbols.values()],
        })

    @staticmethod
    def _symbol_info(s: Symbol) -> dict[str, Any]:
        return {
            "symbol": s.symbol,
            "status": "TRADING",
            "baseAsset": s.base,
            "baseAssetPrecision": 8,
            "quoteAsset": s.quote,
            "quotePrecision": 8,
            "quoteAssetPrecision": 8,
            "baseCommissionPrecision": 8,
            "quoteCommissionPrecision": 8,
            "orderTypes": ["LIMIT", "LIMIT_MAKER", "MARKET", "STOP_LOSS_LIMIT", "TAKE_PROFIT_LIMIT"],
            "icebergAllowed": True,
            "ocoAllowed": True,
            "quoteOrderQtyMarketAllowed": True,
            "allowTrailingStop": True,
            "cancelReplaceAllowed": True,
            "isSpotTradingAllowed": True,
            "isMarginTradingAllowed": False,
            "filters": [
                {"filterType": "PRICE_FILTER", "minPrice": s.tick_size, "maxPrice": "1000000.00000000",
                 "tickSize": s.tick_size},
                {"filterType": "LOT_SIZE", "minQty": s.min_qty, "maxQty": "9000.00000000",
                 "stepSize": s.step_size},
                {"filterType": "ICEBERG_PARTS", "limit": 10},
                {"filterType": "MARKET_LOT_SIZE", "minQty": "0.00000000", "maxQty": "100.00000000",
                 "stepSize": "0.00000000"},
                {"filterType": "NOTIONAL", "minNotional": s.min_notional, "applyMinToMarket": True,
                 "maxNotional": "9000000.00000000", "applyMaxToMarket": False, "avgPriceMins": 5},
                {"filterType": "MAX_NUM_ORDERS", "maxNumOrders": 200},
            ],
            "permissions": [],
            "permissionSets": [["SPOT"]],
            "defaultSelfTradePreventionMode": "EXPIRE_MAKER",
            "allowedSelfTradePreventionModes": ["EXPIRE_TAKER", "EXPIRE_MAKER", "EXPIRE_BOTH"],
        }

    async def _klines(self, request: web.Request) -> web.StreamResponse:
        q = request.query
        symbol = q.get("symbol", "")
        interval = q.get("interval", "")
        if symbol not in self.symbols or symbol not in self.candles.symbols:
            return _error(400, -1121, "Invalid symbol.")
        minutes = CANDLE_INTERVALS.get(interval)
        if minutes is None:
            return _error(400, -1120, "Invalid interval.")
        try:
            limit = int(q.get("limit", "500"))
            start = int(q["startTime"]) if "startTime" in q else None
            end = int(q["endTime"]) if "endTime" in q else None
        except ValueError:
            return _error(400, -1100, "Illegal characters found in a parameter.")
        if not 1 <= limit <= MAX_LIMIT:
            return _error(400, -1130, "Data sent for parameter 'limit' is not valid.")
        step = minutes * MINUTE_MS
        now = self.now_ms()
        last_open = now - now % step  # the candle forming now is served, as Binance does
        if end is None or end > last_open:
            end = last_open
        try:
            if start is not None:
                rows = self.candles.next_candles(symbol, interval, start, limit)
            else:
                # the newest `limit` candles opening at or before `end`
                rows = self.candles.closed_candles(symbol, interval, end + step, limit)
        except CandleError as exc:
            return _error(400, -1121, str(exc))
        rows = [c for c in rows if c.timestamp <= end]
        payload = [
            [c.timestamp, _fmt(c.open), _fmt(c.high), _fmt(c.low), _fmt(c.close), _fmt(c.volume),
             c.timestamp + step - 1, _fmt(c.volume * c.close), 100, _fmt(c.volume / 2),
             _fmt(c.volume * c.close / 2), "0"]
            for c in rows
        ]
        return web.Response(text=json.dumps(payload), content_type="application/json")


def _error(status: int, code: int, msg: str) -> web.Response:
    return web.json_response({"code": code, "msg": msg}, status=status)


# ---------------------------------------------------------------------- fixtures
ServerFactory = Callable[..., Awaitable[BinanceServer]]


@pytest.fixture
async def binance_server_factory() -> AsyncIterator[ServerFactory]:
    """`await factory(candles, now_ms=..., ...)` starts a server; all are closed after the test."""
    servers: list[BinanceServer] = []

    async def factory(candles: MemoryCandles, **kwargs: Any) -> BinanceServer:
        server = await BinanceServer(candles, **kwargs).start()
        servers.append(server)
        return server

    yield factory
    for server in servers:
        await server.close()

"""The ccxt adapter against a local Binance-protocol server, with the real ccxt client.

What is proven here: candles come through ccxt unchanged (every interval, paginated past 1000),
markets load once, only the spot endpoints are called, precision formatting follows the market
filters, every injected fault (429, 418, 500, 503, timeouts, HTML, truncated JSON, empty lists)
becomes a clear `ExchangeError` that the engine retries and finally reports while the live loop
survives, keys never leak, the client closes with the engine, and a live run (VirtualClock) and a
backtest through ccxt trade exactly like the replay exchange / CSV candles over the same data.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import aiohttp
import ccxt
import pytest
from binance_server import EXCHANGE_INFO, KLINES, BinanceServer

import backtest_kit as bk
from backtest_kit.adapters import ccxt_exchange
from backtest_kit.adapters.candles import UnknownSymbolError
from backtest_kit.adapters.ccxt import (
    CcxtExchange,
    CcxtExchangeError,
    ExchangeRateLimitError,
    ExchangeResponseError,
    ExchangeTimeoutError,
    ExchangeUnavailableError,
    Secret,
    add_ccxt_exchange,
    read_env_file,
)

SYMBOL = "BTCUSDT"
M = 60_000
FAST: dict[str, Any] = {"enableRateLimit": False, "timeout": 2000, "timeout_on_exit": 0}  # no throttling, no linger
RETRY = {"CC_GET_CANDLES_RETRY_COUNT": 3, "CC_GET_CANDLES_RETRY_DELAY_MS": 1}
ROOT = Path(__file__).resolve().parents[1]


def load_example(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", ROOT / "examples" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SMA = load_example("backtest_sma")


@pytest.fixture(scope="module")
def source() -> bk.CsvCandles:
    return bk.CsvCandles(bk.bundled_sample_path())


@pytest.fixture
async def server(binance_server_factory: Any, source: bk.CsvCandles) -> BinanceServer:
    """A server with wall-clock "now": the whole (historical) file is visible."""
    return await binance_server_factory(source, slow_seconds=1.0)  # type: ignore[no-any-return]


def new_engine(tmp_path: Path, clock: bk.Clock | None = None, /, **config: Any) -> bk.Engine:
    engine = bk.Engine(persist_dir=tmp_path / "data", dump_dir=tmp_path / "dump", clock=clock)
    if config:
        engine.set_config(config)
    return engine


def attach(engine: bk.Engine, server: BinanceServer, name: str = "binance", **kwargs: Any) -> CcxtExchange:
    config = {**FAST, **kwargs.pop("config", {})}
    return add_ccxt_exchange(name, "binance", engine=engine, api_urls=server.api_urls(), config=config, **kwargs)


def dt(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def only_spot_endpoints(server: BinanceServer) -> None:
    assert server.unknown == []
    assert set(server.counts) <= {KLINES, EXCHANGE_INFO}


# ---------------------------------------------------------------------- the server itself
async def test_server_speaks_binance_klines(binance_server_factory: Any, source: bk.CsvCandles) -> None:
    first = source.first_timestamp(SYMBOL)
    now = first + 90 * M + 30_000  # half-way through the 91st minute
    srv = await binance_server_factory(source, now_ms=lambda: now)
    async with aiohttp.ClientSession() as http:
        async def get(path: str, **params: Any) -> tuple[int, Any]:
            async with http.get(srv.url + path, params={k: str(v) for k, v in params.items()}) as r:
                return r.status, await r.json()

        status, rows = await get(KLINES, symbol=SYMBOL, interval="1m", startTime=first, limit=3)
        assert status == 200 and [r[0] for r in rows] == [first, first + M, first + 2 * M]
        c = source.next_candles(SYMBOL, "1m", first, 1)[0]
        assert len(rows[0]) == 12 and rows[0][6] == first + M - 1
        assert [float(x) for x in rows[0][1:6]] == [c.open, c.high, c.low, c.close, c.volume]
        assert all(isinstance(x, str) for x in rows[0][1:6])
        # never a candle that has not opened by "now"; the forming one is served, as Binance does
        status, rows = await get(KLINES, symbol=SYMBOL, interval="1m", startTime=first, limit=1000)
        assert rows[-1][0] == first + 90 * M and len(rows) == 91
        status, rows = await get(KLINES, symbol=SYMBOL, interval="1h", limit=5)
        assert [r[0] for r in rows] == [first, first + 60 * M]
        status, rows = await get(KLINES, symbol=SYMBOL, interval="1m", endTime=first + 10 * M, limit=2)
        assert [r[0] for r in rows] == [first + 9 * M, first + 10 * M]
        status, body = await get(KLINES, symbol=SYMBOL, interval="1m", limit=1001)
        assert status == 400 and body["code"] == -1130
        status, body = await get(KLINES, symbol="NOPEUSDT", interval="1m")
        assert status == 400 and body["code"] == -1121
        assert await get("/api/v3/time") == (200, {"serverTime": now})
        assert await get("/api/v3/ping") == (200, {})
        status, info = await get(EXCHANGE_INFO)
        assert [s["symbol"] for s in info["symbols"]] == [SYMBOL]
        status, _ = await get("/sapi/v1/capital/config/getall")
        assert status == 404 and srv.unknown == ["/sapi/v1/capital/config/getall"]


# ---------------------------------------------------------------------- candles and markets
async def test_candles_match_the_source_and_markets_load_once(
    tmp_path: Path, server: BinanceServer, source: bk.CsvCandles
) -> None:
    engine = new_engine(tmp_path)
    exchange = attach(engine, server)
    first = source.first_timestamp(SYMBOL)
    since = first + 7 * M + 123  # not on the grid: candles open at or after it
    for interval, limit in (("1m", 50), ("3m", 7), ("5m", 20), ("15m", 9), ("1h", 30), ("4h", 5), ("1d", 2)):
        got = await exchange.get_candles(SYMBOL, interval, dt(since), limit)
        assert got == source.next_candles(SYMBOL, interval, since + 1, limit), interval
    # the unified symbol works too, and many calls share one markets load
    assert await exchange.get_candles("BTC/USDT", "1m", dt(first), 3) == source.next_candles(SYMBOL, "1m", first, 3)
    for i in range(20):
        await exchange.get_candles(SYMBOL, "1m", dt(first + i * M), 5)
    assert server.counts[EXCHANGE_INFO] == 1 and exchange.markets_loads == 1
    only_spot_endpoints(server)
    # the engine's backward read: the newest closed candles before `when`, through ccxt
    client = engine.exchange("binance")
    when = first + 500 * M + 17
    assert await client.get_candles(SYMBOL, "5m", 10, when) == source.closed_candles(SYMBOL, "5m", when, 10)
    with pytest.raises(UnknownSymbolError, match="unknown symbol 'DOGEUSDT'"):
        await exchange.get_candles("DOGEUSDT", "1m", dt(first), 5)
    await engine.close()


async def test_pagination_past_the_per_request_limit(
    tmp_path: Path, binance_server_factory: Any, source: bk.CsvCandles
) -> None:
    first = source.first_timestamp(SYMBOL)
    srv = await binance_server_factory(source)
    engine = new_engine(tmp_path)
    exchange = attach(engine, srv)
    got = await exchange.get_candles(SYMBOL, "1m", dt(first), 2500)
    assert got == source.next_candles(SYMBOL, "1m", first, 2500)
    queries = srv.klines_queries()
    assert [q["limit"] for q in queries] == ["1000", "1000", "500"]
    assert [int(q["startTime"]) for q in queries] == [first, first + 1000 * M, first + 2000 * M]
    # the engine's get_next_candles (backtest fast-forward) goes through the same pages
    client = engine.exchange("binance")
    assert await client.get_next_candles(SYMBOL, "1m", first, 1200) == source.next_candles(SYMBOL, "1m", first, 1200)
    assert len(srv.klines_queries()) == 5
    await engine.close()

    # near "now" the exchange has fewer candles than asked: a short page ends the pagination
    now = first + 1500 * M
    srv2 = await binance_server_factory(source, now_ms=lambda: now)
    engine2 = new_engine(tmp_path)
    exchange2 = attach(engine2, srv2)
    got = await exchange2.get_candles(SYMBOL, "1m", dt(first), 3000)
    assert len(got) == 1501 and got[-1].timestamp == now  # the forming candle; the engine drops it
    assert len(srv2.klines_queries()) == 2
    assert await engine2.exchange("binance").get_candles(SYMBOL, "1m", 3, now) == source.closed_candles(
        SYMBOL, "1m", now, 3)
    await engine2.close()

    # a page size of our choosing
    engine3 = new_engine(tmp_path)
    exchange3 = attach(engine3, srv, name="small-pages", candles_per_request=100)
    before = len(srv.klines_queries())
    assert await exchange3.get_candles(SYMBOL, "15m", dt(first), 250) == source.next_candles(SYMBOL, "15m", first, 250)
    assert [q["limit"] for q in srv.klines_queries()[before:]] == ["100", "100", "50"]
    await engine3.close()


async def test_markets_reload_on_schedule_and_survive_a_failed_reload(
    tmp_path: Path, server: BinanceServer, source: bk.CsvCandles, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [1000.0]
    monkeypatch.setattr(ccxt_exchange, "_monotonic", lambda: now[0])
    logs: list[tuple[str, str]] = []

    class Recorder:
        def log(self, topic: str, *args: Any) -> None: logs.append(("log", topic))
        def debug(self, topic: str, *args: Any) -> None: logs.append(("debug", topic))
        def info(self, topic: str, *args: Any) -> None: logs.append(("info", topic))
        def warn(self, topic: str, *args: Any) -> None: logs.append(("warn", topic + " " + " ".join(map(str, args))))

    engine = new_engine(tmp_path)
    engine.set_logger(Recorder())
    exchange = attach(engine, server, markets_ttl=600)
    first = source.first_timestamp(SYMBOL)
    await exchange.get_candles(SYMBOL, "1m", dt(first), 5)
    now[0] += 599
    await exchange.get_candles(SYMBOL, "1m", dt(first), 5)
    assert server.counts[EXCHANGE_INFO] == 1
    now[0] += 2
    await exchange.get_candles(SYMBOL, "1m", dt(first), 5)
    assert server.counts[EXCHANGE_INFO] == 2 and exchange.markets_loads == 2
    # a failed reload keeps the cached markets (and tries again a minute later), candles still flow
    now[0] += 601
    server.fail("503", path=EXCHANGE_INFO)
    assert len(await exchange.get_candles(SYMBOL, "1m", dt(first), 5)) == 5
    assert server.counts[EXCHANGE_INFO] == 3 and exchange.markets_loads == 2
    assert any(level == "warn" and "markets reload failed" in text for level, text in logs)
    now[0] += 30
    await exchange.get_candles(SYMBOL, "1m", dt(first), 5)
    assert server.counts[EXCHANGE_INFO] == 3
    now[0] += 31
    await exchange.get_candles(SYMBOL, "1m", dt(first), 5)
    assert server.counts[EXCHANGE_INFO] == 4 and exchange.markets_loads == 3
    # the very first load has nothing to fall back on: it fails like a candle request
    engine2 = new_engine(tmp_path)
    exchange2 = attach(engine2, server, name="other")
    server.fail("503", path=EXCHANGE_INFO)
    with pytest.raises(ExchangeUnavailableError, match="load_markets"):
        await exchange2.get_candles(SYMBOL, "1m", dt(first), 5)
    assert len(await exchange2.get_candles(SYMBOL, "1m", dt(first), 5)) == 5
    await engine.close()
    await engine2.close()


async def test_format_price_and_quantity_follow_the_market_precision(tmp_path: Path, server: BinanceServer) -> None:
    engine = new_engine(tmp_path)
    attach(engine, server)
    client = engine.exchange("binance")
    assert await client.format_price(SYMBOL, 105597.129) == "105597.13"  # tickSize 0.01, rounded
    assert await client.format_price("BTC/USDT", 99.999) == "100"  # ccxt does not pad
    assert await client.format_quantity(SYMBOL, 0.123456789) == "0.12345"  # stepSize 0.00001, truncated
    assert await client.format_quantity(SYMBOL, 2) == "2"
    with pytest.raises(CcxtExchangeError, match="format_quantity"):
        await client.format_quantity(SYMBOL, 0.000001)  # below one lot step
    with pytest.raises(UnknownSymbolError):
        await client.format_price("NOPE", 1.0)
    # through the strategy-side helpers too
    with bk.execution_context(symbol=SYMBOL, when=datetime(2025, 5, 21, tzinfo=UTC), backtest=False,
                              exchange=client):
        assert await bk.format_price(SYMBOL, 1.006) == "1.01"
        assert await bk.format_quantity(SYMBOL, 1.000019) == "1.00001"
    assert server.counts[EXCHANGE_INFO] == 1
    await engine.close()


# ---------------------------------------------------------------------- faults
FAULT_ERRORS: dict[str, type[CcxtExchangeError]] = {
    "429": ExchangeRateLimitError,
    "418": ExchangeRateLimitError,
    "500": ExchangeUnavailableError,
    "503": ExchangeUnavailableError,
    "slow": ExchangeTimeoutError,
    "html": ExchangeResponseError,
    "truncated": ExchangeResponseError,
    "empty": ExchangeResponseError,
}


@pytest.mark.parametrize("fault", list(FAULT_ERRORS))
async def test_each_fault_is_a_clear_exchange_error(
    tmp_path: Path, server: BinanceServer, source: bk.CsvCandles, fault: str
) -> None:
    engine = new_engine(tmp_path)
    exchange = attach(engine, server, config={"timeout": 200})
    first = source.first_timestamp(SYMBOL)
    await exchange.load_markets()
    server.fail(fault)
    with pytest.raises(FAULT_ERRORS[fault]) as info:
        await exchange.get_candles(SYMBOL, "1m", dt(first), 5)
    error = info.value
    assert isinstance(error, bk.ExchangeError)
    assert error.exchange_name == "binance" and error.retryable
    assert "exchange binance (binance)" in str(error) and "BTCUSDT" in str(error)
    assert error.__cause__ is None and error.__context__ is None  # the raw ccxt exception is not chained
    if fault == "slow":
        assert "timeout 200 ms" in str(error)
    if fault in ("html", "truncated"):
        assert "not JSON" in str(error)
    if fault == "empty":
        assert "no candles" in str(error)
    # the next request is served normally
    assert await exchange.get_candles(SYMBOL, "1m", dt(first), 5) == source.next_candles(SYMBOL, "1m", first, 5)
    await engine.close()


@pytest.mark.parametrize("fault", list(FAULT_ERRORS))
async def test_the_engine_retries_faults_then_succeeds(
    tmp_path: Path, server: BinanceServer, source: bk.CsvCandles, fault: str
) -> None:
    warnings: list[str] = []

    class Recorder:
        def log(self, topic: str, *args: Any) -> None: pass
        def debug(self, topic: str, *args: Any) -> None: pass
        def info(self, topic: str, *args: Any) -> None: pass
        def warn(self, topic: str, *args: Any) -> None: warnings.append(" ".join([topic, *map(str, args)]))

    engine = new_engine(tmp_path, **RETRY)
    engine.set_logger(Recorder())
    attach(engine, server, config={"timeout": 200})
    when = source.first_timestamp(SYMBOL) + 100 * M
    server.fail(fault, times=2)
    got = await engine.exchange("binance").get_candles(SYMBOL, "1m", 10, when)
    assert got == source.closed_candles(SYMBOL, "1m", when, 10)
    assert server.counts[KLINES] == 3 and server.faults_served[fault] == 2
    assert len([w for w in warnings if "attempt" in w]) == 2
    assert FAULT_ERRORS[fault].__name__ in warnings[0]
    await engine.close()


async def test_the_engine_gives_up_after_the_retry_count(
    tmp_path: Path, server: BinanceServer, source: bk.CsvCandles
) -> None:
    engine = new_engine(tmp_path, **RETRY)
    attach(engine, server)
    server.fail("503", times=10)
    with pytest.raises(bk.ExchangeError, match="after 3 attempt") as info:
        await engine.exchange("binance").get_candles(SYMBOL, "1m", 10, source.first_timestamp(SYMBOL) + 100 * M)
    assert isinstance(info.value.__cause__, ExchangeUnavailableError)
    assert server.counts[KLINES] == 3
    await engine.close()


async def test_the_live_loop_survives_an_outage(
    tmp_path: Path, binance_server_factory: Any, source: bk.CsvCandles
) -> None:
    clock = bk.replay_clock(source)
    srv = await binance_server_factory(source, now_ms=clock.now_ms)
    engine = new_engine(tmp_path, clock, CC_GET_CANDLES_RETRY_COUNT=3)
    attach(engine, srv)
    engine.add_strategy(strategy_name="sma", interval="5m", get_signal=SMA.get_signal)
    errors: list[BaseException] = []
    ticks: list[int] = []
    engine.listen_error(errors.append)
    handle: bk.CancelHandle | None = None

    def on_tick(result: bk.TickResult) -> None:
        ticks.append(clock.now_ms())
        if len(ticks) == 30 and handle is not None:
            handle()

    engine.listen_signal_live(on_tick)
    srv.fail("503", times=3)   # the first tick's price: 3 failed attempts -> the tick fails
    srv.fail("429", times=3)   # the second tick too
    srv.fail("html", times=2)  # the third succeeds on its last attempt
    started = clock.now_ms()
    handle = engine.live.background(SYMBOL, strategy_name="sma", exchange_name="binance")
    await handle.wait()
    assert len(errors) == 2 and all(isinstance(e, bk.ExchangeError) for e in errors)
    assert isinstance(errors[0].__cause__, ExchangeUnavailableError)
    assert isinstance(errors[1].__cause__, ExchangeRateLimitError)
    assert len(ticks) == 30 and ticks[0] > started  # the loop went on ticking after the failures
    assert (await engine.live.list())[0].status == "done"
    await engine.close()


# ---------------------------------------------------------------------- keys
KEY = "AKtestKEY0123456789abcdefXYZ"
SECRET = "SEtestSECRET9876543210zyxwvuQ"


def leaks(text: str) -> bool:
    return KEY in text or SECRET in text


def error_texts(error: BaseException) -> list[str]:
    out: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        out += [repr(current), str(current), *map(repr, current.args)]
        current = current.__cause__ or current.__context__
    return out


async def test_keys_never_leak(
    tmp_path: Path, binance_server_factory: Any, source: bk.CsvCandles, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # every logger, ccxt's included
    records: list[str] = []

    class Recorder:
        def _add(self, topic: str, *args: Any) -> None:
            records.append(" ".join([topic, *map(repr, args), *map(str, args)]))

        log = debug = info = warn = _add

    events: list[str] = []

    def recorder(channel: str) -> Callable[[Any], None]:
        def record(event: Any) -> None:
            events.append(f"{channel} {event!r} {event}")
            if isinstance(event, BaseException):
                events.extend(error_texts(event))
        return record

    # a live run with faults (errors on the bus), logging through a custom logger
    clock = bk.replay_clock(source)
    srv = await binance_server_factory(source, now_ms=clock.now_ms)
    live = new_engine(tmp_path / "live", clock, CC_GET_CANDLES_RETRY_COUNT=2)
    live.set_logger(Recorder())
    exchange = attach(live, srv, api_key=KEY, secret=SECRET)
    # a backtest logging to the stdlib logger (caplog)
    srv2 = await binance_server_factory(source)
    back = new_engine(tmp_path / "back", **RETRY)
    attach(back, srv2, api_key=KEY, secret=SECRET)
    for engine in (live, back):
        engine.add_strategy(strategy_name="sma", interval="5m", get_signal=SMA.get_signal)
        for channel in bk.CHANNELS:
            getattr(engine, f"listen_{channel}")(recorder(channel))

    assert repr(exchange) == (
        "CcxtExchange(exchange_name='binance', exchange_id='binance', sandbox=False, api_key='***', secret='***')"
    )
    assert exchange.has_credentials
    end = clock.now_ms() + 3 * 60 * M
    handle: bk.CancelHandle | None = None

    def stop_at_end(result: bk.TickResult) -> None:
        nonlocal handle
        if clock.now_ms() >= end and handle is not None:
            handle()
            handle = None

    live.listen_signal_live(stop_at_end)
    for fault in ("503", "429", "html", "truncated", "empty", "503", "503"):
        srv.fail(fault)
    handle = live.live.background(SYMBOL, strategy_name="sma", exchange_name="binance")
    await handle.wait()
    first = source.first_timestamp(SYMBOL)
    back.add_frame(frame_name="f", interval="1m", start_date=dt(first + 60 * M), end_date=dt(first + 3 * 60 * M))
    srv2.fail("500")
    trades = [t async for t in back.backtest.run(SYMBOL, strategy_name="sma", exchange_name="binance",
                                                  frame_name="f")]
    assert trades, "the backtest should trade at least once"
    assert client_has_keys(exchange)  # the keys did reach the ccxt client...
    texts = [
        await live.live.get_report(SYMBOL, "sma"), await back.backtest.get_report(SYMBOL, "sma"),
        repr(live.list_exchanges()), repr(back.list_exchanges()), repr(exchange), str(exchange),
        repr(await live.live.get_data(SYMBOL, "sma")), repr(trades),
    ]
    await live.live.dump(SYMBOL, "sma", plot=False)  # (no matplotlib chart: slow, and holds no text)
    await back.backtest.dump(SYMBOL, "sma", plot=False)
    await live.close()
    await back.close()
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.suffix == ".md" for p in files)
    assert any("error" in e for e in events) and len(records) > 10 and caplog.records
    # ... and nowhere else: logs, events, reports, dumps and persisted state, reprs, requests
    assert not [r for r in records if leaks(r)]
    assert not [r.getMessage() for r in caplog.records if leaks(r.getMessage()) or leaks(repr(r.args))]
    assert not [e for e in events if leaks(e)]
    assert not [t for t in texts if leaks(t)]
    assert not [p for p in files if leaks(p.read_bytes().decode("utf-8", "replace"))]
    assert not [h for s in (srv, srv2) for h in s.headers if leaks(repr(h))]  # market data is public


def client_has_keys(exchange: CcxtExchange) -> bool:
    return bool(exchange._secrets()) and exchange._secrets()[:2] == [KEY, SECRET]


def test_error_messages_are_scrubbed_of_keys() -> None:
    exchange = CcxtExchange("x", "binance", api_key=KEY, secret=SECRET, password="pass-phrase-123")
    raw = ccxt.AuthenticationError(f'binance {{"msg": "bad key {KEY}", "sig": "{SECRET}", "p": "pass-phrase-123"}}')
    error = exchange._translate(raw, "fetch_ohlcv")
    assert isinstance(error, CcxtExchangeError) and not error.retryable
    assert "authentication failed" in str(error) and "***" in str(error)
    assert not leaks(str(error)) and "pass-phrase-123" not in str(error)
    rate = exchange._translate(ccxt.RateLimitExceeded("429"), "fetch_ohlcv")
    assert isinstance(rate, ExchangeRateLimitError) and rate.retryable
    assert isinstance(exchange._translate(ccxt.OnMaintenance("x"), "x"), ExchangeUnavailableError)
    assert isinstance(exchange._translate(ccxt.NetworkError("x"), "x"), ExchangeUnavailableError)
    assert type(exchange._translate(ccxt.BadSymbol("x"), "x")) is CcxtExchangeError


def test_keys_from_arguments_environment_and_env_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env = tmp_path / ".env"
    env.write_text(
        "# keys for the testnet\n"
        "export BINANCE_API_KEY='file-key'\n"
        'BINANCE_SECRET="file-\\"secret\\"" # trailing comment\n'
        "OTHER = plain value # comment\n"
        "\n"
        "EMPTY=\n",
        encoding="utf-8",
    )
    assert read_env_file(env) == {
        "BINANCE_API_KEY": "file-key", "BINANCE_SECRET": 'file-"secret"', "OTHER": "plain value", "EMPTY": "",
    }
    for name in ("BINANCE_API_KEY", "BINANCE_APIKEY", "BINANCE_SECRET", "BINANCE_API_SECRET",
                 "BINANCE_SECRET_KEY", "BINANCE_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    assert not CcxtExchange("a", "binance").has_credentials
    from_file = CcxtExchange("a", "binance", env_file=env)
    assert from_file._secrets() == ["file-key", 'file-"secret"']
    monkeypatch.setenv("BINANCE_API_KEY", "env-key")
    monkeypatch.setenv("BINANCE_API_SECRET", "env-secret")
    assert CcxtExchange("a", "binance", env_file=env)._secrets() == ["env-key", "env-secret"]
    args = CcxtExchange("a", "binance", api_key="arg-key", secret=Secret("arg-secret"), env_file=env)
    assert args._secrets() == ["arg-key", "arg-secret"]
    in_config = CcxtExchange("a", "binance", config={"apiKey": "cfg-key", "secret": "cfg-secret"})
    assert in_config._secrets() == ["cfg-key", "cfg-secret"] and "cfg" not in repr(in_config._config)
    assert "env-key" not in repr(from_file.__dict__) and "file-key" not in repr(from_file.__dict__)
    assert repr(Secret("x")) == "'***'" and f"{Secret('x')}" == "***" and str(Secret("x")) == "***"
    bad = tmp_path / "bad.env"
    bad.write_text("BINANCE_API_KEY=ok\nthis-line-is-a-secret-without-equals\n", encoding="utf-8")
    with pytest.raises(bk.SchemaError, match="line 2") as info:
        read_env_file(bad)
    assert "this-line" not in str(info.value)


async def test_credentials_reach_the_ccxt_client_only(tmp_path: Path, server: BinanceServer) -> None:
    engine = new_engine(tmp_path)
    exchange = attach(engine, server, api_key=KEY, secret=SECRET)
    await exchange.load_markets()
    client = exchange.client
    assert client.apiKey == KEY and client.secret == SECRET
    assert not leaks(repr(client))
    await engine.close()


def test_registration_is_validated(tmp_path: Path) -> None:
    with pytest.raises(bk.SchemaError, match="exchange_id"):
        CcxtExchange("x", "no-such-exchange")
    with pytest.raises(bk.SchemaError, match="markets_ttl"):
        CcxtExchange("x", markets_ttl=0)
    with pytest.raises(bk.SchemaError, match="candles_per_request"):
        CcxtExchange("x", candles_per_request=0)
    engine = new_engine(tmp_path)
    add_ccxt_exchange("dup", engine=engine)
    with pytest.raises(bk.SchemaError):
        add_ccxt_exchange("dup", engine=engine)


# ---------------------------------------------------------------------- lifecycle
async def test_the_engine_closes_the_client(tmp_path: Path, server: BinanceServer, source: bk.CsvCandles) -> None:
    engine = new_engine(tmp_path)
    exchange = attach(engine, server)
    assert exchange.client is None  # nothing is opened before first use
    first = source.first_timestamp(SYMBOL)
    await engine.exchange("binance").get_candles(SYMBOL, "1m", 5, first + 100 * M)
    client = exchange.client
    assert client is not None and client.session is not None
    await engine.close()
    assert exchange.client is None and client.session is None
    await exchange.close()  # twice is harmless
    # a later use opens a fresh client (and loads markets again); the next close closes it
    await exchange.get_candles(SYMBOL, "1m", dt(first), 5)
    assert exchange.client is not client and server.counts[EXCHANGE_INFO] == 2
    await engine.close()
    assert exchange.client is None

    # an exchange opened directly, without any run, is closed by the engine too (shutdown hook)
    engine2 = new_engine(tmp_path)
    exchange2 = attach(engine2, server, name="warm")
    await exchange2.load_markets()
    opened = exchange2.client
    await engine2.close()
    assert exchange2.client is None and opened.session is None


# ---------------------------------------------------------------------- end to end
LIVE_HOURS = 16


async def _live_trades(engine: bk.Engine, clock: bk.VirtualClock, end: int) -> list[bk.ClosedResult]:
    closed: list[bk.ClosedResult] = []
    errors: list[BaseException] = []
    engine.listen_error(errors.append)
    handle: bk.CancelHandle | None = None

    def on_tick(result: bk.TickResult) -> None:
        nonlocal handle
        if isinstance(result, bk.ClosedResult):
            closed.append(result)
        if clock.now_ms() >= end and handle is not None:
            handle()  # graceful: an open position still runs to its close
            handle = None

    engine.listen_signal_live(on_tick)
    handle = engine.live.background(SYMBOL, strategy_name="sma", exchange_name="ex")
    await handle.wait()
    assert errors == []
    return closed


def _same_trades(a: list[bk.ClosedResult], b: list[bk.ClosedResult]) -> None:
    assert [(t.signal.position, t.close_reason, t.close_timestamp) for t in a] == [
        (t.signal.position, t.close_reason, t.close_timestamp) for t in b]
    for x, y in zip(a, b, strict=True):
        # VWAP summed over fetched candles vs. the replay's prefix sums: equal up to float rounding
        assert x.signal.price_open == pytest.approx(y.signal.price_open, rel=1e-12)
        assert x.pnl.price_close == pytest.approx(y.pnl.price_close, rel=1e-12)
        assert x.pnl.pnl_percentage == pytest.approx(y.pnl.pnl_percentage, rel=1e-9, abs=1e-12)


async def test_live_through_ccxt_trades_like_the_replay_exchange(
    tmp_path: Path, binance_server_factory: Any, source: bk.CsvCandles
) -> None:
    first = source.first_timestamp(SYMBOL)
    end = first + LIVE_HOURS * 60 * M

    clock_a = bk.replay_clock(source)
    srv = await binance_server_factory(source, now_ms=clock_a.now_ms)
    engine_a = new_engine(tmp_path / "a", clock_a)
    exchange = attach(engine_a, srv, name="ex")
    engine_a.add_strategy(strategy_name="sma", interval="5m", get_signal=SMA.get_signal)
    via_ccxt = await _live_trades(engine_a, clock_a, end)
    await engine_a.close()

    clock_b = bk.replay_clock(source)
    engine_b = new_engine(tmp_path / "b", clock_b)
    engine_b.add_exchange(exchange_name="ex", get_candles=bk.ReplayExchange(source, clock_b))
    engine_b.add_strategy(strategy_name="sma", interval="5m", get_signal=SMA.get_signal)
    via_replay = await _live_trades(engine_b, clock_b, end)
    await engine_b.close()

    assert len(via_ccxt) >= 3
    _same_trades(via_ccxt, via_replay)
    assert clock_a.now_ms() == clock_b.now_ms()
    assert srv.counts[EXCHANGE_INFO] == 1 and exchange.markets_loads == 1  # once, over a day of ticks
    # every 1m tick asks the server for the candle that just closed; the candle store serves the rest
    assert srv.counts[KLINES] >= LIVE_HOURS * 60 * 0.6
    only_spot_endpoints(srv)
    assert exchange.client is None


async def test_backtest_through_ccxt_trades_like_csv_candles(
    tmp_path: Path, server: BinanceServer, source: bk.CsvCandles
) -> None:
    first = source.first_timestamp(SYMBOL)
    results: list[list[bk.ClosedResult]] = []
    for name, use_ccxt in (("ccxt", True), ("csv", False)):
        engine = new_engine(tmp_path / name)
        if use_ccxt:
            attach(engine, server, name="ex")
        else:
            engine.add_exchange(exchange_name="ex", get_candles=source)
        engine.add_strategy(strategy_name="sma", interval="5m", get_signal=SMA.get_signal)
        engine.add_frame(frame_name="f", interval="1m", start_date=dt(first) + timedelta(minutes=50),
                         end_date=dt(first) + timedelta(hours=12))
        trades = [t async for t in engine.backtest.run(SYMBOL, strategy_name="sma", exchange_name="ex",
                                                       frame_name="f")]
        results.append([t for t in trades if isinstance(t, bk.ClosedResult)])
        await engine.close()
    via_ccxt, via_csv = results
    assert len(via_ccxt) >= 2
    _same_trades(via_ccxt, via_csv)
    assert server.counts[EXCHANGE_INFO] == 1
    only_spot_endpoints(server)


async def test_the_live_example_runs_against_the_local_server(
    tmp_path: Path, binance_server_factory: Any, source: bk.CsvCandles, capsys: pytest.CaptureFixture[str]
) -> None:
    example = load_example("live_binance")
    clock = bk.replay_clock(source)
    srv = await binance_server_factory(source, now_ms=clock.now_ms)
    engine = new_engine(tmp_path, clock)
    exchange = example.register(engine, env_file=None, api_urls=srv.api_urls(), ccxt_config=FAST)
    assert isinstance(exchange, CcxtExchange) and exchange.sandbox is False
    await example.check(engine, exchange, SYMBOL)
    assert "average price" in capsys.readouterr().out
    ticks = 0

    async def stop_later(result: bk.TickResult) -> None:
        nonlocal ticks
        ticks += 1
        if ticks == 120:
            await engine.live.stop(SYMBOL, example.STRATEGY)

    engine.listen_signal_live(stop_later)
    await example.run(engine, SYMBOL, plot=False)
    assert (tmp_path / "dump" / "live" / f"{SYMBOL}_{example.STRATEGY}.md").is_file()
    assert exchange.client is None  # run() closed the engine
    only_spot_endpoints(srv)

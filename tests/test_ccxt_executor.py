"""`bk.CcxtExecutor` end to end: a live engine (VirtualClock) trading through the real ccxt client against
the local Binance-protocol server (tests/binance_server.py), which runs in this test's event loop.

What is proven here: a signal that opens and closes is exactly one entry and one exit order on the
server, and the fills (prices, fees) reach the statistics next to the model's PnL; a lost reply after
the entry filled still gives one entry and the right position; a refused entry (the pre-send balance
check, or the exchange's own -2010) is a `rejected` order event, the signal is dropped with its risk
slot released, and no position exists; a partially filled limit entry exits exactly what filled; paper
and ccxt give the same fill prices on the same candles for market orders; an order still unknown after
the bounded attempts is reported once and parked, never retried in a loop; the executor refuses to run
without trade=True, without keys, or against the wrong venue (sandbox).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from binance_server import ORDER, BinanceServer, Symbol
from helpers import T0, M, candles_from_path, concat, flat_candles, long, once

import backtest_kit as bk
from backtest_kit.adapters.ccxt import add_ccxt_exchange
from backtest_kit.execution import client_order_id
from backtest_kit.execution.ccxt_gateway import ATTENTION
from backtest_kit.reports.fill_stats import realized_pnl_percent

KEY = "vmPUZE6mv9SD5VNHk4HlWFsOr6aKE2zvsw0MuIgwCIPy6utIco14y7Ju91duEh8A"
SECRET = "NhqPtmdSJYdKjVHjA7PZj4Mge3R5YNiP1e3UZjInClVN65XAbvqqM6A7H5fATj0j"
SYMBOL = "BTCUSDT"
FAST: dict[str, Any] = {"enableRateLimit": False, "timeout": 2000, "timeout_on_exit": 0}


async def no_sleep(seconds: float) -> None:
    """The gateway's sleep in tests: spacing is the gateway's concern (tested there), not waiting."""


def rising() -> list[bk.Candle]:
    """Flat at 100 (30 minutes before T0 to T0+5), then +1 a minute up to 160: a long hits 110."""
    return concat(flat_candles(T0 - 30 * M, 35, 100.0),
                  candles_from_path(T0 + 5 * M, [100.0 + i for i in range(1, 61)]))


def memory(candles: list[bk.Candle]) -> bk.MemoryCandles:
    return bk.MemoryCandles.from_candles(
        SYMBOL, [[c.timestamp, c.open, c.high, c.low, c.close, c.volume] for c in candles], anomaly_factor=None)


class Live:
    """One live engine on a VirtualClock, its ccxt exchange on the server, and what it published."""

    def __init__(self, tmp_path: Path, server: BinanceServer, clock: bk.VirtualClock, get_signal: Any, *,
                 executor: Any, trade: bool = True, keys: bool = True, risk: bool = False,
                 exchange_name: str = "binance") -> None:
        self.clock = clock
        self.server = server
        self.engine = bk.Engine(clock=clock, persist_dir=tmp_path / "data", dump_dir=tmp_path / "dump")
        self.engine.set_config(CC_MIN_TAKEPROFIT_DISTANCE_PERCENT=0, CC_MIN_STOPLOSS_DISTANCE_PERCENT=0,
                               unsafe=True)
        credentials = {"api_key": KEY, "secret": SECRET} if keys else {}
        if exchange_name == "binance":
            self.exchange = add_ccxt_exchange("binance", "binance", engine=self.engine, api_urls=server.api_urls(),
                                              config=FAST, **credentials)
        if risk:
            self.engine.add_risk(risk_name="one", max_concurrent_positions=1)
        self.engine.add_strategy(strategy_name="s", interval="1m", get_signal=get_signal,
                                 risk_name="one" if risk else None)
        self.executor = executor
        self.engine.add_order_executor(strategy_name="s", executor=executor, trade=trade)
        self.orders: list[bk.OrderEvent] = []
        self.results: list[bk.TickResult] = []
        self.errors: list[BaseException] = []
        self.engine.listen_order(self.orders.append)
        self.engine.listen_error(self.errors.append)

    async def run(self, *, until: Callable[[list[bk.TickResult]], bool], max_ticks: int = 200) -> None:
        handle: bk.CancelHandle | None = None
        ticks = 0

        def on_tick(result: bk.TickResult) -> None:
            nonlocal handle, ticks
            self.results.append(result)
            ticks += 1
            if handle is not None and (until(self.results) or ticks >= max_ticks):
                handle()
                handle = None

        def on_error(error: BaseException) -> None:
            nonlocal handle
            if handle is not None and len(self.errors) >= 50:  # a run that only fails (e.g. data ran out)
                handle()
                handle = None

        self.engine.listen_signal_live(on_tick)
        self.engine.listen_error(on_error)
        handle = self.engine.live.background(SYMBOL, strategy_name="s", exchange_name="binance")
        await handle.wait()

    def of(self, kind: type[Any]) -> list[Any]:
        return [r for r in self.results if isinstance(r, kind)]

    async def close(self) -> None:
        await self.engine.close()


def closed_once(results: list[bk.TickResult]) -> bool:
    return any(isinstance(r, bk.ClosedResult | bk.CancelledResult) for r in results)


def executor(**kwargs: Any) -> bk.CcxtExecutor:
    options: dict[str, Any] = {"amount": 1.0, "retry_delay": 0.0, "resend_after": 0.0, "sleep": no_sleep, **kwargs}
    return bk.CcxtExecutor("binance", **options)


async def start(factory: Any, candles: list[bk.Candle], **kwargs: Any) -> tuple[BinanceServer, bk.VirtualClock]:
    clock = bk.VirtualClock(datetime.fromtimestamp(T0 / 1000, UTC))
    options: dict[str, Any] = {"balances": {"USDT": "10000", "BTC": "0"}, **kwargs}
    server = await factory(memory(candles), now_ms=clock.now_ms, api_keys={KEY: SECRET},
                           symbols={SYMBOL: Symbol(SYMBOL, "BTC", "USDT")}, **options)
    return server, clock


def btc(server: BinanceServer) -> float:
    """The account's BTC, free and locked in open orders."""
    return float(server.book.free.get("BTC", 0) + server.book.locked.get("BTC", 0))


def posts(server: BinanceServer) -> list[dict[str, str]]:
    return [q for method, q in server.order_requests if method == "POST"]


# ---------------------------------------------------------------------- open and close: one entry, one exit
async def test_a_signal_is_one_entry_and_one_exit_order_with_fills_in_the_statistics(
    tmp_path: Path, binance_server_factory: Any
) -> None:
    server, clock = await start(binance_server_factory, rising())
    live = Live(tmp_path, server, clock, once(long(110, 90, 120)), executor=executor())
    await live.run(until=closed_once)
    assert live.errors == []
    closed = live.of(bk.ClosedResult)
    assert len(closed) == 1 and closed[0].close_reason == "take_profit"
    signal = closed[0].signal
    entry_id, exit_id = client_order_id(signal.id, "entry"), client_order_id(signal.id, "exit")
    # exactly one order of each on the server, and nothing else
    assert [o.client_order_id for o in server.book.orders] == [entry_id, exit_id]
    entry, exit_ = server.book.orders
    assert (entry.side, entry.type, entry.status, float(entry.executed)) == ("BUY", "MARKET", "FILLED", 1.0)
    # the exit sells what the position holds: 1 BTC bought minus the 0.1% fee taken in BTC
    assert (exit_.side, exit_.type, exit_.status, float(exit_.executed)) == ("SELL", "MARKET", "FILLED", 0.999)
    assert float(server.book.free["BTC"]) == 0.0
    # the order events carry the exchange's ids and fills; fees in USDT
    filled = {e.role: e for e in live.orders if e.status == "filled"}
    assert filled["entry"].exchange_order_id == str(entry.order_id)
    assert filled["exit"].exchange_order_id == str(exit_.order_id)
    entry_price = float(entry.fills[0].price)
    exit_price = float(exit_.fills[0].price)
    assert filled["entry"].average_price == entry_price == 100.0  # the open of the candle at T0
    assert filled["entry"].filled == pytest.approx(0.999) and filled["entry"].fee == pytest.approx(0.1)
    assert filled["entry"].fee_currency == "USDT"
    assert filled["exit"].fee == pytest.approx(0.999 * exit_price * 0.001)
    # the statistics: realised PnL of the fills next to the model's
    stats = await live.engine.live.get_data(SYMBOL, "s")
    assert stats.filled_trades == 1 and stats.total_trades == 1
    fill = stats.fills[signal.id]
    fees = 0.1 + 0.999 * exit_price * 0.001
    assert fill.entry_price == entry_price and fill.exit_price == exit_price
    assert fill.realized_pnl == pytest.approx(realized_pnl_percent("long", 0.999, entry_price, exit_price, fees))
    assert fill.model_pnl == pytest.approx(closed[0].pnl.pnl_percentage)
    report = await live.engine.live.get_report(SYMBOL, "s")
    assert "Realized PNL (fills)" in report
    await live.close()


async def test_a_lost_reply_after_the_fill_is_still_one_entry_and_the_right_position(
    tmp_path: Path, binance_server_factory: Any
) -> None:
    server, clock = await start(binance_server_factory, rising())
    server.fail("lost", path=ORDER, method="POST")  # the entry is accepted and filled; its answer is lost
    live = Live(tmp_path, server, clock, once(long(110, 90, 120)), executor=executor())
    await live.run(until=closed_once)
    assert server.faults_served["lost"] == 1
    signal = live.of(bk.ClosedResult)[0].signal
    entry_id = client_order_id(signal.id, "entry")
    assert [p["newClientOrderId"] for p in posts(server)].count(entry_id) == 1  # looked up, never re-sent
    assert len(server.orders_for(entry_id)) == 1
    assert [(o.side, float(o.executed)) for o in server.book.orders] == [("BUY", 1.0), ("SELL", 0.999)]
    assert float(server.book.free["BTC"]) == 0.0  # flat: the position was exactly what filled
    stats = await live.engine.live.get_data(SYMBOL, "s")
    assert stats.filled_trades == 1
    await live.close()


# ---------------------------------------------------------------------- refusals
@pytest.mark.parametrize("where", ["before sending", "by the exchange"])
async def test_an_entry_refused_for_balance_is_reported_and_frees_the_risk_slot(
    tmp_path: Path, binance_server_factory: Any, where: str
) -> None:
    if where == "before sending":  # the gateway's own balance check: 50 USDT cannot buy 1 BTC at 100
        server, clock = await start(binance_server_factory, rising(), balances={"USDT": "50", "BTC": "0"})
    else:  # the exchange answers -2010 to the first order (the balance check is off)
        server, clock = await start(binance_server_factory, rising())
        server.fail("insufficient", path=ORDER, method="POST")
    signals = once(long(150, 85, 120), long(150, 85, 120))
    live = Live(tmp_path, server, clock, signals, risk=True,
                executor=executor(check_balance=where == "before sending"))
    await live.run(until=lambda results: len([r for r in results if isinstance(r, bk.OpenedResult)]) >= 2,
                   max_ticks=30)
    opened = live.of(bk.OpenedResult)
    first = opened[0].signal
    rejected = [e for e in live.orders if e.status == "rejected"]
    assert rejected[0].signal_id == first.id and rejected[0].role == "entry"
    assert rejected[0].reason and rejected[0].reason.startswith("refused (balance)")
    # the signal was dropped on the next tick: no position, and its risk slot went back...
    dropped = live.of(bk.CancelledResult)
    assert [c.signal.id for c in dropped][:1] == [first.id]
    # ...so the risk profile (one position at a time) let the second signal open
    assert len(opened) == 2 and opened[1].signal.id != first.id
    assert not any(isinstance(r, bk.ClosedResult) and r.signal.id == first.id for r in live.results)
    assert not server.orders_for(client_order_id(first.id, "exit"))  # never an exit without an entry
    if where == "by the exchange":
        assert server.orders_for(client_order_id(opened[1].signal.id, "entry"))[0].status == "FILLED"
    assert not [e for e in live.errors if "insufficient" not in str(e).lower()]
    await live.close()


async def test_a_refused_exit_is_reported_and_not_retried(tmp_path: Path, binance_server_factory: Any) -> None:
    server, clock = await start(binance_server_factory, rising())
    live = Live(tmp_path, server, clock, once(long(110, 90, 120)), executor=executor(check_balance=False))

    def refuse_the_exit(event: bk.OrderEvent) -> None:
        if event.role == "entry" and event.status == "filled":  # the next order sent is the exit
            server.fail("insufficient", path=ORDER, method="POST")

    live.engine.listen_order(refuse_the_exit)
    await live.run(until=lambda results: sum(isinstance(r, bk.ClosedResult) for r in results) == 1
                   and len(results) >= 10 + next(i for i, r in enumerate(results) if isinstance(r, bk.ClosedResult)))
    exits = [e for e in live.orders if e.role == "exit"]
    assert [e.status for e in exits] == ["rejected"]  # once: a refusal is not re-sent tick after tick
    assert [type(e).__name__ for e in live.errors] == ["OrderRejected"]  # the open position is reported
    assert [o.side for o in server.book.orders] == ["BUY"] and btc(server) == pytest.approx(0.999)
    await live.close()


# ---------------------------------------------------------------------- partial fills
async def test_a_partially_filled_limit_entry_exits_exactly_what_filled(
    tmp_path: Path, binance_server_factory: Any
) -> None:
    # limit buy at 99.5 for 2 BTC; the server fills at most 0.25 a candle; the price dips to 98.5 for 4
    # candles (1 BTC fills), then climbs: the signal closes at its take profit with 1 BTC of 2 bought
    dip = concat(flat_candles(T0 - 30 * M, 32, 100.0, spread=0.2),
                 flat_candles(T0 + 2 * M, 4, 98.5, spread=0.0),
                 candles_from_path(T0 + 6 * M, [100.0 + i for i in range(1, 40)]))
    server, clock = await start(binance_server_factory, dip, liquidity="0.25")
    live = Live(tmp_path, server, clock, once(long(110, 90, 120, price_open=99.5)), executor=executor(amount=2.0))
    await live.run(until=lambda results: closed_once(results) and btc(server) == 0.0)
    assert live.errors == []
    signal = live.of(bk.ClosedResult)[0].signal
    entry = server.orders_for(client_order_id(signal.id, "entry"))
    assert len(entry) == 1
    assert (entry[0].type, entry[0].status, float(entry[0].executed)) == ("LIMIT", "CANCELED", 1.0)
    statuses = [e.status for e in live.orders if e.role == "entry"]
    assert statuses[0] == "submitted" and "partially_filled" in statuses and statuses[-1] == "cancelled"
    # the market exit runs out of book too (0.25 a candle): each expired rest is sent again, under the
    # next attempt's id, until the position is flat — what the position held, not the 2 asked
    exits = [o for o in server.book.orders if o.side == "SELL"]
    assert [o.client_order_id for o in exits] == [client_order_id(signal.id, "exit", n) for n in range(4)]
    assert [float(o.executed) for o in exits] == [0.25, 0.25, 0.25, 0.249]
    assert btc(server) == 0.0
    stats = await live.engine.live.get_data(SYMBOL, "s")
    assert stats.filled_trades == 1 and stats.fills[signal.id].amount == pytest.approx(0.999)
    await live.close()


# ---------------------------------------------------------------------- paper vs ccxt
async def test_paper_and_ccxt_fill_market_orders_from_the_same_candles(
    tmp_path: Path, binance_server_factory: Any
) -> None:
    """Same candles, same signal, same model trade. Where the two venues agree: a market order fills at
    a candle's open, and the fee is 0.1% in USDT (`CC_PERCENT_FEE` 0.1 = the server's rate). Where they
    differ, by design: the exchange fills a market order at the open of the candle in progress when it
    arrives (it has not seen later prices), paper at the first candle opening at or after the order
    (the live clock ticks a little past each minute, so that is the next one); and the exchange takes
    the buy's fee in BTC, so the ccxt exit sells 0.999 where paper sells 1."""
    candles = rising()
    runs: dict[str, tuple[dict[str, bk.OrderEvent], bk.ClosedResult]] = {}
    for name in ("ccxt", "paper"):
        server, clock = await start(binance_server_factory, candles)
        chosen: Any = executor() if name == "ccxt" else bk.PaperExecutor(amount=1.0)
        live = Live(tmp_path / name, server, clock, once(long(110, 90, 120)), executor=chosen)
        live.engine.set_config(CC_PERCENT_FEE=0.1)
        # paper fills a market exit from the next closed candle: wait for it
        await live.run(until=lambda _, orders=live.orders: any(e.role == "exit" and e.status == "filled"
                                                                for e in orders))
        assert live.errors == []
        runs[name] = ({e.role: e for e in live.orders if e.status == "filled"}, live.of(bk.ClosedResult)[0])
        if name == "paper":
            assert server.book.orders == []  # paper never sends anything
        await live.close()
    (ccxt, closed), (paper, paper_closed) = runs["ccxt"], runs["paper"]
    assert (closed.close_timestamp, closed.pnl.pnl_percentage) == (
        paper_closed.close_timestamp, paper_closed.pnl.pnl_percentage)
    opens = {c.timestamp: c.open for c in candles}
    t = closed.close_timestamp
    assert t % M != 0  # the tick is past the minute: the two rules pick neighbouring candles
    assert ccxt["exit"].average_price == opens[t - t % M]
    assert paper["exit"].average_price == opens[t - t % M + M]
    assert ccxt["entry"].average_price == paper["entry"].average_price == 100.0  # flat: both rules agree
    assert ccxt["entry"].fee == pytest.approx(paper["entry"].fee) == pytest.approx(0.1)
    assert (ccxt["exit"].filled, paper["exit"].filled) == (pytest.approx(0.999), 1.0)
    for fills in (ccxt, paper):
        exit_ = fills["exit"]
        assert exit_.fee == pytest.approx(exit_.filled * (exit_.average_price or 0) * 0.001)


# ---------------------------------------------------------------------- unknown outcome: parked, not looped
async def test_an_order_still_unknown_after_the_attempts_is_reported_and_parked(
    tmp_path: Path, binance_server_factory: Any
) -> None:
    server, clock = await start(binance_server_factory, rising())
    server.fail("503", times=1000, path=ORDER)  # the order endpoint is down: every outcome stays unknown
    live = Live(tmp_path, server, clock, once(long(120, 85, 120)), executor=executor(attempts=3))
    await live.run(until=closed_once)
    ticks = len(live.results)
    assert ticks >= 20 and live.of(bk.ClosedResult)
    needs = [e for e in live.errors if type(e).__name__ == "OrderNeedsAttention"]
    # reported twice, each after its 3 bounded attempts: placing the entry, and cancelling it when the
    # signal closed (the one lifecycle point that asks the exchange again); never once per tick
    assert len(needs) == 2 and "still unknown after 3 attempts" in str(needs[0])
    parked = [e for e in live.orders if e.reason and e.reason.startswith(ATTENTION)]
    assert len(parked) == 1 and parked[0].status == "submitted" and parked[0].role == "entry"
    assert set(live.executor.needs_attention) == {parked[0].signal_id}
    assert server.faults_served["503"] == len(server.methods) - server.counts["/api/v3/klines"] - \
        server.counts["/api/v3/exchangeInfo"] - server.counts["/api/v3/account"] <= 6
    assert server.book.orders == []  # the 503s answered before any order existed: no exit either
    await live.close()


# ---------------------------------------------------------------------- safety
async def test_no_order_without_trade_true(tmp_path: Path, binance_server_factory: Any) -> None:
    server, clock = await start(binance_server_factory, rising())
    with pytest.raises(bk.ConfigError, match="trade=True"):
        Live(tmp_path, server, clock, once(long(110, 90, 120)), executor=executor(), trade=False)
    assert server.order_requests == []


async def test_refused_without_keys_with_a_clear_error(tmp_path: Path, binance_server_factory: Any,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("BINANCE_API_KEY", "BINANCE_APIKEY", "BINANCE_SECRET", "BINANCE_API_SECRET", "BINANCE_SECRET_KEY"):
        monkeypatch.delenv(name, raising=False)
    server, clock = await start(binance_server_factory, rising())
    live = Live(tmp_path, server, clock, once(long(110, 90, 120)), executor=executor(), keys=False)
    await live.run(until=lambda results: len(results) >= 3)
    assert any("no API key and secret" in str(e) for e in live.errors)
    assert server.order_requests == []
    await live.close()


@pytest.mark.parametrize("sandbox", [True, False])
async def test_sandbox_must_match_the_exchange(tmp_path: Path, binance_server_factory: Any, sandbox: bool) -> None:
    server, clock = await start(binance_server_factory, rising())
    live = Live(tmp_path, server, clock, once(long(110, 90, 120)), executor=executor(sandbox=sandbox))
    await live.run(until=lambda results: len(results) >= 3)
    refused = [e for e in live.errors if "sandbox" in str(e)]
    assert bool(refused) is sandbox  # the registered exchange is not in sandbox mode
    await live.close()


def test_constructor_checks_its_arguments() -> None:
    with pytest.raises(bk.SchemaError, match="cost"):
        bk.CcxtExecutor("binance", cost=-1)
    with pytest.raises(bk.SchemaError, match="exchange"):
        bk.CcxtExecutor(42)  # type: ignore[arg-type]
    assert bk.CcxtExecutor("binance").places_real_orders is True
    assert "CcxtExecutor('binance'" in repr(bk.CcxtExecutor("binance", cost=100))


# ---------------------------------------------------------------------- the CLI: --trade
CLI_STRATEGY = """
import json, os
import backtest_kit as bk
from backtest_kit.adapters.ccxt import add_ccxt_exchange

def get_signal(symbol, when):
    print("signal asked", flush=True)
    return bk.SignalDto(position="long", price_take_profit=500.0, price_stop_loss=90.0, minute_estimated_time=600)

def register(engine, csv_path=None):
    keys = {"api_key": os.environ["BK_KEY"], "secret": os.environ["BK_SECRET"]} if "BK_KEY" in os.environ else {}
    add_ccxt_exchange("binance", "binance", engine=engine, api_urls=json.loads(os.environ["BK_API_URLS"]),
                      config={"enableRateLimit": False, "timeout": 5000}, **keys)
    engine.add_sizing(sizing_name="one", get_quantity=lambda symbol, signal, price: 0.5)
    engine.add_strategy(strategy_name="cli", interval="1m", get_signal=get_signal, sizing_name="one")
    engine.listen_signal_live(lambda result: print("tick", result.action, flush=True))
    return "BTCUSDT"
"""


@pytest.mark.parametrize("trade", [False, True])
async def test_cli_live_sends_orders_only_with_trade(tmp_path: Path, binance_server_factory: Any, trade: bool) -> None:
    import asyncio
    import json
    import os
    import sys
    import time

    now = int(time.time() * 1000)
    start = now - now % M - 120 * M
    server = await binance_server_factory(memory(flat_candles(start, 240, 100.0)), api_keys={KEY: SECRET},
                                          balances={"USDT": "10000", "BTC": "0"},
                                          symbols={SYMBOL: Symbol(SYMBOL, "BTC", "USDT")})
    (tmp_path / "strat.py").write_text(CLI_STRATEGY)
    env = {**os.environ, "BK_API_URLS": json.dumps(server.api_urls()), "BK_KEY": KEY, "BK_SECRET": SECRET,
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    args = ["-m", "backtest_kit", "live", "strat.py", "-c", "CC_TICK_TTL_MS=50", "--no-plot", "--no-progress",
            *(["--trade"] if trade else [])]
    with (tmp_path / "stderr.txt").open("w") as stderr:
        proc = await asyncio.create_subprocess_exec(sys.executable, *args, cwd=tmp_path, env=env,
                                                    stdout=asyncio.subprocess.PIPE, stderr=stderr)
    assert proc.stdout is not None
    lines: list[str] = []
    try:
        # ticks are awaited one after the other: once three ticks after the position opened were seen,
        # the opened tick's order executor (if any) has long been through its entry
        while sum(line == "tick active" for line in lines) < 3:
            line = (await proc.stdout.readline()).decode()
            assert line, f"the CLI ended early: {(tmp_path / 'stderr.txt').read_text()[-2000:]}"
            lines.append(line.strip())
    finally:
        proc.kill()
        await proc.wait()
    assert "tick opened" in lines and lines.count("signal asked") == 1
    entries = [q for method, q in server.order_requests if method == "POST"]
    if trade:
        assert len(entries) == 1 and entries[0]["side"] == "BUY" and entries[0]["quantity"] == "0.5"
        assert entries[0]["newClientOrderId"].startswith("bke0-")
    else:
        assert server.order_requests == [] and server.book.orders == []  # no --trade: nothing is ever sent


def test_cli_trade_is_refused_without_keys_or_with_a_replay(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    (tmp_path / "strat.py").write_text(CLI_STRATEGY)
    env = {k: v for k, v in os.environ.items() if not k.startswith("BINANCE_")}
    env.update(BK_API_URLS='{"public": "http://127.0.0.1:9/api/v3"}',
               PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    proc = subprocess.run([sys.executable, "-m", "backtest_kit", "live", "strat.py", "--trade", "--no-progress"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "has no API key and secret" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "backtest_kit", "live", "--trade", "--replay", "x.csv"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "neither --replay nor --paper" in proc.stderr


# ---------------------------------------------------------------------- examples/trade_testnet.py
def test_the_testnet_example_exits_with_a_clear_message_without_keys(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("BINANCE_")}
    env["PYTHONPATH"] = str(root)
    proc = subprocess.run([sys.executable, str(root / "examples" / "trade_testnet.py")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "set BINANCE_API_KEY and BINANCE_SECRET" in proc.stderr and "nothing was sent" in proc.stderr
    assert not (tmp_path / "testnet-state").exists()


async def test_the_testnet_example_trades_against_the_local_server(tmp_path: Path, binance_server_factory: Any,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from helpers import load_example

    example = load_example("trade_testnet_example", "trade_testnet.py")
    monkeypatch.setenv("BINANCE_API_KEY", KEY)
    monkeypatch.setenv("BINANCE_SECRET", SECRET)
    assert example.missing_keys() == []
    server, clock = await start(binance_server_factory, rising())
    engine = bk.Engine(clock=clock, persist_dir=tmp_path / "data", dump_dir=tmp_path / "dump")
    engine.set_config(CC_MIN_TAKEPROFIT_DISTANCE_PERCENT=0, unsafe=True)
    exchange = example.register(engine, amount=0.1, sandbox=False, api_urls=server.api_urls(), ccxt_config=FAST)
    assert exchange.sandbox is False
    closed: list[bk.ClosedResult] = []
    handle = engine.live.background(SYMBOL, strategy_name=example.STRATEGY, exchange_name=example.EXCHANGE)

    def on_tick(result: bk.TickResult) -> None:
        if isinstance(result, bk.ClosedResult):
            closed.append(result)
            handle()

    engine.listen_signal_live(on_tick)
    await handle.wait()
    await engine.close()
    assert len(closed) == 1
    assert [(o.side, float(o.executed)) for o in server.book.orders] == [("BUY", 0.1), ("SELL", 0.0999)]

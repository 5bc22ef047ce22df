"""Order execution (issue 16): client order ids, the paper executor in both modes, realised vs model PnL,
the journal's exactly-once rules on restart, and executors that fail or place real orders."""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from typing import Any

import msgspec
import pytest
from helpers import (
    T0,
    M,
    MemoryPersist,
    candles_from_path,
    concat,
    dt,
    flat_candles,
    long,
    make_engine,
    once,
    setup,
    short,
)
from hypothesis import given, settings
from hypothesis import strategies as st

import backtest_kit as bk
from backtest_kit.engine.persist import ENTITY_ORDERS
from backtest_kit.execution import (
    JournaledExecutor,
    OrderJournal,
    OrderRecord,
    PaperExecutor,
    client_order_id,
    parse_client_order_id,
)
from backtest_kit.reports.fill_stats import FillBook, realized_pnl_percent

CHARSET = re.compile(r"^[.A-Z:/a-z0-9_-]{1,36}$")
ROLES = st.sampled_from(["entry", "exit", "cancel"])


# ------------------------------------------------------------------------------------- client order ids
@given(st.text(min_size=1, max_size=200), ROLES, st.integers(0, 36**10 - 1))
def test_client_order_id_fits_binance_and_parses_back(signal_id: str, role: Any, attempt: int) -> None:
    value = client_order_id(signal_id, role, attempt)
    assert CHARSET.match(value), value
    assert value == client_order_id(signal_id, role, attempt)  # deterministic
    parsed = parse_client_order_id(value)
    assert parsed is not None and parsed[:2] == (role, attempt)


@settings(max_examples=300)
@given(st.lists(st.tuples(st.text(min_size=1, max_size=40), ROLES, st.integers(0, 50)), min_size=2, max_size=30,
                unique=True))
def test_client_order_id_is_injective(keys: list[tuple[str, Any, int]]) -> None:
    ids = [client_order_id(*k) for k in keys]
    assert len(set(ids)) == len(keys)


@pytest.mark.parametrize(("args", "field"), [
    (("", "entry", 0), "signal_id"), (("s", "buy", 0), "role"), (("s", "entry", -1), "attempt"),
    (("s", "entry", True), "attempt"), (("s", "exit", 36**10), "attempt"),
])
def test_client_order_id_errors_name_the_field_and_value(args: tuple[Any, ...], field: str) -> None:
    with pytest.raises(bk.SchemaError, match=field):
        client_order_id(*args)


def test_parse_rejects_foreign_and_non_canonical_ids() -> None:
    tag = client_order_id("s", "entry").split("-", 1)[1]
    assert parse_client_order_id("x123") is None
    assert parse_client_order_id(f"bke00-{tag}") is None


# ------------------------------------------------------------------------------------- paper, backtest
def _rising() -> list[bk.Candle]:
    return concat(flat_candles(T0 - 10 * M, 15, 100.0),
                  candles_from_path(T0 + 5 * M, [100.0 + i for i in range(1, 40)]))


async def _backtest(candles: list[bk.Candle], signal: Any, *, executor: Any = None, minutes: int = 30,
                    ) -> tuple[Any, list[bk.OrderEvent], bk.Statistics, str]:
    engine = make_engine()
    h = setup(engine, candles, once(signal), minutes=minutes)
    orders: list[bk.OrderEvent] = []
    if executor is not None:
        engine.add_order_executor(strategy_name="s", executor=executor)
    engine.listen_order(orders.append)
    await h.run()
    stats = await engine.backtest.get_data("BTCUSDT", "s")
    report = await engine.backtest.get_report("BTCUSDT", "s")
    await engine.close()
    return h, orders, stats, report


def _candle_at(candles: Sequence[bk.Candle], ts: int) -> bk.Candle:
    return next(c for c in candles if c.timestamp == ts)


async def test_paper_market_fills_at_next_candle_open_and_stats_show_realised_next_to_model() -> None:
    candles = _rising()
    h, orders, stats, report = await _backtest(candles, long(105, 90, 60), executor=PaperExecutor(amount=2))
    assert h.errors == []
    closed = h.by_action("closed")[0]
    assert isinstance(closed, bk.ClosedResult)
    entry, exit_ = orders
    assert (entry.role, entry.side, entry.status, entry.filled) == ("entry", "buy", "filled", 2.0)
    assert entry.average_price == _candle_at(candles, closed.signal.pending_at).open
    assert (exit_.role, exit_.side, exit_.status, exit_.filled) == ("exit", "sell", "filled", 2.0)
    assert exit_.average_price == _candle_at(candles, closed.close_timestamp).open
    assert entry.fee == pytest.approx(entry.average_price * 2 * 0.1 / 100)  # CC_PERCENT_FEE of the reference
    assert entry.client_order_id == client_order_id(closed.signal.id, "entry")
    realized = realized_pnl_percent("long", 2.0, entry.average_price, exit_.average_price, entry.fee + exit_.fee)
    assert stats.filled_trades == 1
    assert stats.realized_pnl == pytest.approx(realized)
    assert stats.fill_slippage == pytest.approx(realized - closed.pnl.pnl_percentage)
    assert stats.total_pnl == closed.pnl.pnl_percentage  # the model figure is untouched
    assert "| Fill PNL | Slippage |" in report and "**Realized PNL (fills):**" in report


async def test_without_an_executor_statistics_and_report_are_unchanged() -> None:
    candles = _rising()
    _, orders, plain, plain_report = await _backtest(candles, long(105, 90, 60))
    _, _, paper, _ = await _backtest(candles, long(105, 90, 60), executor=PaperExecutor())
    assert orders == [] and plain.filled_trades == 0 and plain.fills == {} and plain.realized_pnl is None
    assert "Fill PNL" not in plain_report and "Realized" not in plain_report
    strip = {"filled_trades": 0, "realized_pnl": None, "fill_slippage": None, "fills": {}, "signals": [],
             "events": []}
    assert msgspec.structs.replace(paper, **strip) == msgspec.structs.replace(plain, **strip)


async def test_paper_limit_fills_on_touch_and_short_exit_buys() -> None:
    # price 100, dips to a low of 97 at +8 min: a short limit at 103 is never touched, a long at 98 is
    dip = [100.0] * 6 + [99.0, 98.5, 97.5, 99.0] + [100.0 + i for i in range(1, 30)]
    candles = concat(flat_candles(T0 - 10 * M, 10, 100.0), candles_from_path(T0, dip, spread=0.5))
    h, orders, stats, _ = await _backtest(candles, long(104, 90, 120, price_open=98.0),
                                          executor=PaperExecutor(), minutes=60)
    assert h.errors == []
    assert (orders[0].role, orders[0].status) == ("entry", "submitted")
    entry = orders[1]
    touched = next(c for c in candles if c.timestamp >= T0 and c.low <= 98.0)
    assert (entry.type, entry.price, entry.status, entry.average_price) == ("limit", 98.0, "filled",
                                                                            min(98.0, touched.open))
    assert entry.timestamp == touched.timestamp
    assert [(o.role, o.status) for o in orders[1:]] == [("entry", "filled"), ("exit", "filled")]
    assert stats.filled_trades == 1

    rising = concat(flat_candles(T0 - 10 * M, 10, 100.0), candles_from_path(T0, [100.0 - i * 0.2 for i in range(60)]))
    _, orders, stats, _ = await _backtest(rising, short(95, 130, 60), executor=PaperExecutor(), minutes=60)
    assert [(o.role, o.side) for o in orders] == [("entry", "sell"), ("exit", "buy")]
    assert stats.realized_pnl is not None and stats.realized_pnl > 0


async def test_paper_limit_expiry_cancels_the_entry_and_places_no_exit() -> None:
    candles = flat_candles(T0 - 10 * M, 200, 100.0, spread=0.5)
    engine = make_engine(CC_SCHEDULE_AWAIT_MINUTES=5)
    h = setup(engine, candles, once(long(110, 80, 60, price_open=95.0)), minutes=30)
    orders: list[bk.OrderEvent] = []
    engine.add_order_executor(strategy_name="s", executor=PaperExecutor())
    engine.listen_order(orders.append)
    await h.run()
    assert [r.action for r in h.events if r.action != "idle"][-1] == "cancelled"
    assert [(o.role, o.status) for o in orders] == [("entry", "submitted"), ("entry", "cancelled")]
    assert orders[1].filled == 0 and (await engine.backtest.get_data("BTCUSDT", "s")).filled_trades == 0


# ------------------------------------------------------------------------------------- paper, live replay
def _live_engine(persist: MemoryPersist, candles: list[bk.Candle], signal_fn: Any, end: int) -> tuple[bk.Engine, Any]:
    clock = bk.VirtualClock(dt(T0))
    engine = make_engine(clock=clock, persist=persist)
    source = bk.MemoryCandles({"BTCUSDT": candles})
    engine.add_exchange(exchange_name="mem", get_candles=bk.ReplayExchange(source, clock, end=end))
    engine.add_strategy(strategy_name="s", interval="1m", get_signal=signal_fn)
    return engine, clock


async def test_live_replay_events_come_in_order_submitted_then_filled() -> None:
    candles = _rising()
    engine, _ = _live_engine(MemoryPersist(), candles, once(long(110, 90, 60)), T0 + 30 * M)
    engine.add_order_executor(strategy_name="s", executor=PaperExecutor())
    orders: list[bk.OrderEvent] = []
    errors: list[BaseException] = []
    engine.listen_order(orders.append)
    engine.listen_error(errors.append)
    handle = engine.live.background("BTCUSDT", strategy_name="s", exchange_name="mem")
    await handle.wait()
    stats = await engine.live.get_data("BTCUSDT", "s")
    report = await engine.live.get_report("BTCUSDT", "s")
    await engine.close()
    assert errors == []
    assert [(o.role, o.status) for o in orders] == [("entry", "submitted"), ("entry", "filled"),
                                                    ("exit", "submitted"), ("exit", "filled")]
    assert all(a.timestamp <= b.timestamp for a, b in itertools.pairwise(orders))
    assert orders[1].timestamp >= orders[0].timestamp  # the fill comes from a candle after the order
    assert stats.filled_trades == 1 and "Fill PNL" in report


class ExplodingExecutor(PaperExecutor):
    async def on_signal(self, event: bk.SignalLifecycleEvent) -> None:
        raise RuntimeError(f"boom on {event.kind}")

    async def poll(self, symbol: str, now_ms: int, *, backtest: bool) -> None:
        raise RuntimeError("poll boom")


async def test_an_executor_that_raises_never_stops_the_engine() -> None:
    candles = _rising()
    plain, _, plain_stats, _ = await _backtest(candles, long(105, 90, 60))
    h, orders, stats, _ = await _backtest(candles, long(105, 90, 60), executor=ExplodingExecutor())
    assert orders == [] and stats.total_pnl == plain_stats.total_pnl
    assert [r.action for r in h.events] == [r.action for r in plain.events]
    assert {str(e) for e in h.errors} >= {"boom on opened", "boom on closed", "poll boom"}


# ------------------------------------------------------------------------------------- real orders, restart
class RecordingGateway:
    """A venue in memory: counts placements per client order id, can lose replies or forget orders."""

    def __init__(self, *, real: bool = True) -> None:
        self.real = real
        self.orders: dict[str, bk.OrderEvent] = {}
        self.placed: list[str] = []
        self.fetched: list[str] = []
        self.lose_reply = False

    @property
    def places_real_orders(self) -> bool:
        return self.real

    def _event(self, r: bk.OrderRequest, status: Any, filled: float) -> bk.OrderEvent:
        return bk.OrderEvent(signal_id=r.signal_id, role=r.role, client_order_id=r.client_order_id,
                             exchange_order_id=f"x-{r.client_order_id}", symbol=r.symbol,
                             strategy_name=r.strategy_name, exchange_name=r.exchange_name, side=r.side,
                             type=r.type, price=r.price, amount=r.amount, filled=filled,
                             average_price=100.0 if filled else None, fee=0.0, status=status, timestamp=r.timestamp)

    async def place(self, request: bk.OrderRequest) -> bk.OrderEvent:
        if request.client_order_id not in self.orders:
            self.placed.append(request.client_order_id)
            filled = request.type == "market"
            self.orders[request.client_order_id] = self._event(
                request, "filled" if filled else "submitted", request.amount if filled else 0.0)
        if self.lose_reply:
            raise TimeoutError("reply lost")
        return self.orders[request.client_order_id]

    async def fetch(self, request: bk.OrderRequest) -> bk.OrderEvent | None:
        if self.lose_reply:
            raise TimeoutError("venue unreachable")
        self.fetched.append(request.client_order_id)
        return self.orders.get(request.client_order_id)

    async def cancel(self, request: bk.OrderRequest) -> bk.OrderEvent:
        current = self.orders.get(request.client_order_id)
        if current is None or current.status == "submitted":
            current = self._event(request, "cancelled", 0.0)
            self.orders[request.client_order_id] = current
        return current


def test_a_real_executor_needs_trade_true() -> None:
    engine = make_engine()
    engine.add_strategy(strategy_name="s", interval="1m", get_signal=lambda s, w: None)
    with pytest.raises(bk.ConfigError, match="trade=True"):
        engine.add_order_executor(strategy_name="s", executor=JournaledExecutor(RecordingGateway()))
    engine.add_order_executor(strategy_name="s", executor=JournaledExecutor(RecordingGateway()), trade=True)
    with pytest.raises(bk.SchemaError, match="already has an order executor"):
        engine.add_order_executor(strategy_name="s", executor=PaperExecutor())
    with pytest.raises(bk.SchemaError, match="OrderExecutor"):
        engine.add_order_executor(strategy_name="s", executor=object())  # type: ignore[arg-type]


async def test_a_real_executor_refuses_to_start_without_trade_even_when_called_directly() -> None:
    engine = make_engine()
    context = bk.ExecutorContext(strategy_name="s", publish=_no_publish, persist=lambda: MemoryPersist(),
                                 exchange=engine.exchange, config=engine.get_config, now_ms=engine.now_ms,
                                 report_error=engine.report_error, logger=engine.logger, trade=False)
    with pytest.raises(bk.ConfigError, match="trade=True"):
        await JournaledExecutor(RecordingGateway()).start(context)


async def _no_publish(event: bk.OrderEvent) -> None:
    return None


async def test_a_real_executor_never_sees_backtests() -> None:
    gateway = RecordingGateway()
    engine = make_engine()
    h = setup(engine, _rising(), once(long(105, 90, 60)), minutes=30)
    engine.add_order_executor(strategy_name="s", executor=JournaledExecutor(gateway, amount=1), trade=True)
    await h.run()
    assert gateway.placed == [] and gateway.fetched == [] and h.by_action("closed")


async def test_restart_reconciles_an_unanswered_intent_once_and_never_doubles_the_entry() -> None:
    persist = MemoryPersist()
    candles = flat_candles(T0 - 10 * M, 400, 100.0)
    # run 1: the entry's reply is lost and the venue stays unreachable until the process ends
    gateway = RecordingGateway()
    gateway.lose_reply = True
    engine, _ = _live_engine(persist, candles, once(long(200, 50, 600)), T0 + 2 * M)
    engine.add_order_executor(strategy_name="s", executor=JournaledExecutor(gateway, amount=1), trade=True)
    await engine.live.background("BTCUSDT", strategy_name="s", exchange_name="mem").wait()
    await engine.close()
    entry_id = gateway.placed[0]
    stored = msgspec.json.decode(persist.data[(ENTITY_ORDERS, entry_id)], type=OrderRecord)
    assert stored.request.role == "entry"
    # run 2 (same venue, same persist): the open position is restored, its entry fetched, not re-placed
    gateway.lose_reply = False
    gateway.fetched.clear()
    restores: list[tuple[str, list[str]]] = []

    class Counting(JournaledExecutor):
        async def restore(self, symbol: str, open_signals: Sequence[bk.SignalRow], *, backtest: bool) -> None:
            restores.append((symbol, [s.id for s in open_signals]))
            await super().restore(symbol, open_signals, backtest=backtest)

    engine, _ = _live_engine(persist, candles, lambda s, w: None, T0 + 10 * M)
    orders: list[bk.OrderEvent] = []
    engine.listen_order(orders.append)
    engine.add_order_executor(strategy_name="s", executor=Counting(gateway, amount=1), trade=True)
    await engine.live.background("BTCUSDT", strategy_name="s", exchange_name="mem").wait()
    await engine.close()
    assert restores == [("BTCUSDT", [stored.request.signal_id])]
    assert gateway.placed == [entry_id]  # never placed twice
    assert gateway.fetched[0] == entry_id
    assert [(o.client_order_id, o.status) for o in orders] == [(entry_id, "filled")]


async def test_a_lost_entry_of_a_signal_no_longer_open_is_rejected_not_placed() -> None:
    persist = MemoryPersist()
    journal = OrderJournal(lambda: persist, _no_report)
    request = bk.OrderRequest(client_order_id=client_order_id("gone", "entry"), signal_id="gone", role="entry",
                              symbol="BTCUSDT", strategy_name="s", exchange_name="mem", side="buy",
                              type="market", amount=1.0, timestamp=T0)
    await journal.intend(request)
    gateway = RecordingGateway()
    engine = make_engine(persist=persist)
    engine.add_strategy(strategy_name="s", interval="1m", get_signal=lambda s, w: None)
    executor = JournaledExecutor(gateway, amount=1)
    published: list[bk.OrderEvent] = []

    async def publish(event: bk.OrderEvent) -> None:
        published.append(event)

    await executor.start(bk.ExecutorContext(
        strategy_name="s", publish=publish, persist=lambda: persist, exchange=engine.exchange,
        config=engine.get_config, now_ms=engine.now_ms, report_error=engine.report_error, logger=engine.logger,
        trade=True))
    await executor.restore("BTCUSDT", [], backtest=False)
    assert gateway.placed == [] and [e.status for e in published] == ["rejected"]
    assert "no longer open" in (published[0].reason or "")


async def _no_report(exc: BaseException) -> None:
    raise AssertionError(exc)


# ------------------------------------------------------------------------------------- fill maths
def _fill_event(signal_id: str, role: Any, side: Any, price: float, amount: float, fee: float,
                attempt: int = 0) -> bk.OrderEvent:
    return bk.OrderEvent(signal_id=signal_id, role=role, client_order_id=client_order_id(signal_id, role, attempt),
                         exchange_order_id="1", symbol="X", strategy_name="s", exchange_name="e", side=side,
                         type="market", price=None, amount=amount, filled=amount, average_price=price, fee=fee,
                         status="filled", timestamp=0)


prices = st.floats(1.0, 1e5, allow_nan=False)


@given(prices, prices, st.floats(0.001, 100), st.sampled_from(["long", "short"]), st.permutations([0, 1, 2]))
def test_realised_pnl_is_the_same_in_any_arrival_order(entry: float, exit_: float, amount: float, position: Any,
                                                        order: list[int]) -> None:
    from helpers import closed_result, trade_signal

    sig = trade_signal("sig", T0, position=position, price_open=entry)
    closed = closed_result(sig, 1.5, T0 + M)
    buy, sell = ("buy", "sell") if position == "long" else ("sell", "buy")
    fee_in, fee_out = entry * amount * 0.001, exit_ * amount * 0.001
    steps = [lambda b: b.add_closed(closed),
             lambda b: b.add_order(_fill_event("sig", "entry", buy, entry, amount, fee_in)),
             lambda b: b.add_order(_fill_event("sig", "exit", sell, exit_, amount, fee_out))]
    book = FillBook()
    for i in order:
        steps[i](book)
    assert book.count == 1
    fill = book.rows["sig"]
    sign = 1 if position == "long" else -1
    expected = (sign * (exit_ - entry) * amount - fee_in - fee_out) / (entry * amount) * 100
    assert fill.realized_pnl == pytest.approx(expected, rel=1e-9, abs=1e-9)
    assert fill.slippage == pytest.approx(expected - 1.5, rel=1e-9, abs=1e-9)
    book.add_order(_fill_event("sig", "exit", sell, exit_, amount, fee_out))  # a late duplicate: no change
    assert book.count == 1


def test_a_trade_counts_only_once_its_whole_entry_left() -> None:
    from helpers import closed_result, trade_signal

    book = FillBook()
    book.add_closed(closed_result(trade_signal("a", T0), 1.0, T0 + M))
    book.add_order(_fill_event("a", "entry", "buy", 100.0, 2.0, 0.0))
    book.add_order(_fill_event("a", "exit", "sell", 101.0, 1.0, 0.0))
    assert book.count == 0
    book.add_order(_fill_event("a", "exit", "sell", 103.0, 1.0, 0.0, attempt=1))
    assert book.count == 1 and book.rows["a"].exit_price == pytest.approx(102.0)

"""The end of a replay (item 17), positions open at the end of the data (item 16), report names (item 18).

Everything runs on the bundled BTCUSDT week (or a slice of it) on fresh engines with a `VirtualClock`;
guards against a run that never ends use `asyncio.wait_for`, never a sleep.
"""

from __future__ import annotations

import asyncio
import importlib.util
import math
import re
import sys
from datetime import datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from helpers import row
from hypothesis import given, settings
from hypothesis import strategies as st

import backtest_kit as bk
from backtest_kit import demo
from backtest_kit.engine.lifecycle import pnl_of
from backtest_kit.reports.mode_stats import LiveStats, with_open_position
from backtest_kit.reports.report import format_signed_percent, open_position_line

SYMBOL = "BTCUSDT"
GUARD = 120  # seconds: only hit when a run never ends (the bug); a normal run takes well under one
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def sample() -> bk.CsvCandles:
    return bk.CsvCandles(bk.bundled_sample_path())


def first_minutes(minutes: int) -> bk.MemoryCandles:
    source = sample()
    first = source.first_timestamp(SYMBOL)
    return bk.MemoryCandles({SYMBOL: list(source.next_candles(SYMBOL, "1m", first, minutes))})


def replay_engine(tmp_path: Path, source: bk.MemoryCandles, get_signal: Any, *, interval: str = "1m",
                  end: datetime | int | None = None) -> tuple[bk.Engine, bk.ReplayExchange, bk.VirtualClock]:
    clock = bk.replay_clock(source, SYMBOL)
    engine = bk.Engine(clock=clock, persist_dir=tmp_path / "data", dump_dir=tmp_path / "dump")
    exchange = bk.ReplayExchange(source, clock, end=end)
    engine.add_exchange(exchange_name="replay", get_candles=exchange)
    engine.add_strategy(strategy_name="s", interval=interval, get_signal=get_signal)
    return engine, exchange, clock


def nothing(symbol: str, when: datetime) -> None:
    return None


async def hold_forever(symbol: str, when: datetime) -> bk.SignalDto:
    """A long with TP / SL 15 % away and a day to live: over a few hours of the sample it stays open."""
    price = await bk.get_average_price(symbol)
    return bk.SignalDto(position="long", price_take_profit=price * 1.15, price_stop_loss=price * 0.85,
                        minute_estimated_time=1440)


# ---------------------------------------------------------------------------------------------------------
# Item 17: a replay ends with its data
# ---------------------------------------------------------------------------------------------------------


async def test_a_replay_ends_once_at_the_first_tick_past_its_data(tmp_path: Path) -> None:
    source = first_minutes(600)
    engine, exchange, clock = replay_engine(tmp_path, source, nothing)
    ticks: list[int] = []
    done: list[bk.DoneEvent] = []
    engine.listen_signal_live(lambda result: ticks.append(clock.now_ms()))
    engine.listen_done_live(done.append)
    handle = engine.live.background(SYMBOL, strategy_name="s", exchange_name="replay")
    await asyncio.wait_for(handle.wait(), GUARD)
    end = exchange.data_end_ms(SYMBOL)
    assert end == source.last_timestamp(SYMBOL) + 60_000
    ttl = engine.config.CC_TICK_TTL_MS
    assert all(t < end for t in ticks[:-1]) and end <= ticks[-1] < end + ttl
    assert len(done) == 1
    await engine.close()
    assert len(done) == 1 and (await engine.live.list())[0].status == "done"


async def test_end_ends_the_replay_early_and_live_run_returns(tmp_path: Path) -> None:
    source = first_minutes(600)
    stop_at = source.first_timestamp(SYMBOL) + 240 * 60_000
    engine, exchange, clock = replay_engine(tmp_path, source, nothing, end=stop_at)
    assert exchange.data_end_ms(SYMBOL) == stop_at
    ticks: list[int] = []
    engine.listen_signal_live(lambda result: ticks.append(clock.now_ms()))

    async def consume() -> None:
        async for _ in engine.live.run(SYMBOL, strategy_name="s", exchange_name="replay"):
            pass

    await asyncio.wait_for(consume(), GUARD)  # Live.run ends on its own too
    assert stop_at <= ticks[-1] < stop_at + engine.config.CC_TICK_TTL_MS
    await engine.close()


def test_replay_end_is_validated() -> None:
    clock = bk.VirtualClock()
    with pytest.raises(bk.SchemaError, match="end"):
        bk.ReplayExchange(first_minutes(10), clock, end=datetime(2025, 5, 20))  # naive
    with pytest.raises(bk.SchemaError, match="end"):
        bk.ReplayExchange(first_minutes(10), clock, end="tomorrow")  # type: ignore[arg-type]
    assert bk.ReplayExchange(first_minutes(10), clock).data_end_ms("ETHUSDT") is None


async def test_a_position_open_when_the_replay_ends_stays_open_and_persisted(tmp_path: Path) -> None:
    source = first_minutes(300)
    engine, _, _ = replay_engine(tmp_path, source, hold_forever)
    seen: list[bk.TickResult] = []
    engine.listen_signal_live(seen.append)
    handle = engine.live.background(SYMBOL, strategy_name="s", exchange_name="replay")
    await asyncio.wait_for(handle.wait(), GUARD)
    await engine.close()
    opened = [r for r in seen if r.action == "opened"]
    assert len(opened) == 1 and not any(r.action == "closed" for r in seen)
    stats = await engine.live.get_data(SYMBOL, "s")
    assert stats.total_trades == 0 and stats.open_positions == 1
    config = engine.config
    expected = pnl_of(opened[0].signal, seen[-1].current_price, config.CC_PERCENT_SLIPPAGE,  # type: ignore[arg-type]
                      config.CC_PERCENT_FEE).pnl_percentage
    assert stats.unrealized_pnl == pytest.approx(expected)
    stored = list((tmp_path / "data" / "signals").glob("*.json"))
    assert len(stored) == 1 and opened[0].signal.id in stored[0].read_text()  # type: ignore[union-attr]


# ---------------------------------------------------------------------------------------------------------
# Item 16: the position open at the end, the same way in Backtest, live replay and the replay example
# ---------------------------------------------------------------------------------------------------------


class Ledger:
    """Opened / closed counts and the last result of a run, from its signal listener."""

    def __init__(self) -> None:
        self.opened: list[bk.SignalRow] = []
        self.closed = 0
        self.last: bk.TickResult | None = None

    def __call__(self, result: bk.TickResult) -> None:
        self.last = result
        if result.action == "opened":
            assert result.signal is not None
            self.opened.append(result.signal)
        elif result.action == "closed":
            self.closed += 1

    def check(self, stats: bk.Statistics, config: bk.Config, report: str) -> None:
        """Whatever opened and did not close is reported: count, unrealised PnL, report line."""
        assert stats.total_trades == self.closed
        assert stats.open_positions == len(self.opened) - self.closed
        assert stats.open_positions == 1, "the bundled week ends with a position open in both modes"
        assert self.last is not None
        expected = pnl_of(self.opened[-1], self.last.current_price, config.CC_PERCENT_SLIPPAGE,
                          config.CC_PERCENT_FEE).pnl_percentage
        assert stats.unrealized_pnl == pytest.approx(expected)
        line = f"**Open positions:** 1 (unrealized PNL at the last price: {format_signed_percent(expected)})"
        assert line in report.splitlines()


async def test_a_backtest_reports_the_position_open_at_the_end(tmp_path: Path) -> None:
    engine = bk.Engine(dump_dir=tmp_path / "dump")
    symbol, frame = demo.register(engine)
    ledger = Ledger()
    engine.listen_signal_backtest(ledger)
    async for _ in engine.backtest.run(symbol, strategy_name="sma-cross", exchange_name="csv", frame_name=frame):
        pass
    stats = await engine.backtest.get_data(symbol, "sma-cross")
    ledger.check(stats, engine.config, await engine.backtest.get_report(symbol, "sma-cross"))
    path = await engine.backtest.dump(symbol, "sma-cross", plot=False)
    assert path is not None and open_position_line(stats) in Path(path).read_text()


async def test_a_live_replay_reports_the_position_open_at_the_end(tmp_path: Path) -> None:
    source = sample()
    engine, _, _ = replay_engine(tmp_path, source, demo.get_signal, interval="5m")
    ledger = Ledger()
    engine.listen_signal_live(ledger)
    handle = engine.live.background(SYMBOL, strategy_name="s", exchange_name="replay")
    await asyncio.wait_for(handle.wait(), GUARD)
    await engine.close()
    stats = await engine.live.get_data(SYMBOL, "s")
    ledger.check(stats, engine.config, await engine.live.get_report(SYMBOL, "s"))


def load_example(name: str) -> ModuleType:
    sys.path.insert(0, str(EXAMPLES))
    try:
        spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(EXAMPLES))


async def test_the_replay_example_ends_and_reports_the_open_position(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    example = load_example("live_replay")
    stats = await asyncio.wait_for(example.main(["--dump-dir", str(tmp_path / "dump")]), GUARD)
    out = capsys.readouterr().out
    assert stats.open_positions == 1 and stats.unrealized_pnl is not None
    line = open_position_line(stats)
    assert line is not None and line in out.splitlines()
    assert re.search(r"^live run of sma-cross on BTCUSDT done$", out, re.M)
    written = tmp_path / "dump" / "live" / f"{SYMBOL}_sma-cross.md"
    assert line in written.read_text().splitlines()


# A random walk through the live lifecycle: flat -> (scheduled ->) opened -> active* -> closed, etc.
_STEPS = st.lists(st.tuples(st.sampled_from(["idle", "schedule", "open", "active", "close", "cancel"]),
                            st.floats(50, 150, allow_nan=False)), max_size=40)


@settings(max_examples=200, deadline=None)
@given(steps=_STEPS, slippage=st.floats(0, 1), fee=st.floats(0, 1))
def test_live_stats_track_the_open_position_like_a_model(
    steps: list[tuple[str, float]], slippage: float, fee: float
) -> None:
    store = LiveStats(5)
    state = "flat"
    position: bk.SignalRow | None = None
    last_price = math.nan
    base = {"symbol": SYMBOL, "strategy_name": "s", "exchange_name": "x", "backtest": False}
    for n, (step, price) in enumerate(steps):
        pos = row(position="long" if n % 2 else "short", price_open=100.0, tp=200.0 if n % 2 else 50.0,
                  sl=40.0 if n % 2 else 190.0)
        result: bk.TickResult | None = None
        if state == "flat" and step == "idle":
            result = bk.IdleResult(current_price=price, **base)
        elif state == "flat" and step == "schedule":
            position = bk.SignalRow(**{**_fields(pos), "is_scheduled": True})
            result, state = bk.ScheduledResult(current_price=price, signal=position, **base), "waiting"
        elif state == "waiting" and step == "cancel":
            assert position is not None
            result, state = bk.CancelledResult(current_price=price, signal=position, close_timestamp=n,
                                               **base), "flat"
        elif state == "waiting" and step == "active":
            assert position is not None
            result = bk.ActiveResult(current_price=price, signal=position, percent_tp=0.0, percent_sl=0.0, **base)
        elif state in ("flat", "waiting") and step == "open":
            position = pos
            result, state, last_price = bk.OpenedResult(current_price=price, signal=pos, **base), "open", price
        elif state == "open" and step == "active":
            assert position is not None
            result, last_price = bk.ActiveResult(current_price=price, signal=position, percent_tp=1.0,
                                                 percent_sl=0.0, **base), price
        elif state == "open" and step == "close":
            assert position is not None
            result, state = bk.ClosedResult(current_price=price, signal=position, close_reason="take_profit",
                                            close_timestamp=position.pending_at + 60_000,
                                            pnl=pnl_of(position, price, slippage, fee), **base), "flat"
        if result is not None:
            store.add(result, n)
        stats = with_open_position(store.data(), store.open_signal, store.open_price,
                                   slippage_percent=slippage, fee_percent=fee)
        if state == "open":
            assert position is not None
            assert stats.open_positions == 1
            assert stats.unrealized_pnl == pytest.approx(pnl_of(position, last_price, slippage, fee).pnl_percentage)
        else:
            assert stats.open_positions == 0 and stats.unrealized_pnl is None


def _fields(signal: bk.SignalRow) -> dict[str, Any]:
    return {f: getattr(signal, f) for f in signal.__struct_fields__}


# ---------------------------------------------------------------------------------------------------------
# Item 18: report names carry the symbol; every bk.X facade is also engine.X
# ---------------------------------------------------------------------------------------------------------


async def test_two_symbols_of_one_strategy_keep_their_own_reports(tmp_path: Path) -> None:
    base = sample()
    first = base.first_timestamp(SYMBOL)
    candles = list(base.next_candles(SYMBOL, "1m", first, 2000))
    other = [bk.Candle(c.timestamp, c.open / 40, c.high / 40, c.low / 40, c.close / 40, c.volume) for c in candles]
    engine = bk.Engine(dump_dir=tmp_path / "dump")
    engine.add_exchange(exchange_name="mem", get_candles=bk.MemoryCandles({SYMBOL: candles, "ETHUSDT": other}))
    engine.add_strategy(strategy_name="sma-cross", interval="5m", get_signal=demo.get_signal)
    start = datetime.fromtimestamp((first + 60 * 60_000) / 1000, tz=bk.VirtualClock().now().tzinfo)
    end = datetime.fromtimestamp((first + 1990 * 60_000) / 1000, tz=start.tzinfo)
    engine.add_frame(frame_name="f", interval="1m", start_date=start, end_date=end)
    paths = {}
    for symbol in (SYMBOL, "ETHUSDT"):
        async for _ in engine.backtest.run(symbol, strategy_name="sma-cross", exchange_name="mem", frame_name="f"):
            pass
        paths[symbol] = await engine.backtest.dump(symbol, "sma-cross", plot=False)
    assert paths[SYMBOL] != paths["ETHUSDT"]
    for symbol, path in paths.items():
        assert path is not None and path.name == f"{symbol}_sma-cross.md"
        text = path.read_text()
        assert f"| {symbol} |" in text and text == await engine.backtest.get_report(symbol, "sma-cross")
    assert "| ETHUSDT |" not in paths[SYMBOL].read_text()


def test_every_facade_of_the_module_api_is_an_engine_attribute() -> None:
    default = bk.default_engine
    engine = bk.Engine()
    owned = {id(v) for v in vars(default).values()}
    checked = 0
    for name in bk.__all__:
        value = getattr(bk, name)
        if getattr(value, "__self__", None) is default or id(value) in owned:
            assert hasattr(engine, name), f"bk.{name} has no engine.{name}"
            checked += 1
    assert checked > 30
    assert engine.Backtest is engine.backtest and engine.Live is engine.live
    assert engine.Schedule is engine.schedule and engine.Performance is engine.performance
    assert engine.Risk is engine.risk and engine.Partial is engine.partial
    assert engine.PositionSize is engine.position_size
    assert bk.Backtest is default.Backtest and bk.Live is default.Live

"""Live over the replay exchange on a VirtualClock versus a backtest over the same candles.

The rule (why and when the two modes give the same trades):

1. Entries. At a tick at `t` both modes see the same closed candles
   ([decision 1](../docs/design/decisions.md#decision-1-no-look-ahead)) and open a market
   signal at the same price (the VWAP of the last 5 closed 1m candles), provided both are flat at `t`
   and their previous `get_signal` calls were at the same minutes.
2. Expiry. A backtest closes at the first candle opening at or after `pending_at + m` minutes, at
   the VWAP of the 5 candles before it; live closes at the first tick with `now - pending_at >= m`
   minutes, at the VWAP of the 5 candles closed by then. With minute-aligned ticks
   (`CC_TICK_TTL_MS = 60_000`) that is the same minute and the same price, and both modes resume one
   minute after the close: **a strategy whose TP/SL are never touched gives identical trades.**
3. The default tick period is 60 001 ms, so tick `k` runs at `start + k min + k ms`. While
   `k < 60 000` (41.7 days) that tick sees exactly the candles of the aligned tick and takes the same
   decisions; only the timestamps (`pending_at`, `close_timestamp`) carry `+k ms`. Every 60 000 ticks
   the drift reaches a whole minute and one candle-minute is never ticked, so beyond ~41 days trades
   may shift by a minute.
4. TP/SL. A backtest checks every candle's high/low from the entry candle on; live compares the VWAP
   of the last 5 closed candles once per tick. A VWAP lies within its candles' lows and highs, so a
   live TP/SL close at tick `t` needs a candle among the 5 before `t` touching the level. When
   `t >= pending_at + 5 min` those candles all opened after the entry and the backtest saw that touch:
   **the backtest closed the same entry strictly earlier.** A wick that never drags the VWAP across
   the level closes a backtest only; a live run then closes later, with another reason, or by expiry
   (and when the backtest expired, the live run expires at the same minute and price). The only
   exception is the first 4 ticks after an entry, whose VWAP window still holds pre-entry candles.
   After a differing close, each mode resumes from its own close, so later entries may differ.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import msgspec
import pytest
from helpers import T0, M, MemoryPersist, candles_from_path, dt, flat_candles, load_example, long
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import backtest_kit as bk

SignalFn = Callable[[str, datetime], Any]
TRADE_CONFIG: dict[str, Any] = {"CC_MAX_STOPLOSS_DISTANCE_PERCENT": 60}


async def backtest_trades(source: bk.MemoryCandles, symbol: str, get_signal: SignalFn, start: int, end: int,
                          config: dict[str, Any], interval: str = "5m") -> list[bk.FinishedResult]:
    """Backtest over 1m frames [start, end]."""
    engine = bk.Engine()
    engine.set_config(config, unsafe=True)
    engine.add_exchange(exchange_name="x", get_candles=source)
    engine.add_strategy(strategy_name="s", interval=interval, get_signal=get_signal)
    engine.add_frame(frame_name="f", interval="1m", start_date=dt(start), end_date=dt(end))
    return [r async for r in engine.backtest.run(symbol, strategy_name="s", exchange_name="x", frame_name="f")]


async def live_trades(source: bk.MemoryCandles, symbol: str, get_signal: SignalFn, start: int, end: int,
                      config: dict[str, Any], interval: str = "5m") -> list[bk.FinishedResult]:
    """Live over the replay exchange from `start`; no new signal after `end`, then a graceful stop."""
    clock = bk.VirtualClock(dt(start))
    engine = bk.Engine(clock=clock)
    engine.use_persist(MemoryPersist(record=False))
    engine.set_config(config, unsafe=True)
    engine.add_exchange(exchange_name="x", get_candles=bk.ReplayExchange(source, clock))

    def until_end(sym: str, when: datetime) -> Any:
        return get_signal(sym, when) if clock.now_ms() <= end else None

    engine.add_strategy(strategy_name="s", interval=interval, get_signal=until_end)
    trades: list[bk.FinishedResult] = []
    errors: list[BaseException] = []
    engine.listen_error(errors.append)
    handle: bk.CancelHandle | None = None

    def on_tick(result: bk.TickResult) -> None:
        if isinstance(result, bk.ClosedResult | bk.CancelledResult):
            trades.append(result)
        if clock.now_ms() > end and handle is not None:
            handle()  # repeated on every later tick: harmless

    engine.listen_signal_live(on_tick)
    handle = engine.live.background(symbol, strategy_name="s", exchange_name="x")
    await handle.wait()
    assert errors == []
    return trades


def key(r: bk.FinishedResult) -> tuple[Any, ...]:
    assert isinstance(r, bk.ClosedResult)
    return (r.signal.position, r.signal.pending_at, r.signal.price_open, r.close_timestamp, r.close_reason)


def assert_same_trade(live: bk.FinishedResult, backtest: bk.FinishedResult, shift: Callable[[int], int]) -> None:
    assert isinstance(live, bk.ClosedResult) and isinstance(backtest, bk.ClosedResult)
    assert live.signal.position == backtest.signal.position
    assert live.signal.pending_at == shift(backtest.signal.pending_at)
    assert live.signal.price_open == backtest.signal.price_open
    assert live.close_timestamp == shift(backtest.close_timestamp)
    assert live.close_reason == backtest.close_reason
    assert live.current_price == pytest.approx(backtest.current_price, rel=1e-12)
    assert live.pnl.pnl_percentage == pytest.approx(backtest.pnl.pnl_percentage, rel=1e-9, abs=1e-12)


# ---------------------------------------------------------------------------------------------- the SMA example
Week = tuple[bk.MemoryCandles, str, int, int]


@pytest.fixture(scope="module")
def week() -> Week:
    source = bk.CsvCandles(bk.bundled_sample_path())
    symbol = source.symbols[0]
    start = source.first_timestamp(symbol) + 50 * M
    end = source.last_timestamp(symbol) - 300 * M  # every trade (240 min at most) closes inside the data
    return source, symbol, start, end


def expiry_only(get_signal: SignalFn) -> SignalFn:
    """The example's entries with TP/SL 50 % away: positions only ever close by time."""

    async def wrapped(symbol: str, when: datetime) -> Any:
        dto = await get_signal(symbol, when)
        if dto is None:
            return None
        price = (dto.price_take_profit + dto.price_stop_loss) / 2
        up, down = price * 1.5, price * 0.5
        tp, sl = (up, down) if dto.position == "long" else (down, up)
        return msgspec.structs.replace(dto, price_take_profit=tp, price_stop_loss=sl)

    return wrapped


@pytest.mark.parametrize("tick_ms", [60_000, 60_001])
async def test_expiry_only_sma_gives_the_same_trades(week: Week, tick_ms: int) -> None:
    """Rules 1-3: identical trades; with the default 60 001 ms tick the timestamps carry +1 ms per tick."""
    source, symbol, start, end = week
    signal = expiry_only(load_example("backtest_sma_live_equivalence").get_signal)
    config = {**TRADE_CONFIG, "CC_TICK_TTL_MS": tick_ms}
    bt = await backtest_trades(source, symbol, signal, start, end, config)
    live = await live_trades(source, symbol, signal, start, end, config)
    assert len(bt) == len(live) > 20
    assert {r.close_reason for r in bt} == {"time_expired"}  # type: ignore[union-attr]
    drift_per_tick = tick_ms - 60_000

    def shift(ts: int) -> int:
        return ts + (ts - start) // M * drift_per_tick

    for lv, b in zip(live, bt, strict=True):
        assert_same_trade(lv, b, shift)


async def test_tp_sl_sma_live_closes_never_before_the_backtest(week: Week) -> None:
    """Rule 4 on the example strategy itself (TP/SL ±1 %), aligned ticks.

    The runs agree trade for trade until the first TP/SL close found on a candle's high/low before
    the VWAP crossed the level; for every entry both modes share, a live TP/SL close that does not
    fall in the first 4 minutes comes strictly after the backtest's close.
    """
    source, symbol, start, end = week
    signal = load_example("backtest_sma_live_equivalence").get_signal
    config = {"CC_TICK_TTL_MS": 60_000}
    bt = await backtest_trades(source, symbol, signal, start, end, config)
    live = await live_trades(source, symbol, signal, start, end, config)
    reasons = {r.close_reason for r in bt}  # type: ignore[union-attr]
    assert {"take_profit", "stop_loss"} <= reasons
    # identical prefix, then the first difference is an entry both share, closed differently
    same = 0
    while same < min(len(bt), len(live)) and key(bt[same]) == key(live[same]):
        same += 1
    assert 0 < same < len(bt)
    first_b, first_l = bt[same], live[same]
    assert (first_b.signal.pending_at, first_b.signal.price_open) == (first_l.signal.pending_at,
                                                                      first_l.signal.price_open)
    assert first_b.close_reason in ("take_profit", "stop_loss")  # type: ignore[union-attr]
    assert first_l.close_timestamp > first_b.close_timestamp
    # the rule on every shared entry
    by_entry = {(r.signal.pending_at, r.signal.price_open): r for r in bt}
    shared = 0
    later = 0
    for lv in live:
        b = by_entry.get((lv.signal.pending_at, lv.signal.price_open))
        if b is None:
            continue
        shared += 1
        assert isinstance(lv, bk.ClosedResult) and isinstance(b, bk.ClosedResult)
        check_rule(b, lv)
        later += lv.close_timestamp > b.close_timestamp
    assert shared > len(bt) // 3 and later >= 1


def check_rule(b: bk.ClosedResult, lv: bk.ClosedResult) -> None:
    """Rule 4 for one entry both modes took (same pending_at and price_open)."""
    elapsed = lv.close_timestamp - lv.signal.pending_at
    early = elapsed < 5 * M  # the live VWAP window still held pre-entry candles
    if lv.close_reason in ("take_profit", "stop_loss") and not early:
        assert b.close_timestamp < lv.close_timestamp
    if b.close_reason == "time_expired" and not early:
        assert lv.close_reason == "time_expired"
        assert lv.close_timestamp == b.close_timestamp
        assert lv.current_price == pytest.approx(b.current_price, rel=1e-12)
    if not early:
        assert lv.close_timestamp >= b.close_timestamp


# ---------------------------------------------------------------------------------------------- synthetic cases
def one_signal(dto: bk.SignalDto) -> SignalFn:
    queue = [dto]
    return lambda symbol, when: queue.pop(0) if queue else None


async def both(candles: Sequence[bk.Candle], dto: bk.SignalDto, minutes: int = 90
               ) -> tuple[bk.ClosedResult, bk.ClosedResult]:
    source = bk.MemoryCandles({"BTCUSDT": list(candles)})
    config = {"CC_TICK_TTL_MS": 60_000, "CC_MIN_TAKEPROFIT_DISTANCE_PERCENT": 0,
              "CC_MIN_STOPLOSS_DISTANCE_PERCENT": 0, **TRADE_CONFIG}
    end = T0 + minutes * M
    [b] = await backtest_trades(source, "BTCUSDT", one_signal(dto), T0, end, config, interval="1m")
    [lv] = await live_trades(source, "BTCUSDT", one_signal(dto), T0, end, config, interval="1m")
    assert isinstance(b, bk.ClosedResult) and isinstance(lv, bk.ClosedResult)
    assert (lv.signal.pending_at, lv.signal.price_open) == (b.signal.pending_at, b.signal.price_open)
    assert b.signal.pending_at == T0
    return b, lv


async def test_a_wick_closes_the_backtest_only() -> None:
    """One candle's high reaches TP while the 5-candle VWAP stays below it."""
    wick = bk.Candle(T0 + 10 * M, 100.0, 106.0, 99.0, 100.0, 100.0)
    candles = [*flat_candles(T0 - 30 * M, 40, 100.0), wick, *flat_candles(T0 + 11 * M, 200, 100.0)]
    b, lv = await both(candles, long(105, 95, 60))
    assert (b.close_reason, b.close_timestamp, b.current_price) == ("take_profit", T0 + 10 * M, 105)
    assert (lv.close_reason, lv.close_timestamp) == ("time_expired", T0 + 60 * M)


async def test_a_steady_rise_closes_both_by_take_profit_live_later() -> None:
    path = [100.0] * 5 + [100.0 + 0.5 * i for i in range(1, 40)]
    candles = [*flat_candles(T0 - 30 * M, 30, 100.0), *candles_from_path(T0, path + [120.0] * 100)]
    b, lv = await both(candles, long(105, 95, 60))
    assert b.close_reason == lv.close_reason == "take_profit"
    assert b.pnl == lv.pnl  # same entry, same exit price (the TP level)
    assert b.close_timestamp < lv.close_timestamp
    check_rule(b, lv)


async def test_pre_entry_candles_can_close_live_first() -> None:
    """The exception of rule 4: in its first 4 ticks the live VWAP window still holds candles from
    before the entry. Here a heavy low candle kept the entry price low; the next ticks' VWAP is
    dominated by the high pre-entry candles and crosses TP, although no candle after the entry
    reaches it: live closes at +1 min by take_profit, the backtest expires."""
    before = [bk.Candle(T0 - 5 * M, 90, 90, 90, 90, 10_000.0)]
    before += [bk.Candle(T0 - k * M, 110, 110, 110, 110, 1.0) for k in (4, 3, 2, 1)]
    candles = [*flat_candles(T0 - 30 * M, 25, 90.0), *before, *flat_candles(T0, 200, 100.0, vol=1.0, spread=0.5)]
    b, lv = await both(candles, long(105, 80, 60))
    assert b.signal.price_open == pytest.approx(90.008, abs=1e-3)
    assert (lv.close_reason, lv.close_timestamp) == ("take_profit", T0 + M)
    assert (b.close_reason, b.close_timestamp) == ("time_expired", T0 + 60 * M)
    check_rule(b, lv)  # allowed: the live close came in the first 4 minutes


async def test_expiry_with_minute_aligned_ticks_is_exact() -> None:
    candles = candles_from_path(T0 - 30 * M, [100 + (i % 7) * 0.1 for i in range(200)], spread=0.2)
    b, lv = await both(candles, long(150, 60, 45))
    assert b.close_reason == lv.close_reason == "time_expired"
    assert b.close_timestamp == lv.close_timestamp == T0 + 45 * M
    assert lv.current_price == pytest.approx(b.current_price, rel=1e-12)


async def test_a_tick_period_off_the_minute_skips_candle_minutes() -> None:
    """Rule 3 made visible: with 61 000 ms ticks the drift is 1 s per tick, so a minute is never
    ticked every 60 ticks (the default 60 001 ms skips one every 60 000 ticks, ~41.7 days)."""
    seen: list[int] = []

    def record(symbol: str, when: datetime) -> None:
        seen.append((int(when.timestamp() * 1000) - T0) // M)

    source = bk.MemoryCandles({"BTCUSDT": flat_candles(T0 - 10 * M, 300, 100.0)})
    await live_trades(source, "BTCUSDT", record, T0, T0 + 130 * 61_000 - 1,
                      {"CC_TICK_TTL_MS": 61_000}, interval="1m")
    assert seen == [k * 61_000 // M for k in range(130)]
    skipped = sorted(set(range(seen[-1])) - set(seen))
    assert skipped == [60, 121]


# ---------------------------------------------------------------------------------------------- property
walks = st.lists(st.floats(-0.6, 0.6, allow_nan=False), min_size=80, max_size=80)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=walks, volumes=st.lists(st.floats(1, 1000), min_size=110, max_size=110),
       spread=st.floats(0, 0.8), tp=st.floats(0.3, 3), sl=st.floats(0.3, 3),
       position=st.sampled_from(["long", "short"]), minutes=st.integers(1, 60))
def test_rule_holds_on_random_walks(steps: list[float], volumes: list[float], spread: float, tp: float,
                                    sl: float, position: str, minutes: int) -> None:
    closes = [100.0] * 30
    for s in steps:
        closes.append(max(50.0, closes[-1] + s))
    candles = [bk.Candle(c.timestamp, c.open, c.high, c.low, c.close, v)
               for c, v in zip(candles_from_path(T0 - 30 * M, closes, spread=spread), volumes, strict=False)]
    source = bk.MemoryCandles({"BTCUSDT": candles})
    config = {"CC_TICK_TTL_MS": 60_000, "CC_MIN_TAKEPROFIT_DISTANCE_PERCENT": 0,
              "CC_MIN_STOPLOSS_DISTANCE_PERCENT": 0, **TRADE_CONFIG}

    async def signal(symbol: str, when: datetime) -> bk.SignalDto:
        price = await bk.get_average_price(symbol)
        up, down = price * (1 + tp / 100), price * (1 - sl / 100)
        if position == "long":
            return bk.SignalDto(position="long", price_take_profit=up, price_stop_loss=down,
                                minute_estimated_time=minutes)
        return bk.SignalDto(position="short", price_take_profit=price * (1 - tp / 100),
                            price_stop_loss=price * (1 + sl / 100), minute_estimated_time=minutes)

    async def run() -> tuple[list[bk.FinishedResult], list[bk.FinishedResult]]:
        fn = _first_only(signal)
        bt = await backtest_trades(source, "BTCUSDT", fn, T0, T0 + M, config, interval="1m")
        fn = _first_only(signal)
        live = await live_trades(source, "BTCUSDT", fn, T0, T0 + M, config, interval="1m")
        return bt, live

    bt, live = asyncio.run(run())
    assert len(bt) == len(live) == 1
    b, lv = bt[0], live[0]
    assert isinstance(b, bk.ClosedResult) and isinstance(lv, bk.ClosedResult)
    assert (b.signal.pending_at, b.signal.price_open) == (lv.signal.pending_at, lv.signal.price_open)
    check_rule(b, lv)


def _first_only(fn: Callable[[str, datetime], Any]) -> SignalFn:
    calls = 0

    async def wrapped(symbol: str, when: datetime) -> Any:
        nonlocal calls
        calls += 1
        return await fn(symbol, when) if calls == 1 else None

    return wrapped

"""Position sizing ([risk-sizing §2](../docs/design/risk-sizing-portfolio.md#2-position-sizing),
[rules 40–53](../docs/design/risk-sizing-portfolio.md#8-acceptance-rules)): formulas, limits, errors,
the custom form."""

from __future__ import annotations

import asyncio
import math
from datetime import datetime, timedelta
from typing import Any

import pytest
from helpers import T0, M, candle, dt, flat_candles, live_until_closed, long, make_engine, once
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import backtest_kit as bk
from backtest_kit.portfolio.sizing import (
    apply_limits,
    atr_based_quantity,
    fixed_percentage_quantity,
    kelly_criterion_quantity,
)

PS = "BTCUSDT"


@pytest.fixture
def engine() -> bk.Engine:
    return make_engine()


# --------------------------------------------------------------------------------------- worked values
async def test_rule40_fixed_percentage(engine: bk.Engine) -> None:
    engine.add_sizing(sizing_name="fixed", method="fixed-percentage", risk_percentage=2)
    q = await engine.position_size.fixed_percentage(PS, 10_000, 50_000, 49_000, sizing_name="fixed")
    assert q == pytest.approx(0.2) and q > 0


async def test_rule41_kelly(engine: bk.Engine) -> None:
    engine.add_sizing(sizing_name="kelly", method="kelly-criterion", kelly_multiplier=0.25)
    q = await engine.position_size.kelly_criterion(PS, 10_000, 50_000, 0.55, 1.5, sizing_name="kelly")
    assert q == pytest.approx(0.0125)


async def test_kelly_default_multiplier_is_a_quarter(engine: bk.Engine) -> None:
    engine.add_sizing(sizing_name="kelly", method="kelly-criterion")
    assert await engine.position_size.kelly_criterion(PS, 10_000, 50_000, 0.55, 1.5, sizing_name="kelly") == \
        pytest.approx(0.0125)


async def test_rule42_atr(engine: bk.Engine) -> None:
    engine.add_sizing(sizing_name="atr", method="atr-based", risk_percentage=2, atr_multiplier=2)
    assert await engine.position_size.atr_based(PS, 10_000, 50_000, 500, sizing_name="atr") == pytest.approx(0.2)
    engine.add_sizing(sizing_name="atr-default", method="atr-based", risk_percentage=2)  # multiplier 2
    assert await engine.position_size.atr_based(PS, 10_000, 50_000, 500, sizing_name="atr-default") == \
        pytest.approx(0.2)


async def test_rule43_method_mismatch(engine: bk.Engine) -> None:
    engine.add_sizing(sizing_name="kelly", method="kelly-criterion")
    with pytest.raises(bk.SizingError, match="method mismatch"):
        await engine.position_size.fixed_percentage(PS, 10_000, 50_000, 49_000, sizing_name="kelly")
    engine.add_sizing(sizing_name="custom", get_quantity=lambda *a: 1.0)
    with pytest.raises(bk.SizingError, match=r"method mismatch.*custom"):
        await engine.position_size.atr_based(PS, 10_000, 50_000, 500, sizing_name="custom")


async def test_rule44_unknown_sizing(engine: bk.Engine) -> None:
    with pytest.raises(bk.UnknownNameError, match="sizing nope not found"):
        await engine.position_size.fixed_percentage(PS, 10_000, 50_000, 49_000, sizing_name="nope")


async def test_rule45_max_position_percentage(engine: bk.Engine) -> None:
    engine.add_sizing(sizing_name="s", method="fixed-percentage", risk_percentage=50, max_position_percentage=10)
    q = await engine.position_size.fixed_percentage(PS, 10_000, 50_000, 49_000, sizing_name="s")
    assert q == pytest.approx(0.02) and q <= 0.02


async def test_rule46_min_position_size(engine: bk.Engine) -> None:
    engine.add_sizing(sizing_name="s", method="fixed-percentage", risk_percentage=0.01, min_position_size=0.001)
    assert await engine.position_size.fixed_percentage(PS, 10_000, 50_000, 49_900, sizing_name="s") >= 0.001


async def test_rule47_max_position_size(engine: bk.Engine) -> None:
    engine.add_sizing(sizing_name="s", method="fixed-percentage", risk_percentage=50, max_position_size=0.01)
    assert await engine.position_size.fixed_percentage(PS, 10_000, 50_000, 49_000, sizing_name="s") == 0.01


async def test_rule48_kelly_multiplier_zero(engine: bk.Engine) -> None:
    engine.add_sizing(sizing_name="s", method="kelly-criterion", kelly_multiplier=0)
    assert await engine.position_size.kelly_criterion(PS, 10_000, 50_000, 0.55, 1.5, sizing_name="s") == 0


def test_rule49_duplicate_name_even_with_another_method(engine: bk.Engine) -> None:
    engine.add_sizing(sizing_name="s", method="fixed-percentage", risk_percentage=1)
    with pytest.raises(bk.SchemaError, match="already exist"):
        engine.add_sizing(sizing_name="s", method="kelly-criterion")


async def test_rule50_on_calculate_called_once_with_the_result(engine: bk.Engine) -> None:
    calls: list[tuple[float, dict[str, Any]]] = []
    engine.add_sizing(sizing_name="s", method="fixed-percentage", risk_percentage=50, max_position_size=0.01,
                      callbacks={"on_calculate": lambda q, params: calls.append((q, params))})
    q = await engine.position_size.fixed_percentage(PS, 10_000, 50_000, 49_000, sizing_name="s")
    assert calls == [(q, calls[0][1])] and calls[0][0] == 0.01
    assert calls[0][1]["method"] == "fixed-percentage" and calls[0][1]["symbol"] == PS


@pytest.mark.parametrize(("method", "call", "match"), [
    ("fixed-percentage", lambda ps: ps.fixed_percentage(PS, 10_000, 50_000, 50_000, sizing_name="s"), "stop distance"),
    ("kelly-criterion", lambda ps: ps.kelly_criterion(PS, 10_000, 50_000, 0, 1.5, sizing_name="s"), "win_rate"),
    ("kelly-criterion", lambda ps: ps.kelly_criterion(PS, 10_000, 50_000, 1, 1.5, sizing_name="s"), "win_rate"),
    ("kelly-criterion", lambda ps: ps.kelly_criterion(PS, 10_000, 50_000, 0.5, 0, sizing_name="s"), "win_loss_ratio"),
    ("kelly-criterion", lambda ps: ps.kelly_criterion(PS, 10_000, 50_000, 0.5, -1, sizing_name="s"), "win_loss_ratio"),
    ("atr-based", lambda ps: ps.atr_based(PS, 10_000, 50_000, 0, sizing_name="s"), "atr"),
    ("atr-based", lambda ps: ps.atr_based(PS, 10_000, 50_000, -5, sizing_name="s"), "atr"),
    ("fixed-percentage", lambda ps: ps.fixed_percentage(PS, math.nan, 50_000, 49_000, sizing_name="s"),
     "account_balance"),
    ("fixed-percentage", lambda ps: ps.fixed_percentage(PS, 10_000, 0, 49_000, sizing_name="s"), "price_open"),
    ("fixed-percentage", lambda ps: ps.fixed_percentage(PS, True, 50_000, 49_000, sizing_name="s"),
     "account_balance"),
])
async def test_rule51_bad_inputs_are_clear_errors(engine: bk.Engine, method: str, call: Any, match: str) -> None:
    calls: list[float] = []
    params = {"risk_percentage": 1} if method != "kelly-criterion" else {}
    engine.add_sizing(sizing_name="s", method=method, callbacks={"on_calculate": lambda q, p: calls.append(q)},
                      **params)
    with pytest.raises(bk.SizingError, match=match):
        await call(engine.position_size)
    assert calls == []  # no quantity


async def test_rule52_limits_order(engine: bk.Engine) -> None:
    engine.add_sizing(sizing_name="neg", method="kelly-criterion", min_position_size=0.001)
    assert await engine.position_size.kelly_criterion(PS, 10_000, 50_000, 0.2, 1.0, sizing_name="neg") == 0.001
    engine.add_sizing(sizing_name="conflict", method="kelly-criterion", min_position_size=0.5, max_position_size=0.1)
    assert await engine.position_size.kelly_criterion(PS, 10_000, 50_000, 0.2, 1.0, sizing_name="conflict") == 0.1


@pytest.mark.parametrize(("kwargs", "texts"), [
    ({"method": "fixed-percentage"}, ("risk_percentage", "required", "fixed-percentage")),
    ({"method": "atr-based", "atr_multiplier": 3}, ("risk_percentage", "required")),
    ({"method": "kelly-criterion", "risk_percentage": 2}, ("risk_percentage", "not a parameter")),
    ({"get_quantity": lambda *a: 1, "max_position_percentage": 5}, ("max_position_percentage", "custom")),
    ({"method": "fixed-percentage", "risk_percentage": 1, "min_position_size": -1}, ("min_position_size", ">= 0")),
    ({"method": "fixed-percentage", "risk_percentage": "2"}, ("risk_percentage", "'2'")),
    ({"method": "fixed-percentage", "risk_percentage": 1, "callbacks": {"on_calc": print}}, ("on_calc",)),
    ({"method": "fixed-percentage", "risk_percentage": 1, "callbacks": [print]}, ("callbacks",)),
    ({"get_quantity": lambda *a: 1, "method": "kelly-criterion"}, ("get_quantity", "method")),
    ({"method": "custom"}, ("get_quantity", "method")),
])
def test_registration_errors_name_the_field(engine: bk.Engine, kwargs: dict[str, Any], texts: tuple[str, ...]) -> None:
    with pytest.raises(bk.SchemaError) as info:
        engine.add_sizing(sizing_name="s", **kwargs)
    for text in texts:
        assert text in str(info.value)
    assert engine.list_sizings() == []


def test_list_sizings_keeps_callbacks_and_notes(engine: bk.Engine) -> None:
    cb = {"on_calculate": print}
    engine.add_sizing(sizing_name="a", method="fixed-percentage", risk_percentage=1, note="n", callbacks=cb)
    engine.add_sizing(sizing_name="b", get_quantity=lambda *a: 1, method="custom")
    a, b = engine.list_sizings()
    assert (a.note, a.callbacks, a.params) == ("n", cb, {"risk_percentage": 1})
    assert b.method is None and b.get_quantity is not None


# ------------------------------------------------------------------------------------- property tests
finite = st.floats(min_value=1e-6, max_value=1e9, allow_nan=False, allow_infinity=False)
pct = st.floats(min_value=0, max_value=100, allow_nan=False)


@given(balance=finite, price=finite, stop=finite, risk=pct)
def test_fixed_percentage_formula(balance: float, price: float, stop: float, risk: float) -> None:
    assume(abs(price - stop) > price * 1e-9)
    q = fixed_percentage_quantity(balance, price, stop, risk)
    assert q >= 0
    assert q * abs(price - stop) == pytest.approx(balance * risk / 100, rel=1e-9, abs=1e-12)


@given(balance=finite, price=finite, w=st.floats(min_value=1e-6, max_value=1 - 1e-6), r=finite,
       mult=st.floats(min_value=0, max_value=1))
def test_kelly_formula_never_negative(balance: float, price: float, w: float, r: float, mult: float) -> None:
    q = kelly_criterion_quantity(balance, price, w, r, mult)
    k = (w * r - (1 - w)) / r
    assert q >= 0
    assert q == pytest.approx(balance * max(0.0, k) * mult / price, rel=1e-9, abs=1e-300)


@given(balance=finite, price=finite, atr=finite, risk=pct, mult=st.floats(min_value=0.1, max_value=10))
def test_atr_formula(balance: float, price: float, atr: float, risk: float, mult: float) -> None:
    q = atr_based_quantity(balance, price, atr, risk, mult)
    assert q == pytest.approx(balance * risk / 100 / (atr * mult), rel=1e-9, abs=1e-300)


@given(q=st.floats(min_value=0, max_value=1e9), balance=finite, price=finite,
       cap=st.one_of(st.none(), pct), lo=st.one_of(st.none(), st.floats(0, 1e6)),
       hi=st.one_of(st.none(), st.floats(0, 1e6)))
def test_limits_are_respected(q: float, balance: float, price: float, cap: float | None, lo: float | None,
                              hi: float | None) -> None:
    out = apply_limits(q, account_balance=balance, price_open=price, max_position_percentage=cap,
                       min_position_size=lo, max_position_size=hi)
    if hi is not None:
        assert out <= hi  # the maximum is applied last and always wins
    if lo is not None and (hi is None or lo <= hi):
        assert out >= lo
    if cap is not None and (lo is None or out != lo) and (hi is None or out != hi):
        assert out <= balance * cap / 100 / price * (1 + 1e-12)
    if cap is None and lo is None and hi is None:
        assert out == q


@settings(max_examples=50)
@given(balance=finite, price=st.floats(min_value=1, max_value=1e6), risk=st.floats(0.01, 100),
       cap=st.floats(0.1, 100), hi=st.floats(1e-6, 10))
async def test_position_size_respects_every_limit(balance: float, price: float, risk: float, cap: float,
                                                  hi: float) -> None:
    engine = make_engine()
    engine.add_sizing(sizing_name="s", method="fixed-percentage", risk_percentage=risk,
                      max_position_percentage=cap, max_position_size=hi)
    q = await engine.position_size.fixed_percentage(PS, balance, price, price * 0.98, sizing_name="s")
    assert 0 <= q <= hi
    assert q <= balance * cap / 100 / price * (1 + 1e-12)


# ------------------------------------------------------------------------------ the custom form in runs
def _backtest(engine: bk.Engine, get_quantity: Any, **sizing: Any) -> None:
    engine.add_exchange(exchange_name="mem", get_candles=bk.MemoryCandles(
        {"BTCUSDT": flat_candles(T0 - 10 * M, 200, 100.0)}))
    get_signal = once(long(tp=110, sl=90, minutes=20))

    engine.add_sizing(sizing_name="qty", get_quantity=get_quantity, **sizing)
    engine.add_strategy(strategy_name="s", interval="1m", get_signal=get_signal, sizing_name="qty")
    engine.add_frame(frame_name="f", interval="1m", start_date=dt(T0), end_date=dt(T0) + timedelta(minutes=60))


async def test_rule53_custom_get_quantity_on_results(engine: bk.Engine) -> None:
    calls: list[tuple[str, bk.SignalRow, float, datetime, str]] = []
    opened: list[bk.TickResult] = []
    engine.listen_signal_backtest(lambda r: opened.append(r) if r.action == "opened" else None)

    async def get_quantity(symbol: str, signal: bk.SignalRow, price: float) -> float:
        calls.append((symbol, signal, price, bk.get_date(), bk.get_mode()))  # runs in the pair's context
        return 0.001

    _backtest(engine, get_quantity)
    results = [r async for r in engine.backtest.run("BTCUSDT", strategy_name="s", exchange_name="mem",
                                                     frame_name="f")]
    assert len(calls) == 1
    symbol, row, price, when, mode = calls[0]
    assert (symbol, price, when, mode) == ("BTCUSDT", row.price_open, dt(T0), "backtest")
    assert opened[0].signal.quantity == 0.001 and results[0].signal.quantity == 0.001


async def test_custom_quantity_limits_and_on_calculate(engine: bk.Engine) -> None:
    seen: list[float] = []
    _backtest(engine, lambda s, row, p: 5, max_position_size=0.5,
              callbacks={"on_calculate": lambda q, p: seen.append(q)})
    results = [r async for r in engine.backtest.run("BTCUSDT", strategy_name="s", exchange_name="mem",
                                                     frame_name="f")]
    assert results[0].signal.quantity == 0.5 and seen == [0.5]


@pytest.mark.parametrize("bad", [-0.1, math.nan, math.inf, "1", None, True])
async def test_rule53_bad_custom_quantity_fails_naming_the_sizing(engine: bk.Engine, bad: Any) -> None:
    errors: list[BaseException] = []
    engine.listen_error(errors.append)
    _backtest(engine, lambda s, row, p: bad)
    results = [r async for r in engine.backtest.run("BTCUSDT", strategy_name="s", exchange_name="mem",
                                                     frame_name="f")]
    assert results == []  # the open failed; the tick ended idle
    assert errors and isinstance(errors[0], bk.SizingError)
    assert "sizing 'qty'" in str(errors[0]) and repr(bad) in str(errors[0])


async def test_builtin_method_named_by_a_strategy_does_not_size_automatically(engine: bk.Engine) -> None:
    engine.add_exchange(exchange_name="mem", get_candles=bk.MemoryCandles(
        {"BTCUSDT": flat_candles(T0 - 10 * M, 100, 100.0)}))
    engine.add_sizing(sizing_name="fixed", method="fixed-percentage", risk_percentage=1)
    engine.add_strategy(strategy_name="s", interval="1m", sizing_name="fixed",
                        get_signal=lambda s, w: long(tp=110, sl=90, minutes=5))
    engine.add_frame(frame_name="f", interval="1m", start_date=dt(T0), end_date=dt(T0) + timedelta(minutes=3))
    results = [r async for r in engine.backtest.run("BTCUSDT", strategy_name="s", exchange_name="mem",
                                                     frame_name="f")]
    assert results and results[0].signal.quantity is None


async def test_live_opened_result_carries_the_quantity_and_format_quantity(tmp_path: Any) -> None:
    clock = bk.VirtualClock(dt(T0))
    engine = make_engine(tmp_path, clock=clock)

    async def get_candles(symbol: str, interval: str, since: datetime, limit: int) -> list[bk.Candle]:
        start = int(since.timestamp() * 1000)
        return [candle(start + k * M, 100, 101, 99, 100) for k in range(limit)]

    engine.add_exchange(exchange_name="mem", get_candles=get_candles,
                        format_quantity=lambda symbol, q: f"{q:.3f}")
    engine.add_sizing(sizing_name="qty", get_quantity=lambda s, row, p: 0.01234)
    formatted: list[str] = []

    async def on_open(symbol: str, row: bk.SignalRow, price: float, backtest: bool) -> None:
        formatted.append(await bk.format_quantity(symbol, row.quantity or 0))

    engine.add_strategy(strategy_name="s", interval="1m", sizing_name="qty", callbacks={"on_open": on_open},
                        get_signal=lambda s, w: long(tp=110, sl=90, minutes=5))
    got = asyncio.get_running_loop().create_future()
    engine.listen_signal_live(lambda r: got.set_result(r) if r.action == "opened" and not got.done() else None)
    handle = engine.live.background("BTCUSDT", strategy_name="s", exchange_name="mem")
    opened = await asyncio.wait_for(got, 10)
    handle()
    await handle.wait()
    assert opened.signal.quantity == 0.01234 and formatted == ["0.012"]
    await engine.close()


async def test_quantity_column_in_reports_uses_format_quantity(tmp_path: Any) -> None:
    engine = make_engine()
    engine.add_exchange(exchange_name="mem", get_candles=bk.MemoryCandles(
        {"BTCUSDT": flat_candles(T0 - 10 * M, 200, 100.0)}), format_quantity=lambda s, q: f"{q:.4f} BTC")
    engine.add_sizing(sizing_name="qty", get_quantity=lambda s, row, p: 0.001)
    engine.add_strategy(strategy_name="s", interval="1m", sizing_name="qty",
                        get_signal=lambda s, w: long(tp=110, sl=90, minutes=5))
    engine.add_strategy(strategy_name="plain", interval="1m", get_signal=lambda s, w: long(tp=110, sl=90, minutes=5))
    engine.add_frame(frame_name="f", interval="1m", start_date=dt(T0), end_date=dt(T0) + timedelta(minutes=12))
    for name in ("s", "plain"):
        assert [r async for r in engine.backtest.run("BTCUSDT", strategy_name=name, exchange_name="mem",
                                                      frame_name="f")]
    report = await engine.backtest.get_report("BTCUSDT", "s")
    assert "| Signal ID | Symbol | Position | Quantity | Open Price |" in report
    assert "| LONG | 0.0010 BTC |" in report
    assert "Quantity" not in await engine.backtest.get_report("BTCUSDT", "plain")  # unchanged without sizing

    clock = bk.VirtualClock(dt(T0))
    live = make_engine(tmp_path, clock=clock)

    async def get_candles(symbol: str, interval: str, since: datetime, limit: int) -> list[bk.Candle]:
        start = int(since.timestamp() * 1000)
        return [candle(start + k * M, 100, 101, 99, 100) for k in range(limit)]

    live.add_exchange(exchange_name="mem", get_candles=get_candles, format_quantity=lambda s, q: f"{q:.2f}")
    live.add_sizing(sizing_name="qty", get_quantity=lambda s, row, p: 1.5)
    live.add_strategy(strategy_name="s", interval="1m", sizing_name="qty",
                      get_signal=lambda s, w: long(tp=110, sl=90, minutes=3))
    await live_until_closed(live)
    text = await live.live.get_report("BTCUSDT", "s")
    assert "| Signal ID | Position | Quantity |" in text and "| LONG | 1.50 |" in text
    await live.close()

"""Helpers usable inside `get_signal`: context errors, `execution_context`, candles, mode, date, formatting.

[Decision 1](../docs/design/decisions.md#decision-1-no-look-ahead) (no look-ahead): at time `when` the
helpers only see candles with `ts + step <= when`.
[Decision 5](../docs/design/decisions.md#decision-5-bad-values-are-rejected-never-coerced) /
[PD-6](../docs/design/lifecycle.md#pd-6-candle-request-with-limit-1): `limit = 1` is allowed,
`limit < 1` and unknown intervals are clear errors.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

import pytest
from helpers import T0, M, candles_from_path, dt, make_engine, setup

import backtest_kit as bk

HELPERS: list[tuple[str, Callable[[], Any]]] = [
    ("get_candles", lambda: bk.get_candles("BTCUSDT", "1m", 5)),
    ("get_average_price", lambda: bk.get_average_price("BTCUSDT")),
    ("format_price", lambda: bk.format_price("BTCUSDT", 1.5)),
    ("format_quantity", lambda: bk.format_quantity("BTCUSDT", 1.5)),
]


@pytest.mark.parametrize(("name", "call"), HELPERS, ids=[n for n, _ in HELPERS])
async def test_async_helpers_outside_a_context_raise_a_helpful_error(name: str, call: Callable[[], Any]) -> None:
    with pytest.raises(bk.BacktestKitError) as info:
        await call()
    message = str(info.value)
    assert "get_signal" in message and "execution_context" in message


@pytest.mark.parametrize("helper", [bk.get_date, bk.get_mode])
def test_sync_helpers_outside_a_context_raise(helper: Callable[[], Any]) -> None:
    with pytest.raises(bk.BacktestKitError, match="execution_context"):
        helper()


def engine_with_candles(**exchange: Any) -> tuple[bk.Engine, list[bk.Candle]]:
    engine = make_engine()
    candles = candles_from_path(T0 - 60 * M, [100.0 + i for i in range(120)], spread=0.5)
    engine.add_exchange(exchange_name="mem", get_candles=bk.MemoryCandles({"BTCUSDT": candles}), **exchange)
    return engine, candles


async def test_execution_context_runs_helpers_as_inside_a_tick() -> None:
    engine, candles = engine_with_candles()
    when = T0 + 10 * M
    with bk.execution_context(symbol="BTCUSDT", when=dt(when), backtest=True,
                              exchange=engine.exchange("mem")) as ctx:
        assert ctx.when_ms == when
        assert bk.get_mode() == "backtest"
        assert bk.get_date() == dt(when)
        got = await bk.get_candles("BTCUSDT", "1m", 3)
        assert [c.timestamp for c in got] == [when - 3 * M, when - 2 * M, when - M]
        assert got == [c for c in candles if when - 3 * M <= c.timestamp < when]
        # the VWAP of the 5 candles closed by `when` (the candle opening at `when` excluded)
        closed = [c for c in candles if when - 5 * M <= c.timestamp < when]
        expected = sum((c.high + c.low + c.close) / 3 * c.volume for c in closed) / sum(c.volume for c in closed)
        assert await bk.get_average_price("BTCUSDT") == pytest.approx(expected)
    with bk.execution_context(symbol="BTCUSDT", when=dt(when), backtest=False, exchange=engine.exchange("mem")):
        assert bk.get_mode() == "live"
    with pytest.raises(bk.BacktestKitError):
        bk.get_mode()  # the context ended with the block


async def test_get_candles_limit_1_is_the_newest_closed_candle() -> None:
    engine, _ = engine_with_candles()
    when = T0 + 10 * M + 30_000  # mid-minute: the candle opening at T0+10 is still forming
    with bk.execution_context(symbol="BTCUSDT", when=dt(when), backtest=True, exchange=engine.exchange("mem")):
        got = await bk.get_candles("BTCUSDT", "1m", 1)
        assert [c.timestamp for c in got] == [T0 + 9 * M]
        five = await bk.get_candles("BTCUSDT", "5m", 2)
        assert [c.timestamp for c in five] == [T0, T0 + 5 * M]  # the T0+10 bucket is still open


@pytest.mark.parametrize(("interval", "limit", "field"), [("1m", 0, "limit"), ("1m", -1, "limit"),
                                                          ("7m", 5, "interval"), ("1m", True, "limit")])
async def test_get_candles_rejects_bad_limit_and_interval(interval: str, limit: Any, field: str) -> None:
    engine, _ = engine_with_candles()
    client = engine.exchange("mem")
    with (bk.execution_context(symbol="BTCUSDT", when=dt(T0), backtest=True, exchange=client),
          pytest.raises(bk.BacktestKitError) as info):
        await bk.get_candles("BTCUSDT", interval, limit)
    assert field in str(info.value) and repr(limit if field == "limit" else interval) in str(info.value)


async def test_format_price_default_strips_8_decimals_and_custom_is_used() -> None:
    engine, _ = engine_with_candles()
    with bk.execution_context(symbol="BTCUSDT", when=dt(T0), backtest=True, exchange=engine.exchange("mem")):
        assert await bk.format_price("BTCUSDT", 123.456) == "123.456"
        assert await bk.format_price("BTCUSDT", 100.0) == "100"
        assert await bk.format_price("BTCUSDT", 0.123456789) == "0.12345679"
        assert await bk.format_price("BTCUSDT", 1e-9) == "0"
        assert await bk.format_quantity("BTCUSDT", 2.5) == "2.5"

    async def fmt_price(symbol: str, price: float) -> str:
        return f"{symbol}:{price:.2f}"

    def fmt_qty(symbol: str, qty: float) -> str:
        return f"{qty:.1f} units"

    custom, _ = engine_with_candles(format_price=fmt_price, format_quantity=fmt_qty)
    with bk.execution_context(symbol="BTCUSDT", when=dt(T0), backtest=True, exchange=custom.exchange("mem")):
        assert await bk.format_price("BTCUSDT", 123.456) == "BTCUSDT:123.46"
        assert await bk.format_quantity("BTCUSDT", 2) == "2.0 units"


async def test_helpers_inside_get_signal_see_mode_date_and_closed_candles_only() -> None:
    engine = make_engine()
    seen: list[tuple[str, datetime, datetime, int, float, str]] = []

    async def get_signal(symbol: str, when: datetime) -> None:
        candles = await bk.get_candles(symbol, "1m", 1)
        seen.append((bk.get_mode(), bk.get_date(), when, candles[-1].timestamp,
                     await bk.get_average_price(symbol), await bk.format_price(symbol, 1.25)))

    h = setup(engine, candles_from_path(T0 - 20 * M, [100.0] * 60), get_signal, minutes=3)
    assert await h.run() == []
    assert [s[0] for s in seen] == ["backtest"] * 4
    assert [s[1] for s in seen] == [s[2] for s in seen] == [dt(T0 + i * M) for i in range(4)]
    assert [s[3] for s in seen] == [T0 + (i - 1) * M for i in range(4)]
    assert all(s[4] == pytest.approx(100.0) and s[5] == "1.25" for s in seen)
    assert h.errors == []


async def test_the_context_does_not_leak_between_concurrent_ticks() -> None:
    """Helpers read a contextvar: after get_signal returns, the caller has no context."""
    engine = make_engine()

    def get_signal(symbol: str, when: datetime) -> None:
        assert bk.get_date() == when
        return None

    h = setup(engine, candles_from_path(T0 - 20 * M, [100.0] * 60), get_signal, minutes=2)
    await h.run()
    assert h.errors == []
    with pytest.raises(bk.BacktestKitError):
        bk.get_date()

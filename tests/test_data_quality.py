"""Data quality (Hardening #7, #8): the anomaly filter is symmetric, gaps and stale live data are reported.

- The exchange client rejects a price above reference x factor exactly as it rejects one below
  reference / factor (same factor, same "reject the answer" behaviour, error naming the candle).
- The in-memory / CSV sources drop such candles at load time and report them (a `CandleDataWarning`,
  the `dropped` attribute, and the engine logger once the exchange is first used).
- Loading reports gaps in the 1m series (count, largest, first location).
- Live mode fails a tick whose newest closed 1m candle is older than `CC_LIVE_MAX_CANDLE_AGE_MS`.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

import pytest
from helpers import REFERENCE_CONFIG, T0, M, always, candle, concat, dt, flat_candles, long, make_engine, ms, setup
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import backtest_kit as bk
from backtest_kit.engine.config import Config
from backtest_kit.engine.exchange import validate_candles

SYMBOL = "BTCUSDT"


# ------------------------------------------------------------------------- #7 the exchange client's filter
def spiked(base: float, n: int, index: int, k: float) -> list[bk.Candle]:
    """`n` flat candles at `base` with every price of candle `index` multiplied by `k`."""
    out = flat_candles(T0, n, base, spread=0.0)
    p = base * k
    out[index] = candle(out[index].timestamp, p, p, p, p)
    return out


def verdict(candles: list[bk.Candle], factor: float) -> str | None:
    """None when the answer passes, else "low" / "high" from the filter's error message."""
    config = Config(CC_GET_CANDLES_PRICE_ANOMALY_THRESHOLD_FACTOR=factor)
    try:
        validate_candles(candles, SYMBOL, M, config)
    except bk.CandleError as exc:
        text = str(exc)
        assert "anomalously" in text, text
        return "low" if "anomalously low" in text else "high"
    return None


@settings(max_examples=300, deadline=None)
@given(
    base=st.floats(1e-3, 1e6),
    log_k=st.floats(-12.0, 12.0),
    factor=st.sampled_from([2.0, 10.0, 50.0, 1000.0, 12_345.0]),
    n=st.integers(5, 40),
    data=st.data(),
)
def test_filter_is_symmetric_in_log_space(base: float, log_k: float, factor: float, n: int, data: Any) -> None:
    """A candle k times the median is rejected exactly when one 1/k times it is, on the matching side."""
    assume(abs(abs(log_k) - math.log(factor)) > 1e-6)  # not on the boundary, where rounding decides
    index = data.draw(st.integers(0, n - 1))
    k = math.exp(log_k)
    up, down = verdict(spiked(base, n, index, k), factor), verdict(spiked(base, n, index, 1 / k), factor)
    outside = abs(log_k) > math.log(factor)
    assert (up is not None) == (down is not None) == outside
    if outside:
        assert {up, down} == {"low", "high"}
        assert up == ("high" if k > 1 else "low")


@settings(max_examples=200, deadline=None)
@given(base=st.floats(1e-3, 1e6), k=st.floats(1e-9, 1.0), n=st.integers(5, 40))
def test_downward_rule_is_unchanged(base: float, k: float, n: int) -> None:
    """Page 01 §11.3: below reference / factor is rejected, anything at or above it passes."""
    candles = spiked(base, n, n // 2, k)
    rejected = verdict(candles, 1000.0)
    assert (rejected == "low") == (base * k < base / 1000.0)


def test_upward_spike_error_names_candle_field_reference_and_ceiling() -> None:
    with pytest.raises(bk.CandleError) as info:
        validate_candles(spiked(42_000.0, 10, 7, 2000.0), SYMBOL, M, Config())
    text = str(info.value)
    assert f"{SYMBOL} candle #7" in text and "anomalously high price open=84000000.0" in text
    assert "reference 42000.0" in text and "ceiling 42000000.0" in text


async def test_spike_fakes_no_take_profit_in_a_backtest() -> None:
    """The issue's case: one candle with high/close x100 closed a long at its take profit (+2.6 %).

    With the factor at 50 the x100 print is now above the ceiling: the fast-forward's answer is
    rejected (reported on listen_error) and the position runs to its expiry on the real prices.
    """
    engine = make_engine(CC_GET_CANDLES_PRICE_ANOMALY_THRESHOLD_FACTOR=50)
    good = flat_candles(T0 - 60 * M, 60 + 200, 100.0, spread=0.1)
    spike_at = T0 + 10 * M
    data = [candle(c.timestamp, c.open, c.high * 100, c.low, c.close * 100) if c.timestamp == spike_at else c
            for c in good]

    async def source(symbol: str, interval: str, since: datetime, limit: int) -> list[bk.Candle]:
        start = ms(since)
        return [c for c in data if c.timestamp >= start][:limit]

    h = setup(engine, None, always(long(103, 95, 30)), minutes=60, get_candles=source)
    results = await h.run()
    assert [r.close_reason for r in results if isinstance(r, bk.ClosedResult)].count("take_profit") == 0
    assert any("anomalously high price" in str(e) and "ceiling" in str(e) for e in h.errors)

"""The bundled demo strategy: SMA(10)/SMA(30) crossover on 1m candles (`backtest-kit backtest` default).

Same trading logic as `examples/backtest_sma.py` (which stays standalone and imports nothing from
here): every 5 minutes read the last 50 closed 1m candles; when SMA(10) crosses above SMA(30) open a
long market signal with TP +1 % and SL −1 %, a cross below opens the mirrored short; positions expire
after 240 minutes.

    backtest-kit backtest                                  # this strategy on the bundled week
    backtest-kit backtest --data BTCUSDT-1m-30d.csv        # on your own 1m CSV
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from .adapters import CsvCandles, bundled_sample_path
from .engine.context import get_candles
from .engine.models import SignalDto
from .system.engine import Engine

__all__ = ["EXCHANGE_NAME", "FRAME_NAME", "STRATEGY_NAME", "get_signal", "register"]

STRATEGY_NAME = "sma-cross"
EXCHANGE_NAME = "csv"
FRAME_NAME = "all-data"
WARMUP_MINUTES = 50


def _sma(values: list[float]) -> float:
    return sum(values) / len(values)


async def get_signal(symbol: str, when: datetime) -> SignalDto | None:
    """Long on a golden cross of SMA(10) over SMA(30), short on a death cross; else no signal."""
    candles = await get_candles(symbol, "1m", 50)
    if len(candles) < 31:
        return None
    closes = [c.close for c in candles]
    fast, slow = _sma(closes[-10:]), _sma(closes[-30:])
    fast_before, slow_before = _sma(closes[-11:-1]), _sma(closes[-31:-1])
    price = closes[-1]
    if fast_before <= slow_before and fast > slow:
        return SignalDto(position="long", price_take_profit=price * 1.01,
                         price_stop_loss=price * 0.99, minute_estimated_time=240)
    if fast_before >= slow_before and fast < slow:
        return SignalDto(position="short", price_take_profit=price * 0.99,
                         price_stop_loss=price * 1.01, minute_estimated_time=240)
    return None


def register(engine: Engine, csv_path: str | Path | None = None) -> tuple[str, str]:
    """Register exchange `csv`, strategy `sma-cross` and frame `all-data`; returns (symbol, frame).

    The frame covers the whole file after a 50-minute warm-up (the strategy needs 31 closed candles).
    """
    source = CsvCandles(csv_path if csv_path is not None else bundled_sample_path())
    symbol = source.symbols[0]
    first, last = source.first_timestamp(symbol), source.last_timestamp(symbol)
    engine.add_exchange(exchange_name=EXCHANGE_NAME, get_candles=source)
    engine.add_strategy(strategy_name=STRATEGY_NAME, interval="5m", get_signal=get_signal)
    engine.add_frame(
        frame_name=FRAME_NAME,
        interval="1m",
        start_date=datetime.fromtimestamp(first / 1000, UTC) + timedelta(minutes=WARMUP_MINUTES),
        end_date=datetime.fromtimestamp(last / 1000, UTC),
    )
    return symbol, FRAME_NAME

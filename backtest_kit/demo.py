"""The bundled demo strategy: SMA(10)/SMA(30) crossover on 1m candles (`backtest-kit backtest` default).

Same trading logic as `examples/backtest_sma.py` (which stays standalone and imports nothing from
here): every 5 minutes read the last 50 closed 1m candles; when SMA(10) crosses above SMA(30) open a
long market signal with TP +1 % and SL −1 %, a cross below opens the mirrored short; positions expire
after 240 minutes.

    backtest-kit backtest                                  # this strategy on the bundled week
    backtest-kit backtest --data BTCUSDT-1m-30d.csv        # on your own 1m CSV
    backtest-kit sweep --param fast=5,10 --param slow=30,60  # `make_strategy`'s parameters, swept

`make_strategy(fast, slow, take_profit, stop_loss)` builds the same crossover with other windows and
exits: the strategy factory a parameter sweep (`bk.Sweep`, `backtest-kit sweep`) varies.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from .adapters import CsvCandles, bundled_sample_path
from .engine.context import get_candles
from .engine.errors import SchemaError
from .engine.models import SignalDto
from .system.engine import Engine

__all__ = [
    "EXCHANGE_NAME",
    "FRAME_NAME",
    "STRATEGY_NAME",
    "WALK_STRATEGIES",
    "get_signal",
    "make_strategy",
    "register",
    "sma_5_20",
    "sma_20_60",
]

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


def make_strategy(
    fast: int = 10, slow: int = 30, take_profit: float = 1.0, stop_loss: float = 1.0
) -> Callable[[str, datetime], Awaitable[SignalDto | None]]:
    """The crossover of SMA(`fast`) over SMA(`slow`) with TP / SL `take_profit` / `stop_loss` percent.

    `make_strategy()` trades exactly like `get_signal`. Module-level, so a sweep's worker processes
    can import it; the `get_signal` it returns is built in the worker and need not pickle. Bad values
    raise `SchemaError` naming the parameter (a sweep reports it in that parameter set's row).
    """
    for label, value in (("fast", fast), ("slow", slow)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise SchemaError(f"{label}: expected a whole number of candles >= 1, got {value!r}")
    if slow <= fast:
        raise SchemaError(f"slow: must be greater than fast ({fast}), got {slow}")
    for label, pct in (("take_profit", take_profit), ("stop_loss", stop_loss)):
        if isinstance(pct, bool) or not isinstance(pct, int | float) or not 0 < pct < 100:
            raise SchemaError(f"{label}: expected a percentage between 0 and 100, got {pct!r}")
    limit = max(WARMUP_MINUTES, slow + 1)
    tp, sl = take_profit / 100, stop_loss / 100

    async def sma_cross(symbol: str, when: datetime) -> SignalDto | None:
        candles = await get_candles(symbol, "1m", limit)
        if len(candles) < slow + 1:
            return None
        closes = [c.close for c in candles]
        f, s = _sma(closes[-fast:]), _sma(closes[-slow:])
        f_before, s_before = _sma(closes[-fast - 1:-1]), _sma(closes[-slow - 1:-1])
        price = closes[-1]
        if f_before <= s_before and f > s:
            return SignalDto(position="long", price_take_profit=price * (1 + tp), price_stop_loss=price * (1 - sl),
                             minute_estimated_time=240)
        if f_before >= s_before and f < s:
            return SignalDto(position="short", price_take_profit=price * (1 - tp),
                             price_stop_loss=price * (1 + sl), minute_estimated_time=240)
        return None

    return sma_cross


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


# ------------------------------------------------------------------ variants for `backtest-kit walk`
# Module-level functions (not closures) so a process pool or Ray can send them to workers by reference.
_FAST = make_strategy(5, 20)
_SLOW = make_strategy(20, 60)


async def sma_5_20(symbol: str, when: datetime) -> SignalDto | None:
    """The crossover of SMA(5) over SMA(20): quicker, more trades."""
    return await _FAST(symbol, when)


async def sma_20_60(symbol: str, when: datetime) -> SignalDto | None:
    """The crossover of SMA(20) over SMA(60): slower, fewer trades."""
    return await _SLOW(symbol, when)


WALK_STRATEGIES: dict[str, Callable[[str, datetime], Awaitable[SignalDto | None]]] = {
    "sma-5-20": sma_5_20,
    "sma-10-30": get_signal,
    "sma-20-60": sma_20_60,
}
"""What `backtest-kit walk` compares when no strategy module is given (a module of yours may define its
own `WALK_STRATEGIES`: strategy name -> module-level get_signal)."""

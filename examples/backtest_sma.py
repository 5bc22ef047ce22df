"""SMA(10)/SMA(30) crossover backtest over the bundled week of real BTCUSDT 1m candles.

    python examples/backtest_sma.py            # prints the report, writes ./dump/backtest/BTCUSDT_sma-cross.md
    python examples/backtest_sma.py data.csv   # any 1m CSV in the format of backtest_kit/data

Every 5 minutes the strategy reads the last 50 closed 1m candles; when SMA(10) crosses above
SMA(30) it opens a long market signal with TP +1 % and SL −1 %, a cross below opens the mirrored
short; positions expire after 240 minutes. Default config: fee 0.1 %, slippage 0.1 %.
"""

from __future__ import annotations

import asyncio
import sys
from datetime import UTC, datetime, timedelta

import backtest_kit as bk


def sma(values: list[float]) -> float:
    return sum(values) / len(values)


async def get_signal(symbol: str, when: datetime) -> bk.SignalDto | None:
    candles = await bk.get_candles(symbol, "1m", 50)
    if len(candles) < 31:
        return None
    closes = [c.close for c in candles]
    fast, slow = sma(closes[-10:]), sma(closes[-30:])
    fast_before, slow_before = sma(closes[-11:-1]), sma(closes[-31:-1])
    price = closes[-1]
    if fast_before <= slow_before and fast > slow:
        return bk.SignalDto(position="long", price_take_profit=price * 1.01,
                            price_stop_loss=price * 0.99, minute_estimated_time=240)
    if fast_before >= slow_before and fast < slow:
        return bk.SignalDto(position="short", price_take_profit=price * 0.99,
                            price_stop_loss=price * 1.01, minute_estimated_time=240)
    return None


def register(engine: bk.Engine, csv_path: str | None = None) -> tuple[str, str]:
    """Register the exchange, strategy and frame on `engine`; returns (symbol, frame_name)."""
    source = bk.CsvCandles(csv_path or bk.bundled_sample_path())
    symbol = source.symbols[0]
    first, last = source.first_timestamp(symbol), source.last_timestamp(symbol)
    engine.add_exchange(exchange_name="csv", get_candles=source)
    engine.add_strategy(strategy_name="sma-cross", interval="5m", get_signal=get_signal)
    engine.add_frame(
        frame_name="all-data",
        interval="1m",
        start_date=datetime.fromtimestamp(first / 1000, UTC) + timedelta(minutes=50),
        end_date=datetime.fromtimestamp(last / 1000, UTC),
    )
    return symbol, "all-data"


async def main(csv_path: str | None = None) -> None:
    engine = bk.default_engine
    symbol, frame = register(engine, csv_path)
    engine.listen_error(lambda error: print(f"error: {error}", file=sys.stderr))
    async for _trade in bk.Backtest.run(symbol, strategy_name="sma-cross", exchange_name="csv",
                                        frame_name=frame):
        pass  # every closed trade arrives here in time order
    print(await bk.Backtest.get_report(symbol, "sma-cross"))
    path = await bk.Backtest.dump(symbol, "sma-cross")
    print(f"\nreport written to {path}")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else None))

"""Risk profile, position sizing and partial levels over the bundled week of real BTCUSDT 1m candles.

    python examples/risk_sizing.py

- Risk profile "prod": at most 2 open positions across every strategy and symbol using it, plus the
  seed's rules — reject a stop loss farther than 2 % from the entry, and reject trading in the hour
  after midnight UTC (a time-of-day rule on *simulated* time). Rejections go to `listen_risk`.
- Sizing "conservative": the seed's `get_quantity` form (risk 1 % of a 10 000 USDT account between
  entry and stop, capped at 0.1 BTC); the quantity shows on every opened signal. The built-in
  calculators are shown through `bk.PositionSize` as well.
- Partial levels: the strategy scales out in its head at 30 / 60 / 90 % of the way to TP
  (`bk.Constant`), listening to `listen_partial_profit` / `listen_partial_loss`.

Two strategies (a fast and a slow SMA cross) share the profile; the reports are written to
./dump/{backtest,risk,partial}/.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import backtest_kit as bk

ACCOUNT_BALANCE = 10_000.0


def sma(values: list[float]) -> float:
    return sum(values) / len(values)


def sma_cross(fast: int, slow: int) -> Any:
    async def get_signal(symbol: str, when: datetime) -> bk.SignalDto | None:
        candles = await bk.get_candles(symbol, "1m", slow + 2)
        if len(candles) < slow + 1:
            return None
        closes = [c.close for c in candles]
        now_fast, now_slow = sma(closes[-fast:]), sma(closes[-slow:])
        before_fast, before_slow = sma(closes[-fast - 1:-1]), sma(closes[-slow - 1:-1])
        price = closes[-1]
        if before_fast <= before_slow and now_fast > now_slow:
            return bk.SignalDto(position="long", price_take_profit=price * 1.01, price_stop_loss=price * 0.99,
                                minute_estimated_time=240)
        if before_fast >= before_slow and now_fast < now_slow:
            return bk.SignalDto(position="short", price_take_profit=price * 0.99, price_stop_loss=price * 1.01,
                                minute_estimated_time=240)
        return None

    return get_signal


# ----------------------------------------------------------------------------------- risk validations
def max_stop_distance(args: bk.RiskCheckArgs) -> None:
    """The seed's rule: the stop loss may not be more than 2 % away from the entry."""
    signal = args.pending_signal
    distance = abs(signal.price_open - signal.price_stop_loss) / signal.price_open * 100
    if distance > 2:
        raise ValueError(f"stop loss {distance:.2f}% away")


def not_after_midnight(args: bk.RiskCheckArgs) -> bool:
    """Return False to reject (port extension); `args.timestamp` is simulated time in a backtest."""
    return datetime.fromtimestamp(args.timestamp / 1000, UTC).hour != 0


async def conservative_quantity(symbol: str, signal: bk.SignalRow, current_price: float) -> float:
    """Risk 1 % of the account between entry and stop loss (what fixed-percentage sizing does)."""
    risk_amount = ACCOUNT_BALANCE * 0.01
    return risk_amount / abs(signal.price_open - signal.price_stop_loss)


def register(engine: bk.Engine) -> tuple[str, str]:
    source = bk.CsvCandles(bk.bundled_sample_path())
    symbol = source.symbols[0]
    first, last = source.first_timestamp(symbol), source.last_timestamp(symbol)
    engine.add_exchange(exchange_name="csv", get_candles=source,
                        format_quantity=lambda symbol, qty: f"{qty:.5f}")
    engine.add_risk(
        risk_name="prod",
        max_concurrent_positions=2,
        validations=[
            {"validate": max_stop_distance, "note": "stop loss farther than 2 %"},
            {"validate": not_after_midnight, "note": "no new positions 00:00-01:00 UTC"},
        ],
    )
    engine.add_sizing(sizing_name="conservative", get_quantity=conservative_quantity, max_position_size=0.1)
    engine.add_sizing(sizing_name="fixed-2pct", method="fixed-percentage", risk_percentage=2,
                      max_position_percentage=50)
    for name, fast, slow in (("sma-fast", 5, 20), ("sma-slow", 10, 30)):
        engine.add_strategy(strategy_name=name, interval="5m", get_signal=sma_cross(fast, slow),
                            risk_name="prod", sizing_name="conservative")
    engine.add_frame(frame_name="week", interval="1m",
                     start_date=datetime.fromtimestamp(first / 1000, UTC) + timedelta(minutes=60),
                     end_date=datetime.fromtimestamp(last / 1000, UTC))
    return symbol, "week"


async def main() -> None:
    engine = bk.default_engine
    symbol, frame = register(engine)
    rejections: dict[str, int] = {}
    engine.listen_risk(lambda e: rejections.__setitem__(e.comment, rejections.get(e.comment, 0) + 1))
    scale_outs: list[str] = []

    def on_profit(event: bk.PartialEvent) -> None:
        if event.level in (bk.Constant.TP_LEVEL1, bk.Constant.TP_LEVEL2, bk.Constant.TP_LEVEL3):
            scale_outs.append(f"{event.strategy_name} {event.signal.id[:8]} +{event.level}%")

    engine.listen_partial_profit(on_profit)
    engine.listen_partial_loss(lambda e: None)  # subscribing turns level tracking on for backtests

    opened: list[bk.SignalRow] = []
    engine.listen_signal_backtest(lambda r: opened.append(r.signal) if r.action == "opened" else None)
    strategies = ("sma-fast", "sma-slow")
    await asyncio.gather(*(
        _consume(engine.backtest.run(symbol, strategy_name=s, exchange_name="csv", frame_name=frame))
        for s in strategies))

    print(f"opened {len(opened)} positions; first quantities:")
    exchange = engine.exchange("csv")
    for row in opened[:3]:
        print(f"  {row.strategy_name} {row.position} @ {row.price_open:.2f} qty "
              f"{await exchange.format_quantity(symbol, row.quantity or 0.0)}")
    print("risk rejections by reason:", rejections)
    print(f"scale-out milestones reached: {len(scale_outs)}")
    size = await engine.position_size.fixed_percentage(symbol, ACCOUNT_BALANCE, 60_000, 59_400,
                                                       sizing_name="fixed-2pct")
    print(f"fixed 2 % of {ACCOUNT_BALANCE:.0f} USDT with a 1 % stop at 60 000: {size:.5f} BTC")
    for s in strategies:
        stats = await engine.backtest.get_data(symbol, s)
        print(f"{s}: {stats.total_trades} trades, total PnL {stats.total_pnl or 0:+.2f}%")
        await engine.backtest.dump(symbol, s)
        await engine.risk.dump(symbol, s)
        await engine.partial.dump(symbol, s)


async def _consume(results: Any) -> None:
    async for _ in results:
        pass


if __name__ == "__main__":
    asyncio.run(main())

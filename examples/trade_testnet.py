"""Real orders on the Binance spot testnet: a small long bracket every 15 minutes, exactly once.

    export BINANCE_API_KEY=... BINANCE_SECRET=...      # testnet keys: https://testnet.binance.vision
    python examples/trade_testnet.py                   # BTCUSDT, 0.001 BTC a trade, until Ctrl-C
    python examples/trade_testnet.py --symbol ETHUSDT --amount 0.01

What changes from paper trading is one line: the executor is `bk.CcxtExecutor("binance")` (instead of
`bk.PaperExecutor()`) and `trade=True`. The exchange is registered in sandbox mode and the executor is
built with `sandbox=True`, so it refuses to run against anything but the testnet. Every order is
journalled in ./testnet-state before it is sent: stop this (even with kill -9) and start it again, and it
reconciles its orders by client order id before doing anything else. Without keys it exits at once
with a message saying which variables to set; the keys are never printed or logged.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import backtest_kit as bk
from backtest_kit.adapters.ccxt import CcxtExchange, add_ccxt_exchange

STRATEGY = "testnet-bracket"
EXCHANGE = "binance"
KEY_NAMES = ("BINANCE_API_KEY", "BINANCE_SECRET")


def missing_keys(environ: Mapping[str, str] = os.environ) -> list[str]:
    return [name for name in KEY_NAMES if not environ.get(name)]


async def bracket(symbol: str, when: datetime) -> bk.SignalDto:
    """A 0.5 % take profit / 0.5 % stop loss long, closed after two hours at the latest."""
    price = await bk.get_average_price(symbol)
    return bk.SignalDto(position="long", price_take_profit=price * 1.005, price_stop_loss=price * 0.995,
                        minute_estimated_time=120, note="testnet bracket")


def register(engine: bk.Engine, *, amount: float, sandbox: bool = True, api_urls: Mapping[str, str] | None = None,
             ccxt_config: Mapping[str, Any] | None = None) -> CcxtExchange:
    """The testnet exchange, the strategy, and its real-order executor on `engine`."""
    exchange = add_ccxt_exchange(EXCHANGE, "binance", engine=engine, sandbox=sandbox, api_urls=api_urls,
                                 config={"timeout": 10_000, **dict(ccxt_config or {})})
    engine.add_strategy(strategy_name=STRATEGY, interval="15m", get_signal=bracket)
    engine.add_order_executor(strategy_name=STRATEGY, trade=True,
                              executor=bk.CcxtExecutor(EXCHANGE, sandbox=sandbox, amount=amount))
    engine.listen_order(lambda o: print(f"order {o.role} {o.side} {o.type} {o.status}: filled {o.filled} "
                                        f"at {o.average_price} (fee {o.fee:.6f} {o.fee_currency}) "
                                        f"{o.reason or ''}", flush=True))
    engine.listen_error(lambda e: print(f"error: {type(e).__name__}: {e}", file=sys.stderr, flush=True))
    return exchange


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--symbol", default="BTCUSDT")
    parser.add_argument("--amount", type=float, default=0.001, help="base units per trade (default 0.001)")
    args = parser.parse_args(argv)
    missing = missing_keys()
    if missing:
        print(f"trade_testnet: set {' and '.join(missing)} to your Binance spot testnet keys "
              "(https://testnet.binance.vision); nothing was sent.", file=sys.stderr)
        return 2
    engine = bk.Engine(persist_dir="./testnet-state")
    register(engine, amount=args.amount)
    handle = engine.live.background(args.symbol, strategy_name=STRATEGY, exchange_name=EXCHANGE)
    print(f"trading {args.symbol} on the Binance spot testnet; Ctrl-C stops (a restart picks up the open "
          "position and its orders from ./testnet-state)")
    try:
        await handle.wait()
    except asyncio.CancelledError:
        pass
    finally:
        print(await engine.live.get_report(args.symbol, STRATEGY))
        await engine.close()
    return 0


if __name__ == "__main__":
    try:
        sys.exit(asyncio.run(main()))
    except KeyboardInterrupt:
        sys.exit(130)

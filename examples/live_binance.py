"""Live SMA-crossover trading signals on Binance spot (or its testnet) through ccxt.

    printf 'BINANCE_API_KEY=...\nBINANCE_SECRET=...\n' > .env    # optional: market data is public
    python examples/live_binance.py --testnet            # Binance spot testnet (testnet.binance.vision)
    python examples/live_binance.py --symbol ETHUSDT     # mainnet market data
    python examples/live_binance.py --check              # load markets, print the last candle, exit

The production setup in one file: keys from a `.env` file (or the environment), a logger, the
config, the ccxt exchange (one client, markets cached, candles paginated, errors retried by the
engine), the SMA strategy of `backtest_sma.py` with lifecycle callbacks, a risk profile, listeners
and a graceful shutdown: the first Ctrl-C / SIGTERM stops new signals and lets an open position run
to its take-profit, stop-loss or expiry; a second one abandons it. The report is written on exit.

Market data is public, so the keys are optional; they are never logged or printed. The engine
emits signals only — it does not place orders.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import backtest_kit as bk
from backtest_kit.adapters.ccxt import CcxtExchange, add_ccxt_exchange

sys.path.insert(0, str(Path(__file__).resolve().parent))
from backtest_sma import get_signal  # the SMA(10)/SMA(30) crossover of the backtest example

log = logging.getLogger("live_binance")
STRATEGY = "sma-cross-live"
EXCHANGE = "binance"


def register(
    engine: bk.Engine,
    *,
    testnet: bool = False,
    env_file: str | Path | None = ".env",
    api_urls: Mapping[str, str] | None = None,
    ccxt_config: Mapping[str, Any] | None = None,
) -> CcxtExchange:
    """Config, exchange, risk, strategy and listeners on `engine`; returns the ccxt adapter."""
    engine.set_config({
        "CC_PERCENT_FEE": 0.1,                     # taker fee per side, %
        "CC_PERCENT_SLIPPAGE": 0.1,
        "CC_GET_CANDLES_RETRY_COUNT": 3,           # 429 / 5xx / timeouts: 3 attempts ...
        "CC_GET_CANDLES_RETRY_DELAY_MS": 2000,     # ... 2 s, 4 s apart (with jitter), then listen_error
        "CC_MAX_SIGNAL_LIFETIME_MINUTES": 24 * 60,
    })
    env = env_file if env_file is not None and Path(env_file).is_file() else None
    exchange = add_ccxt_exchange(
        EXCHANGE, "binance", engine=engine, sandbox=testnet, env_file=env, api_urls=api_urls,
        config={"timeout": 10_000, "enableRateLimit": True, **dict(ccxt_config or {})},
        note="Binance spot via ccxt" + (" (testnet)" if testnet else ""),
    )
    engine.add_risk(
        risk_name="one-at-a-time",
        max_concurrent_positions=1,
        validations=[{
            "validate": lambda args: args.pending_signal.minute_estimated_time <= 24 * 60,
            "note": "a position may not be planned for longer than a day",
        }],
    )
    engine.add_strategy(
        strategy_name=STRATEGY, interval="5m", get_signal=get_signal, risk_name="one-at-a-time",
        callbacks=bk.StrategyCallbacks(
            on_open=lambda symbol, row, price, backtest: log.info(
                "OPEN  %s %s at %.2f  tp %.2f  sl %.2f", symbol, row.position, price,
                row.price_take_profit, row.price_stop_loss),
            on_close=lambda symbol, row, price, backtest: log.info(
                "CLOSE %s %s at %.2f", symbol, row.position, price),
            on_cancel=lambda symbol, row, price, backtest: log.info("CANCEL %s %s", symbol, row.position),
        ),
    )
    engine.listen_signal_live(_on_signal)
    engine.listen_error(lambda error: log.warning("error: %s", error))
    engine.listen_risk(lambda event: log.info("risk rejected a signal: %s", event.comment))
    engine.listen_done_live(lambda event: log.info("live run of %s on %s done", event.strategy_name, event.symbol))
    return exchange


def _on_signal(result: bk.TickResult) -> None:
    if isinstance(result, bk.ClosedResult):
        log.info("closed by %s: pnl %+.2f%%", result.close_reason, result.pnl.pnl_percentage)
    elif isinstance(result, bk.ActiveResult):
        log.debug("active: %.1f%% of the way to TP, %.1f%% to SL", result.percent_tp, result.percent_sl)


async def check(engine: bk.Engine, exchange: CcxtExchange, symbol: str) -> None:
    """Connectivity check: markets, the newest closed 1m candle and the formatted average price."""
    markets = await exchange.load_markets()
    client = engine.exchange(EXCHANGE)
    now = engine.now_ms()
    candles = await client.get_candles(symbol, "1m", 5, now)
    price = await client.average_price(symbol, now)
    print(f"{len(markets)} markets; {symbol} last closed 1m candle: {candles[-1]}")
    print(f"average price {await client.format_price(symbol, price)}; "
          f"0.123456789 {symbol} -> {await client.format_quantity(symbol, 0.123456789)}")


async def run(engine: bk.Engine, symbol: str, *, plot: bool = True) -> None:
    """Trade until SIGINT/SIGTERM, then stop gracefully, write the report and close the exchange."""
    handle = engine.live.background(symbol, strategy_name=STRATEGY, exchange_name=EXCHANGE)
    uninstall = bk.install_signal_handlers(handle, on_repeat=handle.task.cancel)
    log.info("live on %s; Ctrl-C stops new signals, a second Ctrl-C abandons an open position", symbol)
    try:
        await handle.wait()
    except asyncio.CancelledError:
        log.warning("abandoned the open position")
    finally:
        uninstall()
        path = await engine.live.dump(symbol, STRATEGY, plot=plot)  # + an equity chart with matplotlib
        log.info("report written to %s", path)
        await engine.close()


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--symbol", default="BTCUSDT")
    parser.add_argument("--testnet", action="store_true", help="use the Binance spot testnet")
    parser.add_argument("--env-file", default=".env", help="KEY=value file with BINANCE_API_KEY / BINANCE_SECRET")
    parser.add_argument("--check", action="store_true", help="check connectivity and exit")
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser.parse_args(argv)


async def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    logging.getLogger("ccxt").setLevel(logging.INFO)  # ccxt's request dumps are too chatty at DEBUG
    engine = bk.default_engine
    engine.set_logger(logging.getLogger("backtest_kit"))
    exchange = register(engine, testnet=args.testnet, env_file=args.env_file)
    log.info("exchange %r", exchange)  # the repr masks the keys
    if args.check:
        try:
            await check(engine, exchange, args.symbol)
        except bk.BacktestKitError as exc:  # unreachable exchange, unknown symbol, ...
            log.error("check failed: %s", exc)
            raise SystemExit(1) from None
        finally:
            await engine.close()
        return
    await run(engine, args.symbol)


if __name__ == "__main__":
    asyncio.run(main())

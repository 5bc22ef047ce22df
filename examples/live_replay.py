"""Paper trading on history: live mode over recorded candles, served as if they were arriving now.

    python examples/live_replay.py                  # the bundled week of BTCUSDT, as fast as possible
    python examples/live_replay.py --pace 0.02      # 20 ms of real time per tick: watch it, Ctrl-C it
    python examples/live_replay.py data.csv --persist-dir ./paper --start-minutes 600
                                                    # your 1m CSV from minute 600, state kept on disk

The SMA crossover of `backtest_sma.py` runs in *live* mode: the real live loop ticking every
`TICK_TTL` on a `VirtualClock`, with a `ReplayExchange` that only ever shows the candles closed by
the clock's "now". So the code path is the production one (persistence, listeners, stop semantics)
while a week of trading takes a couple of seconds. The run ends on its own when the data does (the
replay exchange tells the live loop; a position still open is reported as open, with its unrealised
PnL at the last price), or at the first SIGINT / SIGTERM: no new signals, an open position runs to
its TP / SL / expiry, then `listen_done_live` fires; a second signal abandons the position (it stays
persisted). The report is printed and written to `<dump-dir>/live/<symbol>_sma-cross.md`. Live state
goes to a temporary directory unless `--persist-dir` is given; restarting with the same directory (and
the `--start-minutes` at which the previous process stopped) restores the open position, as a
restarted live process would.

Live trades differ from the backtest's on TP/SL exits (live compares the 5-candle VWAP once a tick,
a backtest each candle's high/low): see tests/test_live_equivalence.py for the exact rule.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import backtest_kit as bk

sys.path.insert(0, str(Path(__file__).resolve().parent))
from backtest_sma import get_signal  # the SMA(10)/SMA(30) crossover of the backtest example

STRATEGY = "sma-cross"
EXCHANGE = "replay"


def register(engine: bk.Engine, source: bk.MemoryCandles, clock: bk.VirtualClock) -> None:
    engine.add_exchange(exchange_name=EXCHANGE, get_candles=bk.ReplayExchange(source, clock))
    engine.add_strategy(strategy_name=STRATEGY, interval="5m", get_signal=get_signal)


def _print_signal(result: bk.TickResult, now: str) -> None:
    if isinstance(result, bk.OpenedResult):
        s = result.signal
        print(f"{now}  OPEN   {s.position:<5} at {s.price_open:10.2f}  tp {s.price_take_profit:.2f}  "
              f"sl {s.price_stop_loss:.2f}")
    elif isinstance(result, bk.ClosedResult):
        print(f"{now}  CLOSE  {result.signal.position:<5} at {result.current_price:10.2f}  "
              f"{result.close_reason:<12} pnl {result.pnl.pnl_percentage:+.2f}%")
    elif isinstance(result, bk.CancelledResult):
        print(f"{now}  CANCEL {result.signal.position}")


async def main(argv: Sequence[str] | None = None) -> bk.Statistics:
    args = parse_args(argv)
    source = bk.CsvCandles(args.csv or bk.bundled_sample_path())
    symbol = source.symbols[0]
    clock = bk.replay_clock(source, symbol, warmup_minutes=args.start_minutes)
    scratch = None if args.persist_dir else tempfile.TemporaryDirectory(prefix="live_replay-")
    persist_dir = args.persist_dir or (scratch.name if scratch else "./data")
    engine = bk.Engine(clock=clock, persist_dir=persist_dir, dump_dir=args.dump_dir)
    register(engine, source, clock)

    async def on_signal(result: bk.TickResult) -> None:
        _print_signal(result, clock.now().strftime("%Y-%m-%d %H:%M"))
        if args.pace > 0:
            await asyncio.sleep(args.pace)  # the publisher awaits its listeners: this paces the run

    engine.listen_signal_live(on_signal)
    engine.listen_error(lambda error: print(f"error: {error!r}", file=sys.stderr))
    engine.listen_done_live(lambda event: print(f"live run of {event.strategy_name} on {event.symbol} done"))

    handle = engine.live.background(symbol, strategy_name=STRATEGY, exchange_name=EXCHANGE)
    uninstall = bk.install_signal_handlers(handle, on_repeat=handle.task.cancel)
    print(f"paper trading {symbol} from {clock.now():%Y-%m-%d %H:%M}; Ctrl-C stops gracefully")
    try:
        await handle.wait()
    except asyncio.CancelledError:
        print("abandoned the open position (it stays persisted)", file=sys.stderr)
    finally:
        uninstall()
        await engine.close()
        if scratch is not None:
            scratch.cleanup()
    stats = await engine.live.get_data(symbol, STRATEGY)
    print(await engine.live.get_report(symbol, STRATEGY))
    path = await engine.live.dump(symbol, STRATEGY)
    print(f"\nreport written to {path}")
    return stats


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("csv", nargs="?", help="a 1m candle CSV (default: the bundled BTCUSDT week)")
    parser.add_argument("--pace", type=float, default=0.0, help="real seconds to wait per tick (default 0)")
    parser.add_argument("--persist-dir", help="where live state is persisted (default: a temporary directory)")
    parser.add_argument("--start-minutes", type=int, default=60,
                        help="start the replay this many minutes after the first candle (default 60)")
    parser.add_argument("--dump-dir", default="./dump", help="where the report is written")
    return parser.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main())

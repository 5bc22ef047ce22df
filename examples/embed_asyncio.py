"""The engine inside an existing asyncio application, sharing its event loop.

    python examples/embed_asyncio.py            # replay the bundled week through two live strategies
    python examples/embed_asyncio.py --pace 0.01 --port 8765   # slower; `nc 127.0.0.1 8765` shows status

The application owns the loop (`asyncio.run` is called here, never by the library) and runs its own
tasks in an `asyncio.TaskGroup`: a small TCP status server, a reporter, and a supervisor that starts
two live runs (`Live.background` creates their tasks on the running loop) and stops them when the
replayed data ends or on SIGINT / SIGTERM. Stopping is graceful (open positions run to their close),
then the server shuts down and the program checks that no task was leaked.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import backtest_kit as bk

sys.path.insert(0, str(Path(__file__).resolve().parent))
from backtest_sma import get_signal  # the SMA(10)/SMA(30) crossover of the backtest example

STRATEGIES = {"sma-5m": "5m", "sma-15m": "15m"}  # one live run (task) per (symbol, strategy)


class App:
    def __init__(self, engine: bk.Engine, symbol: str, end_ms: int, pace: float) -> None:
        self.engine = engine
        self.symbol = symbol
        self.end_ms = end_ms
        self.pace = pace
        self.stopping = asyncio.Event()
        self.trades = 0

    async def on_signal(self, result: bk.TickResult) -> None:
        if isinstance(result, bk.ClosedResult):
            self.trades += 1
        if self.engine.now_ms() >= self.end_ms:
            self.stopping.set()
        if self.pace:
            await asyncio.sleep(self.pace)

    async def status(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One JSON line per connection: every live run and its statistics."""
        rows = []
        for info in await self.engine.live.list():
            stats = await self.engine.live.get_data(info.symbol, info.strategy_name)
            rows.append({"strategy": info.strategy_name, "symbol": info.symbol, "status": info.status,
                         "trades": stats.total_trades, "total_pnl": stats.total_pnl})
        writer.write((json.dumps({"now": self.engine.clock.now().isoformat(), "runs": rows}) + "\n").encode())
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    async def supervisor(self, server: asyncio.Server) -> None:
        handles = [self.engine.live.background(self.symbol, strategy_name=name, exchange_name="replay")
                   for name in STRATEGIES]
        uninstall = bk.install_signal_handlers(self.stopping.set)
        try:
            await self.stopping.wait()
            print("stopping: no new signals; open positions run to their close")
            for handle in handles:
                handle()
            for handle in handles:
                await handle.wait()
        finally:
            uninstall()
            server.close()
            await server.wait_closed()

    async def reporter(self, port: int) -> None:
        """Asks the status server (like any client would) once per simulated day until stopped."""
        last_day = -1
        while not self.stopping.is_set():
            day = self.engine.now_ms() // 86_400_000
            if day != last_day:
                last_day = day
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                print("status:", (await reader.readline()).decode().strip())
                writer.close()
                await writer.wait_closed()
            await asyncio.sleep(0.01)


async def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    source = bk.CsvCandles(bk.bundled_sample_path())
    symbol = source.symbols[0]
    clock = bk.replay_clock(source, symbol)
    with tempfile.TemporaryDirectory(prefix="embed-") as scratch:
        engine = bk.Engine(clock=clock, persist_dir=scratch, dump_dir=Path(scratch) / "dump")
        engine.add_exchange(exchange_name="replay", get_candles=bk.ReplayExchange(source, clock))
        for name, interval in STRATEGIES.items():
            engine.add_strategy(strategy_name=name, interval=interval, get_signal=get_signal)
        app = App(engine, symbol, source.last_timestamp(symbol) + 60_000, args.pace)
        engine.listen_signal_live(app.on_signal)
        engine.listen_error(lambda error: print(f"error: {error!r}", file=sys.stderr))
        engine.listen_done_live(lambda e: print(f"done: {e.strategy_name} on {e.symbol}"))

        server = await asyncio.start_server(app.status, "127.0.0.1", args.port)
        port = server.sockets[0].getsockname()[1]
        print(f"status server on 127.0.0.1:{port}")
        async with asyncio.TaskGroup() as group:
            group.create_task(app.supervisor(server))
            group.create_task(app.reporter(port))
        await engine.close()
        for name in STRATEGIES:
            stats = await engine.live.get_data(symbol, name)
            print(f"{name}: {stats.total_trades} trades, total pnl {stats.total_pnl or 0:+.2f}%")
    leaked = asyncio.all_tasks() - {asyncio.current_task()}
    print(f"{app.trades} trades closed; leaked tasks: {len(leaked)}")
    return 1 if leaked else 0


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--pace", type=float, default=0.0, help="real seconds to wait per tick (default 0)")
    parser.add_argument("--port", type=int, default=0, help="status server port (default: any free port)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))

"""Live trading across processes: two workers with their state in Redis, their events over NATS.

    python examples/live_cluster.py                       # local Redis and NATS (nats-server -js)
    python examples/live_cluster.py --nats nats://host:4222 --redis redis://host:6379/0

The main process starts two worker processes and prints what they do, without an engine of its own:

- each worker is an engine trading one pair live (the SMA crossover of `backtest_sma.py`) on a
  `VirtualClock` over two days of recorded candles (the bundled BTCUSDT week; the second pair is the
  same series scaled, a stand-in for ETHUSDT), so the production live loop runs in about a second;
- each keeps its live state (open signals, schedules, risk, partial levels) in Redis under one
  namespace (`bk.RedisPersist`), so another machine could take its pair over after a crash;
- each publishes its signal lifecycle, errors, risk rejections, partial levels and run end to NATS
  JetStream (`bk.NatsBridge`): the engine never waits for the broker, and what JetStream acknowledged
  survives a broker restart;
- the main process subscribes with `bk.listen_remote` and gets the engine's own typed events
  (`bk.OpenedResult`, `bk.ClosedResult`, `bk.DoneEvent`, ...), in each worker's order.

It ends by itself once both workers reported the end of their run, and removes what it stored (its
stream, its Redis namespace). Needs the extras `redis` and `nats`.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import backtest_kit as bk

sys.path.insert(0, str(Path(__file__).resolve().parent))
from backtest_sma import get_signal  # the SMA(10)/SMA(30) crossover of the backtest example

PAIRS = {"BTCUSDT": 1.0, "ETHUSDT": 0.05}  # symbol -> price scale of the bundled BTCUSDT series
DAYS = 2
STRATEGY = "sma-cross"


def candles(symbol: str) -> bk.MemoryCandles:
    """Two days of the bundled 1m candles, scaled for the pair (a demo: no download, no API key)."""
    scale = PAIRS[symbol]
    sample = bk.CsvCandles(bk.bundled_sample_path())
    rows = sample.next_candles("BTCUSDT", "1m", sample.first_timestamp("BTCUSDT"), DAYS * 1440)
    return bk.MemoryCandles({symbol: [
        bk.Candle(c.timestamp, c.open * scale, c.high * scale, c.low * scale, c.close * scale, c.volume)
        for c in rows]})


async def worker(symbol: str, nats_url: str, redis_url: str, run_id: str) -> None:
    """One process, one engine, one pair: live on a VirtualClock, state in Redis, events to NATS."""
    source = candles(symbol)
    clock = bk.replay_clock(source, symbol, warmup_minutes=60)
    engine = bk.Engine(clock=clock)
    redis = bk.RedisPersist(redis_url, namespace=f"cluster-{run_id}-{symbol}", timeout=2.0)
    engine.use_persist(redis)
    engine.add_shutdown_hook(redis.aclose)
    bridge = bk.NatsBridge(nats_url, stream=f"CLUSTER_{run_id}", prefix=f"cluster{run_id}",
                           source=f"worker-{symbol}")
    bridge.attach(engine)  # engine.close() publishes what is queued, then closes the connection
    engine.add_exchange(exchange_name="replay", get_candles=bk.ReplayExchange(source, clock))
    engine.add_strategy(strategy_name=STRATEGY, interval="5m", get_signal=get_signal)
    handle = engine.live.background(symbol, strategy_name=STRATEGY, exchange_name="replay")
    await handle.wait()
    for entity in ("signals", "schedules", "risk", "partial"):  # a demo: leave nothing behind
        for key in await redis.keys(entity):
            await redis.delete(entity, key)
    await engine.close()


def describe(remote: bk.RemoteEvent[Any]) -> str:
    event = remote.event
    if isinstance(event, bk.OpenedResult):
        s = event.signal
        what = (f"OPEN   {s.position:<5} at {s.price_open:10.2f}  tp {s.price_take_profit:.2f}  "
                f"sl {s.price_stop_loss:.2f}")
    elif isinstance(event, bk.ClosedResult):
        what = (f"CLOSE  {event.signal.position:<5} at {event.current_price:10.2f}  {event.close_reason:<12} "
                f"pnl {event.pnl.pnl_percentage:+.2f}%")
    elif isinstance(event, bk.PartialEvent):
        what = f"{remote.channel.upper():<14} level {event.level}%"
    elif isinstance(event, bk.DoneEvent):
        what = "DONE   live run ended"
    elif isinstance(event, bk.RemoteError):
        what = f"ERROR  {event.type}: {event.message}"
    else:
        what = f"{remote.channel} {type(event).__name__}"
    return f"[{remote.source:<15} #{remote.seq:>3}] {remote.symbol:<8} {what}"


async def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        await worker(args.worker, args.nats, args.redis, args.run_id)
        return 0
    run_id = uuid.uuid4().hex[:8]
    done: set[str] = set()
    all_done = asyncio.Event()
    counts: dict[str, int] = {}

    def on_event(remote: bk.RemoteEvent[Any]) -> None:
        counts[remote.symbol] = counts.get(remote.symbol, 0) + 1
        if remote.channel.startswith("partial"):
            return  # many per trade: counted, not printed
        print(describe(remote), flush=True)
        if isinstance(remote.event, bk.DoneEvent):
            done.add(remote.symbol)
            if done == set(PAIRS):
                all_done.set()

    remote = bk.RemoteEvents(args.nats, stream=f"CLUSTER_{run_id}", prefix=f"cluster{run_id}")
    await remote.subscribe(on_event)  # creates the stream if no worker did yet; events from now on
    workers = [await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--worker", symbol, "--run-id", run_id, "--nats", args.nats, "--redis", args.redis)
        for symbol in PAIRS]
    try:
        codes = await asyncio.wait_for(asyncio.gather(*(w.wait() for w in workers)), args.timeout)
        if codes == [0] * len(PAIRS):  # each flushed its bridge before exiting: the events are in the stream
            await asyncio.wait_for(all_done.wait(), args.timeout)
    finally:
        for w in workers:
            if w.returncode is None:
                w.kill()
        await remote.aclose()
        await drop_stream(args.nats, f"CLUSTER_{run_id}")
    print(f"events received: {', '.join(f'{s} {n}' for s, n in sorted(counts.items()))}; workers exited {codes}")
    return 0 if codes == [0] * len(PAIRS) else 1


async def drop_stream(url: str, stream: str) -> None:
    import nats  # the demo's stream goes with it; a real deployment keeps its stream

    nc = await nats.connect(url)
    try:
        await nc.jetstream().delete_stream(stream)
    finally:
        await nc.close()


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nats", default="nats://127.0.0.1:4222", help="NATS server with JetStream")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0", help="Redis for the live state")
    parser.add_argument("--timeout", type=float, default=60.0, help="give up after this many seconds")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--run-id", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))

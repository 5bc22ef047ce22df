"""Child program of the shared-store kill -9 trials (`tests/test_lease_killtest.py`).

    python tests/lease_child.py --backend redis --namespace NS --owner node-1 --symbols BTC/USDT \\
        --workdir DIR --journal FILE [--schema S] [--risk-limit 1] [--hold 5] [--minutes 720]
        [--lease-ttl 10] [--standby --follow]

Live paper trading over a replay of the bundled BTCUSDT candles (scaled copies per symbol, as in
`killtest_child.py`) on a `CheckpointClock`, with every entity in one `RedisPersist` or
`PostgresPersist` namespace shared with the other processes of the trial. Every flat pair asks for a
market long on every idle tick (``--hold`` minutes, take profit / stop loss 1.5 % away), so the
profile ``shared`` (``max_concurrent_positions=--risk-limit``) is always contended across processes.

Every opened / closed / cancelled result, the first restored (``active``) result of each process life
and every reported error are appended to ``--journal`` (one file shared by all processes: O_APPEND
lines, fsync-ed). An ``opened`` line carries ``stored``: how many pending signals the shared store
holds right after the open (every pair of every process), which must never exceed the limit, since a
stored signal always holds a slot. Fields under ``"life"`` (owner, pid, wall time) differ between a
line and its replay after a kill and are left out when lines are compared.

``--standby`` starts the run with ``standby=True`` (it waits for the lease of a live owner), and
``--follow`` makes the clock follow the shared checkpoint until this process ticks for the first time,
so a standby resumes at the instant its dead predecessor reached.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec
from killtest_child import Checkpoint, CheckpointClock, Journal, scaled_copies

import backtest_kit as bk

STRATEGY = "churn"
EXCHANGE = "replay"
RISK = "shared"


class PacedClock(CheckpointClock):
    """A `CheckpointClock` that also waits `pace` seconds of wall time per tick sleep, so a process the
    parent wants to kill mid-run does not finish its whole slice first."""

    pace = 0.0

    async def sleep(self, seconds: float) -> None:
        if self.pace:
            await asyncio.sleep(self.pace)
        await super().sleep(seconds)


class FollowerClock(CheckpointClock):
    """A `CheckpointClock` that re-reads the shared checkpoint on every reading until its first sleep."""

    following = True

    def now_ms(self) -> int:
        if self.following:
            saved = self.checkpoint.read()
            if saved and saved != "done":
                self._now_ms = max(self._now_ms, int(saved))
        return super().now_ms()

    def now(self) -> datetime:
        self.now_ms()
        return super().now()

    async def sleep(self, seconds: float) -> None:
        self.following = False
        await super().sleep(seconds)


def make_backend(args: argparse.Namespace) -> Any:
    if args.backend == "redis":
        return bk.RedisPersist(args.url, namespace=args.namespace, owner=args.owner, lease_ttl=args.lease_ttl)
    return bk.PostgresPersist(args.url, namespace=args.namespace, schema=args.schema, owner=args.owner,
                              lease_ttl=args.lease_ttl)


def make_get_signal(hold: int) -> Any:
    async def get_signal(symbol: str, when: datetime) -> bk.SignalDto | None:
        price = (await bk.get_candles(symbol, "1m", 1))[-1].close
        when_ms = int(when.timestamp() * 1000)
        return bk.SignalDto(position="long", price_take_profit=price * 1.015, price_stop_loss=price * 0.985,
                            minute_estimated_time=hold, id=f"{symbol}@{when_ms}")

    return get_signal


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=("redis", "postgres"), required=True)
    parser.add_argument("--url", required=True)
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--schema", default="public")
    parser.add_argument("--owner", required=True)
    parser.add_argument("--lease-ttl", type=float, default=10.0)
    parser.add_argument("--symbols", required=True)
    parser.add_argument("--risk-limit", type=int, default=1)
    parser.add_argument("--hold", type=int, default=5, help="minute_estimated_time of every position")
    parser.add_argument("--minutes", type=int, default=720)
    parser.add_argument("--warmup", type=int, default=60)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--journal", required=True)
    parser.add_argument("--standby", action="store_true")
    parser.add_argument("--follow", action="store_true")
    parser.add_argument("--pace", type=float, default=0.0, help="wall seconds per tick (a slow owner)")
    args = parser.parse_args(argv)

    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    checkpoint = Checkpoint(workdir / "checkpoint")
    saved = checkpoint.read()
    if saved == "done":
        print("done", flush=True)
        return 0

    symbols = args.symbols.split(",")
    csv = bk.CsvCandles(bk.bundled_sample_path())
    source = scaled_copies(csv, symbols)
    start_ms = max(source.first_timestamp(s) for s in symbols) + args.warmup * 60_000
    end_ms = start_ms + args.minutes * 60_000
    clock_type = FollowerClock if args.follow else PacedClock
    clock = clock_type(int(saved) if saved else start_ms, checkpoint, end_ms, bk.DEFAULT_CONFIG.CC_TICK_TTL_MS,
                       len(symbols))
    if isinstance(clock, PacedClock):
        clock.pace = args.pace
    backend = make_backend(args)
    engine = bk.Engine(persist_dir=workdir / "unused", dump_dir=workdir / "dump", clock=clock)
    engine.use_persist(backend)
    journal = Journal(Path(args.journal))
    life = {"owner": args.owner, "pid": os.getpid()}
    restored_seen: set[str] = set()

    async def on_result(result: bk.TickResult) -> None:
        action = result.action
        if action == "active" and result.symbol not in restored_seen:
            restored_seen.add(result.symbol)
            action = "restored"  # the first active tick of a life: a position this life did not open
        elif action not in ("opened", "closed", "cancelled"):
            if action != "active":
                restored_seen.add(result.symbol)
            return
        record: dict[str, Any] = {
            "action": action, "id": result.signal.id,  # type: ignore[union-attr]
            "symbol": result.symbol, "tick": clock.now_ms(),
            "result": msgspec.to_builtins(result) if action != "restored" else None,
            "life": {**life, "wall": time.time()},
        }
        if action == "opened":
            record["stored"] = len(await backend.keys("signals"))
        journal.append(record)

    def on_error(error: BaseException) -> None:
        journal.append({"action": "error", "id": "", "symbol": "", "tick": clock.now_ms(), "result": repr(error),
                        "life": {**life, "wall": time.time()}})
        print(f"error: {error!r}", file=sys.stderr, flush=True)

    engine.add_exchange(exchange_name=EXCHANGE, get_candles=bk.ReplayExchange(source, clock))
    engine.add_risk(risk_name=RISK, max_concurrent_positions=args.risk_limit)
    engine.add_strategy(strategy_name=STRATEGY, interval="1m", get_signal=make_get_signal(args.hold), risk_name=RISK)
    engine.listen_signal_live(on_result)
    engine.listen_error(on_error)
    handles = [engine.live.background(s, strategy_name=STRATEGY, exchange_name=EXCHANGE, standby=args.standby)
               for s in symbols]
    print("ready", flush=True)
    await asyncio.gather(*(h.wait() for h in handles))
    info = await engine.live.list()
    print(f"run ended before the data: {info}", file=sys.stderr, flush=True)
    return 1  # the clock exits the process at the end of the slice


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))

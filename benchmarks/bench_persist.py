"""State-change latency and throughput of the persistence backends: files, Redis, PostgreSQL.

Run: ``python benchmarks/bench_persist.py [--pairs N] [--rounds R] [--backends file,redis,postgres]``
(servers from ``BK_BENCH_REDIS_URL`` / ``BK_BENCH_POSTGRES_DSN``, the local ones by default).

A state change is what a live tick costs the backend when a position opens (one atomic write of a
~600-byte signal snapshot) or closes (one delete). With N pairs (default 1,000, one key each):

* **latency**: the pairs open one after another, then close one after another, each operation timed
  alone through the public async API (so the figures include what the engine pays: the worker-thread
  hop of `FilePersist`, the network round trip of the others); p50 / p99 / max;
* **throughput**: all N pairs open and close at once (``asyncio.gather``), R rounds; state changes per
  second, the shape of a tick of a many-pair live deployment.

`FilePersist` runs twice, with ``fsync`` (the default, durable on power loss) and without. The Redis
figures are for a server that keeps nothing on disk; with ``appendfsync always`` it pays an fsync
per write too. A time budget per backend keeps the whole run well under a minute.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from backtest_kit.adapters.file_persist import FilePersist
from backtest_kit.adapters.postgres_persist import PostgresPersist
from backtest_kit.adapters.redis_persist import RedisPersist

BUDGET_S = 15.0  # per backend, latency and throughput together
REDIS_URL = os.environ.get("BK_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
POSTGRES_DSN = os.environ.get("BK_BENCH_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")


def _snapshot(i: int) -> bytes:
    """A pending-signal row of realistic size (~600 bytes of JSON)."""
    row = {
        "id": f"7f3c9a2e-1b4d-4c8e-9f00-{i:012d}",
        "symbol": "BTCUSDT",
        "strategy_name": "rsi-mean-reversion-v2",
        "exchange_name": "binance",
        "position": "long",
        "note": "RSI(14) crossed back above 30 on the 15m frame; volume spike confirms",
        "price_open": 42150.25 + i,
        "price_take_profit": 43414.76,
        "price_stop_loss": 41307.25,
        "minute_estimated_time": 240,
        "scheduled_at": 1732442100000 + i * 60_000,
        "pending_at": 1732442160000 + i * 60_000,
        "timestamp": 1732442160000 + i * 60_000,
        "quantity": 0.0237,
        "risk_name": "conservative",
        "partial": {"profit_levels": [10, 20, 30], "loss_levels": [10]},
        "meta": {"rsi": 29.87, "atr": 312.4, "source": "live"},
    }
    return json.dumps(row, separators=(",", ":")).encode()


def _pair_key(i: int) -> str:
    return f"PAIR{i:05d}USDT-rsi-mean-reversion-v2"


async def _measure(store: Any, pairs: int, rounds: int) -> tuple[list[float], float, int]:
    """(per-operation latencies, state changes per second under concurrency, rounds completed)."""
    await store.write("signals", "warmup", _snapshot(0))  # connect / create directories and tables
    await store.delete("signals", "warmup")
    deadline = time.perf_counter() + BUDGET_S / 2
    latencies: list[float] = []
    for op in ("write", "delete"):
        for i in range(pairs):
            start = time.perf_counter()
            if op == "write":
                await store.write("signals", _pair_key(i), _snapshot(i))
            else:
                await store.delete("signals", _pair_key(i))
            latencies.append(time.perf_counter() - start)
            if time.perf_counter() > deadline:
                break
    for i in range(pairs):  # whatever the budget cut short
        await store.delete("signals", _pair_key(i))

    async def pair(i: int) -> None:
        await store.write("signals", _pair_key(i), _snapshot(i))
        await store.delete("signals", _pair_key(i))

    done = 0
    deadline = time.perf_counter() + BUDGET_S / 2
    start = time.perf_counter()
    while done < rounds and time.perf_counter() < deadline:
        await asyncio.gather(*(pair(i) for i in range(pairs)))
        done += 1
    elapsed = time.perf_counter() - start
    return latencies, 2 * pairs * done / elapsed, done


def _report(label: str, lat: list[float], throughput: float, rounds: int) -> None:
    ordered = sorted(lat)
    p50 = statistics.median(ordered)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    print(
        f"{label:<20} n={len(ordered):>5}  p50={p50 * 1e3:7.3f} ms  p99={p99 * 1e3:7.3f} ms  "
        f"max={ordered[-1] * 1e3:8.3f} ms  throughput={throughput:9.0f} changes/s ({rounds} rounds)"
    )


async def _redis_cleanup(store: RedisPersist) -> None:
    await store.aclose()
    import redis.asyncio as redis_asyncio

    client = redis_asyncio.Redis.from_url(REDIS_URL)
    names = [n async for n in client.scan_iter(match=f"bk:{store.namespace}:*")]
    if names:
        await client.delete(*names)
    await client.aclose()


async def _postgres_cleanup(store: PostgresPersist) -> None:
    await store.aclose()
    import asyncpg

    conn = await asyncpg.connect(POSTGRES_DSN)
    await conn.execute(f'DROP SCHEMA IF EXISTS "{store.schema}" CASCADE')
    await conn.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--pairs", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--backends", default="file,redis,postgres")
    args = parser.parse_args()
    wanted = set(args.backends.split(","))
    tag = uuid.uuid4().hex[:8]
    print(f"snapshot size: {len(_snapshot(0))} bytes; pairs: {args.pairs}; throughput rounds: {args.rounds}")
    with tempfile.TemporaryDirectory(prefix="bench-persist-") as tmp:
        runs: list[tuple[str, Any, Callable[[Any], Any] | None]] = []
        if "file" in wanted:
            runs.append(("file fsync=True", FilePersist(Path(tmp) / "fsync"), None))
            runs.append(("file fsync=False", FilePersist(Path(tmp) / "nofsync", fsync=False), None))
        if "redis" in wanted:
            runs.append(("redis", RedisPersist(REDIS_URL, namespace=f"bench-{tag}"), _redis_cleanup))
        if "postgres" in wanted:
            store = PostgresPersist(POSTGRES_DSN, namespace=f"bench-{tag}", schema=f"bench_{tag}", pool_size=10)
            runs.append(("postgres", store, _postgres_cleanup))
        for label, store, cleanup in runs:
            try:
                latencies, throughput, rounds = await _measure(store, args.pairs, args.rounds)
            finally:
                if cleanup is not None:
                    await cleanup(store)
            _report(label, latencies, throughput, rounds)


if __name__ == "__main__":
    asyncio.run(main())

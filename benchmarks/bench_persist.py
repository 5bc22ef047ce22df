"""Atomic write latency of FilePersist, with and without fsync.

Run: ``python benchmarks/bench_persist.py [--writes N]``. Writes a ~600-byte JSON signal snapshot
N times (default 2,000) through the public async API, so the figures include the worker-thread hop
the engine pays, into a temporary directory, and prints p50 / p99 / max per mode and the fsync cost
ratio. A time budget per mode keeps the whole run under ~30 s on slow disks.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from backtest_kit.adapters.file_persist import FilePersist

BUDGET_S = 12.0  # per mode


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


async def _measure(base: Path, *, fsync: bool, writes: int) -> list[float]:
    store = FilePersist(base, fsync=fsync)
    await store.write("signals", "BTCUSDT-warmup", _snapshot(0))  # directory creation + sweep
    latencies: list[float] = []
    deadline = time.perf_counter() + BUDGET_S
    for i in range(writes):
        data = _snapshot(i)
        start = time.perf_counter()
        await store.write("signals", "BTCUSDT-rsi-mean-reversion-v2", data)
        latencies.append(time.perf_counter() - start)
        if time.perf_counter() > deadline:
            break
    return latencies


def _report(label: str, lat: list[float]) -> float:
    ordered = sorted(lat)
    p50 = statistics.median(ordered)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    print(
        f"{label:<12} n={len(ordered):>5}  p50={p50 * 1e3:8.3f} ms  p99={p99 * 1e3:8.3f} ms  "
        f"max={ordered[-1] * 1e3:8.3f} ms"
    )
    return p50


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--writes", type=int, default=2000)
    args = parser.parse_args()
    print(f"snapshot size: {len(_snapshot(0))} bytes; writes per mode: {args.writes}")
    with tempfile.TemporaryDirectory(prefix="bench-persist-") as tmp:
        print(f"directory: {tmp}")
        synced = await _measure(Path(tmp) / "fsync", fsync=True, writes=args.writes)
        unsynced = await _measure(Path(tmp) / "nofsync", fsync=False, writes=args.writes)
    p50_sync = _report("fsync=True", synced)
    p50_nosync = _report("fsync=False", unsynced)
    print(f"p50 ratio fsync/no-fsync: {p50_sync / p50_nosync:.1f}x")


if __name__ == "__main__":
    asyncio.run(main())

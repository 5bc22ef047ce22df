"""Backtest throughput of the SMA example strategy over real BTCUSDT 1m candles.

Run: ``python benchmarks/bench_backtest.py [--data DIR] [--only 30d|90d|memory] [--source csv|callback]``.

Before/after: ``python benchmarks/bench_backtest.py --compare /tmp/base-checkout [--rounds 5]`` runs the
30-day and 90-day throughput of both source paths in fresh subprocesses, alternating the base checkout
and this one each round, and prints the median frames/s of each and the ratio.

Two source paths: ``csv`` registers the `bk.CsvCandles` object (a `SyncCandleSource`, validated at
load time); ``callback`` registers a plain ``async def get_candles(symbol, interval, since, limit)``
returning tuples ``(timestamp, open, high, low, close, volume)`` sliced from a list, the way most users
wrap a database, a REST API or a cache: the engine converts and validates what it returns.

For the 30-day CSV and the 90-day gzip file (from `../shared/data` next to the repository, or
`--data DIR`) it loads the candles with `bk.CsvCandles` (timed separately, including the one-off
prefix sums of the average price), registers the example's `get_signal` (imported from
`examples/backtest_sma.py` by path) on a fresh `bk.Engine` with one synchronous
`listen_signal_backtest` listener counting events, runs `engine.backtest.run` over every 1m frame and
prints frames, trades, total PnL, load seconds, wall seconds of the run, frames/s, the ratio to the
150,000 frames/s target and the peak RSS.

The memory check runs the 90-day file twice with fresh engines, with a 30-day and then a 60-day
frame (double the frames), and prints the current-RSS growth of each run: the frame list is
arithmetic and backtest statistics only keep closed trades, so doubling the frames must not grow
memory beyond the extra trades.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import gc
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# run from a checkout without installing; --compare points BENCH_KIT_ROOT at the other checkout
sys.path.insert(0, os.environ.get("BENCH_KIT_ROOT", str(ROOT)))

import backtest_kit as bk  # noqa: E402

TARGET_FPS = 150_000
FILE_30D = "BTCUSDT-1m-30d.csv"
FILE_90D = "BTCUSDT-1m-2025-05-20_2025-08-18.csv.gz"
MINUTE = 60_000
WARMUP_MINUTES = 50  # the strategy reads 50 closed 1m candles


def example_get_signal() -> Callable[..., Any]:
    path = ROOT / "examples" / "backtest_sma.py"
    spec = importlib.util.spec_from_file_location("backtest_sma_example", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    fn: Callable[..., Any] = module.get_signal
    return fn


def peak_rss_mb() -> float:
    """Peak resident set size of this process (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def current_rss_mb() -> float:
    """Current RSS from /proc (Linux); falls back to the peak elsewhere."""
    try:
        with open("/proc/self/statm") as fh:
            pages = int(fh.read().split()[1])
        return pages * resource.getpagesize() / (1024 * 1024)
    except OSError:
        return peak_rss_mb()


def load(path: Path) -> tuple[bk.CsvCandles, str, float]:
    started = time.perf_counter()
    source = bk.CsvCandles(path)
    symbol = source.symbols[0]
    first = source.first_timestamp(symbol)
    source.average_price(symbol, first + 10 * MINUTE, 5)  # build the lazy prefix sums now
    return source, symbol, time.perf_counter() - started


def plain_callback(source: bk.CsvCandles, symbol: str) -> Callable[..., Any]:
    """A user's own exchange callback: tuples from a list, no engine types, no validation."""
    rows = [(c.timestamp, c.open, c.high, c.low, c.close, c.volume)
            for c in source.next_candles(symbol, "1m", 0, 10**9)]
    stamps = [r[0] for r in rows]

    async def get_candles(sym: str, interval: str, since: datetime, limit: int) -> list[tuple[Any, ...]]:
        if sym != symbol or interval != "1m":
            raise ValueError(f"no data for {sym} {interval}")
        i = bisect.bisect_left(stamps, int(since.timestamp() * 1000))
        return rows[i:i + limit]

    return get_candles


async def run_backtest(
    source: Any, symbol: str, get_signal: Callable[..., Any], start_ms: int, end_ms: int
) -> dict[str, Any]:
    engine = bk.Engine()
    engine.add_exchange(exchange_name="csv", get_candles=source)
    engine.add_strategy(strategy_name="sma-cross", interval="5m", get_signal=get_signal)
    engine.add_frame(frame_name="bench", interval="1m",
                     start_date=datetime.fromtimestamp(start_ms / 1000, UTC),
                     end_date=datetime.fromtimestamp(end_ms / 1000, UTC))
    events = 0
    errors: list[BaseException] = []

    def count(_: Any) -> None:
        nonlocal events
        events += 1

    engine.listen_signal_backtest(count)
    engine.listen_error(errors.append)
    trades = 0
    total_pnl = 0.0
    started = time.perf_counter()
    async for result in engine.backtest.run(symbol, strategy_name="sma-cross", exchange_name="csv",
                                            frame_name="bench"):
        trades += 1
        if isinstance(result, bk.ClosedResult):
            total_pnl += result.pnl.pnl_percentage
    wall = time.perf_counter() - started
    await engine.close()
    frames = (end_ms - start_ms) // MINUTE + 1
    return {"frames": frames, "trades": trades, "events": events, "errors": len(errors),
            "total_pnl": total_pnl, "wall": wall, "fps": frames / wall if wall else float("inf")}


def report(label: str, load_s: float, r: dict[str, Any]) -> None:
    print(f"{label}")
    print(f"  frames        {r['frames']:>12,}")
    print(f"  trades        {r['trades']:>12,}   (listener events {r['events']:,}, errors {r['errors']})")
    print(f"  total pnl     {r['total_pnl']:>12.3f} %")
    print(f"  load          {load_s:>12.3f} s   (CSV parse + validation + prefix sums)")
    print(f"  run wall      {r['wall']:>12.3f} s")
    print(f"  frames/s      {r['fps']:>12,.0f}   ({r['fps'] / TARGET_FPS:.2f}x the {TARGET_FPS:,} target)")
    print(f"  peak RSS      {peak_rss_mb():>12.1f} MB")


async def throughput(path: Path, get_signal: Callable[..., Any], kind: str = "csv",
                     as_json: bool = False) -> None:
    source, symbol, load_s = load(path)
    start = source.first_timestamp(symbol) + WARMUP_MINUTES * MINUTE
    end = source.last_timestamp(symbol)
    registered: Any = source if kind == "csv" else plain_callback(source, symbol)
    result = await run_backtest(registered, symbol, get_signal, start, end)
    if as_json:
        print(json.dumps(result))
        return
    report(f"{path.name} ({'bk.CsvCandles' if kind == 'csv' else 'plain async callback returning tuples'})",
           load_s, result)


def compare(base: Path, data: Path, rounds: int) -> None:
    """Base checkout and this one alternately, each run a fresh process; medians and ratios."""
    cases = [(kind, span) for span in ("30d", "90d") for kind in ("callback", "csv")]
    fps: dict[tuple[str, str, str], list[float]] = {}
    trades: dict[tuple[str, str, str], set[tuple[int, float]]] = {}
    for r in range(rounds):
        for kind, span in cases:
            for label, root in (("base", base), ("head", ROOT)):
                env = dict(os.environ, BENCH_KIT_ROOT=str(root))
                out = subprocess.run(
                    [sys.executable, str(Path(__file__).resolve()), "--data", str(data), "--only", span,
                     "--source", kind, "--json"], env=env, capture_output=True, text=True, check=True)
                res = json.loads(out.stdout.strip().splitlines()[-1])
                fps.setdefault((kind, span, label), []).append(res["fps"])
                trades.setdefault((kind, span, label), set()).add((res["trades"], round(res["total_pnl"], 9)))
        print(f"round {r + 1}/{rounds} done", file=sys.stderr)
    print(f"{'path':<10} {'span':<5} {'base frames/s':>14} {'head frames/s':>14} {'head/base':>10}  trades/pnl")
    for kind, span in cases:
        b = statistics.median(fps[(kind, span, "base")])
        h = statistics.median(fps[(kind, span, "head")])
        same = "same" if trades[(kind, span, "base")] == trades[(kind, span, "head")] else "DIFFER"
        print(f"{kind:<10} {span:<5} {b:>14,.0f} {h:>14,.0f} {h / b:>9.2f}x  {same} "
              f"{sorted(trades[(kind, span, 'head')])}")


async def memory_check(path: Path, get_signal: Callable[..., Any]) -> None:
    source, symbol, _ = load(path)
    start = source.first_timestamp(symbol) + WARMUP_MINUTES * MINUTE
    print(f"memory check on {path.name}: same data, 30-day frame vs 60-day frame")
    # one throw-away run so one-off allocations (aggregated intervals, code caches) are not counted
    await run_backtest(source, symbol, get_signal, start, start + 2 * 1440 * MINUTE)
    for days in (30, 60):
        gc.collect()
        before = current_rss_mb()
        r = await run_backtest(source, symbol, get_signal, start, start + days * 1440 * MINUTE)
        gc.collect()
        after = current_rss_mb()
        print(f"  {days}-day frame: {r['frames']:>7,} frames, {r['trades']:>4} trades, "
              f"{r['fps']:>9,.0f} frames/s, RSS {before:.1f} -> {after:.1f} MB (delta {after - before:+.1f} MB)")
    print(f"  peak RSS {peak_rss_mb():.1f} MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data",
                        help="folder holding the BTCUSDT 1m files (default: ../shared/data)")
    parser.add_argument("--only", choices=("30d", "90d", "memory"), default=None)
    parser.add_argument("--source", choices=("csv", "callback"), default="csv",
                        help="bk.CsvCandles, or a plain async callback returning tuples")
    parser.add_argument("--json", action="store_true", help="one JSON line per throughput run")
    parser.add_argument("--compare", type=Path, default=None, metavar="BASE",
                        help="alternate runs of the checkout at BASE and this one; print medians")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    data: Path = args.data
    if args.compare is not None:
        compare(args.compare, data, args.rounds)
        return
    missing = [name for name in (FILE_30D, FILE_90D) if not (data / name).is_file()]
    if missing:
        raise SystemExit(f"missing {', '.join(missing)} in {data}; pass --data DIR")
    get_signal = example_get_signal()
    if args.only in (None, "30d"):
        asyncio.run(throughput(data / FILE_30D, get_signal, args.source, args.json))
    if args.only in (None, "90d"):
        asyncio.run(throughput(data / FILE_90D, get_signal, args.source, args.json))
    if args.only in (None, "memory"):
        asyncio.run(memory_check(data / FILE_90D, get_signal))


if __name__ == "__main__":
    main()

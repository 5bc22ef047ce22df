"""Backtest throughput of the SMA example strategy over real BTCUSDT 1m candles.

Run: ``python benchmarks/bench_backtest.py [--data DIR] [--only 30d|90d|memory]``.

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
import gc
import importlib.util
import resource
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

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


async def run_backtest(
    source: bk.CsvCandles, symbol: str, get_signal: Callable[..., Any], start_ms: int, end_ms: int
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


async def throughput(path: Path, get_signal: Callable[..., Any]) -> None:
    source, symbol, load_s = load(path)
    start = source.first_timestamp(symbol) + WARMUP_MINUTES * MINUTE
    end = source.last_timestamp(symbol)
    result = await run_backtest(source, symbol, get_signal, start, end)
    report(path.name, load_s, result)


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
    args = parser.parse_args()
    data: Path = args.data
    missing = [name for name in (FILE_30D, FILE_90D) if not (data / name).is_file()]
    if missing:
        raise SystemExit(f"missing {', '.join(missing)} in {data}; pass --data DIR")
    get_signal = example_get_signal()
    if args.only in (None, "30d"):
        asyncio.run(throughput(data / FILE_30D, get_signal))
    if args.only in (None, "90d"):
        asyncio.run(throughput(data / FILE_90D, get_signal))
    if args.only in (None, "memory"):
        asyncio.run(memory_check(data / FILE_90D, get_signal))


if __name__ == "__main__":
    main()

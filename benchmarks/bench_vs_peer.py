"""The peer's backtest workload on this engine (two candle paths) and on the TypeScript peer, alternated.

    python benchmarks/bench_vs_peer.py                       # 30d and 90d, 3 rounds, peer if node is here
    python benchmarks/bench_vs_peer.py --only 30d --rounds 5
    python benchmarks/bench_vs_peer.py --no-peer             # our two paths only

The workload is `../shared/peer/run_peer.mjs` (backtest-kit 19.5.0 on node) exactly: a stateless
SMA(10)/SMA(30) cross on the last 50 closed 1m candles, compared with the same SMAs five candles
earlier, long on a cross up / short on a cross down, entry at the engine's average price (VWAP of the
last 5 closed 1m candles), TP/SL +-1 %, 240 minutes; a 1m frame from data start + 60 min to data end
- 250 min. Frames/s = frames in the frame / wall seconds of the run loop only (CSV load excluded),
the definition of the peer's summary.

Our engine runs it through two candle paths:

- ``plain``: a plain ``async def get_candles(symbol, interval, since, limit)`` returning tuples from
  an in-memory list (what a user with a database or REST callback writes);
- ``csv``: ``bk.CsvCandles`` (the engine's synchronous in-memory candle store).

19.5.0 calls ``getSignal`` at most once per *aligned* 5-minute bucket; this engine calls it when 5
minutes have passed since the last call. To run the same workload the strategy is registered with
interval "1m" and returns at once unless the tick opens a new aligned 5-minute bucket (the 19.5.0
rule, written in the strategy). The peer's close rules differ from this engine's (see the peer's
README: 19.5.0 takes profit on the 5-candle VWAP, stop loss on the wick, SL wins ties; fee on exit
notional), so a few trades close differently; the script prints how many trades match the peer's
reference trades (``../shared/peer/results/*.signals.jsonl``) by open time, close time and reason,
and whether the difference is fully explained by the close rule (this engine's rule is documented in
[lifecycle §7.2](../docs/design/lifecycle.md#72-close-checks) and
[§9.3](../docs/design/lifecycle.md#93-fast-forward-of-a-pending-signal)): it is when the same entries
replayed in plain Python under each rule give each side's trades one for one. Because the strategy
is registered at "1m", every frame without a position calls ``get_signal``, so the engine's skip of
quiet frames (frames between throttle slots, ``StrategyInstance.quiet_until``) never applies here.

The peer: when ``node`` is on PATH, ``../shared/peer`` (read-only) is copied to
``$TMPDIR/bk-peer-<hash of package-lock.json>`` and ``npm ci`` runs there once (the folder is
reused by later runs); each peer run is ``node run_peer.mjs <csv> --out <tmp>`` and its summary
JSON gives frames/s. Without node, or when ``npm ci`` fails (no registry), the peer is skipped with
a message. Runs alternate peer, plain, csv for ``--rounds`` rounds; the medians, the ratios to
the peer's median and the median of the per-round ratios (each run against the peer run of its own
round, steadier when the machine's load drifts) are printed.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import gzip
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

import backtest_kit as bk  # noqa: E402

FILES = {"30d": "BTCUSDT-1m-30d.csv", "90d": "BTCUSDT-1m-2025-05-20_2025-08-18.csv.gz"}
MINUTE = 60_000
WARMUP_MIN = 60  # run_peer.mjs: WARMUP_MIN
TAIL_MIN = 240 + 10  # run_peer.mjs: LIFETIME_MIN + 10
SMA_FAST, SMA_SLOW, LOOKBACK, PREV_SHIFT = 10, 30, 50, 5
TP_PCT, SL_PCT, LIFETIME_MIN = 1.0, 1.0, 240
BUCKET_MS = 5 * MINUTE
PATHS = ("peer", "plain", "csv")

Row = tuple[int, float, float, float, float, float]


# ------------------------------------------------------------------ strategy (run_peer.mjs's getSignal)
def make_get_signal() -> Callable[..., Any]:
    """A fresh copy of the peer's strategy (fresh bucket state for every run)."""
    last_bucket = -1

    async def get_signal(symbol: str, when: datetime) -> bk.SignalDto | None:
        nonlocal last_bucket
        bucket = int(when.timestamp() * 1000) // BUCKET_MS
        if bucket == last_bucket:  # 19.5.0: at most once per aligned 5-minute bucket
            return None
        last_bucket = bucket
        candles = await bk.get_candles(symbol, "1m", LOOKBACK)
        if len(candles) < SMA_SLOW + PREV_SHIFT:
            return None
        closes = [c.close for c in candles]
        end = len(closes)
        fast = sum(closes[end - SMA_FAST:end]) / SMA_FAST
        slow = sum(closes[end - SMA_SLOW:end]) / SMA_SLOW
        prev_fast = sum(closes[end - PREV_SHIFT - SMA_FAST:end - PREV_SHIFT]) / SMA_FAST
        prev_slow = sum(closes[end - PREV_SHIFT - SMA_SLOW:end - PREV_SHIFT]) / SMA_SLOW
        if prev_fast <= prev_slow and fast > slow:
            price = await bk.get_average_price(symbol)
            return bk.SignalDto(position="long", price_take_profit=price * (1 + TP_PCT / 100),
                                price_stop_loss=price * (1 - SL_PCT / 100),
                                minute_estimated_time=LIFETIME_MIN, note="sma10/30 cross up")
        if prev_fast >= prev_slow and fast < slow:
            price = await bk.get_average_price(symbol)
            return bk.SignalDto(position="short", price_take_profit=price * (1 - TP_PCT / 100),
                                price_stop_loss=price * (1 + SL_PCT / 100),
                                minute_estimated_time=LIFETIME_MIN, note="sma10/30 cross down")
        return None

    return get_signal


# ------------------------------------------------------------------ the plain callback path
def read_rows(path: Path) -> list[Row]:
    opener: Callable[..., Any] = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", newline="") as fh:
        reader = csv.reader(fh)
        next(reader)  # header
        return [(int(r[0]), float(r[1]), float(r[2]), float(r[3]), float(r[4]), float(r[5])) for r in reader]


def plain_get_candles(rows: list[Row]) -> Callable[..., Any]:
    """An ordinary async callback over a list of 1m tuples (contiguous minutes, as in ../shared/data)."""
    first = rows[0][0]

    async def get_candles(symbol: str, interval: str, since: datetime, limit: int) -> list[Row]:
        since_ms = int(since.timestamp() * 1000)
        if interval == "1m":
            i = max(0, (since_ms - first) // MINUTE)
            return rows[i:i + limit]
        step = int(interval[:-1]) * {"m": 1, "h": 60, "d": 1440}[interval[-1]]
        out: list[Row] = []
        i = max(0, (since_ms - first) // MINUTE)
        while len(out) < limit and i + step <= len(rows):
            chunk = rows[i:i + step]
            out.append((chunk[0][0], chunk[0][1], max(r[2] for r in chunk), min(r[3] for r in chunk),
                        chunk[-1][4], sum(r[5] for r in chunk)))
            i += step
        return out

    return get_candles


# ------------------------------------------------------------------ one run on this engine
async def run_ours(source: Any, symbol: str, start_ms: int, end_ms: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-peer-") as scratch:
        engine = bk.Engine(persist_dir=scratch, dump_dir=scratch)
        engine.set_config(CC_PERCENT_FEE=0.1, CC_PERCENT_SLIPPAGE=0.1, CC_AVG_PRICE_CANDLES_COUNT=5,
                          CC_MIN_TAKEPROFIT_DISTANCE_PERCENT=0.5, CC_MIN_STOPLOSS_DISTANCE_PERCENT=0.5,
                          CC_MAX_STOPLOSS_DISTANCE_PERCENT=20, CC_MAX_SIGNAL_LIFETIME_MINUTES=1440)
        engine.add_exchange(exchange_name="csv-memory", get_candles=source)
        engine.add_strategy(strategy_name="sma-cross-10-30", interval="1m", get_signal=make_get_signal())
        engine.add_frame(frame_name="csv-range", interval="1m",
                         start_date=datetime.fromtimestamp(start_ms / 1000, UTC),
                         end_date=datetime.fromtimestamp(end_ms / 1000, UTC))
        errors: list[BaseException] = []
        engine.listen_error(errors.append)
        trades: list[dict[str, Any]] = []
        started = time.perf_counter()
        async for result in engine.backtest.run(symbol, strategy_name="sma-cross-10-30",
                                                exchange_name="csv-memory", frame_name="csv-range"):
            if isinstance(result, bk.ClosedResult):
                trades.append({"open_ts": result.signal.pending_at, "close_ts": result.close_timestamp,
                               "close_reason": result.close_reason, "position": result.signal.position,
                               "price_open": result.signal.price_open,
                               "pnl_percentage": result.pnl.pnl_percentage})
        wall = time.perf_counter() - started
        await engine.close()
    frames = (end_ms - start_ms) // MINUTE + 1
    return {"frames": frames, "trades": trades, "errors": len(errors), "wall": wall, "fps": frames / wall}


# ------------------------------------------------------------------ the peer
def peer_dir(peer_src: Path) -> Path | None:
    """A writable copy of ../shared/peer with node_modules installed, or None (message printed)."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        print("peer skipped: node/npm not on PATH")
        return None
    if not (peer_src / "run_peer.mjs").is_file():
        print(f"peer skipped: no run_peer.mjs in {peer_src}")
        return None
    digest = hashlib.sha256((peer_src / "package-lock.json").read_bytes()).hexdigest()[:12]
    target = Path(tempfile.gettempdir()) / f"bk-peer-{digest}"
    if (target / "node_modules" / "backtest-kit").is_dir():
        return target
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(peer_src, target, ignore=shutil.ignore_patterns("node_modules", "out"))
    for dirpath, _, filenames in os.walk(target):  # the source is read-only; so is its copy
        os.chmod(dirpath, 0o755)
        for name in filenames:
            os.chmod(Path(dirpath) / name, 0o644)
    print(f"npm ci in {target} ...", flush=True)
    try:
        done = subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=target, capture_output=True,
                              text=True, timeout=600)
    except subprocess.TimeoutExpired:
        print("peer skipped: npm ci timed out (registry unreachable?)")
        return None
    if done.returncode != 0:
        print(f"peer skipped: npm ci failed (registry unreachable?):\n{done.stderr[-1500:]}")
        shutil.rmtree(target, ignore_errors=True)
        return None
    return target


def run_peer(folder: Path, csv_path: Path) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-peer-out-") as scratch:
        out = Path(scratch) / "trades.jsonl"
        done = subprocess.run(["node", "run_peer.mjs", str(csv_path), "--out", str(out)], cwd=folder,
                              capture_output=True, text=True, timeout=3600)
        if done.returncode != 0:
            raise RuntimeError(f"peer failed ({done.returncode}): {done.stderr[-1500:]}")
        summary: dict[str, Any] = json.loads(done.stdout)
        trades = [json.loads(line) for line in out.read_text().splitlines() if line]
    return {"frames": summary["frames"], "trades": trades, "errors": summary["errors"],
            "wall": summary["wall_seconds"], "fps": summary["frames"] / summary["wall_seconds"],
            "rss": summary.get("peak_rss_mb")}


# ------------------------------------------------------------------ trade match
def match(ours: list[dict[str, Any]], reference: list[dict[str, Any]]) -> str:
    key = [(t["open_ts"], t["close_ts"], t["close_reason"]) for t in ours]
    ref = [(t["open_ts"], t["close_ts"], t["close_reason"]) for t in reference]
    same = len(set(key) & set(ref))
    entries = {t["open_ts"]: (t["position"], t["price_open"]) for t in reference}
    same_open = [t for t in ours if t["open_ts"] in entries]
    same_entry = sum(1 for t in same_open if entries[t["open_ts"]][0] == t["position"]
                     and abs(entries[t["open_ts"]][1] - t["price_open"]) <= 1e-9 * t["price_open"])
    verdict = "equal" if len(ours) == len(reference) else "differ"
    return (f"{len(ours)} trades vs the peer's {len(reference)} ({verdict}); "
            f"{same} identical by open time, close time and reason; {len(same_open)} open at the same minute, "
            f"{same_entry} of them with the same side and entry price")


def replay(rows: list[Row], rules: str) -> list[dict[str, Any]]:
    """Plain-Python replay of the workload: the peer's entry rules, then `rules` for closing.

    ``"19.5"``: the peer's close rules (as ../shared/peer/crosscheck.py states them: per 1m candle from
    the entry tick's own, expiry first, then a stop-loss touch, then take profit when the VWAP of that
    candle and the 4 before it reaches TP). ``"engine"``: this engine's (expiry first, then a take-profit
    touch of the candle's high/low, then a stop-loss touch: the wick takes profit and TP wins ties).
    Returns open time, close time and reason of every trade.
    """
    ts = [r[0] for r in rows]
    high, low, close, volume = ([r[k] for r in rows] for k in (2, 3, 4, 5))
    typical = [(r[2] + r[3] + r[4]) / 3 * r[5] for r in rows]

    def vwap(lo: int, hi: int) -> float:
        vol = sum(volume[lo:hi])
        return sum(typical[lo:hi]) / vol if vol else sum(close[lo:hi]) / (hi - lo)

    t0 = ts[0]
    start, end = t0 + WARMUP_MIN * MINUTE, ts[-1] - TAIL_MIN * MINUTE
    trades: list[dict[str, Any]] = []
    last_bucket, t = -1, start
    while t <= end:
        bucket = t // BUCKET_MS
        if bucket == last_bucket:
            t += MINUTE
            continue
        last_bucket = bucket
        i = (t - t0) // MINUTE
        closes = close[i - LOOKBACK:i]
        fast, slow = sum(closes[-SMA_FAST:]) / SMA_FAST, sum(closes[-SMA_SLOW:]) / SMA_SLOW
        prev_fast = sum(closes[-PREV_SHIFT - SMA_FAST:-PREV_SHIFT]) / SMA_FAST
        prev_slow = sum(closes[-PREV_SHIFT - SMA_SLOW:-PREV_SHIFT]) / SMA_SLOW
        price = vwap(i - 5, i)
        if prev_fast <= prev_slow and fast > slow:
            long, tp, sl = True, price * (1 + TP_PCT / 100), price * (1 - SL_PCT / 100)
        elif prev_fast >= prev_slow and fast < slow:
            long, tp, sl = False, price * (1 - TP_PCT / 100), price * (1 + SL_PCT / 100)
        else:
            t += MINUTE
            continue
        for j in range(i, len(ts)):
            hit_sl = low[j] <= sl if long else high[j] >= sl
            if ts[j] - t >= LIFETIME_MIN * MINUTE or (rules == "19.5" and ts[j] > end):
                reason = "time_expired"
            elif rules == "19.5":
                avg = vwap(j - 4, j + 1)
                reason = "stop_loss" if hit_sl else "take_profit" if (avg >= tp if long else avg <= tp) else ""
            else:
                hit_tp = high[j] >= tp if long else low[j] <= tp
                reason = "take_profit" if hit_tp else "stop_loss" if hit_sl else ""
            if reason:
                trades.append({"open_ts": t, "close_ts": ts[j], "close_reason": reason})
                t = ts[j] + MINUTE
                break
        else:
            break
    return trades


def _identical(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> bool:
    """Same trades (open time, close time, reason), in order."""
    key = [(t["open_ts"], t["close_ts"], t["close_reason"]) for t in a]
    return key == [(t["open_ts"], t["close_ts"], t["close_reason"]) for t in b]


def same_trades(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> str:
    key = [(t["open_ts"], t["close_ts"], t["close_reason"]) for t in a]
    ref = [(t["open_ts"], t["close_ts"], t["close_reason"]) for t in b]
    return f"{sum(x == y for x, y in zip(key, ref, strict=False))}/{max(len(key), len(ref))} identical in order"


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


# ------------------------------------------------------------------ main
def bench_file(label: str, path: Path, peer: Path | None, results: Path, rounds: int) -> None:
    started = time.perf_counter()
    rows = read_rows(path)
    plain_load = time.perf_counter() - started
    started = time.perf_counter()
    store = bk.CsvCandles(path)
    symbol = store.symbols[0]
    store.average_price(symbol, store.first_timestamp(symbol) + 10 * MINUTE, 5)  # lazy prefix sums
    csv_load = time.perf_counter() - started
    start_ms = rows[0][0] + WARMUP_MIN * MINUTE
    end_ms = rows[-1][0] - TAIL_MIN * MINUTE
    print(f"\n== {label}: {path.name}, {len(rows):,} candles, frame {(end_ms - start_ms) // MINUTE + 1:,} frames "
          f"(load: tuples {plain_load:.2f} s, CsvCandles {csv_load:.2f} s, not timed)")
    runs: dict[str, list[dict[str, Any]]] = {p: [] for p in PATHS}
    for rnd in range(1, rounds + 1):
        for name in PATHS:
            if name == "peer":
                if peer is None:
                    continue
                r = run_peer(peer, path)
            else:
                source = plain_get_candles(rows) if name == "plain" else store
                r = asyncio.run(run_ours(source, symbol, start_ms, end_ms))
            runs[name].append(r)
            print(f"  round {rnd} {name:<5} {r['frames']:>8,} frames {len(r['trades']):>4} trades "
                  f"{r['wall']:>8.3f} s {r['fps']:>11,.0f} frames/s  errors {r['errors']}", flush=True)
    ref_file = results / (path.name.removesuffix(".gz").removesuffix(".csv") + ".signals.jsonl")
    reference = [json.loads(x) for x in ref_file.read_text().splitlines() if x] if ref_file.is_file() else None
    print(f"  trade match vs {ref_file.name if reference is not None else 'peer run (no reference file)'}:")
    for name in ("plain", "csv"):
        ref = reference if reference is not None else (runs["peer"][0]["trades"] if runs["peer"] else None)
        if ref is not None and runs[name]:
            print(f"    {name:<5} {match(runs[name][0]['trades'], ref)}")
    if runs["peer"] and reference is not None:
        print(f"    peer  {match(runs['peer'][0]['trades'], reference)}")
    peer_trades = reference if reference is not None else (runs["peer"][0]["trades"] if runs["peer"] else None)
    explained = peer_trades is not None
    if peer_trades is not None:
        print(f"    replay with the peer's close rules vs the peer: {same_trades(replay(rows, '19.5'), peer_trades)}")
        explained = _identical(replay(rows, "19.5"), peer_trades)
    engine_replay = replay(rows, "engine")
    for name in ("plain", "csv"):
        if runs[name]:
            print(f"    replay with this engine's close rules vs {name}: "
                  f"{same_trades(engine_replay, runs[name][0]['trades'])}")
            explained = explained and _identical(engine_replay, runs[name][0]["trades"])
    if peer_trades is not None and (runs["plain"] or runs["csv"]):
        ours = (runs["csv"] or runs["plain"])[0]["trades"]
        same = len({(t["open_ts"], t["close_ts"], t["close_reason"]) for t in ours}
                   & {(t["open_ts"], t["close_ts"], t["close_reason"]) for t in peer_trades})
        if explained:
            print(f"    => the trade difference ({len(ours)} vs {len(peer_trades)} trades, {same} identical) is "
                  "fully explained by the close rule, a documented decision (the design's lifecycle.md, "
                  "sections 7.2 and 9.3: "
                  "the fast-forward takes profit on the candle's high/low and TP wins a same-candle tie, as in "
                  "the 1.5 reference; 19.5.0 takes profit only on the 5-candle VWAP and lets SL win ties, "
                  "../shared/peer/README.md): the same entries replayed under each rule give each side's "
                  "trades one for one")
        else:
            print("    => NOT explained by the close rule alone: a replay under some rule differs from its "
                  "engine's trades (see the lines above)")
    med = {name: median([r["fps"] for r in rs]) for name, rs in runs.items()}
    peer_med = med["peer"] if runs["peer"] else None
    print(f"  medians over {rounds} round(s):")
    for name in PATHS:
        if not runs[name]:
            continue
        fps = [r["fps"] for r in runs[name]]
        ratio = ""
        if peer_med and name != "peer":
            paired = [r["fps"] / p["fps"] for r, p in zip(runs[name], runs["peer"], strict=False)]
            ratio = (f"   {med[name] / peer_med:6.1f}x the peer (median of per-round ratios "
                     f"{median(paired):.1f}x)")
        print(f"    {name:<5} {med[name]:>11,.0f} frames/s  (range {min(fps):,.0f}-{max(fps):,.0f}){ratio}")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data",
                        help="folder with the BTCUSDT 1m files (default ../shared/data)")
    parser.add_argument("--peer-dir", type=Path, default=ROOT.parent / "shared" / "peer",
                        help="the peer's folder, read-only (default ../shared/peer)")
    parser.add_argument("--only", choices=tuple(FILES), default=None, help="one data file only")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (default 3)")
    parser.add_argument("--no-peer", action="store_true", help="do not run the node peer")
    args = parser.parse_args()
    labels = [args.only] if args.only else list(FILES)
    missing = [FILES[k] for k in labels if not (args.data / FILES[k]).is_file()]
    if missing:
        raise SystemExit(f"missing {', '.join(missing)} in {args.data}; pass --data DIR")
    print(f"started {datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC, Python {sys.version.split()[0]}")
    peer = None if args.no_peer else peer_dir(args.peer_dir)
    for label in labels:
        bench_file(label, args.data / FILES[label], peer, args.peer_dir / "results", args.rounds)


if __name__ == "__main__":
    main()

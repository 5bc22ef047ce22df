"""Live-loop scalability: many (symbol, strategy) pairs on one event loop with the real clock.

    python benchmarks/bench_live.py                     # 1000 pairs, 1 s tick period, 30 s
    python benchmarks/bench_live.py --pairs 2000 --seconds 10 --active --stagger
    python benchmarks/bench_live.py --sweep                    # 1,000 / 5,000 / 10,000 pairs, sma50 signal
    python benchmarks/bench_live.py --signal sma50 --pairs 5000 --seconds 20

Every pair is one `Live.background` task on this loop, ticking every `CC_TICK_TTL_MS` (here 1 s
instead of the 60 001 ms default) on the `SystemClock`, over in-memory candles. The strategy is
trivial: idle (`get_signal` returns None), or with `--active` each pair opens one long position on
its first tick that then stays open (far TP/SL, long expiry), so every later tick runs the
position-monitoring path.

Tick lag = how late a tick starts: the time between the moment the loop's inter-tick sleep was due
to end (sleep start + period) and the moment the next tick reads the clock. It includes waiting for
the event loop while the other pairs' ticks run. Measuring starts `--warmup` seconds after the start,
and never before every pair has finished its first tick (a first tick restores the pair's persisted
state through a thread pool, which takes seconds for 10,000 pairs on a busy machine: startup, not the
steady state this measures) and one more tick period has passed; the time to that first tick of
every pair is printed as its own figure.
CPU % = process CPU time / wall time over the measured window (100 % = one core).

`--signal sma50` is a real signal check: on every tick the pair reads its last 50 closed 1m candles
(`bk.get_candles`) and compares SMA(10)/SMA(30) with the same SMAs five candles earlier (the peer's
strategy). The engine calls `get_signal` at most once per strategy interval (1m at least), so with a
1 s tick the per-tick read runs in the strategy's `on_tick` callback (inside the tick's context), and
`get_signal` (interval 1m) runs the same check and opens a position on a cross (TP/SL +-1 %, 240 min),
after which ticks also monitor it. `--sweep` runs 1,000, 5,000 and 10,000 pairs one after the other
(or `--sweep 2000,4000`), with `--signal sma50` unless another signal is given.

`--source json` serves the same candles through a plain async `get_candles` callback that answers
freshly JSON-decoded rows, as an exchange adapter (ccxt) does: the engine then keeps every pair's
recent candles in its candle store (a ring per symbol and interval, engine/candle_store.py), and the
memory figure includes that ring (also printed alone as ring bytes per pair, and at its eviction
bound, which a run of seconds has not reached: the rings fill up as minutes pass). The default
`--source memory` is a `MemoryCandles`, which the engine reads directly, with no ring.

Figures: tick lag p50/p99/max, ticks delivered in the measured window (% of pairs x seconds / period),
CPU % and CPU per delivered tick, GC passes in the window (count and total pause per generation, the
longest, and the CPU time they took, which a busy machine does not inflate), and memory per pair =
(RSS after the run's window - RSS before the pairs started) / pairs.
"Before" is taken once the candle source is built and warmed (its lazily built per-symbol caches,
such as `MemoryCandles`' prefix sums, exist): those are candle data, not pair state. With
`--source json` the candle ring each pair fills is built after "before", so it is included.

`--no-gc-tuning` sets `CC_LIVE_GC_TUNING=False` (the engine leaves the cyclic GC alone) to compare.

`--stagger` spreads the pairs' first ticks over one period (pair i starts i/N s late), so ticks are
not all due at the same instant; by default all pairs start together, the worst case for lag.
"""

from __future__ import annotations

import argparse
import asyncio
import contextvars
import gc
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Literal

import msgspec

import backtest_kit as bk

_due: contextvars.ContextVar[list[float]] = contextvars.ContextVar("bench_due")


class LagClock(bk.SystemClock):
    """The system clock, measuring how late every tick starts relative to its sleep's end."""

    def __init__(self) -> None:
        self.lags: list[float] = []
        self.measuring = False

    def now_ms(self) -> int:
        # Called by the live loop at the start of every tick, in the pair's task (never call it from
        # the main task: its context would hand one slot to every task created afterwards).
        slot = _due.get(None)
        if slot is None:
            _due.set([0.0])
        elif slot[0] and self.measuring:
            self.lags.append(time.perf_counter() - slot[0])
        return super().now_ms()

    async def sleep(self, seconds: float) -> None:
        # Runs in a helper task whose context is a copy of the pair task's: same slot object.
        slot = _due.get(None)
        if slot is not None:
            slot[0] = time.perf_counter() + seconds
        await super().sleep(seconds)

    def timer(self, seconds: float) -> asyncio.Future[None]:
        # The live loop's inter-tick wait where the clock offers it (no helper task): same slot.
        slot = _due.get(None)
        if slot is not None:
            slot[0] = time.perf_counter() + seconds
        return super().timer(seconds)


class GcPauses:
    """Cyclic-GC passes (count and total pause per generation) while `measuring`, via `gc.callbacks`.

    Why: at 10,000 pairs a full collection over the heap stalled the loop for hundreds of ms; the
    figure shows whether the engine's GC policy (`CC_LIVE_GC_TUNING`) keeps those passes away.
    """

    def __init__(self) -> None:
        self.measuring = False
        self.count = [0, 0, 0]
        self.total = [0.0, 0.0, 0.0]
        self.longest = 0.0
        self.cpu = 0.0  # CPU time in the passes: unlike the pauses, not inflated by a busy machine
        self._started = 0.0
        self._cpu_started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if not self.measuring:
            return
        if phase == "start":
            self._started = time.perf_counter()
            self._cpu_started = time.thread_time()
            return
        self.cpu += time.thread_time() - self._cpu_started
        pause = time.perf_counter() - self._started
        generation = info["generation"]
        self.count[generation] += 1
        self.total[generation] += pause
        self.longest = max(self.longest, pause)

    def summary(self) -> str:
        parts = [f"gen{g} {self.count[g]} x = {self.total[g] * 1000:.1f} ms" for g in range(3)]
        return (f"GC passes {', '.join(parts)}; longest {self.longest * 1000:.1f} ms; "
                f"CPU in GC {self.cpu * 1000:.1f} ms")


def synthetic_candles(symbols: Sequence[str], now_ms: int, minutes: int = 240) -> bk.MemoryCandles:
    start = now_ms - now_ms % 60_000 - (minutes - 60) * 60_000  # an hour of future candles too
    data: dict[str, Any] = {}
    for k, symbol in enumerate(symbols):
        base = 100.0 + k
        rows = []
        for i in range(minutes):
            price = base * (1 + 0.001 * ((i * 7919 + k) % 11 - 5))
            rows.append((start + i * 60_000, price, price * 1.001, price * 0.999, price, 10.0 + i % 5))
        data[symbol] = rows
    return bk.MemoryCandles(data)


def current_rss_mb() -> float:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * resource.getpagesize() / (1024 * 1024)
    except OSError:  # not Linux: the peak instead
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


async def sma_check(symbol: str) -> Literal["long", "short"] | None:
    """The peer's SMA(10)/SMA(30) cross on the last 50 closed 1m candles: "long", "short" or None."""
    candles = await bk.get_candles(symbol, "1m", 50)
    if len(candles) < 35:
        return None
    closes = [c.close for c in candles]
    fast, slow = sum(closes[-10:]) / 10, sum(closes[-30:]) / 30
    prev_fast, prev_slow = sum(closes[-15:-5]) / 10, sum(closes[-35:-5]) / 30
    if prev_fast <= prev_slow and fast > slow:
        return "long"
    if prev_fast >= prev_slow and fast < slow:
        return "short"
    return None


def json_source(candles: bk.MemoryCandles) -> Any:
    """`candles` behind an async callback answering fresh JSON-decoded rows, like an exchange adapter."""
    encode, decode = msgspec.json.encode, msgspec.json.decode

    async def get_candles(symbol: str, interval: str, since: datetime, limit: int) -> list[list[float]]:
        found = candles.next_candles(symbol, interval, int(since.timestamp() * 1000), limit)
        rows = [(c.timestamp, c.open, c.high, c.low, c.close, c.volume) for c in found]
        decoded: list[list[float]] = decode(encode(rows))
        return decoded

    return get_candles


async def bench(pairs: int, seconds: float, period_ms: int, warmup: float, signal: str, stagger: bool,
                source: str = "memory", gc_tuning: bool = True) -> None:
    clock = LagClock()
    pauses = GcPauses()
    gc.callbacks.append(pauses)
    active = signal == "hold"
    with tempfile.TemporaryDirectory(prefix="bench-live-") as scratch:
        engine = bk.Engine(clock=clock, persist_dir=scratch, dump_dir=scratch)
        engine.set_config(CC_TICK_TTL_MS=period_ms, CC_LIVE_GC_TUNING=gc_tuning)
        symbols = [f"S{i:04d}USDT" for i in range(pairs)]
        candles = synthetic_candles(symbols, int(time.time() * 1000))
        warm_ms = int(time.time() * 1000)
        for symbol in symbols:  # build the source's lazy per-symbol caches now: candle data, not pair state
            candles.average_price(symbol, warm_ms, 5)
        engine.add_exchange(exchange_name="mem", get_candles=candles if source == "memory" else json_source(candles))
        gc.collect()
        rss_before = current_rss_mb()

        async def idle(symbol: str, when: datetime) -> None:
            return None

        async def hold(symbol: str, when: datetime) -> bk.SignalDto:
            price = await bk.get_average_price(symbol)
            return bk.SignalDto(position="long", price_take_profit=price * 1.15, price_stop_loss=price * 0.85,
                                minute_estimated_time=600)

        async def sma50(symbol: str, when: datetime) -> bk.SignalDto | None:
            side = await sma_check(symbol)
            if side is None:
                return None
            price = await bk.get_average_price(symbol)
            up = 1.01 if side == "long" else 0.99
            return bk.SignalDto(position=side, price_take_profit=price * up, price_stop_loss=price * (2 - up),
                                minute_estimated_time=240)

        sma_reads = 0

        async def read_every_tick(symbol: str, result: bk.TickResult, backtest: bool) -> None:
            nonlocal sma_reads
            await sma_check(symbol)
            sma_reads += 1

        if signal == "sma50":
            engine.add_strategy(strategy_name="trivial", interval="1m", get_signal=sma50,
                                callbacks={"on_tick": read_every_tick})
        else:
            engine.add_strategy(strategy_name="trivial", interval="1h", get_signal=hold if active else idle)
        ticks = 0
        errors: list[BaseException] = []

        unseen = set(symbols)  # pairs before their first tick
        all_ticked = asyncio.get_running_loop().create_future()

        def count(result: bk.TickResult) -> None:
            nonlocal ticks
            ticks += 1
            if unseen:
                unseen.discard(result.symbol)
                if not unseen:
                    all_ticked.set_result(time.perf_counter())

        engine.listen_signal_live(count)
        engine.listen_error(errors.append)

        handles: list[bk.CancelHandle] = []
        started = time.perf_counter()
        for i, symbol in enumerate(symbols):
            if stagger and i:
                await asyncio.sleep(started + i * period_ms / 1000 / pairs - time.perf_counter())
            handles.append(engine.live.background(symbol, strategy_name="trivial", exchange_name="mem"))
        await asyncio.wait({all_ticked}, timeout=max(60.0, warmup))  # a failing pair never ticks: go on
        first_ticks_s = all_ticked.result() - started if all_ticked.done() else float("nan")
        await asyncio.sleep(max(period_ms / 1000, started + warmup - time.perf_counter()))

        clock.measuring = pauses.measuring = True
        ticks_before = ticks
        cpu0, wall0 = time.process_time(), time.perf_counter()
        await asyncio.sleep(seconds)
        cpu1, wall1 = time.process_time(), time.perf_counter()
        clock.measuring = pauses.measuring = False
        measured_ticks = ticks - ticks_before
        rss_after = current_rss_mb()
        ring_bytes = engine.exchange("mem").candle_store_bytes()
        ring_full = engine.exchange("mem").candle_store_bytes(at_bound=True)

        for handle in handles:
            if active or signal == "sma50":
                handle.task.cancel()  # abandon: a graceful stop would monitor the positions for hours
            else:
                handle()
        await asyncio.gather(*(h.wait() for h in handles), return_exceptions=True)
        stats = await engine.live.get_data(symbols[0], "trivial")
        await engine.close()

    gc.callbacks.remove(pauses)
    lags = sorted(clock.lags)
    if not lags:
        print("no ticks measured")
        return
    q = statistics.quantiles(lags, n=100, method="inclusive")
    wall = wall1 - wall0
    kind = {"idle": "idle", "hold": "active positions", "sma50": "sma50 signal (50 candles read every tick)"}
    expected = pairs * wall * 1000 / period_ms
    print(f"pairs {pairs}, tick period {period_ms} ms, measured {wall:.1f} s after a {warmup:.0f} s warm-up "
          f"(every pair's first tick done {first_ticks_s:.1f} s after the start), "
          f"{kind[signal]}, {'staggered' if stagger else 'aligned'} starts, {source} source"
          f"{'' if gc_tuning else ', CC_LIVE_GC_TUNING off'}")
    print(f"ticks {measured_ticks} ({measured_ticks / wall:.0f}/s, expected ~{pairs * 1000 / period_ms:.0f}/s; "
          f"delivered {100 * measured_ticks / expected:.1f} %), errors {len(errors)}, "
          f"events kept per pair {len(stats.events)}" + (f", 50-candle reads {sma_reads}" if signal == "sma50" else ""))
    print(f"tick lag  p50 {q[49] * 1000:.2f} ms   p99 {q[98] * 1000:.2f} ms   max {lags[-1] * 1000:.2f} ms")
    print(f"CPU {100 * (cpu1 - cpu0) / wall:.1f} %  ({(cpu1 - cpu0) / max(1, measured_ticks) * 1e6:.0f} us per tick)")
    print(pauses.summary())
    per_pair = (rss_after - rss_before) * 1024 / pairs
    ring = f"candle ring {ring_bytes / pairs / 1024:.1f} KiB per pair included" if source != "memory" else \
        "no candle ring: MemoryCandles is read directly"
    print(f"memory {rss_after - rss_before:+.1f} MB RSS over {pairs} pairs = "
          f"{per_pair:.1f} KiB per pair ({ring}; source data excluded)")
    if source != "memory":  # a short run has not filled the rings yet: the figure once they are full
        full = per_pair + (ring_full - ring_bytes) / pairs / 1024
        print(f"memory per pair with full rings ~{full:.1f} KiB = {full * 1.024:.1f} kB "
              f"(ring at its eviction bound {ring_full / pairs / 1024:.1f} KiB)")
    if errors:
        print(f"first error: {errors[0]!r}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--pairs", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=30.0, help="measured duration (default 30)")
    parser.add_argument("--period-ms", type=int, default=1000, help="tick period, CC_TICK_TTL_MS (default 1000)")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds before measuring (default 3)")
    parser.add_argument("--active", action="store_true", help="every pair holds an open position (--signal hold)")
    parser.add_argument("--signal", choices=("idle", "hold", "sma50"), default=None,
                        help="idle (default), hold (= --active) or sma50 (50-candle SMA check on every tick)")
    parser.add_argument("--sweep", nargs="?", const="1000,5000,10000", default=None, metavar="N,N,...",
                        help="run these pair counts in turn (default 1000,5000,10000; --signal sma50 by default)")
    parser.add_argument("--source", choices=("memory", "json"), default="memory",
                        help="memory (MemoryCandles, default) or json (async callback: the engine keeps a candle ring)")
    parser.add_argument("--no-gc-tuning", action="store_true",
                        help="CC_LIVE_GC_TUNING=False: the engine leaves the cyclic GC alone (to compare)")
    parser.add_argument("--stagger", action="store_true", help="spread the first ticks over one period")
    args = parser.parse_args(argv)
    signal = args.signal or ("hold" if args.active else "sma50" if args.sweep else "idle")
    print(f"started {datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC, Python {sys.version.split()[0]}")
    counts = [int(n) for n in args.sweep.split(",")] if args.sweep else [args.pairs]
    for n in counts:
        if len(counts) > 1:
            print(f"\n== {n} pairs")
        asyncio.run(bench(n, args.seconds, args.period_ms, args.warmup, signal, args.stagger, args.source,
                          not args.no_gc_tuning))
        gc.collect()


if __name__ == "__main__":
    main()

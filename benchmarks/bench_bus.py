"""Event bus throughput: awaited, ordered delivery through `bk.Engine().bus`.

Run: ``python benchmarks/bench_bus.py [--seconds S | --events N]``. Each case publishes events on
the `signal` channel through its typed constant (`engine/channels.py`'s `SIGNAL`, as the runners do;
the plain name `"signal"` is the same single dict lookup), awaiting each delivery the way the
engine does (`pending = bus.publish(...)`; `await pending` when it is not None), and prints
events/s. By default a short calibration run sizes each case to last about one second (~500k events
for one async listener); `--events N` fixes the count instead. The async case is compared with the 400k events/s target.

Cases:
- 1 sync listener   (the synchronous fast path: `publish` returns None);
- 1 async listener  (each event awaited, per-listener lock held, in order);
- 10 listeners      (5 sync + 5 async, interleaved);
- 1 async listener inside a live run (the per-delivery `CC_LISTENER_TIMEOUT_SECONDS` timer armed on
  every call; outside runs and in backtests it is off by default and costs nothing);
- NATS bridge (`--nats URL`, default the local server; skipped when nats-py or the server is missing):
  events/s a `bk.NatsBridge` gets acknowledged by JetStream (one publish in flight, the ordered
  default, and 64 in flight), and the end-to-end latency (p50 / p99) from `bus.publish` in the engine
  to a `bk.listen_remote` callback on another connection, one event at a time;
- subscribe / unsubscribe churn: `--churn N` listeners (default 10,000) subscribed one by one, then
  unsubscribed one by one (in order, then again in reverse order); each step must stay O(1), so the
  totals grow linearly with N (the snapshot-per-change bus took 3.7 s for 10,000).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import backtest_kit as bk
from backtest_kit.engine.channels import SIGNAL

TARGET = 400_000  # events/s for one async listener


def _sync_listener(counter: list[int]) -> Callable[[Any], None]:
    def listener(event: Any) -> None:
        counter[0] += 1

    return listener


def _async_listener(counter: list[int]) -> Callable[[Any], Any]:
    async def listener(event: Any) -> None:
        counter[0] += 1

    return listener


async def _run(listeners: list[Callable[[Any], Any]], counters: list[list[int]], n: int) -> float:
    engine = bk.Engine()
    bus = engine.bus
    for fn in listeners:
        bus.subscribe(SIGNAL, fn)
    publish = bus.publish
    event = object()
    start = time.perf_counter()
    for _ in range(n):
        pending = publish(SIGNAL, event)
        if pending is not None:
            await pending
    elapsed = time.perf_counter() - start
    for c in counters:
        assert c[0] == n, f"lost events: {c[0]} of {n}"
    return elapsed


async def _run_live_timeout(n: int) -> float:
    """The async case as a live run publishes it: each call under the default live timeout."""
    from backtest_kit.engine.bus import enter_run, leave_run

    token = enter_run(False)
    try:
        fns, counters = case("async")
        return await _run(fns, counters, n)
    finally:
        leave_run(token)


async def _run_emit(n: int) -> float:
    """Same as the async case, through the convenience `await bus.emit(...)`."""
    engine = bk.Engine()
    counter = [0]
    engine.bus.subscribe(SIGNAL, _async_listener(counter))
    emit = engine.bus.emit
    event = object()
    start = time.perf_counter()
    for _ in range(n):
        await emit(SIGNAL, event)
    elapsed = time.perf_counter() - start
    assert counter[0] == n
    return elapsed


def _churn(n: int, *, reverse: bool = False) -> tuple[float, float]:
    """Seconds to subscribe `n` listeners one by one, then to unsubscribe them one by one."""
    bus = bk.Engine().bus
    before = bus.listener_count(SIGNAL)
    callbacks = [_sync_listener([0]) for _ in range(n)]
    start = time.perf_counter()
    offs = [bus.subscribe(SIGNAL, fn) for fn in callbacks]
    subscribed = time.perf_counter()
    for off in reversed(offs) if reverse else offs:
        off()
    elapsed = time.perf_counter()
    assert bus.listener_count(SIGNAL) == before
    return subscribed - start, elapsed - subscribed


def _tick(i: int) -> Any:
    signal = bk.SignalRow(id=f"id-{i}", position="long", price_open=100.0, price_take_profit=110.0,
                          price_stop_loss=90.0, minute_estimated_time=60, note="", symbol="BTCUSDT",
                          strategy_name="bench", exchange_name="mem", scheduled_at=0, pending_at=0,
                          is_scheduled=False)
    return bk.OpenedResult(symbol="BTCUSDT", strategy_name="bench", exchange_name="mem", current_price=100.0,
                           backtest=False, signal=signal)


async def _nats_throughput(url: str, n: int, in_flight: int) -> float:
    """Seconds from the first publish on the bus until JetStream acknowledged all `n` events."""
    import uuid

    from backtest_kit.engine.channels import SIGNAL_LIVE

    tag = uuid.uuid4().hex[:8]
    engine = bk.Engine()
    bridge = bk.NatsBridge(url, stream=f"BENCH{tag}", prefix=f"bench{tag}", queue_size=n + 1,
                           max_in_flight=in_flight, storage="memory")
    bridge.attach(engine)
    await engine.bus.emit(SIGNAL_LIVE, _tick(0))  # connect and create the stream first
    assert await bridge.flush(10)
    events = [_tick(i) for i in range(n)]
    start = time.perf_counter()
    for event in events:
        pending = engine.bus.publish(SIGNAL_LIVE, event)
        if pending is not None:
            await pending
    assert await bridge.flush(120), bridge.stats
    elapsed = time.perf_counter() - start
    assert bridge.stats.published == n + 1 and bridge.stats.dropped == 0, bridge.stats
    await _drop_stream(bridge, url)
    await engine.close()
    return elapsed


async def _nats_latency(url: str, n: int) -> list[float]:
    """Seconds from `bus.publish` to the remote callback, for `n` events sent one at a time."""
    import uuid

    from backtest_kit.engine.channels import SIGNAL_LIVE

    tag = uuid.uuid4().hex[:8]
    engine = bk.Engine()
    bridge = bk.NatsBridge(url, stream=f"BENCH{tag}", prefix=f"bench{tag}", storage="memory")
    bridge.attach(engine)
    arrived: asyncio.Queue[float] = asyncio.Queue()
    sub = await bk.listen_remote(lambda r: arrived.put_nowait(time.perf_counter()), url,
                                 stream=bridge.stream, prefix=bridge.prefix)
    latencies = []
    for i in range(n + 50):  # the first 50 warm up
        sent = time.perf_counter()
        pending = engine.bus.publish(SIGNAL_LIVE, _tick(i))
        if pending is not None:
            await pending
        received = await asyncio.wait_for(arrived.get(), 10)
        if i >= 50:
            latencies.append(received - sent)
    await sub.aclose()
    await _drop_stream(bridge, url)
    await engine.close()
    return latencies


async def _drop_stream(bridge: Any, url: str) -> None:
    import nats

    nc = await nats.connect(url)
    await nc.jetstream().delete_stream(bridge.stream)
    await nc.close()


def _bench_nats(url: str, n: int) -> None:
    try:
        import nats  # noqa: F401
    except ImportError:
        print("  NATS bridge: skipped (pip install 'backtest-kit[nats]')")
        return
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    try:
        socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 4222), timeout=2).close()
    except OSError:
        print(f"  NATS bridge: skipped (no server at {parts.hostname}:{parts.port or 4222})")
        return
    for in_flight in (1, 64):
        secs = asyncio.run(_nats_throughput(url, n, in_flight))
        label = f"NATS bridge, {in_flight} in flight"
        print(f"  {label:<40} {n / secs:>12,.0f} events/s   ({n:,} acknowledged by JetStream in {secs:.3f} s)")
    latencies = sorted(asyncio.run(_nats_latency(url, 2000)))
    p50, p99 = latencies[len(latencies) // 2], latencies[int(len(latencies) * 0.99)]
    print(f"  {'NATS bridge, bus -> remote callback':<40} p50 {p50 * 1e3:.2f} ms, p99 {p99 * 1e3:.2f} ms "
          f"({len(latencies):,} events, one at a time)")


def case(kind: str) -> tuple[list[Callable[[Any], Any]], list[list[int]]]:
    if kind == "sync":
        c = [0]
        return [_sync_listener(c)], [c]
    if kind == "async":
        c = [0]
        return [_async_listener(c)], [c]
    counters = [[0] for _ in range(10)]
    fns = [(_sync_listener if i % 2 == 0 else _async_listener)(counters[i]) for i in range(10)]
    return fns, counters


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="target duration of each case")
    parser.add_argument("--events", type=int, default=0, help="fixed event count per case")
    parser.add_argument("--churn", type=int, default=10_000, help="listeners for the subscribe/unsubscribe case")
    parser.add_argument("--nats", default="nats://127.0.0.1:4222", help="NATS server for the bridge cases ('' = skip)")
    parser.add_argument("--nats-events", type=int, default=20_000, help="events of the bridge throughput cases")
    args = parser.parse_args()

    def size(run: Callable[[int], float]) -> int:
        if args.events > 0:
            return int(args.events)
        probe = 20_000
        return max(probe, int(probe / run(probe) * args.seconds))

    rows: list[tuple[str, float, int]] = []
    for label, kind in (
        ("1 sync listener", "sync"),
        ("1 async listener (publish)", "async"),
        ("10 listeners (5 sync + 5 async)", "mixed"),
    ):
        def run(count: int, kind: str = kind) -> float:
            fns, counters = case(kind)
            return asyncio.run(_run(fns, counters, count))

        count = size(run)
        rows.append((label, run(count), count))

    def run_emit(count: int) -> float:
        return asyncio.run(_run_emit(count))

    count = size(run_emit)
    rows.insert(2, ("1 async listener (await bus.emit)", run_emit(count), count))

    def run_live(count: int) -> float:
        return asyncio.run(_run_live_timeout(count))

    count = size(run_live)
    rows.append(("1 async listener (live, timeout armed)", run_live(count), count))

    print(f"event bus throughput (python {sys.version.split()[0]}, awaited in-order delivery)")
    for label, secs, count in rows:
        print(f"  {label:<40} {count / secs:>12,.0f} events/s   ({count:,} in {secs:.3f} s)")
    async_rate = rows[1][2] / rows[1][1]
    emit_rate = rows[2][2] / rows[2][1]
    print(f"  async vs {TARGET:,}/s target: publish {async_rate / TARGET:.2f}x, emit {emit_rate / TARGET:.2f}x")
    if args.nats:
        _bench_nats(args.nats, int(args.nats_events))
    n = int(args.churn)
    for order, reverse in (("in order", False), ("in reverse", True)):
        sub_s, unsub_s = _churn(n, reverse=reverse)
        print(f"  {n:,} listeners: subscribe {sub_s:.3f} s, unsubscribe {order} {unsub_s:.3f} s "
              f"({(sub_s + unsub_s) / n * 1e6:.2f} us per listener)")


if __name__ == "__main__":
    main()

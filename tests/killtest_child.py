"""Child program of the kill -9 harness (`tests/test_killtest.py`): paper trading on real history.

    python tests/killtest_child.py --workdir DIR [--csv DATA.csv[.gz]] [--minutes 1440] [--warmup 60]
                                   [--symbols BTC/USDT,BTC-PERP,ETH/USDT --risk-limit 2]

Live mode over a `ReplayExchange` of the CSV (default: the bundled ``BTCUSDT-1m-7d.csv.gz``), on a
`VirtualClock`, with the default `FilePersist` under ``DIR/data``. With ``--symbols`` every symbol trades
a copy of that one series (scaled, and for ``ETH...`` shifted by 17 minutes so its signals come at
other times), all under one risk profile ``shared`` with ``max_concurrent_positions=--risk-limit``; the
names hold ``/``, ``-`` and ``:`` on purpose (state keys must stay unique). Every ``opened`` /
``scheduled`` / ``closed`` / ``cancelled`` result (and every error) is appended to ``DIR/journal.jsonl``
by a listener, one JSON line per event, ``fsync``-ed; an ``opened`` line also carries ``open_count``,
the positions the profile holds at that moment: pairs with an open position in memory, plus pairs not
restored yet whose pending signal is stored (what a correct restore must count). Once every pair has
finished the tick of an instant, when the last one goes to sleep, the time of the next tick is saved
to ``DIR/checkpoint``; a restarted child resumes its clock exactly there, so an interrupted run visits
the same tick times as an uninterrupted one. The child prints ``ready`` once it is about to tick, and exits
0 (printing ``done``) when the next tick would reach the end of the slice, leaving any open position
on disk.

Rules that make an interrupted run comparable, trade for trade, with an uninterrupted one:

* **get_signal on every idle tick.** The throttle memory (`last_signal_ms`) is not persisted, so the
  strategy uses interval ``1m`` with the default 60.001 s tick: every idle tick calls `get_signal`,
  before and after a restart alike. (With a coarser interval a restart would call it at other ticks.)
* **No generation on a tick that closed.** A tick that closes or cancels a signal never calls
  `get_signal`. If the kill lands after that tick's deferred delete but before its checkpoint, the
  restarted child replays the tick with nothing stored and would call `get_signal` at that time; the
  child therefore answers None at any tick time its journal records a close or cancel for (the
  journal line is written before the delete, so it is always there in that case). This stands in for
  the unpersisted throttle memory; it never changes an uninterrupted run.
* **Deterministic ids.** Market entries carry ``id=<side>-<symbol>-<tick ms>``. Limit entries get a
  random uuid4 by design ([lifecycle §2.3](../docs/design/lifecycle.md#23-signal-row)), so this child
  replaces the strategy module's ``uuid4`` with a uuid5 of the symbol and tick time of the `get_signal`
  call that produced the signal (the row is built right after that call returns, with no await in
  between).

With several symbols the strategy churns instead: every flat pair asks for a 5-minute market long on
every idle tick, so the profile's slots are always contended and a close (risk write, then the signal
delete after the listeners) happens every few ticks: the moments where a crash once let the profile
overfill. A kill in the middle of an instant makes the restarted child replay that instant
for pairs that had already ticked it, and the order in which pairs reach the shared profile can differ
from an uninterrupted run; such a pass is checked for the invariants (limit, no errors, each close
once), not trade for trade.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import types
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec

import backtest_kit as bk
from backtest_kit.engine import strategy as strategy_module

STRATEGY = "sma-1m"
EXCHANGE = "replay"
RISK = "shared"
JOURNALED = frozenset({"opened", "scheduled", "closed", "cancelled"})
_NAMESPACE = uuid.UUID("6b1f6a3e-4d0b-4a47-9a59-3a0cb2c1d5e1")
_last_call = ["", 0]  # symbol and tick time of the latest get_signal call


def _deterministic_uuid4() -> uuid.UUID:
    symbol, when_ms = _last_call
    return uuid.uuid5(_NAMESPACE, f"limit-{when_ms}" if symbol == "" else f"limit-{symbol}-{when_ms}")


def sma(values: list[float]) -> float:
    return sum(values) / len(values)


def make_get_signal(skip_ticks: dict[str, set[int]], single: bool) -> Any:
    async def get_signal(symbol: str, when: datetime) -> bk.SignalDto | None:
        when_ms = int(when.timestamp() * 1000)
        if when_ms in skip_ticks.get(symbol, ()):
            return None
        candles = await bk.get_candles(symbol, "1m", 50)
        if len(candles) < 31:
            return None
        closes = [c.close for c in candles]
        fast, slow = sma(closes[-10:]), sma(closes[-30:])
        fast_before, slow_before = sma(closes[-11:-1]), sma(closes[-31:-1])
        price = closes[-1]
        _last_call[:] = ["" if single else symbol, when_ms]  # no await from here to the row's uuid4
        if not single:  # churn: every flat pair wants a position at every tick, so slots are contended
            return bk.SignalDto(position="long", price_take_profit=price * 1.015, price_stop_loss=price * 0.985,
                                minute_estimated_time=5, id=f"churn-{symbol}-{when_ms}")
        if fast_before <= slow_before and fast > slow:  # limit long just under the market
            entry = price * 0.999
            return bk.SignalDto(position="long", price_open=entry, price_take_profit=entry * 1.008,
                                price_stop_loss=entry * 0.992, minute_estimated_time=120)
        if fast_before >= slow_before and fast < slow:  # market short
            return bk.SignalDto(position="short", price_take_profit=price * 0.992,
                                price_stop_loss=price * 1.008, minute_estimated_time=120,
                                id=f"short-{when_ms}" if single else f"short-{symbol}-{when_ms}")
        return None

    return get_signal


class Checkpoint:
    """The next tick time as 20 fixed-width bytes rewritten in place: one `pwrite` of a few bytes is
    never torn by a SIGKILL (the harness simulates process crashes, not power loss), and it costs far
    less than a temp file + rename per tick."""

    WIDTH = 20

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)

    def read(self) -> str:
        return os.pread(self.fd, self.WIDTH, 0).decode().strip()

    def write(self, text: str) -> None:
        os.pwrite(self.fd, text.rjust(self.WIDTH).encode(), 0)


class Journal:
    """Append-only JSON lines, one `os.write` + `fsync` per event (a SIGKILL never tears a line)."""

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

    def append(self, record: dict[str, Any]) -> None:
        os.write(self.fd, msgspec.json.encode(record) + b"\n")
        os.fsync(self.fd)


def read_journal(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    lines = path.read_bytes().split(b"\n")
    return [msgspec.json.decode(line) for line in lines[:-1] if line]  # a torn last line is ignored


class CheckpointClock(bk.VirtualClock):
    """A VirtualClock that saves the next tick time once every pair slept after the current tick."""

    def __init__(self, start_ms: int, checkpoint: Checkpoint, end_ms: int, tick_ms: int, pairs: int) -> None:
        super().__init__(datetime.fromtimestamp(start_ms / 1000, UTC))
        self.checkpoint = checkpoint
        self.end_ms = end_ms
        self.tick_ms = tick_ms
        self.pairs = pairs
        self._instant = -1
        self._slept = 0

    async def sleep(self, seconds: float) -> None:
        if round(seconds * 1000) == self.tick_ms:  # an inter-tick sleep: that pair's tick is complete
            now = self.now_ms()
            if now != self._instant:
                self._instant, self._slept = now, 0
            self._slept += 1
        if round(seconds * 1000) == self.tick_ms and self._slept == self.pairs:  # the instant is complete
            next_ms = self.now_ms() + self.tick_ms
            if next_ms >= self.end_ms:
                self.checkpoint.write("done")
                print("done", flush=True)
                os._exit(0)
            self.checkpoint.write(str(next_ms))
        await super().sleep(seconds)


def scaled_copies(source: bk.CsvCandles, symbols: list[str]) -> bk.MemoryCandles:
    """One real series traded under several names: scaled copies, ``ETH...`` 17 minutes earlier."""
    base = source.symbols[0]
    first, last = source.first_timestamp(base), source.last_timestamp(base)
    candles = source.next_candles(base, "1m", first, (last - first) // 60_000 + 1)
    market: dict[str, list[bk.Candle]] = {}
    for n, symbol in enumerate(symbols):
        factor = 0.05 if symbol.startswith("ETH") else 1.0 + 0.0007 * n
        shift = -17 * 60_000 if symbol.startswith("ETH") else 0
        market[symbol] = [
            bk.Candle(timestamp=c.timestamp + shift, open=c.open * factor, high=c.high * factor,
                      low=c.low * factor, close=c.close * factor, volume=c.volume)
            for c in candles
        ]
    return bk.MemoryCandles(market)


def open_count(engine: bk.Engine, persist: bk.FilePersist, symbols: list[str]) -> int:
    """Positions the profile holds now: open in memory, or stored for a pair that has not restored yet."""
    from backtest_kit.engine.signal_store import signal_key

    count = 0
    for symbol in symbols:
        record = engine.live._records.get((symbol, STRATEGY))
        instance = record.instance if record is not None else None
        in_memory = instance is not None and instance.pending is not None
        unrestored = instance is None or not instance.restored
        if in_memory or (unrestored and persist.path_for("signals", signal_key(symbol, STRATEGY)).exists()):
            count += 1
    return count


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--csv", default=str(bk.bundled_sample_path()))
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--warmup", type=int, default=60, help="minutes of history before the first tick")
    parser.add_argument("--minutes", type=int, default=1440, help="length of the traded slice")
    parser.add_argument("--symbols", default="", help="comma-separated names trading copies of the series")
    parser.add_argument("--risk-limit", type=int, default=0, help="max_concurrent_positions of the shared profile")
    parser.add_argument("--rotate", type=int, default=0, help="start the pairs from this index of --symbols")
    args = parser.parse_args(argv)

    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    checkpoint = Checkpoint(workdir / "checkpoint")
    journal_path = workdir / "journal.jsonl"
    saved = checkpoint.read()
    if saved == "done":
        print("done", flush=True)
        return 0

    csv = bk.CsvCandles(args.csv)
    single = not args.symbols
    symbols = [csv.symbols[0]] if single else args.symbols.split(",")
    source = csv if single else scaled_copies(csv, symbols)
    start_ms = max(source.first_timestamp(s) for s in symbols) + args.warmup * 60_000
    end_ms = start_ms + args.minutes * 60_000
    now_ms = int(saved) if saved else start_ms

    clock = CheckpointClock(now_ms, checkpoint, end_ms, bk.DEFAULT_CONFIG.CC_TICK_TTL_MS, len(symbols))
    engine = bk.Engine(persist_dir=workdir / "data", dump_dir=workdir / "dump", clock=clock)
    engine.set_config(CC_SCHEDULE_AWAIT_MINUTES=30)
    strategy_module.uuid = types.SimpleNamespace(uuid4=_deterministic_uuid4)  # type: ignore[attr-defined,assignment]
    persist = bk.FilePersist(workdir / "data")  # only to locate files (no lock, no I/O of its own)

    closing_ticks: dict[str, set[int]] = {s: set() for s in symbols}
    for r in read_journal(journal_path):
        if r["action"] in ("closed", "cancelled"):
            closing_ticks[r["result"]["symbol"]].add(r["tick"])
    journal = Journal(journal_path)

    def on_result(result: bk.TickResult) -> None:
        if result.action in JOURNALED:
            record = {"action": result.action, "id": result.signal.id,  # type: ignore[union-attr]
                      "tick": clock.now_ms(), "result": msgspec.to_builtins(result)}
            if result.action == "opened":
                record["open_count"] = open_count(engine, persist, symbols)
            journal.append(record)

    def on_error(error: BaseException) -> None:
        journal.append({"action": "error", "id": "", "tick": clock.now_ms(), "result": repr(error)})
        print(f"error: {error!r}", file=sys.stderr, flush=True)

    engine.add_exchange(exchange_name=EXCHANGE, get_candles=bk.ReplayExchange(source, clock))
    risk_name = None
    if args.risk_limit:
        risk_name = RISK
        engine.add_risk(risk_name=RISK, max_concurrent_positions=args.risk_limit)
    engine.add_strategy(strategy_name=STRATEGY, interval="1m", get_signal=make_get_signal(closing_ticks, single),
                        risk_name=risk_name)
    engine.listen_signal_live(on_result)
    engine.listen_error(on_error)

    # Starting order decides which pair restores first; rotating it per life (the harness passes the
    # life number) lets other pairs tick before a stored position's own pair does.
    first = args.rotate % len(symbols)
    order = symbols[first:] + symbols[:first]
    handles = [engine.live.background(s, strategy_name=STRATEGY, exchange_name=EXCHANGE) for s in order]
    print("ready", flush=True)
    await asyncio.gather(*(h.wait() for h in handles))
    return 1  # unreachable: the clock exits the process at the end of the slice


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))

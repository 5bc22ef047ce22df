"""Hardening of live state (issue "Hardening", items 1-6): unique keys, restore counting, the
persist-directory lock, stop before the first tick, restore validation, quarantine then wait.

Everything runs on real files (`FilePersist` under `tmp_path`), a `VirtualClock`, and for the lock a
real second process.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest
from helpers import T0, M, dt, flat_candles, long, make_engine
from hypothesis import given, settings
from hypothesis import strategies as st

import backtest_kit as bk
from backtest_kit.engine.naming import legacy_pair_key, pair_key, split_pair_key
from backtest_kit.engine.signal_store import PersistedSignalStore, encode_signal_row, signal_key
from backtest_kit.portfolio.risk import position_key

REALISTIC = ("BTC/USDT", "BTC-PERP", "BTC/USDT:USDT", "BTCUSDT", "ETH/USDT", "a%2Db", "x:y-z")


def mk_row(symbol: str, strategy: str, sid: str = "id-1", *, exchange: str = "mem", price: float = 100.0,
           minutes: int = 60, at: int = T0) -> bk.SignalRow:
    return bk.SignalRow(
        id=sid, position="long", price_open=price, price_take_profit=price * 1.1, price_stop_loss=price * 0.9,
        minute_estimated_time=minutes, note="", symbol=symbol, strategy_name=strategy, exchange_name=exchange,
        scheduled_at=at, pending_at=at, is_scheduled=False,
    )


async def _no_error(_: BaseException) -> None:
    raise AssertionError(f"unexpected error report: {_!r}")


# ------------------------------------------------------------------------------------ item 2: keys
names = st.text(st.characters(codec="utf-8"), min_size=1, max_size=12) | st.sampled_from(REALISTIC)


@settings(max_examples=300, deadline=None)
@given(a=names, b=names, c=names, d=names, sep=st.sampled_from(["-", ":"]))
def test_pair_keys_are_injective_and_round_trip(a: str, b: str, c: str, d: str, sep: str) -> None:
    assert split_pair_key(pair_key(a, b, sep), sep) == (a, b)
    assert (pair_key(a, b, sep) == pair_key(c, d, sep)) == ((a, b) == (c, d))


@given(a=st.from_regex(r"[A-Za-z0-9_.]{1,12}", fullmatch=True),
       b=st.from_regex(r"[A-Za-z0-9_.]{1,12}", fullmatch=True))
def test_plain_names_keep_the_seed_layout(a: str, b: str) -> None:
    assert signal_key(a, b) == legacy_pair_key(a, b) == f"{a}-{b}"
    assert position_key(b, a) == f"{b}:{a}"
    assert signal_key(a, f"{b}-1m") == f"{a}-{b}-1m"  # a dash in the strategy name changes nothing


def test_the_seed_collisions_are_gone() -> None:
    assert signal_key("BTC-PERP", "x") != signal_key("BTC", "PERP-x")
    assert position_key("a:b", "c") != position_key("a", "b:c")


async def test_colliding_pairs_keep_separate_files_and_restore_their_own_rows(tmp_path: Path) -> None:
    """("BTC-PERP", "x") and ("BTC", "PERP-x") once shared signals/BTC-PERP-x.json: the second write
    replaced the first position and its restore set it aside as "another instance's"."""
    persist = bk.FilePersist(tmp_path, fsync=False)
    pairs = [("BTC-PERP", "x"), ("BTC", "PERP-x"), ("a%", "b"), *((s, "sma-1m") for s in REALISTIC)]
    stores = [PersistedSignalStore(lambda e: persist, s, n, _no_error, exchange_name="mem") for s, n in pairs]
    for i, store in enumerate(stores):
        await store.save_pending(mk_row(store.symbol, store.strategy_name, f"id-{i}"))
    for i, store in enumerate(stores):
        pending, scheduled = await store.load()
        assert pending is not None and pending.id == f"id-{i}" and scheduled is None
    listed = sorted(split_pair_key(k) for k in await persist.keys("signals"))
    assert listed == sorted(pairs)
    assert (tmp_path / "signals" / "BTCUSDT-sma-1m.json").exists()  # plain names: the seed's file name


async def test_a_file_of_the_old_layout_is_taken_over_by_its_own_pair_only(tmp_path: Path) -> None:
    persist = bk.FilePersist(tmp_path, fsync=False)
    old = legacy_pair_key("BTC-PERP", "x")
    await persist.write("signals", old, encode_signal_row(mk_row("BTC-PERP", "x", "old-1")))
    other = PersistedSignalStore(lambda e: persist, "BTC", "PERP-x", _no_error, exchange_name="mem")
    assert await other.load() == (None, None)  # same old key, another pair's row: left alone
    assert await persist.read("signals", old) is not None
    mine = PersistedSignalStore(lambda e: persist, "BTC-PERP", "x", _no_error, exchange_name="mem")
    pending, _ = await mine.load()
    assert pending is not None and pending.id == "old-1"
    assert await persist.keys("signals") == [signal_key("BTC-PERP", "x")]  # moved to the new key


async def test_risk_positions_of_colliding_names_are_two_positions(tmp_path: Path) -> None:
    engine = make_engine(tmp_path)
    engine.add_risk(risk_name="rk", max_concurrent_positions=2)
    for strategy, symbol in (("a:b", "c"), ("a", "b:c")):
        gate = engine._risk.gate("rk", symbol, strategy, "mem", backtest=False)
        assert await gate.try_open(mk_row(symbol, strategy, f"{strategy}|{symbol}"), 100.0, T0)
    assert len(await engine.risk.get_positions("rk")) == 2
    blocked = engine._risk.gate("rk", "d", "a", "mem", backtest=False)
    assert not await blocked.try_open(mk_row("d", "a", "third"), 100.0, T0)


# ------------------------------------------------------------------------------------ live helpers
class World:
    """An engine on a VirtualClock over flat 100.0 candles with strategies on one exchange "mem"."""

    def __init__(self, tmp_path: Path, *, start: int = T0, symbols: tuple[str, ...] = ("BTCUSDT",),
                 risk: int | None = None) -> None:
        self.clock = bk.VirtualClock(dt(start))
        self.engine = make_engine(tmp_path, clock=self.clock)
        self.data = tmp_path / "data"
        self.events: list[bk.TickResult] = []
        self.errors: list[BaseException] = []
        self.calls: list[int] = []
        self.active: list[str] = []
        market = {s: flat_candles(T0 - 60 * M, 3 * 1440, 100.0) for s in symbols}
        self.engine.add_exchange(exchange_name="mem",
                                 get_candles=bk.ReplayExchange(bk.MemoryCandles(market), self.clock))
        if risk is not None:
            self.engine.add_risk(risk_name="rk", max_concurrent_positions=risk)
        self.engine.listen_signal_live(self.events.append)
        self.engine.listen_error(self.errors.append)

    def add_strategy(self, name: str = "s", signal: Any = None, *, risk: bool = True) -> None:
        def get_signal(symbol: str, when: datetime) -> Any:
            self.calls.append(self.clock.now_ms())
            return signal

        def on_active(symbol: str, row: bk.SignalRow, *rest: Any) -> None:
            self.active.append(row.id)

        self.engine.add_strategy(strategy_name=name, interval="1m", get_signal=get_signal,
                                 risk_name="rk" if risk and self.engine.list_risks() else None,
                                 callbacks={"on_active": on_active})

    def store(self, row: bk.SignalRow) -> Path:
        path = bk.FilePersist(self.data).path_for("signals", signal_key(row.symbol, row.strategy_name))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(encode_signal_row(row))
        return path

    def actions(self, symbol: str = "BTCUSDT") -> list[str]:
        return [r.action for r in self.events if r.symbol == symbol]

    async def ticks(self, n: int, symbols: tuple[str, ...] = ("BTCUSDT",), strategy: str = "s") -> None:
        """Run the pairs until each produced `n` tick results, then stop them gracefully."""
        handles = [self.engine.live.background(s, strategy_name=strategy, exchange_name="mem") for s in symbols]
        done = asyncio.Event()

        def check(_: Any) -> None:
            if all(len([r for r in self.events if r.symbol == s]) >= n for s in symbols):
                done.set()

        off = self.engine.listen_signal_live(check)
        await asyncio.wait_for(done.wait(), 30)
        off()
        for h in handles:
            h()
        await asyncio.wait_for(asyncio.gather(*(h.wait() for h in handles)), 30)


# ------------------------------------------------------------------------------------ item 4: stop first
async def test_a_stop_before_the_first_tick_still_monitors_the_restored_position(tmp_path: Path) -> None:
    w = World(tmp_path, start=T0 + 2 * M)
    w.add_strategy()
    path = w.store(mk_row("BTCUSDT", "s", "kept", minutes=5))
    handle = w.engine.live.background("BTCUSDT", strategy_name="s", exchange_name="mem")
    handle()  # stop at once: before the run's first tick
    await asyncio.wait_for(handle.wait(), 30)
    closed = [r for r in w.events if r.action == "closed"]
    assert [(r.signal.id, r.close_reason) for r in closed] == [("kept", "time_expired")]
    assert closed[0].close_timestamp >= T0 + 5 * M
    assert "kept" in w.active and w.calls == [] and not path.exists() and w.errors == []
    await w.engine.close()


async def test_a_stop_before_the_first_tick_with_nothing_stored_ends_at_once(tmp_path: Path) -> None:
    w = World(tmp_path)
    w.add_strategy(signal=long(110, 90, 5))
    handle = w.engine.live.background("BTCUSDT", strategy_name="s", exchange_name="mem")
    handle()
    await asyncio.wait_for(handle.wait(), 30)
    assert w.calls == [] and [r.action for r in w.events if r.action != "idle"] == [] and w.errors == []
    await w.engine.close()


# ------------------------------------------------------------------------------------ item 5: restore checks
@pytest.mark.parametrize(("field", "changes"), [
    ("minute_estimated_time", {"minute_estimated_time": 10**12}),
    ("pending_at", {"pending_at": 4_102_444_800_000, "scheduled_at": 4_102_444_800_000}),  # 2100-01-01
    ("price_take_profit", {"price_take_profit": 1e300}),
    ("price_stop_loss", {"price_stop_loss": 99.99}),  # closer than CC_MIN_STOPLOSS_DISTANCE_PERCENT
])
async def test_restored_rows_pass_the_checks_of_new_signals(tmp_path: Path, field: str,
                                                            changes: dict[str, Any]) -> None:
    w = World(tmp_path, start=T0 + M)
    w.add_strategy()
    w.engine.set_config(CC_MIN_STOPLOSS_DISTANCE_PERCENT=0.5)
    bad = msgspec.structs.replace(mk_row("BTCUSDT", "s", "bad"), **changes)
    path = w.store(bad)
    await w.ticks(2)
    assert "bad" not in w.active and not [r for r in w.events if r.action == "closed"]
    assert len(w.errors) == 1 and isinstance(w.errors[0], bk.PersistError)
    assert field in str(w.errors[0]) and "not restored" in str(w.errors[0])
    moved = list(path.parent.glob(f"{path.name}.corrupt-*"))
    assert len(moved) == 1 and moved[0].read_bytes() == encode_signal_row(bad) and not path.exists()
    await w.engine.close()


async def test_a_valid_restored_row_is_still_restored(tmp_path: Path) -> None:
    w = World(tmp_path, start=T0 + M)
    w.add_strategy()
    w.store(mk_row("BTCUSDT", "s", "good", minutes=1440))
    await w.ticks(2)
    assert w.active[:2] == ["good", "good"] and w.errors == []
    await w.engine.close()


# ------------------------------------------------------------------------------------ item 6: quarantine waits
async def test_a_quarantined_position_is_reported_and_nothing_opens_on_that_tick(tmp_path: Path) -> None:
    w = World(tmp_path, start=T0 + M)
    w.add_strategy(signal=long(110, 90, 600))
    path = w.data / "signals" / "BTCUSDT-s.json"
    path.parent.mkdir(parents=True)
    path.write_bytes(b'{"id": "torn", "position": "lo')
    await w.ticks(2)
    assert w.actions()[:2] == ["idle", "opened"]
    assert w.calls[0] == T0 + M + bk.DEFAULT_CONFIG.CC_TICK_TTL_MS  # not asked on the quarantine tick
    assert len(w.errors) == 1 and "moved to" in str(w.errors[0])
    await w.engine.close()


# ------------------------------------------------------------------------------------ item 1: risk counting
THREE = ("BTC/USDT", "BTC-PERP", "ETH/USDT")


async def test_stored_positions_count_before_their_own_pair_ticks(tmp_path: Path) -> None:
    """A crash after a close rewrote the risk document but before the signal delete: the document
    lacks BTC/USDT's position while its signal file is still there. ETH/USDT ticks first."""
    w = World(tmp_path, start=T0 + M, symbols=THREE, risk=2)
    w.add_strategy(signal=long(110, 90, 600))
    w.add_strategy("other", signal=long(110, 90, 600), risk=False)  # no risk profile: its positions never count
    rows = [mk_row(s, "s", f"held-{i}") for i, s in enumerate(THREE[:2])]
    for row in rows:
        w.store(row)
    w.store(mk_row("ETH/USDT", "other", "free"))
    doc = [(position_key("s", "BTC-PERP"), {"signal": msgspec.to_builtins(rows[1]), "symbol": "BTC-PERP",
            "strategy_name": "s", "exchange_name": "mem", "open_timestamp": T0})]
    (w.data / "risk").mkdir()
    (w.data / "risk" / "rk.json").write_bytes(msgspec.json.encode(doc))
    await w.ticks(3, symbols=("ETH/USDT",))
    assert "opened" not in w.actions("ETH/USDT") and w.errors == []
    positions = await w.engine.risk.get_positions("rk")
    assert sorted(p.signal.id for p in positions) == ["held-0", "held-1"]
    stored = msgspec.json.decode((w.data / "risk" / "rk.json").read_bytes())
    assert sorted(pos["signal"]["id"] for _, pos in stored) == ["held-0", "held-1"]  # document rebuilt
    await w.engine.close()


async def test_a_quarantined_risk_document_is_rebuilt_from_the_stored_signals(tmp_path: Path) -> None:
    w = World(tmp_path, start=T0 + M, symbols=THREE, risk=2)
    w.add_strategy(signal=long(110, 90, 600))
    for i, s in enumerate(THREE[:2]):
        w.store(mk_row(s, "s", f"held-{i}"))
    (w.data / "risk").mkdir()
    (w.data / "risk" / "rk.json").write_bytes(b"[[\"s:BTC")  # torn
    await w.ticks(2, symbols=("ETH/USDT",))
    assert "opened" not in w.actions("ETH/USDT")
    assert len(w.errors) == 1 and "risk rk" in str(w.errors[0]) and "moved aside" in str(w.errors[0])
    assert len(list((w.data / "risk").glob("rk.json.corrupt-*"))) == 1
    stored = msgspec.json.decode((w.data / "risk" / "rk.json").read_bytes())
    assert sorted(pos["signal"]["id"] for _, pos in stored) == ["held-0", "held-1"]
    await w.engine.close()


async def test_the_limit_holds_when_the_restored_pairs_then_close(tmp_path: Path) -> None:
    """Once a restored position closes, its slot goes to the waiting pair, and never more than the limit."""
    w = World(tmp_path, start=T0 + M, symbols=THREE, risk=2)
    w.add_strategy(signal=long(110, 90, 600))
    w.store(mk_row("BTC/USDT", "s", "short-lived", minutes=3))
    w.store(mk_row("BTC-PERP", "s", "long-lived", minutes=600))
    open_now: set[str] = set()
    most = [0]

    def track(r: bk.TickResult) -> None:
        if r.action in ("opened", "active"):
            open_now.add(r.symbol)
        elif r.action == "closed":
            open_now.discard(r.symbol)
        most[0] = max(most[0], len(open_now))

    w.engine.listen_signal_live(track)
    await w.ticks(8, symbols=THREE)
    assert most[0] == 2 and w.errors == []
    assert "opened" in w.actions("ETH/USDT") or "opened" in w.actions("BTC/USDT")
    await w.engine.close()


# ------------------------------------------------------------------------------------ item 3: one engine per directory
def snapshot(directory: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p.relative_to(directory)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(directory.rglob("*")) if p.is_file()}


async def test_a_second_engine_on_the_directory_fails_clearly_and_touches_nothing(tmp_path: Path) -> None:
    first = World(tmp_path, start=T0 + M)
    first.add_strategy(signal=long(110, 90, 600))
    handle = first.engine.live.background("BTCUSDT", strategy_name="s", exchange_name="mem")
    while "opened" not in first.actions():
        await asyncio.sleep(0)
    before = snapshot(first.data)
    second = World(tmp_path, start=T0 + M)
    second.add_strategy(signal=long(110, 90, 600))
    with pytest.raises(bk.PersistError) as info:
        second.engine.live.background("BTCUSDT", strategy_name="s", exchange_name="mem")
    message = str(info.value)
    assert f"pid={os.getpid()}" in message and f"host={socket.gethostname()}" in message
    assert str(first.data) in message
    assert snapshot(first.data) == before and second.events == [] and second.errors == []
    assert [i.status for i in await second.engine.live.list()] == []  # nothing was started
    handle.task.cancel()  # a crash of the first engine's run: its lock goes with it
    with contextlib.suppress(asyncio.CancelledError):
        await handle.task
    await second.ticks(1)
    assert second.actions()[0] == "active" and second.active[0] == first.events[0].signal.id  # type: ignore[union-attr]
    await second.engine.close()
    await first.engine.close()


async def test_the_lock_is_given_back_when_the_engine_closes(tmp_path: Path) -> None:
    first = World(tmp_path)
    first.add_strategy()
    first.engine.live.background("BTCUSDT", strategy_name="s", exchange_name="mem")
    await first.engine.close()
    second = World(tmp_path)
    second.add_strategy()
    await second.ticks(1)
    await second.engine.close()


_HOLDER = """
import asyncio, sys
from datetime import datetime
import backtest_kit as bk

async def main():
    engine = bk.Engine(persist_dir=sys.argv[1], dump_dir=sys.argv[1] + "-dump")
    def get_candles(symbol, interval, since, limit):
        start = int(since.timestamp() * 1000)
        return [bk.Candle(timestamp=start + k * 60000, open=1.0, high=1.0, low=1.0, close=1.0, volume=1.0)
                for k in range(limit)]
    engine.add_exchange(exchange_name="x", get_candles=get_candles)
    engine.add_strategy(strategy_name="s", interval="1m", get_signal=lambda s, w: None)
    engine.live.background("BTCUSDT", strategy_name="s", exchange_name="x")
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)

asyncio.run(main())
"""


async def test_an_engine_in_another_process_is_named_and_a_kill_frees_the_directory(tmp_path: Path) -> None:
    data = tmp_path / "data"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]),
                                                        os.environ.get("PYTHONPATH", "")])}
    child = subprocess.Popen([sys.executable, "-c", _HOLDER, str(data)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, env=env)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == b"ready"
        w = World(tmp_path)
        w.add_strategy()
        before = snapshot(data)
        with pytest.raises(bk.PersistError, match=rf"pid={child.pid} host={socket.gethostname()}"):
            w.engine.live.background("BTCUSDT", strategy_name="s", exchange_name="mem")
        assert snapshot(data) == before
        child.kill()  # SIGKILL: no cleanup ran, the OS dropped the flock
        assert child.wait(timeout=30) != 0
        await w.ticks(1)
        assert w.errors == []
        await w.engine.close()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=30)

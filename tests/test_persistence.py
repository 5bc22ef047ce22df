"""Crash-safe live state (issue #5): what is written when, restore, corrupted files, failing backends.

Every live run here is a `VirtualClock` run over a `ReplayExchange` of synthetic 1m candles, with the
default `FilePersist` under `tmp_path / "data"` unless a test installs its own backend. A "crash" is
simulated by abandoning a run (breaking out of `Live.run`, or cancelling its task) without any
cleanup, then starting a fresh `Engine` on the same `persist_dir` with a clock that continues from
where the first one stopped.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest
from helpers import REFERENCE_CONFIG, T0, M, dt, flat_candles, long

import backtest_kit as bk
from backtest_kit.engine.persist import QuarantineBackend
from backtest_kit.engine.signal_store import (
    PersistedSignalStore,
    decode_signal_row,
    encode_signal_row,
    signal_key,
)

TTL = 60_001  # the default CC_TICK_TTL_MS
SYMBOL = "BTCUSDT"
KEY = f"{SYMBOL}-s"


# ---------------------------------------------------------------------------------------------- harness
@dataclass
class World:
    """One engine on a VirtualClock, a replay exchange "mem", strategy "s", and recorders."""

    engine: bk.Engine
    clock: bk.VirtualClock
    data: Path
    events: list[tuple[int, bk.TickResult]] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)
    calls: list[int] = field(default_factory=list)  # get_signal calls (clock ms)
    callbacks: list[tuple[str, str, int]] = field(default_factory=list)  # (name, signal id, clock ms)

    @property
    def pending_file(self) -> Path:
        return self.data / "signals" / f"{KEY}.json"

    @property
    def scheduled_file(self) -> Path:
        return self.data / "schedules" / f"{KEY}.json"

    def actions(self) -> list[str]:
        return [r.action for _, r in self.events]

    def of(self, action: str) -> list[Any]:
        return [r for _, r in self.events if r.action == action]

    def persist_errors(self) -> list[bk.PersistError]:
        return [e for e in self.errors if isinstance(e, bk.PersistError)]

    def run(self) -> Any:
        return aclosing(self.engine.live.run(SYMBOL, strategy_name="s", exchange_name="mem"))

    async def run_until(self, done: Callable[[World], bool], *, crash: bool = False, max_ticks: int = 5000) -> None:
        """Run in the background until `done(world)` holds after a tick; then stop gracefully (the
        open position runs to its close) or, with `crash`, abandon the task at once."""
        handle = self.engine.live.background(SYMBOL, strategy_name="s", exchange_name="mem")

        def check(_: Any) -> None:
            if done(self) or len(self.events) + len(self.errors) >= max_ticks:
                if crash:
                    handle.task.cancel()
                else:
                    handle()

        unsubscribe = [self.engine.listen_signal_live(check), self.engine.listen_error(check)]
        try:
            await handle.wait()
        except asyncio.CancelledError:
            if not crash:
                raise
        finally:
            for off in unsubscribe:
                off()
        assert len(self.events) + len(self.errors) < max_ticks, "condition not reached"


def make_world(
    tmp_path: Path,
    get_signal: Callable[[str, datetime], Any] | None = None,
    *,
    start: int = T0,
    candles: Sequence[bk.Candle] | None = None,
    persist: bk.PersistBackend | None = None,
    **config: Any,
) -> World:
    clock = bk.VirtualClock(dt(start))
    data = tmp_path / "data"
    engine = bk.Engine(clock=clock, persist_dir=data, dump_dir=tmp_path / "dump")
    engine.set_config({**REFERENCE_CONFIG, **config}, unsafe=True)
    if persist is not None:
        engine.use_persist(persist)
    w = World(engine, clock, data)
    if candles is None:
        candles = flat_candles(T0 - 60 * M, 3 * 1440, 100.0)
    engine.add_exchange(exchange_name="mem",
                        get_candles=bk.ReplayExchange(bk.MemoryCandles({SYMBOL: list(candles)}), clock))
    fn = get_signal or (lambda symbol, when: None)

    def recording_signal(symbol: str, when: datetime) -> Any:
        w.calls.append(clock.now_ms())
        return fn(symbol, when)

    def recorder(name: str) -> Callable[..., None]:
        def cb(symbol: str, row: Any = None, *rest: Any) -> None:
            w.callbacks.append((name, getattr(row, "id", ""), clock.now_ms()))

        return cb

    names = ("on_open", "on_close", "on_active", "on_schedule", "on_cancel")
    engine.add_strategy(strategy_name="s", interval="1m", get_signal=recording_signal,
                        callbacks={name: recorder(name) for name in names})
    engine.listen_signal_live(lambda r: w.events.append((clock.now_ms(), r)))
    engine.listen_error(w.errors.append)
    return w


def first_then_none(*signals: Any) -> Callable[[str, datetime], Any]:
    queue = list(signals)
    return lambda symbol, when: queue.pop(0) if queue else None


def stored(path: Path, *, scheduled: bool = False) -> bk.SignalRow:
    return decode_signal_row(path.read_bytes(), scheduled=scheduled)


def sample_row(**changes: Any) -> bk.SignalRow:
    base = bk.SignalRow(
        id="restored-1", position="long", price_open=100.0, price_take_profit=110.0, price_stop_loss=90.0,
        minute_estimated_time=30, note="", symbol=SYMBOL, strategy_name="s", exchange_name="mem",
        scheduled_at=T0, pending_at=T0, is_scheduled=False,
    )
    return msgspec.structs.replace(base, **changes)


class MemoryBackend:
    """A dict-backed `PersistBackend` that records every call and can be told to fail."""

    def __init__(self) -> None:
        self.data: dict[tuple[str, str], bytes] = {}
        self.calls: list[tuple[str, str, str]] = []
        self.fail: set[str] = set()  # operations that raise: "read", "write", "delete"

    def _maybe_fail(self, op: str, entity: str, key: str) -> None:
        self.calls.append((op, entity, key))
        if op in self.fail:
            raise OSError(28, "No space left on device")

    async def read(self, entity: str, key: str) -> bytes | None:
        self._maybe_fail("read", entity, key)
        return self.data.get((entity, key))

    async def write(self, entity: str, key: str, data: bytes) -> None:
        self._maybe_fail("write", entity, key)
        self.data[(entity, key)] = bytes(data)

    async def delete(self, entity: str, key: str) -> None:
        self._maybe_fail("delete", entity, key)
        self.data.pop((entity, key), None)

    async def keys(self, entity: str) -> list[str]:
        return [k for e, k in self.data if e == entity]


# ---------------------------------------------------------------------------------------------- writes
async def test_pending_file_is_written_before_opened_and_removed_after_close(tmp_path: Path) -> None:
    w = make_world(tmp_path, first_then_none(long(110, 90, 5, id="sig-1")))
    seen: dict[str, Any] = {}

    def listener(result: bk.TickResult) -> None:
        if result.action == "opened":
            seen["at_opened"] = stored(w.pending_file)  # already on disk when the listener runs
        elif result.action == "closed":
            seen["at_closed"] = w.pending_file.exists()  # deleted only after every listener saw the close
        elif result.action == "idle" and "at_closed" in seen:
            seen.setdefault("after_close", w.pending_file.exists())

    w.engine.listen_signal_live(listener)
    await w.run_until(lambda w: "closed" in w.actions() and w.actions()[-1] == "idle")
    opened = w.of("opened")[0]
    assert seen["at_opened"] == opened.signal
    assert seen["at_opened"].id == "sig-1"
    assert seen["at_closed"] is True
    assert seen["after_close"] is False
    assert not w.pending_file.exists()
    assert not w.scheduled_file.exists()
    assert sorted(p.name for p in (w.data / "signals").iterdir()) == []  # no temp file left behind
    assert w.errors == []


def dip_candles() -> list[bk.Candle]:
    """Flat at 100, then from T0 + 3 min flat at 94: a limit long at 95 activates a few ticks later."""
    return flat_candles(T0 - 60 * M, 63, 100.0) + flat_candles(T0 + 3 * M, 3 * 1440, 94.0)


async def test_scheduled_file_is_written_before_scheduled_then_moves_to_pending_on_activation(
    tmp_path: Path,
) -> None:
    w = make_world(tmp_path, first_then_none(long(110, 80, 5, price_open=95)), candles=dip_candles())
    seen: dict[str, Any] = {}

    def listener(result: bk.TickResult) -> None:
        if result.action == "scheduled":
            seen["scheduled"] = stored(w.scheduled_file, scheduled=True)
            seen["pending_at_scheduled"] = w.pending_file.exists()
        elif result.action == "opened":
            seen["opened"] = stored(w.pending_file)

    w.engine.listen_signal_live(listener)
    await w.run_until(lambda w: "closed" in w.actions())
    scheduled, opened, closed = w.of("scheduled")[0], w.of("opened")[0], w.of("closed")[0]
    assert seen["scheduled"] == scheduled.signal and seen["scheduled"].is_scheduled
    assert seen["pending_at_scheduled"] is False  # a scheduled signal never goes to the pending store
    assert seen["opened"] == opened.signal
    assert opened.signal.id == scheduled.signal.id and not opened.signal.is_scheduled
    assert closed.close_reason == "time_expired"
    assert not w.pending_file.exists() and not w.scheduled_file.exists()
    assert w.errors == []


async def test_cancelled_scheduled_signal_file_is_removed(tmp_path: Path) -> None:
    w = make_world(tmp_path, first_then_none(long(110, 90, 5, price_open=95)), CC_SCHEDULE_AWAIT_MINUTES=3)
    present: list[bool] = []

    def listener(result: bk.TickResult) -> None:
        if result.action == "cancelled":
            present.append(w.scheduled_file.exists())

    w.engine.listen_signal_live(listener)
    await w.run_until(lambda w: "cancelled" in w.actions())
    assert present == [True]  # still there while listeners get the cancel, gone after the tick
    assert not w.scheduled_file.exists()


async def test_backtests_never_touch_the_disk(tmp_path: Path) -> None:
    engine = bk.Engine(persist_dir=tmp_path / "data", dump_dir=tmp_path / "dump")
    engine.set_config(REFERENCE_CONFIG, unsafe=True)
    engine.add_exchange(exchange_name="mem",
                        get_candles=bk.MemoryCandles({SYMBOL: flat_candles(T0 - 60 * M, 400, 100.0)}))
    engine.add_strategy(strategy_name="s", interval="1m",
                        get_signal=lambda s, when: long(110, 90, 5))
    engine.add_frame(frame_name="f", interval="1m", start_date=dt(T0), end_date=dt(T0 + 120 * M))
    trades = [r async for r in engine.backtest.run(SYMBOL, strategy_name="s", exchange_name="mem", frame_name="f")]
    assert len(trades) > 5
    assert not (tmp_path / "data").exists()
    assert list(tmp_path.iterdir()) == []


def test_constructing_an_engine_touches_no_disk(tmp_path: Path) -> None:
    engine = bk.Engine(persist_dir=tmp_path / "data")
    assert isinstance(engine.persist, bk.FilePersist)
    assert engine.persist.base_dir == (tmp_path / "data").absolute()
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------- restore
async def test_restart_restores_pending_and_expires_from_the_original_time(tmp_path: Path) -> None:
    first = make_world(tmp_path, first_then_none(long(110, 90, 30, id="keep-me")))
    async with first.run() as run:
        async for result in run:
            assert result.action == "opened"
            break  # crash: nothing after the open runs
    opened = first.of("opened")[0].signal
    assert stored(first.pending_file) == opened

    restart_at = T0 + 12 * TTL  # the process was down for 12 ticks; time kept going
    second = make_world(tmp_path, lambda s, when: long(110, 90, 30, id="must-not-open"), start=restart_at)
    await second.run_until(lambda w: "closed" in w.actions())
    assert second.of("opened") == []
    first_tick = second.events[0]
    assert first_tick[0] == restart_at and first_tick[1].action == "active"
    assert first_tick[1].signal == opened  # same id, pending_at, prices
    # on_active on the first tick after the restore:
    # [decision 10](../docs/design/decisions.md#decision-10-on_active-fires-on-every-active-tick)
    assert ("on_active", "keep-me", restart_at) in second.callbacks
    closed = second.of("closed")[0]
    assert closed.signal.id == "keep-me" and closed.signal.pending_at == opened.pending_at == T0
    assert closed.close_reason == "time_expired"
    # expiry counted from the original pending_at, on the restarted tick grid
    expected = next(restart_at + k * TTL for k in range(100) if restart_at + k * TTL >= T0 + 30 * M)
    assert closed.close_timestamp == expected
    assert all(t > closed.close_timestamp for t in second.calls)  # no generation while it was open
    assert not second.pending_file.exists()
    assert second.errors == []


async def test_restart_restores_a_scheduled_signal_and_its_await_window(tmp_path: Path) -> None:
    first = make_world(tmp_path, first_then_none(long(110, 90, 30, price_open=95)), CC_SCHEDULE_AWAIT_MINUTES=20)
    await first.run_until(lambda w: len(w.events) >= 1, crash=True)  # crash right after the first tick
    assert first.actions() == ["scheduled"]
    scheduled = first.of("scheduled")[0].signal
    assert stored(first.scheduled_file, scheduled=True) == scheduled

    restart_at = T0 + 5 * TTL
    second = make_world(tmp_path, start=restart_at, CC_SCHEDULE_AWAIT_MINUTES=20)
    await second.run_until(lambda w: "cancelled" in w.actions() and w.actions()[-1] == "idle")
    assert ("on_schedule", scheduled.id, restart_at) in second.callbacks  # announced on restore
    cancelled = second.of("cancelled")[0]
    assert cancelled.signal == scheduled
    expected = next(restart_at + k * TTL for k in range(100) if restart_at + k * TTL - T0 >= 20 * M)
    assert cancelled.close_timestamp == expected
    assert second.calls and min(second.calls) > cancelled.close_timestamp
    assert not second.scheduled_file.exists()


async def test_crash_between_activation_writes_keeps_the_position_and_drops_the_schedule(tmp_path: Path) -> None:
    backend = MemoryBackend()
    pending = sample_row(id="filled", pending_at=T0 + 5 * M, scheduled_at=T0)
    backend.data[("signals", KEY)] = encode_signal_row(pending)
    backend.data[("schedules", KEY)] = encode_signal_row(
        msgspec.structs.replace(pending, pending_at=T0, is_scheduled=True)
    )
    w = make_world(tmp_path, start=T0 + 10 * M, persist=backend)
    await w.run_until(lambda w: len(w.events) >= 2, crash=True)
    assert w.actions()[:2] == ["active", "active"]
    assert w.events[0][1].signal == pending
    assert ("schedules", KEY) not in backend.data
    assert backend.data[("signals", KEY)] == encode_signal_row(pending)
    assert not any(name == "on_schedule" for name, _, _ in w.callbacks)


# ---------------------------------------------------------------------------------------------- corrupt
def _corrupt_variants() -> dict[str, bytes]:
    good = msgspec.json.decode(encode_signal_row(sample_row()))
    return {
        "garbage": b"\x00\xff{not json at all",
        "truncated": encode_signal_row(sample_row())[:40],
        "wrong-schema": msgspec.json.encode({**good, "price_open": "100"}),
        "missing-field": msgspec.json.encode({k: v for k, v in good.items() if k != "pending_at"}),
        "null-document": b"null",
        "wrong-strategy": encode_signal_row(sample_row(strategy_name="other")),
        "wrong-exchange": encode_signal_row(sample_row(exchange_name="binance")),
        "negative-price": encode_signal_row(sample_row(price_stop_loss=-1.0)),
        "inverted-long": encode_signal_row(sample_row(price_take_profit=95.0)),
        "zero-minutes": encode_signal_row(sample_row(minute_estimated_time=0)),
        "scheduled-in-pending-store": encode_signal_row(sample_row(is_scheduled=True)),
    }


@pytest.mark.parametrize("variant", sorted(_corrupt_variants()))
async def test_corrupt_pending_file_is_reported_moved_aside_and_not_restored(tmp_path: Path, variant: str) -> None:
    content = _corrupt_variants()[variant]
    signals = tmp_path / "data" / "signals"
    signals.mkdir(parents=True)
    (signals / f"{KEY}.json").write_bytes(content)

    w = make_world(tmp_path, first_then_none(long(110, 90, 5, id="fresh")))
    await w.run_until(lambda w: "closed" in w.actions())
    errors = w.persist_errors()
    assert len(errors) == 1 and len(w.errors) == 1, w.errors
    message = str(errors[0])
    assert "signals" in message and KEY in message and "not restored" in message and "moved to" in message
    moved = [p for p in signals.iterdir() if p.name.startswith(f"{KEY}.json.corrupt-")]
    assert len(moved) == 1 and moved[0].read_bytes() == content  # nothing deleted, bytes intact
    assert str(moved[0]) in message
    # nothing restored, and nothing opened on the tick that set it aside
    # ([hardening item 6](../docs/design/decisions.md#hardening-6-a-tick-that-set-a-snapshot-aside-opens-nothing)):
    # the next tick generated, the new signal lived and closed normally
    assert w.actions()[:2] == ["idle", "opened"] and w.of("opened")[0].signal.id == "fresh"
    assert w.calls[0] > T0  # get_signal was not even asked on the quarantine tick
    assert not w.pending_file.exists()


async def test_corrupt_scheduled_file_is_quarantined_too(tmp_path: Path) -> None:
    schedules = tmp_path / "data" / "schedules"
    schedules.mkdir(parents=True)
    content = encode_signal_row(sample_row())  # a pending row in the scheduled store
    (schedules / f"{KEY}.json").write_bytes(content)
    w = make_world(tmp_path)
    await w.run_until(lambda w: len(w.events) >= 2)
    assert len(w.persist_errors()) == 1 and "is_scheduled" in str(w.errors[0])
    assert [p.read_bytes() for p in schedules.iterdir()] == [content]
    assert w.actions() == ["idle", "idle"]


async def test_corrupt_snapshot_on_a_backend_without_quarantine_is_left_untouched(tmp_path: Path) -> None:
    backend = MemoryBackend()
    backend.data[("signals", KEY)] = b"garbage"
    assert not isinstance(backend, QuarantineBackend)
    w = make_world(tmp_path, persist=backend)
    await w.run_until(lambda w: len(w.events) >= 1)
    assert len(w.persist_errors()) == 1 and "left in place" in str(w.errors[0])
    assert backend.data[("signals", KEY)] == b"garbage"
    assert w.actions() == ["idle"]


# ---------------------------------------------------------------------------------------------- failures
async def test_failed_write_reports_persist_error_opens_nothing_and_retries_next_tick(tmp_path: Path) -> None:
    backend = MemoryBackend()
    backend.fail = {"write"}
    w = make_world(tmp_path, lambda s, when: long(110, 90, 3), persist=backend)
    await w.run_until(lambda w: len(w.events) >= 3, crash=True)
    assert w.of("opened") == []
    assert w.actions() == ["idle", "idle", "idle"]
    errors = w.persist_errors()
    assert len(errors) == 3  # one per tick: every tick tried again
    assert all("'signals'" in str(e) and KEY in str(e) and "No space left" in str(e) for e in errors)
    assert ("signals", KEY) not in backend.data
    assert not any(name == "on_open" for name, _, _ in w.callbacks)

    # the disk recovers: the next tick opens, exactly once
    backend.fail = set()
    w2 = make_world(tmp_path, lambda s, when: long(110, 90, 3, id="after"), start=T0 + 3 * TTL, persist=backend)
    await w2.run_until(lambda w: "closed" in w.actions())
    assert [r.signal.id for r in w2.of("opened")] == ["after"]
    assert w2.actions()[0] == "opened"
    assert w2.persist_errors() == []


async def test_recovering_backend_in_the_same_run_opens_the_position_once(tmp_path: Path) -> None:
    backend = MemoryBackend()
    backend.fail = {"write"}
    w = make_world(tmp_path, lambda s, when: long(110, 90, 3), persist=backend)

    def heal(result: bk.TickResult) -> None:
        if len(w.events) == 4:
            backend.fail = set()

    w.engine.listen_signal_live(heal)
    await w.run_until(lambda w: "closed" in w.actions())
    assert w.actions()[:5] == ["idle", "idle", "idle", "idle", "opened"]
    assert len(w.persist_errors()) == 4
    assert len(w.of("opened")) == 1 and len(w.of("closed")) == 1
    assert ("signals", KEY) not in backend.data


async def test_failed_delete_after_close_blocks_new_positions_until_it_succeeds(tmp_path: Path) -> None:
    backend = MemoryBackend()
    w = make_world(tmp_path, lambda s, when: long(110, 90, 2), persist=backend)

    def break_on_close(result: bk.TickResult) -> None:
        if result.action == "closed":
            backend.fail = {"delete"}
        elif len(w.of("closed")) == 1 and w.actions()[-4:] == ["idle"] * 4:
            backend.fail = set()

    w.engine.listen_signal_live(break_on_close)
    await w.run_until(lambda w: len(w.of("opened")) == 2, crash=True)
    actions = w.actions()
    first_close = actions.index("closed")
    assert actions[first_close + 1: first_close + 5] == ["idle"] * 4
    assert actions[first_close + 5] == "opened"
    # the close tick's deferred delete failed, then every blocked tick retried it and reported once
    assert len(w.persist_errors()) == 5
    assert all("delete" in str(e) and "'signals'" in str(e) for e in w.persist_errors())
    opened_ids = [r.signal.id for r in w.of("opened")]
    assert len(set(opened_ids)) == 2
    # no get_signal call while the old position might still be on disk
    close_time = w.events[first_close][0]
    blocked = [t for t in w.calls if close_time < t <= close_time + 4 * TTL]
    assert blocked == []


async def test_failed_restore_read_is_retried_on_the_next_tick(tmp_path: Path) -> None:
    backend = MemoryBackend()
    row = sample_row(pending_at=T0, minute_estimated_time=60)
    backend.data[("signals", KEY)] = encode_signal_row(row)
    backend.fail = {"read"}
    w = make_world(tmp_path, lambda s, when: long(110, 90, 3, id="never"), persist=backend, start=T0 + 5 * M)

    def heal(_: BaseException) -> None:
        if len(w.errors) == 3:
            backend.fail = set()

    w.engine.listen_error(heal)
    await w.run_until(lambda w: len(w.events) >= 2, crash=True)
    assert len(w.persist_errors()) == 3
    assert all("cannot read" in str(e) and "retried" in str(e) for e in w.errors)
    assert w.calls == []  # nothing generated while the stored state was unknown
    assert w.actions() == ["active", "active"] and w.events[0][1].signal == row
    assert w.events[0][0] == T0 + 5 * M + 3 * TTL


async def test_unreadable_persist_dir_reports_persist_error(tmp_path: Path) -> None:
    (tmp_path / "data").write_text("a file where the directory should be")
    w = make_world(tmp_path, lambda s, when: long(110, 90, 3))
    await w.run_until(lambda w: len(w.errors) >= 2, crash=True, max_ticks=50)
    assert w.errors and all(isinstance(e, bk.PersistError) for e in w.errors)
    assert "signals" in str(w.errors[0])
    assert w.of("opened") == []


# ---------------------------------------------------------------------------------------------- backends
async def test_use_persist_custom_backend_receives_the_writes(tmp_path: Path) -> None:
    backend = MemoryBackend()
    w = make_world(tmp_path, first_then_none(long(110, 90, 3, id="mem-1")), persist=backend)
    await w.run_until(lambda w: "closed" in w.actions())
    assert w.engine.persist is backend
    writes = [c for c in backend.calls if c[0] == "write"]
    deletes = [c for c in backend.calls if c[0] == "delete"]
    assert writes == [("write", "signals", KEY)]
    assert deletes == [("delete", "signals", KEY)]
    assert backend.calls[:2] == [("read", "signals", KEY), ("read", "schedules", KEY)]
    assert backend.data == {}
    assert not (tmp_path / "data").exists()


async def test_use_persist_per_entity(tmp_path: Path) -> None:
    backend = MemoryBackend()
    w = make_world(tmp_path, first_then_none(long(110, 90, 30, price_open=95)))
    w.engine.use_persist(backend, entity="schedules")
    assert w.engine.persist_for("schedules") is backend
    assert isinstance(w.engine.persist_for("signals"), bk.FilePersist)
    await w.run_until(lambda w: len(w.events) >= 2, crash=True)
    assert w.actions()[0] == "scheduled"
    assert ("schedules", KEY) in backend.data
    assert not w.scheduled_file.exists()
    w.engine.use_persist(backend)  # every entity: replaces per-entity choices too
    assert w.engine.persist_for("signals") is backend and w.engine.persist is backend


def test_use_persist_rejects_bad_arguments(tmp_path: Path) -> None:
    engine = bk.Engine(persist_dir=tmp_path / "data")
    with pytest.raises(bk.ConfigError, match="'ledger'"):
        engine.use_persist(MemoryBackend(), entity="ledger")
    with pytest.raises(TypeError, match="PersistBackend"):
        engine.use_persist(object())  # type: ignore[arg-type]
    assert callable(bk.use_persist) and "use_persist" in bk.__all__
    assert isinstance(MemoryBackend(), bk.PersistBackend)


# ---------------------------------------------------------------------------------------------- the store
async def test_store_round_trip_and_layout(tmp_path: Path) -> None:
    persist = bk.FilePersist(tmp_path, fsync=False)
    errors: list[BaseException] = []

    async def report(e: BaseException) -> None:
        errors.append(e)

    store = PersistedSignalStore(lambda entity: persist, SYMBOL, "s", report, exchange_name="mem")
    assert store.key == signal_key(SYMBOL, "s") == KEY
    assert await store.load() == (None, None)
    row = sample_row(quantity=0.5, note="n")
    await store.save_pending(row)
    assert (tmp_path / "signals" / f"{KEY}.json").read_bytes() == encode_signal_row(row)
    assert store.healthy
    scheduled = sample_row(id="sch", is_scheduled=True)
    await store.save_scheduled(scheduled)
    assert await store.load() == (row, scheduled)
    await store.save_pending(None)  # deferred until flush
    assert not store.healthy and store.has_deferred
    assert (tmp_path / "signals" / f"{KEY}.json").exists()
    await store.flush()
    assert store.healthy and not (tmp_path / "signals" / f"{KEY}.json").exists()
    assert errors == []


async def test_store_failed_write_keeps_intended_state_and_flush_retries(tmp_path: Path) -> None:
    backend = MemoryBackend()
    backend.fail = {"write"}

    async def report(e: BaseException) -> None:
        raise AssertionError("not used")

    store = PersistedSignalStore(lambda entity: backend, SYMBOL, "s", report)
    row = sample_row()
    with pytest.raises(bk.PersistError, match=r"cannot write the pending signal .*'signals'.*BTCUSDT-s"):
        await store.save_pending(row)
    assert not store.healthy and not store.has_deferred and store.intended("signals") == row
    with pytest.raises(bk.PersistError):
        await store.flush()
    backend.fail = set()
    await store.flush()
    assert store.healthy and backend.data[("signals", KEY)] == encode_signal_row(row)


def test_decode_signal_row_is_strict() -> None:
    row = sample_row()
    assert decode_signal_row(encode_signal_row(row), scheduled=False) == row
    with pytest.raises(ValueError, match="is_scheduled"):
        decode_signal_row(encode_signal_row(row), scheduled=True)
    with pytest.raises(ValueError, match="pending_at"):
        decode_signal_row(encode_signal_row(sample_row(pending_at=0)), scheduled=False)
    data = msgspec.json.decode(encode_signal_row(row))
    with pytest.raises(ValueError, match=r"\$\.minute_estimated_time"):
        decode_signal_row(msgspec.json.encode({**data, "minute_estimated_time": 1.5}), scheduled=False)
    with pytest.raises(ValueError, match="price_open"):
        decode_signal_row(msgspec.json.encode({**data, "price_open": float("inf")}), scheduled=False)

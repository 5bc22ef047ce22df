"""`backtest_kit.testing`: the helpers users get for their own strategy tests (issue item 8)."""

from __future__ import annotations

from contextlib import aclosing
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

import backtest_kit as bk
from backtest_kit import testing
from backtest_kit.engine.persist import PersistBackend, QuarantineBackend
from backtest_kit.testing import REFERENCE_CONFIG, MemoryPersist, VirtualClock, make_engine

T0 = datetime(2024, 1, 1, tzinfo=UTC)
T0_MS = int(T0.timestamp() * 1000)
M = 60_000


def test_make_engine_applies_the_reference_config_and_overrides() -> None:
    engine = make_engine(CC_MIN_TAKEPROFIT_DISTANCE_PERCENT=0.3)
    config = engine.get_config()
    for key, value in REFERENCE_CONFIG.items():
        expected = 0.3 if key == "CC_MIN_TAKEPROFIT_DISTANCE_PERCENT" else value
        assert getattr(config, key) == expected, key
    assert engine is not bk.default_engine and make_engine() is not make_engine()
    # the spec's baseline ([lifecycle §1](../docs/design/lifecycle.md#1-configuration-used-by-the-lifecycle)),
    # except the retry delay: no test may wait on it
    assert REFERENCE_CONFIG["CC_GET_CANDLES_RETRY_COUNT"] == 1
    assert REFERENCE_CONFIG["CC_GET_CANDLES_RETRY_DELAY_MS"] == 0
    assert (REFERENCE_CONFIG["CC_PERCENT_SLIPPAGE"], REFERENCE_CONFIG["CC_PERCENT_FEE"]) == (0.1, 0.1)


def test_make_engine_keeps_live_state_in_memory_unless_given_a_directory(tmp_path: Path) -> None:
    assert isinstance(make_engine().persist, MemoryPersist)
    on_disk = make_engine(tmp_path)
    assert isinstance(on_disk.persist, bk.FilePersist) and on_disk.persist.base_dir == tmp_path / "data"
    assert on_disk.dump_dir == tmp_path / "dump"
    mine = MemoryPersist()
    assert make_engine(tmp_path, persist=mine).persist is mine
    clock = VirtualClock(T0)
    assert make_engine(clock=clock).clock is clock


def test_testing_exports_the_engine_clock_and_a_persist_backend() -> None:
    assert testing.VirtualClock is bk.VirtualClock
    assert sorted(testing.__all__) == ["MemoryPersist", "REFERENCE_CONFIG", "VirtualClock", "comparable_statistics",
                                       "make_engine"]
    backend = MemoryPersist()
    assert isinstance(backend, PersistBackend) and isinstance(backend, QuarantineBackend)


async def test_memory_persist_reads_writes_deletes_and_sets_aside() -> None:
    backend = MemoryPersist()
    await backend.write("signals", "BTCUSDT-s", b"{}")
    assert await backend.read("signals", "BTCUSDT-s") == b"{}"
    assert await backend.keys("signals") == ["BTCUSDT-s"] and await backend.keys("risk") == []
    assert await backend.quarantine("signals", "BTCUSDT-s") == "signals/BTCUSDT-s.corrupt"
    assert await backend.quarantine("signals", "missing") is None
    await backend.delete("signals", "BTCUSDT-s.corrupt")
    await backend.delete("signals", "never-written")  # not an error
    assert backend.data == {}
    assert backend.ops("signals") == [("write", "BTCUSDT-s"), ("read", "BTCUSDT-s"),
                                      ("delete", "BTCUSDT-s.corrupt"), ("delete", "never-written")]
    quiet = MemoryPersist(record=False)
    await quiet.write("risk", "r", b"1")
    assert quiet.log == [] and quiet.data == {("risk", "r"): b"1"}


async def test_a_live_run_on_a_virtual_clock_persists_into_memory_and_not_on_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # the engine's default persist_dir is ./data
    clock = VirtualClock(T0)
    persist = MemoryPersist()
    engine = make_engine(clock=clock, persist=persist)
    candles = [bk.Candle(T0_MS + (i - 60) * M, 100.0, 101.0, 99.0, 100.0, 10.0) for i in range(180)]
    engine.add_exchange(exchange_name="mem",
                        get_candles=bk.ReplayExchange(bk.MemoryCandles({"BTCUSDT": candles}), clock))
    calls: list[datetime] = []

    def buy_once(symbol: str, when: datetime) -> bk.SignalDto | None:
        calls.append(when)
        if len(calls) > 1:
            return None
        return bk.SignalDto(position="long", price_take_profit=110, price_stop_loss=90, minute_estimated_time=5)

    engine.add_strategy(strategy_name="s", interval="1m", get_signal=buy_once)
    actions: list[str] = []
    async with aclosing(engine.live.run("BTCUSDT", strategy_name="s", exchange_name="mem")) as run:
        async for result in run:
            actions.append(result.action)
            if result.action == "closed":
                break
    assert actions == ["opened", "closed"]
    signal_ops = persist.ops("signals")
    assert ("write", "BTCUSDT-s") in signal_ops and signal_ops[-1] == ("delete", "BTCUSDT-s")
    assert clock.now() >= T0 + timedelta(minutes=5)  # virtual minutes passed, instantly
    assert not (tmp_path / "data").exists()
    await engine.close()

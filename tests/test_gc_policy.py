"""The live GC policy (engine/gc_policy.py): freeze once started pairs ran their first tick, unfreeze
when the last live run ends, opt out with CC_LIVE_GC_TUNING=False, never lose a cycle made later."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import T0, M, dt, flat_candles

import backtest_kit as bk
from backtest_kit.engine.gc_policy import LIVE_GEN0_THRESHOLD, LiveGcPolicy, live_gc

SYMBOL = "BTCUSDT"


@pytest.fixture(autouse=True)
def nothing_frozen() -> Iterator[None]:
    """Every test starts and must end with nothing frozen, CPython's thresholds, no run under the policy."""
    gc.unfreeze()
    before = gc.get_threshold()
    try:
        yield
        assert live_gc.runs == 0 and live_gc.settling == 0
        assert gc.get_freeze_count() == 0
        assert gc.get_threshold() == before
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


class _Node:
    """A container that can sit in a reference cycle (and be weakly referenced)."""

    def __init__(self) -> None:
        self.other: Any = None


def test_freezes_when_the_last_started_run_settles_and_unfreezes_when_the_last_run_ends() -> None:
    policy = LiveGcPolicy(every_s=3600)
    first, second = policy.run_started(), policy.run_started()
    first.settled()
    assert gc.get_freeze_count() == 0 and policy.freezes == 0  # the second pair has not ticked yet
    second.settled()
    assert gc.get_freeze_count() > 0 and policy.freezes == 1
    first.ended()
    assert gc.get_freeze_count() > 0  # a run is still going
    second.ended()
    assert gc.get_freeze_count() == 0 and policy.runs == 0


def test_settled_and_ended_are_idempotent_and_an_unsettled_end_counts_as_settled() -> None:
    policy = LiveGcPolicy(every_s=3600)
    run, other = policy.run_started(), policy.run_started()
    run.settled()
    run.settled()
    assert policy.settling == 1
    other.ended()  # ended before its first tick finished (stopped, cancelled)
    assert policy.settling == 0 and policy.freezes == 1 and policy.runs == 1
    other.ended()
    run.ended()
    run.ended()
    assert policy.runs == 0 and gc.get_freeze_count() == 0


def test_while_pairs_settle_the_heap_is_also_frozen_every_so_often() -> None:
    """A slow first tick (a long get_signal, a restore queued behind thousands) does not keep the
    settled pairs' heap from being frozen: with every_s=0 each first tick that ends freezes."""
    policy = LiveGcPolicy(every_s=0)
    slow, fast = policy.run_started(), policy.run_started()
    fast.settled()
    assert policy.freezes == 1 and gc.get_freeze_count() > 0 and policy.settling == 1
    slow.ended()
    fast.ended()
    assert policy.freezes == 2 and gc.get_freeze_count() == 0


def test_the_young_threshold_is_raised_while_runs_go_and_put_back_after() -> None:
    before = gc.get_threshold()
    assert before[0] < LIVE_GEN0_THRESHOLD
    policy = LiveGcPolicy(every_s=3600)
    run = policy.run_started()
    assert gc.get_threshold() == (LIVE_GEN0_THRESHOLD, *before[1:])
    other = policy.run_started()
    run.ended()
    assert gc.get_threshold()[0] == LIVE_GEN0_THRESHOLD  # a run is still going
    other.ended()
    assert gc.get_threshold() == before


def test_a_threshold_the_application_set_meanwhile_or_before_is_left_alone() -> None:
    before = gc.get_threshold()
    policy = LiveGcPolicy(every_s=3600)
    run = policy.run_started()
    gc.set_threshold(50_000, 20, 20)  # the application's own choice while live runs go
    run.ended()
    assert gc.get_threshold() == (50_000, 20, 20)
    gc.set_threshold(0)  # automatic collection off: the policy does not switch it on
    run = policy.run_started()
    assert gc.get_threshold()[0] == 0
    run.ended()
    assert gc.get_threshold()[0] == 0
    gc.set_threshold(*before)


def test_a_cycle_made_after_the_freeze_is_still_collected() -> None:
    policy = LiveGcPolicy(every_s=3600)
    run = policy.run_started()
    run.settled()
    a, b = _Node(), _Node()
    a.other, b.other = b, a
    alive = weakref.ref(a)
    del a, b
    gc.collect()
    assert alive() is None
    run.ended()


def make_engine(tmp_path: Path, get_candles: Any = None, **config: Any) -> tuple[bk.Engine, bk.VirtualClock]:
    clock = bk.VirtualClock(dt(T0))
    engine = bk.Engine(clock=clock, persist_dir=tmp_path / "data", dump_dir=tmp_path / "dump")
    engine.set_config(config)
    source = bk.MemoryCandles({SYMBOL: flat_candles(T0 - 60 * M, 600, 100.0)})
    engine.add_exchange(exchange_name="mem", get_candles=get_candles or bk.ReplayExchange(source, clock))
    engine.add_strategy(strategy_name="s", interval="1m", get_signal=lambda symbol, when: None)
    return engine, clock


@pytest.mark.parametrize("enabled", [True, False])
async def test_a_live_run_freezes_after_its_first_tick_and_unfreezes_when_it_ends(
    tmp_path: Path, enabled: bool
) -> None:
    engine, clock = make_engine(tmp_path, CC_LIVE_GC_TUNING=enabled)
    frozen_at_tick: list[int] = []
    engine.listen_signal_live(lambda result: frozen_at_tick.append(gc.get_freeze_count()))
    handle = engine.live.background(SYMBOL, strategy_name="s", exchange_name="mem")
    with clock.attach():
        while len(frozen_at_tick) < 3:
            await clock.sleep(30)
        assert (live_gc.runs == 1) is enabled
        assert (gc.get_threshold()[0] == LIVE_GEN0_THRESHOLD) is enabled
        handle()
        await handle.wait()
    # listeners see the tick's result after the first tick ended: the heap is frozen by then
    assert all(count > 0 for count in frozen_at_tick) is enabled
    assert all(count == 0 for count in frozen_at_tick) is not enabled
    assert gc.get_freeze_count() == 0
    await engine.close()


async def test_a_first_tick_that_fails_still_settles_the_run(tmp_path: Path) -> None:
    async def broken(symbol: str, interval: str, since: Any, limit: int) -> list[bk.Candle]:
        raise bk.CandleError("feed down")

    engine, clock = make_engine(tmp_path, get_candles=broken, CC_GET_CANDLES_RETRY_COUNT=1)
    errors: list[BaseException] = []
    frozen: list[int] = []

    def on_error(exc: BaseException) -> None:
        errors.append(exc)
        frozen.append(gc.get_freeze_count())

    engine.listen_error(on_error)
    handle = engine.live.background(SYMBOL, strategy_name="s", exchange_name="mem")
    with clock.attach():
        while len(errors) < 2:
            await clock.sleep(30)
        handle()
        await handle.wait()
    assert frozen[0] > 0 and live_gc.runs == 0
    await engine.close()

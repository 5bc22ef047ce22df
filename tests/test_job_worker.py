"""`run_job`: a backtest described as a picklable job gives exactly a `Backtest.run`'s statistics."""

from __future__ import annotations

import asyncio
import pickle
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime
from typing import Any

import msgspec
import pytest

from backtest_kit import demo
from backtest_kit.engine.context import get_candles
from backtest_kit.engine.models import SignalDto
from backtest_kit.system.job_worker import run_job, run_job_async
from backtest_kit.system.jobs import BacktestJob
from backtest_kit.testing import comparable_statistics, make_engine


def _job(engine: Any, symbol: str, **changes: Any) -> BacktestJob:
    fields: dict[str, Any] = {
        "job_id": "j1", "symbol": symbol,
        "strategy": engine.registry.strategies.get(demo.STRATEGY_NAME, "test"),
        "exchange": engine.registry.exchanges.get(demo.EXCHANGE_NAME, "test"),
        "frame": engine.registry.frames.get(demo.FRAME_NAME, "test"),
        "config": engine.get_config(),
    }
    fields.update(changes)
    return BacktestJob(**fields)


async def _reference() -> tuple[Any, str, Any]:
    engine = make_engine()
    symbol, frame = demo.register(engine)
    async for _ in engine.backtest.run(symbol, strategy_name=demo.STRATEGY_NAME,
                                       exchange_name=demo.EXCHANGE_NAME, frame_name=frame):
        pass
    return engine, symbol, await engine.backtest.get_data(symbol, demo.STRATEGY_NAME)


async def test_a_job_in_this_process_equals_a_backtest_run() -> None:
    engine, symbol, expected = await _reference()
    result = await run_job_async(_job(engine, symbol))
    assert result.error is None, result.error
    assert result.stats is not None
    assert comparable_statistics(result.stats) == comparable_statistics(expected)
    assert expected.total_trades > 0


async def test_a_job_in_a_worker_process_equals_a_backtest_run() -> None:
    engine, symbol, expected = await _reference()
    job = _job(engine, symbol)
    assert pickle.loads(pickle.dumps(job)).job_id == "j1"
    with ProcessPoolExecutor(max_workers=1) as pool:
        result = await asyncio.get_running_loop().run_in_executor(pool, run_job, job)
    assert result.error is None, result.error
    assert result.stats is not None
    assert comparable_statistics(result.stats) == comparable_statistics(expected)
    assert result.worker.split(":")[-1].isdigit()


def _factory(fast: int) -> Any:
    if fast <= 0:
        raise ValueError(f"fast must be positive, got {fast}")
    return demo.get_signal


@pytest.mark.parametrize("fast", [0, -3])
async def test_a_factory_that_raises_fails_its_job_naming_the_params(fast: int) -> None:
    engine, symbol, _ = await _reference()
    result = await run_job_async(_job(engine, symbol, params={"fast": fast}, strategy_factory=_factory))
    assert result.stats is None and not result.ok
    assert f"{{'fast': {fast}}}" in (result.error or "")
    assert "fast must be positive" in (result.error or "")


async def test_a_factory_builds_the_signal_from_the_params() -> None:
    engine, symbol, expected = await _reference()
    result = await run_job_async(_job(engine, symbol, params={"fast": 10}, strategy_factory=_factory))
    assert result.stats is not None
    assert comparable_statistics(result.stats) == comparable_statistics(expected)
    assert result.params == {"fast": 10}


async def hold_signal(symbol: str, when: datetime) -> SignalDto:
    """A long with 50 % bands and no practical time limit: the first position is still open at the end."""
    price = (await get_candles(symbol, "1m", 1))[-1].close
    return SignalDto(position="long", price_take_profit=price * 1.5, price_stop_loss=price * 0.5,
                     minute_estimated_time=900_000)


async def test_a_job_carries_the_position_it_ended_with() -> None:
    """`open_signal` / `last_price` are the run's store's, so a Walker can rebuild that store in the
    submitting engine. The result still pickles (it travels back from workers)."""
    engine = make_engine()
    symbol, frame = demo.register(engine)
    engine.add_strategy(strategy_name="hold", interval="5m", get_signal=hold_signal)
    async for _ in engine.backtest.run(symbol, strategy_name="hold", exchange_name=demo.EXCHANGE_NAME,
                                       frame_name=frame):
        pass
    store = engine.backtest.pair_stats.stats(symbol, "hold")
    assert store.open_signal is not None
    result = await run_job_async(_job(engine, symbol, strategy=engine.registry.strategies.get("hold", "test")))
    assert result.stats is not None and result.stats.open_positions == 1
    assert result.open_signal is not None
    assert msgspec.structs.replace(result.open_signal, id="") == msgspec.structs.replace(store.open_signal, id="")
    assert result.last_price == store.open_price > 0
    assert pickle.loads(pickle.dumps(result)) == result

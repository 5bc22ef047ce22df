"""`examples/backtest_sma.py` on a fresh Engine over the bundled 7-day BTCUSDT sample."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from helpers import load_example

import backtest_kit as bk


async def test_sma_example_backtest_over_the_bundled_sample(tmp_path: Path) -> None:
    example = load_example("backtest_sma_example")
    engine = bk.Engine(persist_dir=tmp_path / "data", dump_dir=tmp_path / "dump")
    errors: list[BaseException] = []
    engine.listen_error(errors.append)
    symbol, frame = example.register(engine)
    trades = [t async for t in engine.backtest.run(symbol, strategy_name="sma-cross", exchange_name="csv",
                                                   frame_name=frame)]
    assert errors == []
    assert len(trades) > 0
    assert all(isinstance(t, bk.ClosedResult) for t in trades)  # market entries never cancel
    stamps = [t.close_timestamp for t in trades]
    assert stamps == sorted(stamps)
    for earlier, later in itertools.pairwise(trades):
        assert later.signal.pending_at > earlier.close_timestamp  # one position at a time
    for t in trades:
        assert isinstance(t, bk.ClosedResult)
        assert t.signal.pending_at <= t.close_timestamp <= t.signal.pending_at + 240 * 60_000
    stats = await engine.backtest.get_data(symbol, "sma-cross")
    assert stats.total_trades == len(trades)
    assert stats.winning_trades + stats.losing_trades <= stats.total_trades
    assert stats.win_rate is not None and 0.0 <= stats.win_rate <= 1.0
    total = sum(t.pnl.pnl_percentage for t in trades)  # type: ignore[union-attr]
    assert stats.total_pnl == pytest.approx(total)
    report = await engine.backtest.get_report(symbol, "sma-cross")
    assert "sma-cross" in report
    path = await engine.backtest.dump(symbol, "sma-cross")
    assert path is not None and Path(path).is_file()
    assert Path(path).resolve().is_relative_to((tmp_path / "dump").resolve())

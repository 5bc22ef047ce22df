"""The portfolio heatmap (`Heat`): per-symbol rows and portfolio figures recomputed by hand from the
trades, the bounded store fed by both modes, the report and the PNG
([risk-sizing §5.1](../docs/design/risk-sizing-portfolio.md#51-heatmap))."""

from __future__ import annotations

import math
import re
import struct
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from helpers import T0, M
from hypothesis import given, settings
from hypothesis import strategies as st

import backtest_kit as bk
from backtest_kit.demo import get_signal as sma_signal
from backtest_kit.engine.models import ClosedResult, PnL, SignalRow
from backtest_kit.reports import plots
from backtest_kit.reports.heat_stats import (
    HEAT_COLUMNS,
    HeatStore,
    heat_report,
    heat_statistics,
    heatmap_grid,
)
from backtest_kit.testing import make_engine

needs_mpl = pytest.mark.skipif(not plots.plot_available(), reason="matplotlib (the `plot` extra) is not installed")


def closed(symbol: str, pnl: float, i: int, strategy: str = "s", backtest: bool = True) -> ClosedResult:
    signal = SignalRow(
        id=f"{symbol}-{i}", position="long", price_open=100.0, price_take_profit=110.0, price_stop_loss=90.0,
        minute_estimated_time=600, note="", symbol=symbol, strategy_name=strategy, exchange_name="mem",
        scheduled_at=T0 + i * 60 * M, pending_at=T0 + i * 60 * M, is_scheduled=False,
    )
    return ClosedResult(symbol=symbol, strategy_name=strategy, exchange_name="mem", current_price=101.0,
                        backtest=backtest, signal=signal, close_reason="take_profit",
                        close_timestamp=T0 + i * 60 * M + 30 * M, pnl=PnL(pnl, 100.0, 101.0))


def store_of(trades: dict[str, list[float]]) -> HeatStore:
    """Trades added in time order: symbol by symbol interleaved (i = global sequence)."""
    store = HeatStore()
    i = 0
    longest = max((len(v) for v in trades.values()), default=0)
    for k in range(longest):
        for symbol, pnls in trades.items():
            if k < len(pnls):
                store.add(closed(symbol, pnls[k], i))
                i += 1
    return store


# ---------------------------------------------------------------------------------------------------------
# By hand
# ---------------------------------------------------------------------------------------------------------


def by_hand(pnls: list[float]) -> dict[str, Any]:
    """The row's figures written out plainly, oldest first, from the formulas of the design page."""
    n = len(pnls)
    wins = [p for p in pnls if p > 0]
    losses = [p for p in pnls if p < 0]
    mean = sum(pnls) / n
    std = math.sqrt(sum((p - mean) ** 2 for p in pnls) / n) if n > 1 else None
    if std is not None and len(set(pnls)) == 1:
        std = 0.0  # equal trades: exactly 0 (not the rounding noise of the mean), so no Sharpe
    running, peak, dd = 0.0, 0.0, 0.0
    for p in pnls:
        running += p
        peak = max(peak, running)
        dd = max(dd, peak - running)
    streak_w = streak_l = best_w = best_l = 0
    for p in pnls:
        if p > 0:
            streak_w, streak_l = streak_w + 1, 0
        elif p < 0:
            streak_w, streak_l = 0, streak_l + 1
        best_w, best_l = max(best_w, streak_w), max(best_l, streak_l)
    avg_win = sum(wins) / len(wins) if wins else None
    avg_loss = sum(losses) / len(losses) if losses else None
    wr = len(wins) / n
    return {
        "total_trades": n, "win_count": len(wins), "loss_count": len(losses), "win_rate": wr,
        "total_pnl": sum(pnls), "avg_pnl": mean, "std_dev": std,
        "sharpe_ratio": mean / std if std else None, "max_drawdown": dd,
        "profit_factor": sum(wins) / -sum(losses) if wins and losses else None,
        "avg_win": avg_win, "avg_loss": avg_loss, "max_win_streak": best_w, "max_loss_streak": best_l,
        "expectancy": wr * avg_win + (1 - wr) * avg_loss if avg_win is not None and avg_loss is not None else None,
    }


def close_enough(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is b
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)


pnl_values = st.integers(-500, 500).map(lambda k: k / 100)


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.sampled_from(["BTCUSDT", "ETHUSDT", "SOLUSDT", "XRPUSDT"]),
                       st.lists(pnl_values, min_size=1, max_size=30), min_size=1, max_size=4))
def test_rows_and_portfolio_equal_the_figures_by_hand(trades: dict[str, list[float]]) -> None:
    stats = heat_statistics("s", store_of(trades).trades("s"))
    rows = {r.symbol: r for r in stats.symbols}
    assert set(rows) == set(trades)
    for symbol, pnls in trades.items():
        expected = by_hand(pnls)
        got = rows[symbol]
        for name, value in expected.items():
            assert close_enough(getattr(got, name), value), (symbol, name, getattr(got, name), value)
    # rows by Sharpe descending, None last, ties in first-seen order
    order = list(trades)
    key = [(r.sharpe_ratio is None, -(r.sharpe_ratio or 0.0), order.index(r.symbol)) for r in stats.symbols]
    assert key == sorted(key)
    total_trades = sum(len(p) for p in trades.values())
    assert stats.total_symbols == len(trades) and stats.portfolio_total_trades == total_trades
    assert close_enough(stats.portfolio_total_pnl, sum(sum(p) for p in trades.values()))
    sharpes = [(r.sharpe_ratio, r.total_trades) for r in stats.symbols if r.sharpe_ratio is not None]
    expected_sharpe = sum(s * n for s, n in sharpes) / total_trades if sharpes else None
    assert close_enough(stats.portfolio_sharpe_ratio, expected_sharpe)
    every = [p for k in range(max(map(len, trades.values()))) for p in
             (v[k] for v in trades.values() if k < len(v))]  # the order they closed in
    everything = by_hand(every)
    assert close_enough(stats.portfolio_win_rate, everything["win_rate"])
    assert close_enough(stats.portfolio_profit_factor, everything["profit_factor"])
    assert close_enough(stats.portfolio_max_drawdown, everything["max_drawdown"])


def test_the_reference_example() -> None:
    (row,) = heat_statistics("s", store_of({"BTCUSDT": [2.0, -1.0, 3.0]}).trades("s")).symbols
    assert (row.total_pnl, row.win_count, row.loss_count, row.profit_factor) == (4.0, 2, 1, 5.0)
    assert row.win_rate == pytest.approx(2 / 3) and row.avg_win == 2.5 and row.avg_loss == -1.0
    assert (row.max_win_streak, row.max_loss_streak) == (1, 1)
    assert row.expectancy == pytest.approx(1.3333333, rel=1e-6)
    assert row.max_drawdown == 1.0


def test_one_trade_per_symbol_has_no_sharpe() -> None:
    stats = heat_statistics("s", store_of({"A": [1.0], "B": [-2.0], "C": [0.5]}).trades("s"))
    assert (stats.total_symbols, stats.portfolio_total_trades) == (3, 3)
    assert stats.portfolio_total_pnl == pytest.approx(-0.5)
    assert [r.sharpe_ratio for r in stats.symbols] == [None, None, None]
    assert [r.std_dev for r in stats.symbols] == [None, None, None]
    assert stats.portfolio_sharpe_ratio is None


def test_zero_trades_neither_win_nor_lose_nor_break_a_streak() -> None:
    (row,) = heat_statistics("s", store_of({"A": [1.0, 0.0, 1.0, -1.0, 0.0, -1.0]}).trades("s")).symbols
    assert (row.win_count, row.loss_count, row.max_win_streak, row.max_loss_streak) == (2, 2, 2, 2)


def test_empty_strategy() -> None:
    stats = heat_statistics("s", {})
    assert (stats.symbols, stats.total_symbols, stats.portfolio_total_pnl, stats.portfolio_total_trades) == (
        [], 0, None, 0)
    assert heat_report(stats) == "# Portfolio Heatmap: s\n\n*No data available*"


def test_store_keeps_the_last_250_per_symbol_and_separates_strategies() -> None:
    store = HeatStore()
    for i in range(300):
        store.add(closed("A", float(i), i))
    store.add(closed("A", -1.0, 301, strategy="other"))
    kept = store.trades("s")["A"]
    assert len(kept) == 250 and kept[0][1] == 299.0 and kept[-1][1] == 50.0  # (close time, pnl), newest first
    assert [pnl for _, pnl in store.trades("other")["A"]] == [-1.0]
    store.clear("s")
    assert store.trades("s") == {} and store.trades("other") != {}


# ---------------------------------------------------------------------------------------------------------
# Fed by both modes
# ---------------------------------------------------------------------------------------------------------

SOURCE = bk.CsvCandles(bk.bundled_sample_path())
START = datetime.fromtimestamp(SOURCE.first_timestamp("BTCUSDT") / 1000, UTC) + timedelta(minutes=60)


def two_symbol_engine(tmp_path: Path | None = None) -> bk.Engine:
    """The bundled candles served as BTCUSDT and, shifted 0.5 % up, as ETHUSDT (a second symbol)."""
    candles = SOURCE.next_candles("BTCUSDT", "1m", SOURCE.first_timestamp("BTCUSDT"), 10_000)
    eth = [bk.Candle(c.timestamp, c.open * 1.005, c.high * 1.005, c.low * 1.005, c.close * 1.005, c.volume)
           for c in candles]
    engine = make_engine(directory=tmp_path) if tmp_path is not None else make_engine()
    engine.add_exchange(exchange_name="mem", get_candles=bk.MemoryCandles({"BTCUSDT": candles, "ETHUSDT": eth}))
    engine.add_strategy(strategy_name="sma", interval="5m", get_signal=sma_signal)
    engine.add_frame(frame_name="day", interval="1m", start_date=START, end_date=START + timedelta(days=1))
    return engine


async def backtest(engine: bk.Engine, symbol: str) -> list[bk.FinishedResult]:
    return [r async for r in engine.backtest.run(symbol, strategy_name="sma", exchange_name="mem", frame_name="day")]


async def test_heat_collects_every_symbol_and_accumulates_across_runs() -> None:
    engine = two_symbol_engine()
    btc = [r for r in await backtest(engine, "BTCUSDT") if r.action == "closed"]
    eth = [r for r in await backtest(engine, "ETHUSDT") if r.action == "closed"]
    assert btc and eth
    data = await engine.heat.get_data("sma")
    assert data.total_symbols == 2 and {r.symbol for r in data.symbols} == {"BTCUSDT", "ETHUSDT"}
    assert data.portfolio_total_trades == len(btc) + len(eth)
    by_symbol = {r.symbol: r for r in data.symbols}
    assert by_symbol["BTCUSDT"].total_pnl == pytest.approx(sum(r.pnl.pnl_percentage for r in btc))  # type: ignore[union-attr]
    await backtest(engine, "BTCUSDT")  # a new run does not clear the heatmap: its trades add up
    again = await engine.heat.get_data("sma")
    assert {r.symbol: r.total_trades for r in again.symbols}["BTCUSDT"] == 2 * len(btc)
    engine.heat.clear("sma")
    assert (await engine.heat.get_data("sma")).total_symbols == 0


async def test_live_closed_trades_reach_the_heatmap_through_the_live_store() -> None:
    engine = two_symbol_engine()
    engine.live.pair_stats.stats("ETHUSDT", "sma").add(closed("ETHUSDT", 1.5, 0, strategy="sma", backtest=False), T0)
    engine.backtest.pair_stats.stats("BTCUSDT", "sma").add(closed("BTCUSDT", -0.5, 1, strategy="sma"))
    data = await engine.heat.get_data("sma")
    assert {r.symbol: r.total_pnl for r in data.symbols} == {"ETHUSDT": 1.5, "BTCUSDT": -0.5}


async def test_facade_checks_the_strategy_name() -> None:
    engine = make_engine()
    for call in (engine.heat.get_data, engine.heat.get_report, engine.heat.dump):
        with pytest.raises(bk.UnknownNameError, match="strategy nope not found source=Heat"):
            await call("nope")


# ---------------------------------------------------------------------------------------------------------
# Report, dump and the PNG
# ---------------------------------------------------------------------------------------------------------


def test_report_prints_formatted_numbers_never_a_pattern() -> None:
    stats = heat_statistics("s", store_of({"BTCUSDT": [2.0, -1.0, 3.0], "ETHUSDT": [-19.223477346639005]}).trades("s"))
    report = heat_report(stats)
    lines = report.split("\n")
    assert lines[:3] == ["# Portfolio Heatmap: s", "",
                         "**Total Symbols:** 2 | **Portfolio PNL:** -15.22% | **Portfolio Sharpe:** 0.59"
                         " | **Total Trades:** 4"]
    assert lines[4] == "| " + " | ".join(HEAT_COLUMNS) + " |"
    assert lines[6] == "| BTCUSDT | +4.00% | 0.78 | 5.00 | +1.33% | 66.7% | +2.50% | -1.00% | -1.00% | 1 | 1 | 3 |"
    assert lines[7] == "| ETHUSDT | -19.22% | N/A | N/A | N/A | 0.0% | N/A | -19.22% | -19.22% | 0 | 1 | 1 |"
    assert lines[-3:] == ["**Portfolio Win Rate:** 50.0%", "**Portfolio Profit Factor:** 0.25",
                          "**Portfolio Max Drawdown:** -20.22%"]
    assert not re.search(r"%[+.]\d*f", report)


async def test_dump_writes_the_report_and_the_heatmap_png(tmp_path: Path) -> None:
    engine = two_symbol_engine(tmp_path)
    await backtest(engine, "BTCUSDT")
    await backtest(engine, "ETHUSDT")
    path = await engine.heat.dump("sma")
    assert path == tmp_path / "dump" / "heatmap" / "sma.md"
    text = path.read_text()
    assert text.startswith("# Portfolio Heatmap: sma\n")
    png = path.with_name("sma-heatmap.png")
    if plots.plot_available():
        assert "![heatmap](sma-heatmap.png)" in text
        data = png.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        width, height = struct.unpack(">II", data[16:24])
        assert width > 300 and height > 100
    else:
        assert not png.exists()
    custom = await engine.heat.dump("sma", tmp_path / "elsewhere", plot=False)
    assert custom == tmp_path / "elsewhere" / "sma.md" and not custom.with_name("sma-heatmap.png").exists()


@needs_mpl
def test_heatmap_png_of_an_empty_heatmap_is_not_written() -> None:
    assert plots.render_heatmap_png(heatmap_grid(heat_statistics("s", {}))) is None


def test_heatmap_grid_colours_each_column_best_to_worst() -> None:
    grid = heatmap_grid(heat_statistics("s", store_of({"A": [2.0, -1.0, 3.0], "B": [-3.0, 1.0, -1.0]}).trades("s")))
    assert grid.rows == ["A", "B"]
    column = grid.columns.index("Total PNL")
    assert [grid.scores[0][column], grid.scores[1][column]] == [1.0, 0.0]
    drawdown = grid.columns.index("Max DD")  # A fell 1, B fell 3: the smaller drawdown is the better
    assert [grid.scores[0][drawdown], grid.scores[1][drawdown]] == [1.0, 0.0]
    trades = grid.columns.index("Trades")
    assert [grid.scores[0][trades], grid.scores[1][trades]] == [0.5, 0.5]
    assert grid.texts[0][column] == "+4.00%" and grid.texts[1][drawdown] == "-3.00%"

"""Equity-curve chart: the curve's numbers, the PNG itself, and how `dump` writes and links it."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import pytest
from helpers import T0, M, candles_from_path, flat_candles, long, make_engine, once, setup, short
from hypothesis import given, settings
from hypothesis import strategies as st

from backtest_kit.engine.models import ClosedResult, PnL, SignalRow
from backtest_kit.reports import plots
from backtest_kit.reports.stats import statistics_from_trades

HAS_MPL = plots.plot_available()
needs_mpl = pytest.mark.skipif(not HAS_MPL, reason="matplotlib (the `plot` extra) is not installed")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def trade(i: int, pnl: float, pending_at: int, close_at: int) -> ClosedResult:
    signal = SignalRow(
        id=f"t{i}", position="long", price_open=100.0, price_take_profit=110.0, price_stop_loss=90.0,
        minute_estimated_time=600, note="", symbol="BTCUSDT", strategy_name="s", exchange_name="mem",
        scheduled_at=pending_at, pending_at=pending_at, is_scheduled=False,
    )
    return ClosedResult(symbol="BTCUSDT", strategy_name="s", exchange_name="mem", current_price=101.0,
                        backtest=True, signal=signal, close_reason="take_profit", close_timestamp=close_at,
                        pnl=PnL(pnl, 100.0, 101.0))


def trades_from(pnls: list[float]) -> list[ClosedResult]:
    return [trade(i, p, T0 + i * 60 * M, T0 + i * 60 * M + 30 * M) for i, p in enumerate(pnls)]


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height from the IHDR chunk that must follow the PNG signature."""
    assert data[:8] == PNG_SIGNATURE
    length, kind = struct.unpack(">I4s", data[8:16])
    assert kind == b"IHDR" and length == 13
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_equity_curve_numbers() -> None:
    curve = plots.equity_curve(trades_from([1.0, -2.0, 0.5, 3.0]))
    assert curve.times[0] == T0 and curve.times[1:] == [T0 + 30 * M, T0 + 90 * M, T0 + 150 * M, T0 + 210 * M]
    assert curve.equity == [0.0, 1.0, -1.0, -0.5, 2.5]
    assert curve.peak == [0.0, 1.0, 1.0, 1.0, 2.5]
    assert curve.drawdown == [0.0, 0.0, -2.0, -1.5, 0.0]
    assert curve.wins == [True, False, True, True]
    assert plots.equity_curve([]).times == []


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(-500, 500).map(lambda k: k / 100), min_size=1, max_size=50))
def test_deepest_drawdown_is_the_statistics_max_drawdown(pnls: list[float]) -> None:
    trades = trades_from(pnls)
    curve = plots.equity_curve(trades)
    stats = statistics_from_trades(trades)
    assert stats.max_drawdown is not None
    assert -min(curve.drawdown) == pytest.approx(stats.max_drawdown, abs=1e-9)
    assert curve.equity[-1] == pytest.approx(stats.total_pnl, abs=1e-9)
    assert all(d <= 0 for d in curve.drawdown)


def test_link_goes_below_the_title() -> None:
    assert plots.link_image("# T\n\nbody", "x-equity.png") == "# T\n\n![equity](x-equity.png)\n\nbody"
    assert plots.equity_png_path(Path("d/sma-cross.md")) == Path("d/sma-cross-equity.png")


@needs_mpl
def test_png_is_a_real_chart() -> None:
    stats = statistics_from_trades(trades_from([1.0, -2.0, 0.5, 3.0, -1.0, 2.0]))
    data = plots.render_equity_png(stats, title="Backtest s · BTCUSDT")
    assert data is not None and len(data) > 10_000
    assert png_size(data) == (1000, 600)  # 10 x 6 inches at 100 dpi
    import io

    import matplotlib.image as mpimg
    import numpy as np

    pixels = mpimg.imread(io.BytesIO(data), format="png")
    assert pixels.shape[:2] == (600, 1000)
    rgb = pixels[..., :3]
    assert rgb.std() > 0.05  # not a blank canvas
    blue = (abs(rgb[..., 0] - 0x1F / 255) < 0.08) & (abs(rgb[..., 1] - 0x5F / 255) < 0.08) & (
        abs(rgb[..., 2] - 0xA8 / 255) < 0.08)
    red_fill = (rgb[..., 0] > 0.85) & (rgb[..., 1] > 0.6) & (rgb[..., 1] < 0.8) & (rgb[..., 2] < 0.8)
    assert blue.sum() > 300  # the equity line is drawn
    assert red_fill.sum() > 300  # the drawdown area is filled
    # The equity panel fills the top ~2/3 (rows < 395), the drawdown panel the rest.
    assert blue[:395].sum() == blue.sum()
    assert red_fill[400:].sum() > 0.9 * red_fill.sum()
    assert np.any(red_fill[400:])
    assert plots.render_equity_png(statistics_from_trades([]), title="x") is None


async def _run(tmp_path: Any, signal: Any, closes: list[float]) -> Any:
    engine = make_engine(tmp_path)
    h = setup(engine, candles_from_path(T0, closes, spread=0.5), signal, start=T0 + 10 * M, minutes=len(closes) - 12)
    await h.run()
    return engine


def _zigzag() -> list[float]:
    """Up 3 % then down 3 %, repeated: long trades alternately hit TP and SL."""
    out = [100.0] * 12
    for _ in range(6):
        out += [100.0 + k for k in range(1, 4)] + [103.0 - k for k in range(1, 7)] + [97.0 + k for k in range(1, 4)]
    return out + [100.0] * 10


@needs_mpl
async def test_dump_writes_and_links_the_png(tmp_path: Any) -> None:
    engine = await _run(tmp_path, lambda s, w: long(102, 98, 30), _zigzag())
    stats = await engine.backtest.get_data("BTCUSDT", "s")
    assert stats.total_trades >= 2
    md = await engine.backtest.dump("BTCUSDT", "s")
    assert md == tmp_path / "dump" / "backtest" / "BTCUSDT_s.md"
    png = tmp_path / "dump" / "backtest" / "BTCUSDT_s-equity.png"
    assert png.is_file() and png_size(png.read_bytes()) == (1000, 600)
    lines = md.read_text().split("\n")
    assert lines[:4] == ["# Backtest Report: s", "", "![equity](BTCUSDT_s-equity.png)", ""]
    assert lines[4].startswith("| Signal ID |")
    # Without `plot` the report is exactly get_report's text.
    md2 = await engine.backtest.dump("BTCUSDT", "s", path=tmp_path / "plain", plot=False)
    assert md2 is not None and md2.read_text() == await engine.backtest.get_report("BTCUSDT", "s")
    assert not (tmp_path / "plain" / "BTCUSDT_s-equity.png").exists()


async def test_dump_without_matplotlib_or_trades_writes_only_markdown(tmp_path: Any, monkeypatch: Any) -> None:
    engine = await _run(tmp_path, lambda s, w: short(98, 102, 30), _zigzag())
    monkeypatch.setattr(plots, "plot_available", lambda: False)
    md = await engine.backtest.dump("BTCUSDT", "s")
    assert md is not None and "![equity]" not in md.read_text()
    assert not (tmp_path / "dump" / "backtest" / "BTCUSDT_s-equity.png").exists()
    monkeypatch.undo()

    idle = make_engine(tmp_path / "idle")
    h = setup(idle, flat_candles(T0, 40, 100.0), once(None), start=T0 + 10 * M, minutes=20)
    await h.run()
    md = await idle.backtest.dump("BTCUSDT", "s")
    assert md is not None and md.read_text() == "# Backtest Report: s\n\nNo signals closed yet."
    assert not (tmp_path / "idle" / "dump" / "backtest" / "BTCUSDT_s-equity.png").exists()


@needs_mpl
async def test_a_failing_chart_never_fails_the_dump(tmp_path: Any, monkeypatch: Any) -> None:
    engine = await _run(tmp_path, lambda s, w: long(102, 98, 30), _zigzag())
    warnings: list[str] = []
    engine.logger.warn = lambda topic, *args: warnings.append(topic)  # type: ignore[method-assign]

    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("no fonts")

    monkeypatch.setattr(plots, "write_equity_png", broken)
    md = await engine.backtest.dump("BTCUSDT", "s")
    assert md is not None and md.is_file() and "![equity]" not in md.read_text()
    assert any("equity chart" in w for w in warnings)


@needs_mpl
def test_live_chart_starts_at_the_pnl_before_the_shown_trades() -> None:
    trades = trades_from([1.0, 1.0, -0.5, 2.0])
    full = statistics_from_trades(trades)
    # Live keeps only the recent rows: pretend only the last two are shown.
    import msgspec

    partial = msgspec.structs.replace(full, signals=list(reversed(trades[2:])))
    data = plots.render_equity_png(partial, title="Live s", live=True)
    assert data is not None and png_size(data) == (1000, 600)

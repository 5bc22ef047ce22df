"""Charts as PNGs next to the markdown reports: a run's equity curve and drawdown, and a strategy's
portfolio heatmap (symbols × metrics, `Heat.dump`).

Optional: needs the `plot` extra (`pip install 'backtest-kit[plot]'`, i.e. matplotlib). matplotlib is
imported lazily, only when a chart is drawn, and only through its object API (`Figure` with the Agg
canvas): no pyplot, no global backend switch, nothing shown on screen, safe in a worker thread.

The equity chart has two panels sharing the time axis:

- top: cumulative net PnL in percent points after each closed trade (the equity curve of
  `Statistics`, starting at 0 at the first entry), with the running peak dotted and each trade
  marked green (win) or red (loss);
- bottom: the drawdown, cumulative − running peak (≤ 0), filled; its minimum is −`max_drawdown`.

Live statistics keep only the recent trades as rows
([decision 12](../../docs/design/decisions.md#decision-12-bounded-live-table-exact-statistics)); their
chart starts at the cumulative PnL before the first shown trade and its drawdown is measured within the
shown window, which the title says.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import io
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from msgspec import Struct

from .report import write_atomic

if TYPE_CHECKING:
    from ..engine.logger import EngineLogger
    from ..engine.models import ClosedResult
    from .stats import Statistics

__all__ = [
    "EquityCurve",
    "HeatmapGrid",
    "attach_equity_plot",
    "attach_heatmap_plot",
    "equity_curve",
    "equity_png_path",
    "heatmap_png_path",
    "plot_available",
    "render_equity_png",
    "render_heatmap_png",
    "write_equity_png",
]


def plot_available() -> bool:
    """True when matplotlib can be imported (the `plot` extra is installed)."""
    return importlib.util.find_spec("matplotlib") is not None


class EquityCurve(Struct, frozen=True, kw_only=True):
    """Points of the chart: `times[0]` is the first entry, then one point per closed trade."""

    times: list[int]
    equity: list[float]
    peak: list[float]
    drawdown: list[float]
    wins: list[bool]


def equity_curve(trades: Sequence[ClosedResult], start: float = 0.0) -> EquityCurve:
    """The equity curve of `trades` (oldest first) starting at `start` percent points."""
    times: list[int] = []
    equity: list[float] = []
    peak: list[float] = []
    drawdown: list[float] = []
    wins: list[bool] = []
    if trades:
        times.append(trades[0].signal.pending_at)
        equity.append(start)
        peak.append(start)
        drawdown.append(0.0)
    cum = top = start
    for t in trades:
        p = t.pnl.pnl_percentage
        cum += p
        top = max(top, cum)
        times.append(t.close_timestamp)
        equity.append(cum)
        peak.append(top)
        drawdown.append(cum - top)
        wins.append(p > 0)
    return EquityCurve(times=times, equity=equity, peak=peak, drawdown=drawdown, wins=wins)


def _dates(times: Sequence[int]) -> list[datetime]:
    return [datetime.fromtimestamp(t / 1000, UTC) for t in times]


def render_equity_png(stats: Statistics, *, title: str, live: bool = False, dpi: int = 100) -> bytes | None:
    """The chart as PNG bytes; None when there is no closed trade. Raises ImportError without matplotlib."""
    # Imported as untyped modules: the chart code must type-check with and without the extra.
    mdates: Any = importlib.import_module("matplotlib.dates")
    figure: Any = importlib.import_module("matplotlib.figure")

    trades = list(reversed(stats.signals))
    if not trades:
        return None
    shown = len(trades)
    start = 0.0
    subtitle = f"{stats.total_trades} trades"
    if live and stats.total_pnl is not None and shown < stats.total_trades:
        start = stats.total_pnl - sum(t.pnl.pnl_percentage for t in trades)
        subtitle = f"last {shown} of {stats.total_trades} trades (drawdown within the window)"
    curve = equity_curve(trades, start)
    x = _dates(curve.times)
    parts = [subtitle]
    if stats.total_pnl is not None:
        parts.append(f"total {stats.total_pnl:+.2f}%")
    if stats.max_drawdown is not None:
        parts.append(f"max drawdown {stats.max_drawdown:.2f}%")
    if stats.win_rate is not None:
        parts.append(f"win rate {stats.win_rate * 100:.1f}%")

    fig = figure.Figure(figsize=(10, 6), dpi=dpi, layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=(3, 1.3))
    fig.suptitle(f"{title}\n{' · '.join(parts)}", fontsize=11)

    top.step(x, curve.equity, where="post", color="#1f5fa8", linewidth=1.6, label="equity (cumulative net PnL)")
    top.step(x, curve.peak, where="post", color="#7f7f7f", linewidth=0.9, linestyle=":", label="running peak")
    top.axhline(0.0, color="#444444", linewidth=0.7)
    colors = ["#2e9e44" if w else "#d13b3b" for w in curve.wins]
    top.scatter(x[1:], curve.equity[1:], c=colors, s=14, zorder=3, linewidths=0)
    top.set_ylabel("PnL (% points)")
    top.grid(True, alpha=0.3)
    top.legend(loc="best", fontsize=8, frameon=False)

    bottom.fill_between(x, curve.drawdown, 0.0, step="post", color="#d13b3b", alpha=0.35, linewidth=0)
    bottom.step(x, curve.drawdown, where="post", color="#b22222", linewidth=1.0)
    bottom.set_ylabel("drawdown (% pts)")
    bottom.grid(True, alpha=0.3)
    low = min(curve.drawdown)
    bottom.set_ylim(low * 1.1 - 0.05 if low < 0 else -1.0, 0.05 * max(1.0, -low))

    locator = mdates.AutoDateLocator()
    bottom.xaxis.set_major_locator(locator)
    bottom.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    bottom.set_xlabel("close time (UTC)")

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def equity_png_path(md_path: Path) -> Path:
    """`<dir>/<name>-equity.png` next to `<dir>/<name>.md`."""
    return md_path.with_name(f"{md_path.stem}-equity.png")


def write_equity_png(stats: Statistics, path: Path, *, title: str, live: bool = False) -> Path | None:
    """Render and write the chart to `path` (atomically); None when there is no trade to draw."""
    data = render_equity_png(stats, title=title, live=live)
    if data is None:
        return None
    return write_atomic(Path(path), data)


def link_image(text: str, file_name: str, alt: str = "equity") -> str:
    """Insert `![alt](file_name)` after the report's title line (line 1) and its empty line."""
    lines = text.split("\n")
    return "\n".join([*lines[:2], f"![{alt}]({file_name})", "", *lines[2:]])


async def attach_equity_plot(
    text: str, stats: Statistics, md_path: Path, *, title: str, logger: EngineLogger | Any, live: bool = False
) -> str:
    """Write the chart next to `md_path` when matplotlib is available and there are trades.

    Returns `text` with the image linked below the title, or unchanged when no chart was written
    (no matplotlib, no trade, or a failure — logged, never raised, like `dump` itself).
    """
    if stats.total_trades == 0 or not stats.signals or not plot_available():
        return text
    png = equity_png_path(md_path)
    try:
        written = await asyncio.to_thread(write_equity_png, stats, png, title=title, live=live)
    except Exception as exc:
        logger.warn(f"equity chart could not be written to {png}", repr(exc))
        return text
    if written is None:
        return text
    return link_image(text, written.name)


# ---------------------------------------------------------------------------------------------------------
# A heatmap table (the portfolio heatmap of `Heat.dump`: symbols × metrics)
# ---------------------------------------------------------------------------------------------------------


class HeatmapGrid(Struct, frozen=True, kw_only=True):
    """What a heatmap image shows: one row per label, one column per metric; `scores` (0..1, 1 = best
    of its column, None = missing) colour the cells and `texts` label them."""

    title: str
    rows: list[str]
    columns: list[str]
    scores: list[list[float | None]]
    texts: list[list[str]]


def render_heatmap_png(grid: HeatmapGrid, *, dpi: int = 100) -> bytes | None:
    """The grid as PNG bytes (red = worst, green = best of each column, grey = missing); None when it
    has no row. Raises ImportError without matplotlib."""
    figure: Any = importlib.import_module("matplotlib.figure")
    if not grid.rows:
        return None
    n_rows, n_cols = len(grid.rows), len(grid.columns)
    fig = figure.Figure(figsize=(1.1 * n_cols + 2.2, 0.45 * n_rows + 1.8), dpi=dpi, layout="constrained")
    ax = fig.subplots()
    values = [[float("nan") if v is None else v for v in row] for row in grid.scores]
    ax.imshow(values, cmap="RdYlGn", vmin=0.0, vmax=1.0, aspect="auto")
    for i in range(n_rows):
        for j in range(n_cols):
            score = grid.scores[i][j]
            color = "#888888" if score is None else "#ffffff" if score < 0.15 or score > 0.85 else "#222222"
            ax.text(j, i, grid.texts[i][j], ha="center", va="center", fontsize=8, color=color)
    ax.set_xticks(range(n_cols), grid.columns, fontsize=9)
    ax.set_yticks(range(n_rows), grid.rows, fontsize=9)
    ax.xaxis.tick_top()
    ax.set_facecolor("#eeeeee")  # missing figures (NaN) show the background
    fig.suptitle(grid.title, fontsize=11)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def heatmap_png_path(md_path: Path) -> Path:
    """`<dir>/<name>-heatmap.png` next to `<dir>/<name>.md`."""
    return md_path.with_name(f"{md_path.stem}-heatmap.png")


def _write_heatmap_png(grid: HeatmapGrid, path: Path) -> Path | None:
    png = render_heatmap_png(grid)
    return None if png is None else write_atomic(path, png)


async def attach_heatmap_plot(text: str, grid: HeatmapGrid, md_path: Path, *, logger: EngineLogger | Any) -> str:
    """Write the heatmap next to `md_path` when matplotlib is available and the grid has a row.

    Returns `text` with the image linked below the title, or unchanged when no image was written (no
    matplotlib, no data, or a failure — logged, never raised, like the equity chart).
    """
    if not grid.rows or not plot_available():
        return text
    png = heatmap_png_path(md_path)
    try:
        written = await asyncio.to_thread(_write_heatmap_png, grid, png)
    except Exception as exc:
        logger.warn(f"heatmap could not be written to {png}", repr(exc))
        return text
    if written is None:
        return text
    return link_image(text, written.name, "heatmap")

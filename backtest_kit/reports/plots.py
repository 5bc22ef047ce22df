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
    from .heat_stats import HeatStatistics
    from .stats import Statistics

__all__ = [
    "HEATMAP_METRICS",
    "EquityCurve",
    "attach_equity_plot",
    "attach_heatmap_plot",
    "equity_curve",
    "equity_png_path",
    "heatmap_matrix",
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
# The portfolio heatmap (`Heat.dump`): symbols × metrics
# ---------------------------------------------------------------------------------------------------------

HEATMAP_METRICS: tuple[tuple[str, str, bool], ...] = (
    # (HeatRow field, column label, higher is better)
    ("total_pnl", "Total PNL", True),
    ("sharpe_ratio", "Sharpe", True),
    ("profit_factor", "PF", True),
    ("expectancy", "Expect", True),
    ("win_rate", "WR", True),
    ("avg_win", "Avg Win", True),
    ("avg_loss", "Avg Loss", True),
    ("max_drawdown", "Max DD", False),
    ("total_trades", "Trades", True),
)
"""The heatmap's columns. Each is coloured on its own scale (units differ): green is the best symbol of
that column, red the worst; a drawdown is better when smaller."""


def heatmap_matrix(data: HeatStatistics) -> list[list[float | None]]:
    """Per row (symbol, in report order) and column (`HEATMAP_METRICS`): the colour score 0..1 (1 =
    best of the column; 0.5 when the column has one distinct value), None for a missing figure."""
    raw: list[list[float | None]] = [
        [None if (v := getattr(row, name)) is None else float(v) for name, _, _ in HEATMAP_METRICS]
        for row in data.symbols
    ]
    scores: list[list[float | None]] = [[None] * len(HEATMAP_METRICS) for _ in raw]
    for j, (_, _, higher) in enumerate(HEATMAP_METRICS):
        column = [v for r in raw if (v := r[j]) is not None]
        if not column:
            continue
        low, high = min(column), max(column)
        for i, r in enumerate(raw):
            v = r[j]
            if v is None:
                continue
            score = 0.5 if high == low else (v - low) / (high - low)
            scores[i][j] = score if higher else 1.0 - score
    return scores


def render_heatmap_png(data: HeatStatistics, *, dpi: int = 100) -> bytes | None:
    """The symbols × metrics heatmap as PNG bytes, each cell labelled with the report's formatted value;
    None when there is no symbol. Raises ImportError without matplotlib."""
    from .heat_stats import HEAT_COLUMNS, heat_cells

    figure: Any = importlib.import_module("matplotlib.figure")
    if not data.symbols:
        return None
    scores = heatmap_matrix(data)
    cell_index = [HEAT_COLUMNS.index(label) for _, label, _ in HEATMAP_METRICS]
    texts = [heat_cells(row) for row in data.symbols]
    n_rows, n_cols = len(data.symbols), len(HEATMAP_METRICS)
    fig = figure.Figure(figsize=(1.1 * n_cols + 2.2, 0.45 * n_rows + 1.8), dpi=dpi, layout="constrained")
    ax = fig.subplots()
    grid = [[float("nan") if s is None else s for s in row] for row in scores]
    ax.imshow(grid, cmap="RdYlGn", vmin=0.0, vmax=1.0, aspect="auto")
    for i in range(n_rows):
        for j in range(n_cols):
            ax.text(j, i, texts[i][cell_index[j]], ha="center", va="center", fontsize=8,
                    color="#222222" if scores[i][j] is not None else "#888888")
    ax.set_xticks(range(n_cols), [label for _, label, _ in HEATMAP_METRICS], fontsize=9)
    ax.set_yticks(range(n_rows), [row.symbol for row in data.symbols], fontsize=9)
    ax.xaxis.tick_top()
    ax.set_facecolor("#eeeeee")  # missing figures (NaN) show the background
    sharpe = "N/A" if data.portfolio_sharpe_ratio is None else f"{data.portfolio_sharpe_ratio:.2f}"
    pnl = "N/A" if data.portfolio_total_pnl is None else f"{data.portfolio_total_pnl:+.2f}%"
    fig.suptitle(f"Portfolio heatmap {data.strategy_name}\n{data.total_symbols} symbols · "
                 f"{data.portfolio_total_trades} trades · PnL {pnl} · Sharpe {sharpe}", fontsize=11)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def heatmap_png_path(md_path: Path) -> Path:
    """`<dir>/<name>-heatmap.png` next to `<dir>/<name>.md`."""
    return md_path.with_name(f"{md_path.stem}-heatmap.png")


def _write_heatmap_png(data: HeatStatistics, path: Path) -> Path | None:
    png = render_heatmap_png(data)
    return None if png is None else write_atomic(path, png)


async def attach_heatmap_plot(text: str, data: HeatStatistics, md_path: Path, *, logger: EngineLogger | Any) -> str:
    """Write the heatmap next to `md_path` when matplotlib is available and a symbol traded.

    Returns `text` with the image linked below the title, or unchanged when no image was written (no
    matplotlib, no data, or a failure — logged, never raised, like the equity chart).
    """
    if not data.symbols or not plot_available():
        return text
    png = heatmap_png_path(md_path)
    try:
        written = await asyncio.to_thread(_write_heatmap_png, data, png)
    except Exception as exc:
        logger.warn(f"heatmap could not be written to {png}", repr(exc))
        return text
    if written is None:
        return text
    return link_image(text, written.name, "heatmap")

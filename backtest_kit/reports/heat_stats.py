"""The portfolio heatmap (`bk.Heat`): per-symbol performance of one strategy across every symbol it
traded, in both modes ([risk-sizing §5.1](../../docs/design/risk-sizing-portfolio.md#51-heatmap),
report: [events §4.5](../../docs/design/events-and-api.md#45-heatmap-report)).

Source: every closed trade of both modes, grouped by strategy, then symbol; per symbol the 250 most
recent are kept, newest first ([events §3.4](../../docs/design/events-and-api.md#34-bounded-stores)).
The store is fed by the backtest and live statistics stores as they record a closed result (before
any listener sees it), never cleared by starting a run; `Heat.clear` forgets on request.

Per symbol row (n kept trades, p_i their net PnL %), as the reference defines them:

- `total_trades` = n; `win_count` = #{p > 0}; `loss_count` = #{p < 0} (zero is neither);
- `win_rate` = win_count / n, a **fraction** like `Statistics.win_rate`
  ([decision 13](../../docs/design/decisions.md#decision-13-statistics-use-the-public-apis-names));
- `total_pnl` = Σp; `avg_pnl` = Σp / n;
- `std_dev` = population standard deviation, only when n > 1, else None; exactly 0 when every p is
  equal (not the rounding noise of their mean);
- `sharpe_ratio` = avg_pnl / std_dev when std_dev is neither None nor 0, else None (unlike
  `Statistics`, whose zero rule exists for walker parity);
- `max_drawdown` = largest fall of the cumulative PnL from its running peak (peak starts at 0), trades
  oldest first: the engine's rule for every drawdown, not the reference's newest-first sum
  ([decision 13](../../docs/design/decisions.md#decision-13-statistics-use-the-public-apis-names));
- `profit_factor` = Σ wins / |Σ losses|, only with at least one win and one loss;
- `avg_win` / `avg_loss` = mean of the winning / losing p (avg_loss < 0), None when there is none;
- `max_win_streak` / `max_loss_streak` = longest run of wins / losses; a zero trade neither extends nor
  breaks a run;
- `expectancy` = win_rate × avg_win + (1 − win_rate) × avg_loss, when both averages exist;
- NaN or infinite figures become None.

Portfolio figures: rows sorted by Sharpe descending (None last, ties keep first-seen order);
`total_symbols`; `portfolio_total_trades` = Σ trades; `portfolio_total_pnl` = Σ row totals (None
without rows); `portfolio_sharpe_ratio` = Σ(sharpe_i × trades_i) over rows with a Sharpe / trades of
**all** rows (None when no row has one). The port adds three figures over every kept trade of every
symbol: `portfolio_win_rate` (fraction), `portfolio_profit_factor` (same rule as a row) and
`portfolio_max_drawdown` (the combined equity curve, trades ordered by close time).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Final, TypeAlias

from msgspec import Struct

from ..engine.models import ClosedResult
from ..engine.naming import name_file_stem
from .plots import HeatmapGrid, attach_heatmap_plot
from .report import format_signed_percent, markdown_table, save_report
from .stats import finite_or_none

if TYPE_CHECKING:
    from ..engine.ports import Services

__all__ = [
    "HEATMAP_METRICS",
    "HEAT_COLUMNS",
    "MAX_HEAT_TRADES",
    "HeatFacade",
    "HeatRow",
    "HeatStatistics",
    "HeatStore",
    "HeatTrade",
    "heat_cells",
    "heat_report",
    "heat_row",
    "heat_statistics",
    "heatmap_grid",
]

MAX_HEAT_TRADES: Final = 250
"""Closed trades kept per (strategy, symbol), both modes mixed (reference cap)."""

HeatTrade: TypeAlias = tuple[int, float]
"""What the heatmap keeps of a closed trade: `(close_timestamp, pnl_percentage)`. Not the result
itself: a live process keeps up to 250 per (strategy, symbol) for good, and the rows need no more."""

NA: Final = "N/A"
HEAT_COLUMNS: Final = ("Symbol", "Total PNL", "Sharpe", "PF", "Expect", "WR", "Avg Win", "Avg Loss", "Max DD",
                       "W Streak", "L Streak", "Trades")


class HeatRow(Struct, frozen=True, kw_only=True):
    """One symbol of a strategy's heatmap (see the module docstring for every formula)."""

    symbol: str
    total_trades: int
    win_count: int
    loss_count: int
    win_rate: float | None
    total_pnl: float | None
    avg_pnl: float | None
    std_dev: float | None
    sharpe_ratio: float | None
    max_drawdown: float | None
    profit_factor: float | None
    avg_win: float | None
    avg_loss: float | None
    max_win_streak: int
    max_loss_streak: int
    expectancy: float | None


class HeatStatistics(Struct, frozen=True, kw_only=True):
    """`Heat.get_data(strategy)`: the rows (best Sharpe first) and the portfolio figures."""

    strategy_name: str
    symbols: list[HeatRow]
    total_symbols: int
    portfolio_total_pnl: float | None
    portfolio_sharpe_ratio: float | None
    portfolio_total_trades: int
    portfolio_win_rate: float | None
    portfolio_profit_factor: float | None
    portfolio_max_drawdown: float | None


# ---------------------------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------------------------


def _fsum(values: Iterable[float]) -> float:
    return math.fsum(values)


def _drawdown(pnls: Iterable[float]) -> float:
    """Largest fall of the running sum of `pnls` (oldest first) from its running peak, peak from 0."""
    cum = peak = worst = 0.0
    for p in pnls:
        cum += p
        if cum > peak:
            peak = cum
        elif peak - cum > worst:
            worst = peak - cum
    return worst


def _profit_factor(wins: Sequence[float], losses: Sequence[float]) -> float | None:
    if not wins or not losses:
        return None
    return finite_or_none(_fsum(wins) / abs(_fsum(losses)))


def _streaks(pnls: Iterable[float]) -> tuple[int, int]:
    """Longest runs of wins and of losses; a zero PnL neither extends nor breaks a run."""
    best_win = best_loss = win = loss = 0
    for p in pnls:
        if p > 0:
            win, loss = win + 1, 0
            best_win = max(best_win, win)
        elif p < 0:
            loss, win = loss + 1, 0
            best_loss = max(best_loss, loss)
    return best_win, best_loss


def heat_row(symbol: str, trades_newest_first: Sequence[HeatTrade]) -> HeatRow:
    """The row of one symbol from its kept trades (newest first, as stored); at least one trade."""
    pnls = [pnl for _, pnl in reversed(trades_newest_first)]  # oldest first
    n = len(pnls)
    wins = [p for p in pnls if p > 0]
    losses = [p for p in pnls if p < 0]
    total = _fsum(pnls)
    avg = total / n
    std: float | None = None
    if n > 1:
        std = 0.0 if min(pnls) == max(pnls) else math.sqrt(_fsum((p - avg) ** 2 for p in pnls) / n)
    sharpe = avg / std if std else None
    win_rate = len(wins) / n
    avg_win = _fsum(wins) / len(wins) if wins else None
    avg_loss = _fsum(losses) / len(losses) if losses else None
    expectancy = None
    if avg_win is not None and avg_loss is not None:
        expectancy = win_rate * avg_win + (1 - win_rate) * avg_loss
    win_streak, loss_streak = _streaks(pnls)
    return HeatRow(
        symbol=symbol,
        total_trades=n,
        win_count=len(wins),
        loss_count=len(losses),
        win_rate=win_rate,
        total_pnl=finite_or_none(total),
        avg_pnl=finite_or_none(avg),
        std_dev=None if std is None else finite_or_none(std),
        sharpe_ratio=None if sharpe is None else finite_or_none(sharpe),
        max_drawdown=finite_or_none(_drawdown(pnls)),
        profit_factor=_profit_factor(wins, losses),
        avg_win=None if avg_win is None else finite_or_none(avg_win),
        avg_loss=None if avg_loss is None else finite_or_none(avg_loss),
        max_win_streak=win_streak,
        max_loss_streak=loss_streak,
        expectancy=None if expectancy is None else finite_or_none(expectancy),
    )


def heat_statistics(strategy_name: str, by_symbol: Mapping[str, Sequence[HeatTrade]]) -> HeatStatistics:
    """Rows and portfolio figures of one strategy; `by_symbol` in first-seen order, trades newest first."""
    rows = [heat_row(symbol, trades) for symbol, trades in by_symbol.items() if trades]
    # stable sort: ties (and every None) keep the first-seen order
    rows.sort(key=lambda r: (r.sharpe_ratio is None, -(r.sharpe_ratio or 0.0)))
    total_trades = sum(r.total_trades for r in rows)
    with_sharpe = [r for r in rows if r.sharpe_ratio is not None]
    portfolio_sharpe = None
    if with_sharpe and total_trades:
        portfolio_sharpe = finite_or_none(
            _fsum(r.sharpe_ratio * r.total_trades for r in with_sharpe if r.sharpe_ratio is not None) / total_trades
        )
    # every kept trade in the order they closed (a stable sort: same-time closes keep symbol order)
    every = sorted((t for trades in by_symbol.values() for t in reversed(trades)), key=lambda t: t[0])
    pnls = [pnl for _, pnl in every]
    wins = [p for p in pnls if p > 0]
    losses = [p for p in pnls if p < 0]
    return HeatStatistics(
        strategy_name=strategy_name,
        symbols=rows,
        total_symbols=len(rows),
        portfolio_total_pnl=finite_or_none(_fsum(r.total_pnl or 0.0 for r in rows)) if rows else None,
        portfolio_sharpe_ratio=portfolio_sharpe,
        portfolio_total_trades=total_trades,
        portfolio_win_rate=len(wins) / len(pnls) if pnls else None,
        portfolio_profit_factor=_profit_factor(wins, losses),
        portfolio_max_drawdown=finite_or_none(_drawdown(pnls)) if pnls else None,
    )


# ---------------------------------------------------------------------------------------------------------
# Store
# ---------------------------------------------------------------------------------------------------------


class HeatStore:
    """Closed trades per strategy, then symbol: the last `max_trades` of each, newest first."""

    def __init__(self, max_trades: int = MAX_HEAT_TRADES) -> None:
        self.max_trades = max_trades
        self._trades: dict[str, dict[str, deque[HeatTrade]]] = {}

    def add(self, result: ClosedResult) -> None:
        """Record one closed trade of either mode (called by the run statistics stores)."""
        symbols = self._trades.get(result.strategy_name)
        if symbols is None:
            symbols = self._trades[result.strategy_name] = {}
        trades = symbols.get(result.symbol)
        if trades is None:
            trades = symbols[result.symbol] = deque(maxlen=self.max_trades)
        trades.appendleft((result.close_timestamp, result.pnl.pnl_percentage))

    def trades(self, strategy_name: str) -> dict[str, list[HeatTrade]]:
        """symbol -> kept trades newest first, symbols in first-seen order (a snapshot)."""
        return {symbol: list(trades) for symbol, trades in self._trades.get(strategy_name, {}).items()}

    def clear(self, strategy_name: str | None = None) -> None:
        if strategy_name is None:
            self._trades.clear()
        else:
            self._trades.pop(strategy_name, None)


# ---------------------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------------------


def _fixed(x: float | None, decimals: int) -> str:
    if x is None or not math.isfinite(x):
        return NA
    s = f"{x:.{decimals}f}"
    return s[1:] if s[0] == "-" and float(s) == 0 else s


def _rate(fraction: float | None) -> str:
    return NA if fraction is None else f"{_fixed(fraction * 100, 1)}%"


def _negated(drawdown: float | None) -> str:
    return NA if drawdown is None else format_signed_percent(-drawdown)


def heat_cells(row: HeatRow) -> list[str]:
    """The formatted cells of one row, in `HEAT_COLUMNS` order (shared by the report and the PNG)."""
    return [
        row.symbol,
        format_signed_percent(row.total_pnl),
        _fixed(row.sharpe_ratio, 2),
        _fixed(row.profit_factor, 2),
        format_signed_percent(row.expectancy),
        _rate(row.win_rate),
        format_signed_percent(row.avg_win),
        format_signed_percent(row.avg_loss),
        _negated(row.max_drawdown),
        str(row.max_win_streak),
        str(row.max_loss_streak),
        str(row.total_trades),
    ]


def heat_report(stats: HeatStatistics) -> str:
    """`# Portfolio Heatmap: <strategy>`, the reference's summary line and table with formatted numbers
    (`-19.22%`, `0.49`, `48.0%`; the reference printed its format patterns), then the port's three
    extra portfolio figures."""
    title = f"# Portfolio Heatmap: {stats.strategy_name}"
    if not stats.symbols:
        return f"{title}\n\n*No data available*"
    summary = (
        f"**Total Symbols:** {stats.total_symbols}"
        f" | **Portfolio PNL:** {format_signed_percent(stats.portfolio_total_pnl)}"
        f" | **Portfolio Sharpe:** {_fixed(stats.portfolio_sharpe_ratio, 2)}"
        f" | **Total Trades:** {stats.portfolio_total_trades}"
    )
    lines = [title, "", summary, "", *markdown_table(HEAT_COLUMNS, [heat_cells(r) for r in stats.symbols]), ""]
    lines.append(f"**Portfolio Win Rate:** {_rate(stats.portfolio_win_rate)}")
    lines.append(f"**Portfolio Profit Factor:** {_fixed(stats.portfolio_profit_factor, 2)}")
    lines.append(f"**Portfolio Max Drawdown:** {_negated(stats.portfolio_max_drawdown)}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------
# The heatmap image (`plots.render_heatmap_png`)
# ---------------------------------------------------------------------------------------------------------

HEATMAP_METRICS: Final[tuple[tuple[str, str, bool], ...]] = (
    # (HeatRow field, column label of the report, higher is better)
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
"""The image's columns. Each is coloured on its own scale (units differ): green is the best symbol of
that column, red the worst; a drawdown is better when smaller."""


def heatmap_grid(stats: HeatStatistics) -> HeatmapGrid:
    """Rows = symbols in report order; a cell's score is its place between the column's worst (0) and
    best (1) value (0.5 when the column has one distinct value), None for a missing figure; its text is
    the report's formatted cell."""
    raw: list[list[float | None]] = [
        [None if (v := getattr(row, name)) is None else float(v) for name, _, _ in HEATMAP_METRICS]
        for row in stats.symbols
    ]
    scores: list[list[float | None]] = [[None] * len(HEATMAP_METRICS) for _ in raw]
    for j, (_, _, higher) in enumerate(HEATMAP_METRICS):
        column = [v for r in raw if (v := r[j]) is not None]
        if not column:
            continue
        low, high = min(column), max(column)
        for i, r in enumerate(raw):
            v = r[j]
            if v is not None:
                score = 0.5 if high == low else (v - low) / (high - low)
                scores[i][j] = score if higher else 1.0 - score
    indices = [HEAT_COLUMNS.index(label) for _, label, _ in HEATMAP_METRICS]
    texts = [[cells[k] for k in indices] for cells in map(heat_cells, stats.symbols)]
    sharpe = _fixed(stats.portfolio_sharpe_ratio, 2)
    title = (f"Portfolio heatmap {stats.strategy_name}\n{stats.total_symbols} symbols · "
             f"{stats.portfolio_total_trades} trades · PnL {format_signed_percent(stats.portfolio_total_pnl)}"
             f" · Sharpe {sharpe}")
    return HeatmapGrid(title=title, rows=[r.symbol for r in stats.symbols],
                       columns=[label for _, label, _ in HEATMAP_METRICS], scores=scores, texts=texts)


# ---------------------------------------------------------------------------------------------------------
# Facade: `engine.heat` / `bk.Heat`
# ---------------------------------------------------------------------------------------------------------


class HeatFacade:
    """`bk.Heat`: get_data / get_report / dump / clear of a strategy's per-symbol heatmap."""

    def __init__(self, engine: Services) -> None:
        self.engine = engine
        self.store = HeatStore()

    @property
    def add(self) -> Callable[[ClosedResult], None]:
        """The store's `add`, handed to the run statistics stores as their closed-trade sink."""
        return self.store.add

    async def get_data(self, strategy_name: str) -> HeatStatistics:
        """Per-symbol rows and portfolio figures over the kept closed trades of the strategy."""
        self.engine.check_strategy(strategy_name, "Heat.get_data")
        return heat_statistics(strategy_name, self.store.trades(strategy_name))

    async def get_report(self, strategy_name: str) -> str:
        self.engine.check_strategy(strategy_name, "Heat.get_report")
        return heat_report(heat_statistics(strategy_name, self.store.trades(strategy_name)))

    async def dump(self, strategy_name: str, path: str | Path | None = None, *, plot: bool = True) -> Path | None:
        """Write `<path or dump_dir/heatmap>/<strategy>.md` (name percent-encoded); returns the path.

        With `plot` and matplotlib importable (the `plot` extra), the heatmap image (symbols × metrics)
        is written next to it as `<strategy>-heatmap.png` and linked below the title.
        """
        self.engine.check_strategy(strategy_name, "Heat.dump")
        data = heat_statistics(strategy_name, self.store.trades(strategy_name))
        text = heat_report(data)
        base = Path(path) if path is not None else Path(self.engine.dump_dir) / "heatmap"
        target = base / f"{name_file_stem(strategy_name)}.md"
        if plot:
            text = await attach_heatmap_plot(text, heatmap_grid(data), target, logger=self.engine.logger)
        return await save_report(target, text, self.engine.logger, "heatmap")

    def clear(self, strategy_name: str | None = None) -> None:
        """Forget the trades of one strategy, or of every strategy (the store is never cleared by a run)."""
        self.store.clear(strategy_name)

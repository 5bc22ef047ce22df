"""Walker ranking, its store and its report
([risk-sizing §4](../../docs/design/risk-sizing-portfolio.md#4-walker),
report: [events §4.8](../../docs/design/events-and-api.md#48-walker-report)).

Ranking (`metric_value`, `is_better`): a strategy's metric is the named `Statistics` field when it is
a finite number, else None. A strategy becomes the best when its metric is not None and no best exists
yet or it is strictly better: greater, or for `max_drawdown` smaller (`metric_lower_is_better`). Ties
keep the earlier strategy; a None metric is never the best, so when no strategy has one every `best_*`
is None.

The store keeps, per (symbol, walker), the results of the latest run in arrival order. The reference
keys it by walker name alone, so two symbols of one walker overwrite each other's results although
`Walker.get_data` takes the symbol; here each symbol keeps its own
([hardening](../../docs/design/decisions.md#hardening-walker-results-per-symbol-done-after-the-run)).
It is cleared when a `Walker.run` of the pair starts. Pure module: no asyncio and no I/O.
"""

from __future__ import annotations

import math
from typing import Final, TypeAlias

from msgspec import Struct

from ..engine.errors import RunStateError
from ..engine.models import WalkerContract, WalkerResults
from ..engine.registry import metric_lower_is_better
from .report import format_percent, format_signed_percent, format_timestamp, markdown_table
from .stats import Statistics

__all__ = [
    "WalkerData",
    "WalkerEvent",
    "WalkerStore",
    "WalkerStrategyResult",
    "WalkerSummary",
    "is_better",
    "metric_value",
    "rank_results",
    "walker_report",
]

WalkerEvent: TypeAlias = WalkerContract[Statistics]
"""One strategy's result within a walker run (`listen_walker`, `Walker.run` items)."""

WalkerSummary: TypeAlias = WalkerResults[Statistics]
"""The end of a walker run (`listen_walker_complete`, the `on_complete` callback)."""

NA: Final = "N/A"
TOP_STRATEGIES: Final = 10


def metric_value(stats: Statistics, metric: str) -> float | None:
    """The `metric` field of `stats` when it is a finite number, else None (never NaN)."""
    value = getattr(stats, metric, None)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def is_better(metric: str, value: float | None, best: float | None) -> bool:
    """Whether `value` takes the lead from `best` (strictly better; None never leads)."""
    if value is None:
        return False
    if best is None:
        return True
    return value < best if metric_lower_is_better(metric) else value > best


class WalkerStrategyResult(Struct, frozen=True, kw_only=True):
    """One strategy's statistics and metric value within a walker run."""

    strategy_name: str
    stats: Statistics
    metric_value: float | None


class WalkerData(Struct, frozen=True, kw_only=True):
    """`Walker.get_data`: the final-results fields plus every strategy's result (walker order)."""

    walker_name: str
    symbol: str
    exchange_name: str
    frame_name: str
    metric: str
    total_strategies: int
    best_strategy: str | None
    best_metric: float | None
    best_stats: Statistics | None
    strategy_results: list[WalkerStrategyResult]


def rank_results(results: list[WalkerStrategyResult], metric: str) -> list[WalkerStrategyResult]:
    """Best first by `metric` (None last); a stable sort, so ties keep the walker's order."""
    lower = metric_lower_is_better(metric)

    def key(r: WalkerStrategyResult) -> tuple[bool, float]:
        v = r.metric_value
        if v is None:
            return True, 0.0
        return False, v if lower else -v

    return sorted(results, key=key)


class _Run:
    """The latest run of one (symbol, walker)."""

    __slots__ = ("events",)

    def __init__(self) -> None:
        self.events: list[WalkerEvent] = []


class WalkerStore:
    """Per (symbol, walker): the walker events of the latest run, oldest first."""

    def __init__(self) -> None:
        self._runs: dict[tuple[str, str], _Run] = {}

    def reset(self, symbol: str, walker_name: str) -> None:
        """A `Walker.run` of the pair starts: its results start afresh."""
        self._runs[(symbol, walker_name)] = _Run()

    def add(self, event: WalkerEvent) -> None:
        """Record one strategy's result (before any listener sees the event)."""
        key = (event.symbol, event.walker_name)
        run = self._runs.get(key)
        if run is None:
            run = self._runs[key] = _Run()
        run.events.append(event)

    def data(self, symbol: str, walker_name: str, metric: str) -> WalkerData:
        """The pair's data; raises `RunStateError` when no strategy result has arrived yet."""
        run = self._runs.get((symbol, walker_name))
        if run is None or not run.events:
            raise RunStateError(
                f"No walker data available - no results added yet (walker {walker_name!r} on {symbol!r})"
            )
        last = run.events[-1]
        results = [WalkerStrategyResult(strategy_name=e.strategy_name, stats=e.stats, metric_value=e.metric_value)
                   for e in run.events]
        best_stats = next((r.stats for r in results if r.strategy_name == last.best_strategy), None)
        return WalkerData(
            walker_name=walker_name, symbol=symbol, exchange_name=last.exchange_name, frame_name=last.frame_name,
            metric=metric, total_strategies=last.total_strategies, best_strategy=last.best_strategy,
            best_metric=last.best_metric, best_stats=best_stats, strategy_results=results,
        )


def _fixed(x: float | None, decimals: int) -> str:
    if x is None or not math.isfinite(x):
        return NA
    s = f"{x:.{decimals}f}"
    return s[1:] if s[0] == "-" and float(s) == 0 else s


def walker_report(data: WalkerData) -> str:
    """The walker comparison report ([events §4.8](../../docs/design/events-and-api.md#48-walker-report)).

    The comparison table is sorted best first by the metric: descending, or ascending for a
    lower-is-better metric (`max_drawdown`), None last; the closing note says which.
    """
    metric = data.metric
    best_total = data.best_stats.total_trades if data.best_stats is not None else 0
    lines = [
        f"# Walker Comparison Report: {data.walker_name}",
        "",
        f"**Symbol:** {data.symbol}",
        f"**Exchange:** {data.exchange_name}",
        f"**Frame:** {data.frame_name}",
        f"**Optimization Metric:** {metric}",
        f"**Strategies Tested:** {data.total_strategies}",
        "",
        f"## Best Strategy: {data.best_strategy if data.best_strategy is not None else 'null'}",
        "",
        f"**Best {metric}:** {_fixed(data.best_metric, 2)}",
        f"**Total Signals:** {best_total}",
        "",
        "## Top Strategies Comparison",
        "",
    ]
    header = ["Rank", "Strategy", metric, "Total Signals", "Win Rate", "Avg PNL", "Total PNL", "Sharpe Ratio",
              "Std Dev"]
    rows = []
    for rank, r in enumerate(rank_results(data.strategy_results, metric)[:TOP_STRATEGIES], start=1):
        s = r.stats
        rows.append([
            str(rank), r.strategy_name, _fixed(r.metric_value, 2), str(s.total_trades),
            format_percent(None if s.win_rate is None else s.win_rate * 100),
            format_signed_percent(s.avg_pnl), format_signed_percent(s.total_pnl), _fixed(s.sharpe_ratio, 3),
            format_percent(s.std_dev, 3),
        ])
    lines += markdown_table(header, rows)
    lines += ["", "## All Signals (PNL Table)", ""]
    signal_rows = [
        [r.strategy_name, t.signal.id, t.symbol, t.signal.position.upper(), format_signed_percent(t.pnl.pnl_percentage),
         t.close_reason, format_timestamp(t.signal.pending_at), format_timestamp(t.close_timestamp)]
        for r in data.strategy_results
        for t in r.stats.signals
    ]
    if signal_rows:
        lines += markdown_table(
            ["Strategy", "Signal ID", "Symbol", "Position", "PNL (net)", "Close Reason", "Open Time", "Close Time"],
            signal_rows,
        )
    else:
        lines.append("No closed signals available.")
    lines.append("")
    if metric_lower_is_better(metric):
        lines.append(f"**Note:** Strategies are ranked by {metric}, where lower is better; for the other columns "
                     "higher values are better except Standard Deviation.")
    else:
        lines.append("**Note:** Higher values are better for all metrics except Standard Deviation (lower is better).")
    return "\n".join(lines)

"""Which figure of `Statistics` a sweep ranks by, and in which direction.

Any numeric figure of `bk.Statistics` can rank parameter sets. Higher is better except for the
figures that measure harm: `max_drawdown`, `max_drawdown_duration_ms` and `losing_trades`, where
lower is better. A missing figure (None: no trade, no losing trade for `profit_factor`, ...) or a
failed job ranks after every value, in either direction, so a parameter set that never traded can
not win a drawdown ranking by having no drawdown.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Final

from ..engine.errors import SchemaError
from ..reports.stats import Statistics

__all__ = ["LOWER_IS_BETTER", "METRICS", "check_metric", "mean_score", "metric_value", "rank_key"]

METRICS: Final = (
    "sharpe_ratio",
    "annualized_sharpe_ratio",
    "sortino_ratio",
    "total_pnl",
    "avg_pnl",
    "win_rate",
    "profit_factor",
    "expectancy",
    "certainty_ratio",
    "expected_yearly_returns",
    "max_drawdown",
    "max_drawdown_duration_ms",
    "std_dev",
    "total_trades",
    "winning_trades",
    "losing_trades",
    "avg_trade_duration_minutes",
)
"""The figures of `Statistics` a sweep can rank by."""

LOWER_IS_BETTER: Final = frozenset({"max_drawdown", "max_drawdown_duration_ms", "losing_trades"})


def check_metric(metric: object) -> str:
    if not isinstance(metric, str) or metric not in METRICS:
        raise SchemaError(f"metric: unknown metric {metric!r}; expected one of {', '.join(METRICS)}")
    return metric


def metric_value(stats: Statistics | None, metric: str) -> float | None:
    """The figure `metric` of `stats` as a float; None when missing, not finite, or there are no stats."""
    if stats is None:
        return None
    value = getattr(stats, metric)
    if value is None:
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def rank_key(value: float | None, metric: str) -> tuple[int, float]:
    """Sort key: best first; None after every value."""
    if value is None:
        return (1, 0.0)
    return (0, value if metric in LOWER_IS_BETTER else -value)


def mean_score(values: Iterable[float | None]) -> float | None:
    """The mean of the values that exist (None when none does): one parameter set's score over symbols."""
    present = [v for v in values if v is not None]
    return math.fsum(present) / len(present) if present else None

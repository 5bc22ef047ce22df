"""Performance metrics
([risk-sizing §5.3](../../docs/design/risk-sizing-portfolio.md#53-performance-metrics),
[events §4.4](../../docs/design/events-and-api.md#44-performance-report)): timing of the engine's steps,
per metric type.

The runners build `PerformanceEvent`s (`backtest_timeframe`, `backtest_signal`, `backtest_total`,
`live_tick`) only while someone listens on the `performance` channel, so collection is opt-in:
`engine.performance.enable()` subscribes the store's listener (and `disable()` removes it). While
disabled the backtest hot path does not even read the clock for timings.

Memory is bounded however long a live process runs:

- `count`, `total_duration`, `avg_duration`, `min_duration`, `max_duration`, `std_dev` (population,
  Welford) and the wait-time figures are running aggregates over **every** event of the metric;
- `median`, `p95`, `p99` are nearest-rank percentiles (index ⌈n·p/100⌉ − 1 of the ascending
  durations, never below 0 — the median of two values is the smaller one) over the most recent
  `MAX_SAMPLES` (10 000) durations of the metric, kept in a ring; exact while fewer were recorded;
- `events` keeps the most recent `MAX_SAMPLES` events of the pair, newest first.

Wait time = `timestamp − previous_timestamp` of the events that have a previous timestamp (the
previous timing event of the same run, of any type,
[risk-sizing §5.3](../../docs/design/risk-sizing-portfolio.md#53-performance-metrics)); 0 when there is
none.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Final

from msgspec import Struct

from ..engine.channels import PERFORMANCE
from ..engine.models import PerformanceEvent

if TYPE_CHECKING:
    from ..engine.ports import Services

__all__ = [
    "MAX_SAMPLES",
    "MetricStats",
    "PerformanceFacade",
    "PerformanceStatistics",
    "PerformanceStats",
    "nearest_rank",
    "performance_report",
]

MAX_SAMPLES: Final = 10_000
"""Durations kept per metric type for the percentiles (and events kept per pair)."""

GLOBAL: Final = "global"
"""Key used for a missing symbol or strategy name (reference)."""


def nearest_rank(sorted_values: Sequence[float], p: int) -> float:
    """Nearest-rank percentile `p` (0–100) of ascending values: element ⌈n·p/100⌉ − 1, at least 0.

    Integer arithmetic for the rank, so 95 % of 20 values is exactly element 19 − 1. 0.0 when empty.
    """
    n = len(sorted_values)
    if n == 0:
        return 0.0
    rank = -(-n * p // 100)  # ceil(n * p / 100) for integer p
    return sorted_values[min(max(rank - 1, 0), n - 1)]


class MetricStats(Struct, frozen=True, kw_only=True):
    """Figures of one metric type; durations and wait times in milliseconds (see the module doc)."""

    metric_type: str
    count: int
    total_duration: float
    avg_duration: float
    min_duration: float
    max_duration: float
    std_dev: float
    median: float
    p95: float
    p99: float
    avg_wait_time: float
    min_wait_time: float
    max_wait_time: float
    sample_size: int
    """How many of the most recent durations the percentiles were computed over (≤ MAX_SAMPLES)."""


class PerformanceStatistics(Struct, frozen=True, kw_only=True):
    """Performance data of one pair: totals over every event and `metric_stats` keyed by type."""

    symbol: str
    strategy_name: str
    total_events: int
    total_duration: float
    metric_stats: dict[str, MetricStats]
    events: list[PerformanceEvent]


class _Metric:
    """Running aggregates of one metric type plus the ring of its recent durations."""

    __slots__ = ("count", "m2", "max", "mean", "min", "samples", "total", "wait_count", "wait_max",
                 "wait_min", "wait_sum")

    def __init__(self, max_samples: int) -> None:
        self.count = 0
        self.total = 0.0
        self.mean = 0.0
        self.m2 = 0.0
        self.min = math.inf
        self.max = -math.inf
        self.wait_count = 0
        self.wait_sum = 0.0
        self.wait_min = math.inf
        self.wait_max = -math.inf
        self.samples: deque[float] = deque(maxlen=max_samples)

    def add(self, duration: float, wait: float | None) -> None:
        n = self.count + 1
        self.count = n
        self.total += duration
        delta = duration - self.mean
        self.mean += delta / n
        self.m2 += delta * (duration - self.mean)
        if duration < self.min:
            self.min = duration
        if duration > self.max:
            self.max = duration
        self.samples.append(duration)
        if wait is not None:
            self.wait_count += 1
            self.wait_sum += wait
            if wait < self.wait_min:
                self.wait_min = wait
            if wait > self.wait_max:
                self.wait_max = wait

    def stats(self, metric_type: str) -> MetricStats:
        ordered = sorted(self.samples)
        n = self.count
        std = 0.0 if n == 0 or self.min == self.max else math.sqrt(max(self.m2, 0.0) / n)
        waits = self.wait_count
        return MetricStats(
            metric_type=metric_type,
            count=n,
            total_duration=self.total,
            avg_duration=self.total / n if n else 0.0,
            min_duration=self.min if n else 0.0,
            max_duration=self.max if n else 0.0,
            std_dev=std,
            median=nearest_rank(ordered, 50),
            p95=nearest_rank(ordered, 95),
            p99=nearest_rank(ordered, 99),
            avg_wait_time=self.wait_sum / waits if waits else 0.0,
            min_wait_time=self.wait_min if waits else 0.0,
            max_wait_time=self.wait_max if waits else 0.0,
            sample_size=len(ordered),
        )


class PerformanceStats:
    """The store of one (symbol, strategy) pair."""

    __slots__ = ("_events", "_metrics", "max_samples", "total_duration", "total_events")

    def __init__(self, max_samples: int = MAX_SAMPLES) -> None:
        if max_samples < 1:
            raise ValueError(f"max_samples must be >= 1, got {max_samples!r}")
        self.max_samples = max_samples
        self._metrics: dict[str, _Metric] = {}
        self._events: deque[PerformanceEvent] = deque(maxlen=max_samples)
        self.total_events = 0
        self.total_duration = 0.0

    def add(self, event: PerformanceEvent) -> None:
        metric = self._metrics.get(event.metric_type)
        if metric is None:
            metric = self._metrics[event.metric_type] = _Metric(self.max_samples)
        previous = event.previous_timestamp
        metric.add(event.duration, None if previous is None else event.timestamp - previous)
        self._events.appendleft(event)
        self.total_events += 1
        self.total_duration += event.duration

    def clear(self) -> None:
        self._metrics.clear()
        self._events.clear()
        self.total_events = 0
        self.total_duration = 0.0

    def data(self, symbol: str, strategy_name: str) -> PerformanceStatistics:
        return PerformanceStatistics(
            symbol=symbol,
            strategy_name=strategy_name,
            total_events=self.total_events,
            total_duration=self.total_duration,
            metric_stats={k: m.stats(k) for k, m in self._metrics.items()},
            events=list(self._events),
        )


# ---------------------------------------------------------------------------------------------------------
# Report ([events §4.4](../../docs/design/events-and-api.md#44-performance-report))
# ---------------------------------------------------------------------------------------------------------


def _ms(x: float) -> str:
    s = f"{x:.2f}"
    return s[1:] if s.startswith("-") and float(s) == 0 else s


def performance_report(strategy_name: str, stats: PerformanceStatistics) -> str:
    """Performance report: totals, the time distribution and the detailed table (types by total desc)."""
    title = f"# Performance Report: {strategy_name}"
    if stats.total_events == 0:
        return f"{title}\n\nNo performance metrics recorded yet."
    metrics = sorted(stats.metric_stats.values(), key=lambda m: (-m.total_duration, m.metric_type))
    total = stats.total_duration
    lines = [
        title,
        "",
        f"**Total events:** {stats.total_events}",
        f"**Total execution time:** {_ms(total)}ms",
        f"**Number of metric types:** {len(metrics)}",
        "",
        "## Time Distribution",
        "",
    ]
    for m in metrics:
        share = m.total_duration / total * 100 if total > 0 else 0.0
        lines.append(f"- **{m.metric_type}**: {share:.1f}% ({_ms(m.total_duration)}ms total)")
    header = ["Metric Type", "Count", "Total (ms)", "Avg (ms)", "Min (ms)", "Max (ms)", "Std Dev (ms)",
              "Median (ms)", "P95 (ms)", "P99 (ms)", "Avg Wait (ms)", "Min Wait (ms)", "Max Wait (ms)"]
    lines += ["", "## Detailed Metrics", "", "| " + " | ".join(header) + " |",
              "| " + " | ".join(["---"] * len(header)) + " |"]
    for m in metrics:
        cells = [m.metric_type.replace("|", "\\|"), str(m.count)] + [
            _ms(x) for x in (m.total_duration, m.avg_duration, m.min_duration, m.max_duration, m.std_dev,
                             m.median, m.p95, m.p99, m.avg_wait_time, m.min_wait_time, m.max_wait_time)
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "**Note:** all durations are wall-clock milliseconds. Median, P95 and P99 are nearest-rank "
        f"percentiles over the most recent {MAX_SAMPLES} durations of each type; the other figures cover "
        "every event. Wait times are the intervals since the run's previous timing event (of any type).",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------
# Facade: `engine.performance` / `bk.Performance`
# ---------------------------------------------------------------------------------------------------------


class PerformanceFacade:
    """`bk.Performance`: opt-in timing statistics per (symbol, strategy).

    `enable()` subscribes the collecting listener on the `performance` channel (idempotent) and
    returns `disable`; nothing is timed while no one listens on that channel.
    """

    def __init__(self, engine: Services) -> None:
        self.engine = engine
        self._stores: dict[tuple[str, str], PerformanceStats] = {}
        self._unsubscribe: Callable[[], None] | None = None

    @property
    def enabled(self) -> bool:
        return self._unsubscribe is not None

    def enable(self) -> Callable[[], None]:
        """Start collecting timing events; returns `disable`. Calling it again changes nothing."""
        if self._unsubscribe is None:
            self._unsubscribe = self.engine.bus.subscribe(PERFORMANCE, self._on_event)
        return self.disable

    def disable(self) -> None:
        """Stop collecting (the data gathered so far stays available)."""
        unsubscribe, self._unsubscribe = self._unsubscribe, None
        if unsubscribe is not None:
            unsubscribe()

    def _on_event(self, event: PerformanceEvent) -> None:
        self.store(event.symbol or GLOBAL, event.strategy_name or GLOBAL).add(event)

    def store(self, symbol: str, strategy_name: str) -> PerformanceStats:
        key = (symbol, strategy_name)
        store = self._stores.get(key)
        if store is None:
            store = self._stores[key] = PerformanceStats()
        return store

    def clear(self, symbol: str | None = None, strategy_name: str | None = None) -> None:
        """Forget the data of one pair, or of every pair when called without arguments."""
        if symbol is None and strategy_name is None:
            self._stores.clear()
            return
        self._stores.pop((symbol or GLOBAL, strategy_name or GLOBAL), None)

    async def get_data(self, symbol: str, strategy_name: str) -> PerformanceStatistics:
        """Timing statistics of the pair (empty unless `enable()` was called before the run)."""
        store = self._stores.get((symbol, strategy_name))
        if store is None:
            return PerformanceStats(1).data(symbol, strategy_name)
        return store.data(symbol, strategy_name)

    async def get_report(self, symbol: str, strategy_name: str) -> str:
        return performance_report(strategy_name, await self.get_data(symbol, strategy_name))

    async def dump(self, symbol: str, strategy_name: str, path: str | Path | None = None) -> Path | None:
        """Write `<path or dump_dir/performance>/<symbol>_<strategy>.md`; returns it (None on failure)."""
        from .report import save_pair_report

        text = await self.get_report(symbol, strategy_name)
        return await save_pair_report(self.engine, "performance", symbol, strategy_name, path, text)

"""Schedule statistics
([risk-sizing §5.2](../../docs/design/risk-sizing-portfolio.md#52-schedule-statistics),
[events §4.3](../../docs/design/events-and-api.md#43-schedule-report)): how limit (scheduled) signals
behave.

One `ScheduleStats` store per (symbol, strategy), fed with the tick results of both modes by the
runners and cleared when a backtest or live run of the pair starts. Three kinds of events:

- `scheduled` — a `scheduled` result; timestamp = the signal's `scheduled_at`;
- `opened` — a scheduled signal was activated (filled); timestamp = `pending_at`, duration =
  `pending_at − scheduled_at` (the activation time);
- `cancelled` — a `cancelled` result; timestamp = its close time, duration = close − `scheduled_at`
  (the wait time).

Activation (PORT, differs from the reference, whose backtests never record one): an `opened` result
counts when its signal was scheduled first (`scheduled_at != pending_at`, or its id was seen
`scheduled`). In a backtest the activation happens inside the fast-forward and is not published as
`opened`; there the `closed` result of a signal whose id was seen `scheduled` records the activation
(timestamp `pending_at`, current price = the entry price). So backtests and live runs report the
same activation rate for the same fills. A signal that activates but has not closed when a backtest
ends is not counted as activated.

Counts and averages are exact over every event of the run (running sums); the event table keeps the
newest `max_events` rows (250, the reference cap). Pure module apart from the facade at the end.
"""

from __future__ import annotations

import math
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Final, Literal

from msgspec import Struct

from ..engine.models import (
    CancelledResult,
    ClosedResult,
    OpenedResult,
    Position,
    ScheduledResult,
    SignalRow,
    TickResult,
)
from .report import save_pair_report
from .stats import round_minutes

if TYPE_CHECKING:
    from ..engine.ports import Services

__all__ = [
    "MAX_SCHEDULE_EVENTS",
    "ScheduleEvent",
    "ScheduleFacade",
    "ScheduleStatistics",
    "ScheduleStats",
    "schedule_report",
]

MAX_SCHEDULE_EVENTS: Final = 250
"""Rows kept for the report table per pair (reference cap); the counts cover every event."""

_MS_PER_MINUTE: Final = 60_000

ScheduleAction = Literal["scheduled", "opened", "cancelled"]


class ScheduleEvent(Struct, frozen=True, kw_only=True, gc=False):
    """One row of the schedule table. `duration` is whole minutes (None for `scheduled` rows)."""

    timestamp: int
    action: ScheduleAction
    symbol: str
    signal_id: str
    position: Position
    note: str
    current_price: float
    price_open: float
    take_profit: float
    stop_loss: float
    duration: int | None = None


class ScheduleStatistics(Struct, frozen=True, kw_only=True):
    """Schedule figures of one pair.

    - `total_scheduled` / `total_opened` / `total_cancelled`: events of each kind in the run;
      `total_events` is their sum (exact, even when the table was trimmed)
    - `activation_rate` = total_opened / total_scheduled, `cancellation_rate` = total_cancelled /
      total_scheduled — **fractions 0..1** (like `Statistics.win_rate`; reports print percent);
      `None` when nothing was scheduled
    - `avg_activation_time` = mean (pending_at − scheduled_at) of the activations, in minutes;
      `avg_wait_time` = mean (cancel time − scheduled_at) of the cancellations, in minutes; `None`
      when there is none (exact milliseconds / 60 000, not the rounded table minutes)
    - `events`: the newest rows first, at most `MAX_SCHEDULE_EVENTS`
    """

    total_events: int
    total_scheduled: int
    total_opened: int
    total_cancelled: int
    activation_rate: float | None
    cancellation_rate: float | None
    avg_activation_time: float | None
    avg_wait_time: float | None
    events: list[ScheduleEvent]

    @property
    def event_list(self) -> list[ScheduleEvent]:
        """Reference name of `events`."""
        return self.events

    @property
    def activation_rate_percent(self) -> float | None:
        """Reference `activationRate` (0–100)."""
        return None if self.activation_rate is None else self.activation_rate * 100.0

    @property
    def cancellation_rate_percent(self) -> float | None:
        """Reference `cancellationRate` (0–100)."""
        return None if self.cancellation_rate is None else self.cancellation_rate * 100.0


def _event(
    action: ScheduleAction, timestamp: int, symbol: str, price: float, s: SignalRow, duration: int | None
) -> ScheduleEvent:
    return ScheduleEvent(
        timestamp=timestamp,
        action=action,
        symbol=symbol,
        signal_id=s.id,
        position=s.position,
        note=s.note,
        current_price=price,
        price_open=s.price_open,
        take_profit=s.price_take_profit,
        stop_loss=s.price_stop_loss,
        duration=duration,
    )


class ScheduleStats:
    """The store of one (symbol, strategy) pair; `add` every tick result, `data()` for a snapshot."""

    __slots__ = (
        "_rows",
        "_waiting",
        "activation_ms",
        "cancelled",
        "max_events",
        "opened",
        "scheduled",
        "wait_ms",
    )

    def __init__(self, max_events: int = MAX_SCHEDULE_EVENTS) -> None:
        if max_events < 1:
            raise ValueError(f"max_events must be >= 1, got {max_events!r}")
        self.max_events = max_events
        self._rows: deque[ScheduleEvent] = deque(maxlen=max_events)
        self._waiting: dict[str, None] = {}  # ids of scheduled signals not yet activated or cancelled
        self.scheduled = 0
        self.opened = 0
        self.cancelled = 0
        self.activation_ms = 0
        self.wait_ms = 0

    def clear(self) -> None:
        """Forget everything (a new run of the pair starts)."""
        self._rows.clear()
        self._waiting.clear()
        self.scheduled = self.opened = self.cancelled = 0
        self.activation_ms = self.wait_ms = 0

    def __len__(self) -> int:
        return len(self._rows)

    def add(self, result: TickResult) -> None:
        """Record one tick result; idle, active and ordinary (market) opens and closes are ignored."""
        if isinstance(result, ScheduledResult):
            s = result.signal
            self._waiting[s.id] = None
            if len(self._waiting) > 4 * self.max_events:  # never-resolved ids (e.g. runs cut short)
                del self._waiting[next(iter(self._waiting))]
            self.scheduled += 1
            self._rows.appendleft(_event("scheduled", s.scheduled_at, result.symbol, result.current_price, s, None))
        elif isinstance(result, OpenedResult):
            s = result.signal
            seen = s.id in self._waiting
            if seen:
                del self._waiting[s.id]
            if seen or s.scheduled_at != s.pending_at:
                self._activated(s, result.symbol, result.current_price)
        elif isinstance(result, ClosedResult):
            s = result.signal
            if s.id in self._waiting:  # activated inside a backtest fast-forward
                del self._waiting[s.id]
                self._activated(s, result.symbol, s.price_open)
        elif isinstance(result, CancelledResult):
            s = result.signal
            self._waiting.pop(s.id, None)
            wait = result.close_timestamp - s.scheduled_at
            self.cancelled += 1
            self.wait_ms += wait
            self._rows.appendleft(
                _event("cancelled", result.close_timestamp, result.symbol, result.current_price, s,
                       round_minutes(wait))
            )

    def _activated(self, s: SignalRow, symbol: str, price: float) -> None:
        span = s.pending_at - s.scheduled_at
        self.opened += 1
        self.activation_ms += span
        self._rows.appendleft(_event("opened", s.pending_at, symbol, price, s, round_minutes(span)))

    def data(self) -> ScheduleStatistics:
        """A snapshot (the event list is a copy, newest first)."""
        scheduled, opened, cancelled = self.scheduled, self.opened, self.cancelled
        return ScheduleStatistics(
            total_events=scheduled + opened + cancelled,
            total_scheduled=scheduled,
            total_opened=opened,
            total_cancelled=cancelled,
            activation_rate=opened / scheduled if scheduled else None,
            cancellation_rate=cancelled / scheduled if scheduled else None,
            avg_activation_time=self.activation_ms / opened / _MS_PER_MINUTE if opened else None,
            avg_wait_time=self.wait_ms / cancelled / _MS_PER_MINUTE if cancelled else None,
            events=list(self._rows),
        )


# ---------------------------------------------------------------------------------------------------------
# Report ([events §4.3](../../docs/design/events-and-api.md#43-schedule-report))
# ---------------------------------------------------------------------------------------------------------


def _cell(value: str | None) -> str:
    if not value:
        return "N/A"
    flat = " ".join(value.split())
    return flat.replace("|", "\\|") if flat else "N/A"


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(_cell(c) for c in cells) + " |"


def _minutes(x: float | None) -> str:
    if x is None or not math.isfinite(x):
        return "N/A"
    return f"{x:.2f} minutes"


def _rate(x: float | None, suffix: str) -> str:
    if x is None or not math.isfinite(x):
        return "N/A"
    return f"{x * 100:.2f}%{suffix}"


def schedule_report(strategy_name: str, stats: ScheduleStatistics, *, show_note: bool = False) -> str:
    """Scheduled-signals report ([events §4.3](../../docs/design/events-and-api.md#43-schedule-report)):
    the event table newest first, then the summary lines."""
    from .report import format_price, format_timestamp

    title = f"# Scheduled Signals Report: {strategy_name}"
    if stats.total_events == 0:
        return f"{title}\n\nNo scheduled signals recorded yet."
    header = ["Timestamp", "Action", "Symbol", "Signal ID", "Position"]
    if show_note:
        header.append("Note")
    header += ["Current Price", "Entry Price", "Take Profit", "Stop Loss", "Wait Time (min)"]
    lines = [title, "", _row(header), _row(["---"] * len(header))]
    for e in stats.events:
        cells = [format_timestamp(e.timestamp), e.action.upper(), e.symbol, e.signal_id, e.position.upper()]
        if show_note:
            cells.append(e.note)
        cells += [
            format_price(e.current_price),
            format_price(e.price_open),
            format_price(e.take_profit),
            format_price(e.stop_loss),
            "N/A" if e.duration is None else str(e.duration),
        ]
        lines.append(_row(cells))
    lines += [
        "",
        f"**Total events:** {stats.total_events}",
        f"**Scheduled signals:** {stats.total_scheduled}",
        f"**Opened signals:** {stats.total_opened}",
        f"**Cancelled signals:** {stats.total_cancelled}",
        f"**Activation rate:** {_rate(stats.activation_rate, ' (higher is better)')}",
        f"**Cancellation rate:** {_rate(stats.cancellation_rate, ' (lower is better)')}",
        f"**Average activation time:** {_minutes(stats.avg_activation_time)}",
        f"**Average wait time (cancelled):** {_minutes(stats.avg_wait_time)}",
    ]
    if len(stats.events) < stats.total_events:
        lines.append(f"*The table shows the newest {len(stats.events)} of {stats.total_events} events.*")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------
# Facade: `engine.schedule` / `bk.Schedule`
# ---------------------------------------------------------------------------------------------------------


class ScheduleFacade:
    """`bk.Schedule`: schedule statistics of every pair run by the engine (both modes feed it)."""

    def __init__(self, engine: Services) -> None:
        self.engine = engine
        self._stores: dict[tuple[str, str], ScheduleStats] = {}

    def store(self, symbol: str, strategy_name: str) -> ScheduleStats:
        """The pair's store (created empty on first use); runners feed it."""
        key = (symbol, strategy_name)
        store = self._stores.get(key)
        if store is None:
            store = self._stores[key] = ScheduleStats()
        return store

    def reset(self, symbol: str, strategy_name: str) -> ScheduleStats:
        """Clear the pair's store (a backtest or live run of the pair starts) and return it."""
        store = self.store(symbol, strategy_name)
        store.clear()
        return store

    async def get_data(self, symbol: str, strategy_name: str) -> ScheduleStatistics:
        self.engine.registry.strategies.get(strategy_name, "Schedule.get_data")
        return self.store(symbol, strategy_name).data()

    async def get_report(self, symbol: str, strategy_name: str) -> str:
        stats = await self.get_data(symbol, strategy_name)
        return schedule_report(strategy_name, stats, show_note=self.engine.config.CC_REPORT_SHOW_SIGNAL_NOTE)

    async def dump(self, symbol: str, strategy_name: str, path: str | Path | None = None) -> Path | None:
        """Write `<path or dump_dir/schedule>/<symbol>_<strategy>.md`; returns it (None if the write failed)."""
        text = await self.get_report(symbol, strategy_name)
        return await save_pair_report(self.engine, "schedule", symbol, strategy_name, path, text)

"""The per-pair statistics stores of the two modes, fed by the runners with every tick result.

- `BacktestStats` keeps every closed trade (backtests are finite and walker comparisons must be
  exact, [events §3.4](../../docs/design/events-and-api.md#34-bounded-stores)) plus an aggregate, so
  `data()` needs no pass over the trades.
- `LiveStats` keeps a bounded deque of the most recent `LiveEvent` rows for the report table plus an
  aggregate over *every* closed trade, so the figures stay exact with bounded memory
  ([decision 12](../../docs/design/decisions.md#decision-12-bounded-live-table-exact-statistics)).

The aggregate and the `Statistics` snapshot are in `stats.py`. Pure module: no asyncio and no I/O.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable

import msgspec

from ..engine.lifecycle import pnl_of
from ..engine.models import (
    ActiveResult,
    CancelledResult,
    ClosedResult,
    IdleResult,
    OpenedResult,
    OrderEvent,
    SignalRow,
    TickResult,
)
from .fill_stats import FillBook
from .stats import (
    MAX_EVENTS,
    LiveEvent,
    Statistics,
    TradeAggregate,
    finite_or_none,
    round_minutes,
    statistics_from_aggregate,
)

__all__ = ["BacktestStats", "LiveStats", "closed_event", "with_open_position"]


def closed_event(result: ClosedResult) -> LiveEvent:
    """The table row of a closed trade (timestamp = close_timestamp)."""
    s = result.signal
    return _signal_event(
        result.close_timestamp,
        "closed",
        result.symbol,
        result.current_price,
        s,
        round_minutes(result.close_timestamp - s.pending_at),
        pnl=result.pnl.pnl_percentage,
        close_reason=result.close_reason,
    )


def _signal_event(
    timestamp: int,
    action: str,
    symbol: str,
    current_price: float,
    s: SignalRow,
    duration: int | None = None,
    *,
    pnl: float | None = None,
    close_reason: str | None = None,
) -> LiveEvent:
    """The table row of a signal's event: the signal's own fields plus what the event knows."""
    return LiveEvent(
        timestamp=timestamp,
        action=action,
        symbol=symbol,
        current_price=current_price,
        signal_id=s.id,
        position=s.position,
        note=s.note,
        open_price=s.price_open,
        take_profit=s.price_take_profit,
        stop_loss=s.price_stop_loss,
        pnl=pnl,
        close_reason=close_reason,
        duration=duration,
        quantity=s.quantity,
    )


class BacktestStats:
    """Backtest store of one pair: every closed trade (unbounded,
    [events §3.4](../../docs/design/events-and-api.md#34-bounded-stores)) plus an aggregate.

    Trades are appended oldest first (O(1)); `data()` reverses them into the newest-first order the
    reports and the reference use.
    """

    __slots__ = ("_trades", "aggregate", "fills", "max_events", "on_closed", "open_price", "open_signal")

    def __init__(self, max_events: int = MAX_EVENTS, on_closed: Callable[[ClosedResult], None] | None = None) -> None:
        self.max_events = max_events
        self.on_closed = on_closed  # the portfolio heatmap's store: every closed trade of both modes
        self._trades: list[ClosedResult] = []
        self.aggregate = TradeAggregate()
        self.open_signal: SignalRow | None = None  # set once, by the runner, when the data ends
        self.open_price = 0.0
        self.fills: FillBook | None = None  # created by the first order event (an executor is attached)

    def add_order(self, event: OrderEvent) -> None:
        """Record an order event of the pair (realised PnL from fills)."""
        if self.fills is None:
            self.fills = FillBook()
        self.fills.add_order(event)

    def set_open(self, signal: SignalRow | None, price: float) -> None:
        """The position the frame ended with (None: flat) and the last price the run saw."""
        self.open_signal = signal
        self.open_price = price

    def add(self, result: TickResult) -> None:
        """Record a closed result; every other action is ignored (cancelled is not a trade)."""
        if isinstance(result, ClosedResult):
            self._trades.append(result)
            self.aggregate.add(result)
            if self.fills is not None:
                self.fills.add_closed(result)
            if self.on_closed is not None:
                self.on_closed(result)

    def replay(self, trades: Iterable[ClosedResult], open_signal: SignalRow | None, price: float) -> None:
        """Record a backtest of the pair that ran elsewhere (a Walker job in a worker process): its
        closed trades oldest first, then the position it ended with (`set_open`).

        The trades go through `add`, so the aggregate is rebuilt with the very operations the run's own
        store performed (`data()` equals that run's statistics exactly, not approximately) and each
        trade reaches `on_closed` (the heatmap) once, as it would from a run in this process.
        """
        for closed in trades:
            self.add(closed)
        self.set_open(open_signal, price)

    def clear(self) -> None:
        """Forget everything (a new backtest of the pair starts)."""
        self._trades = []
        self.aggregate = TradeAggregate()
        self.open_signal = None
        self.fills = None

    def __len__(self) -> int:
        return len(self._trades)

    def data(self) -> Statistics:
        """Snapshot: `signals` = every trade newest first, `events` = the last `max_events` as rows."""
        trades = self._trades
        signals = trades[::-1]
        events = [closed_event(t) for t in signals[: self.max_events]]
        stats = statistics_from_aggregate(self.aggregate, events=events, signals=signals)
        return stats if self.fills is None else self.fills.apply(stats)


class LiveStats:
    """Live store of one pair: the last `max_events` rows plus an aggregate over every closed trade.

    Internally the deque holds `(row, closed result or None)` newest first (`appendleft`; the deque's
    `maxlen` drops the oldest from the right). Rows are inserted with increasing sequence numbers and
    in-place updates never move a row, so the deque always holds exactly the last `len(deque)` inserted
    rows: the row with sequence `seq` is present iff `seq >= inserted − len`, at index
    `inserted − 1 − seq`. That lets an `active` tick find its signal's row in O(1) without a scan.
    """

    __slots__ = ("_active", "_inserted", "_rows", "aggregate", "fills", "max_events", "on_closed", "open_price",
                 "open_signal")

    def __init__(self, max_events: int = MAX_EVENTS, on_closed: Callable[[ClosedResult], None] | None = None) -> None:
        if max_events < 1:
            raise ValueError(f"max_events must be >= 1, got {max_events!r}")
        self.max_events = max_events
        self.on_closed = on_closed  # the portfolio heatmap's store: every closed trade of both modes
        self._rows: deque[tuple[LiveEvent, ClosedResult | None]] = deque(maxlen=max_events)
        self._inserted = 0
        self._active: dict[str, int] = {}  # signal id -> sequence number of its `active` row
        self.aggregate = TradeAggregate()
        self.open_signal: SignalRow | None = None  # the open position and the last price it was seen at
        self.open_price = 0.0
        self.fills: FillBook | None = None  # created by the first order event (an executor is attached)

    def add_order(self, event: OrderEvent) -> None:
        """Record an order event of the pair (realised PnL from fills; the recent `max_events` rows)."""
        if self.fills is None:
            self.fills = FillBook(self.max_events)
        self.fills.add_order(event)

    def clear(self) -> None:
        """Forget everything (a new live run of the pair starts)."""
        self._rows.clear()
        self._inserted = 0
        self._active.clear()
        self.aggregate = TradeAggregate()
        self.open_signal = None
        self.fills = None

    def __len__(self) -> int:
        return len(self._rows)

    def _push(self, row: LiveEvent, closed: ClosedResult | None = None) -> int:
        self._rows.appendleft((row, closed))
        seq = self._inserted
        self._inserted = seq + 1
        return seq

    def add(self, result: TickResult, now_ms: int) -> None:
        """Record one tick result. `now_ms` stamps idle and active rows (wall-clock / clock now).

        Ordered by frequency: idle and active ticks are nearly every call on the live path.
        """
        rows = self._rows
        if isinstance(result, IdleResult):
            row = LiveEvent(
                timestamp=now_ms, action="idle", symbol=result.symbol, current_price=result.current_price
            )
            if rows and rows[0][0].action == "idle":
                rows[0] = (row, None)  # consecutive idle ticks collapse into the newest row
            else:
                self._push(row)
            self.open_signal = None
            return
        signal = result.signal
        if isinstance(result, ActiveResult):
            if not signal.is_scheduled:
                self.open_signal = signal
                self.open_price = result.current_price
            row = LiveEvent(
                timestamp=now_ms,
                action="active",
                symbol=result.symbol,
                current_price=result.current_price,
                signal_id=signal.id,
                position=signal.position,
                note=signal.note,
                open_price=signal.price_open,
                take_profit=signal.price_take_profit,
                stop_loss=signal.price_stop_loss,
                percent_tp=result.percent_tp,
                percent_sl=result.percent_sl,
            )
            seq = self._active.get(signal.id)
            if seq is not None and seq >= self._inserted - len(rows):
                rows[self._inserted - 1 - seq] = (row, None)
                return
            self._active[signal.id] = self._push(row)
            if len(self._active) > 2 * self.max_events:
                self._prune_active()
            return
        if isinstance(result, ClosedResult):
            self.aggregate.add(result)
            if self.fills is not None:
                self.fills.add_closed(result)
            self._push(closed_event(result), result)
            if self.on_closed is not None:
                self.on_closed(result)
            self._active.pop(signal.id, None)
            self.open_signal = None
        elif isinstance(result, OpenedResult):
            self.open_signal = signal
            self.open_price = result.current_price
            self._push(
                _signal_event(signal.pending_at, "opened", result.symbol, result.current_price, signal)
            )
        elif isinstance(result, CancelledResult):
            close_ts = result.close_timestamp
            wait = round_minutes(close_ts - signal.scheduled_at)
            self._push(
                _signal_event(close_ts, "cancelled", result.symbol, result.current_price, signal, wait)
            )
            self._active.pop(signal.id, None)
        else:  # scheduled
            self._push(
                _signal_event(signal.scheduled_at, "scheduled", result.symbol, result.current_price, signal)
            )

    def _prune_active(self) -> None:
        """Drop index entries whose rows left the deque (signals that never closed, e.g. on restart)."""
        oldest = self._inserted - len(self._rows)
        self._active = {k: v for k, v in self._active.items() if v >= oldest}

    def data(self) -> Statistics:
        """Snapshot: `events` newest first; `signals` = the closed results among them; exact figures."""
        events = [row for row, _ in self._rows]
        signals = [closed for _, closed in self._rows if closed is not None]
        stats = statistics_from_aggregate(self.aggregate, events=events, signals=signals)
        return stats if self.fills is None else self.fills.apply(stats)


def with_open_position(
    stats: Statistics, signal: SignalRow | None, price: float, *, slippage_percent: float, fee_percent: float
) -> Statistics:
    """`stats` with `open_positions` / `unrealized_pnl` filled in for `signal` (None: flat) at `price`.

    Computed when the statistics are read, not on every tick: the stores only remember the row and
    the last price. The PnL is `pnl_of`, the very formula a close would use.
    """
    if signal is None:
        return stats
    pnl = pnl_of(signal, price, slippage_percent, fee_percent).pnl_percentage
    return msgspec.structs.replace(stats, open_positions=1, unrealized_pnl=finite_or_none(pnl))

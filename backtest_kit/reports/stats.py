"""Run statistics: running aggregates over closed trades and the backtest / live stores.

Why running aggregates: a live process runs for months, so its statistics cannot be recomputed
from a list of every trade
([decision 12](../../docs/design/decisions.md#decision-12-bounded-live-table-exact-statistics)).
`TradeAggregate` folds each closed trade into O(1) state (counts, sums, Welford variance, equity peak
and drawdown); `statistics_from_aggregate` turns that state into a `Statistics` snapshot.
`statistics_from_trades` is the plain batch recomputation over a list of trades, written independently
so tests can check that the two agree.

The per-pair stores that feed them live in `mode_stats.py`:

- `BacktestStats` keeps every closed trade (backtests are finite and walker comparisons must be
  exact, [events §3.4](../../docs/design/events-and-api.md#34-bounded-stores)) plus an aggregate, so
  `data()` needs no pass over the trades.
- `LiveStats` keeps a bounded deque of the most recent `LiveEvent` rows for the report table plus an
  aggregate over *every* closed trade, so the figures stay exact with bounded memory.

Pure module: no asyncio and no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Final

import msgspec
from msgspec import Struct

from ..engine.models import (
    ClosedResult,
    Position,
)

__all__ = [
    "MAX_EVENTS",
    "LiveEvent",
    "Statistics",
    "TradeAggregate",
    "TradeFill",
    "finite_or_none",
    "round_minutes",
    "statistics_from_aggregate",
    "statistics_from_trades",
]

MAX_EVENTS: Final = 25
"""Default cap of the live recent-events deque (seed `MAX_EVENTS`; engine setting `MAX_EVENTS`)."""

_MS_PER_DAY: Final = 86_400_000
_MS_PER_MINUTE: Final = 60_000
_SQRT_365: Final = math.sqrt(365)


def round_minutes(ms: int) -> int:
    """`Math.round(ms / 60000)` of the reference: halves round up (Python's `round` would go to even).

    Integer arithmetic, so it is exact for any millisecond count.
    """
    return (int(ms) + _MS_PER_MINUTE // 2) // _MS_PER_MINUTE


def finite_or_none(x: float) -> float | None:
    """NaN and ±inf never escape into a `Statistics` object: they become `None`
    ([events §3.1](../../docs/design/events-and-api.md#31-backtest-statistics))."""
    return x if math.isfinite(x) else None


# ---------------------------------------------------------------------------------------------------------
# Rows and the statistics snapshot
# ---------------------------------------------------------------------------------------------------------


class LiveEvent(Struct, frozen=True, kw_only=True, gc=False):
    """One row of the live recent-events table ([events §3.2](../../docs/design/events-and-api.md#32-live-statistics)).

    Frozen so a `Statistics.events` list handed to a user is a stable snapshot: the store replaces a
    row instead of mutating it. Fields the event does not know are `None`.

    `timestamp` is ms since the epoch; `action` is the tick result's action; `pnl` is the net PnL %
    of a closed trade; `duration` is whole minutes, rounded half up (closed: close − pending_at;
    cancelled: close − scheduled_at, i.e. the wait time).
    """

    timestamp: int
    action: str
    symbol: str
    current_price: float
    signal_id: str | None = None
    position: Position | None = None
    note: str | None = None
    open_price: float | None = None
    take_profit: float | None = None
    stop_loss: float | None = None
    percent_tp: float | None = None
    percent_sl: float | None = None
    pnl: float | None = None
    close_reason: str | None = None
    duration: int | None = None
    quantity: float | None = None


class TradeFill(Struct, frozen=True, kw_only=True, gc=False):
    """A closed trade as its orders filled (an order executor is attached): the realised side of it.

    `amount` is the filled entry amount (the exit filled the same); the prices are the average fill
    prices; `fees` the sum of both orders' fees (quote currency). `realized_pnl` = (exit − entry) ×
    amount (reversed for a short) minus `fees`, over the entry notional, in percent; `model_pnl` is the
    trade's net PnL % as the model computed it; `slippage` = realized_pnl − model_pnl (percent points;
    negative: the fills did worse than the model).
    """

    signal_id: str
    position: Position
    amount: float
    entry_price: float
    exit_price: float
    fees: float
    realized_pnl: float
    model_pnl: float
    slippage: float


class Statistics(Struct, frozen=True, kw_only=True):
    """Run statistics of one (symbol, strategy) pair. n = `total_trades`, p_i = net PnL % of trade i.

    Trades are taken oldest first (the order they closed). Percent values are on a 0–100 scale except
    `win_rate`, a fraction. With n = 0 the counts are 0, `close_reasons` is empty and every derived
    figure below is `None` ([events §3.4](../../docs/design/events-and-api.md#34-bounded-stores)). With
    n > 0 a figure that comes out NaN or ±inf is `None`, never NaN.

    - `total_trades` = n (closed trades; cancelled signals are not trades)
    - `winning_trades` = #{p > 0}; `losing_trades` = #{p < 0} (a zero PnL is neither)
    - `win_rate` = winning_trades / n                                  (fraction 0..1)
    - `avg_pnl` = Σp / n
    - `total_pnl` = Σp
    - `std_dev` = √(Σ(p − avg_pnl)² / n)  (population); exactly 0 when every p is equal
    - `sharpe_ratio` = avg_pnl / std_dev, **0** when std_dev = 0 (reference rule, walker parity)
    - `annualized_sharpe_ratio` = sharpe_ratio × √365
    - `sortino_ratio` = avg_pnl / dd, dd = √(Σ min(p, 0)² / n) (downside deviation over ALL trades);
      `None` when there is no losing trade (dd = 0)
    - `profit_factor` = Σ{p > 0} / │Σ{p < 0}│; `None` when there is no losing trade
    - `expectancy` = win_rate × avg_win − loss_rate × │avg_loss│, loss_rate = losing_trades / n,
      avg_win = mean of p > 0 (0 when none), avg_loss = mean of p < 0 (0 when none)
    - `certainty_ratio` = avg_win / │avg_loss│; **0** when there is no losing trade (reference rule)
    - `expected_yearly_returns` = avg_pnl × 365 / avg_days, avg_days = mean(close_timestamp −
      pending_at) / 86 400 000; **0** when avg_days = 0 (reference rule)
    - `max_drawdown` = max over trades of (peak − cum), cum = running Σp oldest first, peak = running
      max of cum starting at 0; ≥ 0, in percent points
    - `max_drawdown_duration_ms` = longest time the equity spent below a peak: from the peak's time
      (close_timestamp of the trade that set or regained it; the first trade's pending_at for the
      initial 0 peak) to the close_timestamp of the trade that regained it (cum ≥ peak) or, while
      still below, of the latest trade; 0 when the equity never fell below a peak
    - `avg_trade_duration_minutes` = mean(close_timestamp − pending_at) / 60 000
    - `close_reasons` = count of trades per close reason
    - `events` = recent rows, newest first (live: the bounded deque; backtest: the last `max_events`
      closed trades as rows)
    - `signals` = closed results newest first (backtest: every trade; live: the closed ones among
      `events`)
    - `open_positions` = positions open when the snapshot was taken (0 or 1 per pair): a backtest
      whose data ended before the last position closed, a live run now. Not a trade: no figure
      above counts it.
    - `unrealized_pnl` = their net PnL % (fees and slippage as if closed now, like `pnl`) at the
      last price the run saw; `None` when no position is open

    With an order executor attached (`add_order_executor`), from the fills of the closed trades whose
    entry and exit both filled (the model figures above are unchanged, and without an executor these
    stay 0 / None / empty):

    - `filled_trades` = m, the number of such trades
    - `realized_pnl` = Σ realised PnL % of those trades (`TradeFill.realized_pnl`)
    - `fill_slippage` = Σ (realised − model PnL %) over them, percent points
    - `fills` = signal id -> `TradeFill` (backtest: every filled trade; live: the recent ones)
    """

    total_trades: int
    winning_trades: int
    losing_trades: int
    win_rate: float | None
    avg_pnl: float | None
    total_pnl: float | None
    std_dev: float | None
    sharpe_ratio: float | None
    annualized_sharpe_ratio: float | None
    sortino_ratio: float | None
    profit_factor: float | None
    expectancy: float | None
    certainty_ratio: float | None
    expected_yearly_returns: float | None
    max_drawdown: float | None
    max_drawdown_duration_ms: int | None
    avg_trade_duration_minutes: float | None
    close_reasons: dict[str, int]
    events: list[LiveEvent]
    signals: list[ClosedResult]
    open_positions: int = 0
    unrealized_pnl: float | None = None
    filled_trades: int = 0
    realized_pnl: float | None = None
    fill_slippage: float | None = None
    fills: dict[str, TradeFill] = msgspec.field(default_factory=dict)

    # Read-only aliases with the reference's names
    # ([events §3.4](../../docs/design/events-and-api.md#34-bounded-stores)).
    @property
    def total_closed(self) -> int:
        """Reference `totalClosed` / `totalSignals`: the number of closed trades."""
        return self.total_trades

    @property
    def total_events(self) -> int:
        """Reference `totalEvents`: the length of the recent-events list."""
        return len(self.events)

    @property
    def win_count(self) -> int:
        """Reference `winCount`."""
        return self.winning_trades

    @property
    def loss_count(self) -> int:
        """Reference `lossCount`."""
        return self.losing_trades

    @property
    def win_rate_percent(self) -> float | None:
        """Reference `winRate`: the win rate on a 0–100 scale."""
        return None if self.win_rate is None else self.win_rate * 100.0


def _empty_statistics(events: list[LiveEvent], signals: list[ClosedResult]) -> Statistics:
    return Statistics(
        total_trades=0,
        winning_trades=0,
        losing_trades=0,
        win_rate=None,
        avg_pnl=None,
        total_pnl=None,
        std_dev=None,
        sharpe_ratio=None,
        annualized_sharpe_ratio=None,
        sortino_ratio=None,
        profit_factor=None,
        expectancy=None,
        certainty_ratio=None,
        expected_yearly_returns=None,
        max_drawdown=None,
        max_drawdown_duration_ms=None,
        avg_trade_duration_minutes=None,
        close_reasons={},
        events=events,
        signals=signals,
    )


def _derived(
    *,
    n: int,
    wins: int,
    losses: int,
    total: float,
    std: float,
    win_sum: float,
    loss_sum: float,
    downside_sq_sum: float,
    duration_sum_days: float,
    duration_sum_ms: int,
    max_drawdown: float,
    max_drawdown_duration_ms: int,
    close_reasons: dict[str, int],
    events: list[LiveEvent],
    signals: list[ClosedResult],
) -> Statistics:
    """The formulas of `Statistics` from sufficient statistics (shared by both paths; n > 0).

    Sharing this step is safe for the equivalence tests: what they check is that the two ways of
    obtaining the sums (running vs. batch) agree; the formulas themselves are checked by the unit
    tests against the worked example of [events §4.10](../../docs/design/events-and-api.md#410-worked-example).
    """
    avg = total / n
    win_rate = wins / n
    loss_rate = losses / n
    sharpe = avg / std if std > 0 else 0.0
    avg_win = win_sum / wins if wins else 0.0
    avg_loss = loss_sum / losses if losses else 0.0
    if losses:
        certainty: float = avg_win / abs(avg_loss)
        profit_factor: float | None = finite_or_none(win_sum / -loss_sum) if loss_sum else None
        downside = math.sqrt(downside_sq_sum / n)
        sortino: float | None = finite_or_none(avg / downside) if downside > 0 else None
    else:
        certainty = 0.0
        profit_factor = None
        sortino = None
    avg_days = duration_sum_days / n
    yearly = avg * 365 / avg_days if avg_days > 0 else 0.0
    return Statistics(
        total_trades=n,
        winning_trades=wins,
        losing_trades=losses,
        win_rate=win_rate,
        avg_pnl=finite_or_none(avg),
        total_pnl=finite_or_none(total),
        std_dev=finite_or_none(std),
        sharpe_ratio=finite_or_none(sharpe),
        annualized_sharpe_ratio=finite_or_none(sharpe * _SQRT_365),
        sortino_ratio=sortino,
        profit_factor=profit_factor,
        expectancy=finite_or_none(win_rate * avg_win - loss_rate * abs(avg_loss)),
        certainty_ratio=finite_or_none(certainty),
        expected_yearly_returns=finite_or_none(yearly),
        max_drawdown=finite_or_none(max_drawdown),
        max_drawdown_duration_ms=max_drawdown_duration_ms,
        avg_trade_duration_minutes=finite_or_none(duration_sum_ms / n / _MS_PER_MINUTE),
        close_reasons=close_reasons,
        events=events,
        signals=signals,
    )


# ---------------------------------------------------------------------------------------------------------
# Running aggregate
# ---------------------------------------------------------------------------------------------------------


class TradeAggregate:
    """Running aggregates over closed trades in O(1) memory, fed oldest first by `add`.

    Plain class with `__slots__` rather than a Struct: it is mutated on every closed trade and never
    serialised. See `Statistics` for the meaning of every figure.
    """

    __slots__ = (
        "_peak_time",
        "_underwater",
        "close_reasons",
        "count",
        "cumulative",
        "duration_sum_ms",
        "first_pending_at",
        "last_close_timestamp",
        "loss_sum",
        "losses",
        "m2",
        "max_drawdown",
        "max_drawdown_duration_ms",
        "max_pnl",
        "mean",
        "min_pnl",
        "neg_sq_sum",
        "peak",
        "total",
        "win_sum",
        "wins",
    )

    def __init__(self) -> None:
        self.count = 0
        self.wins = 0
        self.losses = 0
        self.total = 0.0
        self.mean = 0.0  # Welford running mean (used only for m2; avg_pnl is total / count)
        self.m2 = 0.0  # Welford Σ(p − mean)²
        self.min_pnl = math.inf  # min == max ⇒ std dev exactly 0, free of rounding noise
        self.max_pnl = -math.inf
        self.win_sum = 0.0  # gross profit
        self.loss_sum = 0.0  # Σ of negative p (≤ 0); gross loss = −loss_sum
        self.neg_sq_sum = 0.0  # Σ p² over p < 0, for the downside deviation
        self.cumulative = 0.0
        self.peak = 0.0
        self.max_drawdown = 0.0
        self.max_drawdown_duration_ms = 0
        self._peak_time: int | None = None
        self._underwater = False
        self.duration_sum_ms = 0
        self.close_reasons: dict[str, int] = {}
        self.first_pending_at: int | None = None
        self.last_close_timestamp: int | None = None

    @property
    def gross_profit(self) -> float:
        """Σ of the winning PnLs."""
        return self.win_sum

    @property
    def gross_loss(self) -> float:
        """│Σ of the losing PnLs│ (≥ 0)."""
        return -self.loss_sum

    def add(self, closed: ClosedResult) -> None:
        """Fold one closed trade into the aggregates (O(1))."""
        p = closed.pnl.pnl_percentage
        signal = closed.signal
        close_ts = closed.close_timestamp
        n = self.count + 1
        self.count = n
        self.total += p
        delta = p - self.mean
        self.mean += delta / n
        self.m2 += delta * (p - self.mean)
        if p < self.min_pnl:
            self.min_pnl = p
        if p > self.max_pnl:
            self.max_pnl = p
        if p > 0:
            self.wins += 1
            self.win_sum += p
        elif p < 0:
            self.losses += 1
            self.loss_sum += p
            self.neg_sq_sum += p * p

        # Equity curve: drawdown from the running peak (peak starts at 0 at the first entry).
        if self._peak_time is None:
            self._peak_time = signal.pending_at
            self.first_pending_at = signal.pending_at
        cum = self.cumulative + p
        self.cumulative = cum
        if cum >= self.peak:
            if self._underwater:
                span = close_ts - self._peak_time
                if span > self.max_drawdown_duration_ms:
                    self.max_drawdown_duration_ms = span
                self._underwater = False
            self.peak = cum
            self._peak_time = close_ts
        else:
            self._underwater = True
            dd = self.peak - cum
            if dd > self.max_drawdown:
                self.max_drawdown = dd
            span = close_ts - self._peak_time
            if span > self.max_drawdown_duration_ms:
                self.max_drawdown_duration_ms = span

        self.duration_sum_ms += close_ts - signal.pending_at
        reason = closed.close_reason
        self.close_reasons[reason] = self.close_reasons.get(reason, 0) + 1
        self.last_close_timestamp = close_ts

    def std_dev(self) -> float:
        """Population standard deviation (Welford); exactly 0 when all PnLs are equal."""
        if self.count == 0 or self.min_pnl == self.max_pnl:
            return 0.0
        return math.sqrt(max(self.m2, 0.0) / self.count)


def statistics_from_aggregate(
    agg: TradeAggregate, *, events: list[LiveEvent], signals: list[ClosedResult]
) -> Statistics:
    """A `Statistics` snapshot from a running aggregate; `events`/`signals` are stored as given."""
    n = agg.count
    if n == 0:
        return _empty_statistics(events, signals)
    return _derived(
        n=n,
        wins=agg.wins,
        losses=agg.losses,
        total=agg.total,
        std=agg.std_dev(),
        win_sum=agg.win_sum,
        loss_sum=agg.loss_sum,
        downside_sq_sum=agg.neg_sq_sum,
        duration_sum_days=agg.duration_sum_ms / _MS_PER_DAY,
        duration_sum_ms=agg.duration_sum_ms,
        max_drawdown=agg.max_drawdown,
        max_drawdown_duration_ms=agg.max_drawdown_duration_ms,
        close_reasons=dict(agg.close_reasons),
        events=events,
        signals=signals,
    )


def statistics_from_trades(
    trades: Sequence[ClosedResult], *, events: list[LiveEvent] | None = None
) -> Statistics:
    """Batch recomputation over `trades` (oldest first), two-pass, independent of `TradeAggregate`.

    `signals` of the result is `trades` newest first; `events` defaults to an empty list.
    """
    ev: list[LiveEvent] = [] if events is None else events
    signals = list(reversed(trades))
    n = len(trades)
    if n == 0:
        return _empty_statistics(ev, signals)
    pnls = [t.pnl.pnl_percentage for t in trades]
    total = 0.0
    for p in pnls:
        total += p
    avg = total / n
    # All equal ⇒ exactly 0 (the computed mean may differ from them by rounding).
    std = 0.0 if min(pnls) == max(pnls) else math.sqrt(sum((p - avg) ** 2 for p in pnls) / n)
    wins_list = [p for p in pnls if p > 0]
    losses_list = [p for p in pnls if p < 0]
    win_sum = 0.0
    for p in wins_list:
        win_sum += p
    loss_sum = 0.0
    downside_sq = 0.0
    for p in losses_list:
        loss_sum += p
        downside_sq += p * p

    # Max drawdown and its duration from the explicit equity curve.
    times = [trades[0].signal.pending_at] + [t.close_timestamp for t in trades]
    equity = [0.0]
    running = 0.0
    for p in pnls:
        running += p
        equity.append(running)
    max_dd = 0.0
    max_dd_ms = 0
    peak_idx = 0  # index into `equity` / `times` of the current peak
    dipped = False  # has the equity been below equity[peak_idx] since the peak?
    for i in range(1, n + 1):
        below = equity[i] < equity[peak_idx]
        if below:
            max_dd = max(max_dd, equity[peak_idx] - equity[i])
        if below or dipped:
            max_dd_ms = max(max_dd_ms, times[i] - times[peak_idx])
        if below:
            dipped = True
        else:
            peak_idx, dipped = i, False

    durations = [t.close_timestamp - t.signal.pending_at for t in trades]
    reasons: dict[str, int] = {}
    for t in trades:
        reasons[t.close_reason] = reasons.get(t.close_reason, 0) + 1
    return _derived(
        n=n,
        wins=len(wins_list),
        losses=len(losses_list),
        total=total,
        std=std,
        win_sum=win_sum,
        loss_sum=loss_sum,
        downside_sq_sum=downside_sq,
        duration_sum_days=math.fsum(d / _MS_PER_DAY for d in durations),
        duration_sum_ms=sum(durations),
        max_drawdown=max_dd,
        max_drawdown_duration_ms=max_dd_ms,
        close_reasons=reasons,
        events=ev,
        signals=signals,
    )

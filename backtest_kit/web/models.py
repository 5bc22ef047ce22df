"""The JSON API's response and request bodies: msgspec Structs, one per shape the API returns.

Why dedicated models rather than the engine's own (`TickResult`, `RiskEvent`, `Statistics`): the API is
a contract read by a browser and by other programs, so it shows what a reader needs (an open position
with its current price and unrealised PnL, a rejection with its signal's prices) and nothing else; a
`RiskEvent.pending_signal` is `Any` and `Statistics.signals` grows with the run. Being msgspec Structs,
the same classes encode the responses and generate the OpenAPI schemas (`openapi.py`), so the document
cannot drift from what the handlers send.
"""

from __future__ import annotations

from typing import Literal

from msgspec import Struct

__all__ = [
    "EquityCurve",
    "EquityPoint",
    "ErrorBody",
    "ErrorView",
    "EventView",
    "Health",
    "InstanceView",
    "Overview",
    "PairStats",
    "PartialView",
    "PositionView",
    "RiskView",
    "StopRequest",
    "StopResult",
]

Mode = Literal["engine", "remote"]


class InstanceView(Struct, frozen=True, kw_only=True):
    """A running (or finished) live instance: `status` from the engine (`Live.list`), or, fed from NATS,
    `running` until its done event. `error` is the redacted message of a failed run."""

    id: str
    symbol: str
    strategy_name: str
    exchange_name: str
    status: Literal["idle", "running", "done"]
    error: str | None = None
    ticks: int = 0
    last_tick_ms: int | None = None
    last_price: float | None = None
    last_action: str | None = None


class PositionView(Struct, frozen=True, kw_only=True):
    """An open (or scheduled, waiting for its entry) position at the last price its instance saw.

    `unrealized_pnl` is the net PnL % as if closed at `current_price` (fees and slippage included, the
    formula a close uses); `percent_tp` / `percent_sl` how far the price went towards either."""

    symbol: str
    strategy_name: str
    exchange_name: str
    signal_id: str
    position: Literal["long", "short"]
    scheduled: bool
    price_open: float
    take_profit: float
    stop_loss: float
    current_price: float
    unrealized_pnl: float | None
    percent_tp: float
    percent_sl: float
    opened_at: int
    updated_at: int
    note: str = ""


class EventView(Struct, frozen=True, kw_only=True):
    """One row of the recent-events table: a non-idle tick result (scheduled, opened, closed, cancelled;
    active ticks only update positions)."""

    timestamp: int
    action: str
    symbol: str
    strategy_name: str
    current_price: float
    signal_id: str | None = None
    position: str | None = None
    pnl: float | None = None
    close_reason: str | None = None


class PairStats(Struct, frozen=True, kw_only=True):
    """Statistics of one (symbol, strategy): exact engine figures when an engine is attached, else folded
    from the closed trades this dashboard received. `win_rate` is a fraction 0..1; PnL in percent."""

    symbol: str
    strategy_name: str
    total_trades: int
    winning_trades: int
    losing_trades: int
    win_rate: float | None
    total_pnl: float | None
    avg_pnl: float | None
    sharpe_ratio: float | None
    max_drawdown: float | None
    open_positions: int
    unrealized_pnl: float | None


class EquityPoint(Struct, frozen=True, kw_only=True, array_like=True):
    """`[timestamp_ms, cumulative_pnl_percent]` (an array: curves have many points)."""

    t: int
    pnl: float


class EquityCurve(Struct, frozen=True, kw_only=True):
    """The cumulative net PnL % of a strategy's closed trades (all its symbols), oldest first."""

    strategy_name: str
    points: list[EquityPoint]


class RiskView(Struct, frozen=True, kw_only=True):
    """A signal a risk profile rejected, and why (`comment`)."""

    timestamp: int
    symbol: str
    strategy_name: str
    comment: str
    current_price: float
    active_position_count: int
    signal_id: str | None = None
    position: str | None = None
    price_open: float | None = None


class PartialView(Struct, frozen=True, kw_only=True):
    """A 10 %-step level towards take profit (`profit`) or stop loss (`loss`) reached for the first time."""

    timestamp: int
    kind: Literal["profit", "loss"]
    symbol: str
    strategy_name: str
    signal_id: str
    level: int
    current_price: float


class ErrorView(Struct, frozen=True, kw_only=True):
    """An error the engine reported: its type and its message with secrets redacted (never a repr or a
    traceback, which may hold a signed URL or a key)."""

    timestamp: int
    type: str
    message: str


class Overview(Struct, frozen=True, kw_only=True):
    """Everything the page shows, in one document (also what each Server-Sent `overview` event carries).

    `generated_at` is wall-clock ms; `now_ms` the engine's clock (a replay's simulated time), or the wall
    clock for a dashboard fed from NATS."""

    mode: Mode
    generated_at: int
    now_ms: int
    instances: list[InstanceView]
    positions: list[PositionView]
    stats: list[PairStats]
    events: list[EventView]
    equity: list[EquityCurve]
    risk: list[RiskView]
    partials: list[PartialView]
    errors: list[ErrorView]


class Health(Struct, frozen=True, kw_only=True):
    """Liveness of the dashboard: its feed, stream clients and the updates dropped for slow clients."""

    status: Literal["ok"]
    mode: Mode
    stream_clients: int
    stream_dropped: int
    writable: bool


class StopRequest(Struct, frozen=True, kw_only=True):
    """`POST /api/stop`: stop one live instance gracefully (an open position is watched to its close)."""

    symbol: str
    strategy_name: str


class StopResult(Struct, frozen=True, kw_only=True):
    """The stop was requested (`stopping`), or there was no such running instance (`not_running`)."""

    symbol: str
    strategy_name: str
    status: Literal["stopping", "not_running"]


class ErrorBody(Struct, frozen=True, kw_only=True):
    """Every error response: a short machine-readable `error` and a sentence for a person."""

    error: str
    message: str

"""Public data types: immutable msgspec Structs with snake_case fields.

Structs (rather than dataclasses) because they are several times faster to build on the hot path,
serialise to JSON for snapshots without glue code, and decode user dicts with errors that name the
field (`$.price_open`).
"""

from __future__ import annotations

import difflib
from typing import Any, ClassVar, Generic, Literal, TypeAlias, TypeVar

import msgspec
from msgspec import UNSET, Struct, UnsetType

from .errors import SignalValidationError

__all__ = [
    "ActiveResult",
    "CancelledResult",
    "Candle",
    "CloseReason",
    "ClosedResult",
    "DoneEvent",
    "FinishedResult",
    "IdleResult",
    "InstanceInfo",
    "InstanceStatus",
    "OpenedResult",
    "OrderEvent",
    "OrderRequest",
    "OrderRole",
    "OrderSide",
    "OrderStatus",
    "OrderType",
    "PartialEvent",
    "PerformanceEvent",
    "PnL",
    "Position",
    "ProgressEvent",
    "RiskEvent",
    "ScheduledResult",
    "SignalDto",
    "SignalLifecycleEvent",
    "SignalLifecycleKind",
    "SignalRow",
    "TickResult",
    "WalkerContract",
    "WalkerInstanceInfo",
    "WalkerProgressEvent",
    "WalkerResults",
    "WalkerStopEvent",
    "decode_signal_dto",
]

Position: TypeAlias = Literal["long", "short"]
CloseReason: TypeAlias = Literal["take_profit", "stop_loss", "time_expired"]
InstanceStatus: TypeAlias = Literal["idle", "running", "done"]
SignalLifecycleKind: TypeAlias = Literal["scheduled", "opened", "closed", "cancelled"]
OrderRole: TypeAlias = Literal["entry", "exit", "cancel"]
OrderSide: TypeAlias = Literal["buy", "sell"]
OrderType: TypeAlias = Literal["market", "limit"]
OrderStatus: TypeAlias = Literal["submitted", "filled", "partially_filled", "rejected", "cancelled"]


class Candle(Struct, frozen=True, gc=False):
    """One OHLCV candle; `timestamp` is the candle's open time in ms since the epoch (UTC)."""

    timestamp: int
    open: float
    high: float
    low: float
    close: float
    volume: float


class SignalDto(Struct, frozen=True, kw_only=True):
    """What `get_signal` returns. Omit `price_open` for a market entry; giving `None` is an error."""

    position: Position
    price_take_profit: float
    price_stop_loss: float
    minute_estimated_time: int
    price_open: float | UnsetType = UNSET
    note: str | None = None
    id: str | None = None


class SignalRow(Struct, frozen=True, kw_only=True):
    """A validated signal as the engine keeps, persists and reports it."""

    id: str
    position: Position
    price_open: float
    price_take_profit: float
    price_stop_loss: float
    minute_estimated_time: int
    note: str
    symbol: str
    strategy_name: str
    exchange_name: str
    scheduled_at: int
    pending_at: int
    is_scheduled: bool
    quantity: float | None = None


class PnL(Struct, frozen=True, gc=False):
    """Net result of a trade in percent; the prices are the fee- and slippage-adjusted ones."""

    pnl_percentage: float
    price_open: float
    price_close: float


class _Result(Struct, frozen=True, kw_only=True, tag_field="action", gc=False):
    symbol: str
    strategy_name: str
    exchange_name: str
    current_price: float
    backtest: bool


class IdleResult(_Result, frozen=True, kw_only=True, tag="idle", gc=False):
    """No signal this tick."""

    action: ClassVar[str] = "idle"
    signal: None = None


class ScheduledResult(_Result, frozen=True, kw_only=True, tag="scheduled", gc=False):
    """A limit signal was created and waits for its entry price."""

    action: ClassVar[str] = "scheduled"
    signal: SignalRow


class OpenedResult(_Result, frozen=True, kw_only=True, tag="opened", gc=False):
    """A position was opened (market entry, reached limit, or live activation)."""

    action: ClassVar[str] = "opened"
    signal: SignalRow


class ActiveResult(_Result, frozen=True, kw_only=True, tag="active", gc=False):
    """A position (or a waiting limit signal, percents 0) is being monitored."""

    action: ClassVar[str] = "active"
    signal: SignalRow
    percent_tp: float
    percent_sl: float


class ClosedResult(_Result, frozen=True, kw_only=True, tag="closed", gc=False):
    """A position closed by take profit, stop loss or expiry."""

    action: ClassVar[str] = "closed"
    signal: SignalRow
    close_reason: CloseReason
    close_timestamp: int
    pnl: PnL


class CancelledResult(_Result, frozen=True, kw_only=True, tag="cancelled", gc=False):
    """A limit signal was dropped before activation (timeout, stop loss first, or stop)."""

    action: ClassVar[str] = "cancelled"
    signal: SignalRow
    close_timestamp: int


TickResult: TypeAlias = (
    IdleResult | ScheduledResult | OpenedResult | ActiveResult | ClosedResult | CancelledResult
)
FinishedResult: TypeAlias = ClosedResult | CancelledResult


class DoneEvent(Struct, frozen=True, kw_only=True):
    """A background run ended."""

    symbol: str
    strategy_name: str
    exchange_name: str
    backtest: bool


class ProgressEvent(Struct, frozen=True, kw_only=True, gc=False):
    """Backtest progress: `processed_frames` is the index of the frame about to run."""

    symbol: str
    strategy_name: str
    exchange_name: str
    total_frames: int
    processed_frames: int
    progress: float


class PerformanceEvent(Struct, frozen=True, kw_only=True, gc=False):
    """A timing of one engine step (ms, wall clock)."""

    timestamp: float
    previous_timestamp: float | None
    metric_type: str
    duration: float
    strategy_name: str
    exchange_name: str
    symbol: str
    backtest: bool


class PartialEvent(Struct, frozen=True, kw_only=True):
    """A 10 %-step milestone towards take profit or stop loss was reached for the first time."""

    symbol: str
    strategy_name: str
    exchange_name: str
    signal: SignalRow
    current_price: float
    level: int
    backtest: bool
    timestamp: int


class RiskEvent(Struct, frozen=True, kw_only=True):
    """A risk profile rejected a signal."""

    symbol: str
    strategy_name: str
    exchange_name: str
    pending_signal: Any
    current_price: float
    active_position_count: int
    comment: str
    timestamp: int
    backtest: bool


class InstanceInfo(Struct, frozen=True, kw_only=True):
    """One run instance as `Live.list()` / `Backtest.list()` report it."""

    id: str
    symbol: str
    strategy_name: str
    exchange_name: str
    status: InstanceStatus
    error: str | None = None


# ---------------------------------------------------------------------------------------------------------
# Walker events ([risk-sizing §4](../../docs/design/risk-sizing-portfolio.md#4-walker)). The statistics they
# carry are the reports layer's `Statistics`, which the engine core may not import: the two events that
# hold statistics are generic in their type (`S`), and `reports/walker_stats.py` names the concrete
# `WalkerContract[Statistics]`.
# ---------------------------------------------------------------------------------------------------------

S = TypeVar("S")


class WalkerProgressEvent(Struct, frozen=True, kw_only=True):
    """A walker finished one more strategy's backtest (failed strategies are not counted)."""

    walker_name: str
    exchange_name: str
    frame_name: str
    symbol: str
    total_strategies: int
    processed_strategies: int
    progress: float


class WalkerContract(Struct, Generic[S], frozen=True, kw_only=True):
    """One strategy's result within a walker run, with the best so far (as of this strategy)."""

    walker_name: str
    exchange_name: str
    frame_name: str
    symbol: str
    strategy_name: str
    stats: S
    metric_value: float | None
    metric: str
    best_metric: float | None
    best_strategy: str | None
    strategies_tested: int
    total_strategies: int


class WalkerResults(Struct, Generic[S], frozen=True, kw_only=True):
    """The end of a walker run: the best strategy (all three `best_*` None when no metric was usable)."""

    walker_name: str
    symbol: str
    exchange_name: str
    frame_name: str
    metric: str
    total_strategies: int
    best_strategy: str | None
    best_metric: float | None
    best_stats: S | None


class WalkerStopEvent(Struct, frozen=True, kw_only=True):
    """A stop request for one strategy of a walker (`Walker.stop` / the walker's cancel)."""

    symbol: str
    strategy_name: str
    walker_name: str


class WalkerInstanceInfo(Struct, frozen=True, kw_only=True):
    """One walker instance as `Walker.list()` reports it."""

    id: str
    symbol: str
    walker_name: str
    exchange_name: str
    status: InstanceStatus
    error: str | None = None


# ---------------------------------------------------------------------------------------------------------
# Order execution (issue 16). Declared here, in the engine core, because both sides of the order path
# need them: `execution/` (the executors, the order journal) and `adapters/` (an exchange's order
# gateway), and adapters may not import execution.
# ---------------------------------------------------------------------------------------------------------


class SignalLifecycleEvent(Struct, frozen=True, kw_only=True):
    """A step of a signal's life handed to its strategy's order executor.

    `kind` is the tick result's action; `timestamp` is when it happened (scheduled_at, pending_at or
    close_timestamp); `price` is the model's price for it (the current price; the close price of a
    close). `close_reason` and `model_pnl` (net PnL %) are set for `closed` only. A backtest never
    publishes `opened` for a limit signal that filled inside a fast-forward: its executor sees
    `scheduled`, then `closed`.
    """

    kind: SignalLifecycleKind
    signal: SignalRow
    symbol: str
    strategy_name: str
    exchange_name: str
    price: float
    timestamp: int
    backtest: bool
    close_reason: CloseReason | None = None
    model_pnl: float | None = None


class OrderRequest(Struct, frozen=True, kw_only=True):
    """One order an executor wants on the exchange: what the journal stores before the gateway sees it.

    `client_order_id` is deterministic (`execution.ids.client_order_id(signal_id, role, attempt)`), so a
    retried or replayed placement is recognised by the exchange instead of doubled. `price` is None for a
    market order; `target_client_order_id` names the order a `cancel` request cancels.
    """

    client_order_id: str
    signal_id: str
    role: OrderRole
    symbol: str
    strategy_name: str
    exchange_name: str
    side: OrderSide
    type: OrderType
    amount: float
    price: float | None = None
    timestamp: int = 0
    backtest: bool = False
    target_client_order_id: str | None = None


class OrderEvent(Struct, frozen=True, kw_only=True):
    """What happened to an order on the exchange (`listen_order`), with the exchange's own ids.

    `filled` is the cumulative filled amount, `average_price` its average fill price (None before any
    fill), `fee` the cumulative fee in `fee_currency` (the quote currency for the paper executor).
    `reason` explains a rejection or cancellation. `timestamp` is ms since the epoch on the engine clock.
    """

    signal_id: str
    role: OrderRole
    client_order_id: str
    exchange_order_id: str | None
    symbol: str
    strategy_name: str
    exchange_name: str
    side: OrderSide
    type: OrderType
    price: float | None
    amount: float
    filled: float
    average_price: float | None
    fee: float
    status: OrderStatus
    timestamp: int
    backtest: bool = False
    reason: str | None = None
    fee_currency: str | None = None


def decode_signal_dto(obj: Any) -> SignalDto:
    """A `SignalDto` from a Struct or a user mapping; errors name the field (`$.price_open`)."""
    if isinstance(obj, SignalDto):
        return obj
    if not isinstance(obj, dict):
        try:
            obj = dict(obj)
        except (TypeError, ValueError):
            raise SignalValidationError(
                f"Invalid signal: expected SignalDto or mapping, got {type(obj).__name__}: {obj!r}"
            ) from None
    _reject_unknown_keys(obj)
    if "price_open" in obj and obj["price_open"] is None:
        raise SignalValidationError(
            "Invalid signal: $.price_open is None; omit price_open for a market entry"
        )
    try:
        return msgspec.convert(obj, SignalDto, strict=True)
    except msgspec.ValidationError as exc:
        raise SignalValidationError(f"Invalid signal: {exc} (value {obj!r})") from None


_SIGNAL_DTO_FIELDS: frozenset[str] = frozenset(SignalDto.__struct_fields__)


def _reject_unknown_keys(obj: dict[Any, Any]) -> None:
    """A misspelled key (`price_opn`) would otherwise be dropped and silently turn a limit entry into a
    market entry, so every key must be a `SignalDto` field; the error names the closest valid one."""
    for key in obj:
        if key in _SIGNAL_DTO_FIELDS:
            continue
        fields = SignalDto.__struct_fields__
        close = difflib.get_close_matches(str(key), fields, n=1, cutoff=0.5)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise SignalValidationError(
            f"Invalid signal: unknown key {key!r} ({hint}valid keys: {', '.join(fields)})"
        )

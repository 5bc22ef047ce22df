"""Default message texts and JSON payloads for engine events (what notifiers send).

`default_format(event)` turns any event of the bus into one line of plain text (no markup, so no
escaping problems in Telegram or chat webhooks); `event_kind(event)` names it (`opened`, `closed`,
`risk`, `partial_profit`, `error`, ...); `event_payload(event)` is a JSON-ready dict of its fields.
Pass your own `formatter=` to a notifier to change the text; returning None skips the event.
"""

from __future__ import annotations

import math
from typing import Any

import msgspec

from ...engine.models import (
    CancelledResult,
    ClosedResult,
    DoneEvent,
    IdleResult,
    OpenedResult,
    PartialEvent,
    RiskEvent,
    ScheduledResult,
    SignalRow,
)

__all__ = ["default_filter", "default_format", "event_kind", "event_payload", "format_number", "partial_side"]


def format_number(x: float | None) -> str:
    """`50000`, `0.0125`, `98.6`: up to 8 decimals without trailing zeros; `N/A` when missing."""
    if x is None or isinstance(x, bool) or not isinstance(x, int | float) or not math.isfinite(x):
        return "N/A"
    text = f"{x:.8f}".rstrip("0").rstrip(".")
    return "0" if text in ("", "-0") else text


def partial_side(event: PartialEvent) -> str:
    """`profit` or `loss`: which side of the entry the price was on when the level was reached."""
    s = event.signal
    d = event.current_price - s.price_open
    if s.position == "short":
        d = -d
    return "profit" if d > 0 else "loss"


def event_kind(event: Any) -> str:
    """A short name for the event: the tick action, `risk`, `partial_profit`, `partial_loss`,
    `error`, `done` or the type name."""
    if isinstance(event, BaseException):
        return "error"
    action = getattr(event, "action", None)
    if isinstance(action, str):
        return action
    if isinstance(event, RiskEvent):
        return "risk"
    if isinstance(event, PartialEvent):
        return f"partial_{partial_side(event)}"
    if isinstance(event, DoneEvent):
        return "done"
    return type(event).__name__


def _mode(event: Any) -> str:
    return "backtest" if getattr(event, "backtest", False) else "live"


def _origin(event: Any) -> str:
    """`strategy/exchange [mode]`: where an event came from, the tail of most lines."""
    return f"{event.strategy_name}/{event.exchange_name} [{_mode(event)}]"


def _signal_text(s: SignalRow) -> str:
    parts = [f"TP {format_number(s.price_take_profit)}", f"SL {format_number(s.price_stop_loss)}"]
    if s.quantity is not None:
        parts.append(f"qty {format_number(s.quantity)}")
    return " | ".join(parts)


def default_format(event: Any) -> str | None:
    """One line of plain text describing `event`."""
    if isinstance(event, BaseException):
        return f"ERROR {type(event).__name__}: {event}"
    if isinstance(event, ClosedResult):
        s = event.signal
        return (
            f"CLOSED {s.position.upper()} {event.symbol} {event.close_reason} | "
            f"PnL {event.pnl.pnl_percentage:+.2f}% | {format_number(s.price_open)} -> "
            f"{format_number(event.current_price)} | {_origin(event)}"
        )
    if isinstance(event, OpenedResult):
        s = event.signal
        return (
            f"OPENED {s.position.upper()} {event.symbol} @ {format_number(s.price_open)} | {_signal_text(s)} | "
            f"{_origin(event)}"
        )
    if isinstance(event, ScheduledResult):
        s = event.signal
        return (
            f"SCHEDULED {s.position.upper()} {event.symbol} limit {format_number(s.price_open)} | "
            f"{_signal_text(s)} | {_origin(event)}"
        )
    if isinstance(event, CancelledResult):
        s = event.signal
        return (
            f"CANCELLED {s.position.upper()} {event.symbol} limit {format_number(s.price_open)} | "
            f"{_origin(event)}"
        )
    if isinstance(event, IdleResult):
        return f"IDLE {event.symbol} @ {format_number(event.current_price)} | {event.strategy_name} [{_mode(event)}]"
    if getattr(event, "action", None) == "active":
        s = event.signal
        return (
            f"ACTIVE {s.position.upper()} {event.symbol} @ {format_number(event.current_price)} | "
            f"to TP {event.percent_tp:.1f}% | to SL {event.percent_sl:.1f}% | {event.strategy_name} [{_mode(event)}]"
        )
    if isinstance(event, RiskEvent):
        position = getattr(event.pending_signal, "position", None)
        side = f" {position.upper()}" if isinstance(position, str) else ""
        return (
            f"RISK REJECTED{side} {event.symbol}: {event.comment} | active positions "
            f"{event.active_position_count} | price {format_number(event.current_price)} | "
            f"{_origin(event)}"
        )
    if isinstance(event, PartialEvent):
        side = partial_side(event)
        sign = "+" if side == "profit" else "-"
        return (
            f"PARTIAL {side.upper()} {sign}{event.level}% {event.signal.position.upper()} {event.symbol} @ "
            f"{format_number(event.current_price)} | {event.strategy_name} [{_mode(event)}]"
        )
    if isinstance(event, DoneEvent):
        return f"DONE {event.symbol} {_origin(event)}"
    return str(event)


def event_payload(event: Any) -> dict[str, Any]:
    """The event as JSON-ready builtins (an exception becomes `{"type", "message"}`)."""
    if isinstance(event, BaseException):
        return {"type": type(event).__name__, "message": str(event)}
    try:
        data = msgspec.to_builtins(event)
    except (TypeError, msgspec.EncodeError):
        return {"repr": repr(event)}
    if isinstance(data, dict):
        action = getattr(event, "action", None)
        if isinstance(action, str):
            data.setdefault("action", action)
        return data
    return {"value": data}


def default_filter(event: Any) -> bool:
    """What `add_notifier` sends unless told otherwise: live trading events and every error.

    Drops `idle` and `active` ticks (they arrive every minute) and anything flagged `backtest`.
    """
    if isinstance(event, BaseException):
        return True
    if getattr(event, "backtest", False):
        return False
    return getattr(event, "action", None) not in ("idle", "active")

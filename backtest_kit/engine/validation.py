"""Signal validation ([lifecycle §5](../../docs/design/lifecycle.md#5-signal-validation)): every failing
rule is collected into one error message."""

from __future__ import annotations

import math
from typing import Any

from .config import Config
from .errors import SignalValidationError
from .models import SignalRow

__all__ = [
    "PRICE_SANITY_FACTOR",
    "RESTORE_CLOCK_SKEW_MS",
    "restored_row_problems",
    "signal_problems",
    "validate_signal",
]


def _finite(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value)


def signal_problems(row: SignalRow, current_price: float, config: Config) -> list[str]:
    """Every broken rule as one line that names the field and the value."""
    problems: list[str] = []
    for name in ("id", "exchange_name", "strategy_name", "symbol"):
        if not getattr(row, name):
            problems.append(f"{name} is empty: {getattr(row, name)!r}")
    position = row.position
    if position not in ("long", "short"):
        problems.append(f"position must be 'long' or 'short', got {position!r}")
    price_ok = _finite(current_price)
    if not price_ok:
        problems.append(f"current_price is not finite: {current_price!r}")
    elif current_price <= 0:
        problems.append(f"current_price must be positive, got {current_price!r}")
    prices_ok = True
    for name in ("price_open", "price_take_profit", "price_stop_loss"):
        value = getattr(row, name)
        if not _finite(value):
            problems.append(f"{name} is not a finite number: {value!r}")
            prices_ok = False
        elif value <= 0:
            problems.append(f"{name} must be positive, got {value!r}")
            prices_ok = False
    op, tp, sl = row.price_open, row.price_take_profit, row.price_stop_loss
    immediate = not row.is_scheduled
    if prices_ok and position == "long":
        if tp <= op:
            problems.append(f"price_take_profit {tp!r} must be above price_open {op!r} for a long")
        if sl >= op:
            problems.append(f"price_stop_loss {sl!r} must be below price_open {op!r} for a long")
        if immediate and price_ok and current_price <= sl:
            problems.append(f"current_price {current_price!r} is at or below price_stop_loss {sl!r}: stops out at once")
        if immediate and price_ok and current_price >= tp:
            problems.append(f"current_price {current_price!r} is at or above price_take_profit {tp!r}: no profit left")
        tp_dist = (tp - op) / op * 100
        sl_dist = (op - sl) / op * 100
    elif prices_ok and position == "short":
        if tp >= op:
            problems.append(f"price_take_profit {tp!r} must be below price_open {op!r} for a short")
        if sl <= op:
            problems.append(f"price_stop_loss {sl!r} must be above price_open {op!r} for a short")
        if immediate and price_ok and current_price >= sl:
            problems.append(f"current_price {current_price!r} is at or above price_stop_loss {sl!r}: stops out at once")
        if immediate and price_ok and current_price <= tp:
            problems.append(f"current_price {current_price!r} is at or below price_take_profit {tp!r}: no profit left")
        tp_dist = (op - tp) / op * 100
        sl_dist = (sl - op) / op * 100
    else:
        tp_dist = sl_dist = math.nan
    if prices_ok and position in ("long", "short"):
        min_tp = config.CC_MIN_TAKEPROFIT_DISTANCE_PERCENT
        if min_tp and tp_dist < min_tp:
            problems.append(
                f"price_take_profit {tp!r} is {tp_dist:.4f}% from price_open {op!r}; "
                f"CC_MIN_TAKEPROFIT_DISTANCE_PERCENT requires >= {min_tp}%"
            )
        min_sl = config.CC_MIN_STOPLOSS_DISTANCE_PERCENT
        if min_sl and sl_dist < min_sl:
            problems.append(
                f"price_stop_loss {sl!r} is {sl_dist:.4f}% from price_open {op!r}; "
                f"CC_MIN_STOPLOSS_DISTANCE_PERCENT requires >= {min_sl}%"
            )
        max_sl = config.CC_MAX_STOPLOSS_DISTANCE_PERCENT
        if max_sl and sl_dist > max_sl:
            problems.append(
                f"price_stop_loss {sl!r} is {sl_dist:.4f}% from price_open {op!r}; "
                f"CC_MAX_STOPLOSS_DISTANCE_PERCENT allows <= {max_sl}%"
            )
    if prices_ok:
        problems += _implausible_prices(row)
    minutes = row.minute_estimated_time
    if isinstance(minutes, bool) or not isinstance(minutes, int):
        problems.append(f"minute_estimated_time must be a whole number, got {minutes!r}")
    else:
        if minutes <= 0:
            problems.append(f"minute_estimated_time must be positive, got {minutes!r}")
        limit = config.CC_MAX_SIGNAL_LIFETIME_MINUTES
        if limit and minutes > limit:
            problems.append(
                f"minute_estimated_time {minutes!r} exceeds CC_MAX_SIGNAL_LIFETIME_MINUTES {limit}"
            )
    if row.scheduled_at <= 0:
        problems.append(f"scheduled_at must be after the epoch, got {row.scheduled_at!r}")
    if row.pending_at <= 0:
        problems.append(f"pending_at must be after the epoch, got {row.pending_at!r}")
    return problems


# No market moves a price a thousand-fold within one position's life: beyond this a take profit or
# stop loss is a typo or a corrupted snapshot (1e300), not a strategy. Kept apart from the candle
# anomaly factor, which is deliberately tight (a x100 print is bad data, a far stop loss is not).
PRICE_SANITY_FACTOR = 1000.0


def _implausible_prices(row: SignalRow) -> list[str]:
    """Take profit / stop loss more than `PRICE_SANITY_FACTOR` times away from price_open.

    Nothing else bounds a long's take profit, so a typo (or a corrupted snapshot) like 1e300 would
    otherwise pass.
    """
    op = row.price_open
    problems: list[str] = []
    for name in ("price_take_profit", "price_stop_loss"):
        value = getattr(row, name)
        if max(value / op, op / value) > PRICE_SANITY_FACTOR:
            problems.append(
                f"{name} {value!r} is more than {PRICE_SANITY_FACTOR:g} times away from price_open {op!r}"
            )
    return problems


# A restarted process may run on a clock slightly behind the one that wrote the row.
RESTORE_CLOCK_SKEW_MS = 60_000


def restored_row_problems(row: SignalRow, config: Config, now_ms: int) -> list[str]:
    """The checks of a new signal (prices judged at their own open price, since the market has moved
    since), plus time sanity: a row cannot have been scheduled or opened after `now_ms`."""
    problems = signal_problems(row, row.price_open, config)
    for name in ("scheduled_at", "pending_at"):
        value = getattr(row, name)
        if value > now_ms + RESTORE_CLOCK_SKEW_MS:
            problems.append(f"{name} {value!r} is in the future (clock now {now_ms})")
    return problems


def validate_signal(row: SignalRow, current_price: float, config: Config) -> None:
    """Raise one SignalValidationError listing every broken rule."""
    problems = signal_problems(row, current_price, config)
    if problems:
        lines = "\n".join(f"  - {p}" for p in problems)
        raise SignalValidationError(
            f"Invalid signal for {row.position} position ({row.strategy_name} {row.symbol}):\n{lines}"
        )

"""Pure signal maths: PnL, progress towards TP/SL and the close/activation checks.

No I/O and no event loop here, so the state machine's rules can be property-tested directly.
Conventions: times in ms; prices positive floats; a long profits when the price rises.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from .intervals import MINUTE_MS
from .models import Candle, CloseReason, PnL, SignalRow

__all__ = [
    "Outcome",
    "ScheduledAction",
    "close_on_price",
    "expires_at",
    "is_immediate",
    "pnl_of",
    "progress_of",
    "scan_pending",
    "scan_scheduled",
    "scheduled_on_price",
    "window_vwap",
]


def pnl_of(row: SignalRow, close_price: float, slippage_percent: float, fee_percent: float) -> PnL:
    """Net PnL in percent after slippage on both sides and `2 × fee` points
    ([lifecycle §8](../../docs/design/lifecycle.md#8-pnl)).

    long:  o' = o(1+s), c' = c(1−s), pnl = (c' − o') / o' × 100 − 2f
    short: o' = o(1−s), c' = c(1+s), pnl = (o' − c') / o' × 100 − 2f
    The returned prices are the adjusted o' and c'
    ([decision 16](../../docs/design/decisions.md#decision-16-pnl-prices-are-the-adjusted-ones)).
    """
    s = slippage_percent / 100
    o = row.price_open
    if row.position == "long":
        o_adj, c_adj = o * (1 + s), close_price * (1 - s)
        value = (c_adj - o_adj) / o_adj * 100 - 2 * fee_percent
    else:
        o_adj, c_adj = o * (1 - s), close_price * (1 + s)
        value = (o_adj - c_adj) / o_adj * 100 - 2 * fee_percent
    return PnL(value, o_adj, c_adj)


def progress_of(row: SignalRow, price: float) -> tuple[float, float]:
    """(percent_tp, percent_sl): how far the price went towards TP or SL, 0–100, 0 on the other side."""
    o = row.price_open
    d = price - o if row.position == "long" else o - price
    if d > 0:
        span = abs(row.price_take_profit - o)
        return (min(100.0, d / span * 100) if span else 100.0), 0.0
    if d < 0:
        span = abs(o - row.price_stop_loss)
        return 0.0, (min(100.0, -d / span * 100) if span else 100.0)
    return 0.0, 0.0


def expires_at(row: SignalRow) -> int:
    """One expiry rule for every position
    ([decision 3](../../docs/design/decisions.md#decision-3-one-expiry-rule)): pending_at +
    minute_estimated_time."""
    return row.pending_at + row.minute_estimated_time * MINUTE_MS


def close_on_price(row: SignalRow, price: float, now_ms: int) -> tuple[CloseReason, float] | None:
    """Tick-path close check against one price: time first, then TP, then SL."""
    if now_ms >= expires_at(row):
        return "time_expired", price
    if row.position == "long":
        if price >= row.price_take_profit:
            return "take_profit", row.price_take_profit
        if price <= row.price_stop_loss:
            return "stop_loss", row.price_stop_loss
    else:
        if price <= row.price_take_profit:
            return "take_profit", row.price_take_profit
        if price >= row.price_stop_loss:
            return "stop_loss", row.price_stop_loss
    return None


ScheduledAction = Literal["timeout", "stop_loss", "activate"]


def scheduled_on_price(row: SignalRow, price: float, now_ms: int, await_ms: int) -> ScheduledAction | None:
    """Tick-path check of a waiting limit signal: timeout first, then SL cancel, then activation."""
    if now_ms - row.scheduled_at >= await_ms:
        return "timeout"
    if row.position == "long":
        if price <= row.price_stop_loss:
            return "stop_loss"
        if price <= row.price_open:
            return "activate"
    else:
        if price >= row.price_stop_loss:
            return "stop_loss"
        if price >= row.price_open:
            return "activate"
    return None


def is_immediate(position: str, price_open: float, current_price: float) -> bool:
    """A limit entry the market already reached opens at once at the requested price."""
    return current_price <= price_open if position == "long" else current_price >= price_open


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a fast-forward over candles found.

    kind "closed": `reason`, `price` (close price), `timestamp` (candle open time of the close).
    kind "cancelled": a limit signal never filled; `price` is the average price then.
    kind "open": the candles ran out first; `activated_at` tells whether a limit signal filled.
    """

    kind: Literal["closed", "cancelled", "open"]
    timestamp: int = 0
    price: float = 0.0
    reason: CloseReason | None = None
    activated_at: int | None = None
    cancel_reason: Literal["timeout", "stop_loss"] | None = None


def window_vwap(candles: Sequence[Candle], end: int, count: int) -> float:
    """VWAP of candles[max(0, end−count):end] (the `count` candles before index `end`)."""
    start = max(0, end - count)
    if end <= start:
        c = candles[min(end, len(candles) - 1)]
        return (c.high + c.low + c.close) / 3
    weighted = volume = typical_sum = 0.0
    for c in candles[start:end]:
        typical = (c.high + c.low + c.close) / 3
        weighted += typical * c.volume
        volume += c.volume
        typical_sum += typical
    return weighted / volume if volume > 0 else typical_sum / (end - start)


def scan_pending(
    row: SignalRow, candles: Sequence[Candle], start: int, vwap_count: int, same_candle_open: bool = False
) -> Outcome:
    """Walk candles[start:] for an open position: expiry (before the candle), then TP, then SL.

    A candle's high/low is compared with TP/SL; TP wins when one candle reaches both. Expiry fires
    on the first candle opening at or after `pending_at + minute_estimated_time`, at the average price
    of the `vwap_count` candles closed by then. `same_candle_open` marks that candles[start] is the
    activation candle: it is checked for TP (its low reached the entry, so SL was not touched).
    """
    expiry = expires_at(row)
    tp, sl = row.price_take_profit, row.price_stop_loss
    long = row.position == "long"
    first = start
    if same_candle_open and start < len(candles):  # the activation candle: expiry and TP only
        c = candles[start]
        if c.timestamp >= expiry:
            return Outcome("closed", c.timestamp, window_vwap(candles, start, vwap_count), "time_expired")
        if (c.high >= tp) if long else (c.low <= tp):
            return Outcome("closed", c.timestamp, tp, "take_profit")
        first = start + 1
    # The hot loop of a backtest (every minute of every position): one branch per side, so a candle
    # costs three comparisons and no per-candle test of the side or of the activation candle.
    if long:
        for i in range(first, len(candles)):
            c = candles[i]
            if c.timestamp >= expiry:
                return Outcome("closed", c.timestamp, window_vwap(candles, i, vwap_count), "time_expired")
            if c.high >= tp:
                return Outcome("closed", c.timestamp, tp, "take_profit")
            if c.low <= sl:
                return Outcome("closed", c.timestamp, sl, "stop_loss")
    else:
        for i in range(first, len(candles)):
            c = candles[i]
            if c.timestamp >= expiry:
                return Outcome("closed", c.timestamp, window_vwap(candles, i, vwap_count), "time_expired")
            if c.low <= tp:
                return Outcome("closed", c.timestamp, tp, "take_profit")
            if c.high >= sl:
                return Outcome("closed", c.timestamp, sl, "stop_loss")
    return Outcome("open")


def scan_scheduled(
    row: SignalRow, candles: Sequence[Candle], start: int, vwap_count: int, await_ms: int
) -> tuple[Outcome, int | None]:
    """Walk candles[start:] for a waiting limit signal.

    Per candle: the await timeout first, then a stop-loss touch cancels (it beats activation on the
    same candle), then a touch of `price_open` activates with `pending_at` = that candle's open time.
    Returns the outcome and the index of the activation candle (None when it never filled).
    """
    long = row.position == "long"
    op, sl = row.price_open, row.price_stop_loss
    for i in range(start, len(candles)):
        c = candles[i]
        if c.timestamp - row.scheduled_at >= await_ms:
            return Outcome("cancelled", c.timestamp, window_vwap(candles, i, vwap_count),
                           cancel_reason="timeout"), None
        if long:
            if c.low <= sl:
                return Outcome("cancelled", c.timestamp, window_vwap(candles, i + 1, vwap_count),
                               cancel_reason="stop_loss"), None
            if c.low <= op:
                return Outcome("open", activated_at=c.timestamp), i
        else:
            if c.high >= sl:
                return Outcome("cancelled", c.timestamp, window_vwap(candles, i + 1, vwap_count),
                               cancel_reason="stop_loss"), None
            if c.high >= op:
                return Outcome("open", activated_at=c.timestamp), i
    return Outcome("open"), None

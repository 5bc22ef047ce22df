"""The running strategy's context, for the helpers usable inside `get_signal` and callbacks.

A contextvar (not a global) so that concurrent pairs on one loop each see their own symbol and time,
and so that nothing after the tick time is reachable from user code: the helpers read `when` from
here and the exchange client only returns candles closed by then.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Literal

from .errors import BacktestKitError

if TYPE_CHECKING:
    from .exchange import ExchangeClient
    from .models import Candle

__all__ = [
    "ExecutionContext",
    "current_context",
    "enter",
    "execution_context",
    "format_price",
    "format_quantity",
    "get_average_price",
    "get_candles",
    "get_date",
    "get_mode",
    "leave",
]


@dataclass(frozen=True, slots=True)
class ExecutionContext:
    symbol: str
    when_ms: int
    backtest: bool
    exchange: ExchangeClient
    strategy_name: str = ""


_current: ContextVar[ExecutionContext | None] = ContextVar("backtest_kit_context", default=None)


def current_context() -> ExecutionContext:
    ctx = _current.get()
    if ctx is None:
        raise BacktestKitError(
            "this helper needs a running strategy context: call it inside get_signal or a strategy "
            "callback, or wrap the call in bk.execution_context(...)"
        )
    return ctx


def enter(ctx: ExecutionContext) -> object:
    return _current.set(ctx)


def leave(token: object) -> None:
    _current.reset(token)  # type: ignore[arg-type]


@contextmanager
def execution_context(
    *, symbol: str, when: datetime, backtest: bool, exchange: ExchangeClient, strategy_name: str = ""
) -> Iterator[ExecutionContext]:
    """Run helper calls as if inside a tick at `when` (useful in tests and notebooks)."""
    ctx = ExecutionContext(symbol, int(when.timestamp() * 1000), backtest, exchange, strategy_name)
    token = _current.set(ctx)
    try:
        yield ctx
    finally:
        _current.reset(token)


async def get_candles(symbol: str, interval: str, limit: int) -> list[Candle]:
    """The newest `limit` closed candles of `symbol` at the tick time (never a later candle)."""
    ctx = current_context()
    return await ctx.exchange.get_candles(symbol, interval, limit, ctx.when_ms)


async def get_average_price(symbol: str) -> float:
    """VWAP of the last CC_AVG_PRICE_CANDLES_COUNT closed 1m candles at the tick time."""
    ctx = current_context()
    return await ctx.exchange.average_price(symbol, ctx.when_ms)


async def format_price(symbol: str, price: float) -> str:
    return await current_context().exchange.format_price(symbol, price)


async def format_quantity(symbol: str, quantity: float) -> str:
    return await current_context().exchange.format_quantity(symbol, quantity)


def get_date() -> datetime:
    """The tick time (simulated in a backtest)."""
    return datetime.fromtimestamp(current_context().when_ms / 1000, UTC)


def get_mode() -> Literal["backtest", "live"]:
    return "backtest" if current_context().backtest else "live"

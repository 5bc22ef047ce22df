"""Position sizing ([risk-sizing §2](../../docs/design/risk-sizing-portfolio.md#2-position-sizing)): the
built-in calculators, the custom `get_quantity` form, limits.

Two registration forms ([risk-sizing §2.4](../../docs/design/risk-sizing-portfolio.md#24-the-get_quantity-form)):

- `add_sizing(sizing_name=..., get_quantity=fn)` (or `method="custom"`): when a strategy naming the
  sizing opens a position, the engine calls `fn(symbol, signal_row, current_price)` (sync or async,
  inside the strategy's execution context, so `bk.get_average_price` works) and attaches the result
  to the opened row as `quantity`. `min_position_size` / `max_position_size` then apply. The result
  must be a finite number >= 0, otherwise the open fails with a `SizingError` naming the sizing (the
  error is reported through `listen_error`, the tick ends idle).
- `add_sizing(sizing_name=..., method="fixed-percentage" | "kelly-criterion" | "atr-based", ...)`: pure
  calculators reachable through `bk.PositionSize`; they need an account balance, so the engine does
  not size positions with them automatically.

Formulas ([risk-sizing §2.2](../../docs/design/risk-sizing-portfolio.md#22-calculation)), then the
limits in this order: `max_position_percentage` (a cap on the position value as a percent of the
balance), `min_position_size`, `max_position_size` (applied last: it wins over the minimum). No rounding
happens here; use `bk.format_quantity` for exchange precision.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Final

from ..engine import context
from ..engine.errors import SchemaError, SizingError
from ..engine.models import SignalRow
from ..engine.registry import SizingSchema

if TYPE_CHECKING:
    from ..engine.exchange import ExchangeClient
    from ..engine.ports import Services

__all__ = [
    "METHOD_PARAMS",
    "Constant",
    "CustomSizer",
    "PositionSize",
    "PositionSizeFacade",
    "SizingError",
    "apply_limits",
    "atr_based_quantity",
    "check_sizing_schema",
    "fixed_percentage_quantity",
    "kelly_criterion_quantity",
]


LIMIT_PARAMS: Final = ("max_position_percentage", "min_position_size", "max_position_size")
METHOD_PARAMS: Final[Mapping[str, tuple[str, ...]]] = {
    "fixed-percentage": ("risk_percentage", *LIMIT_PARAMS),
    "kelly-criterion": ("kelly_multiplier", *LIMIT_PARAMS),
    "atr-based": ("risk_percentage", "atr_multiplier", *LIMIT_PARAMS),
    "custom": ("min_position_size", "max_position_size"),
}
REQUIRED_PARAMS: Final[Mapping[str, tuple[str, ...]]] = {
    "fixed-percentage": ("risk_percentage",),
    "atr-based": ("risk_percentage",),
}
DEFAULT_ATR_MULTIPLIER: Final = 2.0
DEFAULT_KELLY_MULTIPLIER: Final = 0.25


class Constant:
    """Milestones for scaling out, in percent of the way from entry to the target
    ([risk-sizing §2.5](../../docs/design/risk-sizing-portfolio.md#25-level-constants))."""

    TP_LEVEL1: Final = 30
    TP_LEVEL2: Final = 60
    TP_LEVEL3: Final = 90
    SL_LEVEL1: Final = 40
    SL_LEVEL2: Final = 80


def check_sizing_schema(schema: SizingSchema) -> None:
    """Method-specific checks
    ([risk-sizing §2.1](../../docs/design/risk-sizing-portfolio.md#21-schema)): known parameter names,
    required `risk_percentage`, callbacks."""
    method = schema.method or "custom"
    allowed = METHOD_PARAMS[method]
    for key in schema.params:
        if key not in allowed:
            raise SchemaError(
                f"{key}: not a parameter of sizing {schema.sizing_name!r} (method {method}); "
                f"expected one of {', '.join(allowed)}"
            )
    for key in REQUIRED_PARAMS.get(method, ()):
        if key not in schema.params:
            raise SchemaError(f"{key}: required by method {method} of sizing {schema.sizing_name!r}")
    for key in ("min_position_size", "max_position_size", "max_position_percentage"):
        value = schema.params.get(key)
        if value is not None and value < 0:
            raise SchemaError(f"{key}: expected a number >= 0 for sizing {schema.sizing_name!r}, got {value!r}")
    for key, fn in schema.callbacks.items():
        if key != "on_calculate" or not callable(fn):
            raise SchemaError(f"callbacks.{key}: expected {{'on_calculate': callable}}, got {fn!r}")


# ---------------------------------------------------------------------------------------------------------
# Pure formulas
# ---------------------------------------------------------------------------------------------------------


def _num(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise SizingError(f"{name}: expected a finite number, got {value!r}")
    return float(value)


def _inputs(account_balance: Any, price_open: Any) -> tuple[float, float]:
    balance = _num("account_balance", account_balance)
    if balance < 0:
        raise SizingError(f"account_balance: expected a number >= 0, got {account_balance!r}")
    price = _num("price_open", price_open)
    if price <= 0:
        raise SizingError(f"price_open: expected a number > 0, got {price_open!r}")
    return balance, price


def fixed_percentage_quantity(
    account_balance: float, price_open: float, price_stop_loss: float, risk_percentage: float
) -> float:
    """(balance × risk % / 100) / |price_open − price_stop_loss|; a zero stop distance is an error."""
    balance, price = _inputs(account_balance, price_open)
    distance = abs(price - _num("price_stop_loss", price_stop_loss))
    if distance == 0:
        raise SizingError("price_stop_loss: the stop distance is zero (price_stop_loss == price_open)")
    return balance * _num("risk_percentage", risk_percentage) / 100 / distance


def kelly_criterion_quantity(
    account_balance: float, price_open: float, win_rate: float, win_loss_ratio: float,
    kelly_multiplier: float = DEFAULT_KELLY_MULTIPLIER,
) -> float:
    """balance × max(0, k) × multiplier / price_open with k = (w·r − (1 − w)) / r; needs 0 < w < 1, r > 0."""
    balance, price = _inputs(account_balance, price_open)
    w = _num("win_rate", win_rate)
    r = _num("win_loss_ratio", win_loss_ratio)
    if not 0 < w < 1:
        raise SizingError(f"win_rate: expected 0 < win_rate < 1, got {win_rate!r}")
    if r <= 0:
        raise SizingError(f"win_loss_ratio: expected a number > 0, got {win_loss_ratio!r}")
    k = max(0.0, (w * r - (1 - w)) / r)
    return balance * k * _num("kelly_multiplier", kelly_multiplier) / price


def atr_based_quantity(
    account_balance: float, price_open: float, atr: float, risk_percentage: float,
    atr_multiplier: float = DEFAULT_ATR_MULTIPLIER,
) -> float:
    """(balance × risk % / 100) / (atr × multiplier); needs atr > 0."""
    balance, _ = _inputs(account_balance, price_open)
    a = _num("atr", atr)
    if a <= 0:
        raise SizingError(f"atr: expected a number > 0, got {atr!r}")
    divisor = a * _num("atr_multiplier", atr_multiplier)
    if divisor == 0:
        raise SizingError("atr_multiplier: must not be zero")
    return balance * _num("risk_percentage", risk_percentage) / 100 / divisor


def apply_limits(
    quantity: float, *, account_balance: float | None = None, price_open: float | None = None,
    max_position_percentage: float | None = None, min_position_size: float | None = None,
    max_position_size: float | None = None,
) -> float:
    """Percentage cap, then the minimum, then the maximum (the maximum wins a conflict),
    [risk-sizing §2.2](../../docs/design/risk-sizing-portfolio.md#22-calculation)."""
    if max_position_percentage is not None and account_balance is not None and price_open:
        quantity = min(quantity, account_balance * max_position_percentage / 100 / price_open)
    if min_position_size is not None:
        quantity = max(quantity, min_position_size)
    if max_position_size is not None:
        quantity = min(quantity, max_position_size)
    return quantity


def _limits(params: Mapping[str, Any]) -> dict[str, float | None]:
    return {k: (float(params[k]) if k in params else None) for k in LIMIT_PARAMS}


# ---------------------------------------------------------------------------------------------------------
# The facade and the engine-side sizer
# ---------------------------------------------------------------------------------------------------------


async def _on_calculate(engine: Services, schema: SizingSchema, quantity: float, params: dict[str, Any]) -> None:
    fn: Callable[..., Any] | None = schema.callbacks.get("on_calculate")
    if fn is None:
        return
    try:
        result = fn(quantity, params)
        if inspect.isawaitable(result):
            await result
    except Exception as exc:  # a broken callback never changes the quantity
        await engine.report_error(exc)


class PositionSizeFacade:
    """`bk.PositionSize`: the built-in calculators of registered sizings
    ([risk-sizing §2.3](../../docs/design/risk-sizing-portfolio.md#23-the-positionsize-helper))."""

    def __init__(self, engine: Services) -> None:
        self._engine = engine

    def _schema(self, sizing_name: str, method: str, source: str) -> SizingSchema:
        schema = self._engine.registry.sizings.get(sizing_name, f"PositionSize.{source}")
        configured = schema.method or "custom"
        if configured != method:
            raise SizingError(
                f"Sizing method mismatch: sizing {sizing_name!r} is configured as {configured} "
                f"but {method} was requested (PositionSize.{source})"
            )
        return schema

    async def _finish(self, schema: SizingSchema, raw: float, balance: float, price_open: float,
                      params: dict[str, Any]) -> float:
        quantity = apply_limits(raw, account_balance=float(balance), price_open=float(price_open),
                                **_limits(schema.params))
        await _on_calculate(self._engine, schema, quantity, params)
        return quantity

    async def fixed_percentage(
        self, symbol: str, account_balance: float, price_open: float, price_stop_loss: float, *,
        sizing_name: str,
    ) -> float:
        """Quantity risking `risk_percentage` % of the balance between entry and stop loss."""
        schema = self._schema(sizing_name, "fixed-percentage", "fixed_percentage")
        p = schema.params
        raw = fixed_percentage_quantity(account_balance, price_open, price_stop_loss, p["risk_percentage"])
        params = {"method": "fixed-percentage", "symbol": symbol, "account_balance": account_balance,
                  "price_open": price_open, "price_stop_loss": price_stop_loss}
        return await self._finish(schema, raw, account_balance, price_open, params)

    async def kelly_criterion(
        self, symbol: str, account_balance: float, price_open: float, win_rate: float, win_loss_ratio: float,
        *, sizing_name: str,
    ) -> float:
        """Fractional Kelly: balance × k × `kelly_multiplier` (default 0.25) / price_open."""
        schema = self._schema(sizing_name, "kelly-criterion", "kelly_criterion")
        multiplier = schema.params.get("kelly_multiplier", DEFAULT_KELLY_MULTIPLIER)
        raw = kelly_criterion_quantity(account_balance, price_open, win_rate, win_loss_ratio, multiplier)
        params = {"method": "kelly-criterion", "symbol": symbol, "account_balance": account_balance,
                  "price_open": price_open, "win_rate": win_rate, "win_loss_ratio": win_loss_ratio}
        return await self._finish(schema, raw, account_balance, price_open, params)

    async def atr_based(
        self, symbol: str, account_balance: float, price_open: float, atr: float, *, sizing_name: str,
    ) -> float:
        """Quantity risking `risk_percentage` % of the balance over `atr_multiplier` (default 2) ATRs."""
        schema = self._schema(sizing_name, "atr-based", "atr_based")
        p = schema.params
        raw = atr_based_quantity(account_balance, price_open, atr, p["risk_percentage"],
                                 p.get("atr_multiplier", DEFAULT_ATR_MULTIPLIER))
        params = {"method": "atr-based", "symbol": symbol, "account_balance": account_balance,
                  "price_open": price_open, "atr": atr}
        return await self._finish(schema, raw, account_balance, price_open, params)


async def format_quantities(
    engine: Services, items: Iterable[tuple[str, str, str | None, float | None]]
) -> dict[str, str]:
    """{signal id: quantity text} for report rows (exchange, symbol, signal id, quantity) that have a
    quantity, formatted by the exchange's `format_quantity` (the default format if it fails)."""
    out: dict[str, str] = {}
    for exchange_name, symbol, signal_id, quantity in items:
        if quantity is None or signal_id is None or signal_id in out:
            continue
        try:
            out[signal_id] = await engine.exchange(exchange_name).format_quantity(symbol, quantity)
        except Exception as exc:
            engine.logger.warn(f"format_quantity failed for {symbol} on {exchange_name!r}", repr(exc))
            out[signal_id] = f"{quantity:.8f}".rstrip("0").rstrip(".") or "0"
    return out


PositionSize = PositionSizeFacade
"""The class's name before the `…Facade` naming convention (README, Architecture); kept importable."""


class CustomSizer:
    """The engine's `Sizer` for a `get_quantity` sizing, bound to one strategy instance."""

    def __init__(self, engine: Services, schema: SizingSchema, exchange: ExchangeClient, symbol: str,
                 strategy_name: str, backtest: bool) -> None:
        assert schema.get_quantity is not None
        self._engine = engine
        self._schema = schema
        self._fn: Callable[..., Any] = schema.get_quantity
        self._exchange = exchange
        self._symbol = symbol
        self._strategy_name = strategy_name
        self._backtest = backtest
        self._limits = _limits(schema.params)

    async def quantity(self, row: SignalRow, current_price: float) -> float | None:
        name = self._schema.sizing_name
        token = context.enter(context.ExecutionContext(
            self._symbol, row.pending_at, self._backtest, self._exchange, self._strategy_name))
        try:
            result = self._fn(self._symbol, row, current_price)
            if inspect.isawaitable(result):
                result = await result
        finally:
            context.leave(token)
        if isinstance(result, bool) or not isinstance(result, int | float) or not math.isfinite(result) \
                or result < 0:
            raise SizingError(
                f"sizing {name!r}: get_quantity must return a finite number >= 0, got {result!r} "
                f"(symbol {self._symbol}, signal {row.id})"
            )
        quantity = apply_limits(float(result), min_position_size=self._limits["min_position_size"],
                                max_position_size=self._limits["max_position_size"])
        await _on_calculate(self._engine, self._schema, quantity,
                            {"method": "custom", "symbol": self._symbol, "signal": row,
                             "current_price": current_price})
        return quantity

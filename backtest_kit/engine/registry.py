"""Registration of exchanges, strategies, frames, risk profiles and sizing methods.

Every schema is checked completely before its name is taken, so a failed `add_*` leaves nothing
behind and a corrected retry succeeds (the reference records the name first; we do not).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any, Generic, TypeVar

from .errors import SchemaError, UnknownNameError
from .intervals import FRAME_INTERVALS, SIGNAL_INTERVALS

__all__ = [
    "SIZING_METHODS",
    "WALKER_METRICS",
    "AnyCallable",
    "ExchangeSchema",
    "FrameSchema",
    "Registry",
    "RiskSchema",
    "RiskValidation",
    "SizingSchema",
    "StrategyCallbacks",
    "StrategySchema",
    "Table",
    "WalkerCallbacks",
    "WalkerSchema",
    "make_exchange",
    "make_frame",
    "make_risk",
    "make_sizing",
    "make_strategy",
    "make_walker",
    "metric_lower_is_better",
]

AnyCallable = Callable[..., Any]


_C = TypeVar("_C")


def _coerce_callbacks(cls: type[_C], value: _C | Mapping[str, Any] | None, what: str) -> _C:
    """A callbacks dataclass from itself, a dict of its field names, or None; an unknown key or a
    non-callable value is a `SchemaError` naming it (shared by strategy and walker callbacks)."""
    if value is None:
        return cls()
    if isinstance(value, cls):
        result = value
    elif isinstance(value, Mapping):
        known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        unknown = [k for k in value if k not in known]
        if unknown:
            raise SchemaError(f"callbacks: unknown {what} {unknown[0]!r}; known: {', '.join(sorted(known))}")
        result = cls(**dict(value))
    else:
        raise SchemaError(f"callbacks: expected {cls.__name__} or a dict, got {value!r}")
    for f in fields(result):  # type: ignore[arg-type]
        fn = getattr(result, f.name)
        if fn is not None and not callable(fn):
            raise SchemaError(f"callbacks.{f.name}: expected a callable, got {fn!r}")
    return result


@dataclass(frozen=True, slots=True)
class StrategyCallbacks:
    """Strategy lifecycle callbacks; each is optional and may be sync or async (awaited)."""

    on_tick: AnyCallable | None = None
    on_open: AnyCallable | None = None
    on_active: AnyCallable | None = None
    on_idle: AnyCallable | None = None
    on_schedule: AnyCallable | None = None
    on_cancel: AnyCallable | None = None
    on_close: AnyCallable | None = None
    on_write: AnyCallable | None = None
    on_partial_profit: AnyCallable | None = None
    on_partial_loss: AnyCallable | None = None

    @classmethod
    def coerce(cls, value: StrategyCallbacks | Mapping[str, Any] | None) -> StrategyCallbacks:
        """Accept the dataclass, a dict of the same keys, or None; reject unknown keys."""
        return _coerce_callbacks(cls, value, "callback")


@dataclass(frozen=True, slots=True)
class ExchangeSchema:
    exchange_name: str
    get_candles: AnyCallable
    format_price: AnyCallable | None = None
    format_quantity: AnyCallable | None = None
    note: str | None = None
    on_candle_data: AnyCallable | None = None
    on_close: AnyCallable | None = None


@dataclass(frozen=True, slots=True)
class StrategySchema:
    strategy_name: str
    interval: str
    get_signal: AnyCallable
    callbacks: StrategyCallbacks = field(default_factory=StrategyCallbacks)
    risk_name: str | None = None
    sizing_name: str | None = None
    note: str | None = None


@dataclass(frozen=True, slots=True)
class FrameSchema:
    frame_name: str
    interval: str
    start_date: datetime
    end_date: datetime
    note: str | None = None
    on_timeframe: AnyCallable | None = None


@dataclass(frozen=True, slots=True)
class RiskValidation:
    validate: AnyCallable
    note: str | None = None


@dataclass(frozen=True, slots=True)
class RiskSchema:
    risk_name: str
    max_concurrent_positions: int | None = None
    validations: tuple[RiskValidation, ...] = ()
    callbacks: Mapping[str, AnyCallable] = field(default_factory=dict)
    note: str | None = None


@dataclass(frozen=True, slots=True)
class SizingSchema:
    sizing_name: str
    get_quantity: AnyCallable | None = None
    method: str | None = None
    params: Mapping[str, Any] = field(default_factory=dict)
    note: str | None = None
    callbacks: Mapping[str, AnyCallable] = field(default_factory=dict)


SIZING_METHODS = ("fixed-percentage", "kelly-criterion", "atr-based")

# ---------------------------------------------------------------------------------------------------------
# Walker (strategy comparison)
# ---------------------------------------------------------------------------------------------------------

WALKER_METRICS = (
    "sharpe_ratio",
    "annualized_sharpe_ratio",
    "sortino_ratio",
    "win_rate",
    "total_pnl",
    "avg_pnl",
    "certainty_ratio",
    "expected_yearly_returns",
    "profit_factor",
    "expectancy",
    "max_drawdown",
)
"""`Statistics` fields a walker may rank by
([risk-sizing §4](../../docs/design/risk-sizing-portfolio.md#4-walker)): the reference's seven, plus the
port's `sortino_ratio`, `profit_factor`, `expectancy` and `max_drawdown`. Names only: the engine core
cannot import `Statistics` (reports layer); `tests/test_walker.py` checks each is a field of it."""

_LOWER_IS_BETTER = frozenset({"max_drawdown"})


def metric_lower_is_better(metric: str) -> bool:
    """True for the metrics where a smaller value ranks first (a drawdown); every other is higher-better."""
    return metric in _LOWER_IS_BETTER


@dataclass(frozen=True, slots=True)
class WalkerCallbacks:
    """Walker callbacks; each optional, sync or async (awaited). `on_strategy_start(strategy_name, symbol)`,
    `on_strategy_complete(strategy_name, symbol, stats, metric_value)`, `on_strategy_error(strategy_name,
    symbol, error)`, `on_complete(results)`."""

    on_strategy_start: AnyCallable | None = None
    on_strategy_complete: AnyCallable | None = None
    on_strategy_error: AnyCallable | None = None
    on_complete: AnyCallable | None = None

    @classmethod
    def coerce(cls, value: WalkerCallbacks | Mapping[str, Any] | None) -> WalkerCallbacks:
        """Accept the dataclass, a dict of the same keys, or None; reject unknown keys and non-callables."""
        return _coerce_callbacks(cls, value, "walker callback")


@dataclass(frozen=True, slots=True)
class WalkerSchema:
    """A strategy comparison: every strategy of `strategies`, in order, backtested on the walker's
    exchange and frame, ranked by `metric`."""

    walker_name: str
    exchange_name: str
    frame_name: str
    strategies: tuple[str, ...]
    metric: str = "sharpe_ratio"
    callbacks: WalkerCallbacks = field(default_factory=WalkerCallbacks)
    note: str | None = None


def make_walker(
    walker_name: Any, exchange_name: Any, frame_name: Any, strategies: Any, metric: Any, callbacks: Any, note: Any
) -> WalkerSchema:
    """Check a walker completely (names, a non-empty list of distinct strategy names, a known metric).

    Whether the exchange, frame and strategies exist is checked when the walker runs (reference).
    """
    name = _name("walker", walker_name)
    exchange = _name("exchange", exchange_name)
    frame = _name("frame", frame_name)
    if isinstance(strategies, str | bytes) or not isinstance(strategies, Sequence):
        raise SchemaError(f"strategies: expected a list of strategy names for walker {name!r}, got {strategies!r}")
    if not strategies:
        raise SchemaError(f"strategies: expected at least one strategy name for walker {name!r}, got []")
    for i, item in enumerate(strategies):
        if not isinstance(item, str) or not item.strip():
            raise SchemaError(f"strategies[{i}]: expected a non-empty strategy name, got {item!r}")
    seen: set[str] = set()
    for item in strategies:
        if item in seen:  # the walker store is keyed by strategy name: a repeat would overwrite itself
            raise SchemaError(f"strategies: strategy {item!r} is listed twice for walker {name!r}")
        seen.add(item)
    if not isinstance(metric, str) or metric not in WALKER_METRICS:
        raise SchemaError(
            f"metric: unknown walker metric {metric!r} for walker {name!r}; expected one of {', '.join(WALKER_METRICS)}"
        )
    return WalkerSchema(name, exchange, frame, tuple(strategies), metric, WalkerCallbacks.coerce(callbacks),
                        _note(note))


def _name(kind: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise SchemaError(f"{kind}_name: expected a non-empty string, got {value!r}")
    return value


def _callable(field_name: str, value: Any, *, required: bool = True) -> AnyCallable | None:
    if value is None and not required:
        return None
    if not callable(value):
        raise SchemaError(f"{field_name}: expected a callable, got {value!r}")
    return value  # type: ignore[no-any-return]


def _note(value: Any) -> str | None:
    if value is not None and not isinstance(value, str):
        raise SchemaError(f"note: expected a string, got {value!r}")
    return value


def _date(field_name: str, value: Any) -> datetime:
    if not isinstance(value, datetime):
        raise SchemaError(f"{field_name}: expected a datetime, got {value!r}")
    if value.tzinfo is None:
        raise SchemaError(f"{field_name}: expected a timezone-aware datetime (UTC), got naive {value!r}")
    return value


def make_exchange(
    exchange_name: Any, get_candles: Any, format_price: Any, format_quantity: Any, note: Any,
    on_candle_data: Any, on_close: Any,
) -> ExchangeSchema:
    return ExchangeSchema(
        exchange_name=_name("exchange", exchange_name),
        get_candles=_callable("get_candles", get_candles),  # type: ignore[arg-type]
        format_price=_callable("format_price", format_price, required=False),
        format_quantity=_callable("format_quantity", format_quantity, required=False),
        note=_note(note),
        on_candle_data=_callable("on_candle_data", on_candle_data, required=False),
        on_close=_callable("on_close", on_close, required=False),
    )


def make_strategy(
    strategy_name: Any, interval: Any, get_signal: Any, callbacks: Any, risk_name: Any,
    sizing_name: Any, note: Any,
) -> StrategySchema:
    name = _name("strategy", strategy_name)
    if not isinstance(interval, str) or interval not in SIGNAL_INTERVALS:
        raise SchemaError(
            f"interval: unknown strategy interval {interval!r} for strategy {name!r}; "
            f"expected one of {', '.join(SIGNAL_INTERVALS)}"
        )
    for label, value in (("risk_name", risk_name), ("sizing_name", sizing_name)):
        if value is not None and (not isinstance(value, str) or not value):
            raise SchemaError(f"{label}: expected a non-empty string or None, got {value!r}")
    return StrategySchema(
        strategy_name=name,
        interval=interval,
        get_signal=_callable("get_signal", get_signal),  # type: ignore[arg-type]
        callbacks=StrategyCallbacks.coerce(callbacks),
        risk_name=risk_name,
        sizing_name=sizing_name,
        note=_note(note),
    )


def make_frame(
    frame_name: Any, interval: Any, start_date: Any, end_date: Any, note: Any, on_timeframe: Any
) -> FrameSchema:
    name = _name("frame", frame_name)
    if not isinstance(interval, str) or interval not in FRAME_INTERVALS:
        raise SchemaError(
            f"interval: unknown frame interval {interval!r} for frame {name!r}; "
            f"expected one of {', '.join(FRAME_INTERVALS)}"
        )
    start, end = _date("start_date", start_date), _date("end_date", end_date)
    if start >= end:
        raise SchemaError(f"start_date: must be before end_date, got {start.isoformat()} >= {end.isoformat()}")
    return FrameSchema(name, interval, start, end, _note(note),
                       _callable("on_timeframe", on_timeframe, required=False))


def make_risk(
    risk_name: Any, max_concurrent_positions: Any, validations: Any, callbacks: Any, note: Any
) -> RiskSchema:
    name = _name("risk", risk_name)
    if max_concurrent_positions is not None and (
        isinstance(max_concurrent_positions, bool)
        or not isinstance(max_concurrent_positions, int)
        or max_concurrent_positions < 0
    ):
        raise SchemaError(
            f"max_concurrent_positions: expected a whole number >= 0 or None, got {max_concurrent_positions!r}"
        )
    if validations is None:
        validations = []
    if isinstance(validations, str | bytes) or not isinstance(validations, Sequence):
        raise SchemaError(f"validations: expected a list, got {validations!r}")
    items: list[RiskValidation] = []
    for i, item in enumerate(validations):
        if callable(item):
            items.append(RiskValidation(item))
        elif isinstance(item, Mapping) and callable(item.get("validate")):
            extra = set(item) - {"validate", "note"}
            if extra:
                raise SchemaError(f"validations[{i}]: unknown key {sorted(extra)[0]!r}")
            items.append(RiskValidation(item["validate"], _note(item.get("note"))))
        else:
            raise SchemaError(
                f"validations[{i}]: expected a callable or {{'validate': fn, 'note': str}}, got {item!r}"
            )
    if callbacks is not None and not isinstance(callbacks, Mapping):
        raise SchemaError(f"callbacks: expected a dict of on_rejected/on_allowed callables, got {callbacks!r}")
    cbs = dict(callbacks or {})
    for key, fn in cbs.items():
        if key not in ("on_rejected", "on_allowed") or not callable(fn):
            raise SchemaError(f"callbacks.{key}: expected on_rejected/on_allowed callables, got {fn!r}")
    return RiskSchema(name, max_concurrent_positions, tuple(items), cbs, _note(note))


def make_sizing(
    sizing_name: Any, get_quantity: Any, method: Any, params: Mapping[str, Any], note: Any
) -> SizingSchema:
    name = _name("sizing", sizing_name)
    if (get_quantity is None) == (method is None):
        raise SchemaError(
            f"sizing {name!r}: give exactly one of get_quantity= or method= ({', '.join(SIZING_METHODS)})"
        )
    if method is not None and method not in SIZING_METHODS:
        raise SchemaError(f"method: unknown sizing method {method!r}; expected one of {', '.join(SIZING_METHODS)}")
    for key, value in params.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise SchemaError(f"{key}: expected a finite number, got {value!r}")
    return SizingSchema(name, _callable("get_quantity", get_quantity, required=False), method,
                        dict(params), _note(note))


S = TypeVar("S")


class Table(Generic[S]):
    """Schemas of one kind by name, in registration order."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, S] = {}

    def add(self, name: str, schema: S) -> S:
        if name in self._items:
            raise SchemaError(f"{self.kind} {name} already exist")
        self._items[name] = schema
        return schema

    def get(self, name: str, source: str = "") -> S:
        try:
            return self._items[name]
        except (KeyError, TypeError):
            where = f" source={source}" if source else ""
            raise UnknownNameError(f"{self.kind} {name} not found{where}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def list(self) -> list[S]:
        return list(self._items.values())


class Registry:
    """All registered schemas of one engine."""

    def __init__(self) -> None:
        self.exchanges: Table[ExchangeSchema] = Table("exchange")
        self.strategies: Table[StrategySchema] = Table("strategy")
        self.frames: Table[FrameSchema] = Table("frame")
        self.risks: Table[RiskSchema] = Table("risk")
        self.sizings: Table[SizingSchema] = Table("sizing")
        self.walkers: Table[WalkerSchema] = Table("walker")



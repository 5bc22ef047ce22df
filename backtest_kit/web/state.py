"""What the dashboard shows, folded from the engine's events: instances, positions, recent events,
per-pair statistics, equity curves, risk rejections, partial levels and errors.

Why fold events rather than read the engine: the same state serves a dashboard beside an engine and one
fed by `bk.RemoteEvents` in a process without an engine (`backtest-kit dashboard --from-nats`). Where an
engine is attached, `Overview` still asks it for what only it knows exactly: the instances' status and
errors (`Live.list`) and each pair's statistics over its whole run (`Live.get_data`).

The `on_*` methods run inside bus delivery, so they only record: an active tick keeps the result (its
`PositionView` is built when a snapshot is taken, not per tick), and every bounded table is a deque.
Nothing here awaits or does I/O.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from ..engine.config import DEFAULT_CONFIG, Config
from ..engine.lifecycle import pnl_of
from ..engine.models import (
    ActiveResult,
    ClosedResult,
    DoneEvent,
    PartialEvent,
    RiskEvent,
    SignalRow,
    TickResult,
)
from ..engine.redact import redact
from ..reports.stats import Statistics, TradeAggregate, finite_or_none, statistics_from_aggregate
from .models import (
    EquityCurve,
    EquityPoint,
    ErrorView,
    EventView,
    InstanceView,
    Overview,
    PairStats,
    PartialView,
    PositionView,
    RiskView,
)

if TYPE_CHECKING:
    from ..system.engine import Engine

__all__ = ["DashboardState"]

Pair = tuple[str, str]  # (symbol, strategy_name)


def _wall_ms() -> int:
    return int(time.time() * 1000)


@dataclass(slots=True)
class _Instance:
    symbol: str
    strategy_name: str
    exchange_name: str
    ticks: int = 0
    last_tick_ms: int | None = None
    last_price: float | None = None
    last_action: str | None = None
    done: bool = False


@dataclass(slots=True)
class _Open:
    """The last result of a pair with a signal (opened, scheduled or active) and when it came."""

    result: TickResult
    signal: SignalRow
    percent_tp: float
    percent_sl: float
    at_ms: int


def _event_time(result: TickResult, now_ms: int) -> int:
    action = result.action
    if action in ("closed", "cancelled"):
        return int(result.close_timestamp)  # type: ignore[union-attr]
    signal = result.signal
    if signal is None:
        return now_ms
    return signal.scheduled_at if action == "scheduled" else signal.pending_at if action == "opened" else now_ms


def _signal_field(signal: Any, name: str) -> Any:
    if signal is None:
        return None
    if isinstance(signal, dict):
        return signal.get(name)
    return getattr(signal, name, None)


class DashboardState:
    """The folded state; `changed` is called (cheaply, often) after every recorded event.

    `max_events` bounds the recent-events table and each of the risk, partial and error tables;
    `max_points` each strategy's equity curve (the oldest points go first)."""

    def __init__(
        self,
        *,
        engine: Engine | None = None,
        max_events: int = 50,
        max_points: int = 2000,
        changed: Callable[[], None] | None = None,
    ) -> None:
        self.engine = engine
        self.max_points = max_points
        self.changed: Callable[[], None] = changed or (lambda: None)
        self._instances: dict[Pair, _Instance] = {}
        self._open: dict[Pair, _Open] = {}
        self._events: deque[EventView] = deque(maxlen=max_events)
        self._aggregates: dict[Pair, TradeAggregate] = {}
        self._equity: dict[str, deque[EquityPoint]] = {}
        self._cumulative: dict[str, float] = {}
        self._risk: deque[RiskView] = deque(maxlen=max_events)
        self._partials: deque[PartialView] = deque(maxlen=max_events)
        self._errors: deque[ErrorView] = deque(maxlen=max_events)

    # ------------------------------------------------------------------ feeding
    def now_ms(self) -> int:
        """The engine's clock, or the wall clock for a dashboard fed from NATS."""
        return self.engine.now_ms() if self.engine is not None else _wall_ms()

    def on_tick(self, result: TickResult) -> None:
        """A live tick result (any action)."""
        key = (result.symbol, result.strategy_name)
        now = self.now_ms()
        inst = self._instances.get(key)
        if inst is None:
            inst = self._instances[key] = _Instance(result.symbol, result.strategy_name, result.exchange_name)
        inst.ticks += 1
        inst.last_tick_ms = now
        inst.last_price = result.current_price
        inst.last_action = action = result.action
        inst.done = False
        if isinstance(result, ActiveResult):
            self._open[key] = _Open(result, result.signal, result.percent_tp, result.percent_sl, now)
        elif action == "idle":
            self._open.pop(key, None)
        else:
            self._record_signal_event(key, result, now)
        self.changed()

    def _record_signal_event(self, key: Pair, result: TickResult, now: int) -> None:
        signal = result.signal
        assert signal is not None
        action = result.action
        pnl = close_reason = None
        if action in ("opened", "scheduled"):
            self._open[key] = _Open(result, signal, 0.0, 0.0, now)
        else:
            self._open.pop(key, None)
            if isinstance(result, ClosedResult):
                pnl = result.pnl.pnl_percentage
                close_reason = result.close_reason
                self._closed(key, result)
        self._events.appendleft(EventView(
            timestamp=_event_time(result, now), action=action, symbol=result.symbol,
            strategy_name=result.strategy_name, current_price=result.current_price, signal_id=signal.id,
            position=signal.position, pnl=pnl, close_reason=close_reason,
        ))

    def _closed(self, key: Pair, result: ClosedResult) -> None:
        agg = self._aggregates.get(key)
        if agg is None:
            agg = self._aggregates[key] = TradeAggregate()
        agg.add(result)
        strategy = result.strategy_name
        cum = self._cumulative.get(strategy, 0.0) + result.pnl.pnl_percentage
        self._cumulative[strategy] = cum
        points = self._equity.get(strategy)
        if points is None:
            points = self._equity[strategy] = deque(maxlen=self.max_points)
            points.append(EquityPoint(t=result.signal.pending_at, pnl=0.0))
        points.append(EquityPoint(t=result.close_timestamp, pnl=cum))

    def on_risk(self, event: RiskEvent) -> None:
        if event.backtest:
            return
        signal = event.pending_signal
        price_open = _signal_field(signal, "price_open")
        self._risk.appendleft(RiskView(
            timestamp=event.timestamp, symbol=event.symbol, strategy_name=event.strategy_name,
            comment=redact(event.comment), current_price=event.current_price,
            active_position_count=event.active_position_count,
            signal_id=_str_or_none(_signal_field(signal, "id")),
            position=_str_or_none(_signal_field(signal, "position")),
            price_open=float(price_open) if isinstance(price_open, int | float) else None,
        ))
        self.changed()

    def on_partial(self, kind: Literal["profit", "loss"], event: PartialEvent) -> None:
        if event.backtest:
            return
        self._partials.appendleft(PartialView(
            timestamp=event.timestamp, kind=kind, symbol=event.symbol, strategy_name=event.strategy_name,
            signal_id=event.signal.id, level=event.level, current_price=event.current_price,
        ))
        self.changed()

    def on_error(self, type_name: str, message: str) -> None:
        """An error; `message` is redacted here once more (a remote one was redacted by its sender)."""
        self._errors.appendleft(ErrorView(timestamp=self.now_ms(), type=type_name, message=redact(message)))
        self.changed()

    def on_done(self, event: DoneEvent) -> None:
        if event.backtest:
            return
        inst = self._instances.get((event.symbol, event.strategy_name))
        if inst is not None:
            inst.done = True
        self.changed()

    # ------------------------------------------------------------------ reading
    @property
    def open_positions(self) -> int:
        return len(self._open)

    def _config(self) -> Config:
        return self.engine.config if self.engine is not None else DEFAULT_CONFIG

    def positions(self) -> list[PositionView]:
        config = self._config()
        views = []
        for (symbol, strategy), item in sorted(self._open.items()):
            s = item.signal
            price = item.result.current_price
            scheduled = s.is_scheduled and item.result.action == "scheduled"
            pnl = None if scheduled else finite_or_none(
                pnl_of(s, price, config.CC_PERCENT_SLIPPAGE, config.CC_PERCENT_FEE).pnl_percentage)
            views.append(PositionView(
                symbol=symbol, strategy_name=strategy, exchange_name=item.result.exchange_name, signal_id=s.id,
                position=s.position, scheduled=scheduled, price_open=s.price_open, take_profit=s.price_take_profit,
                stop_loss=s.price_stop_loss, current_price=price, unrealized_pnl=pnl, percent_tp=item.percent_tp,
                percent_sl=item.percent_sl, opened_at=s.pending_at, updated_at=item.at_ms, note=s.note,
            ))
        return views

    async def instances(self) -> list[InstanceView]:
        known: dict[Pair, InstanceView] = {}
        if self.engine is not None:
            for info in await self.engine.live.list():
                inst = self._instances.get((info.symbol, info.strategy_name))
                known[(info.symbol, info.strategy_name)] = InstanceView(
                    id=info.id, symbol=info.symbol, strategy_name=info.strategy_name,
                    exchange_name=info.exchange_name, status=info.status,
                    error=None if info.error is None else redact(info.error),
                    ticks=inst.ticks if inst else 0, last_tick_ms=inst.last_tick_ms if inst else None,
                    last_price=inst.last_price if inst else None, last_action=inst.last_action if inst else None,
                )
        for key, inst in self._instances.items():
            if key in known:
                continue
            known[key] = InstanceView(
                id=f"{inst.symbol}:{inst.strategy_name}", symbol=inst.symbol, strategy_name=inst.strategy_name,
                exchange_name=inst.exchange_name, status="done" if inst.done else "running", ticks=inst.ticks,
                last_tick_ms=inst.last_tick_ms, last_price=inst.last_price, last_action=inst.last_action,
            )
        return [known[key] for key in sorted(known)]

    async def stats(self) -> list[PairStats]:
        pairs = sorted(set(self._instances) | set(self._aggregates))
        out: list[PairStats] = []
        for key in pairs:
            stats = await self._engine_stats(key)
            if stats is None:
                agg = self._aggregates.get(key)
                stats = statistics_from_aggregate(agg or TradeAggregate(), events=[], signals=[])
                unrealised = [p.unrealized_pnl for p in self.positions() if (p.symbol, p.strategy_name) == key]
                opened = len(unrealised)
                pnl = unrealised[0] if unrealised else None
            else:
                opened, pnl = stats.open_positions, stats.unrealized_pnl
            out.append(PairStats(
                symbol=key[0], strategy_name=key[1], total_trades=stats.total_trades,
                winning_trades=stats.winning_trades, losing_trades=stats.losing_trades, win_rate=stats.win_rate,
                total_pnl=stats.total_pnl, avg_pnl=stats.avg_pnl, sharpe_ratio=stats.sharpe_ratio,
                max_drawdown=stats.max_drawdown, open_positions=opened, unrealized_pnl=pnl,
            ))
        return out

    async def _engine_stats(self, key: Pair) -> Statistics | None:
        """The engine's exact figures for a pair it runs live (None when it does not know the pair)."""
        engine = self.engine
        if engine is None:
            return None
        if not engine.live.exchange_name_of(*key):
            return None
        try:
            return await engine.live.get_data(*key)
        except Exception:
            return None

    def events(self, limit: int | None = None) -> list[EventView]:
        rows = list(self._events)
        return rows if limit is None else rows[:limit]

    def equity(self) -> list[EquityCurve]:
        return [EquityCurve(strategy_name=name, points=list(points)) for name, points in sorted(self._equity.items())]

    def risk(self) -> list[RiskView]:
        return list(self._risk)

    def partials(self) -> list[PartialView]:
        return list(self._partials)

    def errors(self) -> list[ErrorView]:
        return list(self._errors)

    async def overview(self) -> Overview:
        return Overview(
            mode="engine" if self.engine is not None else "remote", generated_at=_wall_ms(), now_ms=self.now_ms(),
            instances=await self.instances(), positions=self.positions(), stats=await self.stats(),
            events=self.events(), equity=self.equity(), risk=self.risk(), partials=self.partials(),
            errors=self.errors(),
        )


def _str_or_none(value: Any) -> str | None:
    return None if value is None else str(value)

"""`OrderRouter`: the `signal` channel listener that drives one strategy's order executor.

Why a listener: the runners publish every tick result on `signal` and await its listeners before they
go on, and a live run deletes a closed signal only after its listeners saw the close. So an executor
that journals its exit order from this listener has it on disk before the signal is gone: a crash in
between replays the close, and the journal turns the replay into a no-op.

Per result of the strategy: start the executor (once), `restore` it once per (mode, symbol) with the
signals open there, `poll` it (every live tick at the clock's time; before every backtest lifecycle
event at the event's time), then hand it the lifecycle event. Each step that raises is reported on the
`error` channel and the next step still runs: an executor never stops the engine, and a close is never
withheld from it because an earlier step failed. A real executor never sees backtest results.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..engine.errors import ConfigError
from ..engine.models import (
    ActiveResult,
    CancelledResult,
    ClosedResult,
    OpenedResult,
    ScheduledResult,
    SignalLifecycleEvent,
    SignalRow,
    TickResult,
)
from .protocol import ExecutorContext, OrderExecutor

__all__ = ["OrderRouter", "lifecycle_event"]


def lifecycle_event(result: TickResult) -> SignalLifecycleEvent | None:
    """The executor's view of a tick result; None for idle and active ticks."""
    base: dict[str, Any] = {"symbol": result.symbol, "strategy_name": result.strategy_name,
                            "exchange_name": result.exchange_name, "price": result.current_price,
                            "backtest": result.backtest}
    if isinstance(result, ScheduledResult):
        return SignalLifecycleEvent(kind="scheduled", signal=result.signal, timestamp=result.signal.scheduled_at,
                                    **base)
    if isinstance(result, OpenedResult):
        return SignalLifecycleEvent(kind="opened", signal=result.signal, timestamp=result.signal.pending_at,
                                    **base)
    if isinstance(result, ClosedResult):
        return SignalLifecycleEvent(kind="closed", signal=result.signal, timestamp=result.close_timestamp,
                                    close_reason=result.close_reason, model_pnl=result.pnl.pnl_percentage, **base)
    if isinstance(result, CancelledResult):
        return SignalLifecycleEvent(kind="cancelled", signal=result.signal, timestamp=result.close_timestamp, **base)
    return None


def _open_signals(result: TickResult) -> list[SignalRow]:
    """The signals a pair had open when its first result of a run was produced: a position or a waiting
    limit signal monitored, closed or cancelled on that tick, or a stored limit signal that filled on it."""
    if isinstance(result, ActiveResult | ClosedResult | CancelledResult):
        return [result.signal]
    if isinstance(result, OpenedResult) and result.signal.scheduled_at != result.signal.pending_at:
        return [result.signal]
    return []


class OrderRouter:
    """Drives `executor` from the tick results of strategy `strategy_name` (rules in the module docstring)."""

    def __init__(self, executor: OrderExecutor, context: ExecutorContext) -> None:
        self.executor = executor
        self.context = context
        self.strategy_name = context.strategy_name
        self._real = bool(executor.places_real_orders)
        if self._real and not context.trade:
            raise ConfigError(
                f"add_order_executor: the executor {type(executor).__name__} of strategy {self.strategy_name!r} "
                "places real orders: pass trade=True to allow it"
            )
        self._started = False
        self._restored: set[tuple[bool, str]] = set()

    def accepts(self, result: TickResult) -> bool:
        """The bus filter: this strategy's results (live only for a real executor)."""
        return result.strategy_name == self.strategy_name and not (self._real and result.backtest)

    async def __call__(self, result: TickResult) -> None:
        if not self.accepts(result):
            return
        report = self.context.report_error
        if not self._started:
            try:
                await self.executor.start(self.context)
            except Exception as exc:
                await report(exc)
                return  # not started: nothing else may be called; retried on the next result
            self._started = True
        backtest = result.backtest
        pair = (backtest, result.symbol)
        if pair not in self._restored and await self._step(
            self.executor.restore, result.symbol, _open_signals(result), backtest=backtest
        ):
            self._restored.add(pair)
        event = lifecycle_event(result)
        if not backtest:
            await self._step(self.executor.poll, result.symbol, self.context.now_ms(), backtest=False)
        elif event is not None:
            await self._step(self.executor.poll, result.symbol, event.timestamp, backtest=True)
        if event is not None:
            await self._step(self.executor.on_signal, event)

    async def _step(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> bool:
        try:
            await fn(*args, **kwargs)
        except Exception as exc:
            await self.context.report_error(exc)
            return False
        return True

    async def aclose(self) -> None:
        if self._started:
            await self.executor.aclose()

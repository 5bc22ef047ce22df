"""The `listen_*` API: thin, typed subscriptions to the engine's event bus channels.

Each `listen_x(callback)` returns an idempotent unsubscribe function; `listen_x_once(filter,
callback)` fires once for the first event passing `filter` and then unsubscribes itself (before the
callback runs, so it fires at most once even if the callback raises).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from ..engine.channels import (
    DONE_BACKTEST,
    DONE_LIVE,
    DONE_WALKER,
    ERROR,
    EXIT,
    ORDER,
    PARTIAL_LOSS,
    PARTIAL_PROFIT,
    PERFORMANCE,
    PROGRESS,
    RISK,
    SIGNAL,
    SIGNAL_BACKTEST,
    SIGNAL_LIVE,
    VALIDATION,
    WALKER,
    WALKER_COMPLETE,
    WALKER_PROGRESS,
    WALKER_STOP,
    Channel,
)

if TYPE_CHECKING:
    from ..engine.bus import EventBus
    from ..engine.models import (
        DoneEvent,
        OrderEvent,
        PartialEvent,
        PerformanceEvent,
        ProgressEvent,
        RiskEvent,
        TickResult,
        WalkerContract,
        WalkerProgressEvent,
        WalkerResults,
        WalkerStopEvent,
    )

__all__ = ["Callback", "Filter", "ListenMixin", "Unsubscribe"]

E = TypeVar("E")
Callback = Callable[[E], Any]
Filter = Callable[[E], Any]
Unsubscribe = Callable[[], None]


class ListenMixin:
    """Mixed into `Engine`; needs `self.bus`."""

    bus: EventBus

    def _listen(self, channel: Channel[E], callback: Callback[E]) -> Unsubscribe:
        return self.bus.subscribe(channel, callback)

    def _once(self, channel: Channel[E], filter: Filter[E], callback: Callback[E]) -> Unsubscribe:
        return self.bus.subscribe(channel, callback, filter=filter, once=True)

    # signals ------------------------------------------------------------------------------
    def listen_signal(self, callback: Callback[TickResult]) -> Unsubscribe:
        """Every tick result of both modes (after the mode channel's listeners got it)."""
        return self._listen(SIGNAL, callback)

    def listen_signal_once(self, filter: Filter[TickResult], callback: Callback[TickResult]) -> Unsubscribe:
        return self._once(SIGNAL, filter, callback)

    def listen_signal_live(self, callback: Callback[TickResult]) -> Unsubscribe:
        """Every live tick result, idle and active included."""
        return self._listen(SIGNAL_LIVE, callback)

    def listen_signal_live_once(self, filter: Filter[TickResult], callback: Callback[TickResult]) -> Unsubscribe:
        return self._once(SIGNAL_LIVE, filter, callback)

    def listen_signal_backtest(self, callback: Callback[TickResult]) -> Unsubscribe:
        """Every backtest tick and fast-forward result."""
        return self._listen(SIGNAL_BACKTEST, callback)

    def listen_signal_backtest_once(
        self, filter: Filter[TickResult], callback: Callback[TickResult]
    ) -> Unsubscribe:
        return self._once(SIGNAL_BACKTEST, filter, callback)

    # lifecycle ----------------------------------------------------------------------------
    def listen_done_live(self, callback: Callback[DoneEvent]) -> Unsubscribe:
        return self._listen(DONE_LIVE, callback)

    def listen_done_live_once(self, filter: Filter[DoneEvent], callback: Callback[DoneEvent]) -> Unsubscribe:
        return self._once(DONE_LIVE, filter, callback)

    def listen_done_backtest(self, callback: Callback[DoneEvent]) -> Unsubscribe:
        return self._listen(DONE_BACKTEST, callback)

    def listen_done_backtest_once(
        self, filter: Filter[DoneEvent], callback: Callback[DoneEvent]
    ) -> Unsubscribe:
        return self._once(DONE_BACKTEST, filter, callback)

    def listen_error(self, callback: Callback[BaseException]) -> Unsubscribe:
        """Recoverable errors: failed ticks, invalid signals, raising listeners and callbacks."""
        return self._listen(ERROR, callback)

    def listen_exit(self, callback: Callback[BaseException]) -> Unsubscribe:
        """A background run died of an unexpected error."""
        return self._listen(EXIT, callback)

    def listen_progress(self, callback: Callback[ProgressEvent]) -> Unsubscribe:
        """Backtest progress (alias of `listen_backtest_progress`)."""
        return self._listen(PROGRESS, callback)

    listen_backtest_progress = listen_progress

    def listen_performance(self, callback: Callback[PerformanceEvent]) -> Unsubscribe:
        return self._listen(PERFORMANCE, callback)

    # risk and partial levels --------------------------------------------------------------
    def listen_risk(self, callback: Callback[RiskEvent]) -> Unsubscribe:
        """Signals a risk profile rejected."""
        return self._listen(RISK, callback)

    def listen_risk_once(self, filter: Filter[RiskEvent], callback: Callback[RiskEvent]) -> Unsubscribe:
        return self._once(RISK, filter, callback)

    def listen_validation(self, callback: Callback[BaseException]) -> Unsubscribe:
        """Errors raised by risk validation functions."""
        return self._listen(VALIDATION, callback)

    def listen_partial_profit(self, callback: Callback[PartialEvent]) -> Unsubscribe:
        return self._listen(PARTIAL_PROFIT, callback)

    def listen_partial_profit_once(
        self, filter: Filter[PartialEvent], callback: Callback[PartialEvent]
    ) -> Unsubscribe:
        return self._once(PARTIAL_PROFIT, filter, callback)

    def listen_partial_loss(self, callback: Callback[PartialEvent]) -> Unsubscribe:
        return self._listen(PARTIAL_LOSS, callback)

    def listen_partial_loss_once(
        self, filter: Filter[PartialEvent], callback: Callback[PartialEvent]
    ) -> Unsubscribe:
        return self._once(PARTIAL_LOSS, filter, callback)

    # walker (strategy comparison) -----------------------------------------------------------
    def listen_walker(self, callback: Callback[WalkerContract[Any]]) -> Unsubscribe:
        """One strategy's result within a walker run (a `WalkerContract` with its `Statistics`)."""
        return self._listen(WALKER, callback)

    def listen_walker_once(
        self, filter: Filter[WalkerContract[Any]], callback: Callback[WalkerContract[Any]]
    ) -> Unsubscribe:
        return self._once(WALKER, filter, callback)

    def listen_walker_progress(self, callback: Callback[WalkerProgressEvent]) -> Unsubscribe:
        """A walker finished one more strategy's backtest."""
        return self._listen(WALKER_PROGRESS, callback)

    def listen_walker_complete(self, callback: Callback[WalkerResults[Any]]) -> Unsubscribe:
        """The end of a walker run: the best strategy, its metric and statistics."""
        return self._listen(WALKER_COMPLETE, callback)

    def listen_walker_stop(self, callback: Callback[WalkerStopEvent]) -> Unsubscribe:
        """Stop requests for the strategies of a walker (`Walker.stop`, the walker's cancel); the reference
        keeps this channel internal, the engine lets it be observed like every other channel."""
        return self._listen(WALKER_STOP, callback)

    def listen_done_walker(self, callback: Callback[DoneEvent]) -> Unsubscribe:
        """A walker background run ended (`strategy_name` holds the walker's name)."""
        return self._listen(DONE_WALKER, callback)

    def listen_done_walker_once(self, filter: Filter[DoneEvent], callback: Callback[DoneEvent]) -> Unsubscribe:
        return self._once(DONE_WALKER, filter, callback)

    # orders -------------------------------------------------------------------------------
    def listen_order(self, callback: Callback[OrderEvent]) -> Unsubscribe:
        """What happened to the orders the strategies' order executors placed (submitted, filled,
        partially filled, rejected, cancelled), in the order the exchange answered."""
        return self._listen(ORDER, callback)

    def listen_order_once(self, filter: Filter[OrderEvent], callback: Callback[OrderEvent]) -> Unsubscribe:
        return self._once(ORDER, filter, callback)

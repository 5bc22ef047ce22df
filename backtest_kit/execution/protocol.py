"""The order execution interfaces: what the engine calls (`OrderExecutor`) and what an exchange serves
(`OrderGateway`).

Two levels, so the exactly-once rules are written once:

- `OrderExecutor` is attached per strategy (`Engine.add_order_executor`). The engine's router hands it
  the strategy's signal lifecycle (`SignalLifecycleEvent`: scheduled, opened, closed, cancelled), a
  `poll` after every tick, and once per (mode, symbol) a `restore` before anything else; the executor
  publishes what happened to its orders through `ExecutorContext.publish` (the `order` channel).
- `OrderGateway` places, fetches and cancels single orders by client order id. `JournaledExecutor`
  (execution/journaled.py) turns the lifecycle into gateway calls under the order journal; the paper
  gateway fills against the candle stream, the ccxt gateway (adapters/ccxt_orders.py) talks to an
  exchange. Switching from paper to real is replacing the gateway.

Both Protocols are structural: an adapter implements them without importing this module (adapters sit
below execution in the layers); their data types live in `engine/models.py`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from ..engine.config import Config
from ..engine.exchange import ExchangeClient
from ..engine.logger import EngineLogger
from ..engine.models import OrderEvent, OrderRequest, SignalLifecycleEvent, SignalRow
from ..engine.persist import PersistBackend

__all__ = ["ExecutorContext", "OrderExecutor", "OrderGateway", "OrderSink"]


class OrderSink(Protocol):
    """Publishes one order event on the engine's `order` channel (awaited, in order)."""

    def __call__(self, event: OrderEvent, /) -> Awaitable[None]: ...


@dataclass(frozen=True, slots=True)
class ExecutorContext:
    """What the engine gives an executor when it starts it (once, before its first call).

    `trade` is the explicit opt-in of `add_order_executor(..., trade=True)`: an executor that places
    real orders must refuse to start without it (the engine checks it too, at registration).
    `persist` is the backend of the order journal (entity "orders"); backtests journal in memory.
    `void_signal(symbol, signal_id, reason)` asks the engine to drop a live signal whose entry order the
    exchange refused (no position; its risk slot is released at the pair's next tick).
    """

    strategy_name: str
    publish: OrderSink
    persist: Callable[[], PersistBackend]
    exchange: Callable[[str], ExchangeClient]
    config: Callable[[], Config]
    now_ms: Callable[[], int]
    report_error: Callable[[BaseException], Awaitable[None]]
    logger: EngineLogger
    trade: bool
    void_signal: Callable[[str, str, str], None] | None = None


@runtime_checkable
class OrderExecutor(Protocol):
    """Turns one strategy's signals into orders. Every method may raise: the engine reports the error on
    the `error` channel and goes on (the next `poll` is the executor's chance to catch up)."""

    @property
    def places_real_orders(self) -> bool:
        """True for an executor that sends orders to a real exchange: it needs `trade=True` to start and
        never receives backtest events."""
        ...

    async def start(self, context: ExecutorContext) -> None:
        """Called once before any other call; raise to refuse (e.g. real orders without `context.trade`)."""
        ...

    async def restore(self, symbol: str, open_signals: Sequence[SignalRow], *, backtest: bool) -> None:
        """Reconcile before the first lifecycle event of (mode, `symbol`): every journalled order without a
        final answer is fetched (or placed again) first. `open_signals` are the signals the strategy has
        open on that symbol now (a pending position or a waiting limit signal; empty when flat)."""
        ...

    async def on_signal(self, event: SignalLifecycleEvent) -> None:
        """One step of a signal's life: place, cancel or close out its orders."""
        ...

    async def poll(self, symbol: str, now_ms: int, *, backtest: bool) -> None:
        """After every live tick of `symbol` (and before every backtest lifecycle event, at its time):
        refresh the orders still open and publish what changed."""
        ...

    async def aclose(self) -> None:
        """The engine closes: release connections. Open orders stay open (and journalled)."""
        ...


class OrderGateway(Protocol):
    """Single orders on one venue, addressed by client order id.

    The contract the journal relies on:

    - `place` is idempotent by `request.client_order_id`: placing an id the venue already holds returns
      that order's state and never creates a second order;
    - `fetch` returns the order's current state, or None when the venue never received the id (the only
      answer after which the executor places it again);
    - `cancel` cancels the order `request` describes and returns its final state (status `filled` when
      it filled first); cancelling an unknown id returns a `cancelled` event with `filled` 0.

    Transport errors raise (after the gateway's own bounded retries): the order's fate is then unknown
    and the executor finds out with `fetch` on its next poll.
    """

    @property
    def places_real_orders(self) -> bool: ...

    async def place(self, request: OrderRequest) -> OrderEvent: ...

    async def fetch(self, request: OrderRequest) -> OrderEvent | None: ...

    async def cancel(self, request: OrderRequest) -> OrderEvent: ...

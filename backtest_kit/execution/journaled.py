"""`JournaledExecutor`: the signal lifecycle turned into gateway orders, exactly once, under the journal.

The rules (one signal; `e`/`x`/`c` are the client order ids of its entry, exit and cancel, attempt 0):

- `scheduled` places a limit entry at `price_open`; `opened` places a market entry unless the signal
  already has an entry (its limit order, placed when it was scheduled);
- `closed` and `cancelled` first refresh the entry; an entry still open is cancelled (the cancel is
  journalled too); then, if any of it filled, a market exit for exactly the filled amount is placed,
  once. A signal without an entry order gets no exit: never an exit without an entry. An exit that
  ended part-filled (expired for lack of liquidity) is followed by a new attempt for the rest (a new
  client order id), at most `MAX_EXIT_ATTEMPTS` exits in all;
- every order is journalled (intent) before the gateway sees it and again with each answer; a replayed
  event finds the journalled id and places nothing;
- `restore` (once per mode and symbol) and every `poll` ask the gateway about the orders without a
  final answer; an id the venue never received is placed again under the same id, except an entry whose
  signal is no longer open (rejected in the journal instead: its signal will never need it);
- an entry that ends without any fill and not by the executor's own cancel (refused by the exchange,
  expired unfilled) means there is no position: the engine is asked to drop the live signal
  (`ExecutorContext.void_signal`), which releases its risk slot (also after a restart, from `restore`).

Backtests journal in memory (they never persist); live runs journal in the engine's "orders" backend.
The amount of an order is the signal's `quantity` (a sizing), else the executor's `amount`.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from ..engine.errors import ConfigError, SchemaError
from ..engine.models import (
    OrderEvent,
    OrderRequest,
    OrderRole,
    OrderSide,
    OrderType,
    SignalLifecycleEvent,
    SignalRow,
)
from ..engine.persist import PersistBackend
from .ids import client_order_id
from .journal import OrderJournal, OrderRecord
from .protocol import ExecutorContext, OrderGateway

__all__ = ["MAX_EXIT_ATTEMPTS", "JournaledExecutor", "MemoryJournalBackend"]

MAX_EXIT_ATTEMPTS = 5
"""Exit orders per signal at most: the first, and re-sends of a rest an exchange left unfilled."""


class MemoryJournalBackend:
    """The journal backend of backtests: a dict (a backtest never persists, and is never resumed)."""

    def __init__(self) -> None:
        self.data: dict[tuple[str, str], bytes] = {}

    async def read(self, entity: str, key: str) -> bytes | None:
        return self.data.get((entity, key))

    async def write(self, entity: str, key: str, data: bytes) -> None:
        self.data[(entity, key)] = bytes(data)

    async def delete(self, entity: str, key: str) -> None:
        self.data.pop((entity, key), None)

    async def keys(self, entity: str) -> list[str]:
        return [k for e, k in self.data if e == entity]


class JournaledExecutor:
    """An `OrderExecutor` over any `OrderGateway` (see the module docstring for the rules)."""

    def __init__(self, gateway: OrderGateway, *, amount: float | None = None) -> None:
        if amount is not None and (isinstance(amount, bool) or not isinstance(amount, int | float) or not amount > 0):
            raise SchemaError(f"amount: expected a positive number or None, got {amount!r}")
        self.gateway = gateway
        self.amount = None if amount is None else float(amount)
        self._context: ExecutorContext | None = None
        self._journals: dict[bool, OrderJournal] = {}
        self._memory: PersistBackend = MemoryJournalBackend()

    @property
    def places_real_orders(self) -> bool:
        return bool(self.gateway.places_real_orders)

    @property
    def context(self) -> ExecutorContext:
        if self._context is None:
            raise ConfigError(f"{type(self).__name__}: not started (attach it with add_order_executor)")
        return self._context

    async def start(self, context: ExecutorContext) -> None:
        if self.places_real_orders and not context.trade:
            raise ConfigError(
                f"{type(self).__name__} for strategy {context.strategy_name!r} places real orders: "
                "pass trade=True to add_order_executor to allow it"
            )
        self._context = context
        memory = self._memory
        self._journals = {
            False: OrderJournal(context.persist, context.report_error),
            True: OrderJournal(lambda: memory, context.report_error),
        }

    async def _journal(self, backtest: bool) -> OrderJournal:
        journal = self._journals.get(backtest)
        if journal is None:
            raise ConfigError(f"{type(self).__name__}: not started (attach it with add_order_executor)")
        await journal.load(self.context.strategy_name)
        return journal

    async def aclose(self) -> None:
        close = getattr(self.gateway, "aclose", None)
        if close is not None:
            await close()

    # ------------------------------------------------------------------ reconciliation
    async def restore(self, symbol: str, open_signals: Sequence[SignalRow], *, backtest: bool) -> None:
        journal = await self._journal(backtest)
        open_ids = {s.id for s in open_signals}
        for record in journal.open_records(symbol):
            await self._reconcile(journal, record, open_ids)
        for signal in open_signals:  # refused before a crash, but the signal was not dropped yet
            entries = journal.of_signal(signal.id, "entry")
            if entries and entries[-1].final and entries[-1].answer is not None:
                self._void_if_refused(journal, entries[-1].request, entries[-1].answer)

    async def poll(self, symbol: str, now_ms: int, *, backtest: bool) -> None:
        journal = await self._journal(backtest)
        for record in journal.open_records(symbol):
            await self._reconcile(journal, record, None)
        await self._finish_exits(journal, symbol)

    async def _finish_exits(self, journal: OrderJournal, symbol: str) -> None:
        """An exit that ended part-filled (a market order that ran out of book, expired) leaves part of the
        position open: exit the rest with the next attempt, at most `MAX_EXIT_ATTEMPTS` orders in all."""
        for record in journal.exits_cut_short(symbol):
            exits = journal.of_signal(record.request.signal_id, "exit")
            entry = journal.of_signal(record.request.signal_id, "entry")
            if not entry or len(exits) >= MAX_EXIT_ATTEMPTS:
                continue
            rest = round(entry[-1].filled - sum(e.filled for e in exits), 12)
            if rest <= entry[-1].filled * 1e-9:
                continue
            last = exits[-1].request
            request = msgspec.structs.replace(
                last, client_order_id=client_order_id(last.signal_id, "exit", len(exits)), amount=rest,
                timestamp=self.context.now_ms() if not last.backtest else last.timestamp)
            await self._place(journal, request)

    async def _reconcile(self, journal: OrderJournal, record: OrderRecord, open_ids: set[str] | None) -> None:
        """Bring one non-final record up to date with the venue (see the module docstring)."""
        request = record.request
        if request.role == "cancel":
            await self._send_cancel(journal, request)
            return
        event = await self.gateway.fetch(request)
        if event is None:
            if request.role == "entry" and open_ids is not None and request.signal_id not in open_ids:
                event = _answer(request, "rejected", self.context.now_ms(),
                                "never reached the exchange, and its signal is no longer open")
            else:
                event = await self.gateway.place(request)  # same client order id: the venue dedups
        await self._record(journal, request, event)

    async def _record(self, journal: OrderJournal, request: OrderRequest, event: OrderEvent) -> None:
        """Journal `event` as the answer for `request`; publish it when the order changed."""
        before = journal.get(request.client_order_id)
        previous = None if before is None else before.answer
        await journal.answer(request, event)
        if previous is None or (previous.status, previous.filled) != (event.status, event.filled):
            await self.context.publish(event)
            self._void_if_refused(journal, request, event)

    def _void_if_refused(self, journal: OrderJournal, request: OrderRequest, event: OrderEvent) -> None:
        """An entry that ended without any fill, and not by our own cancel, means there is no position:
        ask the engine to drop the signal (live only: a backtest's paper venue never refuses)."""
        void = self.context.void_signal
        if (void is None or request.backtest or request.role != "entry" or event.filled > 0
                or event.status not in ("rejected", "cancelled") or journal.of_signal(request.signal_id, "cancel")):
            return
        void(request.symbol, request.signal_id,
             f"its entry order {request.client_order_id} was {event.status}: {event.reason or 'no reason given'}")

    # ------------------------------------------------------------------ lifecycle
    async def on_signal(self, event: SignalLifecycleEvent) -> None:
        journal = await self._journal(event.backtest)
        signal = event.signal
        if event.kind == "scheduled":
            await self._place(journal, self._request(event, "entry", "limit", signal.price_open))
        elif event.kind == "opened":
            if not journal.of_signal(signal.id, "entry"):
                await self._place(journal, self._request(event, "entry", "market", None))
        else:
            await self._close_out(journal, event)

    async def _close_out(self, journal: OrderJournal, event: SignalLifecycleEvent) -> None:
        """The signal is over: stop its entry, then exit whatever of it filled (once)."""
        entries = journal.of_signal(event.signal.id, "entry")
        if not entries:
            return  # never an exit without an entry
        entry = entries[-1]
        if not entry.final:
            await self._reconcile(journal, entry, None)
            entry = journal.get(entry.request.client_order_id) or entry
        if not entry.final and entry.answer is not None:
            cancel = msgspec.structs.replace(
                entry.request, client_order_id=client_order_id(event.signal.id, "cancel"), role="cancel",
                timestamp=event.timestamp, target_client_order_id=entry.request.client_order_id,
            )
            if journal.get(cancel.client_order_id) is None:
                await journal.intend(cancel)
                await self._send_cancel(journal, cancel)
            entry = journal.get(entry.request.client_order_id) or entry
        filled = entry.filled
        if filled <= 0 or journal.of_signal(event.signal.id, "exit"):
            return
        await self._place(journal, self._request(event, "exit", "market", None, amount=filled))

    async def _send_cancel(self, journal: OrderJournal, cancel: OrderRequest) -> None:
        target = journal.get(cancel.target_client_order_id or "")
        if target is None:
            await journal.answer(cancel, _answer(cancel, "rejected", self.context.now_ms(), "unknown target order"))
            return
        state = await self.gateway.cancel(target.request)
        await self._record(journal, target.request, state)
        status = "cancelled" if state.status == "cancelled" else "rejected"
        reason = None if status == "cancelled" else f"the order was {state.status} first"
        await journal.answer(cancel, _answer(cancel, status, state.timestamp, reason, filled=state.filled))

    async def _place(self, journal: OrderJournal, request: OrderRequest) -> None:
        """Journal the intent, then send it; a journalled id is never sent again from here."""
        if journal.get(request.client_order_id) is not None:
            return
        await journal.intend(request)  # raises: nothing was sent
        try:
            event = await self.gateway.place(request)
        except Exception as exc:  # the reply is lost: the next poll fetches the order by its id
            await self.context.report_error(exc)
            return
        await self._record(journal, request, event)

    def _request(
        self, event: SignalLifecycleEvent, role: OrderRole, type: OrderType, price: float | None,
        *, amount: float | None = None,
    ) -> OrderRequest:
        signal = event.signal
        long = signal.position == "long"
        side: OrderSide = ("buy" if long else "sell") if role == "entry" else ("sell" if long else "buy")
        if amount is None:
            amount = signal.quantity if signal.quantity is not None else self.amount
        if amount is None:
            raise SchemaError(
                f"order for signal {signal.id!r}: the signal has no quantity; give strategy "
                f"{signal.strategy_name!r} a sizing (add_sizing) or the executor an amount"
            )
        return OrderRequest(
            client_order_id=client_order_id(signal.id, role), signal_id=signal.id, role=role,
            symbol=event.symbol, strategy_name=event.strategy_name, exchange_name=event.exchange_name,
            side=side, type=type, amount=amount, price=price, timestamp=event.timestamp, backtest=event.backtest,
        )


def _answer(
    request: OrderRequest, status: str, timestamp: int, reason: str | None, *, filled: float = 0.0
) -> OrderEvent:
    """An answer the executor writes itself (no venue involved): a rejection or a cancel's outcome."""
    return msgspec.convert({
        "signal_id": request.signal_id, "role": request.role, "client_order_id": request.client_order_id,
        "exchange_order_id": None, "symbol": request.symbol, "strategy_name": request.strategy_name,
        "exchange_name": request.exchange_name, "side": request.side, "type": request.type,
        "price": request.price, "amount": request.amount, "filled": filled, "average_price": None,
        "fee": 0.0, "status": status, "timestamp": timestamp, "backtest": request.backtest, "reason": reason,
    }, OrderEvent)

"""The order journal: every order's intent is stored before the gateway sees it, its answer after.

Why: a crash (or a lost reply) between "decide to place" and "know what the exchange did" must never
lead to a second order, nor to a forgotten one. With the intent on disk first and a deterministic client
order id, a restarted executor finds every order whose answer it never stored (`unanswered`) and asks
the exchange about exactly that id before doing anything else.

One document per client order id in the persist entity "orders" (`ENTITY_ORDERS`), a msgspec JSON
`OrderRecord`. Records are kept once final (history, and the guard that makes a replayed lifecycle event
a no-op); pruning old ones is left to the operator. The journal also caches every record it read or
wrote, so the executor's hot path never reads the backend.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import msgspec
from msgspec import Struct

from ..engine.errors import PersistError
from ..engine.models import OrderEvent, OrderRequest, OrderRole
from ..engine.persist import ENTITY_ORDERS, PersistBackend, read_snapshot
from .ids import parse_client_order_id

__all__ = ["FINAL_STATUSES", "OrderJournal", "OrderRecord"]

FINAL_STATUSES = frozenset({"filled", "rejected", "cancelled"})
"""An order in one of these states never changes again."""


class OrderRecord(Struct, frozen=True, kw_only=True):
    """An order as journalled: the request, and the last answer (None: the gateway's answer is unknown)."""

    request: OrderRequest
    answer: OrderEvent | None = None

    @property
    def final(self) -> bool:
        return self.answer is not None and self.answer.status in FINAL_STATUSES

    @property
    def filled(self) -> float:
        return 0.0 if self.answer is None else self.answer.filled


def _attempt(client_order_id: str) -> int:
    parsed = parse_client_order_id(client_order_id)
    return -1 if parsed is None else parsed[1]


_encode = msgspec.json.Encoder().encode
_decoder = msgspec.json.Decoder(OrderRecord)


class OrderJournal:
    """Intent-then-answer records of one strategy's orders in `backend` (entity "orders")."""

    def __init__(
        self, backend: Callable[[], PersistBackend], report_error: Callable[[BaseException], Awaitable[None]]
    ) -> None:
        self._backend = backend
        self._report_error = report_error
        self._records: dict[str, OrderRecord] = {}
        self._loaded = False

    def get(self, client_order_id: str) -> OrderRecord | None:
        return self._records.get(client_order_id)

    def of_signal(self, signal_id: str, role: OrderRole) -> list[OrderRecord]:
        """The signal's records of `role`, oldest attempt first."""
        found = [r for r in self._records.values() if r.request.signal_id == signal_id and r.request.role == role]
        found.sort(key=lambda r: (_attempt(r.request.client_order_id), r.request.client_order_id))
        return found

    def open_records(self, symbol: str) -> list[OrderRecord]:
        """Records of `symbol` that may still change: unanswered, or answered with a non-final status."""
        return [r for r in self._records.values() if r.request.symbol == symbol and not r.final]

    def exits_cut_short(self, symbol: str) -> list[OrderRecord]:
        """The newest exit of each signal of `symbol` when it ended cancelled (not rejected): the exit may
        have left part of the position open."""
        newest: dict[str, OrderRecord] = {}
        for record in self._records.values():
            request = record.request
            if request.symbol == symbol and request.role == "exit":
                known = newest.get(request.signal_id)
                if known is None or _attempt(request.client_order_id) > _attempt(known.request.client_order_id):
                    newest[request.signal_id] = record
        return [r for r in newest.values() if r.answer is not None and r.answer.status == "cancelled"]

    async def load(self, strategy_name: str) -> None:
        """Read every stored record of `strategy_name` into the cache (once; later calls do nothing).

        A document that cannot be parsed is reported and set aside by `read_snapshot`, never guessed.
        """
        if self._loaded:
            return
        backend = self._backend()
        keys = await backend.keys(ENTITY_ORDERS)
        for key in sorted(keys):
            if key in self._records:
                continue
            record = await read_snapshot(backend, ENTITY_ORDERS, key, _decoder.decode,
                                         f"order journal record {key!r}", self._report_error)
            if record is not None and record.request.strategy_name == strategy_name:
                self._records[key] = record
        self._loaded = True

    async def intend(self, request: OrderRequest) -> OrderRecord:
        """Store the intent of `request` before it is sent; the existing record if the id is known.

        Raises (PersistError) when the write fails: the order must then not be sent.
        """
        existing = self._records.get(request.client_order_id)
        if existing is not None:
            return existing
        record = OrderRecord(request=request)
        await self._write(record)
        return record

    async def answer(self, request: OrderRequest, event: OrderEvent) -> OrderRecord:
        """Store the gateway's answer for `request` (the newest answer replaces the older one)."""
        if event.client_order_id != request.client_order_id:
            raise PersistError(f"order journal: answer for client_order_id {event.client_order_id!r} "
                               f"filed under {request.client_order_id!r}")
        record = OrderRecord(request=request, answer=event)
        await self._write(record)
        return record

    async def _write(self, record: OrderRecord) -> None:
        key = record.request.client_order_id
        await self._backend().write(ENTITY_ORDERS, key, _encode(record))
        self._records[key] = record

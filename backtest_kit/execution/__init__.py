"""Order execution: a strategy's signal lifecycle turned into exchange orders, exactly once (issue 16).

`OrderExecutor` (attached with `Engine.add_order_executor`) and `OrderGateway` are the interfaces
(`protocol.py`); `JournaledExecutor` applies the exactly-once rules over any gateway with the order
journal (`journal.py`) and deterministic client order ids (`ids.py`); `PaperExecutor` fills against the
candle stream (`paper.py`); `CcxtExecutor` places real orders through ccxt (`ccxt.py`, over
`ccxt_gateway.py`); `OrderRouter` feeds an executor from the `signal` channel (`router.py`).
"""

from .ccxt import CcxtExecutor
from .ids import client_order_id, parse_client_order_id, signal_tag
from .journal import OrderJournal, OrderRecord
from .journaled import JournaledExecutor
from .paper import PaperExecutor, PaperGateway
from .protocol import ExecutorContext, OrderExecutor, OrderGateway, OrderSink
from .router import OrderRouter, lifecycle_event

__all__ = [
    "CcxtExecutor",
    "ExecutorContext",
    "JournaledExecutor",
    "OrderExecutor",
    "OrderGateway",
    "OrderJournal",
    "OrderRecord",
    "OrderRouter",
    "OrderSink",
    "PaperExecutor",
    "PaperGateway",
    "client_order_id",
    "lifecycle_event",
    "parse_client_order_id",
    "signal_tag",
]

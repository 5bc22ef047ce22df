"""backtest-kit: one trading strategy, run in backtest and live mode on an asyncio event bus.

    import backtest_kit as bk

The module-level functions and the `Backtest` / `Live` facades act on `bk.default_engine`; build
your own `bk.Engine()` for isolation (tests, several worlds in one process); `backtest_kit.testing`
builds one with the reference test configuration.

`__all__` below is the public surface ([public API](../docs/design/public-api.md)). The classes and functions
it re-exports report
`__module__ == "backtest_kit"` (as httpx does), so reprs, tracebacks and pickles name the stable
`backtest_kit.X` rather than the internal module, which may move.
"""

from __future__ import annotations

import contextlib
import inspect
import sys
from collections.abc import Iterable
from typing import Any

from .adapters import CsvCandles, FilePersist, MemoryCandles, ReplayExchange, bundled_sample_path, replay_clock
from .adapters.candles import CandleDataWarning, CandleGaps, DroppedCandle
from .adapters.ccxt_exchange import add_ccxt_exchange as _add_ccxt_exchange
from .adapters.nats_bridge import BridgeStats, EventsDroppedError, NatsBridge  # nats-py: on first use (extra "nats")
from .adapters.nats_remote import RemoteEvent, RemoteEvents, RemoteStats, RemoteSubscription, listen_remote
from .adapters.nats_wire import RemoteError
from .adapters.postgres_persist import PostgresPersist  # asyncpg loads on first use (extra "postgres")
from .adapters.redis_persist import RedisPersist  # redis.asyncio loads on first use (extra "redis")
from .engine import default_slot as _default_slot
from .engine.bus import CHANNELS, EventBus
from .engine.clock import Clock, SystemClock, VirtualClock
from .engine.config import DEFAULT_CONFIG, Config
from .engine.context import (
    execution_context,
    format_price,
    format_quantity,
    get_average_price,
    get_candles,
    get_date,
    get_mode,
)
from .engine.errors import (
    BacktestKitError,
    CandleError,
    ConfigError,
    ExchangeError,
    LeaseHeldError,
    LeaseLostError,
    ListenerTimeoutError,
    PersistError,
    RunStateError,
    SchemaError,
    SignalTimeoutError,
    SignalValidationError,
    SizingError,
    StaleDataError,
    UnknownNameError,
)
from .engine.models import (
    ActiveResult,
    CancelledResult,
    Candle,
    ClosedResult,
    DoneEvent,
    FinishedResult,
    IdleResult,
    InstanceInfo,
    OpenedResult,
    OrderEvent,
    OrderRequest,
    PartialEvent,
    PerformanceEvent,
    PnL,
    ProgressEvent,
    RiskEvent,
    ScheduledResult,
    SignalDto,
    SignalLifecycleEvent,
    SignalRow,
    TickResult,
    WalkerContract,
    WalkerInstanceInfo,
    WalkerProgressEvent,
    WalkerResults,
    WalkerStopEvent,
)
from .engine.persist import PersistBackend
from .engine.registry import StrategyCallbacks, WalkerCallbacks, WalkerSchema
from .engine.runner import CancelHandle
from .execution import (
    CcxtExecutor,
    ExecutorContext,
    JournaledExecutor,
    OrderExecutor,
    OrderGateway,
    PaperExecutor,
    PaperGateway,
    client_order_id,
)
from .listeners.notifiers import (
    ConsoleNotifier,
    LogNotifier,
    Notifier,
    NotifierStats,
    QueuedNotifier,
    TelegramNotifier,
    WebhookNotifier,
)
from .portfolio.partial import PartialEntry, PartialStatistics
from .portfolio.risk import ActivePosition, RiskCheckArgs
from .portfolio.risk_facade import RiskStatistics
from .portfolio.sizing import Constant
from .reports.heat_stats import HeatRow, HeatStatistics
from .reports.performance_stats import MetricStats, PerformanceStatistics
from .reports.schedule_stats import ScheduleEvent, ScheduleStatistics
from .reports.stats import Statistics, TradeFill
from .reports.walker_stats import WalkerData, WalkerStrategyResult
from .research import FloatRange, IntRange, Sweep, SweepProgress, SweepResult, SweepRow, WalkForward
from .system.engine import Engine
from .system.shutdown import install_signal_handlers
from .system.walker import WalkerCancel
from .web import serve_dashboard  # aiohttp and prometheus-client: on first use (extra "web")

__version__ = "0.1.0"

default_engine = Engine()
"""The engine behind the module-level API."""
_default_slot.default_engine = default_engine  # for adapters defaulting to it (no import of this package)

Backtest = default_engine.backtest
Live = default_engine.live
Risk = default_engine.risk
Partial = default_engine.partial
PositionSize = default_engine.position_size
add_notifier = default_engine.add_notifier
Schedule = default_engine.schedule
Performance = default_engine.performance

set_config = default_engine.set_config
get_config = default_engine.get_config
get_default_config = default_engine.get_default_config
set_logger = default_engine.set_logger
use_persist = default_engine.use_persist

add_exchange = default_engine.add_exchange
add_strategy = default_engine.add_strategy
add_frame = default_engine.add_frame
add_risk = default_engine.add_risk
add_sizing = default_engine.add_sizing
list_exchanges = default_engine.list_exchanges
list_strategies = default_engine.list_strategies
list_frames = default_engine.list_frames
list_risks = default_engine.list_risks
list_sizings = default_engine.list_sizings

listen_signal = default_engine.listen_signal
listen_signal_once = default_engine.listen_signal_once
listen_signal_live = default_engine.listen_signal_live
listen_signal_live_once = default_engine.listen_signal_live_once
listen_signal_backtest = default_engine.listen_signal_backtest
listen_signal_backtest_once = default_engine.listen_signal_backtest_once
listen_done_live = default_engine.listen_done_live
listen_done_live_once = default_engine.listen_done_live_once
listen_done_backtest = default_engine.listen_done_backtest
listen_done_backtest_once = default_engine.listen_done_backtest_once
listen_error = default_engine.listen_error
listen_exit = default_engine.listen_exit
listen_progress = default_engine.listen_progress
listen_backtest_progress = default_engine.listen_backtest_progress
listen_performance = default_engine.listen_performance
listen_risk = default_engine.listen_risk
listen_risk_once = default_engine.listen_risk_once
listen_validation = default_engine.listen_validation
listen_partial_profit = default_engine.listen_partial_profit
listen_partial_profit_once = default_engine.listen_partial_profit_once
listen_partial_loss = default_engine.listen_partial_loss
listen_partial_loss_once = default_engine.listen_partial_loss_once

# Orders (issue 16): one order executor per strategy; `listen_order` sees what its orders did
add_order_executor = default_engine.add_order_executor
listen_order = default_engine.listen_order
listen_order_once = default_engine.listen_order_once

# Walker (strategy comparison) and Heat (the portfolio heatmap)
Walker = default_engine.walker
Heat = default_engine.heat
add_walker = default_engine.add_walker
list_walkers = default_engine.list_walkers
listen_walker = default_engine.listen_walker
listen_walker_once = default_engine.listen_walker_once
listen_walker_progress = default_engine.listen_walker_progress
listen_walker_complete = default_engine.listen_walker_complete
listen_walker_stop = default_engine.listen_walker_stop
listen_done_walker = default_engine.listen_done_walker
listen_done_walker_once = default_engine.listen_done_walker_once

__all__ = [
    "CHANNELS",
    "DEFAULT_CONFIG",
    "ActivePosition",
    "ActiveResult",
    "Backtest",
    "BacktestKitError",
    "BridgeStats",
    "CancelHandle",
    "CancelledResult",
    "Candle",
    "CandleDataWarning",
    "CandleError",
    "CandleGaps",
    "CcxtExecutor",
    "Clock",
    "ClosedResult",
    "Config",
    "ConfigError",
    "ConsoleNotifier",
    "Constant",
    "CsvCandles",
    "DoneEvent",
    "DroppedCandle",
    "Engine",
    "EventBus",
    "EventsDroppedError",
    "ExchangeError",
    "ExecutorContext",
    "FilePersist",
    "FinishedResult",
    "FloatRange",
    "Heat",
    "HeatRow",
    "HeatStatistics",
    "IdleResult",
    "InstanceInfo",
    "IntRange",
    "JournaledExecutor",
    "LeaseHeldError",
    "LeaseLostError",
    "ListenerTimeoutError",
    "Live",
    "LogNotifier",
    "MemoryCandles",
    "MetricStats",
    "NatsBridge",
    "Notifier",
    "NotifierStats",
    "OpenedResult",
    "OrderEvent",
    "OrderExecutor",
    "OrderGateway",
    "OrderRequest",
    "PaperExecutor",
    "PaperGateway",
    "Partial",
    "PartialEntry",
    "PartialEvent",
    "PartialStatistics",
    "Performance",
    "PerformanceEvent",
    "PerformanceStatistics",
    "PersistBackend",
    "PersistError",
    "PnL",
    "PositionSize",
    "PostgresPersist",
    "ProgressEvent",
    "QueuedNotifier",
    "RedisPersist",
    "RemoteError",
    "RemoteEvent",
    "RemoteEvents",
    "RemoteStats",
    "RemoteSubscription",
    "ReplayExchange",
    "Risk",
    "RiskCheckArgs",
    "RiskEvent",
    "RiskStatistics",
    "RunStateError",
    "Schedule",
    "ScheduleEvent",
    "ScheduleStatistics",
    "ScheduledResult",
    "SchemaError",
    "SignalDto",
    "SignalLifecycleEvent",
    "SignalRow",
    "SignalTimeoutError",
    "SignalValidationError",
    "SizingError",
    "StaleDataError",
    "Statistics",
    "StrategyCallbacks",
    "Sweep",
    "SweepProgress",
    "SweepResult",
    "SweepRow",
    "SystemClock",
    "TelegramNotifier",
    "TickResult",
    "TradeFill",
    "UnknownNameError",
    "VirtualClock",
    "WalkForward",
    "Walker",
    "WalkerCallbacks",
    "WalkerCancel",
    "WalkerContract",
    "WalkerData",
    "WalkerInstanceInfo",
    "WalkerProgressEvent",
    "WalkerResults",
    "WalkerSchema",
    "WalkerStopEvent",
    "WalkerStrategyResult",
    "WebhookNotifier",
    "add_ccxt_exchange",
    "add_exchange",
    "add_frame",
    "add_notifier",
    "add_order_executor",
    "add_risk",
    "add_sizing",
    "add_strategy",
    "add_walker",
    "bundled_sample_path",
    "client_order_id",
    "default_engine",
    "execution_context",
    "format_price",
    "format_quantity",
    "get_average_price",
    "get_candles",
    "get_config",
    "get_date",
    "get_default_config",
    "get_mode",
    "install_signal_handlers",
    "list_exchanges",
    "list_frames",
    "list_risks",
    "list_sizings",
    "list_strategies",
    "list_walkers",
    "listen_backtest_progress",
    "listen_done_backtest",
    "listen_done_backtest_once",
    "listen_done_live",
    "listen_done_live_once",
    "listen_done_walker",
    "listen_done_walker_once",
    "listen_error",
    "listen_exit",
    "listen_order",
    "listen_order_once",
    "listen_partial_loss",
    "listen_partial_loss_once",
    "listen_partial_profit",
    "listen_partial_profit_once",
    "listen_performance",
    "listen_progress",
    "listen_remote",
    "listen_risk",
    "listen_risk_once",
    "listen_signal",
    "listen_signal_backtest",
    "listen_signal_backtest_once",
    "listen_signal_live",
    "listen_signal_live_once",
    "listen_signal_once",
    "listen_validation",
    "listen_walker",
    "listen_walker_complete",
    "listen_walker_once",
    "listen_walker_progress",
    "listen_walker_stop",
    "replay_clock",
    "serve_dashboard",
    "set_config",
    "set_logger",
    "use_persist",
]


def add_ccxt_exchange(exchange_name: str, exchange_id: str = "binance", **kwargs: Any) -> Any:
    """Register a ccxt exchange on the default engine (see `backtest_kit.adapters.ccxt`).

    ccxt itself (about a second to import) is imported only when the exchange is first used.
    """
    return _add_ccxt_exchange(exchange_name, exchange_id, **kwargs)


def _resolve_own_annotations(cls: type) -> None:
    """Replace `cls`'s own string annotations by the objects they name, evaluated in its home module.

    `from __future__ import annotations` leaves annotations as strings that `typing.get_type_hints`
    and msgspec (when it first encodes or decodes a Struct) evaluate in `sys.modules[cls.__module__]`.
    Once `__module__` says "backtest_kit" that would be the wrong namespace (no `Literal`, no
    `Position` there), so they are evaluated now, while the home module is still known. A name only
    imported under TYPE_CHECKING stays a string: it was unresolvable at run time before, too.
    """
    own = inspect.get_annotations(cls)
    if not own:
        return
    module_globals = vars(sys.modules[cls.__module__])
    resolved: dict[str, Any] = {}
    for key, value in own.items():
        if isinstance(value, str):
            with contextlib.suppress(Exception):
                # the order typing.get_type_hints and msgspec use: the module's names win over the class's
                value = eval(value, dict(vars(cls)), module_globals)
        resolved[key] = value
    cls.__annotations__ = resolved


def _adopt(namespace: dict[str, Any], names: Iterable[str]) -> None:
    """Set `__module__ = "backtest_kit"` on the classes and functions re-exported under their own name.

    Only those: pickle finds an object again by `__module__` + `__qualname__`, which `backtest_kit.X`
    then satisfies. Bound methods of `default_engine` (`bk.listen_signal`) and instances (`bk.Backtest`)
    keep their class's module.
    """
    for name in names:
        obj = namespace[name]
        if not (inspect.isclass(obj) or inspect.isfunction(obj)) or obj.__name__ != name:
            continue
        if not obj.__module__.startswith(__name__ + "."):
            continue
        if inspect.isclass(obj):
            _resolve_own_annotations(obj)
        obj.__module__ = __name__


_adopt(globals(), __all__)

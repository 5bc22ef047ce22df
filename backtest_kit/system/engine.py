"""`Engine`: one isolated world of registries, event bus, clock, config, runners and statistics.

The module-level API of `backtest_kit` is bound to `bk.default_engine`; tests build their own
`Engine` so no state leaks between them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from ..engine.bus import EventBus
from ..engine.channels import ERROR, ORDER, SIGNAL
from ..engine.clock import Clock, SystemClock, clock_now_ms
from ..engine.config import DEFAULT_CONFIG, Config, merge_config
from ..engine.errors import ConfigError, SchemaError
from ..engine.exchange import ExchangeClient
from ..engine.lease import FencedPersist, LeaseBackend, PairLease, SharedRiskBackend
from ..engine.logger import EngineLogger, LoggerLike
from ..engine.models import OrderEvent, SignalRow
from ..engine.persist import (
    ENTITY_ORDERS,
    ENTITY_PARTIAL,
    ENTITY_RISK,
    ENTITY_SCHEDULES,
    ENTITY_SIGNALS,
    PersistBackend,
    PersistObserver,
    timed_backend,
)
from ..engine.registry import (
    ExchangeSchema,
    FrameSchema,
    Registry,
    RiskSchema,
    SizingSchema,
    StrategyCallbacks,
    StrategySchema,
    WalkerCallbacks,
    WalkerSchema,
    make_exchange,
    make_frame,
    make_risk,
    make_sizing,
    make_strategy,
    make_walker,
)
from ..engine.runner import RunHooks
from ..engine.signal_store import PersistedSignalStore, signal_key
from ..engine.strategy import RunEnv, StrategyInstance
from ..engine.validation import restored_row_problems
from ..engine.voids import SignalVoids
from ..execution.protocol import ExecutorContext, OrderExecutor
from ..execution.router import OrderRouter
from ..listeners.notifiers import attach_notifier
from ..listeners.subscriptions import ListenMixin
from ..portfolio.partial import PartialFacade, PartialService
from ..portfolio.risk import RiskService
from ..portfolio.risk_facade import RiskFacade
from ..portfolio.shared_risk import SharedRiskGate
from ..portfolio.sizing import CustomSizer, PositionSizeFacade, check_sizing_schema
from ..reports.heat_stats import HeatFacade
from ..reports.performance_stats import PerformanceFacade
from ..reports.schedule_stats import ScheduleFacade
from .modes import BacktestFacade, LiveFacade
from .walker import WalkerFacade

__all__ = ["PERSIST_ENTITIES", "Engine"]

PERSIST_ENTITIES = (ENTITY_SIGNALS, ENTITY_SCHEDULES, ENTITY_RISK, ENTITY_PARTIAL, ENTITY_ORDERS)


def _same(a: object, b: object) -> bool:
    """Whether two backend references are one object (a lease fences only writes to its own store)."""
    return a is b


class Engine(ListenMixin):
    """Registries, bus, clock, config and the `backtest` / `live` runners of one world."""

    def __init__(
        self,
        *,
        persist_dir: str | Path = "./data",
        dump_dir: str | Path = "./dump",
        clock: Clock | None = None,
        config: Config | Mapping[str, Any] | None = None,
        logger: LoggerLike | logging.Logger | None = None,
    ) -> None:
        self.persist_dir = Path(persist_dir)
        self.dump_dir = Path(dump_dir)
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.logger = EngineLogger(logger)
        self.bus = EventBus(self.logger, clock=self.clock, config=self._get_config)
        self.registry = Registry()
        if isinstance(config, Config):
            self.config = config
        else:
            self.config = merge_config(DEFAULT_CONFIG, config, {})
        self._exchanges: dict[str, ExchangeClient] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._shutdown_hooks: list[Callable[[], Any]] = []
        self._notifier_hooks: set[int] = set()  # notifiers whose aclose is a shutdown hook already
        hooks = RunHooks(make_instance=self._make_instance, track_task=self._track_task,
                         hold_persist=self._hold_persist, release_persist=self._release_persist,
                         lease_for=self._take_lease)
        self.schedule = ScheduleFacade(self)
        # the portfolio heatmap is fed every closed trade of both modes by their statistics stores
        self.heat = HeatFacade(self)
        self.backtest = BacktestFacade(self, hooks, self.schedule, self.heat.add)
        self.live = LiveFacade(self, hooks, self.schedule, self.heat.add)
        self.walker = WalkerFacade(self, self.backtest)
        self.performance = PerformanceFacade(self)
        # its report store subscribes before any user listener
        self._risk = RiskService(self, backtest_ended=self.backtest.ended)
        self._partials = PartialService(self)
        self.risk = RiskFacade(self._risk)
        self.partial = PartialFacade(self._partials)
        self.position_size = PositionSizeFacade(self)
        self._voids = SignalVoids()
        self._env = RunEnv(config=self._get_config, logger=self.logger, report_error=self.report_error,
                           voids=self._voids)
        self._persist: PersistBackend | None = None
        self._persist_by_entity: dict[str, PersistBackend] = {}
        # live runs holding the persist directory lock
        # ([hardening item 3](../../docs/design/decisions.md#hardening-3-one-engine-per-persist-directory))
        self._persist_holds = 0
        self._persist_locked: list[Any] = []
        # the lease of each live instance made and not yet handed to its run (`_take_lease`)
        self._leases: dict[tuple[str, str], PairLease] = {}
        self._order_routers: dict[str, OrderRouter] = {}  # strategy name -> its order executor's router
        # persistence timing (`observe_persist`, the dashboard's metrics): None costs nothing
        self._persist_observers: list[PersistObserver] = []
        self._timed: dict[int, tuple[PersistBackend, PersistBackend]] = {}

    # ------------------------------------------------------------------ facade aliases
    # The module-level API spells the facades `bk.Backtest`, `bk.Live`, ...; these read-only aliases
    # make every one of them an `Engine` attribute too (README,
    # [public API](../../docs/design/public-api.md#engine-and-the-module-level-api)):
    # `engine.Live.run(...)` is `engine.live.run(...)`, the same object.
    @property
    def Backtest(self) -> BacktestFacade:
        return self.backtest

    @property
    def Live(self) -> LiveFacade:
        return self.live

    @property
    def Schedule(self) -> ScheduleFacade:
        return self.schedule

    @property
    def Performance(self) -> PerformanceFacade:
        return self.performance

    @property
    def Risk(self) -> RiskFacade:
        return self.risk

    @property
    def Partial(self) -> PartialFacade:
        return self.partial

    @property
    def PositionSize(self) -> PositionSizeFacade:
        return self.position_size

    @property
    def Walker(self) -> WalkerFacade:
        return self.walker

    @property
    def Heat(self) -> HeatFacade:
        return self.heat

    # ------------------------------------------------------------------ config and logging
    def _get_config(self) -> Config:
        return self.config

    def set_config(self, changes: Mapping[str, Any] | None = None, /, *, unsafe: bool = False,
                   **keys: Any) -> Config:
        """Validate and apply `CC_*` settings atomically; raises ConfigError naming the key."""
        self.config = merge_config(self.config, changes, keys, unsafe=unsafe)
        return self.config

    def get_config(self) -> Config:
        return self.config

    @staticmethod
    def get_default_config() -> Config:
        return DEFAULT_CONFIG

    def set_logger(self, logger: LoggerLike | logging.Logger) -> None:
        self.logger.set(logger)

    # ------------------------------------------------------------------ registration
    def add_exchange(
        self, *, exchange_name: str, get_candles: Callable[..., Any],
        format_price: Callable[..., Any] | None = None, format_quantity: Callable[..., Any] | None = None,
        note: str | None = None, on_candle_data: Callable[..., Any] | None = None,
        on_close: Callable[[], Any] | None = None,
    ) -> ExchangeSchema:
        """Register a candle source; `on_close` releases its resources when the engine closes."""
        schema = make_exchange(exchange_name, get_candles, format_price, format_quantity, note,
                               on_candle_data, on_close)
        return self.registry.exchanges.add(schema.exchange_name, schema)

    def add_strategy(
        self, *, strategy_name: str, interval: str, get_signal: Callable[..., Any],
        callbacks: StrategyCallbacks | Mapping[str, Any] | None = None, risk_name: str | None = None,
        sizing_name: str | None = None, note: str | None = None,
    ) -> StrategySchema:
        schema = make_strategy(strategy_name, interval, get_signal, callbacks, risk_name, sizing_name, note)
        return self.registry.strategies.add(schema.strategy_name, schema)

    def add_frame(
        self, *, frame_name: str, interval: str, start_date: datetime, end_date: datetime,
        note: str | None = None, on_timeframe: Callable[..., Any] | None = None,
    ) -> FrameSchema:
        schema = make_frame(frame_name, interval, start_date, end_date, note, on_timeframe)
        return self.registry.frames.add(schema.frame_name, schema)

    def add_risk(
        self, *, risk_name: str, max_concurrent_positions: int | None = None,
        validations: Sequence[Any] | None = None, callbacks: Mapping[str, Any] | None = None,
        note: str | None = None,
    ) -> RiskSchema:
        schema = make_risk(risk_name, max_concurrent_positions, validations, callbacks, note)
        return self.registry.risks.add(schema.risk_name, schema)

    def add_sizing(
        self, *, sizing_name: str, get_quantity: Callable[..., Any] | None = None,
        method: str | None = None, note: str | None = None,
        callbacks: Mapping[str, Callable[..., Any]] | None = None, **params: float,
    ) -> SizingSchema:
        """`get_quantity=fn` (or `method="custom"`) or a built-in `method` with its parameters
        ([risk-sizing §2](../../docs/design/risk-sizing-portfolio.md#2-position-sizing))."""
        # the explicit name of the get_quantity form
        # ([risk-sizing §2.4](../../docs/design/risk-sizing-portfolio.md#24-the-get_quantity-form))
        if method == "custom":
            method = None
        schema = make_sizing(sizing_name, get_quantity, method, params, note)
        if callbacks is not None:
            if not isinstance(callbacks, Mapping):
                raise SchemaError(f"callbacks: expected {{'on_calculate': callable}}, got {callbacks!r}")
            schema = dataclasses.replace(schema, callbacks=dict(callbacks))
        check_sizing_schema(schema)
        return self.registry.sizings.add(schema.sizing_name, schema)

    def add_walker(
        self, *, walker_name: str, exchange_name: str, frame_name: str, strategies: Sequence[str],
        metric: str = "sharpe_ratio", callbacks: WalkerCallbacks | Mapping[str, Any] | None = None,
        note: str | None = None,
    ) -> WalkerSchema:
        """Register a strategy comparison ([risk-sizing §4](../../docs/design/risk-sizing-portfolio.md#4-walker)):
        `strategies` backtested in order on the exchange and frame, ranked by `metric` (a `Statistics`
        field, `registry.WALKER_METRICS`; higher is better, `max_drawdown` lower). The names are checked
        when the walker runs."""
        schema = make_walker(walker_name, exchange_name, frame_name, strategies, metric, callbacks, note)
        return self.registry.walkers.add(schema.walker_name, schema)

    def add_order_executor(self, *, strategy_name: str, executor: OrderExecutor, trade: bool = False) -> None:
        """Turn the signals of `strategy_name` into orders through `executor` (one per strategy)
        ([issue 16](../../README.md#orders-paper-and-real)).

        The executor gets the strategy's signal lifecycle in both modes (a real one: live only) and
        publishes its orders' fate on the `order` channel (`listen_order`); the statistics then show the
        realised PnL of the fills next to the model's. `trade=True` is the explicit opt-in an executor
        that places real orders (`places_real_orders`) needs: without it this raises ConfigError.
        """
        self.check_strategy(strategy_name, "add_order_executor")
        if not isinstance(executor, OrderExecutor):
            raise SchemaError(
                f"add_order_executor: executor must implement OrderExecutor (places_real_orders, start, "
                f"restore, on_signal, poll, aclose), got {type(executor).__name__}"
            )
        if not isinstance(trade, bool):
            raise SchemaError(f"add_order_executor: trade must be True or False, got {trade!r}")
        if strategy_name in self._order_routers:
            raise SchemaError(f"add_order_executor: strategy {strategy_name!r} already has an order executor")
        context = ExecutorContext(
            strategy_name=strategy_name, publish=self._publish_order,
            persist=lambda: self.persist_for(ENTITY_ORDERS), exchange=self.exchange, config=self._get_config,
            now_ms=self.now_ms, report_error=self.report_error, logger=self.logger, trade=trade,
            void_signal=lambda symbol, signal_id, reason: self._voids.request(strategy_name, symbol, signal_id,
                                                                              reason),
        )
        router = OrderRouter(executor, context)  # refuses a real executor without trade=True
        if not self._order_routers:
            self.bus.subscribe(ORDER, self._record_order)
        self._order_routers[strategy_name] = router
        self.bus.subscribe(SIGNAL, router, filter=router.accepts)
        self.add_shutdown_hook(router.aclose)

    async def _publish_order(self, event: OrderEvent) -> None:
        await self.bus.emit(ORDER, event)

    def _record_order(self, event: OrderEvent) -> None:
        """Every order event reaches its pair's statistics store (realised PnL from fills)."""
        facade = self.backtest if event.backtest else self.live
        facade.pair_stats.stats(event.symbol, event.strategy_name).add_order(event)

    def list_walkers(self) -> list[WalkerSchema]:
        return self.registry.walkers.list()

    def list_exchanges(self) -> list[ExchangeSchema]:
        return self.registry.exchanges.list()

    def list_strategies(self) -> list[StrategySchema]:
        return self.registry.strategies.list()

    def list_frames(self) -> list[FrameSchema]:
        return self.registry.frames.list()

    def list_risks(self) -> list[RiskSchema]:
        return self.registry.risks.list()

    def list_sizings(self) -> list[SizingSchema]:
        return self.registry.sizings.list()

    # ------------------------------------------------------------------ runtime services
    def check_strategy(self, strategy_name: str, source: str) -> StrategySchema:
        """The strategy's schema, after checking it and its risk profile exist
        ([events §2.4](../../docs/design/events-and-api.md#24-name-validation))."""
        schema = self.registry.strategies.get(strategy_name, source)
        if schema.risk_name is not None:
            self.registry.risks.get(schema.risk_name, source)
        return schema

    def now_ms(self) -> int:
        return clock_now_ms(self.clock)

    def exchange(self, exchange_name: str, source: str = "") -> ExchangeClient:
        """The client of a registered exchange (one per name, created on first use)."""
        client = self._exchanges.get(exchange_name)
        if client is None:
            schema = self.registry.exchanges.get(exchange_name, source)
            client = ExchangeClient(schema, self._get_config, self.logger, self.now_ms, self.clock.sleep)
            self._exchanges[exchange_name] = client
        return client

    def _make_instance(
        self, schema: StrategySchema, exchange_name: str, symbol: str, *, backtest: bool, source: str
    ) -> StrategyInstance:
        exchange = self.exchange(exchange_name, source)
        lease = None if backtest else self._new_lease(symbol, schema.strategy_name)
        risk: Any = None
        if schema.risk_name is not None:
            risk = self._risk.gate(schema.risk_name, symbol, schema.strategy_name, exchange_name,
                                   backtest=backtest, source=source)
            shared = self._backend_for(ENTITY_RISK)  # the backend itself, not a timing wrapper
            if lease is not None and _same(shared, lease.backend) and isinstance(shared, SharedRiskBackend):
                risk = SharedRiskGate(risk.state, symbol, schema.strategy_name, exchange_name, shared, lease)
            elif lease is not None:
                self.logger.warn(f"risk {schema.risk_name}: counted in this process only (its state is not in "
                                 "the backend holding the pair leases, so other processes' positions are not seen)")
        sizer = None
        if schema.sizing_name is not None:
            sizing = self.registry.sizings.get(schema.sizing_name, source)
            if sizing.get_quantity is not None:  # built-in methods need a balance: not automatic
                sizer = CustomSizer(self, sizing, exchange, symbol, schema.strategy_name, backtest)
        return StrategyInstance(
            env=self._env, schema=schema, exchange=exchange, symbol=symbol, backtest=backtest,
            risk=risk, sizer=sizer, partial=self._partials.tracker(
                symbol, schema.strategy_name, backtest=backtest,
                callbacks=schema.callbacks.on_partial_profit is not None
                or schema.callbacks.on_partial_loss is not None,
            ),
            store=None if backtest else self._signal_store(symbol, schema.strategy_name, exchange_name, lease),
        )

    # ------------------------------------------------------------------ pair leases (live, shared stores)
    def _new_lease(self, symbol: str, strategy_name: str) -> PairLease | None:
        """The lease a live run of the pair must hold when its signals live in a `LeaseBackend`
        (Redis, PostgreSQL: see `engine/lease.py`); None for stores one process owns (`FilePersist`)."""
        backend = self._backend_for(ENTITY_SIGNALS)  # the backend itself, not a timing wrapper
        if not isinstance(backend, LeaseBackend):
            self._leases.pop((symbol, strategy_name), None)
            return None
        lease = PairLease(backend, signal_key(symbol, strategy_name), f"live {symbol}/{strategy_name}",
                          self.report_error, self.logger.info)
        self._leases[(symbol, strategy_name)] = lease
        return lease

    def _take_lease(self, symbol: str, strategy_name: str) -> PairLease | None:
        """Hand the lease of the instance just made to its live run (`RunHooks.lease_for`)."""
        return self._leases.pop((symbol, strategy_name), None)

    # ------------------------------------------------------------------ persistence (live only)
    @property
    def persist(self) -> PersistBackend:
        """The backend of every entity without its own (`use_persist`); `FilePersist(persist_dir)` by
        default, created on first use so that building an Engine touches no disk."""
        if self._persist is None:
            from ..adapters.file_persist import FilePersist

            self._persist = FilePersist(self.persist_dir)
        return self._persist

    def use_persist(self, backend: PersistBackend, *, entity: str | None = None) -> None:
        """Store live state in `backend`: for every entity, or only for `entity` ("signals",
        "schedules", "risk", "partial", "orders"). Call it before starting live runs: running instances read
        their backend on every operation, so a switch mid-run would not see what the old one holds."""
        if not isinstance(backend, PersistBackend):
            raise TypeError(
                f"use_persist: backend must implement PersistBackend (async read, write, delete, keys), "
                f"got {type(backend).__name__}"
            )
        if entity is None:
            self._persist = backend
            self._persist_by_entity.clear()
            return
        if entity not in PERSIST_ENTITIES:
            raise ConfigError(f"use_persist: entity must be one of {', '.join(PERSIST_ENTITIES)}, got {entity!r}")
        self._persist_by_entity[entity] = backend

    def persist_for(self, entity: str) -> PersistBackend:
        """The backend that stores `entity` (timed while someone `observe_persist`s)."""
        backend = self._backend_for(entity)
        if not self._persist_observers:
            return backend
        timed = self._timed.get(id(backend))
        if timed is None or timed[0] is not backend:
            timed = self._timed[id(backend)] = (backend, timed_backend(backend, self._observe_persist))
        return timed[1]

    def _backend_for(self, entity: str) -> PersistBackend:
        backend = self._persist_by_entity.get(entity)
        return backend if backend is not None else self.persist

    def observe_persist(self, observer: PersistObserver) -> Callable[[], None]:
        """Call `observer(operation, entity, seconds)` after every persistence call of the engine's live
        state (the dashboard's latency metric); returns an idempotent remove function."""
        self._persist_observers.append(observer)

        def remove() -> None:
            if observer in self._persist_observers:
                self._persist_observers.remove(observer)
            if not self._persist_observers:
                self._timed.clear()

        return remove

    def _observe_persist(self, op: str, entity: str, seconds: float) -> None:
        for observer in tuple(self._persist_observers):
            observer(op, entity, seconds)

    def _signal_store(
        self, symbol: str, strategy_name: str, exchange_name: str, lease: PairLease | None = None
    ) -> PersistedSignalStore:
        persist_for = self.persist_for
        if lease is not None:
            fenced = FencedPersist(lease.backend, lease)

            def persist_for(entity: str) -> PersistBackend:  # the pair's writes carry its fencing token
                # compared before any timing wrapper of `observe_persist` (fenced writes are not timed)
                if _same(self._backend_for(entity), lease.backend):
                    return fenced
                return self.persist_for(entity)

        return PersistedSignalStore(
            persist_for, symbol, strategy_name, self.report_error, exchange_name=exchange_name,
            check_row=self.restored_row_problems,
        )

    def restored_row_problems(self, row: SignalRow) -> list[str]:
        """Why a stored signal row may not be restored now (creation checks, clock sanity)."""
        return restored_row_problems(row, self.config, self.now_ms())

    def _hold_persist(self) -> None:
        """A live run starts: own the directory of every backend that can be locked (`FilePersist`).

        Raises `PersistError` naming the holder when another engine owns one; nothing is touched then.
        The lock is held while this engine has live runs and given back by the last one to end (or by
        `close`), so a later engine, or a restart in this process, can take over.
        """
        if self._persist_holds == 0:
            backends = {id(b): b for b in map(self._backend_for, PERSIST_ENTITIES)}.values()
            lockable: list[Any] = [b for b in backends if callable(getattr(b, "acquire_lock", None))]
            try:
                for backend in lockable:
                    backend.acquire_lock()
                    self._persist_locked.append(backend)
            except BaseException:
                self._release_locks()
                raise
        self._persist_holds += 1

    def _release_persist(self) -> None:
        """A live run ended; the last one gives the directory back and forgets cached live risk state
        (another engine may change the files before this one runs live again)."""
        self._persist_holds = max(0, self._persist_holds - 1)
        if self._persist_holds == 0:
            self._release_locks()
            self._risk.forget_live()

    def _release_locks(self) -> None:
        locked, self._persist_locked = self._persist_locked, []
        for backend in locked:
            backend.release_lock()

    async def report_error(self, error: BaseException) -> None:
        """Log a recoverable error and publish it on the `error` channel."""
        self.logger.warn("error", repr(error))
        await self.bus.emit(ERROR, error)

    def _track_task(self, task: asyncio.Task[Any]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def add_shutdown_hook(self, hook: Callable[[], Awaitable[Any] | Any]) -> None:
        """Run `hook` (sync or async) when the engine closes, e.g. to close a network client."""
        self._shutdown_hooks.append(hook)

    def add_notifier(
        self, notifier: Any, *, channels: Sequence[str] | str | None = None,
        filter: Callable[[Any], Any] | None = None,
    ) -> Callable[[], None]:
        """Send events to `notifier` (a `bk.Notifier`) through its own bounded queue, never awaiting
        the network; `close()` drains and closes it. Default channels: live signals, errors, risk
        rejections, partial levels, live done; default filter: no idle/active ticks, no backtest
        events. Returns an unsubscribe function."""
        return attach_notifier(self, notifier, channels=channels, filter=filter, hooked=self._notifier_hooks)

    async def close(self, *, timeout: float | None = None) -> None:
        """Stop background runs gracefully, wait for them, close exchanges and run shutdown hooks.

        A graceful stop lets open positions run to their close, which can take hours live. With
        `timeout` (seconds of wall-clock time) runs still going after it are cancelled: their open
        positions stay persisted and are restored by the next start.
        """
        self.walker.request_stop_all()  # first: a stopped walker starts no further strategy
        self.backtest.request_stop_all()
        self.live.request_stop_all()
        tasks = list(self._tasks)
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=timeout)
            for task in pending:
                self.logger.warn("close: run still going after the timeout, cancelled", task.get_name())
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        await self.bus.drain()
        self._persist_holds = 0  # a run never iterated still held it
        self.live.forget_holds()
        self._release_locks()
        for client in list(self._exchanges.values()):
            try:
                await client.close()
            except Exception as exc:
                self.logger.warn(f"exchange {client.name}: close failed", repr(exc))
        for hook in self._shutdown_hooks:
            try:
                result = hook()
                if inspect.isawaitable(result):
                    await result
            except Exception as exc:
                self.logger.warn("shutdown hook failed", repr(exc))

    async def __aenter__(self) -> Engine:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

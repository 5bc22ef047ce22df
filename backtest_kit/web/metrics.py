"""`/metrics`: the engine's health in Prometheus' text format, one `CollectorRegistry` per dashboard.

Why its own registry: two dashboards (two engines in one process, or a test beside a real one) must
not share or double-register series, and nothing here should appear in a user's global registry.

What is measured and where, so that an engine without a dashboard pays nothing:
- events per channel and their delivery time: `EventBus.time_deliveries`, which swaps in a timed
  `publish` only while a dashboard is attached;
- ticks and tick lag: a plain listener on `signal_live` (lag = the engine-clock gap between two
  ticks of a pair beyond the tick period `CC_TICK_TTL_MS`: how late the loop ran the tick);
- errors by type: a listener on `error`;
- persistence latency: `Engine.observe_persist`, which times the backends only while observed;
- open positions: read from the dashboard's state when scraped;
- stream clients and the updates dropped for slow ones: from the SSE hub.
A dashboard fed from NATS has no bus: it counts the events it receives by channel.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from ..engine.models import TickResult

if TYPE_CHECKING:
    from ..system.engine import Engine

__all__ = ["CONTENT_TYPE", "DashboardMetrics"]

CONTENT_TYPE = CONTENT_TYPE_LATEST

_LAG_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_FAST_BUCKETS = (1e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0, 5.0)


class DashboardMetrics:
    """The series of one dashboard in `registry`; `attach(engine)` starts measuring, returns the stop."""

    def __init__(self, open_positions: Callable[[], int], stream_clients: Callable[[], int]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.ticks = Counter("backtest_kit_ticks", "Live ticks run, by result action", ["action"], registry=r)
        self.tick_lag = Histogram(
            "backtest_kit_tick_lag_seconds",
            "How late a live tick ran: engine-clock gap since the pair's previous tick beyond CC_TICK_TTL_MS",
            buckets=_LAG_BUCKETS, registry=r)
        self.events = Counter("backtest_kit_events", "Events published on the bus (or received from NATS), "
                              "by channel", ["channel"], registry=r)
        self.delivery = Histogram(
            "backtest_kit_listener_delivery_seconds",
            "Wall time from a publish until every listener of the channel had the event", ["channel"],
            buckets=_FAST_BUCKETS, registry=r)
        self.errors = Counter("backtest_kit_errors", "Errors reported on the error channel, by type", ["type"],
                              registry=r)
        self.persist = Histogram(
            "backtest_kit_persist_seconds", "Latency of live-state persistence calls, by operation and entity",
            ["operation", "entity"], buckets=_FAST_BUCKETS, registry=r)
        self.open_positions = Gauge("backtest_kit_open_positions", "Open (or scheduled) live positions",
                                    registry=r)
        self.open_positions.set_function(lambda: float(open_positions()))
        self.stream_clients = Gauge("backtest_kit_dashboard_stream_clients", "Connected Server-Sent Events clients",
                                    registry=r)
        self.stream_clients.set_function(lambda: float(stream_clients()))
        self.stream_dropped = Counter("backtest_kit_dashboard_stream_dropped",
                                      "Updates dropped because a stream client was too slow", registry=r)
        # label children cached: `labels()` parses its arguments on every call
        self._events: dict[str, Counter] = {}
        self._delivery: dict[str, Histogram] = {}
        self._ticks: dict[str, Counter] = {}
        self._last_tick: dict[tuple[str, str], int] = {}

    # ------------------------------------------------------------------ recording
    def count_event(self, channel: str) -> None:
        child = self._events.get(channel)
        if child is None:
            child = self._events[channel] = self.events.labels(channel)
        child.inc()

    def on_delivery(self, channel: str, seconds: float) -> None:
        self.count_event(channel)
        child = self._delivery.get(channel)
        if child is None:
            child = self._delivery[channel] = self.delivery.labels(channel)
        child.observe(seconds)

    def on_tick(self, result: TickResult, now_ms: int, period_ms: float) -> None:
        action = result.action
        child = self._ticks.get(action)
        if child is None:
            child = self._ticks[action] = self.ticks.labels(action)
        child.inc()
        key = (result.symbol, result.strategy_name)
        previous = self._last_tick.get(key)
        self._last_tick[key] = now_ms
        if previous is not None:
            self.tick_lag.observe(max(0.0, (now_ms - previous - period_ms) / 1000))

    def on_error(self, type_name: str) -> None:
        self.errors.labels(type_name).inc()

    def on_persist(self, operation: str, entity: str, seconds: float) -> None:
        self.persist.labels(operation, entity).observe(seconds)

    def on_stream_drop(self) -> None:
        self.stream_dropped.inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)

    # ------------------------------------------------------------------ attaching
    def attach(self, engine: Engine) -> Callable[[], None]:
        """Measure `engine` (see the module docstring); returns the function that stops it."""
        from ..engine.channels import ERROR, SIGNAL_LIVE

        def on_tick(result: TickResult) -> None:
            self.on_tick(result, engine.now_ms(), engine.config.CC_TICK_TTL_MS)

        def on_error(error: BaseException) -> None:
            self.on_error(type(error).__name__)

        stops = [
            engine.bus.time_deliveries(self.on_delivery),
            engine.bus.subscribe(SIGNAL_LIVE, on_tick),
            engine.bus.subscribe(ERROR, on_error),
            engine.observe_persist(self.on_persist),
        ]

        def stop() -> None:
            for off in stops:
                off()

        return stop

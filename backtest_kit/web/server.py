"""`serve_dashboard`: start the dashboard on the running loop, fed by an engine or by NATS.

Why on the engine's own loop rather than a thread: the state is folded by plain bus listeners (no
locks, no cross-thread queues) and aiohttp never blocks the loop; every handler only reads that state.
The listeners are sync and O(1), so the engine's cost with a dashboard attached is a function call per
event, and without one nothing at all (the timing hooks are installed only by `attach`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

from aiohttp import web

from ..engine.channels import DONE_LIVE, ERROR, PARTIAL_LOSS, PARTIAL_PROFIT, RISK, SIGNAL_LIVE
from ..engine.config import DEFAULT_CONFIG
from ..engine.models import DoneEvent, PartialEvent, RiskEvent, TickResult
from ..engine.redact import register_secret
from .api import DashboardContext, build_app
from .metrics import DashboardMetrics
from .security import check_bind, is_loopback
from .state import DashboardState
from .stream import StreamHub

if TYPE_CHECKING:
    from ..adapters.nats_remote import RemoteEvent, RemoteEvents, RemoteSubscription
    from ..system.engine import Engine

__all__ = ["REMOTE_CHANNELS", "DashboardHandle", "serve_dashboard"]

REMOTE_CHANNELS = (SIGNAL_LIVE.name, RISK.name, PARTIAL_PROFIT.name, PARTIAL_LOSS.name, ERROR.name, DONE_LIVE.name)
"""The channels a NATS-fed dashboard subscribes to (a bridge must publish them: its default does)."""


class _Partial:
    """A partial-level listener marked `live_only`: the dashboard shows live levels, so a backtest need
    not track levels for it (`PartialService.tracker`)."""

    live_only = True

    def __init__(self, state: DashboardState, kind: Literal["profit", "loss"]) -> None:
        self.state = state
        self.kind: Literal["profit", "loss"] = kind

    def __call__(self, event: PartialEvent) -> None:
        self.state.on_partial(self.kind, event)


def _attach_engine(engine: Engine, state: DashboardState, metrics: DashboardMetrics) -> list[Callable[[], None]]:
    def on_error(error: BaseException) -> None:
        state.on_error(type(error).__name__, str(error))

    bus = engine.bus
    return [
        bus.subscribe(SIGNAL_LIVE, state.on_tick),
        bus.subscribe(RISK, state.on_risk),
        bus.subscribe(PARTIAL_PROFIT, _Partial(state, "profit")),
        bus.subscribe(PARTIAL_LOSS, _Partial(state, "loss")),
        bus.subscribe(ERROR, on_error),
        bus.subscribe(DONE_LIVE, state.on_done),
        metrics.attach(engine),
    ]


def _remote_callback(state: DashboardState, metrics: DashboardMetrics) -> Callable[[RemoteEvent[Any]], None]:
    period = DEFAULT_CONFIG.CC_TICK_TTL_MS

    def on_event(remote: RemoteEvent[Any]) -> None:
        channel, event = remote.channel, remote.event
        metrics.count_event(channel)
        if channel == SIGNAL_LIVE.name:
            result: TickResult = event
            state.on_tick(result)
            metrics.on_tick(result, state.now_ms(), period)
        elif channel == RISK.name:
            risk: RiskEvent = event
            state.on_risk(risk)
        elif channel == PARTIAL_PROFIT.name:
            state.on_partial("profit", event)
        elif channel == PARTIAL_LOSS.name:
            state.on_partial("loss", event)
        elif channel == ERROR.name:
            state.on_error(event.type, event.message)
            metrics.on_error(event.type)
        elif channel == DONE_LIVE.name:
            done: DoneEvent = event
            state.on_done(done)

    return on_event


class DashboardHandle:
    """A running dashboard: `url`, `state`, `metrics`; `await aclose()` (or `async with`) stops it."""

    def __init__(self, url: str, host: str, port: int, runner: web.AppRunner, ctx: DashboardContext,
                 stops: list[Callable[[], None]], subscription: RemoteSubscription | None) -> None:
        self.url = url
        self.host = host
        self.port = port
        self.state = ctx.state
        self.metrics = ctx.metrics
        self.hub = ctx.hub
        self._runner: web.AppRunner | None = runner
        self._stops = stops
        self._subscription = subscription

    async def aclose(self) -> None:
        """Detach from the engine (or NATS), end the streams and close the server; idempotent."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        stops, self._stops = self._stops, []
        for off in stops:
            off()
        subscription, self._subscription = self._subscription, None
        if subscription is not None:
            await subscription.aclose()
        await self.hub.aclose()
        await runner.cleanup()

    async def __aenter__(self) -> DashboardHandle:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"DashboardHandle({self.url!r})"


async def serve_dashboard(
    engine: Engine | None = None,
    host: str = "127.0.0.1",
    port: int = 8765,
    token: str | None = None,
    *,
    remote: RemoteEvents | None = None,
    remote_options: dict[str, Any] | None = None,
    interval: float = 0.25,
    queue_size: int = 8,
    max_events: int = 50,
) -> DashboardHandle:
    """Serve the dashboard of `engine` (default: `bk.default_engine`), or of the events `remote`
    receives from a `bk.NatsBridge` (a process without an engine), at `http://host:port/`.

    `port=0` picks a free port (`handle.url` has it). Loopback only unless `token` is given (at least
    16 characters); with a token, `POST /api/stop` is allowed to bearers of it, and on a non-loopback
    bind every data endpoint needs it. `interval`: at most one pushed update per this many seconds;
    `queue_size`: updates queued per stream client before the oldest is dropped. `remote_options` go
    to `RemoteEvents.subscribe` (`deliver="all"` rebuilds the state from the stream's history).
    """
    check_bind(host, token)
    register_secret(token)  # masked in every log line, like an exchange key
    loopback = is_loopback(host)
    if remote is not None and engine is not None:
        raise ValueError("serve_dashboard: give an engine or remote events, not both")
    if remote is None and engine is None:
        from ..engine import default_slot
        from ..system.engine import Engine as EngineClass

        default = default_slot.default_engine
        assert isinstance(default, EngineClass)
        engine = default
    hub_ref: list[StreamHub] = []
    state = DashboardState(engine=engine, max_events=max_events, changed=lambda: hub_ref[0].changed())
    metrics = DashboardMetrics(lambda: state.open_positions, lambda: len(hub_ref[0].clients))
    ctx_ref: list[DashboardContext] = []

    async def build() -> bytes:
        return await ctx_ref[0].overview_message()

    hub = StreamHub(build, interval=interval, queue_size=queue_size, on_drop=metrics.on_stream_drop)
    hub_ref.append(hub)
    ctx = DashboardContext(state=state, hub=hub, metrics=metrics, engine=engine, token=token, loopback=loopback,
                           protect_reads=not loopback)
    ctx_ref.append(ctx)
    runner = web.AppRunner(build_app(ctx), handle_signals=False, access_log=None, shutdown_timeout=2.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    bound_port = int(runner.addresses[0][1])
    stops: list[Callable[[], None]] = []
    subscription = None
    try:
        if engine is not None:
            stops = _attach_engine(engine, state, metrics)
        else:
            assert remote is not None
            options = {"channels": list(REMOTE_CHANNELS), **(remote_options or {})}
            subscription = await remote.subscribe(_remote_callback(state, metrics), **options)
    except BaseException:
        for off in stops:
            off()
        await hub.aclose()
        await runner.cleanup()
        raise
    shown = f"[{host}]" if ":" in host else host
    handle = DashboardHandle(f"http://{shown}:{bound_port}/", host, bound_port, runner, ctx, stops, subscription)
    if engine is not None:
        engine.add_shutdown_hook(handle.aclose)  # a closed engine has nothing more to show
    return handle


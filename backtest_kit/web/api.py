"""The dashboard's aiohttp application: the page, the JSON API, the event stream and `/metrics`.

Every JSON response is a msgspec model of `models.py` encoded by msgspec (the same models describe the
API in `openapi.py`). Handlers only read the folded state (`state.py`) and never touch the engine's
run loops, so a slow or stalled client costs its own request task and nothing else; the one write,
`POST /api/stop`, asks for a graceful stop (`Live.stop`) and returns at once.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from importlib import resources
from typing import TYPE_CHECKING, Any

import msgspec
from aiohttp import web

from .metrics import CONTENT_TYPE, DashboardMetrics
from .models import ErrorBody, Health, StopRequest, StopResult
from .openapi import MAX_EVENTS_LIMIT, openapi_document
from .security import SECURITY_HEADERS, security_middleware, token_matches
from .state import DashboardState
from .stream import StreamHub, sse_message

if TYPE_CHECKING:
    from ..system.engine import Engine

__all__ = ["CONTEXT", "DashboardContext", "build_app"]

KEEPALIVE_SECONDS = 15.0
_STATIC = {"/static/app.js": ("app.js", "text/javascript"), "/static/style.css": ("style.css", "text/css")}


@dataclass
class DashboardContext:
    """What the handlers share: the state, the stream hub, the metrics and the security settings."""

    state: DashboardState
    hub: StreamHub
    metrics: DashboardMetrics
    engine: Engine | None
    token: str | None
    loopback: bool
    protect_reads: bool
    _encoder: msgspec.json.Encoder = field(default_factory=msgspec.json.Encoder)

    async def overview_message(self) -> bytes:
        return sse_message("overview", self._encoder.encode(await self.state.overview()))


CONTEXT = web.AppKey("backtest_kit_dashboard", DashboardContext)


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=msgspec.json.encode(body), status=status, content_type="application/json",
                        headers={"Cache-Control": "no-store"})


def _error(status: int, error: str, message: str, **headers: str) -> web.Response:
    response = _json(ErrorBody(error=error, message=message), status)
    response.headers.update(headers)
    return response


def _ctx(request: web.Request) -> DashboardContext:
    return request.app[CONTEXT]


# ---------------------------------------------------------------------------------------------------------
# Reads
# ---------------------------------------------------------------------------------------------------------


async def overview(request: web.Request) -> web.Response:
    return _json(await _ctx(request).state.overview())


async def instances(request: web.Request) -> web.Response:
    return _json(await _ctx(request).state.instances())


async def positions(request: web.Request) -> web.Response:
    return _json(_ctx(request).state.positions())


async def events(request: web.Request) -> web.Response:
    raw = request.query.get("limit")
    limit: int | None = None
    if raw is not None:
        try:
            limit = int(raw)
        except ValueError:
            limit = -1
        if not 1 <= limit <= MAX_EVENTS_LIMIT:
            return _error(400, "bad_limit", f"limit: expected a whole number 1..{MAX_EVENTS_LIMIT}, got {raw!r}")
    return _json(_ctx(request).state.events(limit))


async def stats(request: web.Request) -> web.Response:
    return _json(await _ctx(request).state.stats())


async def equity(request: web.Request) -> web.Response:
    return _json(_ctx(request).state.equity())


async def risk(request: web.Request) -> web.Response:
    return _json(_ctx(request).state.risk())


async def partials(request: web.Request) -> web.Response:
    return _json(_ctx(request).state.partials())


async def errors(request: web.Request) -> web.Response:
    return _json(_ctx(request).state.errors())


async def health(request: web.Request) -> web.Response:
    ctx = _ctx(request)
    return _json(Health(status="ok", mode="engine" if ctx.engine is not None else "remote",
                        stream_clients=len(ctx.hub.clients), stream_dropped=ctx.hub.dropped,
                        writable=ctx.token is not None and ctx.engine is not None))


async def openapi(request: web.Request) -> web.Response:
    return _json(openapi_document(protect_reads=_ctx(request).protect_reads))


async def metrics(request: web.Request) -> web.Response:
    body = _ctx(request).metrics.render()
    response = web.Response(body=body, headers={"Cache-Control": "no-store"})
    response.headers["Content-Type"] = CONTENT_TYPE
    return response


async def stream(request: web.Request) -> web.StreamResponse:
    """Server-Sent Events: the current `overview` at once, then each new one (see `stream.py`)."""
    ctx = _ctx(request)
    response = web.StreamResponse(headers={
        "Content-Type": "text/event-stream", "Cache-Control": "no-store", "X-Accel-Buffering": "no",
        **SECURITY_HEADERS,
    })
    await response.prepare(request)
    client = ctx.hub.connect()
    try:
        await response.write(b"retry: 2000\n\n" + await ctx.overview_message())
        while True:
            try:
                message = await asyncio.wait_for(client.queue.get(), KEEPALIVE_SECONDS)
            except TimeoutError:
                message = b": keep-alive\n\n"
            if message is None:  # the dashboard is closing
                break
            await response.write(message)
    except (ConnectionError, RuntimeError):  # the page went away (RuntimeError: a closed transport)
        pass
    finally:
        ctx.hub.disconnect(client)
    with contextlib.suppress(ConnectionError, RuntimeError):
        await response.write_eof()
    return response


# ---------------------------------------------------------------------------------------------------------
# The one write
# ---------------------------------------------------------------------------------------------------------


async def stop(request: web.Request) -> web.Response:
    ctx = _ctx(request)
    if ctx.token is None:
        return _error(403, "writes_disabled",
                      "this dashboard was started without a token, so it is read-only")
    if not token_matches(request, ctx.token):
        return _error(401, "unauthorized", "send 'Authorization: Bearer <token>'",
                      **{"WWW-Authenticate": 'Bearer realm="backtest-kit"'})
    engine = ctx.engine
    if engine is None:
        return _error(409, "no_engine", "this dashboard is fed from NATS and has no engine to stop")
    try:
        body = msgspec.json.decode(await request.read(), type=StopRequest)
    except msgspec.DecodeError as exc:
        return _error(400, "bad_request", f"expected {{\"symbol\": ..., \"strategy_name\": ...}}: {exc}")
    running = any(info.symbol == body.symbol and info.strategy_name == body.strategy_name
                  and info.status == "running" for info in await engine.live.list())
    if not running:
        return _json(StopResult(symbol=body.symbol, strategy_name=body.strategy_name, status="not_running"))
    await engine.live.stop(body.symbol, body.strategy_name)
    return _json(StopResult(symbol=body.symbol, strategy_name=body.strategy_name, status="stopping"))


# ---------------------------------------------------------------------------------------------------------
# The page
# ---------------------------------------------------------------------------------------------------------


def _asset(name: str) -> bytes:
    return (resources.files("backtest_kit.web") / "static" / name).read_bytes()


def _static(name: str, content_type: str) -> Any:
    body = _asset(name)

    async def handler(request: web.Request) -> web.Response:
        response = web.Response(body=body, headers={"Cache-Control": "no-cache"})
        response.headers["Content-Type"] = f"{content_type}; charset=utf-8"
        return response

    return handler


def build_app(ctx: DashboardContext) -> web.Application:
    app = web.Application(middlewares=[security_middleware(
        loopback=ctx.loopback, token=ctx.token, protect_reads=ctx.protect_reads)], client_max_size=64 * 1024)
    app[CONTEXT] = ctx
    router = app.router
    router.add_get("/", _static("index.html", "text/html"))
    for path, (name, content_type) in _STATIC.items():
        router.add_get(path, _static(name, content_type))
    for path, handler in (
        ("/api/overview", overview), ("/api/instances", instances), ("/api/positions", positions),
        ("/api/events", events), ("/api/stats", stats), ("/api/equity", equity), ("/api/risk", risk),
        ("/api/partials", partials), ("/api/errors", errors), ("/api/health", health),
        ("/api/openapi.json", openapi), ("/api/stream", stream), ("/metrics", metrics),
    ):
        router.add_get(path, handler, allow_head=False)
    router.add_post("/api/stop", stop)
    return app

"""The dashboard's JSON API, event stream, metrics and security, through a real HTTP client (aiohttp).

Each test serves the dashboard of a live engine replaying the bundled BTCUSDT data on a virtual clock
(`dashboard_helpers.py`) on a free loopback port. Waits end on conditions, bounded by `GUARD`.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
from dashboard_helpers import GUARD, SECRET, SYMBOL, TOKEN, replay_engine, start

import backtest_kit as bk
from backtest_kit.engine.redact import register_secret
from backtest_kit.web.api import DashboardContext, build_app
from backtest_kit.web.metrics import DashboardMetrics
from backtest_kit.web.models import (
    EquityCurve,
    ErrorBody,
    ErrorView,
    EventView,
    Health,
    InstanceView,
    Overview,
    PairStats,
    PartialView,
    PositionView,
    RiskView,
    StopResult,
)
from backtest_kit.web.openapi import GET_ENDPOINTS
from backtest_kit.web.security import check_bind, is_loopback
from backtest_kit.web.server import DashboardHandle
from backtest_kit.web.state import DashboardState
from backtest_kit.web.stream import StreamClient, StreamHub

MODELS: dict[str, Any] = {path: model for path, (model, _) in GET_ENDPOINTS.items()}


async def get(session: aiohttp.ClientSession, url: str, model: Any, **kwargs: Any) -> Any:
    async with session.get(url, **kwargs) as response:
        assert response.status == 200, await response.text()
        assert response.content_type == "application/json"
        assert "Access-Control-Allow-Origin" not in response.headers
        return msgspec.json.decode(await response.read(), type=model, strict=True)


async def overviews(response: aiohttp.ClientResponse) -> AsyncIterator[Overview]:
    """The `overview` events of an open SSE response, decoded."""
    event = ""
    async for raw in response.content:
        line = raw.decode().rstrip("\n")
        if line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: ") and event == "overview":
            yield msgspec.json.decode(line[6:], type=Overview, strict=True)


async def served_run(tmp_path: Path, **options: Any) -> tuple[bk.Engine, DashboardHandle]:
    engine = replay_engine(tmp_path)
    dashboard = await bk.serve_dashboard(engine, port=0, **options)
    return engine, dashboard


# ---------------------------------------------------------------------------------------------------------
# The JSON API
# ---------------------------------------------------------------------------------------------------------


async def test_every_endpoint_serves_its_model_with_the_runs_figures(tmp_path: Path) -> None:
    engine, dashboard = await served_run(tmp_path)
    assert dashboard.url.startswith("http://127.0.0.1:") and dashboard.port > 0
    handles = start(engine)
    await asyncio.wait_for(asyncio.gather(*(h.wait() for h in handles)), GUARD)
    async with aiohttp.ClientSession() as session:
        base = dashboard.url
        docs = {path: await get(session, base + path.lstrip("/"), model) for path, model in MODELS.items()}
        overview: Overview = docs["/api/overview"]
        instances: list[InstanceView] = docs["/api/instances"]
        assert [(i.strategy_name, i.status) for i in instances] == [("sma-5-20", "done"), ("sma-cross", "done")]
        assert all(i.ticks > 1000 and i.error is None and i.last_price for i in instances)
        stats: list[PairStats] = docs["/api/stats"]
        for row in stats:  # the engine's own exact figures
            data = await engine.live.get_data(SYMBOL, row.strategy_name)
            assert (row.total_trades, row.win_rate, row.total_pnl, row.sharpe_ratio, row.max_drawdown) == (
                data.total_trades, data.win_rate, data.total_pnl, data.sharpe_ratio, data.max_drawdown)
            assert row.total_trades > 0
        curves: list[EquityCurve] = docs["/api/equity"]
        by_name = {c.strategy_name: c for c in curves}
        for row in stats:
            points = by_name[row.strategy_name].points
            assert len(points) == row.total_trades + 1 and points[0].pnl == 0.0
            assert points[-1].pnl == pytest.approx(row.total_pnl)
            assert [p.t for p in points] == sorted(p.t for p in points)
        events: list[EventView] = docs["/api/events"]
        assert events and {e.action for e in events} <= {"opened", "closed", "scheduled", "cancelled"}
        assert [e.timestamp for e in events] == sorted((e.timestamp for e in events), reverse=True)
        risk: list[RiskView] = docs["/api/risk"]
        assert risk and all(r.strategy_name == "sma-cross" and "every second signal" in r.comment for r in risk)
        assert all(r.signal_id and r.position in ("long", "short") and r.price_open for r in risk)
        partials: list[PartialView] = docs["/api/partials"]
        assert partials and {p.kind for p in partials} <= {"profit", "loss"}
        assert all(p.level % 10 == 0 for p in partials)
        positions: list[PositionView] = docs["/api/positions"]
        for p in positions:  # left open when the data ran out: priced at the last candle
            assert p.unrealized_pnl is not None and p.current_price > 0
        assert overview.mode == "engine" and overview.instances == instances and overview.stats == stats
        health: Health = docs["/api/health"]
        assert (health.status, health.mode, health.writable) == ("ok", "engine", False)
        assert await get(session, base + "api/events?limit=3", list[EventView]) == events[:3]
        for bad in ("0", "x", "501"):
            async with session.get(base + "api/events", params={"limit": bad}) as response:
                assert response.status == 400
                assert "limit" in msgspec.json.decode(await response.read(), type=ErrorBody).message
    await engine.close()
    assert dashboard._runner is None  # closed with the engine


async def test_open_positions_show_entry_targets_price_and_unrealised_pnl(tmp_path: Path) -> None:
    engine, dashboard = await served_run(tmp_path)
    opened: asyncio.Future[bk.TickResult] = asyncio.get_running_loop().create_future()

    async def hold_on_first_active(result: bk.TickResult) -> None:
        if result.action == "active" and not opened.done():
            opened.set_result(result)
            await asyncio.Event().wait()  # hold the run right here (a live listener may block its pair)

    engine.set_config(CC_LISTENER_TIMEOUT_SECONDS=0)
    engine.listen_signal_live(hold_on_first_active)
    handles = start(engine)
    active = await asyncio.wait_for(opened, GUARD)
    async with aiohttp.ClientSession() as session:
        positions = await get(session, dashboard.url + "api/positions", list[PositionView])
    mine = [p for p in positions if p.strategy_name == active.strategy_name]
    assert len(mine) == 1
    p, s = mine[0], active.signal
    assert s is not None
    assert (p.signal_id, p.position, p.price_open, p.take_profit, p.stop_loss, p.current_price) == (
        s.id, s.position, s.price_open, s.price_take_profit, s.price_stop_loss, active.current_price)
    expected = bk.Engine.get_default_config()
    fee, slip = expected.CC_PERCENT_FEE, expected.CC_PERCENT_SLIPPAGE
    o, c = s.price_open, active.current_price
    if s.position == "long":
        pnl = (c * (1 - slip / 100) - o * (1 + slip / 100)) / (o * (1 + slip / 100)) * 100 - 2 * fee
    else:
        pnl = (o * (1 - slip / 100) - c * (1 + slip / 100)) / (o * (1 - slip / 100)) * 100 - 2 * fee
    assert p.unrealized_pnl == pytest.approx(pnl)
    for h in handles:
        h.task.cancel()
    await engine.close()


# ---------------------------------------------------------------------------------------------------------
# Server-Sent Events
# ---------------------------------------------------------------------------------------------------------


async def test_the_stream_pushes_the_state_as_the_run_goes(tmp_path: Path) -> None:
    engine, dashboard = await served_run(tmp_path, interval=0.01)
    async with aiohttp.ClientSession() as session, session.get(dashboard.url + "api/stream") as response:
        assert response.status == 200 and response.content_type == "text/event-stream"
        assert "Access-Control-Allow-Origin" not in response.headers
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        seen: list[Overview] = []
        async with asyncio.timeout(GUARD):
            async for overview in overviews(response):
                seen.append(overview)
                if len(seen) == 1:
                    assert overview.instances == [] and overview.events == []  # at once, before the run
                    handles = start(engine)
                if overview.instances and all(i.status == "done" for i in overview.instances) and len(
                        overview.instances) == 2:
                    break
        assert len(seen) > 3  # pushed as it went, not only at the end
        assert any(o.positions for o in seen) and seen[-1].events and seen[-1].equity
        counts = [len(o.events) for o in seen]
        assert counts == sorted(counts) and counts[-1] > counts[1]
    await asyncio.gather(*(h.wait() for h in handles))
    await engine.close()


def test_a_full_client_queue_drops_its_oldest_update_and_counts_it() -> None:
    client = StreamClient(2)
    assert client.offer(b"1") and client.offer(b"2")
    assert not client.offer(b"3") and client.dropped == 1
    assert [client.queue.get_nowait(), client.queue.get_nowait()] == [b"2", b"3"]


async def test_a_client_that_never_reads_does_not_stall_the_engine(tmp_path: Path) -> None:
    engine, dashboard = await served_run(tmp_path, interval=0.0, queue_size=2)
    # a raw socket with a tiny receive buffer that sends the request and never reads a byte
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", dashboard.port))
    await asyncio.get_running_loop().sock_sendall(
        sock, f"GET /api/stream HTTP/1.1\r\nHost: 127.0.0.1:{dashboard.port}\r\n\r\n".encode())
    async with asyncio.timeout(GUARD):
        while not dashboard.hub.clients:
            await asyncio.sleep(0)
    async with aiohttp.ClientSession() as session, session.get(dashboard.url + "api/stream") as healthy:
        handles = start(engine)
        await asyncio.wait_for(asyncio.gather(*(h.wait() for h in handles)), GUARD)  # the run is not held up
        async with asyncio.timeout(GUARD):  # a reading client still gets the final state
            async for overview in overviews(healthy):
                if len(overview.instances) == 2 and all(i.status == "done" for i in overview.instances):
                    break
        assert len(dashboard.hub.clients) == 2  # the slow one is still connected...
        assert dashboard.hub.dropped > 0  # ...and lost updates, counted
        metrics = await (await session.get(dashboard.url + "metrics")).text()
        assert f"backtest_kit_dashboard_stream_dropped_total {float(dashboard.hub.dropped)}" in metrics
    ticks = sum(i.ticks for i in await dashboard.state.instances())
    assert ticks == 2 * 1441  # every tick of the 24 hours, both pairs
    sock.close()
    await engine.close()


# ---------------------------------------------------------------------------------------------------------
# Security
# ---------------------------------------------------------------------------------------------------------


def test_binds_other_than_loopback_need_a_token() -> None:
    assert all(map(is_loopback, ["127.0.0.1", "127.3.2.1", "localhost", "::1", "[::1]"]))
    assert not any(map(is_loopback, ["0.0.0.0", "", "::", "192.168.1.10", "example.com", "10.0.0.1"]))
    for host in ("0.0.0.0", "::", "192.168.1.10"):
        with pytest.raises(bk.ConfigError, match=r"refusing to listen.*without a token"):
            check_bind(host, None)
        check_bind(host, TOKEN)
    with pytest.raises(bk.ConfigError, match="at least 16 characters"):
        check_bind("127.0.0.1", "short")


async def test_a_non_loopback_bind_without_a_token_refuses_to_start() -> None:
    engine = bk.Engine()
    with pytest.raises(bk.ConfigError, match=r"refusing to listen on '0\.0\.0\.0' without a token"):
        await bk.serve_dashboard(engine, host="0.0.0.0", port=0)
    assert not vars(engine.bus).get("publish") and engine.bus.listener_count("signal_live") == 0  # nothing attached
    await engine.close()


async def test_stop_needs_the_token_and_stops_the_run(tmp_path: Path) -> None:
    engine, read_only = await served_run(tmp_path)
    writable = await bk.serve_dashboard(engine, port=0, token=TOKEN)
    handles = start(engine)
    body = {"symbol": SYMBOL, "strategy_name": "sma-cross"}
    async with aiohttp.ClientSession() as session:
        async with session.post(read_only.url + "api/stop", json=body,
                                headers={"Authorization": f"Bearer {TOKEN}"}) as response:
            assert response.status == 403  # started without a token: read-only whatever is sent
            assert msgspec.json.decode(await response.read(), type=ErrorBody).error == "writes_disabled"
        for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789"}, {"Authorization": TOKEN}):
            async with session.post(writable.url + "api/stop", json=body, headers=headers) as response:
                assert response.status == 401 and response.headers["WWW-Authenticate"].startswith("Bearer")
        auth = {"Authorization": f"Bearer {TOKEN}"}
        async with session.post(writable.url + "api/stop", data=b"{not json", headers=auth) as response:
            assert response.status == 400
        async with session.post(writable.url + "api/stop", json=body, headers=auth) as response:
            assert response.status == 200
            assert msgspec.json.decode(await response.read(), type=StopResult).status == "stopping"
        await asyncio.wait_for(handles[0].wait(), GUARD)  # stopped (gracefully) long before its data ends
        info = {i.strategy_name: i for i in await engine.live.list()}
        assert info["sma-cross"].status == "done"
        async with session.post(writable.url + "api/stop", json=body, headers=auth) as response:
            assert msgspec.json.decode(await response.read(), type=StopResult).status == "not_running"
        # reads on a loopback bind need no token, even on the writable dashboard
        await get(session, writable.url + "api/health", Health)
    for h in handles:
        h.task.cancel()
    await engine.close()


async def test_no_cors_and_only_loopback_host_names(tmp_path: Path) -> None:
    engine, dashboard = await served_run(tmp_path)
    async with aiohttp.ClientSession() as session:
        async with session.get(dashboard.url + "api/overview", headers={"Origin": "https://evil.example"}) as r:
            assert r.status == 200 and "Access-Control-Allow-Origin" not in r.headers
        async with session.options(dashboard.url + "api/stop", headers={
                "Origin": "https://evil.example", "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization"}) as r:
            assert r.status == 405 and "Access-Control-Allow-Origin" not in r.headers
        # DNS rebinding: a hostile name resolving to 127.0.0.1 gets nothing
        async with session.get(dashboard.url + "api/overview", headers={"Host": "evil.example"}) as r:
            assert r.status == 421
        async with session.get(dashboard.url, headers={"Host": f"localhost:{dashboard.port}"}) as r:
            assert r.status == 200 and r.content_type == "text/html"
            assert "script-src 'self'" in r.headers["Content-Security-Policy"]
            assert r.headers["X-Frame-Options"] == "DENY"
    await engine.close()


async def test_reads_need_the_token_when_the_bind_is_not_loopback(tmp_path: Path) -> None:
    """The middleware of a non-loopback bind (served here on loopback: no test listens elsewhere)."""
    from aiohttp.test_utils import TestClient, TestServer

    state = DashboardState()
    hub = StreamHub(lambda: asyncio.sleep(0, b""))
    ctx = DashboardContext(state=state, hub=hub, metrics=DashboardMetrics(lambda: 0, lambda: 0), engine=None,
                           token=TOKEN, loopback=False, protect_reads=True)
    async with TestClient(TestServer(build_app(ctx))) as client:
        for path in ("/api/overview", "/api/stream", "/metrics", "/api/health"):
            response = await client.get(path)
            assert response.status == 401, path
        assert (await client.get("/api/health", headers={"Authorization": f"Bearer {TOKEN}"})).status == 200
        assert (await client.get("/")).status == 200  # the page itself holds no data
        doc = await (await client.get("/api/openapi.json")).json()
        assert doc["paths"]["/api/overview"]["get"]["security"] == [{"bearer": []}]
        response = await client.post("/api/stop", json={"symbol": SYMBOL, "strategy_name": "x"},
                                     headers={"Authorization": f"Bearer {TOKEN}"})
        assert response.status == 409  # no engine (a dashboard fed from NATS)


async def test_no_secret_reaches_a_response(tmp_path: Path) -> None:
    register_secret(SECRET)
    engine, dashboard = await served_run(tmp_path, token=TOKEN)
    handles = start(engine)
    await asyncio.wait_for(asyncio.gather(*(h.wait() for h in handles)), GUARD)
    await engine.report_error(RuntimeError(f"exchange refused api_key={SECRET}"))
    await engine.report_error(ConnectionError(f"GET https://user:{SECRET}@exchange.example/ failed"))
    bodies: list[bytes] = []
    async with aiohttp.ClientSession() as session:
        errors = await get(session, dashboard.url + "api/errors", list[ErrorView])
        assert [e.type for e in errors] == ["ConnectionError", "RuntimeError"]
        for path in [*MODELS, "/api/openapi.json", "/metrics", "/", "/static/app.js"]:
            async with session.get(dashboard.url + path.lstrip("/")) as response:
                bodies.append(await response.read())
    for body in bodies:
        assert SECRET.encode() not in body and TOKEN.encode() not in body
    await engine.close()


# ---------------------------------------------------------------------------------------------------------
# Metrics and the cost of attaching
# ---------------------------------------------------------------------------------------------------------


def sample(text: str, name: str, **labels: str) -> float:
    wanted = name + ("{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}" if labels else "")
    for line in text.splitlines():
        if line.startswith(wanted + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{wanted} not in the metrics")


async def test_metrics_measure_ticks_events_delivery_persistence_and_positions(tmp_path: Path) -> None:
    engine, dashboard = await served_run(tmp_path)
    handles = start(engine)
    await asyncio.wait_for(asyncio.gather(*(h.wait() for h in handles)), GUARD)
    await engine.report_error(TimeoutError("exchange slow"))
    late = await bk.serve_dashboard(engine, port=0)  # its own registry: counts only what it saw
    async with aiohttp.ClientSession() as session:
        async with session.get(dashboard.url + "metrics") as response:
            assert response.status == 200 and response.content_type == "text/plain"
            text = await response.text()
        late_text = await (await session.get(late.url + "metrics")).text()
    ticks = 2 * 1441
    assert sum(sample(text, "backtest_kit_ticks_total", action=a) for a in ("idle", "active", "opened", "closed")
               if f'action="{a}"' in text) == ticks
    assert sample(text, "backtest_kit_events_total", channel="signal_live") == ticks
    assert sample(text, "backtest_kit_listener_delivery_seconds_count", channel="signal_live") == ticks
    assert sample(text, "backtest_kit_tick_lag_seconds_count") == ticks - 2  # a pair's first tick has no gap
    assert sample(text, "backtest_kit_tick_lag_seconds_sum") == 0.0  # a virtual clock is never late
    assert sample(text, "backtest_kit_errors_total", type="TimeoutError") == 1.0
    assert sample(text, "backtest_kit_persist_seconds_count", entity="signals", operation="write") > 0
    assert sample(text, "backtest_kit_open_positions") == len(dashboard.state.positions())
    assert "backtest_kit_ticks_total{" not in late_text and "backtest_kit_errors_total{" not in late_text
    await engine.close()


async def test_an_engine_without_a_dashboard_runs_the_plain_hot_path(tmp_path: Path) -> None:
    engine = replay_engine(tmp_path)
    bus = engine.bus
    baseline = {name: bus.listener_count(name) for name in bk.CHANNELS}
    assert "publish" not in vars(bus) and engine.persist_for("signals") is engine.persist
    dashboard = await bk.serve_dashboard(engine, port=0)
    assert vars(bus)["publish"] == bus._timed_publish
    assert engine.persist_for("signals") is not engine.persist  # timed while observed
    await dashboard.aclose()
    assert "publish" not in vars(bus) and engine.persist_for("signals") is engine.persist
    assert {name: bus.listener_count(name) for name in bk.CHANNELS} == baseline
    await dashboard.aclose()  # idempotent
    await engine.close()


async def test_openapi_document_lists_every_route_and_its_schemas(tmp_path: Path) -> None:
    engine, dashboard = await served_run(tmp_path)
    async with aiohttp.ClientSession() as session, session.get(dashboard.url + "api/openapi.json") as response:
        doc = json.loads(await response.read())
    assert doc["openapi"].startswith("3.1")
    assert set(doc["paths"]) == {*GET_ENDPOINTS, "/api/stop", "/metrics"}
    assert {"Overview", "PositionView", "StopRequest", "StopResult", "ErrorBody"} <= set(doc["components"]["schemas"])
    assert doc["paths"]["/api/stop"]["post"]["security"] == [{"bearer": []}]
    await engine.close()


async def test_schemathesis_against_the_openapi_document(tmp_path: Path) -> None:
    """Generated requests for every operation (GETs with any `limit`, POST /api/stop with any body and the
    token) against a dashboard holding a finished run: each response must match its documented schema."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings

    engine, dashboard = await served_run(tmp_path, token=TOKEN)
    handles = start(engine)
    await asyncio.wait_for(asyncio.gather(*(h.wait() for h in handles)), GUARD)
    async with aiohttp.ClientSession() as session, session.get(dashboard.url + "api/openapi.json") as response:
        document = await response.json()
    schema = schemathesis.openapi.from_dict(document)
    base = dashboard.url.rstrip("/")
    checked: list[str] = []

    def run() -> None:
        for operation in schema.get_all_operations():
            op = operation.ok()

            @settings(max_examples=15, deadline=None, database=None,
                      suppress_health_check=list(HealthCheck))
            @given(case=op.as_strategy())
            def check(case: Any) -> None:
                case.call_and_validate(base_url=base, headers={"Authorization": f"Bearer {TOKEN}"})

            check()
            checked.append(f"{op.method.upper()} {op.path}")

    await asyncio.to_thread(run)
    assert sorted(checked) == sorted([f"GET {p}" for p in GET_ENDPOINTS] + ["POST /api/stop", "GET /metrics"])
    await engine.close()


def test_the_core_imports_without_the_web_extra() -> None:
    """`import backtest_kit` loads neither prometheus-client nor aiohttp's server: the `web` extra is
    needed only once a dashboard is served."""
    import subprocess
    import sys

    code = ("import sys, backtest_kit; "
            "print(sorted(m for m in ('prometheus_client', 'aiohttp.web', 'backtest_kit.web.server') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=GUARD)
    assert out.stdout.strip() == "[]"

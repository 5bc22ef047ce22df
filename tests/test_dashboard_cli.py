"""The dashboard from the command line and from NATS: `live --replay ... --dashboard`, `backtest-kit
dashboard --from-nats`, and `serve_dashboard(remote=...)` in a process without an engine.

The NATS tests use the shared `nats-server -js` (`BK_TEST_NATS_URL`, checked by `.ci/run`), each on a
stream and subject prefix of its own. Waits end on conditions (a line printed, a state pushed), bounded
by `GUARD`.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import nats
from dashboard_helpers import GUARD, SYMBOL, TOKEN, replay_engine, start
from nats_server import NATS_URL

import backtest_kit as bk
from backtest_kit.web.models import ErrorBody, Health, Overview

CLI_ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


async def overviews(response: aiohttp.ClientResponse) -> AsyncIterator[Overview]:
    event = ""
    async for raw in response.content:
        line = raw.decode().rstrip("\n")
        if line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: ") and event == "overview":
            yield msgspec.json.decode(line[6:], type=Overview)


async def cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "backtest_kit", *args, cwd=cwd, env=env or CLI_ENV,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)


async def dashboard_url(proc: asyncio.subprocess.Process) -> str:
    """The URL from the `dashboard at URL` line the command prints on stderr."""
    assert proc.stderr is not None
    async with asyncio.timeout(GUARD):
        while True:
            line = (await proc.stderr.readline()).decode()
            assert line, f"the command ended before serving (exit {await proc.wait()})"
            if line.startswith("dashboard at "):
                return line.split()[2]


def names() -> tuple[str, str]:
    tag = uuid.uuid4().hex[:12]
    return f"D{tag}", f"d{tag}"


async def drop_stream(stream: str) -> None:
    nc = await nats.connect(NATS_URL)
    try:
        await nc.jetstream().delete_stream(stream)
    except Exception:
        pass
    finally:
        await nc.close()


async def test_live_replay_with_a_dashboard_serves_the_run_until_ctrl_c(tmp_path: Path) -> None:
    proc = await cli("live", "--replay", str(bk.bundled_sample_path()), "--speed", "3000", "--no-progress",
                     "--json", "--dashboard", "127.0.0.1:0", cwd=tmp_path)
    url = await dashboard_url(proc)
    assert url.startswith("http://127.0.0.1:")
    async with aiohttp.ClientSession() as session, session.get(url + "api/stream") as response:
        async with asyncio.timeout(GUARD):
            async for overview in overviews(response):
                if overview.instances and overview.instances[0].ticks >= 3:
                    break
        instance = overview.instances[0]
        assert (instance.strategy_name, instance.symbol, instance.status) == ("sma-cross", SYMBOL, "running")
        async with session.get(url + "api/health") as health:
            assert msgspec.json.decode(await health.read(), type=Health).mode == "engine"
    proc.send_signal(signal.SIGINT)
    stdout, _ = await asyncio.wait_for(proc.communicate(), GUARD)
    assert proc.returncode == 130  # a replay cut short
    assert json.loads(stdout)["mode"] == "replay"  # stdout still carries exactly the one document


async def test_live_dashboard_on_a_public_address_needs_a_token(tmp_path: Path) -> None:
    proc = await cli("live", "--replay", str(bk.bundled_sample_path()), "--dashboard", "0.0.0.0:0",
                     "--no-progress", cwd=tmp_path)
    _, stderr = await asyncio.wait_for(proc.communicate(), GUARD)
    assert proc.returncode == 1
    assert "refusing to listen on '0.0.0.0' without a token" in stderr.decode()
    assert "BK_DASHBOARD_TOKEN" in stderr.decode()


async def test_a_dashboard_fed_from_nats_shows_the_engines_run(tmp_path: Path) -> None:
    stream, prefix = names()
    engine = replay_engine(tmp_path)
    bridge = bk.NatsBridge(NATS_URL, stream=stream, prefix=prefix, storage="memory", max_age=600)
    bridge.attach(engine)
    remote = bk.RemoteEvents(NATS_URL, stream=stream, prefix=prefix)
    dashboard = await bk.serve_dashboard(port=0, token=TOKEN, remote=remote, remote_options={"deliver": "all"},
                                         interval=0.01)
    try:
        handles = start(engine)
        await asyncio.wait_for(asyncio.gather(*(h.wait() for h in handles)), GUARD)
        await engine.report_error(RuntimeError("exchange said no"))
        expected = {name: await engine.live.get_data(SYMBOL, name) for name in ("sma-cross", "sma-5-20")}
        async with aiohttp.ClientSession() as session, session.get(dashboard.url + "api/stream") as response:
            async with asyncio.timeout(GUARD):
                async for overview in overviews(response):
                    if (len(overview.instances) == 2 and all(i.status == "done" for i in overview.instances)
                            and overview.errors):
                        break
            assert overview.mode == "remote"
            for row in overview.stats:  # folded from the closed trades received: the engine's figures
                data = expected[row.strategy_name]
                assert (row.total_trades, row.win_rate) == (data.total_trades, data.win_rate)
                assert row.total_pnl is not None and data.total_pnl is not None
                assert abs(row.total_pnl - data.total_pnl) < 1e-9
            assert overview.risk and overview.partials and overview.events
            assert (overview.errors[0].type, overview.errors[0].message) == ("RuntimeError", "exchange said no")
            async with session.post(dashboard.url + "api/stop", json={"symbol": SYMBOL, "strategy_name": "x"},
                                    headers={"Authorization": f"Bearer {TOKEN}"}) as stop:
                assert stop.status == 409
                assert msgspec.json.decode(await stop.read(), type=ErrorBody).error == "no_engine"
            metrics = await (await session.get(dashboard.url + "metrics")).text()
            assert 'backtest_kit_events_total{channel="signal_live"}' in metrics
    finally:
        await dashboard.aclose()
        await remote.aclose()
        await engine.close()
        await drop_stream(stream)


async def test_the_dashboard_command_serves_events_from_nats(tmp_path: Path) -> None:
    stream, prefix = names()
    engine = replay_engine(tmp_path, hours=6)
    bridge = bk.NatsBridge(NATS_URL, stream=stream, prefix=prefix, storage="memory", max_age=600)
    bridge.attach(engine)
    try:
        handles = start(engine)
        await asyncio.wait_for(asyncio.gather(*(h.wait() for h in handles)), GUARD)
        await engine.close()  # everything published: the dashboard reads the stream's history
        proc = await cli("dashboard", "--from-nats", NATS_URL, "--stream", stream, "--prefix", prefix,
                         "--listen", "127.0.0.1:0", cwd=tmp_path)
        url = await dashboard_url(proc)
        async with aiohttp.ClientSession() as session, session.get(url + "api/stream") as response:
            async with asyncio.timeout(GUARD):
                async for overview in overviews(response):
                    if len(overview.instances) == 2 and all(i.status == "done" for i in overview.instances):
                        break
        assert overview.mode == "remote" and overview.events
        proc.send_signal(signal.SIGINT)
        _, stderr = await asyncio.wait_for(proc.communicate(), GUARD)
        assert proc.returncode == 0, stderr.decode()
    finally:
        await engine.close()
        await drop_stream(stream)


async def test_the_dashboard_command_refuses_a_public_address_without_a_token(tmp_path: Path) -> None:
    env: dict[str, Any] = {k: v for k, v in CLI_ENV.items() if k != "BK_DASHBOARD_TOKEN"}
    proc = await cli("dashboard", "--from-nats", NATS_URL, "--listen", "0.0.0.0:0", cwd=tmp_path, env=env)
    _, stderr = await asyncio.wait_for(proc.communicate(), GUARD)
    assert proc.returncode == 1 and "without a token" in stderr.decode()

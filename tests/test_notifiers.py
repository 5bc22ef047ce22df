"""Notifiers against a real local HTTP server on 127.0.0.1 (aiohttp), plus the engine wiring.

Checks: JSON bodies arrive as sent; 5xx (and Telegram 429 with `retry_after`) are retried and then
delivered; 4xx is not retried; a slow endpoint is bounded by the timeout; a full queue drops and
counts without ever blocking the caller; `aclose` / `engine.close()` drain; the Telegram token never
reaches the log. Synchronisation uses events and counters; the only waits are the deliberately slow
or blocked server endpoints.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pytest
from aiohttp import web
from helpers import T0, M, candle, dt, live_until_closed, long, make_engine, once

import backtest_kit as bk
from backtest_kit.listeners.notifiers import QueuedAdapter, default_filter, default_format, event_kind, event_payload

TOKEN = "123456789:AAH-super-secret-token_XYZ"


@dataclass
class Server:
    base: str
    requests: list[tuple[str, dict[str, str], Any]] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)  # answers for the next requests (then 200)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    count_changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def wait_requests(self, n: int, timeout: float = 10) -> None:
        async def waiter() -> None:
            async with self.count_changed:
                await self.count_changed.wait_for(lambda: len(self.requests) >= n)

        await asyncio.wait_for(waiter(), timeout)


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    state: Server | None = None

    async def record(request: web.Request) -> Any:
        assert state is not None
        body = await request.json()
        state.requests.append((request.path, dict(request.headers), body))
        async with state.count_changed:
            state.count_changed.notify_all()
        state.arrived.set()
        return body

    async def hook(request: web.Request) -> web.Response:
        assert state is not None
        await record(request)
        status = state.statuses.pop(0) if state.statuses else 200
        if status == 429:
            return web.json_response({"ok": False, "error_code": 429, "parameters": {"retry_after": 0.05}},
                                     status=429)
        return web.json_response({"ok": 200 <= status < 300}, status=status)

    async def slow(request: web.Request) -> web.Response:
        await record(request)
        await asyncio.sleep(30)
        return web.json_response({"ok": True})

    async def block(request: web.Request) -> web.Response:
        assert state is not None
        await record(request)
        await state.release.wait()
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/hook", hook)
    app.router.add_post("/slow", slow)
    app.router.add_post("/block", block)
    app.router.add_post("/bot{token}/sendMessage", hook)
    runner = web.AppRunner(app, shutdown_timeout=0.2, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    state = Server(base=f"http://{host}:{port}")
    try:
        yield state
    finally:
        state.release.set()
        await runner.cleanup()


def opened_result(symbol: str = "BTCUSDT", backtest: bool = False, quantity: float | None = 0.5) -> bk.OpenedResult:
    row = bk.SignalRow(id="sig-1", position="long", price_open=100.0, price_take_profit=110.0, price_stop_loss=95.0,
                       minute_estimated_time=60, note="", symbol=symbol, strategy_name="s", exchange_name="mem",
                       scheduled_at=T0, pending_at=T0, is_scheduled=False, quantity=quantity)
    return bk.OpenedResult(symbol=symbol, strategy_name="s", exchange_name="mem", current_price=100.0,
                           backtest=backtest, signal=row)


def fast(**kw: Any) -> dict[str, Any]:
    return {"backoff": 0.01, "max_backoff": 0.05, "timeout": 2.0, **kw}


# ------------------------------------------------------------------------------------------------ webhook
@pytest.mark.parametrize("use_aiohttp", [True, False], ids=["aiohttp", "urllib"])
async def test_webhook_posts_the_event_as_json(server: Server, use_aiohttp: bool) -> None:
    n = bk.WebhookNotifier(f"{server.base}/hook", headers={"X-Api-Key": "k-1"}, use_aiohttp=use_aiohttp, **fast())
    event = opened_result()
    n.submit(event)
    n.submit(RuntimeError("exchange down"))
    assert await n.flush(5)
    (path, headers, body), (_, _, body2) = server.requests
    assert path == "/hook" and headers["X-Api-Key"] == "k-1" and headers["Content-Type"].startswith("application/json")
    assert body["kind"] == "opened" and body["text"] == default_format(event)
    assert body["event"]["action"] == "opened" and body["event"]["signal"]["quantity"] == 0.5
    assert body["event"]["signal"]["price_open"] == 100.0 and body["event"]["symbol"] == "BTCUSDT"
    assert body2 == {"kind": "error", "text": "ERROR RuntimeError: exchange down",
                     "event": {"type": "RuntimeError", "message": "exchange down"}}
    assert (n.stats.sent, n.stats.failed, n.stats.dropped) == (2, 0, 0)
    await n.aclose()


async def test_custom_body_and_formatter(server: Server) -> None:
    n = bk.WebhookNotifier(f"{server.base}/hook", body=lambda event, text: {"content": text},
                           formatter=lambda e: None if event_kind(e) == "error" else f"<{event_kind(e)}>", **fast())
    n.submit(ValueError("skipped by the formatter"))
    n.submit(opened_result())
    await n.flush(5)
    assert [b for _, _, b in server.requests] == [{"content": "<opened>"}]
    assert n.stats.skipped == 1 and n.stats.sent == 1
    await n.aclose()


@pytest.mark.parametrize("use_aiohttp", [True, False], ids=["aiohttp", "urllib"])
async def test_5xx_is_retried_then_delivered(server: Server, use_aiohttp: bool) -> None:
    server.statuses = [500, 503]
    n = bk.WebhookNotifier(f"{server.base}/hook", retries=3, use_aiohttp=use_aiohttp, **fast())
    n.submit(opened_result())
    await n.flush(5)
    assert len(server.requests) == 3 and server.requests[0][2] == server.requests[2][2]
    assert (n.stats.sent, n.stats.retries, n.stats.failed) == (1, 2, 0)
    await n.aclose()


async def test_retries_are_bounded_and_4xx_is_not_retried(server: Server, caplog: pytest.LogCaptureFixture) -> None:
    server.statuses = [500, 500, 500, 400]
    n = bk.WebhookNotifier(f"{server.base}/hook", retries=2, **fast())
    n.submit(opened_result())  # 500, 500, 500: gives up after 1 + 2 attempts
    n.submit(opened_result())  # 400: permanent, one attempt
    n.submit(opened_result())  # 200
    with caplog.at_level(logging.WARNING, logger="backtest_kit.notifiers"):
        await n.flush(5)
    assert len(server.requests) == 5
    assert (n.stats.sent, n.stats.failed, n.stats.retries) == (1, 2, 2)
    assert "HTTP 500" in caplog.text and "HTTP 400" in caplog.text
    await n.aclose()


@pytest.mark.parametrize("use_aiohttp", [True, False], ids=["aiohttp", "urllib"])
async def test_timeout_is_bounded(server: Server, use_aiohttp: bool, caplog: pytest.LogCaptureFixture) -> None:
    n = bk.WebhookNotifier(f"{server.base}/slow", retries=1, timeout=0.2, backoff=0.01, use_aiohttp=use_aiohttp)
    started = time.monotonic()
    n.submit(opened_result())
    with caplog.at_level(logging.WARNING, logger="backtest_kit.notifiers"):
        assert await n.flush(5)
    elapsed = time.monotonic() - started
    assert len(server.requests) == 2 and n.stats.failed == 1 and n.stats.sent == 0
    assert elapsed < 2.0
    assert "timed out" in caplog.text
    await n.aclose()


async def test_full_queue_drops_and_counts_without_blocking(server: Server,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    n = bk.WebhookNotifier(f"{server.base}/block", queue_size=2, **fast(timeout=10))
    started = time.perf_counter()
    with caplog.at_level(logging.WARNING, logger="backtest_kit.notifiers"):
        accepted = [n.submit(opened_result()) for _ in range(10)]
    assert time.perf_counter() - started < 0.05  # put_nowait only: the caller never waits
    assert accepted == [True, True] + [False] * 8 and n.stats.dropped == 8
    assert "queue full (2)" in caplog.text
    await asyncio.wait_for(server.arrived.wait(), 5)  # the consumer took one, the queue has room again
    assert n.submit(opened_result())
    server.release.set()
    assert await n.flush(5)
    assert n.stats.sent == 3 and n.stats.dropped == 8
    await n.aclose()


async def test_aclose_drains_with_a_deadline(server: Server, caplog: pytest.LogCaptureFixture) -> None:
    n = bk.WebhookNotifier(f"{server.base}/block", **fast(timeout=10))
    for _ in range(3):
        n.submit(opened_result())
    await asyncio.wait_for(server.arrived.wait(), 5)
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="backtest_kit.notifiers"):
        await n.aclose(timeout=0.2)
    assert time.monotonic() - started < 2
    assert n.stats.dropped == 3 and "3 undelivered" in caplog.text
    assert not n.submit(opened_result()) and n.stats.dropped == 4  # closed: counted as dropped


async def test_dead_endpoint_is_retried_and_reported(caplog: pytest.LogCaptureFixture) -> None:
    n = bk.WebhookNotifier("http://127.0.0.1:9/hook/secret-path", retries=1, **fast(timeout=1))
    n.submit(opened_result())
    with caplog.at_level(logging.WARNING, logger="backtest_kit.notifiers"):
        await n.flush(5)
    assert n.stats.failed == 1 and n.stats.retries == 1
    assert "http://127.0.0.1:9/…" in caplog.text and "secret-path" not in caplog.text


# ----------------------------------------------------------------------------------------------- telegram
async def test_telegram_send_message(server: Server, caplog: pytest.LogCaptureFixture) -> None:
    n = bk.TelegramNotifier(TOKEN, -100123, base_url=server.base, parse_mode="HTML", disable_notification=True,
                            **fast())
    with caplog.at_level(logging.DEBUG):
        n.submit(opened_result())
        await n.flush(5)
    path, _, body = server.requests[0]
    assert path == f"/bot{TOKEN}/sendMessage"
    assert body == {"chat_id": -100123, "text": default_format(opened_result()), "parse_mode": "HTML",
                    "disable_notification": True}
    assert n.stats.sent == 1 and TOKEN not in caplog.text
    assert TOKEN not in repr(n) and n.url == f"{server.base}/bot***/sendMessage"
    await n.aclose()


async def test_telegram_429_retry_after_and_long_text(server: Server) -> None:
    server.statuses = [429]
    n = bk.TelegramNotifier(TOKEN, "@channel", base_url=server.base, formatter=lambda e: "x" * 5000, **fast())
    n.submit(opened_result())
    await n.flush(5)
    assert len(server.requests) == 2 and n.stats.sent == 1 and n.stats.retries == 1
    assert len(server.requests[1][2]["text"]) == 4096 and server.requests[1][2]["chat_id"] == "@channel"
    await n.aclose()


@pytest.mark.parametrize("use_aiohttp", [True, False], ids=["aiohttp", "urllib"])
async def test_token_never_logged(server: Server, caplog: pytest.LogCaptureFixture, use_aiohttp: bool) -> None:
    server.statuses = [401, 502, 502]
    n = bk.TelegramNotifier(TOKEN, 1, base_url=server.base, retries=1, use_aiohttp=use_aiohttp, **fast())
    dead = bk.TelegramNotifier(TOKEN, 1, base_url="http://127.0.0.1:9", retries=0, use_aiohttp=use_aiohttp,
                               **fast(timeout=1))
    with caplog.at_level(logging.DEBUG):
        n.submit(opened_result())  # 401: permanent
        n.submit(opened_result())  # 502, 502: gives up
        dead.submit(opened_result())  # connection refused
        await n.flush(5)
        await dead.flush(5)
        await n.aclose()
        await dead.aclose()
    assert n.stats.failed == 2 and dead.stats.failed == 1
    assert "HTTP 401" in caplog.text and "HTTP 502" in caplog.text and "bot***" in caplog.text
    assert TOKEN not in caplog.text and "super-secret" not in caplog.text


def test_constructor_errors_do_not_echo_secrets() -> None:
    with pytest.raises(ValueError, match="url") as info:
        bk.WebhookNotifier("ftp://secret@host/x")
    assert "secret" not in str(info.value)
    with pytest.raises(ValueError, match="token"):
        bk.TelegramNotifier("", 1)
    with pytest.raises(ValueError, match="queue_size"):
        bk.WebhookNotifier("http://127.0.0.1/x", queue_size=0)


# ---------------------------------------------------------------------------------------- local notifiers
def test_log_and_console_notifiers(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("test.notify")
    log = bk.LogNotifier(logger)
    with caplog.at_level(logging.INFO, logger="test.notify"):
        log(opened_result())
        log(ValueError("bad"))
    assert [r.levelno for r in caplog.records] == [logging.INFO, logging.WARNING]
    assert caplog.records[0].getMessage().startswith("OPENED LONG BTCUSDT @ 100 | TP 110 | SL 95 | qty 0.5")
    stream = io.StringIO()
    console = bk.ConsoleNotifier(stream, formatter=lambda e: f"!{event_kind(e)}")
    console(opened_result())
    assert stream.getvalue() == "!opened\n" and console.stats.sent == 1


def test_default_texts_cover_every_event() -> None:
    row = opened_result().signal
    closed = bk.ClosedResult(symbol="BTCUSDT", strategy_name="s", exchange_name="mem", current_price=95.0,
                             backtest=False, signal=row, close_reason="stop_loss", close_timestamp=T0 + M,
                             pnl=bk.PnL(-5.2, 100.1, 94.9))
    risk = bk.RiskEvent(symbol="BTCUSDT", strategy_name="s", exchange_name="mem", pending_signal=row,
                        current_price=100.0, active_position_count=3, comment="max_concurrent_positions=3 reached",
                        timestamp=T0, backtest=False)
    profit = bk.PartialEvent(symbol="BTCUSDT", strategy_name="s", exchange_name="mem", signal=row,
                             current_price=103.0, level=30, backtest=False, timestamp=T0)
    loss = bk.PartialEvent(symbol="BTCUSDT", strategy_name="s", exchange_name="mem", signal=row,
                           current_price=98.0, level=40, backtest=False, timestamp=T0)
    done = bk.DoneEvent(symbol="BTCUSDT", strategy_name="s", exchange_name="mem", backtest=False)
    assert default_format(closed) == (
        "CLOSED LONG BTCUSDT stop_loss | PnL -5.20% | 100 -> 95 | s/mem [live]")
    assert default_format(risk) == (
        "RISK REJECTED LONG BTCUSDT: max_concurrent_positions=3 reached | active positions 3 | price 100 | "
        "s/mem [live]")
    assert default_format(profit) == "PARTIAL PROFIT +30% LONG BTCUSDT @ 103 | s [live]"
    assert default_format(loss) == "PARTIAL LOSS -40% LONG BTCUSDT @ 98 | s [live]"
    assert default_format(done) == "DONE BTCUSDT s/mem [live]"
    assert [event_kind(e) for e in (closed, risk, profit, loss, done)] == [
        "closed", "risk", "partial_profit", "partial_loss", "done"]
    assert json.dumps(event_payload(risk))  # JSON-ready
    idle = bk.IdleResult(symbol="BTCUSDT", strategy_name="s", exchange_name="mem", current_price=1.0, backtest=False)
    assert not default_filter(idle) and not default_filter(opened_result(backtest=True))
    assert default_filter(opened_result()) and default_filter(ValueError())


# --------------------------------------------------------------------------------------- engine wiring
async def test_add_notifier_sends_live_events_and_engine_close_drains(server: Server) -> None:
    clock = bk.VirtualClock(dt(T0))
    engine = make_engine(clock=clock)
    engine.use_persist(_NoPersist())

    async def get_candles(symbol: str, interval: str, since: datetime, limit: int) -> list[bk.Candle]:
        start = int(since.timestamp() * 1000)
        p = 100.0 if start < T0 + 3 * M else 111.0
        return [candle(start + k * M, p, p, p, p) for k in range(limit)]

    engine.add_exchange(exchange_name="mem", get_candles=get_candles)
    get_signal = once(long(tp=110, sl=90, minutes=60))

    engine.add_strategy(strategy_name="s", interval="1m", get_signal=get_signal)
    notifier = bk.WebhookNotifier(f"{server.base}/hook", **fast())
    unsubscribe = engine.add_notifier(notifier)
    await live_until_closed(engine)
    await engine.report_error(RuntimeError("boom"))
    await engine.close()  # shutdown hook: drains and closes the notifier
    kinds = [b["kind"] for _, _, b in server.requests]
    assert kinds[0] == "opened" and "closed" in kinds and "error" in kinds and "done" in kinds
    assert "idle" not in kinds and "active" not in kinds
    assert notifier.stats.sent == len(server.requests) and notifier.pending == 0
    unsubscribe()


async def test_slow_notifier_never_slows_the_engine(server: Server) -> None:
    """Every event of a backtest goes to a blocked endpoint: the run is not held up, drops are counted."""
    engine = make_engine()
    engine.add_exchange(exchange_name="mem", get_candles=bk.MemoryCandles(
        {"BTCUSDT": [candle(T0 + (i - 10) * M, 100, 101, 99, 100) for i in range(400)]}))
    engine.add_strategy(strategy_name="s", interval="1m", get_signal=lambda s, w: long(tp=110, sl=90, minutes=5))
    engine.add_frame(frame_name="f", interval="1m", start_date=dt(T0), end_date=dt(T0 + 300 * M))
    notifier = bk.WebhookNotifier(f"{server.base}/block", queue_size=5, **fast(timeout=30))
    engine.add_notifier(notifier, channels=["signal_backtest"], filter=lambda e: True)
    started = time.monotonic()
    results = [r async for r in engine.backtest.run("BTCUSDT", strategy_name="s", exchange_name="mem",
                                                     frame_name="f")]
    assert time.monotonic() - started < 5 and len(results) > 10
    assert notifier.stats.dropped > 0 and notifier.stats.submitted <= 5
    server.release.set()
    await notifier.flush(5)
    await engine.close()
    assert notifier.stats.sent == notifier.stats.submitted


async def test_any_notifier_object_is_queued() -> None:
    engine = make_engine()
    gate = asyncio.Event()
    got: list[Any] = []

    class Slow:
        async def notify(self, event: Any) -> None:
            await gate.wait()
            got.append(event)

    engine.add_notifier(Slow(), channels="error", filter=lambda e: True)
    started = time.monotonic()
    await engine.report_error(RuntimeError("1"))  # returns at once although notify() blocks
    assert time.monotonic() - started < 0.5 and got == []
    gate.set()
    await engine.close()
    assert [str(e) for e in got] == ["1"]
    assert isinstance(Slow(), bk.Notifier)


async def test_notifier_as_a_listen_function_and_bad_arguments(server: Server) -> None:
    engine = make_engine()
    n = bk.WebhookNotifier(f"{server.base}/hook", **fast())
    engine.listen_error(n)
    await engine.report_error(ValueError("via listen_error"))
    await n.flush(5)
    assert server.requests[0][2]["event"]["message"] == "via listen_error"
    with pytest.raises(bk.SchemaError, match="channels"):
        engine.add_notifier(n, channels=["nope"])
    with pytest.raises(bk.SchemaError, match="notifier"):
        engine.add_notifier(object())
    adapter = QueuedAdapter(bk.LogNotifier())
    assert adapter.name == "log"
    await n.aclose()


class _NoPersist:
    async def read(self, entity: str, key: str) -> bytes | None:
        return None

    async def write(self, entity: str, key: str, data: bytes) -> None:
        return None

    async def delete(self, entity: str, key: str) -> None:
        return None

    async def keys(self, entity: str) -> list[str]:
        return []


async def test_deliveries_do_not_inherit_the_context_of_the_first_submitting_run() -> None:
    """The consumer task is created by the first `submit`; inside a tick that would hand it the tick's
    execution context (its symbol and time) for good, so a notifier calling a strategy helper
    would read candles as of that first event forever. Deliveries run outside any run instead."""
    from backtest_kit.engine.bus import _RUN_MODE, enter_run, leave_run
    from backtest_kit.engine.context import ExecutionContext, _current, enter, leave

    engine = make_engine()
    seen: list[tuple[Any, Any]] = []

    class Probe:
        async def notify(self, event: Any) -> None:
            seen.append((_current.get(), _RUN_MODE.get()))

    notifier = QueuedAdapter(Probe())
    mode, tick = enter_run(False), enter(ExecutionContext("BTCUSDT", T0 + 3 * M, False, exchange=None))  # type: ignore[arg-type]
    try:  # as inside a live tick
        assert _current.get() is not None and _RUN_MODE.get() is False
        notifier.submit(opened_result())
    finally:
        leave(tick)
        leave_run(mode)
    notifier.submit(opened_result())
    await notifier.aclose()
    assert seen == [(None, None), (None, None)]
    await engine.close()

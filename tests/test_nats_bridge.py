"""The NATS event bridge against real NATS servers (issue 15 part 4).

- events published by an engine in another process arrive in order, with their types;
- a broker outage (a private nats-server killed and restarted on the same port and store) never
  stalls ticks, and nothing JetStream acknowledged is lost, nothing is stored twice;
- a full queue drops, counts and reports on the engine's error channel, without blocking it;
- the same message id is delivered once (JetStream's duplicate window, then the subscriber's own);
- subject tokens are injective and never hold a separator or a wildcard; no secret in a payload.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec
import nats
import pytest
from helpers import T0, M, dt, flat_candles, long, row
from hypothesis import given
from hypothesis import strategies as st
from nats_server import NATS_URL, NatsServer

import backtest_kit as bk
from backtest_kit.adapters.nats_wire import parse_subject, subject_for
from backtest_kit.engine.channels import ERROR, SIGNAL_LIVE
from backtest_kit.engine.naming import parse_subject_token, subject_token
from backtest_kit.engine.redact import register_secret
from backtest_kit.testing import REFERENCE_CONFIG

ROOT = Path(__file__).resolve().parents[1]


def opened(symbol: str = "BTCUSDT", strategy: str = "s", sid: str = "id-1") -> bk.OpenedResult:
    signal = msgspec.structs.replace(row(), id=sid, symbol=symbol, strategy_name=strategy)
    return bk.OpenedResult(symbol=symbol, strategy_name=strategy, exchange_name="mem", backtest=False,
                           current_price=100.0, signal=signal)


def names() -> tuple[str, str, str]:
    """A (stream, prefix, durable) no other test or earlier run uses."""
    tag = uuid.uuid4().hex[:12]
    return f"T{tag}", f"t{tag}", f"d{tag}"


async def drop_stream(stream: str, url: str = NATS_URL) -> None:
    nc = await nats.connect(url)
    try:
        await nc.jetstream().delete_stream(stream)
    except Exception:
        pass
    finally:
        await nc.close()


async def until(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    """Wait for `predicate()` to hold, yielding to the loop (a bounded wait on a condition)."""
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


async def read_all(url: str, stream: str, prefix: str, expected: int, **options: Any) -> list[bk.RemoteEvent[Any]]:
    got: list[bk.RemoteEvent[Any]] = []
    sub = await bk.listen_remote(got.append, url, stream=stream, prefix=prefix, deliver="all", **options)
    try:
        await until(lambda: len(got) >= expected)
    finally:
        await sub.aclose()
    return got


# ------------------------------------------------------------------------------------------ subjects
@given(st.text())
def test_subject_token_is_injective_and_one_plain_token(name: str) -> None:
    token = subject_token(name)
    assert token and not any(c in token for c in ".*> \t\r\n")
    assert token.isascii()
    assert parse_subject_token(token) == name  # invertible, so no two names share a token


@given(st.text(), st.text(), st.text())
def test_subjects_parse_back(symbol: str, strategy: str, other: str) -> None:
    subject = subject_for("bk", "signal_live", symbol, strategy)
    assert subject.count(".") == 3
    assert parse_subject(subject) == ("bk", "signal_live", symbol, strategy)
    if (symbol, strategy) != (other, strategy):
        assert subject != subject_for("bk", "signal_live", other, strategy)


@pytest.mark.parametrize("token", ["%2e", "%4A", "a%2", "%C3", "é", "%%", "a.b"])
def test_non_canonical_tokens_are_refused(token: str) -> None:
    with pytest.raises(ValueError):
        parse_subject_token(token)


def test_core_imports_without_the_client() -> None:
    code = ("import sys; sys.modules['nats'] = None; import backtest_kit as bk; b = bk.NatsBridge();"
            "\ntry:\n    from backtest_kit.adapters.nats_wire import import_nats; import_nats()\n"
            "except ImportError as e:\n    print(e)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         env={"PYTHONPATH": str(ROOT)}, timeout=60)
    assert "pip install 'backtest-kit[nats]'" in out.stdout, out.stderr


# ------------------------------------------------------------------------------------------ across processes
async def test_events_of_another_process_arrive_in_order_with_their_types() -> None:
    stream, prefix, _ = names()
    got: list[bk.RemoteEvent[Any]] = []
    sub = await bk.listen_remote(got.append, NATS_URL, stream=stream, prefix=prefix)  # before the stream exists
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(ROOT / "tests" / "nats_child.py"), NATS_URL, stream, prefix,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT, env={"PYTHONPATH": str(ROOT)})
        out, err = await asyncio.wait_for(proc.communicate(), 120)
        assert proc.returncode == 0, err.decode()[-2000:]
        sent = json.loads(out.decode().strip().splitlines()[-1])
        assert len(sent) > 50
        await until(lambda: len(got) >= len(sent))
        assert [[r.channel, type(r.event).__name__, r.symbol] for r in got] == sent
        assert [r.seq for r in got] == list(range(1, len(sent) + 1))
        assert len({r.source for r in got}) == 1
        assert {type(r.event) for r in got} >= {bk.OpenedResult, bk.ClosedResult, bk.DoneEvent}
        closed = next(r.event for r in got if isinstance(r.event, bk.ClosedResult))
        assert closed.pnl.price_open > 0 and closed.signal.symbol == "BTCUSDT"
        assert sub.stats.delivered == len(sent) and sub.stats.duplicates == 0
    finally:
        await sub.aclose()
        await drop_stream(stream)


async def test_filters_by_channel_symbol_and_strategy() -> None:
    stream, prefix, _ = names()
    engine = bk.Engine()
    bridge = bk.NatsBridge(NATS_URL, stream=stream, prefix=prefix, channels=[SIGNAL_LIVE, ERROR])
    bridge.attach(engine)
    try:
        for symbol in ("BTC.PERP", "ETH USDT", "BTC"):
            await engine.bus.emit(SIGNAL_LIVE, opened(symbol))
        await engine.report_error(ValueError("boom"))
        assert await bridge.flush(10)
        only = await read_all(NATS_URL, stream, prefix, 1, channels=SIGNAL_LIVE, symbol="BTC.PERP")
        assert [r.symbol for r in only] == ["BTC.PERP"]
        errors = await read_all(NATS_URL, stream, prefix, 1, channels=["error"])
        assert isinstance(errors[0].event, bk.RemoteError) and errors[0].event.type == "ValueError"
        both = await read_all(NATS_URL, stream, prefix, 3, channels=[SIGNAL_LIVE, ERROR], strategy="s")
        assert [r.channel for r in both] == ["signal_live"] * 3  # the error has no strategy
    finally:
        await engine.close()
        await drop_stream(stream)


# ------------------------------------------------------------------------------------------ outage
async def test_broker_outage_never_stalls_ticks_and_loses_nothing_acknowledged(tmp_path: Path) -> None:
    server = NatsServer(tmp_path / "js").start()
    stream, prefix, _ = names()
    clock = bk.VirtualClock(dt(T0))
    engine = bk.Engine(clock=clock, persist_dir=tmp_path / "data", dump_dir=tmp_path / "dump")
    engine.set_config(REFERENCE_CONFIG, unsafe=True)
    source = bk.MemoryCandles({"BTCUSDT": flat_candles(T0 - 60 * M, 10 * 1440, 100.0)})
    engine.add_exchange(exchange_name="mem", get_candles=bk.ReplayExchange(source, clock))

    def get_signal(symbol: str, when: datetime) -> bk.SignalDto:
        return long(1000, 1, 1)  # opens at once, expires a minute later: lifecycle events all the time

    engine.add_strategy(strategy_name="s", interval="1m", get_signal=get_signal)
    bridge = bk.NatsBridge(server.url, stream=stream, prefix=prefix, ack_timeout=0.5, reconnect_wait=0.1,
                           max_backoff=0.2, queue_size=100_000)
    bridge.attach(engine)
    given: list[tuple[str, str]] = []  # what the bridge was given, in bus order
    engine.bus.subscribe(SIGNAL_LIVE, lambda r: given.append(("signal_live", r.action))
                         if bridge.filter(r) else None)
    ticks = [0]
    engine.listen_signal_live(lambda r: ticks.__setitem__(0, ticks[0] + 1))

    handle = engine.live.background("BTCUSDT", strategy_name="s", exchange_name="mem")
    with clock.attach():
        async def drive(n: int) -> None:  # n more ticks; a stalled publisher would hang here
            target = ticks[0] + n
            async with asyncio.timeout(30):
                while ticks[0] < target:
                    await clock.sleep(30)

        await drive(50)
        await until(lambda: bridge.stats.published > 20)
        server.kill()
        before = ticks[0]
        await drive(300)  # the engine keeps ticking while the broker is away
        assert ticks[0] - before >= 300
        await until(lambda: bridge.stats.retries > 0)
        assert bridge.pending > 0
        server.start()
        await drive(50)
        handle()
        async with asyncio.timeout(30):
            while not handle.task.done():
                await clock.sleep(30)
    await engine.close(timeout=10)  # flushes the bridge
    try:
        assert bridge.stats.dropped == 0 and bridge.stats.lost == 0, bridge.stats
        assert bridge.stats.published == bridge.stats.queued
        got = await read_all(server.url, stream, prefix, bridge.stats.queued)
        lifecycle = [(r.channel, r.event.action) for r in got if r.channel == "signal_live"]
        assert lifecycle == given  # every event, once, in bus order (deduplicated retries)
        assert [r.seq for r in got] == list(range(1, bridge.stats.queued + 1))
        nc = await nats.connect(server.url)
        info = await nc.jetstream().stream_info(stream)
        await nc.close()
        assert info.state.messages == bridge.stats.queued  # JetStream stored each one once
    finally:
        server.stop()


async def test_a_full_queue_drops_counts_and_reports_without_blocking(tmp_path: Path) -> None:
    down = NatsServer(tmp_path / "js")  # never started: nothing listens on its port
    engine = bk.Engine()
    errors: list[BaseException] = []
    engine.listen_error(errors.append)
    bridge = bk.NatsBridge(down.url, queue_size=5, report_every=10, connect_timeout=0.2, reconnect_wait=0.1,
                           close_timeout=0.2)
    bridge.attach(engine)
    async with asyncio.timeout(5):  # each emit returns at once though the broker never answers
        for i in range(30):
            await engine.bus.emit(SIGNAL_LIVE, opened(sid=f"s{i}"))
    drops = [e for e in errors if isinstance(e, bk.EventsDroppedError)]
    assert [e.dropped for e in drops] == [1, 11, 21]  # the first drop, then every report_every-th
    # the three reports go to the bridge too (`error` is a default channel): the full queue drops them,
    # counted and not reported again
    assert bridge.stats.queued == 5 and bridge.stats.dropped == 25 + 3
    await engine.close()
    assert bridge.stats.lost == 5 and bridge.stats.published == 0


# ------------------------------------------------------------------------------------------ ids and secrets
async def test_the_same_message_id_is_delivered_once() -> None:
    stream, prefix, durable = names()
    engine = bk.Engine()
    bridge = bk.NatsBridge(NATS_URL, stream=stream, prefix=prefix)  # the default 120 s window
    bridge.attach(engine)
    await engine.bus.emit(SIGNAL_LIVE, opened())
    assert await bridge.flush(10)  # the stream exists now
    nc = await nats.connect(NATS_URL)
    js = nc.jetstream()
    subject = subject_for(prefix, "signal_live", "BTCUSDT", "s")
    payload = msgspec.json.encode(opened(sid="dup"))
    headers = {"Nats-Msg-Id": "other-1", "Bk-Source": "other", "Bk-Seq": "1"}
    try:
        first = await js.publish(subject, payload, headers=dict(headers))
        again = await js.publish(subject, payload, headers=dict(headers))
        assert again.duplicate and again.seq == first.seq  # JetStream's duplicate window
        seen: list[bk.RemoteEvent[Any]] = []
        sub = await bk.listen_remote(seen.append, NATS_URL, stream=stream, prefix=prefix, deliver="all",
                                     durable=durable)
        await until(lambda: sub.stats.delivered == 2)  # two stored messages: the duplicate was not stored
        await sub.aclose()
        assert [r.msg_id for r in seen] == [f"{bridge.source}-1", "other-1"]
        assert sub.stats.duplicates == 0
        # (a copy stored again after the window is dropped by the subscriber's memory of handled ids;
        # waiting for the server to forget the id is timing-dependent here, so that path is covered by
        # the redelivery test below instead)
        # a durable consumer resumes after what it acknowledged
        await engine.bus.emit(SIGNAL_LIVE, opened(sid="later"))
        assert await bridge.flush(10)
        resumed = await read_all(NATS_URL, stream, prefix, 1, durable=durable)
        assert [r.event.signal.id for r in resumed] == ["later"]
    finally:
        await nc.close()
        await engine.close()
        await drop_stream(stream)


async def test_a_raising_callback_gets_the_event_again_then_it_is_acknowledged() -> None:
    stream, prefix, _ = names()
    engine = bk.Engine()
    bridge = bk.NatsBridge(NATS_URL, stream=stream, prefix=prefix)
    bridge.attach(engine)
    await engine.bus.emit(SIGNAL_LIVE, opened())
    assert await bridge.flush(10)
    calls: list[str] = []

    def flaky(remote: bk.RemoteEvent[Any]) -> None:
        calls.append(remote.msg_id)
        if len(calls) == 1:
            raise RuntimeError("not yet")

    sub = await bk.listen_remote(flaky, NATS_URL, stream=stream, prefix=prefix, deliver="all")
    try:
        await until(lambda: sub.stats.delivered == 1)
        assert len(calls) == 2 and calls[0] == calls[1] and sub.stats.failed == 1
    finally:
        await sub.aclose()
        await engine.close()
        await drop_stream(stream)


async def test_no_secret_reaches_a_payload() -> None:
    stream, prefix, _ = names()
    secret = "k3y-" + uuid.uuid4().hex
    register_secret(secret)
    engine = bk.Engine()
    bridge = bk.NatsBridge(NATS_URL, stream=stream, prefix=prefix)
    bridge.attach(engine)
    await engine.report_error(ConnectionError(
        f"GET https://api.example.com/order?signature=deadbeef&apiKey={secret} failed"))
    assert await bridge.flush(10)
    nc = await nats.connect(NATS_URL)
    try:
        psub = await nc.jetstream().pull_subscribe(f"{prefix}.>", stream=stream)
        [msg] = await psub.fetch(1, timeout=5)
        assert secret not in msg.data.decode() and "deadbeef" not in msg.data.decode()
        error = msgspec.json.decode(msg.data, type=bk.RemoteError)
        assert error.type == "ConnectionError" and "***" in error.message
    finally:
        await nc.close()
        await engine.close()
        await drop_stream(stream)


async def test_a_password_in_the_url_never_reaches_the_log(caplog: pytest.LogCaptureFixture) -> None:
    down = NatsServer(Path("unused"))  # its port: nothing listens there
    password = "pw-" + uuid.uuid4().hex
    engine = bk.Engine()
    bridge = bk.NatsBridge(f"nats://alice:{password}@127.0.0.1:{down.port}", connect_timeout=0.2,
                           reconnect_wait=0.1, close_timeout=0.1)
    bridge.attach(engine)
    with caplog.at_level("DEBUG"):
        await engine.bus.emit(SIGNAL_LIVE, opened())
        await until(lambda: "cannot reach NATS" in caplog.text)
        await engine.close()
    assert f"127.0.0.1:{down.port}" in caplog.text and password not in caplog.text
    assert password not in repr(bridge)


async def test_pipelined_publishing_delivers_every_event_in_order_when_healthy() -> None:
    stream, prefix, _ = names()
    engine = bk.Engine()
    bridge = bk.NatsBridge(NATS_URL, stream=stream, prefix=prefix, max_in_flight=16)
    bridge.attach(engine)
    try:
        for i in range(200):
            await engine.bus.emit(SIGNAL_LIVE, opened(sid=f"s{i}"))
        assert await bridge.flush(20) and bridge.stats.published == 200
        got = await read_all(NATS_URL, stream, prefix, 200)
        assert [r.event.signal.id for r in got] == [f"s{i}" for i in range(200)]
    finally:
        await engine.close()
        await drop_stream(stream)


async def test_closing_a_durable_subscriber_leaves_no_pull_that_would_strand_the_next_event() -> None:
    """A pull cancelled mid-flight stays pending on the server until it expires; an event published
    then is handed to it and waits `ack_wait` (30 s here) before the resumed subscriber sees it. The
    subscriber stops after its pull instead: nothing is waiting on the server once `aclose` returns,
    and the next event reaches the resumed subscriber at once."""
    stream, prefix, durable = names()
    engine = bk.Engine()
    bridge = bk.NatsBridge(NATS_URL, stream=stream, prefix=prefix)
    bridge.attach(engine)
    remote = bk.RemoteEvents(NATS_URL, stream=stream, prefix=prefix)  # one connection, kept open throughout
    nc = await nats.connect(NATS_URL)
    try:
        await engine.bus.emit(SIGNAL_LIVE, opened(sid="first"))
        assert await bridge.flush(10)
        seen: list[bk.RemoteEvent[Any]] = []
        sub = await remote.subscribe(seen.append, deliver="all", durable=durable, ack_wait=30.0)
        await until(lambda: len(seen) == 1)
        await sub.aclose()
        info = await nc.jetstream().consumer_info(stream, durable)
        assert info.num_waiting == 0 and info.num_ack_pending == 0
        await engine.bus.emit(SIGNAL_LIVE, opened(sid="next"))
        assert await bridge.flush(10)
        resumed: list[bk.RemoteEvent[Any]] = []
        again = await remote.subscribe(resumed.append, deliver="all", durable=durable, ack_wait=30.0)
        await until(lambda: len(resumed) == 1, timeout=10.0)  # well inside ack_wait
        await again.aclose()
        assert [r.event.signal.id for r in seen + resumed] == ["first", "next"]
    finally:
        await nc.close()
        await remote.aclose()
        await engine.close()
        await drop_stream(stream)

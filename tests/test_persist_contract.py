"""The persistence contract, run against every backend: `FilePersist`, `MemoryPersist` (the testing
double), `RedisPersist` and `PostgresPersist` on the real local servers (tests/servers.py).

What every `PersistBackend` must do, whatever it stores in: round trip, overwrite, delete of a missing
key, exact `keys()`, any key string stored distinctly (the WEIRD_KEYS and hypothesis), concurrent
writers of one key ending with one complete value, and a live engine restoring a position from it
after a restart, exactly once. A `QuarantineBackend` also moves a bad document aside, keeps its bytes
and says where; the live engine then sets a corrupt stored document aside and restores the rest.

The network backends must also fail well: a closed port, a hung server and a server that goes down and
comes back (a TCP proxy switched off and on), each a `PersistError` naming the server address and never
its password, a live tick opening nothing while the state cannot be saved, and the same backend
instance working again once the server is back.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from helpers import T0, M, MemoryPersist, dt, flat_candles, long
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from servers import (
    POSTGRES_DSN,
    REDIS_URL,
    SilentServer,
    SwitchableProxy,
    closed_port,
    drop_backend,
    make_postgres,
    make_redis,
    with_port,
)
from test_file_persist import WEIRD_KEYS
from test_persistence import KEY, SYMBOL, TTL, World, make_world, sample_row

import backtest_kit as bk
from backtest_kit.engine.persist import PersistBackend, QuarantineBackend
from backtest_kit.engine.signal_store import encode_signal_row, signal_key
from backtest_kit.testing import make_engine

ALL = ["file", "memory", "redis", "postgres"]
QUARANTINING = ["file", "redis", "postgres"]  # MemoryPersist sets aside under "<key>.corrupt" in `data`
REMOTE = ["redis", "postgres"]


def open_backend(kind: str, tmp_path: Path, **kwargs: Any) -> Any:
    if kind == "file":
        return bk.FilePersist(tmp_path / "data", fsync=False)
    if kind == "memory":
        return MemoryPersist(record=False)
    if kind == "redis":
        return make_redis(**kwargs)
    if kind == "postgres":
        return make_postgres(**kwargs)
    raise AssertionError(kind)


async def quarantined_bytes(backend: Any, entity: str) -> list[bytes]:
    """Every document `backend` has set aside for `entity`, however it keeps them."""
    if isinstance(backend, bk.FilePersist):
        directory = backend.path_for(entity, "x").parent
        return sorted(p.read_bytes() for p in directory.iterdir() if ".json.corrupt-" in p.name)
    if isinstance(backend, bk.RedisPersist):
        return sorted((await backend.quarantined(entity)).values())
    if isinstance(backend, bk.PostgresPersist):
        return sorted(data for _, data in await backend.quarantined(entity))
    raise AssertionError(type(backend))


@pytest.fixture(params=ALL)
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Any]:
    store = open_backend(request.param, tmp_path)
    try:
        yield store
    finally:
        await drop_backend(store)


@pytest.fixture(params=QUARANTINING)
async def qbackend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Any]:
    store = open_backend(request.param, tmp_path)
    try:
        yield store
    finally:
        await drop_backend(store)


@pytest.fixture(params=REMOTE)
def remote_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def remote_at(kind: str, port: int, **kwargs: Any) -> Any:
    """A network backend of `kind` pointed at 127.0.0.1:`port` (same credentials and database)."""
    url = REDIS_URL if kind == "redis" else POSTGRES_DSN
    make: Callable[..., Any] = make_redis if kind == "redis" else make_postgres
    return make(with_port(url, port), **kwargs)


# ---------------------------------------------------------------------------------------------- storage
async def test_implements_the_protocols(backend: Any) -> None:
    assert isinstance(backend, PersistBackend)
    assert isinstance(backend, QuarantineBackend)


async def test_round_trip_overwrite_delete(backend: Any) -> None:
    assert await backend.read("signals", "BTCUSDT-rsi") is None
    await backend.write("signals", "BTCUSDT-rsi", b'{"a":1}')
    assert await backend.read("signals", "BTCUSDT-rsi") == b'{"a":1}'
    await backend.write("signals", "BTCUSDT-rsi", b'{"a":2}')
    assert await backend.read("signals", "BTCUSDT-rsi") == b'{"a":2}'
    await backend.write("signals", "ETHUSDT-rsi", b"")
    assert await backend.read("signals", "ETHUSDT-rsi") == b""  # empty is stored, not "missing"
    assert sorted(await backend.keys("signals")) == ["BTCUSDT-rsi", "ETHUSDT-rsi"]
    await backend.delete("signals", "BTCUSDT-rsi")
    assert await backend.read("signals", "BTCUSDT-rsi") is None
    assert await backend.keys("signals") == ["ETHUSDT-rsi"]


async def test_missing_things_are_not_errors(backend: Any) -> None:
    await backend.delete("signals", "nope")
    assert await backend.read("signals", "nope") is None
    assert await backend.keys("never-written") == []
    assert await backend.quarantine("signals", "nope") is None
    await backend.write("signals", "other", b"1")
    await backend.delete("signals", "nope")
    assert await backend.keys("signals") == ["other"]


async def test_entities_are_separate_namespaces(backend: Any) -> None:
    entities = ["signals", "schedules", "risk", "partial", "", "a:b", "a%3Ab", "../x", "\x00", "e" * 3000]
    for i, entity in enumerate(entities):
        await backend.write(entity, "k", f"v{i}".encode())
    for i, entity in enumerate(entities):
        assert await backend.read(entity, "k") == f"v{i}".encode()
        assert await backend.keys(entity) == ["k"]
    await backend.delete("signals", "k")
    assert await backend.read("schedules", "k") == b"v1"


async def test_weird_keys_round_trip_and_are_listed(backend: Any) -> None:
    for i, key in enumerate(WEIRD_KEYS):
        await backend.write("signals", key, f"v{i}".encode())
    for i, key in enumerate(WEIRD_KEYS):
        assert await backend.read("signals", key) == f"v{i}".encode()
    assert sorted(await backend.keys("signals")) == sorted(WEIRD_KEYS)
    for key in WEIRD_KEYS[::2]:
        await backend.delete("signals", key)
    assert sorted(await backend.keys("signals")) == sorted(WEIRD_KEYS[1::2])


async def test_write_rejects_text(backend: Any) -> None:
    if isinstance(backend, MemoryPersist):
        return  # the testing double stores what it is given
    with pytest.raises(TypeError, match="must be bytes"):
        await backend.write("e", "k", "text")
    assert await backend.read("e", "k") is None


_KEYS = st.one_of(
    st.text(max_size=40),
    st.text(alphabet=st.sampled_from([":", "/", "%", "~", "*", "?", "[", "\x00", "a", "é", "\ud800"]), max_size=12),
    st.sampled_from(WEIRD_KEYS),
)


@pytest.mark.parametrize("kind", ALL)
def test_property_distinct_keys_are_stored_distinctly(kind: str, tmp_path: Path) -> None:
    """Injectivity: any set of distinct keys (separators, glob and escape characters, NUL, lone
    surrogates, prefixes of each other) reads back one value per key and lists exactly those keys."""
    with asyncio.Runner() as runner:
        store = open_backend(kind, tmp_path)
        counter = iter(range(10**6))

        @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
        @given(keys=st.lists(_KEYS, min_size=1, max_size=6, unique=True))
        def check(keys: list[str]) -> None:
            entity = f"e{next(counter)}"  # a fresh entity per example: no clean-up between examples

            async def scenario() -> None:
                for i, key in enumerate(keys):
                    await store.write(entity, key, f"{i}".encode())
                for i, key in enumerate(keys):
                    assert await store.read(entity, key) == f"{i}".encode()
                assert sorted(await store.keys(entity)) == sorted(keys)
                await store.delete(entity, keys[0])
                assert sorted(await store.keys(entity)) == sorted(keys[1:])

            runner.run(scenario())

        try:
            check()
        finally:
            runner.run(drop_backend(store))


async def test_namespaces_do_not_see_each_other(remote_kind: str, tmp_path: Path) -> None:
    one = open_backend(remote_kind, tmp_path)
    other = open_backend(remote_kind, tmp_path, **({"schema": one.schema} if remote_kind == "postgres" else {}))
    try:
        await one.write("signals", "k", b"one")
        assert await other.read("signals", "k") is None and await other.keys("signals") == []
        await other.write("signals", "k", b"other")
        assert await one.read("signals", "k") == b"one"
        await other.delete("signals", "k")
        assert await one.keys("signals") == ["k"]
    finally:
        await drop_backend(other)
        await drop_backend(one)


async def test_concurrent_writers_of_one_key_end_with_one_complete_value(backend: Any) -> None:
    values = [bytes([i]) * 200_000 for i in range(12)]
    seen: list[bytes | None] = []

    async def reader() -> None:
        for _ in range(20):
            seen.append(await backend.read("signals", "hot"))

    await asyncio.gather(*(backend.write("signals", "hot", v) for v in values), reader(), reader())
    assert await backend.read("signals", "hot") in values
    assert all(v is None or v in values for v in seen)  # never a mix of two writes, never torn
    assert await backend.keys("signals") == ["hot"]


async def test_a_thousand_pairs_at_once(backend: Any) -> None:
    """A tick of a 1,000-pair deployment: every write succeeds (a network backend queues operations
    beyond its connection pool; redis-py's default pool fails them with "Too many connections")."""
    await asyncio.gather(*(backend.write("signals", f"P{i}-s", b"%d" % i) for i in range(1000)))
    assert sorted(await backend.keys("signals")) == sorted(f"P{i}-s" for i in range(1000))
    assert await backend.read("signals", "P999-s") == b"999"


async def test_operations_beyond_the_pool_wait_for_a_connection(remote_kind: str, tmp_path: Path) -> None:
    store = open_backend(remote_kind, tmp_path, pool_size=2)
    try:
        await asyncio.gather(*(store.write("signals", f"P{i}-s", b"x") for i in range(300)))
        assert len(await store.keys("signals")) == 300
    finally:
        await drop_backend(store)


# ---------------------------------------------------------------------------------------------- quarantine
async def test_quarantine_moves_aside_keeps_bytes_and_says_where(qbackend: Any) -> None:
    bad = b"\x00\xff{not json"
    await qbackend.write("signals", "BTCUSDT-s", bad)
    where = await qbackend.quarantine("signals", "BTCUSDT-s")
    assert isinstance(where, str) and where
    assert await qbackend.read("signals", "BTCUSDT-s") is None
    assert await qbackend.keys("signals") == []  # set-aside documents are never listed as live state
    assert await quarantined_bytes(qbackend, "signals") == [bad]
    # a second bad document under the same key gets its own place: nothing is overwritten or lost
    await qbackend.write("signals", "BTCUSDT-s", b"second")
    second = await qbackend.quarantine("signals", "BTCUSDT-s")
    assert second and second != where
    assert await quarantined_bytes(qbackend, "signals") == sorted([bad, b"second"])
    if not isinstance(qbackend, bk.FilePersist):
        assert qbackend.address in where  # a network backend names its server


async def test_quarantine_of_weird_keys(qbackend: Any) -> None:
    for i, key in enumerate(WEIRD_KEYS):
        await qbackend.write("signals", key, f"v{i}".encode())
    for key in WEIRD_KEYS:
        assert await qbackend.quarantine("signals", key)
    assert await qbackend.keys("signals") == []
    assert await quarantined_bytes(qbackend, "signals") == sorted(f"v{i}".encode() for i in range(len(WEIRD_KEYS)))


# ---------------------------------------------------------------------------------------------- live engine
async def test_live_engine_restores_a_position_from_the_backend_once(backend: Any, tmp_path: Path) -> None:
    first = make_world(tmp_path, lambda s, when: long(110, 90, 30, id="keep-me"), persist=backend)
    async with first.run() as run:
        async for result in run:
            assert result.action == "opened"
            break  # crash: nothing after the open runs
    opened = first.of("opened")[0].signal
    assert await backend.keys("signals") == [KEY]

    restart_at = T0 + 5 * TTL
    second = make_world(tmp_path, lambda s, when: long(110, 90, 30, id="must-not-open"),
                        start=restart_at, persist=backend)
    await second.run_until(lambda w: "closed" in w.actions())
    assert second.of("opened") == []
    assert second.events[0][1].action == "active" and second.events[0][1].signal == opened
    assert [r.signal.id for r in second.of("closed")] == ["keep-me"]
    assert second.errors == []
    assert await backend.keys("signals") == []


async def test_corrupt_document_is_set_aside_and_the_rest_restored(qbackend: Any, tmp_path: Path) -> None:
    garbage = b"\x00\xff{garbage"
    eth_key = signal_key("ETHUSDT", "s")
    kept = sample_row(id="eth-kept", symbol="ETHUSDT", pending_at=T0, minute_estimated_time=600)
    await qbackend.write("signals", KEY, garbage)
    await qbackend.write("signals", eth_key, encode_signal_row(kept))

    clock = bk.VirtualClock(dt(T0 + 5 * M))
    engine = make_engine(tmp_path, clock, persist=qbackend)
    candles = flat_candles(T0 - 60 * M, 3 * 1440, 100.0)
    engine.add_exchange(exchange_name="mem", get_candles=bk.ReplayExchange(
        bk.MemoryCandles({SYMBOL: candles, "ETHUSDT": candles}), clock))
    engine.add_strategy(strategy_name="s", interval="1m",
                        get_signal=lambda symbol, when: long(110, 90, 600, id=f"fresh-{symbol}"))
    events: dict[str, list[bk.TickResult]] = {SYMBOL: [], "ETHUSDT": []}
    errors: list[BaseException] = []
    engine.listen_signal_live(lambda r: events[r.symbol].append(r))
    engine.listen_error(errors.append)
    handles = [engine.live.background(s, strategy_name="s", exchange_name="mem") for s in (SYMBOL, "ETHUSDT")]
    while not (len(events[SYMBOL]) >= 2 and len(events["ETHUSDT"]) >= 2):
        await asyncio.sleep(0)
    for handle in handles:
        handle.task.cancel()  # crash: the open positions stay stored
    await asyncio.gather(*(h.task for h in handles), return_exceptions=True)

    eth = events["ETHUSDT"]
    assert eth[0].action == "active" and eth[0].signal == kept  # the good document was restored
    assert [e.action for e in events[SYMBOL][:2]] == ["idle", "opened"]  # the set-aside tick opens nothing
    assert events[SYMBOL][1].signal.id == "fresh-BTCUSDT"
    assert len(errors) == 1 and isinstance(errors[0], bk.PersistError)
    message = str(errors[0])
    where = message.split("not restored, moved to ", 1)[1]
    assert KEY in message and "not restored" in message and where
    if not isinstance(qbackend, bk.FilePersist):
        assert qbackend.address in where
    assert await quarantined_bytes(qbackend, "signals") == [garbage]  # nothing lost, bytes intact
    assert sorted(await qbackend.keys("signals")) == sorted([KEY, eth_key])  # the fresh position and ETH's
    await engine.close()


# ---------------------------------------------------------------------------------------------- failures
async def test_closed_port_raises_persist_error_naming_the_address(remote_kind: str) -> None:
    port = closed_port()
    store = remote_at(remote_kind, port, timeout=2)
    try:
        for op in (store.read("signals", "BTCUSDT-s"), store.write("signals", "BTCUSDT-s", b"{}"),
                   store.delete("signals", "BTCUSDT-s"), store.quarantine("signals", "BTCUSDT-s")):
            with pytest.raises(bk.PersistError) as info:
                await op
            message = str(info.value)
            assert f"127.0.0.1:{port}" in message and "'signals'" in message and "BTCUSDT-s" in message
        with pytest.raises(bk.PersistError, match=rf"cannot list entity 'risk' on .*127\.0\.0\.1:{port}"):
            await store.keys("risk")
    finally:
        await store.aclose()


async def test_hung_server_fails_at_the_deadline(remote_kind: str) -> None:
    async with SilentServer() as server:
        store = remote_at(remote_kind, server.port, timeout=0.2)
        try:
            with pytest.raises(bk.PersistError, match=rf"127\.0\.0\.1:{server.port}.*no answer within 0\.2 s"):
                await store.write("signals", "BTCUSDT-s", b"{}")
        finally:
            await store.aclose()


async def test_password_never_appears_in_errors_or_repr(remote_kind: str) -> None:
    secret = "hunter2-persist-secret"
    port = closed_port()
    url = (f"redis://user:{secret}@127.0.0.1:{port}/0" if remote_kind == "redis"
           else f"postgresql://postgres:{secret}@127.0.0.1:{port}/test")
    store = bk.RedisPersist(url, timeout=2) if remote_kind == "redis" else bk.PostgresPersist(url, timeout=2)
    assert secret not in repr(store) and "***" in repr(store)
    with pytest.raises(bk.PersistError) as info:
        await store.read("signals", "k")
    assert secret not in str(info.value) and f"127.0.0.1:{port}" in str(info.value)
    await store.aclose()


async def test_reconnects_after_the_server_comes_back(remote_kind: str, tmp_path: Path) -> None:
    proxy = await SwitchableProxy(REDIS_URL if remote_kind == "redis" else POSTGRES_DSN).start()
    store = remote_at(remote_kind, proxy.port, timeout=2)
    try:
        await store.write("signals", "k", b"before")
        proxy.go_down()
        with pytest.raises(bk.PersistError, match=rf"127\.0\.0\.1:{proxy.port}"):
            await store.read("signals", "k")
        with pytest.raises(bk.PersistError):
            await store.write("signals", "k", b"while-down")
        proxy.go_up()
        assert await store.read("signals", "k") == b"before"  # the same instance, reconnected
        await store.write("signals", "k", b"after")
        assert await store.read("signals", "k") == b"after"
        await store.aclose()
        assert await store.keys("signals") == ["k"]  # a closed backend connects again on use
    finally:
        await drop_backend(store)
        await proxy.close()


async def test_live_tick_with_the_server_down_opens_nothing_then_opens_once(remote_kind: str, tmp_path: Path) -> None:
    """Mirrors test_persistence's failed-write tests: the write before an open fails, so no position
    opens and every tick tries again; once the server is back the position opens exactly once."""
    proxy = await SwitchableProxy(REDIS_URL if remote_kind == "redis" else POSTGRES_DSN).start()
    store = remote_at(remote_kind, proxy.port, timeout=2)
    calls = iter(range(10**6))
    w: World = make_world(tmp_path, lambda s, when: None if next(calls) == 0 else long(110, 90, 3, id="after"),
                          persist=store)

    def outage(result: bk.TickResult) -> None:
        if len(w.events) == 1:
            proxy.go_down()  # the restore read worked; the server dies before the first write

    def heal(_: BaseException) -> None:
        if len(w.errors) == 3:
            proxy.go_up()

    w.engine.listen_signal_live(outage)
    w.engine.listen_error(heal)
    try:
        await w.run_until(lambda w: "closed" in w.actions())
        assert w.actions()[:5] == ["idle", "idle", "idle", "idle", "opened"]
        errors = w.persist_errors()
        assert len(errors) == 3 and len(w.errors) == 3
        assert all(f"127.0.0.1:{proxy.port}" in str(e) and "'signals'" in str(e) and KEY in str(e) for e in errors)
        assert [r.signal.id for r in w.of("opened")] == ["after"] and len(w.of("closed")) == 1
        assert [name for name, _, _ in w.callbacks].count("on_open") == 1
        assert await store.keys("signals") == []
    finally:
        await drop_backend(store)
        await proxy.close()


# ---------------------------------------------------------------------------------------------- configuration
@pytest.mark.parametrize("namespace", ["", "a:b", "a b", "x" * 65, "é", None])
def test_bad_namespace_is_a_config_error(namespace: Any) -> None:
    for make in (bk.RedisPersist, bk.PostgresPersist):
        with pytest.raises(bk.ConfigError, match="namespace"):
            make(namespace=namespace)


@pytest.mark.parametrize("timeout", [0, -1, float("nan"), float("inf"), True, "5"])
def test_bad_timeout_is_a_config_error(timeout: Any) -> None:
    for make in (bk.RedisPersist, bk.PostgresPersist):
        with pytest.raises(bk.ConfigError, match="timeout"):
            make(timeout=timeout)


def test_bad_urls_and_schema_are_config_errors_that_never_echo_a_password() -> None:
    with pytest.raises(bk.ConfigError, match="redis://") as redis_info:
        bk.RedisPersist("http://user:topsecret-pw@127.0.0.1:6379")
    assert "topsecret-pw" not in str(redis_info.value)
    with pytest.raises(bk.ConfigError) as info:
        bk.PostgresPersist("mysql://root:topsecret-pw@db/x")
    assert "topsecret-pw" not in str(info.value)
    for schema in ["Public", "a-b", "1x", "", 'x"; DROP TABLE t; --']:
        with pytest.raises(bk.ConfigError, match="schema"):
            bk.PostgresPersist(schema=schema)
    with pytest.raises(bk.ConfigError, match="pool_size"):
        bk.PostgresPersist(pool_size=0)


def test_constructing_touches_nothing_and_the_core_imports_without_the_extras() -> None:
    code = (
        "import sys\n"
        "for name in ('redis', 'redis.asyncio', 'asyncpg'): sys.modules[name] = None  # not installed\n"
        "import asyncio, backtest_kit as bk\n"
        "stores = [bk.RedisPersist(), bk.PostgresPersist()]\n"
        "for store, extra in zip(stores, ('redis', 'postgres')):\n"
        "    try:\n"
        "        asyncio.run(store.read('signals', 'k'))\n"
        "    except ImportError as exc:\n"
        "        assert f\"backtest-kit[{extra}]\" in str(exc), exc\n"
        "    else:\n"
        "        raise AssertionError('no ImportError')\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr

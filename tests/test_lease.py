"""Pair leases, fencing tokens and shared risk slots on the real Redis and PostgreSQL (engine/lease.py).

Unit level, each test on both servers: a lease is exclusive and its token grows on every grant; a
lease whose owner stopped renewing is taken over with a newer token, after which the old owner's
renewal, writes, deletes and slot changes are refused by the server with `LeaseLostError` naming the
pair and both tokens (a paused old owner cannot overwrite the new owner's state); racing acquirers get
exactly one grant; racing slot takers never exceed the limit.

Engine level: a second engine on a running pair fails with `LeaseHeldError` and trades nothing; a
standby run takes over when the owner's lease ends and restores the open position once (monitored,
never opened again: nautilus_trader #3176's duplicate order shape); an old owner whose lease was taken
over stops trading with `LeaseLostError`, and a restart then loads the new owner's state, not the old
one's (#3550's stale state shape); two engines sharing a risk profile of limit 1 never both open.

Expiry is forced on the server (`expire_lease`) instead of waiting for the TTL, so nothing here
depends on timing. The kill -9 trials are in tests/test_lease_killtest.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest
from helpers import T0, M, dt, flat_candles, long
from servers import POSTGRES_DSN, REDIS_URL, drop_backend, make_postgres, make_redis

import backtest_kit as bk
from backtest_kit.engine.lease import Fence, LeaseBackend, SharedRiskBackend
from backtest_kit.engine.signal_store import decode_signal_row, signal_key
from backtest_kit.testing import make_engine

REMOTE = ["redis", "postgres"]
SYMBOL = "BTCUSDT"
PAIR = signal_key(SYMBOL, "s")


def make(kind: str, **kwargs: Any) -> Any:
    return make_redis(**kwargs) if kind == "redis" else make_postgres(**kwargs)


def sibling(backend: Any, owner: str, **kwargs: Any) -> Any:
    """Another process's view of the same namespace (and schema): a new client under `owner`."""
    if isinstance(backend, bk.RedisPersist):
        return bk.RedisPersist(REDIS_URL, namespace=backend.namespace, owner=owner, **kwargs)
    return bk.PostgresPersist(POSTGRES_DSN, namespace=backend.namespace, schema=backend.schema, owner=owner,
                              **kwargs)


async def expire_lease(backend: Any, pair: str) -> None:
    """Make `pair`'s lease expire now, on the server (what the TTL does when its owner stops renewing)."""
    if isinstance(backend, bk.RedisPersist):
        import redis.asyncio as redis_asyncio

        client = redis_asyncio.Redis.from_url(REDIS_URL)
        try:
            await client.delete(backend.lease_key(pair))
        finally:
            await client.aclose()
        return
    import asyncpg

    conn = await asyncpg.connect(POSTGRES_DSN)
    try:
        await conn.execute(
            f'UPDATE "{backend.schema}".backtest_kit_lease SET expires_at = clock_timestamp() - interval \'1 s\' '
            "WHERE namespace = $1 AND pair_digest = sha256($2)", backend.namespace, pair.encode())
    finally:
        await conn.close()


@pytest.fixture(params=REMOTE)
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    backend = make(request.param, owner="owner-a")
    try:
        yield backend
    finally:
        await drop_backend(backend)


@pytest.fixture
async def other(store: Any) -> AsyncIterator[Any]:
    backend = sibling(store, "owner-b")
    try:
        yield backend
    finally:
        await backend.aclose()


# ---------------------------------------------------------------------------------------------- leases
async def test_backends_implement_the_protocols(store: Any) -> None:
    assert isinstance(store, LeaseBackend) and isinstance(store, SharedRiskBackend)
    assert store.owner == "owner-a" and store.lease_ttl == 10.0


async def test_lease_is_exclusive_and_every_grant_has_a_larger_token(store: Any, other: Any) -> None:
    first = await store.acquire_lease(PAIR)
    assert first.granted and first.owner == "owner-a"
    refused = await other.acquire_lease(PAIR)
    assert not refused.granted and refused.owner == "owner-a" and refused.token == first.token
    assert 0 < refused.ttl_ms <= 10_000
    again = await store.acquire_lease(PAIR)  # the same owner (a restart under a stable name): at once
    assert again.granted and again.token == first.token + 1
    await store.release_lease(PAIR, again.token)
    taken = await other.acquire_lease(PAIR)
    assert taken.granted and taken.owner == "owner-b" and taken.token == again.token + 1
    assert (await store.acquire_lease("another pair")).granted  # leases are per pair


async def test_a_stale_owner_is_refused_by_the_server_after_a_takeover(store: Any, other: Any) -> None:
    old = await store.acquire_lease(PAIR)
    await store.write_fenced("signals", PAIR, b"old owner's state", Fence(PAIR, old.token))
    await expire_lease(store, PAIR)  # the old owner paused past its TTL
    new = await other.acquire_lease(PAIR)
    assert new.granted and new.token == old.token + 1
    await other.write_fenced("signals", PAIR, b"new owner's state", Fence(PAIR, new.token))

    assert not await store.renew_lease(PAIR, old.token)
    attempts: list[Callable[[], Any]] = [
        lambda: store.write_fenced("signals", PAIR, b"stale", Fence(PAIR, old.token)),
        lambda: store.delete_fenced("signals", PAIR, Fence(PAIR, old.token)),
        lambda: store.take_risk_slot("r", "s:BTCUSDT", b"{}", limit=None, fence=Fence(PAIR, old.token)),
        lambda: store.drop_risk_slot("r", "s:BTCUSDT", fence=Fence(PAIR, old.token)),
    ]
    for attempt in attempts:
        with pytest.raises(bk.LeaseLostError) as caught:
            await attempt()
        message = str(caught.value)
        assert repr(PAIR) in message and f"fencing token {old.token}" in message
        assert f"fencing token {new.token}" in message and store.address in message
    assert await store.read("signals", PAIR) == b"new owner's state"
    assert await store.risk_slots("r") == {}
    await store.release_lease(PAIR, old.token)  # a stale release leaves the new owner's lease alone
    assert not (await store.acquire_lease(PAIR)).granted
    assert await other.renew_lease(PAIR, new.token)


async def test_an_expired_lease_nobody_took_keeps_its_token_valid(store: Any) -> None:
    """Fencing, not clocks: with no successor the owner is still the only writer, so it may go on."""
    grant = await store.acquire_lease(PAIR)
    await expire_lease(store, PAIR)
    await store.write_fenced("signals", PAIR, b"still mine", Fence(PAIR, grant.token))
    assert await store.renew_lease(PAIR, grant.token)  # re-established
    late = sibling(store, "owner-c")
    assert not (await late.acquire_lease(PAIR)).granted
    await late.aclose()


async def test_racing_acquirers_get_exactly_one_grant(store: Any) -> None:
    rivals = [sibling(store, f"rival-{n}") for n in range(12)]
    try:
        grants = await asyncio.gather(*(r.acquire_lease(PAIR) for r in rivals))
        winners = [g for g in grants if g.granted]
        assert len(winners) == 1
        assert {g.owner for g in grants} == {winners[0].owner}  # every loser names the winner
    finally:
        await asyncio.gather(*(r.aclose() for r in rivals))


async def test_write_fenced_with_no_lease_at_all_is_refused(store: Any) -> None:
    with pytest.raises(bk.LeaseLostError, match="no lease at all"):
        await store.write_fenced("signals", PAIR, b"x", Fence(PAIR, 1))
    assert await store.read("signals", PAIR) is None


async def test_bad_lease_options_are_config_errors() -> None:
    for kwargs in ({"lease_ttl": 0}, {"lease_ttl": True}, {"owner": ""}, {"owner": "a\nb"}):
        with pytest.raises(bk.ConfigError):
            bk.RedisPersist(**kwargs)
        with pytest.raises(bk.ConfigError):
            bk.PostgresPersist(**kwargs)


# ---------------------------------------------------------------------------------------------- risk slots
async def test_racing_slot_takers_never_exceed_the_limit(store: Any) -> None:
    owners = [sibling(store, f"p{n}") for n in range(10)]
    try:
        grants = [await o.acquire_lease(f"pair-{n}") for n, o in enumerate(owners)]
        answers = await asyncio.gather(*(
            o.take_risk_slot("shared", f"pos-{n}", b"{}", limit=3, fence=Fence(f"pair-{n}", g.token))
            for n, (o, g) in enumerate(zip(owners, grants, strict=True))))
        assert sum(a.taken for a in answers) == 3
        assert all(a.others >= 3 for a in answers if not a.taken)
        slots = await store.risk_slots("shared")
        assert len(slots) == 3
        # a holder re-asserting its own slot does not count itself; a restore ignores the limit
        holder = next(n for n, a in enumerate(answers) if a.taken)
        fence = Fence(f"pair-{holder}", grants[holder].token)
        assert (await owners[holder].take_risk_slot("shared", f"pos-{holder}", b"{}", limit=3, fence=fence)).taken
        loser = next(n for n, a in enumerate(answers) if not a.taken)
        fence = Fence(f"pair-{loser}", grants[loser].token)
        assert (await owners[loser].take_risk_slot("shared", f"pos-{loser}", b"{}", limit=None, fence=fence)).taken
        assert len(await store.risk_slots("shared")) == 4
        await owners[loser].drop_risk_slot("shared", f"pos-{loser}", fence=fence)
        await owners[loser].drop_risk_slot("shared", f"pos-{loser}", fence=fence)  # twice: no error
        assert len(await store.risk_slots("shared")) == 3
    finally:
        await asyncio.gather(*(o.aclose() for o in owners))


# ---------------------------------------------------------------------------------------------- engines
class Node:
    """One live engine (its own client, owner and VirtualClock) trading `SYMBOL` with strategy "s"."""

    def __init__(self, tmp_path: Path, backend: Any, get_signal: Callable[[str, datetime], Any], *,
                 start: int = T0, risk_limit: int | None = None, symbol: str = SYMBOL) -> None:
        self.backend = backend
        self.symbol = symbol
        self.clock = bk.VirtualClock(dt(start))
        self.engine = bk.Engine(clock=self.clock, persist_dir=tmp_path / backend.owner, dump_dir=tmp_path / "dump")
        self.engine.set_config(CC_TICK_TTL_MS=60_000, CC_MAX_SIGNAL_LIFETIME_MINUTES=100_000)
        self.engine.use_persist(backend)
        candles = flat_candles(T0 - 60 * M, 3 * 1440, 100.0)
        self.engine.add_exchange(exchange_name="mem", get_candles=bk.ReplayExchange(
            bk.MemoryCandles({SYMBOL: candles, "ETHUSDT": candles}), self.clock))
        if risk_limit is not None:
            self.engine.add_risk(risk_name="shared", max_concurrent_positions=risk_limit)
        self.engine.add_strategy(strategy_name="s", interval="1m", get_signal=get_signal,
                                 risk_name="shared" if risk_limit is not None else None)
        self.results: list[bk.TickResult] = []
        self.errors: list[BaseException] = []
        self.ticked = asyncio.Event()
        self.engine.listen_signal_live(self._on_result)
        self.engine.listen_error(self.errors.append)

    def _on_result(self, result: bk.TickResult) -> None:
        self.results.append(result)
        self.ticked.set()

    def of(self, action: str) -> list[Any]:
        return [r for r in self.results if r.action == action]

    def start(self, *, standby: bool = False) -> bk.CancelHandle:
        return self.engine.live.background(self.symbol, strategy_name="s", exchange_name="mem", standby=standby)

    async def wait_for(self, condition: Callable[[], bool], what: str) -> None:
        """Wait (on this engine's results, never on a timer) until `condition` holds."""
        async with asyncio.timeout(60):  # a hang guard only, far above any expected wait
            while not condition():
                self.ticked.clear()
                if condition():
                    return
                await self.ticked.wait()


@pytest.fixture(params=REMOTE)
async def kind(request: pytest.FixtureRequest) -> AsyncIterator[str]:
    yield str(request.param)


async def test_second_engine_on_a_running_pair_fails_and_trades_nothing(kind: str, tmp_path: Path) -> None:
    backend = make(kind, owner="engine-a")
    calls: list[str] = []
    a = Node(tmp_path, backend, lambda s, w: long(110, 90, 600, id="a-1"))
    b = Node(tmp_path, sibling(backend, "engine-b"), lambda s, w: calls.append(s))
    try:
        a.start()
        await a.wait_for(lambda: bool(a.of("opened")), "a opened")
        with pytest.raises(bk.LeaseHeldError, match="owned by 'engine-a'") as caught:
            async for _ in b.engine.live.run(SYMBOL, strategy_name="s", exchange_name="mem"):
                pass
        assert "standby=True" in str(caught.value)
        assert calls == [] and b.results == []
        assert decode_signal_row(await backend.read("signals", PAIR), scheduled=False).id == "a-1"
    finally:
        await a.engine.close(timeout=0)
        await b.engine.close()
        await b.backend.aclose()
        await drop_backend(backend)


async def test_standby_takes_over_and_restores_the_open_position_once(kind: str, tmp_path: Path) -> None:
    backend = make(kind, owner="engine-a", lease_ttl=0.4)
    a = Node(tmp_path, backend, lambda s, w: long(110, 90, 600, id="a-1"))
    b = Node(tmp_path, sibling(backend, "engine-b", lease_ttl=0.4),
             lambda s, w: long(110, 90, 600, id="b-must-not-open"), start=T0 + 10 * M)
    try:
        a.start()
        await a.wait_for(lambda: bool(a.of("opened")), "a opened")
        standby = b.start(standby=True)
        # wait until b is really waiting, then end a's run without a graceful stop (its position stays)
        await a.wait_for(lambda: len(a.results) >= 3, "a ticked on")
        assert b.results == [] and not standby.task.done()
        await a.engine.close(timeout=0)  # cancelled: the lease is given back, the position stays stored
        await b.wait_for(lambda: len(b.results) >= 2, "b took over")
        assert b.of("opened") == []  # restored and monitored, never re-opened (no duplicate order)
        assert [r.action for r in b.results[:2]] == ["active", "active"]
        assert b.results[0].signal == a.of("opened")[0].signal
        slots = await backend.risk_slots("shared")
        assert slots == {}  # no risk profile here
        assert b.errors == [] and a.errors == []
    finally:
        await a.engine.close(timeout=0)
        await b.engine.close(timeout=0)
        await b.backend.aclose()
        await drop_backend(backend)


async def test_old_owner_is_refused_and_stops_and_a_restart_loads_the_new_state(kind: str, tmp_path: Path) -> None:
    backend = make(kind, owner="engine-a")  # the default TTL: the old owner never notices by renewing
    go = asyncio.Event()
    paused = asyncio.Event()

    async def paused_owner(symbol: str, when: datetime) -> Any:
        paused.set()
        await go.wait()  # the old owner hangs here (a GC pause, a frozen VM) while its lease runs out
        return long(110, 90, 600, id="a-stale")

    a = Node(tmp_path, backend, paused_owner)
    b = Node(tmp_path, sibling(backend, "engine-b"), lambda s, w: long(110, 90, 600, id="b-new"),
             start=T0 + 10 * M)
    try:
        handle_a = a.start()
        await paused.wait()
        b.start(standby=True)
        await expire_lease(backend, PAIR)  # a is "paused": its lease ran out without it noticing
        await b.wait_for(lambda: bool(b.of("opened")), "b took over and opened")
        go.set()  # the old owner wakes up and tries to open a position
        await asyncio.wait_for(handle_a.wait(), 60)
        lost = [e for e in a.errors if isinstance(e, bk.LeaseLostError)]
        assert lost and "fencing token 1" in str(lost[0]) and "fencing token 2" in str(lost[0])
        assert a.of("opened") == []  # refused before anything was announced
        info = await a.engine.live.list()
        assert info[0].status == "done" and "LeaseLostError" in (info[0].error or "")
        stored = decode_signal_row(await backend.read("signals", PAIR), scheduled=False)
        assert stored.id == "b-new"

        await b.engine.close(timeout=0)  # b goes away with its position open
        c = Node(tmp_path, sibling(backend, "engine-c"), lambda s, w: long(110, 90, 600, id="c-must-not-open"),
                 start=T0 + 20 * M)
        c.start()
        await c.wait_for(lambda: bool(c.results), "c restored")
        assert c.results[0].action == "active" and c.results[0].signal.id == "b-new"  # the newest state
        await c.engine.close(timeout=0)
        await c.backend.aclose()
    finally:
        await a.engine.close(timeout=0)
        await b.engine.close(timeout=0)
        await b.backend.aclose()
        await drop_backend(backend)


async def test_two_engines_share_one_risk_limit(kind: str, tmp_path: Path) -> None:
    backend = make(kind, owner="engine-a")
    a = Node(tmp_path, backend, lambda s, w: long(110, 90, 5000, id=f"a-{int(w.timestamp())}"), risk_limit=1)
    b = Node(tmp_path, sibling(backend, "engine-b"), lambda s, w: long(110, 90, 30, id=f"b-{int(w.timestamp())}"),
             risk_limit=1, symbol="ETHUSDT")
    rejected: list[bk.RiskEvent] = []
    b.engine.listen_risk(rejected.append)
    try:
        a.start()
        await a.wait_for(lambda: bool(a.of("opened")), "a opened")
        b.start()
        await b.wait_for(lambda: len(rejected) >= 3, "b refused")
        assert b.of("opened") == []
        assert rejected[0].comment == "max_concurrent_positions=1 reached" and rejected[0].active_position_count == 1
        slots = await backend.risk_slots("shared")
        assert [msgspec.json.decode(v)["signal"]["id"] for v in slots.values()] == [a.of("opened")[0].signal.id]
        positions = await b.engine.risk.get_positions("shared")
        assert [p.symbol for p in positions] == [SYMBOL]  # b sees a's position through the store
    finally:
        await a.engine.close(timeout=0)
        await b.engine.close(timeout=0)
        await b.backend.aclose()
        await drop_backend(backend)


async def test_a_stop_ends_a_waiting_standby_without_trading(kind: str, tmp_path: Path) -> None:
    backend = make(kind, owner="engine-a")
    calls: list[str] = []
    a = Node(tmp_path, backend, lambda s, w: long(110, 90, 600, id="a-1"))
    b = Node(tmp_path, sibling(backend, "engine-b"), lambda s, w: calls.append(s))
    try:
        a.start()
        await a.wait_for(lambda: bool(a.of("opened")), "a opened")
        standby = b.start(standby=True)
        await a.wait_for(lambda: len(a.results) >= 3, "a ticked on while b waits")
        assert not standby.task.done()
        standby()  # a graceful stop: the wait ends, nothing was read or traded
        await asyncio.wait_for(standby.wait(), 60)
        assert calls == [] and b.results == [] and b.errors == []
        info = await b.engine.live.list()
        assert info[0].status == "done" and info[0].error is None
        c = sibling(backend, "engine-c")
        assert (await c.acquire_lease(PAIR)).owner == "engine-a"  # a still owns it
        await c.aclose()
    finally:
        await a.engine.close(timeout=0)
        await b.engine.close()
        await b.backend.aclose()
        await drop_backend(backend)


@pytest.mark.parametrize("make", [make_redis, make_postgres])
async def test_a_timed_backend_still_leases_fences_and_shares_risk(make: Any) -> None:
    """With the dashboard's persistence timing on (`observe_persist`), the engine must still see the
    lease backend itself: a timing wrapper is not a LeaseBackend, and a pair run without its lease
    would trade unfenced."""
    backend = make()
    try:
        engine = make_engine()
        engine.use_persist(backend)
        timings: list[tuple[str, str, float]] = []
        engine.observe_persist(lambda op, entity, seconds: timings.append((op, entity, seconds)))
        assert engine.persist_for("signals") is not backend  # the timing wrapper
        lease = engine._new_lease("BTCUSDT", "s")
        assert lease is not None and lease.backend is backend
        store = engine._signal_store("BTCUSDT", "s", "x", lease)
        assert store is not None
    finally:
        await drop_backend(backend)

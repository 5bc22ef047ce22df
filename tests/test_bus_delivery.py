"""Bus hardening: unsubscribe takes effect mid-delivery, O(1) subscribe/unsubscribe, per-delivery
listener timeouts, and slow listeners on a VirtualClock.

No test sleeps. Live runs use a VirtualClock (tests/test_live.py's harness); the wall-clock timeout
is exercised by listeners blocked on real I/O (a socket that never answers) or on a loop timer, and
each test waits for an event, not for time to pass.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import random
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from helpers import T0, M, dt, flat_candles, long, make_engine, once, setup
from hypothesis import given, settings
from hypothesis import strategies as st
from test_bus import Hub, RecordingLogger
from test_live import SYMBOL, TTL, World, driving, make_world

import backtest_kit as bk
from backtest_kit.engine.bus import EventBus, enter_run, leave_run

HANG_GUARD = 20  # seconds of wall time before a test that deadlocks fails instead of hanging


def make_hub() -> tuple[Hub, RecordingLogger]:
    log = RecordingLogger()
    return Hub(log), log


@contextmanager
def run_mode(backtest: bool) -> Iterator[None]:
    """Publish as the runners do for a run of that mode."""
    token = enter_run(backtest)
    try:
        yield
    finally:
        leave_run(token)


def config_bus(**keys: Any) -> tuple[EventBus, list[BaseException], RecordingLogger]:
    """A bus reading its timeouts from a real config, with an error recorder."""
    engine = bk.Engine(config=keys)
    log = RecordingLogger()
    engine.set_logger(log)
    errors: list[BaseException] = []
    engine.bus.subscribe("error", errors.append)
    return engine.bus, errors, log


# ============================================================================ item 10: unsubscribe
@pytest.mark.parametrize("first_async", [False, True])
@pytest.mark.parametrize("second_async", [False, True])
async def test_listener_unsubscribed_by_an_earlier_listener_misses_that_event(
    first_async: bool, second_async: bool
) -> None:
    hub, _ = make_hub()
    got: list[tuple[str, int]] = []
    offs: dict[str, Callable[[], None]] = {}

    def make(name: str, is_async: bool, action: Callable[[int], None]) -> Callable[[int], Any]:
        if is_async:
            async def acb(event: int) -> None:
                await asyncio.sleep(0)
                got.append((name, event))
                action(event)
            return acb

        def scb(event: int) -> None:
            got.append((name, event))
            action(event)
        return scb

    def drop_second(event: int) -> None:
        if event == 2:
            offs["second"]()

    offs["first"] = hub.listen_signal(make("first", first_async, drop_second))
    offs["second"] = hub.listen_signal(make("second", second_async, lambda e: None))
    hub.listen_signal(make("third", False, lambda e: None))
    for event in (1, 2, 3):
        await hub.bus.emit("signal", event)
    assert [e for n, e in got if n == "first"] == [1, 2, 3]
    assert [e for n, e in got if n == "second"] == [1]  # not 2: removed before its turn came
    assert [e for n, e in got if n == "third"] == [1, 2, 3]
    assert hub.bus.listener_count("signal") == 2


@pytest.mark.parametrize("via_lambda", [False, True])
async def test_listener_unsubscribed_while_waiting_for_its_turn_misses_the_event(via_lambda: bool) -> None:
    hub, _ = make_hub()
    gate = asyncio.Event()
    queued = asyncio.Event()
    got: list[int] = []

    def before(event: int) -> None:
        if event == 2:
            queued.set()  # the second publisher is about to wait for `slow`'s turn

    async def slow(event: int) -> None:
        got.append(event)
        if event == 1:
            await gate.wait()

    after: list[int] = []
    hub.listen_signal(before)
    off = hub.listen_signal((lambda e: slow(e)) if via_lambda else slow)
    hub.listen_signal(after.append)
    first = asyncio.create_task(hub.bus.emit("signal", 1))
    second = asyncio.create_task(hub.bus.emit("signal", 2))
    await queued.wait()
    off()
    gate.set()
    await asyncio.wait_for(asyncio.gather(first, second), HANG_GUARD)
    assert got == [1]
    assert sorted(after) == [1, 2]  # the delivery went on to the next listener


@pytest.mark.parametrize("is_async", [False, True])
async def test_listener_unsubscribing_itself_mid_delivery_keeps_the_current_call(is_async: bool) -> None:
    """The current call runs to its end; only later events are affected."""
    hub, _ = make_hub()
    got: list[tuple[int, str]] = []
    holder: dict[str, Callable[[], None]] = {}

    async def acb(event: int) -> None:
        got.append((event, "start"))
        holder["off"]()
        await asyncio.sleep(0)
        got.append((event, "end"))

    def scb(event: int) -> None:
        got.append((event, "start"))
        holder["off"]()
        got.append((event, "end"))

    holder["off"] = hub.listen_signal(acb if is_async else scb)
    await hub.bus.emit("signal", 1)
    await hub.bus.emit("signal", 2)
    assert got == [(1, "start"), (1, "end")]


K = 5  # listeners in the property test


@settings(max_examples=200, deadline=None)
@given(
    asyncness=st.lists(st.booleans(), min_size=K, max_size=K),
    plans=st.lists(  # per event: which listener removes which others when it receives it
        st.dictionaries(st.integers(0, K - 1), st.sets(st.integers(0, K - 1), max_size=K), max_size=K),
        min_size=1, max_size=6,
    ),
)
def test_property_a_listener_gets_an_event_iff_subscribed_when_its_turn_comes(
    asyncness: list[bool], plans: list[dict[int, set[int]]]
) -> None:
    """Model: listeners run in subscription order; each removes others as planned; a listener gets the
    event exactly when it is still subscribed at the moment its turn comes."""

    async def scenario() -> None:
        hub, _ = make_hub()
        received: list[list[int]] = [[] for _ in range(K)]
        offs: list[Callable[[], None]] = []
        current: list[int] = [0]

        def react(j: int, event: int) -> None:
            received[j].append(event)
            for victim in plans[event].get(j, ()):
                offs[victim]()

        def make(j: int) -> Callable[[int], Any]:
            if asyncness[j]:
                async def acb(event: int) -> None:
                    await asyncio.sleep(0)
                    react(j, event)
                return acb
            return lambda event: react(j, event)

        offs.extend(hub.listen_signal(make(j)) for j in range(K))
        expected: list[list[int]] = [[] for _ in range(K)]
        alive = set(range(K))
        for event in range(len(plans)):
            current[0] = event
            for j in range(K):
                if j in alive:
                    expected[j].append(event)
                    alive -= plans[event].get(j, set())
            await hub.bus.emit("signal", event)
        assert received == expected
        assert hub.bus.listener_count("signal") == len(alive)

    asyncio.run(scenario())


def _churn_cpu_seconds(n: int) -> float:
    """CPU time to subscribe `n` listeners one by one, then unsubscribe them one by one in a shuffled order."""
    bus = EventBus()
    callbacks = [(lambda e: None) for _ in range(n)]
    order = list(range(n))
    random.Random(n).shuffle(order)
    gc.disable()
    try:
        start = time.process_time()
        offs = [bus.subscribe("signal", cb) for cb in callbacks]
        for i in order:
            offs[i]()
        elapsed = time.process_time() - start
    finally:
        gc.enable()
    assert bus.listener_count("signal") == 0
    return elapsed


def test_subscribe_and_unsubscribe_cost_grows_linearly() -> None:
    """8x the listeners must cost about 8x the time (a per-change snapshot rebuild costs 64x).

    CPU time (not wall time) of the best of three runs, with a 3x margin over linear.
    """
    small, large = 2_000, 16_000
    t_small = min(_churn_cpu_seconds(small) for _ in range(3))
    t_large = min(_churn_cpu_seconds(large) for _ in range(3))
    ratio = t_large / max(t_small, 1e-6)
    assert ratio < 3 * large / small, f"{small}: {t_small:.4f}s, {large}: {t_large:.4f}s, ratio {ratio:.1f}"


async def test_publish_after_churn_sees_exactly_the_survivors_in_order() -> None:
    hub, _ = make_hub()
    got: list[int] = []
    offs = [hub.listen_signal(lambda e, i=i: got.append(i)) for i in range(1000)]
    for i in range(0, 1000, 3):
        offs[i]()
    offs[1]()
    offs[1]()  # idempotent
    await hub.bus.emit("signal", None)
    survivors = [i for i in range(1000) if i % 3 != 0 and i != 1]
    assert got == survivors
    assert hub.bus.listener_count("signal") == len(survivors) and hub.bus.has_listeners("signal")


# ============================================================================ item 9: timeouts (bus level)
class Gate:
    """A listener blocked until released (or forever), counting its calls and overlaps."""

    def __init__(self) -> None:
        self.calls: list[Any] = []
        self.cancelled: list[Any] = []
        self.release = asyncio.Event()
        self.running = 0
        self.overlaps = 0

    async def __call__(self, event: Any) -> None:
        self.running += 1
        self.overlaps += self.running > 1
        self.calls.append(event)
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled.append(event)
            raise
        finally:
            self.running -= 1


async def test_live_delivery_timeout_cancels_the_call_reports_it_and_goes_on() -> None:
    bus, errors, log = config_bus(CC_LISTENER_TIMEOUT_SECONDS=0.05)
    hung = Gate()
    after: list[int] = []
    bus.subscribe("signal", hung)
    bus.subscribe("signal", after.append)
    with run_mode(backtest=False):
        await asyncio.wait_for(bus.emit("signal", 1), HANG_GUARD)
    assert hung.calls == [1] and hung.cancelled == [1]  # cancelled: its call has ended
    assert after == [1]
    [error] = errors
    assert isinstance(error, bk.ListenerTimeoutError) and isinstance(error, TimeoutError)
    assert error.channel == "signal" and error.timeout == 0.05
    assert error.listener == "Gate instance"
    message = str(error)
    assert "'signal'" in message and "CC_LISTENER_TIMEOUT_SECONDS=0.05" in message
    assert log.mentions("timed out") == 1
    # still subscribed: the next event reaches it again
    hung.release.set()
    with run_mode(backtest=False):
        await bus.emit("signal", 2)
    assert hung.calls == [1, 2] and after == [1, 2] and len(errors) == 1


async def test_timeout_names_a_function_listener_by_its_qualified_name() -> None:
    bus, errors, _ = config_bus(CC_LISTENER_TIMEOUT_SECONDS=0.01)

    async def stuck_forever(event: Any) -> None:
        await asyncio.Event().wait()

    bus.subscribe("validation", stuck_forever)
    with run_mode(backtest=False):
        await asyncio.wait_for(bus.emit("validation", ValueError("e")), HANG_GUARD)
    [error] = errors
    assert isinstance(error, bk.ListenerTimeoutError)
    assert "stuck_forever" in error.listener and "stuck_forever" in str(error) and "'validation'" in str(error)


async def test_timed_out_listener_hands_its_turn_to_the_next_delivery_in_order() -> None:
    """Concurrent publishers queue for the hung listener; each call is bounded, none overlap."""
    bus, errors, _ = config_bus(CC_LISTENER_TIMEOUT_SECONDS=0.02)
    hung = Gate()
    bus.subscribe("signal", hung)
    with run_mode(backtest=False):
        await asyncio.wait_for(asyncio.gather(*(bus.emit("signal", i) for i in range(4))), HANG_GUARD)
    assert hung.calls == [0, 1, 2, 3] and hung.cancelled == [0, 1, 2, 3]
    assert hung.overlaps == 0
    assert [e.channel for e in errors] == ["signal"] * 4


async def test_a_hanging_filter_is_bounded_too() -> None:
    bus, errors, _ = config_bus(CC_LISTENER_TIMEOUT_SECONDS=0.01)
    got: list[int] = []

    async def never(event: int) -> bool:
        await asyncio.Event().wait()
        return True

    bus.subscribe("signal", got.append, filter=never, once=True)
    with run_mode(backtest=False):
        await asyncio.wait_for(bus.emit("signal", 1), HANG_GUARD)
    assert got == []
    assert [type(e) for e in errors] == [bk.ListenerTimeoutError]


async def test_a_listeners_own_timeout_error_is_reported_as_itself() -> None:
    bus, errors, _ = config_bus(CC_LISTENER_TIMEOUT_SECONDS=30)

    async def calls_a_slow_api(event: Any) -> None:
        async with asyncio.timeout(0):
            await asyncio.Event().wait()

    bus.subscribe("signal", calls_a_slow_api)
    with run_mode(backtest=False):
        await bus.emit("signal", 1)
    [error] = errors
    assert type(error) is TimeoutError  # not mistaken for the bus's own deadline


def _slow_listener(delay: float, got: list[Any]) -> Callable[[Any], Any]:
    """A listener whose call completes when a loop timer of `delay` seconds fires (timers fire in
    deadline order, so a shorter bus deadline always expires first)."""

    async def slow(event: Any) -> None:
        done = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().call_later(delay, done.set_result, None)
        await done
        got.append(event)

    return slow


@pytest.mark.parametrize("where", ["outside a run", "backtest"])
async def test_no_timeout_outside_live_runs_by_default(where: str) -> None:
    """Off in backtests by default, and outside any run (nothing there can freeze a pair)."""
    bus, errors, _ = config_bus(CC_LISTENER_TIMEOUT_SECONDS=0.001)
    got: list[int] = []
    bus.subscribe("signal", _slow_listener(0.02, got))
    if where == "backtest":
        with run_mode(backtest=True):
            await bus.emit("signal", 1)
    else:
        await bus.emit("signal", 1)
    assert got == [1] and errors == []


async def test_backtest_timeout_is_configurable_and_named_in_the_error() -> None:
    bus, errors, _ = config_bus(CC_BACKTEST_LISTENER_TIMEOUT_SECONDS=0.001)
    got: list[int] = []
    bus.subscribe("signal", _slow_listener(0.02, got))
    with run_mode(backtest=True):
        await bus.emit("signal", 1)
    assert got == []
    [error] = errors
    assert isinstance(error, bk.ListenerTimeoutError)
    assert "CC_BACKTEST_LISTENER_TIMEOUT_SECONDS=0.001" in str(error)


async def test_live_timeout_zero_turns_it_off() -> None:
    bus, errors, _ = config_bus(CC_LISTENER_TIMEOUT_SECONDS=0)
    got: list[int] = []
    bus.subscribe("signal", _slow_listener(0.02, got))
    with run_mode(backtest=False):
        await bus.emit("signal", 1)
    assert got == [1] and errors == []


async def test_hung_error_listener_is_only_logged() -> None:
    bus, errors, log = config_bus(CC_LISTENER_TIMEOUT_SECONDS=0.01)
    hung = Gate()
    bus.subscribe("error", hung)
    with run_mode(backtest=False):
        await asyncio.wait_for(bus.emit("error", ValueError("x")), HANG_GUARD)
    assert hung.cancelled and len(errors) == 1  # the original error only; no loop
    assert log.mentions("timed out") == 1


# ============================================================================ item 9: VirtualClock
async def test_wait_on_counts_as_waiting_so_time_reaches_the_sleeper() -> None:
    """Two attached tasks: one sleeps on the clock, the other waits for it. Time must jump."""
    clock = bk.VirtualClock(dt(T0))
    handed = asyncio.get_running_loop().create_future()
    seen: list[int] = []

    async def sleeper() -> None:
        with clock.attach():
            await clock.sleep(7)
            handed.set_result(clock.now_ms())

    async def waiter() -> None:
        with clock.attach():
            seen.append(await clock.wait_on(handed))
            seen.append(clock.now_ms())

    await asyncio.wait_for(asyncio.gather(sleeper(), waiter()), HANG_GUARD)
    assert seen == [T0 + 7000, T0 + 7000]


SLOW_S = 2  # the slow listener's delivery, in seconds of engine time


@asynccontextmanager
async def pairs_running(w: World, symbols: list[str]) -> AsyncIterator[list[bk.CancelHandle]]:
    """Start one live run per symbol and drive the clock; on the way out, stop them and wait for their
    end. A deadlock fails the test after HANG_GUARD seconds of wall time instead of hanging it."""
    handles = [w.start(s) for s in symbols]
    with driving(w.clock):
        try:
            async with asyncio.timeout(HANG_GUARD):
                yield handles
        finally:
            for h in handles:
                h()
            try:
                async with asyncio.timeout(HANG_GUARD):
                    await w.finish(*handles)
            except TimeoutError:
                for h in handles:
                    h.task.cancel()
                await asyncio.gather(*(h.task for h in handles), return_exceptions=True)
                raise AssertionError("the live runs never ended (deadlock)") from None


def tick_delays(w: World, delivered: list[tuple[str, int]], symbol: str) -> list[int]:
    """For each tick of `symbol`: ms between the tick (its get_signal call) and its event's delivery."""
    ticks = [t for s, t in w.calls if s == symbol]
    seen = [t for s, t in delivered if s == symbol]
    return [d - t for t, d in zip(ticks, seen, strict=False)]


async def test_a_two_second_listener_stalls_other_pairs_by_at_most_its_own_delivery(tmp_path: Path) -> None:
    """Live on a VirtualClock: a listener taking 2 s (of engine time) on pair A's events. Pairs B and C
    wait for it, since deliveries to one listener never overlap, but no longer than that one
    delivery; before the fix, waiting for the listener held virtual time still, so the 2 s never
    passed and every pair froze."""
    symbols = ["AAAUSDT", "BBBUSDT", "CCCUSDT"]
    w = make_world(tmp_path, symbols=symbols)
    delivered: list[tuple[str, int]] = []

    async def slow_on_a(result: bk.TickResult) -> None:
        if result.symbol == "AAAUSDT":
            await w.clock.sleep(SLOW_S)
        delivered.append((result.symbol, w.clock.now_ms()))

    w.engine.listen_signal_live(slow_on_a)
    async with pairs_running(w, symbols):
        await w.until(lambda: all(sum(1 for s, _ in delivered if s == x) >= 5 for x in symbols))
    for symbol in symbols:
        delays = tick_delays(w, delivered, symbol)
        assert len(delays) >= 5
        assert all(0 <= d <= SLOW_S * 1000 for d in delays), (symbol, delays)
        ticks = [t for s, t in w.calls if s == symbol]
        assert all(TTL <= b - a <= TTL + SLOW_S * 1000 for a, b in pairwise(ticks))
    assert w.errors == []


async def test_hung_live_listener_is_cut_off_on_the_engine_clock_and_pairs_go_on(tmp_path: Path) -> None:
    """A listener that sleeps "forever" on the VirtualClock is cut after CC_LISTENER_TIMEOUT_SECONDS
    of engine time (as it would be in production); every pair keeps ticking, stalled at most by
    that timeout, and the done listener of a stopped run is bounded too."""
    symbols = ["AAAUSDT", "BBBUSDT"]
    timeout_s = 5
    w = make_world(tmp_path, symbols=symbols, CC_LISTENER_TIMEOUT_SECONDS=timeout_s)
    delivered: list[tuple[str, int]] = []
    cut: list[int] = []

    async def hangs_on_a(result: bk.TickResult) -> None:
        if result.symbol == "AAAUSDT":
            try:
                await w.clock.sleep(10**9)
            except asyncio.CancelledError:
                cut.append(w.clock.now_ms())
                raise
        delivered.append((result.symbol, w.clock.now_ms()))

    async def hangs_on_done(event: bk.DoneEvent) -> None:
        await w.clock.sleep(10**9)

    w.engine.listen_signal_live(hangs_on_a)
    w.engine.listen_done_live(hangs_on_done)
    async with pairs_running(w, symbols):
        await w.until(lambda: sum(1 for s, _ in delivered if s == "BBBUSDT") >= 4)
    a_ticks = [t for s, t in w.calls if s == "AAAUSDT"]
    assert len(cut) >= 3 and all(c - t == timeout_s * 1000 for c, t in zip(cut, a_ticks, strict=False))
    assert all(0 <= d <= timeout_s * 1000 for d in tick_delays(w, delivered, "BBBUSDT"))
    timeouts = [e for e in w.errors if isinstance(e, bk.ListenerTimeoutError)]
    assert len(timeouts) == len(w.errors)  # nothing else went wrong
    assert {e.channel for e in timeouts} == {"signal_live", "done_live"}
    assert all("hangs_on" in e.listener for e in timeouts)
    assert sum(1 for e in timeouts if e.channel == "done_live") == len(symbols)
    assert len(w.done) == len(symbols)  # the other done listener still got both


@pytest.fixture
def silent_server() -> Iterator[tuple[str, int]]:
    """A TCP server on 127.0.0.1 that never accepts nor sends: connections complete in its backlog."""
    server = socket.create_server(("127.0.0.1", 0))
    try:
        host, port = server.getsockname()[:2]
        yield host, port
    finally:
        server.close()


async def test_listener_hung_on_real_io_is_cut_off_by_the_wall_clock_timer(
    tmp_path: Path, silent_server: tuple[str, int]
) -> None:
    """Blocked on a socket, the listener holds virtual time still, so only the wall-clock timer can
    end it; the run then goes on."""
    host, port = silent_server
    w = make_world(tmp_path, CC_LISTENER_TIMEOUT_SECONDS=0.2)
    delivered: list[int] = []
    stuck: list[bool] = []

    async def waits_for_a_reply(result: bk.TickResult) -> None:
        if not stuck:
            stuck.append(True)
            reader, writer = await asyncio.open_connection(host, port)
            try:
                await reader.read(1)  # the server never answers
            finally:
                writer.close()
        delivered.append(w.clock.now_ms())

    w.engine.listen_signal_live(waits_for_a_reply)
    async with pairs_running(w, [SYMBOL]):
        await w.until(lambda: len(delivered) >= 3)
    [error] = w.errors
    assert isinstance(error, bk.ListenerTimeoutError) and "waits_for_a_reply" in error.listener
    ticks = [t for s, t in w.calls]
    assert delivered[:3] == ticks[1:4]  # the cut-off took no engine time; later ticks unaffected


async def test_backtest_keeps_slow_listeners_by_default(tmp_path: Path) -> None:
    """Backtests have no timeout by default, whatever the live one says; the run is a real one."""
    engine = make_engine(tmp_path, CC_LISTENER_TIMEOUT_SECONDS=0.001)
    h = setup(engine, flat_candles(T0 - 60 * M, 4 * 60, 100.0), once(long(110, 90, 5)), minutes=30)
    got: list[bk.TickResult] = []
    engine.listen_signal_backtest(_slow_listener(0.01, got))
    results = await h.run()
    assert results and h.errors == []
    assert got == h.events  # every event reached the slow listener, in order


@pytest.mark.parametrize("how", ["run", "background"])
async def test_backtest_timeout_applies_to_foreground_and_background_runs(tmp_path: Path, how: str) -> None:
    engine = make_engine(tmp_path, CC_BACKTEST_LISTENER_TIMEOUT_SECONDS=0.001, CC_LISTENER_TIMEOUT_SECONDS=0)
    h = setup(engine, flat_candles(T0 - 60 * M, 4 * 60, 100.0), once(long(110, 90, 5)), minutes=10)
    hung = Gate()
    engine.listen_signal_backtest(hung)
    if how == "run":
        await asyncio.wait_for(h.run(), HANG_GUARD)
    else:
        handle = engine.backtest.background(h.symbol, strategy_name=h.strategy, exchange_name=h.exchange,
                                            frame_name=h.frame)
        await asyncio.wait_for(handle.wait(), HANG_GUARD)
    assert hung.calls == h.events and hung.cancelled == h.events  # each call cut, none skipped
    assert len(h.errors) == len(h.events)
    assert all(isinstance(e, bk.ListenerTimeoutError) and "CC_BACKTEST_LISTENER_TIMEOUT_SECONDS" in str(e)
               for e in h.errors)


@settings(max_examples=150, deadline=None)
@given(
    publishers=st.lists(  # per publisher: events to emit, and after how many loop steps to cancel it (or never)
        st.tuples(st.integers(1, 4), st.one_of(st.none(), st.integers(0, 12))), min_size=1, max_size=5
    ),
    work=st.lists(st.integers(0, 3), min_size=2, max_size=2),
    unsubscribe_at=st.one_of(st.none(), st.integers(0, 12)),
)
def test_property_turns_survive_cancelled_publishers_and_unsubscribes(
    publishers: list[tuple[int, int | None]], work: list[int], unsubscribe_at: int | None
) -> None:
    """Publishers race for two async listeners; some are cancelled mid-delivery (while waiting for a
    turn or inside a call), one listener may be unsubscribed mid-way. Calls never overlap, every
    surviving publisher finishes (no turn is lost), each listener sees each publisher's events in
    order, and both turns end free."""

    async def scenario() -> None:
        hub, _ = make_hub()
        running = [0, 0]
        overlaps = [0, 0]
        seen: list[list[tuple[int, int]]] = [[], []]
        subs: list[Any] = []

        def make(j: int) -> Callable[[tuple[int, int]], Any]:
            async def listener(event: tuple[int, int]) -> None:
                running[j] += 1
                overlaps[j] += running[j] > 1
                try:
                    for _ in range(work[j]):
                        await asyncio.sleep(0)
                    seen[j].append(event)
                finally:
                    running[j] -= 1
            return listener

        offs = [hub.listen_signal(make(j)) for j in range(2)]
        subs.extend(hub.bus._subs["signal"])

        async def publish(p: int, n: int) -> None:
            for i in range(n):
                await hub.bus.emit("signal", (p, i))

        tasks = [asyncio.create_task(publish(p, n)) for p, (n, _) in enumerate(publishers)]
        for step in range(14):
            for (_, cancel_at), task in zip(publishers, tasks, strict=True):
                if cancel_at == step:
                    task.cancel()
            if unsubscribe_at == step:
                offs[1]()
            await asyncio.sleep(0)
        results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), HANG_GUARD)
        assert overlaps == [0, 0]
        for p, ((n, _), result) in enumerate(zip(publishers, results, strict=True)):
            if not isinstance(result, asyncio.CancelledError):
                assert [i for q, i in seen[0] if q == p] == list(range(n))  # nothing lost
            for j in range(2):
                mine = [i for q, i in seen[j] if q == p]
                assert mine == sorted(set(mine))  # in order, never twice
        for sub in subs:
            assert not sub.busy and not any(not w.done() for w in sub.waiters or ())

    asyncio.run(scenario())


async def test_engine_clock_deadline_on_a_clock_without_timer() -> None:
    """A user's clock with only now/sleep (here 1000x real time): a watchdog task sleeps on it, so a
    listener sleeping an hour of engine time is cut after 10 s of engine time (10 ms), not 10 s of wall time."""

    class ScaledClock:
        """A `bk.Clock` that runs `factor` times faster than the wall clock (no `timer` method)."""

        def __init__(self, factor: float) -> None:
            self.factor = factor
            self.origin = datetime.now(UTC)
            self.started = time.monotonic()

        def now(self) -> datetime:
            return self.origin + timedelta(seconds=(time.monotonic() - self.started) * self.factor)

        async def sleep(self, seconds: float) -> None:
            await asyncio.sleep(max(0.0, seconds) / self.factor)

    engine = bk.Engine(clock=ScaledClock(1000), config={"CC_LISTENER_TIMEOUT_SECONDS": 10})
    clock = engine.clock
    errors: list[BaseException] = []
    engine.bus.subscribe("error", errors.append)
    finished: list[bool] = []

    async def naps_an_hour(event: Any) -> None:
        await clock.sleep(3600)
        finished.append(True)

    engine.bus.subscribe("signal", naps_an_hour)
    with run_mode(backtest=False):
        await asyncio.wait_for(engine.bus.emit("signal", 1), HANG_GUARD)
    assert finished == []
    [error] = errors
    assert isinstance(error, bk.ListenerTimeoutError) and error.timeout == 10
    assert asyncio.all_tasks() == {asyncio.current_task()}  # the watchdog is gone


async def test_listener_names_never_use_the_repr() -> None:
    """A callable object's repr may carry a secret; errors and logs name its class instead."""
    bus, errors, log = config_bus(CC_LISTENER_TIMEOUT_SECONDS=0.01)

    class Webhook:
        def __repr__(self) -> str:
            return "<Webhook https://user:s3cret@hooks.example/abc>"

        async def __call__(self, event: Any) -> None:
            await asyncio.Event().wait()

    def broken(event: Any, token: str) -> None:
        raise ValueError("boom")

    bus.subscribe("signal", Webhook())
    bus.subscribe("signal", functools.partial(broken, token="s3cret"))
    with run_mode(backtest=False):
        await asyncio.wait_for(bus.emit("signal", 1), HANG_GUARD)
    assert [type(e) for e in errors] == [bk.ListenerTimeoutError, ValueError]
    assert isinstance(errors[0], bk.ListenerTimeoutError) and errors[0].listener.endswith("Webhook instance")
    assert log.mentions("s3cret") == 0 and not any("s3cret" in str(e) for e in errors)
    assert log.mentions("broken") == 1  # the partial is named by its function


async def test_a_foreground_runs_timeout_does_not_leak_into_its_consumer(tmp_path: Path) -> None:
    """Between two items of `Backtest.run`, the consumer's own deliveries are not the run's."""
    engine = make_engine(tmp_path, CC_BACKTEST_LISTENER_TIMEOUT_SECONDS=0.001)
    h = setup(engine, flat_candles(T0 - 60 * M, 4 * 60, 100.0), once(long(110, 90, 5)), minutes=30)
    slow: list[Any] = []
    engine.bus.subscribe("validation", _slow_listener(0.02, slow))
    items = 0
    async for _ in engine.backtest.run(h.symbol, strategy_name=h.strategy, exchange_name=h.exchange,
                                       frame_name=h.frame):
        items += 1
        await engine.bus.emit("validation", ValueError("from the consumer"))
    assert items >= 1 and len(slow) == items and h.errors == []

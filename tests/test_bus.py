"""The event bus and the `listen_*` API: ordered, awaited, isolated delivery
([public API](../docs/design/public-api.md#delivery-contract),
[events §1](../docs/design/events-and-api.md#1-the-event-bus))."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import backtest_kit as bk
from backtest_kit.engine.bus import CHANNELS, EventBus
from backtest_kit.engine.logger import EngineLogger
from backtest_kit.listeners.subscriptions import ListenMixin

# listen function -> channel it subscribes to
# ([public API](../docs/design/public-api.md#events-and-listeners) plus the port's aliases,
# [events §1.5](../docs/design/events-and-api.md#15-listen-functions))
PLAIN: dict[str, str] = {
    "listen_signal": "signal",
    "listen_signal_live": "signal_live",
    "listen_signal_backtest": "signal_backtest",
    "listen_done_live": "done_live",
    "listen_done_backtest": "done_backtest",
    "listen_error": "error",
    "listen_exit": "exit",
    "listen_progress": "progress",
    "listen_backtest_progress": "progress",
    "listen_performance": "performance",
    "listen_risk": "risk",
    "listen_partial_profit": "partial_profit",
    "listen_partial_loss": "partial_loss",
    "listen_validation": "validation",
}
ONCE: dict[str, str] = {
    "listen_signal_once": "signal",
    "listen_signal_live_once": "signal_live",
    "listen_signal_backtest_once": "signal_backtest",
    "listen_done_live_once": "done_live",
    "listen_done_backtest_once": "done_backtest",
    "listen_risk_once": "risk",
    "listen_partial_profit_once": "partial_profit",
    "listen_partial_loss_once": "partial_loss",
}


class RecordingLogger:
    """The four-method logger shape; records every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, tuple[Any, ...]]] = []

    def log(self, topic: str, *args: Any) -> None:
        self.calls.append(("log", topic, args))

    def debug(self, topic: str, *args: Any) -> None:
        self.calls.append(("debug", topic, args))

    def info(self, topic: str, *args: Any) -> None:
        self.calls.append(("info", topic, args))

    def warn(self, topic: str, *args: Any) -> None:
        self.calls.append(("warn", topic, args))

    def mentions(self, text: str) -> int:
        return sum(1 for _, topic, args in self.calls if text in topic or any(text in str(a) for a in args))


class Hub(ListenMixin):
    """The engine's `listen_*` API over a bare bus: no library stores subscribed, so the tests see
    exactly their own listeners (an Engine's stores would choke on the plain test events)."""

    def __init__(self, logger: RecordingLogger) -> None:
        self.logger = EngineLogger(logger)
        self.bus = EventBus(self.logger)


def make_engine() -> tuple[Hub, RecordingLogger]:
    log = RecordingLogger()
    return Hub(log), log


class Boom(Exception):
    pass


# --------------------------------------------------------------------------- the listen_* surface
@pytest.mark.parametrize("name", sorted(PLAIN))
async def test_plain_listen_functions_exist_and_reach_their_channel(name: str) -> None:
    engine, _ = make_engine()
    got: list[Any] = []
    unsubscribe = getattr(engine, name)(got.append)
    assert callable(unsubscribe)
    await engine.bus.emit(PLAIN[name], "event-1")
    assert got == ["event-1"]
    for other in CHANNELS:
        if other != PLAIN[name]:
            await engine.bus.emit(other, f"other-{other}")
    assert got == ["event-1"], f"{name} received events of another channel"
    unsubscribe()
    await engine.bus.emit(PLAIN[name], "event-2")
    assert got == ["event-1"]


@pytest.mark.parametrize("name", sorted(ONCE))
async def test_once_listen_functions_exist_and_reach_their_channel(name: str) -> None:
    engine, _ = make_engine()
    got: list[Any] = []
    cancel = getattr(engine, name)(lambda e: e >= 2, got.append)
    assert callable(cancel)
    for event in (1, 2, 3):
        await engine.bus.emit(ONCE[name], event)
    assert got == [2]


@pytest.mark.parametrize("name", sorted({*PLAIN, *ONCE}))
def test_module_level_listen_functions_exist(name: str) -> None:
    fn = getattr(bk, name)
    assert callable(fn)
    assert name in bk.__all__
    args: tuple[Any, ...] = ((lambda e: True), (lambda e: None)) if name in ONCE else ((lambda e: None),)
    channel = ONCE.get(name) or PLAIN[name]
    before = bk.default_engine.bus.listener_count(channel)
    unsubscribe = fn(*args)
    assert callable(unsubscribe)
    assert bk.default_engine.bus.listener_count(channel) == before + 1
    unsubscribe()
    assert bk.default_engine.bus.listener_count(channel) == before


@pytest.mark.parametrize("name", sorted({*PLAIN, *ONCE}))
def test_engine_listen_methods_subscribe_to_their_channel_only(name: str) -> None:
    engine = bk.Engine()
    before = {c: engine.bus.listener_count(c) for c in CHANNELS}
    args: tuple[Any, ...] = ((lambda e: True), (lambda e: None)) if name in ONCE else ((lambda e: None),)
    unsubscribe = getattr(engine, name)(*args)
    assert callable(unsubscribe)
    channel = ONCE.get(name) or PLAIN[name]
    after = {c: engine.bus.listener_count(c) for c in CHANNELS}
    assert after == {**before, channel: before[channel] + 1}
    unsubscribe()
    unsubscribe()
    assert {c: engine.bus.listener_count(c) for c in CHANNELS} == before


async def test_engine_delivers_to_listen_callbacks() -> None:
    engine = bk.Engine()
    live: list[Any] = []
    errors: list[BaseException] = []
    exits: list[BaseException] = []
    engine.listen_signal_live(live.append)
    engine.listen_error(errors.append)
    engine.listen_exit(exits.append)
    await engine.bus.emit("signal_live", "tick")
    err = RuntimeError("x")
    await engine.report_error(err)
    assert live == ["tick"]
    assert errors[-1] is err
    assert exits == []


# --------------------------------------------------------------------------- unsubscribe
async def test_unsubscribe_stops_delivery_and_is_idempotent() -> None:
    engine, _ = make_engine()
    a: list[int] = []
    b: list[int] = []
    off_a = engine.listen_signal(a.append)
    engine.listen_signal(b.append)
    await engine.bus.emit("signal", 1)
    off_a()
    off_a()  # twice is harmless and does not remove anything else
    await engine.bus.emit("signal", 2)
    assert a == [1]
    assert b == [1, 2]
    assert engine.bus.listener_count("signal") == 1


@pytest.mark.parametrize("is_async", [False, True])
async def test_unsubscribe_from_inside_the_callback(is_async: bool) -> None:
    engine, _ = make_engine()
    got: list[int] = []
    holder: dict[str, Callable[[], None]] = {}

    def sync_cb(event: int) -> None:
        got.append(event)
        holder["off"]()
        holder["off"]()

    async def async_cb(event: int) -> None:
        got.append(event)
        holder["off"]()
        await asyncio.sleep(0)
        holder["off"]()

    holder["off"] = engine.listen_signal(async_cb if is_async else sync_cb)
    after: list[int] = []
    engine.listen_signal(after.append)
    for event in (1, 2, 3):
        await engine.bus.emit("signal", event)
    assert got == [1]
    assert after == [1, 2, 3]


async def test_subscribe_during_publish_sees_only_later_events() -> None:
    engine, _ = make_engine()
    late: list[int] = []

    def first(event: int) -> None:
        if event == 1:
            engine.listen_signal(late.append)

    engine.listen_signal(first)
    await engine.bus.emit("signal", 1)
    await engine.bus.emit("signal", 2)
    assert late == [2]


# --------------------------------------------------------------------------- sync / async, order
async def test_sync_and_async_callbacks_in_subscription_order() -> None:
    engine, _ = make_engine()
    log: list[tuple[str, int]] = []

    def s1(e: int) -> None:
        log.append(("s1", e))

    async def a1(e: int) -> None:
        await asyncio.sleep(0)
        log.append(("a1", e))

    def s2(e: int) -> None:
        log.append(("s2", e))

    async def a2(e: int) -> None:
        log.append(("a2", e))

    for fn in (s1, a1, s2, a2):
        engine.listen_signal(fn)
    for e in (1, 2):
        await engine.bus.emit("signal", e)
    assert log == [("s1", 1), ("a1", 1), ("s2", 1), ("a2", 1), ("s1", 2), ("a1", 2), ("s2", 2), ("a2", 2)]


async def test_publish_returns_none_for_sync_only_and_awaitable_with_async() -> None:
    engine, _ = make_engine()
    got: list[int] = []
    engine.listen_signal(got.append)
    assert engine.bus.publish("signal", 1) is None
    assert got == [1]

    done = asyncio.Event()

    async def slow(e: int) -> None:
        await asyncio.sleep(0)
        done.set()

    engine.listen_signal(slow)
    pending = engine.bus.publish("signal", 2)
    assert pending is not None
    assert not done.is_set()
    await pending
    assert done.is_set()
    assert got == [1, 2]


async def test_emit_awaits_every_async_listener_before_returning() -> None:
    engine, _ = make_engine()
    finished: list[int] = []

    async def slow(e: int) -> None:
        for _ in range(5):
            await asyncio.sleep(0)
        finished.append(e)

    engine.listen_signal(slow)
    await engine.bus.emit("signal", 7)
    assert finished == [7]


class OverlapCheck:
    """A slow async listener that counts how often it was entered while a call of it was still running."""

    def __init__(self) -> None:
        self.in_call = False
        self.overlaps = 0
        self.seen: list[tuple[str, int]] = []

    async def listener(self, event: tuple[str, int]) -> None:
        if self.in_call:
            self.overlaps += 1
        self.in_call = True
        for _ in range(3):
            await asyncio.sleep(0)
        self.seen.append(event)
        self.in_call = False


async def publish_tagged(engine: Hub, tag: str, count: int) -> None:
    """Emit (tag, 0) .. (tag, count - 1) on "signal", awaiting each emit."""
    for i in range(count):
        await engine.bus.emit("signal", (tag, i))


async def test_async_listener_never_runs_concurrently_with_itself() -> None:
    engine, _ = make_engine()
    check = OverlapCheck()
    engine.listen_signal(check.listener)
    await asyncio.gather(*(publish_tagged(engine, tag, 20) for tag in "abc"))
    seen = check.seen
    assert check.overlaps == 0
    assert len(seen) == 60
    for tag in "abc":
        assert [i for t, i in seen if t == tag] == list(range(20))
    # the publishers really did interleave (otherwise the test proves nothing)
    assert [t for t, _ in seen[:3]] != ["a", "a", "a"]


async def test_plain_function_returning_a_coroutine_is_serialised_too() -> None:
    engine, _ = make_engine()
    check = OverlapCheck()
    engine.listen_signal(lambda e: check.listener(e))  # not a coroutine function, but returns one
    await asyncio.gather(*(publish_tagged(engine, tag, 10) for tag in "ab"))
    assert check.overlaps == 0
    for tag in "ab":
        assert [i for t, i in check.seen if t == tag] == list(range(10))


# --------------------------------------------------------------------------- errors
@pytest.mark.parametrize("is_async", [False, True])
async def test_raising_listener_is_reported_and_isolated(is_async: bool) -> None:
    engine, log = make_engine()
    errors: list[BaseException] = []
    engine.listen_error(errors.append)
    boom = Boom("listener failed")

    def bad_sync(e: int) -> None:
        raise boom

    async def bad_async(e: int) -> None:
        await asyncio.sleep(0)
        raise boom

    before: list[int] = []
    after: list[int] = []
    engine.listen_signal(before.append)
    engine.listen_signal(bad_async if is_async else bad_sync)
    engine.listen_signal(after.append)

    await engine.bus.emit("signal", 1)  # does not raise into the publisher
    await engine.bus.emit("signal", 2)
    assert before == [1, 2]
    assert after == [1, 2]
    assert errors == [boom, boom]
    assert errors[0] is boom
    assert log.mentions("listener failed") == 2


async def test_raising_listener_in_sync_publish_is_still_reported() -> None:
    engine, log = make_engine()
    errors: list[BaseException] = []
    engine.listen_error(errors.append)

    def bad(e: int) -> None:
        raise Boom(f"bad {e}")

    engine.listen_signal(bad)
    pending = engine.bus.publish("signal", 1)
    if pending is not None:
        await pending
    assert [str(e) for e in errors] == ["bad 1"]
    assert log.mentions("bad 1") == 1


async def test_raising_filter_counts_as_no_match_and_is_reported() -> None:
    engine, log = make_engine()
    errors: list[BaseException] = []
    engine.listen_error(errors.append)
    fired: list[int] = []

    def flt(e: int) -> bool:
        if e == 1:
            raise Boom("filter exploded")
        return True

    engine.listen_signal_once(flt, fired.append)
    await engine.bus.emit("signal", 1)
    assert fired == []
    assert [str(e) for e in errors] == ["filter exploded"]
    assert log.mentions("filter exploded") == 1
    await engine.bus.emit("signal", 2)
    assert fired == [2]


async def test_async_filter_is_awaited() -> None:
    engine, _ = make_engine()
    fired: list[int] = []

    async def flt(e: int) -> bool:
        await asyncio.sleep(0)
        return e == 3

    engine.listen_signal_once(flt, fired.append)
    for e in range(1, 6):
        await engine.bus.emit("signal", e)
    assert fired == [3]


@pytest.mark.parametrize("is_async", [False, True])
async def test_error_listener_that_raises_does_not_loop(is_async: bool) -> None:
    engine, log = make_engine()
    calls: list[BaseException] = []

    def bad_sync(e: BaseException) -> None:
        calls.append(e)
        raise Boom("error listener failed")

    async def bad_async(e: BaseException) -> None:
        calls.append(e)
        raise Boom("error listener failed")

    second: list[BaseException] = []
    engine.listen_error(bad_async if is_async else bad_sync)
    engine.listen_error(second.append)

    def bad_signal(e: int) -> None:
        raise Boom("signal listener failed")

    engine.listen_signal(bad_signal)
    await asyncio.wait_for(engine.bus.emit("signal", 1), timeout=5)
    assert [str(e) for e in calls] == ["signal listener failed"]
    assert [str(e) for e in second] == ["signal listener failed"]
    assert log.mentions("error listener failed") == 1
    assert log.mentions("signal listener failed") == 1


async def test_exit_listener_that_raises_is_only_logged() -> None:
    engine, log = make_engine()
    errors: list[BaseException] = []
    engine.listen_error(errors.append)

    def bad(e: BaseException) -> None:
        raise Boom("exit listener failed")

    engine.listen_exit(bad)
    await engine.bus.emit("exit", RuntimeError("run died"))
    assert errors == []
    assert log.mentions("exit listener failed") == 1


async def test_publishing_continues_after_errors() -> None:
    engine, _ = make_engine()
    got: list[int] = []

    def sometimes(e: int) -> None:
        if e % 2:
            raise Boom(str(e))
        got.append(e)

    engine.listen_signal(sometimes)
    errors: list[BaseException] = []
    engine.listen_error(errors.append)
    for e in range(6):
        await engine.bus.emit("signal", e)
    assert got == [0, 2, 4]
    assert [str(e) for e in errors] == ["1", "3", "5"]


# --------------------------------------------------------------------------- once
async def test_once_fires_once_for_first_matching_event() -> None:
    engine, _ = make_engine()
    fired: list[int] = []
    engine.listen_signal_once(lambda e: e % 2 == 0, fired.append)
    for e in range(1, 7):
        await engine.bus.emit("signal", e)
    assert fired == [2]
    assert engine.bus.listener_count("signal") == 0


@pytest.mark.parametrize("is_async", [False, True])
async def test_once_fires_once_even_if_callback_raises(is_async: bool) -> None:
    engine, _ = make_engine()
    fired: list[int] = []
    errors: list[BaseException] = []
    engine.listen_error(errors.append)

    def bad_sync(e: int) -> None:
        fired.append(e)
        raise Boom("once failed")

    async def bad_async(e: int) -> None:
        fired.append(e)
        raise Boom("once failed")

    engine.listen_signal_once(lambda e: True, bad_async if is_async else bad_sync)
    for e in (1, 2, 3):
        await engine.bus.emit("signal", e)
    assert fired == [1]
    assert [str(e) for e in errors] == ["once failed"]


async def test_once_is_awaited_like_a_plain_listener() -> None:
    engine, _ = make_engine()
    finished: list[int] = []

    async def cb(e: int) -> None:
        for _ in range(3):
            await asyncio.sleep(0)
        finished.append(e)

    engine.listen_signal_once(lambda e: True, cb)
    await engine.bus.emit("signal", 1)
    assert finished == [1]


async def test_cancelled_once_never_fires() -> None:
    engine, _ = make_engine()
    fired: list[int] = []
    cancel = engine.listen_signal_once(lambda e: True, fired.append)
    cancel()
    cancel()
    for e in (1, 2):
        await engine.bus.emit("signal", e)
    assert fired == []


async def test_once_cancelled_after_firing_is_harmless() -> None:
    engine, _ = make_engine()
    fired: list[int] = []
    other: list[int] = []
    cancel = engine.listen_signal_once(lambda e: True, fired.append)
    engine.listen_signal(other.append)
    await engine.bus.emit("signal", 1)
    cancel()
    await engine.bus.emit("signal", 2)
    assert fired == [1]
    assert other == [1, 2]


async def test_once_racing_publishers_fire_once() -> None:
    engine, _ = make_engine()
    fired: list[int] = []

    async def flt(e: int) -> bool:
        await asyncio.sleep(0)  # both publishers pass the filter before either fires
        return True

    engine.listen_signal_once(flt, fired.append)
    await asyncio.gather(*(engine.bus.emit("signal", e) for e in range(5)))
    assert len(fired) == 1


# --------------------------------------------------------------------------- channels, drain
async def test_channels_are_independent() -> None:
    engine, _ = make_engine()
    live: list[str] = []
    backtest: list[str] = []
    both: list[str] = []
    engine.listen_signal_live(live.append)
    engine.listen_signal_backtest(backtest.append)
    engine.listen_signal(both.append)
    await engine.bus.emit("signal_live", "L")
    await engine.bus.emit("signal_backtest", "B")
    await engine.bus.emit("signal", "S")
    assert live == ["L"]
    assert backtest == ["B"]
    assert both == ["S"]


async def test_unknown_channel_and_non_callable_are_rejected() -> None:
    engine, _ = make_engine()
    with pytest.raises(ValueError, match="nope"):
        engine.bus.subscribe("nope", print)
    with pytest.raises(bk.SchemaError, match="callback"):
        engine.listen_signal(42)  # type: ignore[arg-type]


async def test_two_engines_do_not_share_listeners() -> None:
    e1 = bk.Engine()
    e2 = bk.Engine()
    got: list[str] = []
    e1.listen_signal_live(got.append)
    await e2.bus.emit("signal_live", "x")
    assert got == []
    await e1.bus.emit("signal_live", "y")
    assert got == ["y"]


async def test_drain_awaits_publish_soon_deliveries() -> None:
    engine, _ = make_engine()
    gate = asyncio.Event()
    finished: list[int] = []

    async def slow(e: int) -> None:
        await gate.wait()
        finished.append(e)

    engine.listen_error(slow)
    engine.bus.publish_soon("error", 1)
    engine.bus.publish_soon("error", 2)
    assert finished == []
    drained = asyncio.ensure_future(engine.bus.drain())
    for _ in range(5):
        await asyncio.sleep(0)
    assert not drained.done()  # still waiting on the gated listener
    gate.set()
    await asyncio.wait_for(drained, timeout=5)
    assert finished == [1, 2]


async def test_drain_with_nothing_pending_returns() -> None:
    engine, _ = make_engine()
    await asyncio.wait_for(engine.bus.drain(), timeout=5)


async def test_publish_soon_with_only_sync_listeners_delivers_immediately() -> None:
    engine, _ = make_engine()
    got: list[int] = []
    engine.listen_error(got.append)
    engine.bus.publish_soon("error", 1)
    assert got == [1]


async def test_raw_pyee_emit_reaches_subscribers_tracked_by_drain() -> None:
    bus = EventBus()
    got: list[int] = []

    async def cb(e: int) -> None:
        got.append(e)

    bus.subscribe("signal", cb)
    bus.emitter.emit("signal", 5)
    await bus.drain()
    assert got == [5]


# --------------------------------------------------------------------------- properties
Op = tuple[str, int, int]  # (kind, listener index or event id, channel index)
CH = ("signal", "risk")
N_LISTENERS = 4


def _ops() -> st.SearchStrategy[list[Op]]:
    op = st.one_of(
        st.tuples(st.just("emit"), st.integers(0, 10**6), st.integers(0, len(CH) - 1)),
        st.tuples(st.just("sub"), st.integers(0, N_LISTENERS - 1), st.integers(0, len(CH) - 1)),
        st.tuples(st.just("unsub"), st.integers(0, N_LISTENERS - 1), st.just(0)),
    )
    return st.lists(op, max_size=40)


@settings(max_examples=150, deadline=None)
@given(ops=_ops(), asyncness=st.lists(st.booleans(), min_size=N_LISTENERS, max_size=N_LISTENERS))
def test_property_each_listener_gets_exactly_what_was_emitted_while_subscribed(
    ops: list[Op], asyncness: list[bool]
) -> None:
    async def scenario() -> None:
        engine, _ = make_engine()
        received: list[list[tuple[int, int]]] = [[] for _ in range(N_LISTENERS)]
        expected: list[list[tuple[int, int]]] = [[] for _ in range(N_LISTENERS)]
        subscribed: dict[int, tuple[int, Callable[[], None]]] = {}  # listener -> (channel, off)

        def make(j: int) -> Callable[[Any], Any]:
            if asyncness[j]:
                async def acb(e: tuple[int, int]) -> None:
                    await asyncio.sleep(0)
                    received[j].append(e)
                return acb

            def scb(e: tuple[int, int]) -> None:
                received[j].append(e)
            return scb

        seq = 0
        for kind, x, ch in ops:
            if kind == "emit":
                seq += 1
                event = (seq, x)
                await engine.bus.emit(CH[ch], event)
                for j, (c, _) in subscribed.items():
                    if c == ch:
                        expected[j].append(event)
            elif kind == "sub":
                if x not in subscribed:
                    subscribed[x] = (ch, engine.bus.subscribe(CH[ch], make(x)))
            else:
                entry = subscribed.pop(x, None)
                if entry is not None:
                    entry[1]()
                    entry[1]()
        assert received == expected

    asyncio.run(scenario())


@settings(max_examples=60, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 15), min_size=2, max_size=5),
    yields=st.lists(st.integers(0, 3), min_size=3, max_size=3),
    sync_middle=st.booleans(),
)
def test_property_concurrent_publishers_keep_per_publisher_order_without_overlap(
    lengths: list[int], yields: list[int], sync_middle: bool
) -> None:
    async def scenario() -> None:
        engine, _ = make_engine()
        seen: list[list[tuple[int, int]]] = [[] for _ in range(3)]
        overlaps = [0, 0, 0]
        busy = [False, False, False]

        def make(j: int) -> Callable[[Any], Any]:
            if j == 1 and sync_middle:
                def scb(e: tuple[int, int]) -> None:
                    seen[j].append(e)
                return scb

            async def acb(e: tuple[int, int]) -> None:
                if busy[j]:
                    overlaps[j] += 1
                busy[j] = True
                for _ in range(yields[j]):
                    await asyncio.sleep(0)
                seen[j].append(e)
                busy[j] = False
            return acb

        for j in range(3):
            engine.listen_signal(make(j))

        async def publisher(p: int, n: int) -> None:
            for i in range(n):
                await engine.bus.emit("signal", (p, i))

        await asyncio.gather(*(publisher(p, n) for p, n in enumerate(lengths)))
        assert overlaps == [0, 0, 0]
        for j in range(3):
            assert sorted(seen[j]) == sorted((p, i) for p, n in enumerate(lengths) for i in range(n))
            for p, n in enumerate(lengths):
                assert [i for q, i in seen[j] if q == p] == list(range(n))

    asyncio.run(scenario())

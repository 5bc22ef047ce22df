"""Typed bus channels (`backtest_kit/engine/channels.py`): every channel the library publishes or
subscribes to is a declared `Channel[E]` constant, never a string; the constants and the plain names
reach the same listeners."""

from __future__ import annotations

import ast
import itertools
import pickle
from pathlib import Path
from typing import Any

import pytest
from helpers import T0, candles_from_path, long, setup

import backtest_kit as bk
from backtest_kit.engine import channels
from backtest_kit.engine.bus import CHANNELS, EventBus
from backtest_kit.engine.channels import ALL_CHANNELS, CHANNEL_BY_NAME, RISK, SIGNAL, Channel
from backtest_kit.testing import make_engine

PACKAGE = Path(bk.__file__).resolve().parent
CHANNELS_FILE = PACKAGE / "engine" / "channels.py"

# bus methods (and the thin wrappers around them) whose first argument is a channel
CHANNEL_CALLS = frozenset({
    "emit", "publish", "publish_soon", "subscribe", "has_listeners", "listener_count", "_listen", "_once", "_emit",
})


def _declared() -> dict[str, Channel[Any]]:
    return {name: value for name, value in vars(channels).items() if isinstance(value, Channel)}


def _string_literals(node: ast.AST) -> list[str]:
    return [n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str)] + [
        ast.unparse(n) for n in ast.walk(node) if isinstance(n, ast.JoinedStr)
    ]


def _library_files() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if p != CHANNELS_FILE)


def test_every_channel_is_declared_once_and_documented() -> None:
    declared = _declared()
    assert tuple(declared.values()) == ALL_CHANNELS
    assert CHANNELS == bk.CHANNELS == tuple(c.name for c in ALL_CHANNELS)
    assert len(set(CHANNELS)) == len(CHANNELS)
    assert {name: c.name.upper() for name, c in declared.items()} == {name: name for name in declared}
    assert all(CHANNEL_BY_NAME[c.name] is c for c in ALL_CHANNELS)
    # each constant is followed by its docstring: who publishes it and the event type it carries
    body = ast.parse(CHANNELS_FILE.read_text()).body
    documented = {}
    for stmt, following in itertools.pairwise(body):
        if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and stmt.target.id in declared:
            assert isinstance(stmt.annotation, ast.Subscript), f"{stmt.target.id}: annotate Final[Channel[E]]"
            doc = following.value.value if isinstance(following, ast.Expr) and isinstance(
                following.value, ast.Constant) else None
            assert isinstance(doc, str) and "publish" in doc, f"{stmt.target.id} has no docstring naming its publisher"
            event_type = ast.unparse(stmt.annotation).removeprefix("Final[Channel[").removesuffix("]]")
            assert f"`{event_type}`" in doc, f"{stmt.target.id}'s docstring does not name {event_type}"
            documented[stmt.target.id] = doc
    assert set(documented) == set(declared)


def test_no_publish_or_subscribe_in_the_library_names_a_channel_by_string() -> None:
    """Grep-by-AST over every module: a channel argument is a constant of `channels.py` (or a variable
    holding one), never a string literal; `done_channel` class attributes too."""
    offenders: list[str] = []
    constants = set(_declared())
    used: set[str] = set()
    for path in _library_files():
        tree = ast.parse(path.read_text(), filename=str(path))
        where = path.relative_to(PACKAGE.parent)
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                func = node.func
                name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
                if name not in CHANNEL_CALLS:
                    continue
                args = node.args[:1] + [k.value for k in node.keywords if k.arg == "channel"]
                for arg in args:
                    if _string_literals(arg):
                        offenders.append(f"{where}:{node.lineno}: {ast.unparse(node)[:80]}")
                    used |= {n.id for n in ast.walk(arg) if isinstance(n, ast.Name) and n.id.isupper()}
            elif isinstance(node, ast.Assign | ast.AnnAssign):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                done = any(isinstance(t, ast.Name) and t.id == "done_channel" for t in targets)
                if done and node.value is not None and _string_literals(node.value):
                    offenders.append(f"{where}:{node.lineno}: {ast.unparse(node)}")
    assert offenders == []
    assert used <= constants, f"not channel constants: {sorted(used - constants)}"
    assert {"SIGNAL", "SIGNAL_BACKTEST", "SIGNAL_LIVE", "RISK", "ERROR"} <= used


async def test_the_library_publishes_only_declared_channels_at_run_time() -> None:
    """Introspection: spy on a backtest (risk rejection, partial levels, progress, performance, errors,
    background done) and check every channel it publishes on is one of the declared constants."""
    engine = make_engine()
    seen: list[Any] = []
    publish = engine.bus.publish

    def spy(channel: Any, event: Any) -> Any:
        seen.append(channel)
        return publish(channel, event)

    engine.bus.publish = spy  # type: ignore[method-assign]
    candles = candles_from_path(T0 - 60 * 60_000, [100.0] * 60 + [100.0 + i for i in range(60)], spread=0.5)
    calls = [0]

    def get_signal(symbol: str, when: Any) -> Any:
        calls[0] += 1
        if calls[0] == 2:
            raise RuntimeError("a failed tick reaches the error channel")
        return long(tp=130.0, sl=90.0, minutes=50) if calls[0] == 1 else None

    def broken(args: Any) -> None:
        raise ValueError("a raising validation reaches the validation channel")

    h = setup(engine, candles, get_signal, minutes=50)
    engine.add_risk(risk_name="never", validations=[broken])
    engine.add_strategy(strategy_name="gated", interval="1m", risk_name="never",
                        get_signal=lambda s, w: long(tp=130.0, sl=90.0, minutes=50))
    for listen in (engine.listen_progress, engine.listen_performance, engine.listen_partial_profit,
                   engine.listen_risk, engine.listen_done_backtest):
        listen(lambda event: None)
    async for _ in engine.backtest.run("BTCUSDT", strategy_name=h.strategy, exchange_name=h.exchange,
                                       frame_name=h.frame):
        pass
    handle = engine.backtest.background("BTCUSDT", strategy_name="gated", exchange_name=h.exchange,
                                        frame_name=h.frame)
    await handle.wait()
    await engine.bus.drain()
    assert seen and all(any(channel is c for c in ALL_CHANNELS) for channel in seen), set(map(repr, seen))
    names = {channel.name for channel in seen}
    assert {"signal", "signal_backtest", "progress", "performance", "partial_profit", "error", "risk",
            "validation", "done_backtest"} <= names


async def test_a_constant_and_its_name_reach_the_same_listeners() -> None:
    bus = EventBus()
    got: list[tuple[str, Any]] = []
    bus.subscribe(SIGNAL, lambda e: got.append(("typed", e)))
    bus.subscribe("signal", lambda e: got.append(("named", e)))
    assert bus.listener_count(SIGNAL) == bus.listener_count("signal") == 2
    assert bus.has_listeners(SIGNAL) and not bus.has_listeners(RISK) and not bus.has_listeners("risk")
    assert bus.publish(SIGNAL, 1) is None
    await bus.emit("signal", 2)
    bus.publish_soon(SIGNAL, 3)
    assert got == [("typed", 1), ("named", 1), ("typed", 2), ("named", 2), ("typed", 3), ("named", 3)]
    off = bus.subscribe(RISK, lambda e: got.append(("risk", e)))
    await bus.emit(RISK, 4)
    off()  # the snapshot under the constant and the one under the name are both rebuilt
    await bus.emit(RISK, 5)
    await bus.emit("risk", 6)
    assert got[-1] == ("risk", 4)


def test_an_undeclared_channel_object_is_rejected_and_constants_are_immutable_singletons() -> None:
    bus = EventBus()
    with pytest.raises(ValueError, match="unknown channel"):
        bus.subscribe(Channel("signal"), print)  # a look-alike is not the declared channel
    with pytest.raises(AttributeError):
        SIGNAL.name = "other"  # type: ignore[misc]
    assert pickle.loads(pickle.dumps(RISK)) is RISK
    assert str(RISK) == "risk" and repr(RISK) == "Channel('risk')"

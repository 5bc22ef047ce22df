"""Risk profiles ([risk-sizing §1](../docs/design/risk-sizing-portfolio.md#1-risk-profiles),
[rules 1–39](../docs/design/risk-sizing-portfolio.md#8-acceptance-rules),
[decision 15](../docs/design/decisions.md#decision-15-one-shared-locked-risk-profile-with-a-built-in-limit)).

Adaptations of the reference rules to the port, each noted where it is tested:

- rules 3–11 drive a profile through the `RiskGate` an instance uses (`check` = evaluate only,
  `try_open` = atomic evaluate-and-add, `release`), the port's equivalent of the reference's direct
  service calls;
- rules 13–17 (persistence adapter with key `positions`) become the port's layout: entity `risk`,
  key = risk name, live mode only (rule 18,
  [decision 15](../docs/design/decisions.md#decision-15-one-shared-locked-risk-profile-with-a-built-in-limit));
- rule 35: the port checks a limit signal at creation with the validated row, which already has an
  id; the report prints `N/A` for a rejected signal without id (a hand-made event);
- rule 38 holds by construction: a market signal is checked with its row, whose `price_open` is the
  tick's VWAP.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest
from helpers import T0, M, MemoryPersist, candle, dt, flat_candles, long, make_engine, once

import backtest_kit as bk
from backtest_kit.portfolio.risk import PairRiskGate
from backtest_kit.portfolio.risk_facade import risk_report

SYMBOLS = ("BTCUSDT", "ETHUSDT", "BNBUSDT", "SOLUSDT")


# ---------------------------------------------------------------------------------------------- helpers
def mk_row(symbol: str = "BTCUSDT", strategy: str = "s", sid: str = "id", price: float = 100.0,
           position: str = "long") -> bk.SignalRow:
    tp, sl = (price * 1.1, price * 0.9) if position == "long" else (price * 0.9, price * 1.1)
    return bk.SignalRow(
        id=sid, position=position, price_open=price, price_take_profit=tp,  # type: ignore[arg-type]
        price_stop_loss=sl, minute_estimated_time=60, note="", symbol=symbol, strategy_name=strategy,
        exchange_name="ex", scheduled_at=T0, pending_at=T0, is_scheduled=False,
    )


async def save_signal(engine: bk.Engine, row: bk.SignalRow) -> None:
    """What a live instance writes with its position: the risk restore keeps positions that have one."""
    from backtest_kit.engine.signal_store import encode_signal_row, signal_key

    await engine.persist_for("signals").write("signals", signal_key(row.symbol, row.strategy_name),
                                              encode_signal_row(row))


def gate(engine: bk.Engine, risk: str, symbol: str, strategy: str, *, backtest: bool = True) -> PairRiskGate:
    return engine._risk.gate(risk, symbol, strategy, "ex", backtest=backtest)


async def open_pos(engine: bk.Engine, risk: str, strategy: str, symbol: str) -> bool:
    return await gate(engine, risk, symbol, strategy).try_open(mk_row(symbol, strategy, f"{strategy}-{symbol}"),
                                                              100.0, T0)


def async_source(candles: dict[str, list[bk.Candle]]) -> Callable[..., Any]:
    """An async 1m candle source that yields to the loop on every call (lets pairs interleave)."""

    async def get_candles(symbol: str, interval: str, since: datetime, limit: int) -> list[bk.Candle]:
        assert interval == "1m"
        await asyncio.sleep(0)
        arr = candles[symbol]
        i = max(0, (int(since.timestamp() * 1000) - arr[0].timestamp) // M)
        return arr[i:i + limit]

    return get_candles


def flat_market(symbols: Sequence[str], minutes: int, price: float = 100.0) -> dict[str, list[bk.Candle]]:
    return {s: flat_candles(T0 - 10 * M, minutes + 20, price) for s in symbols}


def backtest_world(
    engine: bk.Engine, strategies: Sequence[tuple[str, Any]], *, risk: str | None = "rk", minutes: int = 60,
    symbols: Sequence[str] = ("BTCUSDT",), price: float = 100.0, interleave: bool = False,
    frame_interval: str = "1m", candle_minutes: int | None = None, callbacks: Any = None,
) -> None:
    market = flat_market(symbols, candle_minutes or minutes + 200, price)
    source = async_source(market) if interleave else bk.MemoryCandles(market)
    engine.add_exchange(exchange_name="mem", get_candles=source)
    for name, get_signal in strategies:
        engine.add_strategy(strategy_name=name, interval="1m", get_signal=get_signal, risk_name=risk,
                            callbacks=callbacks)
    engine.add_frame(frame_name="f", interval=frame_interval, start_date=dt(T0),
                     end_date=dt(T0) + timedelta(minutes=minutes))


async def run_bt(engine: bk.Engine, symbol: str, strategy: str) -> list[bk.FinishedResult]:
    return [r async for r in engine.backtest.run(symbol, strategy_name=strategy, exchange_name="mem",
                                                 frame_name="f")]


def signal_every_tick(tp: float = 110.0, sl: float = 90.0, minutes: int = 10) -> Callable[..., Any]:
    def get_signal(symbol: str, when: datetime) -> bk.SignalDto:
        return long(tp=tp, sl=sl, minutes=minutes)

    return get_signal


@pytest.fixture
def engine() -> bk.Engine:
    return make_engine()


# ------------------------------------------------------------------------ registration and bookkeeping
async def test_rule1_profile_with_only_a_name_allows_everything(engine: bk.Engine) -> None:
    engine.add_risk(risk_name="rk", note="docs only")
    g = gate(engine, "rk", "BTCUSDT", "s")
    assert await g.check(mk_row(), 100.0, T0)
    assert await g.try_open(mk_row(), 100.0, T0)


def test_rule2_duplicate_name(engine: bk.Engine) -> None:
    engine.add_risk(risk_name="rk")
    with pytest.raises(bk.SchemaError, match="already exist"):
        engine.add_risk(risk_name="rk", max_concurrent_positions=3)


async def test_rule3_count_limit_rejects_and_calls_on_rejected(engine: bk.Engine) -> None:
    rejected: list[tuple[str, Any]] = []

    def at_most_3(args: bk.RiskCheckArgs) -> None:
        if args.active_position_count >= 3:
            raise ValueError("too many")

    engine.add_risk(risk_name="rk", validations=[at_most_3],
                    callbacks={"on_rejected": lambda symbol, args: rejected.append((symbol, args))})
    for strategy, symbol in (("s1", "BTCUSDT"), ("s2", "ETHUSDT"), ("s3", "BNBUSDT")):
        assert await open_pos(engine, "rk", strategy, symbol)
    assert not await gate(engine, "rk", "SOLUSDT", "s4").check(mk_row("SOLUSDT", "s4"), 100.0, T0)
    assert [s for s, _ in rejected] == ["SOLUSDT"]
    assert rejected[0][1].symbol == "SOLUSDT" and rejected[0][1]["symbol"] == "SOLUSDT"


async def test_rule4_under_the_limit_is_allowed(engine: bk.Engine) -> None:
    allowed: list[str] = []

    def at_most_5(args: bk.RiskCheckArgs) -> None:
        if args.active_position_count >= 5:
            raise ValueError("too many")

    engine.add_risk(risk_name="rk", validations=[at_most_5],
                    callbacks={"on_allowed": lambda symbol, args: allowed.append(symbol)})
    await open_pos(engine, "rk", "s1", "BTCUSDT")
    await open_pos(engine, "rk", "s2", "ETHUSDT")
    allowed.clear()
    assert await gate(engine, "rk", "BNBUSDT", "s3").check(mk_row("BNBUSDT", "s3"), 100.0, T0)
    assert allowed == ["BNBUSDT"]


async def test_rule5_and_10_count_follows_adds_and_removes(engine: bk.Engine) -> None:
    seen: list[int] = []
    engine.add_risk(risk_name="rk", validations=[lambda a: seen.append(a.active_position_count)])
    for strategy, symbol in (("s1", "BTCUSDT"), ("s2", "ETHUSDT"), ("s3", "BNBUSDT")):
        await open_pos(engine, "rk", strategy, symbol)
    probe = gate(engine, "rk", "SOLUSDT", "s4")
    await probe.check(mk_row("SOLUSDT", "s4"), 100.0, T0)
    assert seen[-1] == 3
    await gate(engine, "rk", "ETHUSDT", "s2").release(mk_row("ETHUSDT", "s2"))
    await probe.check(mk_row("SOLUSDT", "s4"), 100.0, T0)
    assert seen[-1] == 2
    positions = await engine.risk.get_positions("rk", backtest=True)
    assert [(p.strategy_name, p.symbol) for p in positions] == [("s1", "BTCUSDT"), ("s3", "BNBUSDT")]


async def test_rule6_plain_async_function_validation(engine: bk.Engine) -> None:
    calls: list[int] = []

    async def limit_2(args: bk.RiskCheckArgs) -> None:
        await asyncio.sleep(0)
        calls.append(args.active_position_count)
        if args.active_position_count >= 2:
            raise ValueError("limit")

    engine.add_risk(risk_name="rk", validations=[limit_2])
    await open_pos(engine, "rk", "s1", "BTCUSDT")
    assert await gate(engine, "rk", "ETHUSDT", "s2").check(mk_row("ETHUSDT", "s2"), 100.0, T0)
    assert calls == [0, 1]


async def test_rule7_payload_values_are_passed_unchanged(engine: bk.Engine) -> None:
    got: list[bk.RiskCheckArgs] = []
    engine.add_risk(risk_name="rk", validations=[got.append])
    row = mk_row("BTCUSDT", "strat", price=50000.0)
    g = engine._risk.gate("rk", "BTCUSDT", "strat", "binance", backtest=True)
    assert await g.check(row, 50000.0, 1234567890)
    a = got[0]
    assert (a.symbol, a.strategy_name, a.exchange_name, a.current_price, a.timestamp) == (
        "BTCUSDT", "strat", "binance", 50000.0, 1234567890)
    assert a.pending_signal is row
    assert isinstance(a.active_position_count, int) and a.active_positions == ()
    assert a.risk_name == "rk" and a.backtest is True
    assert a.get("missing", 7) == 7
    with pytest.raises(KeyError):
        a["missing"]


async def test_rule8_symbol_filter(engine: bk.Engine) -> None:
    rejected: list[str] = []

    def no_doge(args: bk.RiskCheckArgs) -> None:
        if args.symbol == "DOGEUSDT":
            raise ValueError("no doge")

    engine.add_risk(risk_name="rk", validations=[no_doge],
                    callbacks={"on_rejected": lambda symbol, args: rejected.append(symbol)})
    assert await gate(engine, "rk", "BTCUSDT", "s").check(mk_row(), 100.0, T0)
    assert not await gate(engine, "rk", "DOGEUSDT", "s").check(mk_row("DOGEUSDT"), 100.0, T0)
    assert rejected == ["DOGEUSDT"]


async def test_rule9_profiles_are_isolated(engine: bk.Engine) -> None:
    seen: dict[str, int] = {}
    engine.add_risk(risk_name="A", validations=[lambda a: seen.__setitem__("A", a.active_position_count)])
    engine.add_risk(risk_name="B", validations=[lambda a: seen.__setitem__("B", a.active_position_count)])
    await open_pos(engine, "A", "s1", "BTCUSDT")
    await open_pos(engine, "A", "s2", "ETHUSDT")
    await open_pos(engine, "B", "s3", "BNBUSDT")
    await gate(engine, "A", "SOLUSDT", "s4").check(mk_row("SOLUSDT"), 100.0, T0)
    await gate(engine, "B", "SOLUSDT", "s4").check(mk_row("SOLUSDT"), 100.0, T0)
    assert seen == {"A": 2, "B": 1}


async def test_rule11_removing_an_unknown_key_is_a_noop(engine: bk.Engine) -> None:
    engine.add_risk(risk_name="rk")
    await open_pos(engine, "rk", "s1", "BTCUSDT")
    await gate(engine, "rk", "ETHUSDT", "nobody").release(mk_row("ETHUSDT", "nobody"))
    assert len(await engine.risk.get_positions("rk", backtest=True)) == 1


async def test_backtest_and_live_states_are_separate(engine: bk.Engine) -> None:
    """[Decision 11](../docs/design/decisions.md#decision-11-instances-are-keyed-by-mode-symbol-and-strategy)
    / [risk-sizing §1.2](../docs/design/risk-sizing-portfolio.md#12-one-shared-state-per-profile): a
    backtest never counts live positions."""
    engine.use_persist(MemoryPersist())
    engine.add_risk(risk_name="rk", max_concurrent_positions=1)
    live = gate(engine, "rk", "BTCUSDT", "s1", backtest=False)
    assert await live.try_open(mk_row(), 100.0, T0)
    assert await gate(engine, "rk", "ETHUSDT", "s2", backtest=True).try_open(mk_row("ETHUSDT"), 100.0, T0)
    assert not await gate(engine, "rk", "ETHUSDT", "s2", backtest=False).check(mk_row("ETHUSDT"), 100.0, T0)


async def test_stale_own_position_does_not_count_against_the_pair(engine: bk.Engine) -> None:
    """A pair asking to open holds nothing, so an entry under its own key (a crash leftover) is ignored."""
    engine.add_risk(risk_name="rk", max_concurrent_positions=1)
    g = gate(engine, "rk", "BTCUSDT", "s")
    assert await g.try_open(mk_row(sid="old"), 100.0, T0)
    assert await g.try_open(mk_row(sid="new"), 100.0, T0 + M)
    positions = await engine.risk.get_positions("rk", backtest=True)
    assert [p.signal.id for p in positions] == ["new"]


async def test_rule12_backtest_leaves_no_position(engine: bk.Engine) -> None:
    backtest_world(engine, [("s", signal_every_tick())])
    engine.add_risk(risk_name="rk", max_concurrent_positions=1)
    results = await run_bt(engine, "BTCUSDT", "s")
    assert results and all(r.action == "closed" for r in results)
    assert await engine.risk.get_positions("rk", backtest=True) == []


# ------------------------------------------------------------------------------------------ persistence
async def test_rule13_18_live_persistence_layout_and_restore(tmp_path: Any) -> None:
    backend = MemoryPersist()
    engine = make_engine(tmp_path)
    engine.use_persist(backend)
    engine.add_risk(risk_name="A")
    engine.add_risk(risk_name="B")
    assert await engine.risk.get_positions("A") == []  # rule 13: nothing stored -> empty
    a1 = gate(engine, "A", "BTCUSDT", "s1", backtest=False)
    a2 = gate(engine, "A", "ETHUSDT", "s2", backtest=False)
    b1 = gate(engine, "B", "BNBUSDT", "s3", backtest=False)
    await a1.try_open(mk_row("BTCUSDT", "s1", "x1"), 100.0, T0)
    await a2.try_open(mk_row("ETHUSDT", "s2", "x2", position="short"), 100.0, T0 + M)
    await b1.try_open(mk_row("BNBUSDT", "s3", "x3"), 100.0, T0)
    # rule 18: written after every add, entity "risk", key = profile (rule 17: one document per profile)
    assert backend.ops("risk") == [("read", "A"), ("write", "A"), ("write", "A"), ("read", "B"), ("write", "B")]
    stored = msgspec.json.decode(backend.data[("risk", "A")])
    assert [k for k, _ in stored] == ["s1:BTCUSDT", "s2:ETHUSDT"]  # rule 14: pairs, in order
    # a restarted engine sees the same positions (rule 14/16: the last write wins)
    for row in (mk_row("BTCUSDT", "s1", "x1"), mk_row("ETHUSDT", "s2", "x2", position="short"),
                mk_row("BNBUSDT", "s3", "x3")):
        await save_signal(engine, row)
    engine2 = make_engine(tmp_path)
    engine2.use_persist(backend)
    engine2.add_risk(risk_name="A")
    engine2.add_risk(risk_name="B")
    restored = await engine2.risk.get_positions("A")
    assert [(p.strategy_name, p.symbol, p.signal.id, p.signal.position, p.open_timestamp) for p in restored] == [
        ("s1", "BTCUSDT", "x1", "long", T0), ("s2", "ETHUSDT", "x2", "short", T0 + M)]
    assert [p.signal.id for p in await engine2.risk.get_positions("B")] == ["x3"]
    # remove: written again; the last remove deletes the document
    await gate(engine2, "A", "BTCUSDT", "s1", backtest=False).release(mk_row("BTCUSDT", "s1", "x1"))
    assert [k for k, _ in msgspec.json.decode(backend.data[("risk", "A")])] == ["s2:ETHUSDT"]
    await gate(engine2, "A", "ETHUSDT", "s2", backtest=False).release(mk_row("ETHUSDT", "s2", "x2"))
    assert ("risk", "A") not in backend.data


async def test_rule18_backtest_never_touches_risk_documents(engine: bk.Engine) -> None:
    backend = MemoryPersist()
    engine.use_persist(backend)
    backtest_world(engine, [("s", signal_every_tick())])
    engine.add_risk(risk_name="rk", max_concurrent_positions=1)
    assert await run_bt(engine, "BTCUSDT", "s")
    assert backend.log == []


async def test_corrupt_risk_document_is_reported_quarantined_and_ignored(tmp_path: Any) -> None:
    backend = MemoryPersist()
    backend.data[("risk", "rk")] = b'[["s:BTCUSDT", {"signal": 42}]]'
    engine = make_engine(tmp_path)
    engine.use_persist(backend)
    errors: list[BaseException] = []
    engine.listen_error(errors.append)
    engine.add_risk(risk_name="rk", max_concurrent_positions=1)
    assert await gate(engine, "rk", "BTCUSDT", "s", backtest=False).try_open(mk_row(), 100.0, T0)
    assert len(errors) == 1 and isinstance(errors[0], bk.PersistError)
    assert "risk rk" in str(errors[0]) and "corrupt" in str(errors[0])
    assert ("risk", "rk.corrupt") in backend.data


async def test_file_persist_restores_live_positions(tmp_path: Any) -> None:
    engine = make_engine(tmp_path)
    engine.add_risk(risk_name="rk")
    await gate(engine, "rk", "BTCUSDT", "s", backtest=False).try_open(mk_row(sid="file"), 100.0, T0)
    assert (tmp_path / "data" / "risk").is_dir()
    await save_signal(engine, mk_row(sid="file"))
    engine2 = make_engine(tmp_path)
    engine2.add_risk(risk_name="rk")
    assert [p.signal.id for p in await engine2.risk.get_positions("rk")] == ["file"]


# ------------------------------------------------------------------------------------- end to end: backtest
async def test_rule19_symbol_rejection_in_backtests(engine: bk.Engine) -> None:
    rejected: list[str] = []
    allowed: list[str] = []

    def no_btc(args: bk.RiskCheckArgs) -> None:
        if args.symbol == "BTCUSDT":
            raise ValueError("no btc")

    backtest_world(engine, [("s", signal_every_tick())], symbols=("BTCUSDT", "ETHUSDT"), minutes=30)
    engine.add_risk(risk_name="rk", validations=[no_btc], callbacks={
        "on_rejected": lambda s, a: rejected.append(s), "on_allowed": lambda s, a: allowed.append(s)})
    assert await run_bt(engine, "BTCUSDT", "s") == []
    assert await run_bt(engine, "ETHUSDT", "s")
    assert "BTCUSDT" in rejected and "BTCUSDT" not in allowed
    assert "ETHUSDT" in allowed and "ETHUSDT" not in rejected


async def test_rule20_price_rule_allows_at_42000(engine: bk.Engine) -> None:
    allowed: list[float] = []

    def min_price(args: bk.RiskCheckArgs) -> None:
        if args.current_price < 40_000:
            raise ValueError("too cheap")

    backtest_world(engine, [("s", signal_every_tick(tp=44_000, sl=40_500))], price=42_000, minutes=30)
    engine.add_risk(risk_name="rk", validations=[min_price],
                    callbacks={"on_allowed": lambda s, a: allowed.append(a.current_price)})
    results = await run_bt(engine, "BTCUSDT", "s")
    assert allowed and results and results[0].action == "closed"


async def test_rule21_two_strategies_sharing_one_slot_finish_and_close_everything(engine: bk.Engine) -> None:
    events: list[bk.TickResult] = []
    engine.listen_signal_backtest(events.append)
    backtest_world(engine, [("s1", signal_every_tick()), ("s2", signal_every_tick())], interleave=True)
    engine.add_risk(risk_name="rk", max_concurrent_positions=1)
    r1, r2 = await asyncio.gather(run_bt(engine, "BTCUSDT", "s1"), run_bt(engine, "BTCUSDT", "s2"))
    opened = [e for e in events if e.action == "opened"]
    closed = [e for e in events if e.action == "closed"]
    assert opened and len(opened) == len(closed) == len(r1) + len(r2)
    assert await engine.risk.get_positions("rk", backtest=True) == []


async def test_rule22_list_length_equals_count(engine: bk.Engine) -> None:
    checks: list[bool] = []
    backtest_world(engine, [(f"s{i}", signal_every_tick()) for i in range(3)], interleave=True)
    engine.add_risk(risk_name="rk", validations=[
        lambda a: checks.append(len(a.active_positions) == a.active_position_count)])
    await asyncio.gather(*(run_bt(engine, "BTCUSDT", f"s{i}") for i in range(3)))
    assert checks and all(checks)


async def test_rule23_always_throwing_validation_opens_nothing(engine: bk.Engine) -> None:
    rejected: list[str] = []
    allowed: list[str] = []

    def boom(args: bk.RiskCheckArgs) -> None:
        raise RuntimeError("boom")

    backtest_world(engine, [("s", signal_every_tick())], minutes=20)
    engine.add_risk(risk_name="rk", validations=[boom], callbacks={
        "on_rejected": lambda s, a: rejected.append(s), "on_allowed": lambda s, a: allowed.append(s)})
    events: list[bk.TickResult] = []
    engine.listen_signal_backtest(events.append)
    assert await run_bt(engine, "BTCUSDT", "s") == []
    assert rejected and not allowed
    assert not [e for e in events if e.action == "opened"]


async def test_rule24_payload_names_are_the_running_pair(engine: bk.Engine) -> None:
    names: set[tuple[str, str]] = set()
    backtest_world(engine, [("strat-x", signal_every_tick())], minutes=15)
    engine.add_risk(risk_name="rk", validations=[lambda a: names.add((a.strategy_name, a.exchange_name))])
    await run_bt(engine, "BTCUSDT", "strat-x")
    assert names == {("strat-x", "mem")}


async def test_rule25_fail_fast(engine: bk.Engine) -> None:
    calls: list[str] = []

    def first(args: Any) -> None:
        calls.append("first")

    def second(args: Any) -> None:
        calls.append("second")
        raise ValueError("stop")

    def third(args: Any) -> None:
        calls.append("third")

    engine.add_risk(risk_name="rk", validations=[first, second, third])
    assert not await gate(engine, "rk", "BTCUSDT", "s").check(mk_row(), 100.0, T0)
    assert calls == ["first", "second"]


async def test_rule26_comment_is_the_note_else_na(engine: bk.Engine) -> None:
    events: list[bk.RiskEvent] = []
    engine.listen_risk(events.append)

    def boom(args: Any) -> None:
        raise ValueError("this message is not the comment")

    engine.add_risk(risk_name="noted", validations=[{"validate": boom, "note": "Max 3 positions"}])
    engine.add_risk(risk_name="bare", validations=[boom])
    await gate(engine, "noted", "BTCUSDT", "s").check(mk_row(), 100.0, T0)
    await gate(engine, "bare", "BTCUSDT", "s").check(mk_row(), 100.0, T0)
    assert [e.comment for e in events] == ["Max 3 positions", "N/A"]


async def test_rule27_payload_timestamp_is_simulated_time(engine: bk.Engine) -> None:
    jan2 = int(datetime(2024, 1, 2, tzinfo=UTC).timestamp() * 1000)
    outcomes: list[tuple[int, bool]] = []

    def after_jan2(args: bk.RiskCheckArgs) -> None:
        if args.timestamp < jan2:
            outcomes.append((args.timestamp, False))
            raise ValueError("too early")
        outcomes.append((args.timestamp, True))

    backtest_world(engine, [("s", signal_every_tick(minutes=60))], minutes=3 * 1440, frame_interval="1d",
                   candle_minutes=4 * 1440 + 200)
    engine.add_risk(risk_name="rk", validations=[after_jan2])
    events: list[bk.RiskEvent] = []
    engine.listen_risk(events.append)
    results = await run_bt(engine, "BTCUSDT", "s")
    assert (T0, False) in outcomes and any(ok for _, ok in outcomes)
    assert events[0].timestamp == T0  # the event carries the simulated time too (port decision)
    assert len(results) >= 1


async def test_rule28_events_only_for_rejections(engine: bk.Engine) -> None:
    counts = {"events": 0, "rejected": 0, "allowed": 0}
    engine.listen_risk(lambda e: counts.__setitem__("events", counts["events"] + 1))

    def limit_10(args: bk.RiskCheckArgs) -> None:
        if args.active_position_count >= 10:
            raise ValueError("limit")

    backtest_world(engine, [("s", signal_every_tick())], minutes=40)
    engine.add_risk(risk_name="rk", validations=[limit_10], callbacks={
        "on_rejected": lambda s, a: counts.__setitem__("rejected", counts["rejected"] + 1),
        "on_allowed": lambda s, a: counts.__setitem__("allowed", counts["allowed"] + 1)})
    await run_bt(engine, "BTCUSDT", "s")
    assert counts["events"] == counts["rejected"] < counts["allowed"]


async def test_rule29_concurrent_strategies_over_a_shared_limit(engine: bk.Engine) -> None:
    events: list[bk.RiskEvent] = []
    engine.listen_risk(events.append)
    names = ("a", "b", "c")
    backtest_world(engine, [(n, signal_every_tick(tp=1000, sl=1, minutes=30)) for n in names], interleave=True)
    engine.add_risk(risk_name="rk", validations=[{
        "validate": lambda a: (_ for _ in ()).throw(ValueError("full")) if a.active_position_count >= 2 else None,
        "note": "at most 2"}])
    await asyncio.gather(*(run_bt(engine, "BTCUSDT", n) for n in names))
    assert events
    e = events[0]
    assert e.symbol == "BTCUSDT" and e.strategy_name in names and e.exchange_name == "mem"
    assert e.comment == "at most 2" and e.active_position_count >= 2
    assert isinstance(e.current_price, float) and isinstance(e.timestamp, int)
    assert e.pending_signal.position in ("long", "short")
    assert await engine.risk.get_positions("rk", backtest=True) == []


async def test_rule30_once_listeners_per_symbol(engine: bk.Engine) -> None:
    got: dict[str, list[str]] = {"BTCUSDT": [], "ETHUSDT": []}
    for sym in got:
        engine.listen_risk_once(lambda e, sym=sym: e.symbol == sym, lambda e, sym=sym: got[sym].append(e.comment))
    backtest_world(engine, [("s", signal_every_tick())], symbols=("BTCUSDT", "ETHUSDT"), minutes=10)
    engine.add_risk(risk_name="rk", validations=[{"validate": lambda a: False, "note": "closed market"}])
    await run_bt(engine, "BTCUSDT", "s")
    await run_bt(engine, "ETHUSDT", "s")
    assert got == {"BTCUSDT": ["closed market"], "ETHUSDT": ["closed market"]}


async def test_rule31_32_risk_data_and_report(engine: bk.Engine) -> None:
    def only_a(args: bk.RiskCheckArgs) -> None:
        if args.strategy_name == "b":
            raise ValueError("b is not allowed")

    backtest_world(engine, [("a", signal_every_tick()), ("b", signal_every_tick())], interleave=True)
    engine.add_risk(risk_name="rk", max_concurrent_positions=1,
                    validations=[{"validate": only_a, "note": "strategy b disabled"}])
    await asyncio.gather(run_bt(engine, "BTCUSDT", "a"), run_bt(engine, "BTCUSDT", "b"))
    data = await engine.risk.get_data("BTCUSDT", "b")
    assert data.total_rejections > 0 and len(data.event_list) == data.total_rejections
    assert data.by_symbol["BTCUSDT"] == data.total_rejections == data.by_strategy["b"]
    assert all(e.comment in ("strategy b disabled", "max_concurrent_positions=1 reached") for e in data.event_list)
    assert any(e.comment == "strategy b disabled" for e in data.event_list)
    assert data.event_list[0].timestamp >= data.event_list[-1].timestamp  # newest first
    report = await engine.risk.get_report("BTCUSDT", "b")
    assert report.startswith("# Risk Rejection Report: BTCUSDT:b\n\n| Symbol | Strategy | Signal ID | Position |")
    assert "| Reason | Timestamp |" in report and "strategy b disabled" in report
    assert f"**Total rejections:** {data.total_rejections}" in report
    assert "## Rejections by Symbol\n- BTCUSDT: " in report and "## Rejections by Strategy\n- b: " in report
    assert "| Note |" not in report
    engine.set_config(CC_REPORT_SHOW_SIGNAL_NOTE=True)
    assert "| Position | Note | Exchange |" in await engine.risk.get_report("BTCUSDT", "b")


async def test_rule33_no_rejections(engine: bk.Engine) -> None:
    backtest_world(engine, [("s", signal_every_tick())])
    engine.add_risk(risk_name="rk")
    data = await engine.risk.get_data("BTCUSDT", "s")
    assert (data.total_rejections, data.event_list, data.by_symbol, data.by_strategy) == (0, [], {}, {})
    assert await engine.risk.get_report("BTCUSDT", "s") == (
        "# Risk Rejection Report: BTCUSDT:s\n\nNo risk rejections recorded yet.")
    with pytest.raises(bk.UnknownNameError, match="strategy nope not found"):
        await engine.risk.get_data("BTCUSDT", "nope")


async def test_rule34_two_symbols_two_strategies_share_two_slots(engine: bk.Engine) -> None:
    backtest_world(engine, [("a", signal_every_tick(minutes=20)), ("b", signal_every_tick(minutes=20))],
                   symbols=("BTCUSDT", "ETHUSDT"), interleave=True)
    engine.add_risk(risk_name="rk", max_concurrent_positions=2)
    pairs = [(s, n) for s in ("BTCUSDT", "ETHUSDT") for n in ("a", "b")]
    await asyncio.gather(*(run_bt(engine, s, n) for s, n in pairs))
    data = [await engine.risk.get_data(s, n) for s, n in pairs]
    assert sum(1 for d in data if d.total_rejections) >= 2
    assert all(d.by_symbol and d.by_strategy for d in data if d.total_rejections)


async def test_rule35_limit_signal_checked_at_creation(engine: bk.Engine) -> None:
    events: list[bk.RiskEvent] = []
    engine.listen_risk(events.append)
    signals: list[bk.TickResult] = []
    engine.listen_signal_backtest(signals.append)
    backtest_world(engine, [("s", lambda s, w: long(tp=110, sl=80, minutes=30, price_open=90))], minutes=5)
    engine.add_risk(risk_name="rk", max_concurrent_positions=0)
    assert await run_bt(engine, "BTCUSDT", "s") == []
    assert events and all(e.pending_signal.is_scheduled for e in events)
    assert not [s for s in signals if s.action == "scheduled"]
    # a rejected signal without an id (e.g. a hand-made event) shows N/A in the report
    from backtest_kit.portfolio.risk_facade import RiskStatistics

    bare = bk.RiskEvent(symbol="BTCUSDT", strategy_name="s", exchange_name="mem", pending_signal=None,
                        current_price=1.0, active_position_count=0, comment="N/A", timestamp=T0, backtest=True)
    text = risk_report("BTCUSDT", "s", RiskStatistics(event_list=[bare], total_rejections=1,
                                                      by_symbol={"BTCUSDT": 1}, by_strategy={"s": 1}))
    assert "| BTCUSDT | s | N/A | N/A | mem | N/A | N/A | N/A | 1.00000000 USD | 0 | N/A |" in text


async def test_activation_rejected_in_backtest_discards_silently(engine: bk.Engine) -> None:
    """[Risk-sizing §1.6](../docs/design/risk-sizing-portfolio.md#16-outcomes): a rejection at
    activation drops the limit signal, no cancel, no error."""
    market = {"BTCUSDT": flat_candles(T0 - 10 * M, 12, 100.0) + flat_candles(T0 + 2 * M, 100, 89.0)}
    engine.add_exchange(exchange_name="mem", get_candles=bk.MemoryCandles(market))
    get_signal = once(long(tp=110, sl=80, minutes=30, price_open=90))

    engine.add_strategy(strategy_name="s", interval="1m", get_signal=get_signal, risk_name="rk")
    engine.add_frame(frame_name="f", interval="1m", start_date=dt(T0), end_date=dt(T0) + timedelta(minutes=20))
    checks: list[bool] = []
    engine.add_risk(risk_name="rk", validations=[
        lambda a: checks.append(a.pending_signal.is_scheduled) or bool(a.pending_signal.is_scheduled)])
    errors: list[BaseException] = []
    engine.listen_error(errors.append)
    events: list[bk.TickResult] = []
    engine.listen_signal_backtest(events.append)
    assert await run_bt(engine, "BTCUSDT", "s") == []
    assert checks[:2] == [True, False]  # checkpoint A at creation, then B2 at activation
    assert [e.action for e in events if e.action != "idle"] == ["scheduled"]
    assert errors == []


async def test_rule36_raised_errors_reach_listen_validation(engine: bk.Engine) -> None:
    errors: list[BaseException] = []
    engine.listen_validation(errors.append)
    boom = ValueError("boom")

    def fail(args: Any) -> None:
        raise boom

    engine.add_risk(risk_name="rk", validations=[fail])
    for _ in range(3):
        await gate(engine, "rk", "BTCUSDT", "s").check(mk_row(), 100.0, T0)
    assert errors == [boom, boom, boom]


async def test_rule37_max_concurrent_positions(engine: bk.Engine) -> None:
    events: list[bk.RiskEvent] = []
    engine.listen_risk(events.append)
    backtest_world(engine, [("a", signal_every_tick(tp=1000, sl=1, minutes=40)),
                            ("b", signal_every_tick(tp=1000, sl=1, minutes=40))], interleave=True, minutes=30)
    engine.add_risk(risk_name="rk", max_concurrent_positions=1)
    await asyncio.gather(run_bt(engine, "BTCUSDT", "a"), run_bt(engine, "BTCUSDT", "b"))
    assert events and {e.comment for e in events} == {"max_concurrent_positions=1 reached"}
    engine.add_risk(risk_name="none", max_concurrent_positions=0)
    assert not await gate(engine, "none", "BTCUSDT", "s").try_open(mk_row(), 100.0, T0)
    assert events[-1].comment == "max_concurrent_positions=0 reached"
    for bad in (-1, 1.5, True, "2"):
        with pytest.raises(bk.SchemaError, match="max_concurrent_positions"):
            engine.add_risk(risk_name=f"bad-{bad}", max_concurrent_positions=bad)  # type: ignore[arg-type]


async def test_rule38_market_signal_has_price_open_at_the_check(engine: bk.Engine) -> None:
    seen: list[tuple[float, float]] = []
    backtest_world(engine, [("s", signal_every_tick(tp=130, sl=110))], minutes=5, price=123.0)
    engine.add_risk(risk_name="rk", validations=[
        lambda a: seen.append((a.pending_signal.price_open, a.current_price))])
    await run_bt(engine, "BTCUSDT", "s")
    assert seen and all(p is not None and p == c for p, c in seen)


async def test_returning_false_or_a_string_rejects(engine: bk.Engine) -> None:
    """Port extension: False (any falsy value but None) or a string rejects; None / truthy passes."""
    events: list[bk.RiskEvent] = []
    engine.listen_risk(events.append)
    validation_errors: list[BaseException] = []
    engine.listen_validation(validation_errors.append)
    cases: list[tuple[Any, bool, str]] = [
        (None, True, ""), (True, True, ""), (1, True, ""), (False, False, "N/A"), (0, False, "N/A"),
        ("spread too wide", False, "spread too wide"), ("  ", False, "N/A")]
    for i, (value, ok, comment) in enumerate(cases):
        engine.add_risk(risk_name=f"r{i}", validations=[lambda a, v=value: v])
        assert await gate(engine, f"r{i}", "BTCUSDT", "s").check(mk_row(), 100.0, T0) is ok, value
        if not ok:
            assert events[-1].comment == comment
    engine.add_risk(risk_name="noted", validations=[{"validate": lambda a: "reason", "note": "the note"}])
    await gate(engine, "noted", "BTCUSDT", "s").check(mk_row(), 100.0, T0)
    assert events[-1].comment == "the note"
    assert validation_errors == []  # only raised errors go to the validation channel


async def test_raising_callbacks_are_reported_and_do_not_change_the_decision(engine: bk.Engine) -> None:
    errors: list[BaseException] = []
    engine.listen_error(errors.append)

    async def bad(symbol: str, args: Any) -> None:
        raise RuntimeError(f"callback {symbol}")

    engine.add_risk(risk_name="rk", max_concurrent_positions=1, callbacks={"on_allowed": bad, "on_rejected": bad})
    assert await open_pos(engine, "rk", "s1", "BTCUSDT")
    assert not await open_pos(engine, "rk", "s2", "ETHUSDT")
    assert [str(e) for e in errors] == ["callback BTCUSDT", "callback ETHUSDT"]


async def test_facade_clear_and_dump(tmp_path: Any) -> None:
    engine = make_engine(tmp_path)
    backtest_world(engine, [("s", signal_every_tick())], minutes=5)
    engine.add_risk(risk_name="rk", max_concurrent_positions=0)
    await run_bt(engine, "BTCUSDT", "s")
    assert (await engine.risk.get_data("BTCUSDT", "s")).total_rejections > 0
    path = await engine.risk.dump("BTCUSDT", "s")
    assert path == tmp_path / "dump" / "risk" / "BTCUSDT_s.md"
    assert path.read_text().startswith("# Risk Rejection Report: BTCUSDT:s")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert await engine.risk.dump("BTCUSDT", "s", path=blocker / "sub") is None  # logged, never raised
    engine.risk.clear(symbol="BTCUSDT")
    assert (await engine.risk.get_data("BTCUSDT", "s")).total_rejections == 0


def test_module_level_api_is_bound_to_the_default_engine() -> None:
    assert bk.Risk is bk.default_engine.risk and bk.Partial is bk.default_engine.partial
    assert bk.PositionSize is bk.default_engine.position_size


# ------------------------------------------------------------------------------- live, atomic check-and-add
async def test_rule39_fifty_live_pairs_open_in_one_tick_but_only_three_positions(tmp_path: Any) -> None:
    clock = bk.VirtualClock(dt(T0))
    engine = make_engine(tmp_path, clock=clock)
    engine.use_persist(MemoryPersist())
    symbols = [f"C{i:02d}USDT" for i in range(50)]

    async def get_candles(symbol: str, interval: str, since: datetime, limit: int) -> list[bk.Candle]:
        await asyncio.sleep(0)
        start = int(since.timestamp() * 1000)
        return [candle(start + k * M, 100, 101, 99, 100) for k in range(limit)]

    open_now = 0
    max_open = 0
    opened_at: list[int] = []

    def on_open(symbol: str, row: bk.SignalRow, price: float, backtest: bool) -> None:
        nonlocal open_now, max_open
        open_now += 1
        max_open = max(max_open, open_now)
        opened_at.append(engine.now_ms())

    def on_close(symbol: str, row: bk.SignalRow, price: float, backtest: bool) -> None:
        nonlocal open_now
        open_now -= 1

    async def slow_validation(args: bk.RiskCheckArgs) -> None:
        await asyncio.sleep(0)  # without the lock, every pair would pass the count check here

    engine.add_exchange(exchange_name="mem", get_candles=get_candles)
    engine.add_strategy(strategy_name="s", interval="1m", risk_name="rk",
                        get_signal=lambda s, w: long(tp=110, sl=90, minutes=5),
                        callbacks={"on_open": on_open, "on_close": on_close})
    engine.add_risk(risk_name="rk", max_concurrent_positions=3, validations=[slow_validation])
    rejected_at_t0: list[str] = []
    engine.listen_risk(lambda e: rejected_at_t0.append(e.symbol) if e.timestamp == T0 else None)
    first_tick: set[str] = set()
    all_ticked = asyncio.Event()

    def on_result(r: bk.TickResult) -> None:
        first_tick.add(r.symbol)
        if len(first_tick) == len(symbols):
            all_ticked.set()

    engine.listen_signal_live(on_result)
    handles = [engine.live.background(s, strategy_name="s", exchange_name="mem") for s in symbols]
    await asyncio.wait_for(all_ticked.wait(), 30)
    assert opened_at.count(T0) == 3
    assert len(rejected_at_t0) == 47 and len(set(rejected_at_t0)) == 47
    for h in handles:
        h()
    await asyncio.wait_for(asyncio.gather(*(h.wait() for h in handles)), 30)
    assert max_open == 3 and open_now == 0
    assert await engine.risk.get_positions("rk") == []
    await engine.close()


async def test_live_restart_restores_risk_and_closes_it(tmp_path: Any) -> None:
    """A live position restored after a crash is counted by the profile and removed when it closes."""
    backend = MemoryPersist()
    clock = bk.VirtualClock(dt(T0))
    prices = {"p": 100.0}

    async def get_candles(symbol: str, interval: str, since: datetime, limit: int) -> list[bk.Candle]:
        start = int(since.timestamp() * 1000)
        p = prices["p"]
        return [candle(start + k * M, p, p, p, p) for k in range(limit)]

    def build(clk: bk.VirtualClock) -> bk.Engine:
        e = make_engine(tmp_path, clock=clk)
        e.use_persist(backend)
        e.add_exchange(exchange_name="mem", get_candles=get_candles)
        get_signal = once(long(tp=110, sl=90, minutes=600))

        e.add_strategy(strategy_name="s", interval="1m", get_signal=get_signal, risk_name="rk")
        e.add_risk(risk_name="rk", max_concurrent_positions=1)
        return e

    engine = build(clock)
    opened = asyncio.Event()
    engine.listen_signal_live(lambda r: opened.set() if r.action == "opened" else None)
    handle = engine.live.background("BTCUSDT", strategy_name="s", exchange_name="mem")
    await asyncio.wait_for(opened.wait(), 10)
    handle.task.cancel()  # a crash: no graceful stop
    with contextlib.suppress(asyncio.CancelledError):
        await handle.task
    assert ("risk", "rk") in backend.data
    backend.data.pop(("risk", "rk"))  # and the crash lost the risk write: the restore re-adds it

    engine2 = build(bk.VirtualClock(clock.now()))
    closed = asyncio.Event()
    engine2.listen_signal_live(lambda r: closed.set() if r.action == "closed" else None)
    h2 = engine2.live.background("BTCUSDT", strategy_name="s", exchange_name="mem")
    while not await engine2.risk.get_positions("rk"):
        await asyncio.sleep(0)
    assert len(await engine2.risk.get_positions("rk")) == 1
    prices["p"] = 111.0
    await asyncio.wait_for(closed.wait(), 10)
    h2()
    await h2.wait()
    assert await engine2.risk.get_positions("rk") == []
    assert ("risk", "rk") not in backend.data


async def test_a_cancelled_backtest_does_not_keep_its_slot(engine: bk.Engine) -> None:
    """Rule 12 under cancellation: a run killed mid-position releases the slot for later runs."""
    market = flat_market(("BTCUSDT",), 300)
    hang = asyncio.Event()
    fetching = asyncio.Event()

    async def get_candles(symbol: str, interval: str, since: datetime, limit: int) -> list[bk.Candle]:
        arr = market[symbol]
        i = max(0, (int(since.timestamp() * 1000) - arr[0].timestamp) // M)
        if limit > 5:  # the fast-forward fetch of the first strategy hangs until cancelled
            fetching.set()
            await hang.wait()
        return arr[i:i + limit]

    engine.add_exchange(exchange_name="mem", get_candles=get_candles)
    engine.add_strategy(strategy_name="a", interval="1m", get_signal=signal_every_tick(), risk_name="rk")
    engine.add_frame(frame_name="f", interval="1m", start_date=dt(T0), end_date=dt(T0) + timedelta(minutes=30))
    engine.add_risk(risk_name="rk", max_concurrent_positions=1)
    handle = engine.backtest.background("BTCUSDT", strategy_name="a", exchange_name="mem", frame_name="f")
    await asyncio.wait_for(fetching.wait(), 5)
    assert len(await engine.risk.get_positions("rk", backtest=True)) == 1  # open while the run lives
    handle.task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await handle.task
    assert await engine.risk.get_positions("rk", backtest=True) == []
    hang.set()
    assert await gate(engine, "rk", "ETHUSDT", "b").try_open(mk_row("ETHUSDT", "b"), 100.0, T0)


async def test_a_restored_position_whose_signal_was_never_saved_is_dropped(tmp_path: Any) -> None:
    """A crash between the risk write and the signal write leaves a position nothing will ever close;
    the restore drops it so it cannot block other pairs, and keeps positions whose signal exists."""
    backend = MemoryPersist()
    engine = make_engine(tmp_path)
    engine.use_persist(backend)
    engine.add_risk(risk_name="rk", max_concurrent_positions=2)
    await gate(engine, "rk", "BTCUSDT", "s", backtest=False).try_open(mk_row("BTCUSDT", "s", "kept"), 100.0, T0)
    await gate(engine, "rk", "ETHUSDT", "s", backtest=False).try_open(mk_row("ETHUSDT", "s", "orphan"), 100.0, T0)
    await save_signal(engine, mk_row("BTCUSDT", "s", "kept"))  # the ETH signal write was lost
    engine2 = make_engine(tmp_path)
    engine2.use_persist(backend)
    engine2.add_risk(risk_name="rk", max_concurrent_positions=2)
    assert [p.signal.id for p in await engine2.risk.get_positions("rk")] == ["kept"]
    assert await gate(engine2, "rk", "BNBUSDT", "s", backtest=False).try_open(mk_row("BNBUSDT", "s", "new"), 100.0, T0)

"""End-to-end backtests through `engine.backtest.run` over `bk.MemoryCandles`
([lifecycle §16](../docs/design/lifecycle.md#16-acceptance-criteria)).

Unless a test says otherwise: a fresh `Engine` with the reference test-suite configuration of
[lifecycle §1](../docs/design/lifecycle.md#1-configuration-used-by-the-lifecycle)
(`helpers.REFERENCE_CONFIG`, retry delay 0), symbol BTCUSDT, 1-minute frames from T0 =
2024-01-01T00:00Z, absolute 1-minute candles with volume 100 that start ten minutes before T0.

How this port resolves the fast-forward
([decisions 1–3](../docs/design/decisions.md#decision-1-no-look-ahead),
[8](../docs/design/decisions.md#decision-8-backtestrun-yields-every-finished-trade),
[9](../docs/design/decisions.md#decision-9-frames-resume-strictly-after-a-close)): a position opened at
tick `when` (price = VWAP of the 5 one-minute candles *closed* by `when`, i.e. the candle opening at
`when` is excluded) is checked on every 1m candle with `ts >= when`: expiry first (candle `ts >=
pending_at + m·60 000` → `time_expired` at the VWAP of the 5 candles before that candle, close_timestamp
= that candle's ts), then TP on high/low (TP wins over SL on the same candle), then SL; close_timestamp
= candle ts. A scheduled (limit) signal is checked per candle from `when`: timeout (`ts − scheduled_at
>= CC_SCHEDULE_AWAIT_MINUTES`) → cancelled; SL touched → cancelled (beats activation); `price_open`
touched → activated with `pending_at` = that candle's ts, and the same candle is checked for TP. The
backtest resumes at the first frame strictly after `close_timestamp`, and `Backtest.run` yields every
finished trade, including closes that the tick path found
([decision 8](../docs/design/decisions.md#decision-8-backtestrun-yields-every-finished-trade)).

Acceptance rules adapted to the decisions (each test's docstring says which and how):
* rule 33 ([decision 3](../docs/design/decisions.md#decision-3-one-expiry-rule),
  [PD-5](../docs/design/lifecycle.md#pd-5-expiry-asymmetry) +
  [decision 9](../docs/design/decisions.md#decision-9-frames-resume-strictly-after-a-close),
  [PD-4](../docs/design/lifecycle.md#pd-4-resume-after-a-fast-forward)): an immediate m = 5 entry
  expires at T0 + 5 min (ref. T0 + 4) and the next tick is T0 + 6 (ref. T0 + 5);
* rule 34 ([decision 2](../docs/design/decisions.md#decision-2-no-blind-spot-after-activation),
  [PD-3](../docs/design/lifecycle.md#pd-3-blind-spot-after-activation)): activation at minute 3 closes
  by TP at minute 4 (ref. minute 8), next tick minute 5 (ref. 9);
* rules 37 and 40 (and 36, 41, 42, 44–48) are live-mode rules and out of scope for this file;
* rule 39 ([decision 9](../docs/design/decisions.md#decision-9-frames-resume-strictly-after-a-close),
  [PD-4](../docs/design/lifecycle.md#pd-4-resume-after-a-fast-forward)): 15-minute frames, close at
  00:04 → next tick 00:15 (ref. 00:30);
* rule 53 ([delivery contract](../docs/design/public-api.md#delivery-contract)): a raising listener is
  reported but the tick is not failed, so the results are identical to a run without it;
* rule 59 ([decision 8](../docs/design/decisions.md#decision-8-backtestrun-yields-every-finished-trade),
  [PD-9](../docs/design/lifecycle.md#pd-9-closes-produced-by-backtest-ticks)): the close of a signal
  monitored by the tick path *is* yielded;
* rule 60 ([decisions 1](../docs/design/decisions.md#decision-1-no-look-ahead) and
  [2](../docs/design/decisions.md#decision-2-no-blind-spot-after-activation)): no blind spot, #1 closes
  by TP on minute 8 (ref. time_expired at 67); the pre-T0 candles are raised to the minute 0–6 level
  because the tick VWAP no longer includes the candle opening at T0 (ref. "VWAP 42 100" → port 42 500);
* "VWAP at when" numbers: every expected entry price is the VWAP of the candles before `when`.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import random
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from helpers import (
    T0,
    Harness,
    M,
    always,
    band_candles,
    candle,
    candles_from_path,
    concat,
    dt,
    expected_pnl,
    flat_candles,
    long,
    make_engine,
    ms,
    once,
    recorder,
    setup,
    short,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import backtest_kit as bk

SYMBOL = "BTCUSDT"


def pre(price: float, n: int = 10, spread: float = 1.0) -> list[bk.Candle]:
    """`n` flat candles ending just before T0 (the VWAP buffer of the first tick)."""
    return flat_candles(T0 - n * M, n, price, spread=spread)


def minute(result: Any) -> int:
    return (result.close_timestamp - T0) // M


def next_when_after(h: Harness, ts: int) -> int | None:
    later = [ms(w) for w in h.whens if ms(w) > ts]
    return later[0] if later else None


# ---------------------------------------------------------------------------------------------- immediate entries


async def test_immediate_long_take_profit() -> None:
    """Rules 15, 26-ish: a market long opens in the generating tick (scheduled_at == pending_at) at the
    VWAP of the candles closed by T0 and closes by TP on the first candle whose high reaches it."""
    engine = make_engine()
    candles = concat(pre(100), flat_candles(T0, 3, 100), [candle(T0 + 3 * M, 100, 106, 99, 105)],
                     flat_candles(T0 + 4 * M, 60, 105))
    h = setup(engine, candles, once(long(105, 95, 60)))
    results = await h.run()
    assert len(results) == 1
    r = results[0]
    assert isinstance(r, bk.ClosedResult)
    assert (r.close_reason, minute(r), r.current_price) == ("take_profit", 3, 105)
    assert r.pnl.pnl_percentage == pytest.approx(expected_pnl("long", 100, 105))
    # [decision 16](../docs/design/decisions.md#decision-16-pnl-prices-are-the-adjusted-ones): the PnL
    # carries the adjusted prices, the row and the result keep the raw ones
    assert (r.pnl.price_open, r.pnl.price_close) == pytest.approx((100 * 1.001, 105 * 0.999))
    assert r.signal.price_open == pytest.approx(100)
    opened = h.by_action("opened")[0]
    assert opened.current_price == pytest.approx(100)
    assert opened.signal.scheduled_at == opened.signal.pending_at == T0
    assert next_when_after(h, r.close_timestamp) == T0 + 4 * M
    assert h.errors == []


async def test_immediate_long_stop_loss() -> None:
    engine = make_engine()
    candles = concat(pre(100), flat_candles(T0, 2, 100), [candle(T0 + 2 * M, 100, 100, 94, 95)],
                     flat_candles(T0 + 3 * M, 60, 95))
    h = setup(engine, candles, once(long(105, 95, 60)))
    (r,) = await h.run()
    assert isinstance(r, bk.ClosedResult)
    assert (r.close_reason, minute(r), r.current_price) == ("stop_loss", 2, 95)
    assert r.pnl.pnl_percentage == pytest.approx(expected_pnl("long", 100, 95))
    assert r.pnl.pnl_percentage < 0


async def test_immediate_long_time_expired_rule_33_adapted() -> None:
    """Rule 33 adapted. Flat candles (h 101, l 99, c 100), m = 5, opened at T0: closed `time_expired`
    at 100 with PnL −0.399800 at T0 + 5 min
    ([decision 3](../docs/design/decisions.md#decision-3-one-expiry-rule): pending_at + m; reference
    T0 + 4) and the next get_signal is at T0 + 6 min
    ([decision 9](../docs/design/decisions.md#decision-9-frames-resume-strictly-after-a-close): first
    frame strictly after; reference T0 + 5)."""
    engine = make_engine()
    h = setup(engine, concat(pre(100), flat_candles(T0, 60, 100)), once(long(110, 90, 5)), minutes=10)
    (r,) = await h.run()
    assert isinstance(r, bk.ClosedResult)
    assert (r.close_reason, r.close_timestamp, r.current_price) == ("time_expired", T0 + 5 * M, 100)
    assert round(r.pnl.pnl_percentage, 6) == -0.399800
    assert [ms(w) for w in h.whens] == [T0, *range(T0 + 6 * M, T0 + 11 * M, M)]


async def test_tp_beats_sl_on_the_same_candle_rule_26() -> None:
    engine = make_engine()
    candles = concat(pre(42_000, spread=100), [candle(T0, 42_000, 43_500, 40_500, 42_000)],
                     flat_candles(T0 + M, 60, 42_000, spread=100))
    h = setup(engine, candles, once(long(43_000, 41_000, 60)))
    (r,) = await h.run()
    assert isinstance(r, bk.ClosedResult)
    assert (r.close_reason, r.close_timestamp) == ("take_profit", T0)  # the candle opening at `when`
    assert r.pnl.pnl_percentage > 0


@pytest.mark.parametrize(
    ("path_candle", "reason", "close_price"),
    [(candle(T0 + 2 * M, 100, 100, 94, 95), "take_profit", 95),
     (candle(T0 + 2 * M, 100, 106, 100, 105), "stop_loss", 105)],
)
async def test_short_mirror_tp_and_sl(path_candle: bk.Candle, reason: str, close_price: float) -> None:
    engine = make_engine()
    candles = concat(pre(100), flat_candles(T0, 2, 100), [path_candle], flat_candles(T0 + 3 * M, 60, 100))
    h = setup(engine, candles, once(short(95, 105, 60)))
    (r,) = await h.run()
    assert isinstance(r, bk.ClosedResult)
    assert (r.close_reason, minute(r), r.current_price) == (reason, 2, close_price)
    assert r.pnl.pnl_percentage == pytest.approx(expected_pnl("short", 100, close_price))
    assert (r.pnl.pnl_percentage > 0) is (reason == "take_profit")


async def test_short_stop_loss_about_minus_2_8_percent_rule_28() -> None:
    engine = make_engine()
    candles = concat(pre(42_000, spread=100), flat_candles(T0, 3, 42_000, spread=100),
                     band_candles(T0 + 3 * M, 60, 43_100, 42_900, 43_000))
    h = setup(engine, candles, once(short(41_000, 43_000, 60)))
    (r,) = await h.run()
    assert isinstance(r, bk.ClosedResult)
    assert r.close_reason == "stop_loss"
    assert r.pnl.pnl_percentage == pytest.approx(-2.786, abs=0.01)


async def test_short_time_expired() -> None:
    engine = make_engine()
    h = setup(engine, concat(pre(100), flat_candles(T0, 60, 100)), once(short(90, 110, 7)))
    (r,) = await h.run()
    assert isinstance(r, bk.ClosedResult)
    assert (r.close_reason, r.close_timestamp) == ("time_expired", T0 + 7 * M)
    assert round(r.pnl.pnl_percentage, 6) == -0.400200


async def test_limit_above_market_opens_immediately_at_the_requested_price_rule_16() -> None:
    engine = make_engine()
    log: list[tuple[str, tuple[Any, ...]]] = []
    h = setup(engine, concat(pre(42_000, spread=100), flat_candles(T0, 60, 42_000, spread=100)),
              once(long(44_000, 41_000, 10, price_open=43_000)), callbacks=recorder(log))
    (r,) = await h.run()
    assert [e.action for e in h.events[:1]] == ["opened"]
    assert h.events[0].current_price == 43_000 and h.events[0].signal.price_open == 43_000
    assert "on_schedule" not in [name for name, _ in log]
    assert isinstance(r, bk.ClosedResult)
    assert r.pnl.pnl_percentage == pytest.approx(expected_pnl("long", 43_000, r.current_price))


async def test_short_limit_below_market_opens_immediately_rule_16() -> None:
    engine = make_engine()
    h = setup(engine, concat(pre(42_000, spread=100), flat_candles(T0, 60, 42_000, spread=100)),
              once(short(40_000, 43_000, 10, price_open=41_000)))
    await h.run()
    assert h.events[0].action == "opened" and h.events[0].current_price == 41_000


@pytest.mark.parametrize(
    ("market", "signal"),
    [(40_000, long(43_000, 41_000, 60, price_open=42_000)),
     (45_000, short(41_000, 44_000, 60, price_open=42_000))],
)
async def test_immediate_entry_already_past_its_sl_is_refused_rule_14(market: float, signal: bk.SignalDto) -> None:
    engine = make_engine()
    h = setup(engine, concat(pre(market, spread=100), flat_candles(T0, 60, market, spread=100)), once(signal))
    assert await h.run() == []
    assert {e.action for e in h.events} == {"idle"}
    assert len(h.errors) == 1 and str(h.errors[0]).startswith("Invalid signal")


# ---------------------------------------------------------------------------------------------- scheduled entries


def rule_34_candles(activation: bk.Candle | None = None, after: list[bk.Candle] | None = None) -> list[bk.Candle]:
    """Flat 100 before minute 3, minute 3 low 94, then high 120 from minute 4."""
    act = activation or candle(T0 + 3 * M, 100, 100, 94, 96)
    rest = after if after is not None else [candle(T0 + (4 + i) * M, 100, 120, 99, 115) for i in range(80)]
    return concat(pre(100), flat_candles(T0, 3, 100), [act], rest)


async def test_scheduled_long_activates_then_tp_rule_34_adapted() -> None:
    """Rule 34 adapted
    ([decision 2](../docs/design/decisions.md#decision-2-no-blind-spot-after-activation)). Scheduled
    long price_open 95, TP 110, SL 90, m 30; VWAP at T0 = 100 (candles before T0). on_open with
    pending_at = T0 + 3 min (the activation candle); closed take_profit at 110 with close_timestamp T0 +
    4 min (reference: minute 8, because of the blind spot), PnL 15.358126; next tick T0 + 5 min
    (reference: T0 + 9)."""
    engine = make_engine()
    log: list[tuple[str, tuple[Any, ...]]] = []
    h = setup(engine, rule_34_candles(), once(long(110, 90, 30, price_open=95)), callbacks=recorder(log))
    (r,) = await h.run()
    assert h.events[0].action == "scheduled" and h.events[0].current_price == pytest.approx(100)
    opens = [args for name, args in log if name == "on_open"]
    assert len(opens) == 1 and opens[0][1].pending_at == T0 + 3 * M and opens[0][1].scheduled_at == T0
    assert isinstance(r, bk.ClosedResult)
    assert (r.close_reason, r.current_price, r.close_timestamp) == ("take_profit", 110, T0 + 4 * M)
    assert round(r.pnl.pnl_percentage, 6) == 15.358126
    assert r.signal.pending_at == T0 + 3 * M and r.signal.is_scheduled is False
    assert next_when_after(h, r.close_timestamp) == T0 + 5 * M


async def test_activation_candle_is_checked_for_tp_decision_2() -> None:
    engine = make_engine()
    h = setup(engine, rule_34_candles(activation=candle(T0 + 3 * M, 100, 111, 94, 100)),
              once(long(110, 90, 30, price_open=95)))
    (r,) = await h.run()
    assert isinstance(r, bk.ClosedResult)
    assert (r.close_reason, r.close_timestamp, r.signal.pending_at) == ("take_profit", T0 + 3 * M, T0 + 3 * M)


async def test_no_blind_spot_sl_right_after_activation_decision_2() -> None:
    """Reference [PD-3](../docs/design/lifecycle.md#pd-3-blind-spot-after-activation) ignores the 4
    candles after activation; here the SL on minute 4 closes at once."""
    engine = make_engine()
    after = [candle(T0 + 4 * M, 96, 96, 89, 90), *flat_candles(T0 + 5 * M, 80, 100)]
    h = setup(engine, rule_34_candles(after=after), once(long(110, 90, 30, price_open=95)))
    (r,) = await h.run()
    assert isinstance(r, bk.ClosedResult)
    assert (r.close_reason, r.close_timestamp) == ("stop_loss", T0 + 4 * M)
    assert r.pnl.pnl_percentage == pytest.approx(expected_pnl("long", 95, 90))


async def test_activation_one_minute_after_creation_rule_22() -> None:
    engine = make_engine()
    candles = concat(pre(100), flat_candles(T0, 1, 100), [candle(T0 + M, 100, 100, 95, 96)],
                     flat_candles(T0 + 2 * M, 3, 100), band_candles(T0 + 5 * M, 60, 112, 108, 111))
    h = setup(engine, candles, once(long(110, 90, 30, price_open=95)))
    (r,) = await h.run()
    assert isinstance(r, bk.ClosedResult)
    assert r.close_reason == "take_profit" and r.pnl.pnl_percentage > 0
    assert r.signal.pending_at == r.signal.scheduled_at + M
    assert isinstance(r.signal.scheduled_at, int) and isinstance(r.signal.pending_at, int)


@pytest.mark.parametrize("frame_minutes", [30, 150])
async def test_scheduled_cancelled_after_exactly_120_minutes_rule_23(frame_minutes: int) -> None:
    """Rule 23: never reached → cancelled with close_timestamp − scheduled_at = 120 min exactly, even
    for a 10-minute signal and a frame shorter than 120 minutes; on_cancel fires; next tick S + 121."""
    engine = make_engine()
    log: list[tuple[str, tuple[Any, ...]]] = []
    h = setup(engine, concat(pre(100), flat_candles(T0, 300, 100)), once(long(110, 80, 10, price_open=90)),
              minutes=frame_minutes, callbacks=recorder(log))
    (r,) = await h.run()
    assert isinstance(r, bk.CancelledResult)
    assert r.close_timestamp - r.signal.scheduled_at == 120 * M
    assert r.current_price == pytest.approx(100)
    assert [name for name, _ in log if name in ("on_cancel", "on_open")] == ["on_cancel"]
    if frame_minutes > 120:
        assert next_when_after(h, r.close_timestamp) == T0 + 121 * M


@pytest.mark.parametrize(
    ("signal", "before", "jump"),
    [(long(44_000, 40_000, 60, price_open=42_000), 45_000, candle(0, 39_000, 39_100, 38_900, 39_000)),
     (short(40_000, 44_000, 60, price_open=42_000), 40_000, candle(0, 45_000, 45_100, 44_900, 45_000)),
     # rule 21: one candle whose low crosses both the entry and the SL of a waiting long
     (long(44_000, 40_000, 60, price_open=42_000), 45_000, candle(0, 45_000, 45_000, 39_000, 39_500))],
)
async def test_sl_before_entry_cancels_rules_20_21(signal: bk.SignalDto, before: float, jump: bk.Candle) -> None:
    engine = make_engine()
    log: list[tuple[str, tuple[Any, ...]]] = []
    jumped = [candle(T0 + 3 * M, jump.open, jump.high, jump.low, jump.close)]
    candles = concat(pre(before, spread=100), flat_candles(T0, 3, before, spread=100), jumped,
                     flat_candles(T0 + 4 * M, 200, jump.close, spread=100))
    h = setup(engine, candles, once(signal), callbacks=recorder(log))
    (r,) = await h.run()
    assert isinstance(r, bk.CancelledResult) and r.close_timestamp == T0 + 3 * M
    names = [name for name, _ in log]
    assert "on_cancel" in names and "on_open" not in names


async def test_price_falling_through_entry_then_sl_activates_first_rule_19() -> None:
    engine = make_engine()
    log: list[tuple[str, tuple[Any, ...]]] = []
    falling = candles_from_path(T0, [42_000 - 200 * (i + 1) for i in range(30)])
    h = setup(engine, concat(pre(42_000, spread=0), falling), once(long(43_000, 40_000, 60, price_open=41_000)),
              callbacks=recorder(log))
    (r,) = await h.run()
    names = [name for name, _ in log]
    assert "on_open" in names and "on_cancel" not in names
    opened = next(args[1] for name, args in log if name == "on_open")
    assert opened.pending_at == T0 + 4 * M  # the candle whose low reaches 41 000 exactly
    assert isinstance(r, bk.ClosedResult) and r.close_reason == "stop_loss" and r.pnl.pnl_percentage < 0


async def test_gap_through_price_open_activates_rule_24() -> None:
    engine = make_engine()
    log: list[tuple[str, tuple[Any, ...]]] = []
    candles = concat(pre(45_000, spread=100), flat_candles(T0, 3, 45_000, spread=100),
                     flat_candles(T0 + 3 * M, 5, 42_000, spread=100),
                     band_candles(T0 + 8 * M, 200, 44_600, 44_400, 44_500))
    h = setup(engine, candles, once(long(44_000, 41_000, 60, price_open=43_000)), callbacks=recorder(log))
    (r,) = await h.run()
    opened = [args[1] for name, args in log if name == "on_open"]
    assert len(opened) == 1 and opened[0].pending_at == T0 + 3 * M
    assert isinstance(r, bk.ClosedResult) and (r.close_reason, r.close_timestamp) == ("take_profit", T0 + 8 * M)


async def test_scheduled_runs_its_full_lifetime_from_pending_at_rule_35() -> None:
    engine = make_engine()
    candles = concat(pre(100), flat_candles(T0, 30, 100), flat_candles(T0 + 30 * M, 300, 96))
    h = setup(engine, candles, once(long(120, 80, 60, price_open=97)))
    (r,) = await h.run()
    assert isinstance(r, bk.ClosedResult) and r.close_reason == "time_expired"
    assert r.signal.pending_at == T0 + 30 * M
    assert r.close_timestamp - r.signal.pending_at == 60 * M


async def test_zero_volume_candles_rule_31() -> None:
    """Zero volume: the VWAP falls back to an unweighted mean (candles with close = typical price,
    so the mean of closes of the reference and the mean of typical prices agree)."""
    engine = make_engine()

    def zero(cs: list[bk.Candle]) -> list[bk.Candle]:
        return [candle(c.timestamp, c.open, c.high, c.low, c.close, 0) for c in cs]

    candles = zero(rule_34_candles(activation=candle(T0 + 3 * M, 100, 100, 94, 97)))
    seen: list[float] = []

    async def get_signal(symbol: str, when: datetime) -> Any:
        seen.append(await bk.get_average_price(symbol))
        return long(110, 90, 30, price_open=95) if len(seen) == 1 else None

    h = setup(engine, candles, get_signal)
    (r,) = await h.run()
    assert seen[0] == pytest.approx(100)
    assert h.events[0].action == "scheduled"
    assert isinstance(r, bk.ClosedResult) and r.close_reason == "take_profit"


@pytest.mark.parametrize(
    ("tp", "expected"),
    [(42_210, 0.10), (90_000, 113.66), (42_084, -0.2002)],
    ids=["rule-11-half-percent", "rule-12-over-100-percent", "rule-30-break-even"],
)
async def test_take_profit_pnl_figures_rules_11_12_30(tp: float, expected: float) -> None:
    """Rule 11 runs under the default 0.5 % distance rule (strict comparison: exactly 0.5 % passes)."""
    config = {"CC_MIN_TAKEPROFIT_DISTANCE_PERCENT": 0.5} if tp == 42_210 else {}
    engine = make_engine(**config)
    candles = concat(pre(42_000, spread=100), flat_candles(T0, 2, 42_000, spread=100),
                     band_candles(T0 + 2 * M, 60, tp + 100, tp - 100, tp))
    h = setup(engine, candles, once(long(tp, 41_000, 60)))
    (r,) = await h.run()
    assert h.errors == []
    assert isinstance(r, bk.ClosedResult) and r.close_reason == "take_profit"
    assert r.pnl.pnl_percentage == pytest.approx(expected, abs=0.01)


async def test_three_signals_at_the_same_levels_in_time_order_rule_32() -> None:
    engine = make_engine()
    candles = concat(pre(100), flat_candles(T0, 2, 100), [candle(T0 + 2 * M, 100, 106, 99, 100)],
                     flat_candles(T0 + 3 * M, 3, 100), [candle(T0 + 6 * M, 100, 100, 94, 100)],
                     flat_candles(T0 + 7 * M, 3, 100), [candle(T0 + 10 * M, 100, 106, 99, 100)],
                     flat_candles(T0 + 11 * M, 100, 100))
    sig = long(105, 95, 60)
    h = setup(engine, candles, once(sig, sig, sig))
    results = await h.run()
    reasons = [r.close_reason for r in results if isinstance(r, bk.ClosedResult)]
    assert reasons == ["take_profit", "stop_loss", "take_profit"]
    assert [r.close_timestamp for r in results] == sorted(r.close_timestamp for r in results)


# ---------------------------------------------------------------------------------------------- rules 59 and 60


def rule_60_candles() -> list[bk.Candle]:
    def level(start: int, n: int, hi: float, lo: float, c: float) -> list[bk.Candle]:
        return band_candles(T0 + start * M, n, hi, lo, c)

    return concat(
        band_candles(T0 - 10 * M, 10, 42_600, 42_400, 42_500),  # adapted: was 42 000 ± 100
        level(0, 7, 42_600, 42_400, 42_500),
        level(7, 1, 42_100, 41_900, 42_000),
        level(8, 2, 43_100, 42_900, 43_000),
        level(10, 5, 42_300, 42_100, 42_200),
        level(15, 5, 42_600, 42_400, 42_500),
        level(20, 60, 42_300, 42_100, 42_200),
        level(80, 15, 42_050, 41_950, 42_000),
        level(95, 10, 42_300, 42_100, 42_200),
        level(105, 15, 43_200, 43_000, 43_100),
        level(120, 200, 42_100, 41_900, 42_000),
    )


async def test_no_blind_spot_rule_60_adapted() -> None:
    """Rule 60 adapted ([decisions 1](../docs/design/decisions.md#decision-1-no-look-ahead),
    [2](../docs/design/decisions.md#decision-2-no-blind-spot-after-activation)). Two scheduled longs
    price_open 42 000, TP 43 000, SL 41 000, m 60. #1 scheduled at T0 (VWAP 42 500 of the candles before
    T0; ref. 42 100), activated on minute 7 and closed take_profit on minute 8 (ref.: time_expired at
    67, the TP on minutes 8–9 fell in the blind spot), PnL 1.976395. #2 scheduled on minute 9 (VWAP 42
    500), activated on minute 80, closed take_profit on minute 105, PnL 1.976395 (as in the
    reference)."""
    engine = make_engine()
    sig = long(43_000, 41_000, 60, price_open=42_000)
    log: list[tuple[str, tuple[Any, ...]]] = []
    h = setup(engine, rule_60_candles(), once(sig, sig), minutes=180, callbacks=recorder(log))
    results = await h.run()
    scheduled = h.by_action("scheduled")
    assert [(s.signal.scheduled_at - T0) // M for s in scheduled] == [0, 9]
    assert [s.current_price for s in scheduled] == pytest.approx([42_500, 42_500])
    assert [(a[1].pending_at - T0) // M for n, a in log if n == "on_open"] == [7, 80]
    assert [(r.close_reason, minute(r)) for r in results if isinstance(r, bk.ClosedResult)] == [
        ("take_profit", 8), ("take_profit", 105)]
    assert [round(r.pnl.pnl_percentage, 6) for r in results if isinstance(r, bk.ClosedResult)] == [
        1.976395, 1.976395]


async def test_tick_path_close_is_yielded_rule_59_adapted() -> None:
    """Rule 59 adapted
    ([decision 8](../docs/design/decisions.md#decision-8-backtestrun-yields-every-finished-trade)). The
    engine clock stands at T0 + 20 min, so the fast-forward only gets candles closed by then and cannot
    decide; the position is then monitored tick by tick with the VWAP and its close (found on the tick
    at T0 + 28, when the VWAP first reaches TP 105) is yielded by Backtest.run (reference: published but
    not yielded)."""
    engine = make_engine(clock=bk.VirtualClock(dt(T0 + 20 * M)))
    candles = concat(pre(100), flat_candles(T0, 25, 100), flat_candles(T0 + 25 * M, 60, 110))
    log: list[tuple[str, tuple[Any, ...]]] = []
    h = setup(engine, candles, once(long(105, 90, 60)), minutes=40, callbacks=recorder(log))
    results = await h.run()
    # [decision 10](../docs/design/decisions.md#decision-10-on_active-fires-on-every-active-tick):
    # on_active fires on every active tick of the tick path
    assert len([n for n, _ in log if n == "on_active"]) == len(h.by_action("active")) > 0
    assert len(results) == 1
    r = results[0]
    assert isinstance(r, bk.ClosedResult)
    assert (r.close_reason, r.close_timestamp, r.current_price) == ("take_profit", T0 + 28 * M, 105)
    actions = [e.action for e in h.events]
    assert actions[0] == "opened" and "active" in actions and actions.count("closed") == 1
    assert h.errors == []


async def test_activation_on_the_last_available_candle_keeps_the_activated_row_decision_9() -> None:
    """[Decision 9](../docs/design/decisions.md#decision-9-frames-resume-strictly-after-a-close) /
    [PD-10](../docs/design/lifecycle.md#pd-10-activation-on-the-last-candle): when the data ends on the
    activation candle, the row that later closes is the activated one (is_scheduled False, pending_at =
    the activation candle), expiring at pending_at + m."""
    engine = make_engine()
    candles = concat(pre(100), flat_candles(T0, 5, 100), [candle(T0 + 5 * M, 100, 100, 94, 96)])
    h = setup(engine, candles, once(long(110, 90, 10, price_open=95)), minutes=30)
    results = await h.run()
    closed = [r for r in results if isinstance(r, bk.ClosedResult)]
    assert len(closed) == 1
    assert closed[0].signal.is_scheduled is False and closed[0].signal.pending_at == T0 + 5 * M
    assert closed[0].close_reason == "time_expired"
    assert closed[0].close_timestamp >= closed[0].signal.pending_at + 10 * M
    assert h.by_action("cancelled") == []


async def test_fill_on_the_last_candle_is_never_monitored_before_it_existed() -> None:
    """Regression: the fast-forward filled the limit order on its last candle (T0 + 5) without deciding
    it; the tick path must take over strictly after the fill. Before the fix the loop resumed at
    T0 + 1, whose VWAP (102, from candles before the fill) was above TP 101, and "closed" the position
    by take_profit at T0 + 1, four minutes before it was opened."""
    engine = make_engine()
    candles = concat(pre(102), flat_candles(T0, 5, 102), [candle(T0 + 5 * M, 100, 100, 94, 96)])
    h = setup(engine, candles, once(long(101, 90, 10, price_open=95)), minutes=20)
    (r,) = await h.run()
    assert isinstance(r, bk.ClosedResult)
    assert r.signal.pending_at == T0 + 5 * M
    assert r.close_timestamp >= r.signal.pending_at + M
    assert (r.close_reason, r.close_timestamp) == ("time_expired", T0 + 15 * M)
    assert [e.action for e in h.events[:2]] == ["scheduled", "active"]
    assert len(h.by_action("active")) == 9  # ticks T0+6 … T0+14


# ---------------------------------------------------------------------------------------------- one at a time


def wavy(n: int, start: int = T0 - 10 * M, seed: int = 7) -> list[bk.Candle]:
    rng = random.Random(seed)
    closes, price = [], 100.0
    for i in range(n):
        price = max(50.0, price + 2.0 * math.sin(i / 9) + rng.uniform(-0.8, 0.8))
        closes.append(round(price, 2))
    return candles_from_path(start, closes, spread=0.3)


async def test_at_most_one_position_with_an_always_signal_strategy_rule_25() -> None:
    engine = make_engine()

    async def get_signal(symbol: str, when: datetime) -> Any:
        price = await bk.get_average_price(symbol)
        return long(price * 1.01, price * 0.99, 15)

    h = setup(engine, wavy(400), get_signal, minutes=300)
    results = await h.run()
    non_idle = [e for e in h.events if e.action != "idle"]
    assert len(results) >= 5
    # strictly alternating opened → closed, each pair about one id
    for opened, closed in zip(non_idle[::2], non_idle[1::2], strict=True):
        assert (opened.action, closed.action) == ("opened", "closed")
        assert opened.signal.id == closed.signal.id
    assert results == [e for e in h.events if e.action in ("closed", "cancelled")]
    assert [r.close_timestamp for r in results] == sorted(r.close_timestamp for r in results)
    # no tick happened while a position was open, and ticks resume strictly after each close
    for r in results:
        inside = [w for w in h.whens if r.signal.pending_at < ms(w) <= r.close_timestamp]
        assert inside == []
        nxt = next_when_after(h, r.close_timestamp)
        if nxt is not None:
            assert nxt == r.close_timestamp + M


async def test_15_minute_frames_resume_at_the_next_frame_rule_39_adapted() -> None:
    """Rule 39 adapted
    ([decision 9](../docs/design/decisions.md#decision-9-frames-resume-strictly-after-a-close),
    [PD-4](../docs/design/lifecycle.md#pd-4-resume-after-a-fast-forward)): opened at 00:00 and closed at
    00:04 → next tick 00:15 (reference: 00:30, because it also skipped the first frame after the
    close)."""
    engine = make_engine()
    h = setup(engine, concat(pre(100), flat_candles(T0, 200, 100)), always(long(110, 90, 4)),
              minutes=60, frame_interval="15m")
    results = await h.run()
    assert [minute(r) for r in results] == [4, 19, 34, 49, 64]
    assert [(ms(w) - T0) // M for w in h.whens] == [0, 15, 30, 45, 60]


async def test_throttle_by_strategy_interval_counts_failed_attempts_rule_38() -> None:
    """Rule 38 in a backtest: interval 5m with 1-minute frames calls get_signal at 0, 5, 10, 15, 20; an
    attempt that raised still consumes its slot."""
    engine = make_engine()
    calls: list[int] = []

    def get_signal(symbol: str, when: datetime) -> None:
        calls.append((ms(when) - T0) // M)
        if len(calls) == 1:
            raise RuntimeError("first attempt fails")

    h = setup(engine, concat(pre(100), flat_candles(T0, 60, 100)), get_signal, minutes=22, interval="5m")
    assert await h.run() == []
    assert calls == [0, 5, 10, 15, 20]
    assert len(h.errors) == 1


# ---------------------------------------------------------------------------------------------- validation, errors


BAD_SIGNALS = [
    ("rule-1-long-tp-below-open", long(40_000, 39_000, 60, price_open=41_000), {}),
    ("rule-2-inverted-short", short(44_000, 45_000, 60, price_open=43_000), {}),
    ("rule-3-long-sl-at-open", long(43_000, 42_000, 60), {}),
    ("rule-3-long-sl-above-open", long(43_000, 42_500, 60), {}),
    ("rule-4-sl-zero", long(43_000, 0, 60), {}),
    ("rule-5-minutes-zero", long(43_000, 41_000, 0), {}),
    ("rule-5-minutes-negative", long(43_000, 41_000, -5), {}),
    ("rule-6-tp-equals-open", long(42_000, 41_000, 60, price_open=42_000), {}),
    ("rule-7-negative-open", long(43_000, 41_000, 60, price_open=-1), {}),
    ("rule-7-nan-open", long(43_000, 41_000, 60, price_open=math.nan), {}),
    ("rule-7-infinite-tp", long(math.inf, 41_000, 60), {}),
    ("rule-8-min-tp-0.3", long(42_042, 41_000, 60), {"CC_MIN_TAKEPROFIT_DISTANCE_PERCENT": 0.3}),
    ("rule-9-max-sl-20", long(43_000, 20_160, 60), {"CC_MAX_STOPLOSS_DISTANCE_PERCENT": 20}),
    ("rule-10-max-lifetime", long(43_000, 41_000, 43_201), {"CC_MAX_SIGNAL_LIFETIME_MINUTES": 43_200}),
]


@pytest.mark.parametrize(("signal", "config"), [b[1:] for b in BAD_SIGNALS], ids=[b[0] for b in BAD_SIGNALS])
async def test_every_validation_failure_is_one_error_and_no_trade_rules_1_to_10_13(
    signal: bk.SignalDto, config: dict[str, Any]
) -> None:
    engine = make_engine(**config)
    log: list[tuple[str, tuple[Any, ...]]] = []
    h = setup(engine, concat(pre(42_000, spread=100), flat_candles(T0, 60, 42_000, spread=100)), once(signal),
              minutes=10, callbacks=recorder(log))
    assert await h.run() == []
    assert {e.action for e in h.events} == {"idle"}
    assert len(h.errors) == 1
    assert isinstance(h.errors[0], bk.SignalValidationError)
    assert str(h.errors[0]).startswith("Invalid signal")
    assert not {"on_open", "on_schedule", "on_write"} & {name for name, _ in log}


async def test_get_signal_raising_is_reported_and_the_run_completes() -> None:
    engine = make_engine()

    def get_signal(symbol: str, when: datetime) -> None:
        raise ValueError(f"boom at {when:%H:%M}")

    h = setup(engine, concat(pre(100), flat_candles(T0, 60, 100)), get_signal, minutes=4)
    assert await h.run() == []
    assert [str(e) for e in h.errors] == [f"boom at 00:0{i}" for i in range(5)]
    assert {e.action for e in h.events} == {"idle"} and len(h.events) == 5


async def test_get_signal_timeout_cancels_the_call_decision_9() -> None:
    """[PD-8](../docs/design/lifecycle.md#pd-8-get_signal-timeout) /
    [decision 9](../docs/design/decisions.md#decision-9-frames-resume-strictly-after-a-close): the
    wall-clock asyncio timeout (0.05 s here, the only real wait of this file) raises SignalTimeoutError
    on listen_error and cancels the user's coroutine."""
    engine = make_engine(CC_MAX_SIGNAL_GENERATION_SECONDS=0.05)
    never = asyncio.Event()
    cancelled: list[bool] = []

    async def get_signal(symbol: str, when: datetime) -> None:
        try:
            await never.wait()
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    h = setup(engine, concat(pre(100), flat_candles(T0, 60, 100)), get_signal, minutes=1, frame_interval="1h")
    assert await h.run() == []
    assert len(h.errors) == 1 and isinstance(h.errors[0], bk.SignalTimeoutError)
    assert "CC_MAX_SIGNAL_GENERATION_SECONDS" in str(h.errors[0])
    assert cancelled == [True]
    assert [e.action for e in h.events] == ["idle"]


async def test_exchange_that_always_raises_completes_with_errors_reported_rule_52() -> None:
    engine = make_engine()

    async def broken(symbol: str, interval: str, since: datetime, limit: int) -> list[Any]:
        raise ConnectionError("exchange down")

    h = setup(engine, None, always(long(110, 90, 5)), minutes=5, get_candles=broken)
    done: list[bk.DoneEvent] = []
    engine.listen_done_backtest(done.append)
    handle = engine.backtest.background(SYMBOL, strategy_name="s", exchange_name="mem", frame_name="f")
    await handle.wait()
    assert len(done) == 1
    assert len(h.errors) >= 6  # at least one per frame
    assert all(isinstance(e, bk.BacktestKitError) for e in h.errors)
    assert any("exchange down" in str(e) for e in h.errors)
    assert h.events == []


async def test_anomalously_low_candle_is_rejected_naming_its_index_rule_54() -> None:
    engine = make_engine()
    good = concat(pre(42_000, spread=100), flat_candles(T0, 60, 42_000, spread=100))

    async def source(symbol: str, interval: str, since: datetime, limit: int) -> list[bk.Candle]:
        start = ms(since)
        out = [c for c in good if c.timestamp >= start][:limit]
        if len(out) > 3:
            out[3] = candle(out[3].timestamp, 0.1, 0.12, 0.08, 0.1)
        return out

    h = setup(engine, None, always(None), minutes=0 + 1, frame_interval="1h", get_candles=source)
    await h.run()
    assert h.errors and all(isinstance(e, bk.CandleError) for e in h.errors)
    assert "anomalously low price" in str(h.errors[0]) and "#3" in str(h.errors[0])


async def test_strategy_returning_none_yields_nothing_rule_55() -> None:
    engine = make_engine()
    h = setup(engine, concat(pre(100), flat_candles(T0, 60, 100)), always(None), minutes=30)
    assert await h.run() == []
    assert len(h.whens) == 31 and h.errors == []


async def test_raising_listener_does_not_change_the_results_rule_53_adapted() -> None:
    """Rule 53 adapted ([delivery contract](../docs/design/public-api.md#delivery-contract)): the error
    reaches listen_error, but the tick is not failed, so the run's results equal those of a run without
    the raising listener."""

    async def run(raising: bool) -> tuple[list[Any], list[BaseException]]:
        engine = make_engine()

        async def get_signal(symbol: str, when: datetime) -> Any:
            p = await bk.get_average_price(symbol)
            return long(p * 1.01, p * 0.99, 20) if (ms(when) // M) % 3 == 0 else short(p * 0.99, p * 1.01, 20)

        h = setup(engine, wavy(200), get_signal, minutes=150)
        if raising:
            def bad(event: Any) -> None:
                raise RuntimeError("listener failed")

            engine.listen_signal_backtest(bad)
        results = await h.run()
        key = [(r.action, r.close_timestamp, getattr(r, "close_reason", None), r.current_price,
                r.signal.price_open) for r in results]
        return key, h.errors

    clean, clean_errors = await run(False)
    noisy, noisy_errors = await run(True)
    assert clean and noisy == clean
    assert clean_errors == []
    assert noisy_errors and all(str(e) == "listener failed" for e in noisy_errors)


async def test_breaking_out_after_two_results_consumes_exactly_two_rule_56() -> None:
    engine = make_engine()
    h = setup(engine, concat(pre(100), flat_candles(T0, 200, 100)), always(long(110, 90, 2)), minutes=100)
    got: list[bk.FinishedResult] = []
    run = engine.backtest.run(SYMBOL, strategy_name="s", exchange_name="mem", frame_name="f")
    async for r in run:
        got.append(r)
        if len(got) == 2:
            break
    await run.aclose()  # type: ignore[attr-defined]
    assert len(got) == 2
    calls = len(h.whens)
    await asyncio.sleep(0)
    assert len(h.whens) == calls == 2
    assert [i.status for i in await engine.backtest.list()] == ["done"]


async def test_progress_is_non_decreasing_and_ends_at_one_rule_57() -> None:
    engine = make_engine()
    progress: list[bk.ProgressEvent] = []
    engine.listen_progress(progress.append)
    h = setup(engine, concat(pre(100), flat_candles(T0, 100, 100)), always(long(110, 90, 3)), minutes=40)
    await h.run()
    assert progress[-1].progress == 1.0 and progress[-1].processed_frames == progress[-1].total_frames == 41
    assert all(a.processed_frames <= b.processed_frames and a.progress <= b.progress
               for a, b in itertools.pairwise(progress))
    assert {(p.symbol, p.strategy_name, p.exchange_name) for p in progress} == {(SYMBOL, "s", "mem")}


# ---------------------------------------------------------------------------------------------- callbacks and facades


async def test_callback_order_scheduled_activates_and_closes_rules_50_51() -> None:
    """Rule 51: on_schedule → on_write(row) → on_open → on_close → on_write(None).
    [Decision 10](../docs/design/decisions.md#decision-10-on_active-fires-on-every-active-tick)'s
    on_active fires on active *ticks*; a fast-forward has none, so it does not appear here."""
    engine = make_engine()
    log: list[tuple[str, tuple[Any, ...]]] = []
    h = setup(engine, rule_34_candles(), once(long(110, 90, 30, price_open=95)), callbacks=recorder(log))
    await h.run()
    life = [(n, a) for n, a in log if n in ("on_schedule", "on_write", "on_open", "on_close", "on_active")]
    assert [n for n, _ in life] == ["on_schedule", "on_write", "on_open", "on_close", "on_write"]
    assert life[1][1][1] is not None and life[1][1][1].pending_at == T0 + 3 * M
    assert life[4][1][1] is None
    ticks = [a[1].action for n, a in log if n == "on_tick"]
    assert ticks[:2] == ["scheduled", "closed"]


async def test_on_write_once_per_open_and_close_none_for_schedules_rule_50() -> None:
    engine = make_engine()
    log: list[tuple[str, tuple[Any, ...]]] = []
    # two limit entries that time out (minutes 0 and 121), then three market trades
    signals = [long(110, 80, 5, price_open=90), long(110, 80, 5, price_open=90),
               long(110, 90, 5), long(110, 90, 5), long(110, 90, 5)]
    h = setup(engine, concat(pre(100), flat_candles(T0, 400, 100)), once(*signals), minutes=300,
              callbacks=recorder(log))
    results = await h.run()
    assert [r.action for r in results] == ["cancelled", "cancelled", "closed", "closed", "closed"]
    writes = [a[1] for n, a in log if n == "on_write"]
    assert len([w for w in writes if w is not None]) == 3
    assert len([w for w in writes if w is None]) == 3


async def test_background_done_once_after_all_signal_events_and_cancel_twice() -> None:
    engine = make_engine()
    seen: list[str] = []
    h = setup(engine, concat(pre(100), flat_candles(T0, 100, 100)), always(long(110, 90, 3)), minutes=30)
    engine.listen_signal_backtest(lambda e: seen.append(e.action))
    engine.listen_done_backtest(lambda e: seen.append("done"))
    handle = engine.backtest.background(SYMBOL, strategy_name="s", exchange_name="mem", frame_name="f")
    await handle.wait()
    handle()
    handle()
    await engine.bus.drain()
    assert seen.count("done") == 1 and seen[-1] == "done"
    assert seen.count("closed") == len(h.by_action("closed")) > 0


async def test_cancel_during_a_background_run_ends_it_after_the_open_trade_decision_6() -> None:
    engine = make_engine()
    holder: list[bk.CancelHandle] = []
    done: list[bk.DoneEvent] = []
    engine.listen_done_backtest(done.append)
    h = setup(engine, concat(pre(100), flat_candles(T0, 200, 100)), always(long(110, 90, 3)), minutes=100)

    def on_event(event: bk.TickResult) -> None:
        if event.action == "opened":
            holder[0]()
            holder[0]()  # safe twice

    engine.listen_signal_backtest(on_event)
    holder.append(engine.backtest.background(SYMBOL, strategy_name="s", exchange_name="mem", frame_name="f"))
    await holder[0].wait()
    await engine.bus.drain()
    assert [e.action for e in h.events] == ["opened", "closed"]  # the open trade ran to its expiry
    assert len(done) == 1


async def test_get_data_inside_a_listener_already_counts_the_closed_result() -> None:
    engine = make_engine()
    counts: list[tuple[int, int]] = []
    closed_so_far = 0

    async def listener(event: bk.TickResult) -> None:
        nonlocal closed_so_far
        if event.action == "closed":
            closed_so_far += 1
            stats = await engine.backtest.get_data(SYMBOL, "s")
            counts.append((closed_so_far, stats.total_trades))

    h = setup(engine, concat(pre(100), flat_candles(T0, 100, 100)), always(long(110, 90, 3)), minutes=20)
    engine.listen_signal_backtest(listener)
    results = await h.run()
    assert counts and all(a == b for a, b in counts)
    assert (await engine.backtest.get_data(SYMBOL, "s")).total_trades == len(results)


async def test_dump_writes_the_report_under_the_cwd_and_under_dump_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    engine = make_engine()  # default dump_dir "./dump"
    setup(engine, concat(pre(100), flat_candles(T0, 100, 100)), always(long(110, 90, 3)), minutes=20)
    async for _ in engine.backtest.run(SYMBOL, strategy_name="s", exchange_name="mem", frame_name="f"):
        pass
    path = await engine.backtest.dump(SYMBOL, "s")
    assert path is not None
    target = tmp_path / "dump" / "backtest" / f"{SYMBOL}_s.md"
    assert target.is_file() and Path(path).resolve() == target.resolve()
    assert "s" in target.read_text()

    other = make_engine(tmp_path / "custom")
    setup(other, concat(pre(100), flat_candles(T0, 100, 100)), always(long(110, 90, 3)), minutes=20)
    async for _ in other.backtest.run(SYMBOL, strategy_name="s", exchange_name="mem", frame_name="f"):
        pass
    path2 = await other.backtest.dump(SYMBOL, "s")
    assert path2 is not None and Path(path2).resolve() == (tmp_path / "custom" / "dump" / "backtest" / f"{SYMBOL}_s.md")


async def test_partial_profit_callbacks_on_a_rising_price_rule_43() -> None:
    engine = make_engine()
    log: list[tuple[str, tuple[Any, ...]]] = []
    rising = candles_from_path(T0 - 10 * M, [100 + 0.25 * i for i in range(200)])
    h = setup(engine, rising, once(long(108, 95, 120)), callbacks=recorder(log))
    (r,) = await h.run()
    assert isinstance(r, bk.ClosedResult) and r.close_reason == "take_profit"
    profit = [a[3] for n, a in log if n == "on_partial_profit"]
    assert len(profit) >= 5
    assert all(0 <= p <= 100 for p in profit) and all(a < b for a, b in itertools.pairwise(profit))
    assert all(a[4] is True for n, a in log if n == "on_partial_profit")
    assert not [n for n, _ in log if n == "on_partial_loss"]


# ---------------------------------------------------------------------------------------------- hypothesis (a)


@st.composite
def ohlcv(draw: st.DrawFn, ts: int) -> bk.Candle:
    o = draw(st.integers(80, 120))
    c = draw(st.integers(80, 120))
    up, down = draw(st.integers(0, 5)), draw(st.integers(0, 5))
    v = draw(st.sampled_from([0, 1, 50, 100, 400]))
    return candle(ts, o, max(o, c) + up, min(o, c) - down, c, v)


N_CANDLES = 70
FIRST = T0 - 30 * M


@st.composite
def look_ahead_case(draw: st.DrawFn) -> tuple[list[bk.Candle], list[bk.Candle], int, int]:
    original = [draw(ohlcv(FIRST + i * M)) for i in range(N_CANDLES)]
    when = FIRST + draw(st.integers(6, 45)) * M + draw(st.sampled_from([0, 1, 30_000, 59_999]))
    mutated = [draw(ohlcv(c.timestamp)) if c.timestamp + M > when else c for c in original]
    return original, mutated, when, draw(st.integers(0, 4))


async def _one_tick(candles: list[bk.Candle], when: int, mode: int) -> tuple[list[Any], Any]:
    engine = make_engine()
    views: list[Any] = []

    async def get_signal(symbol: str, at: datetime) -> Any:
        one = await bk.get_candles(symbol, "1m", 10)
        five = await bk.get_candles(symbol, "5m", 3)
        quarter = await bk.get_candles(symbol, "15m", 2)
        hour = await bk.get_candles(symbol, "1h", 1)
        avg = await bk.get_average_price(symbol)
        views.append((one, five, quarter, hour, avg, bk.get_date()))
        last = one[-1].close
        if mode == 0:
            return None
        if mode == 1:
            return long(avg * 1.05, avg * 0.95, 10) if last >= avg else short(avg * 0.95, avg * 1.05, 10)
        if mode == 2:
            return long(avg * 1.05, avg * 0.8, 10, price_open=min(c.low for c in one))
        if mode == 3:
            return short(avg * 0.95, avg * 1.2, 10, price_open=max(c.high for c in one))
        return long(avg * 1.01, last, 10)  # often invalid: depends on the data seen

    start = dt(when)
    engine.add_exchange(exchange_name="mem", get_candles=bk.MemoryCandles({SYMBOL: candles}))
    engine.add_strategy(strategy_name="s", interval="1m", get_signal=get_signal)
    engine.add_frame(frame_name="f", interval="1h", start_date=start, end_date=start + timedelta(minutes=1))
    events: list[bk.TickResult] = []
    errors: list[str] = []
    engine.listen_signal_backtest(events.append)
    engine.listen_error(lambda e: errors.append(type(e).__name__))
    async for _ in engine.backtest.run(SYMBOL, strategy_name="s", exchange_name="mem", frame_name="f"):
        pass
    tick = events[0]
    signal = tick.signal
    decision = (tick.action, tick.current_price,
                None if signal is None else {f: getattr(signal, f) for f in signal.__struct_fields__ if f != "id"},
                errors[:1])
    return views, decision


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=look_ahead_case())
def test_no_look_ahead_decision_1(case: tuple[list[bk.Candle], list[bk.Candle], int, int]) -> None:
    """HYPOTHESIS (a), [decision 1](../docs/design/decisions.md#decision-1-no-look-ahead): changing any
    candle with ts + 60 000 > when (not yet closed at the tick) changes neither what get_signal sees
    (get_candles of 1m/5m/15m/1h, get_average_price) nor the tick's decision (action, price, the signal
    row except its random id, the error raised)."""
    original, mutated, when, mode = case
    seen_a, decision_a = asyncio.run(_one_tick(original, when, mode))
    seen_b, decision_b = asyncio.run(_one_tick(mutated, when, mode))
    assert seen_a == seen_b
    assert decision_a == decision_b
    one = seen_a[0][0]
    assert one and one[-1].timestamp + M <= when


# ---------------------------------------------------------------------------------------------- hypothesis (c)


@st.composite
def machine_case(draw: st.DrawFn) -> dict[str, Any]:
    n = draw(st.integers(80, 220))
    moves = draw(st.lists(st.floats(-1.5, 1.5, allow_nan=False), min_size=n, max_size=n))
    closes, price = [], 100.0
    for step in moves:
        price = min(140.0, max(60.0, price + step))
        closes.append(round(price, 3))
    plans = draw(st.lists(
        st.tuples(st.sampled_from(["none", "long", "short", "long_limit", "short_limit", "bad"]),
                  st.floats(0.2, 4.0), st.floats(0.2, 4.0), st.integers(1, 30), st.floats(0.0, 3.0)),
        min_size=1, max_size=12))
    return {"closes": closes, "plans": plans, "await": draw(st.integers(2, 30)),
            "interval": draw(st.sampled_from(["1m", "3m"])), "frame": draw(st.integers(20, n - 5))}


def check_state_machine(events: list[bk.TickResult]) -> None:
    state, current = "idle", None
    ids: set[str] = set()
    for e in events:
        sid = None if e.signal is None else e.signal.id
        if state == "idle":
            assert e.action in ("idle", "scheduled", "opened"), (state, e.action)
            if e.action != "idle":
                assert sid not in ids, "ids are unique"
                ids.add(sid)  # type: ignore[arg-type]
                state, current = ("scheduled" if e.action == "scheduled" else "open"), sid
        elif state == "scheduled":
            assert e.action in ("active", "opened", "cancelled", "closed"), (state, e.action)
            assert sid == current
            if e.action in ("cancelled", "closed"):
                state, current = "idle", None
            elif e.action == "opened" or (e.action == "active" and not e.signal.is_scheduled):  # type: ignore[union-attr]
                state = "open"
        else:
            assert e.action in ("active", "closed"), (state, e.action)
            assert sid == current
            if e.action == "closed":
                state, current = "idle", None


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=machine_case())
def test_results_follow_the_state_machine(case: dict[str, Any]) -> None:
    """HYPOTHESIS (c): per pair, the listen_signal_backtest events form idle* → (scheduled →
    (cancelled | [activation: no event in a backtest] closed) | opened → closed) …; tick-path
    fallbacks (active, opened after a scheduled) are allowed when the candles ran out. Never two open
    signals, a close only for the open/scheduled id, ids unique; Backtest.run yields exactly the
    closed/cancelled events, in time order, and ticks resume strictly after each close."""

    async def scenario() -> None:
        engine = make_engine(CC_SCHEDULE_AWAIT_MINUTES=case["await"])
        candles = candles_from_path(T0 - 10 * M, case["closes"], spread=0.4)
        plans = list(case["plans"])
        calls = 0

        async def get_signal(symbol: str, when: datetime) -> Any:
            nonlocal calls
            kind, tp, sl, m, off = plans[calls % len(plans)]
            calls += 1
            p = await bk.get_average_price(symbol)
            if kind == "none":
                return None
            if kind == "long":
                return long(p * (1 + tp / 100), p * (1 - sl / 100), m)
            if kind == "short":
                return short(p * (1 - tp / 100), p * (1 + sl / 100), m)
            if kind == "long_limit":
                o = p * (1 - off / 100)
                return long(o * (1 + tp / 100), o * (1 - sl / 100), m, price_open=o)
            if kind == "short_limit":
                o = p * (1 + off / 100)
                return short(o * (1 - tp / 100), o * (1 + sl / 100), m, price_open=o)
            return long(p * (1 - tp / 100), p * (1 - sl / 100), m)  # TP below open: invalid

        h = setup(engine, candles, get_signal, minutes=case["frame"], interval=case["interval"])
        results = await h.run()
        check_state_machine(h.events)
        assert results == [e for e in h.events if e.action in ("closed", "cancelled")]
        stamps = [r.close_timestamp for r in results]
        assert stamps == sorted(stamps)
        calls = [ms(w) for w in h.whens]
        for r in results:
            # get_signal generated the signal at scheduled_at; its next call is strictly after the close
            later = calls[calls.index(r.signal.scheduled_at) + 1:]
            assert not later or later[0] > r.close_timestamp
            if isinstance(r, bk.ClosedResult):
                s = r.signal
                assert r.close_timestamp >= s.pending_at >= s.scheduled_at
                if r.close_reason == "take_profit":
                    assert r.current_price == s.price_take_profit
                elif r.close_reason == "stop_loss":
                    assert r.current_price == s.price_stop_loss
        assert all(isinstance(e, bk.SignalValidationError) for e in h.errors)

    asyncio.run(scenario())

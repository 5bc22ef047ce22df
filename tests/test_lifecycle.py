"""Pure signal maths of `backtest_kit.engine.lifecycle` (no engine, no event loop).

How this port resolves the fast-forward
([decisions 1–3](../docs/design/decisions.md#decision-1-no-look-ahead), which win over
[lifecycle §9](../docs/design/lifecycle.md#9-backtest)):

* A position opened at tick `when` (entry price = VWAP of the N = 5 one-minute candles *closed* by
  `when`) is checked on every 1m candle with `ts >= when`, in this order per candle: expiry first
  (candle `ts >= pending_at + m·60 000` → `time_expired` at the VWAP of the 5 candles *before* that
  candle, `close_timestamp` = that candle's ts), then take profit on the high/low (TP wins over SL on
  the same candle), then stop loss; `close_timestamp` = the candle's ts. There is no VWAP buffer that
  skips candles and no blind spot after an activation
  ([decision 2](../docs/design/decisions.md#decision-2-no-blind-spot-after-activation)).
* A scheduled (limit) signal is checked per candle from `when`: timeout (`ts − scheduled_at >=
  CC_SCHEDULE_AWAIT_MINUTES`) → cancelled; SL touched → cancelled (beats activation on the same
  candle); `price_open` touched (equality included) → activated with `pending_at` = that candle's ts,
  and that same candle is then checked for TP.
* The tick path compares the tick VWAP with TP/SL (`close_on_price`, `scheduled_on_price`), expiry
  at `now − pending_at >= m` minutes (one expiry rule in both modes,
  [decision 3](../docs/design/decisions.md#decision-3-one-expiry-rule)).
"""

from __future__ import annotations

import math

import pytest
from helpers import T0, M, candle, row
from hypothesis import given, settings
from hypothesis import strategies as st

import backtest_kit as bk
from backtest_kit.engine.lifecycle import (
    close_on_price,
    expires_at,
    is_immediate,
    pnl_of,
    progress_of,
    scan_pending,
    scan_scheduled,
    scheduled_on_price,
    window_vwap,
)

SLIP, FEE = 0.1, 0.1


def pnl(position: str, o: float, c: float) -> bk.PnL:
    return pnl_of(row(position, price_open=o, tp=o * 2 if position == "long" else o / 2,
                      sl=o / 2 if position == "long" else o * 2), c, SLIP, FEE)


# ---------------------------------------------------------------------------------------------- PnL


@pytest.mark.parametrize(
    ("position", "o", "c", "o_adj", "c_adj", "expected"),
    [
        ("long", 50_000, 51_000, 50_050.0, 50_949.0, 1.596204),
        ("long", 50_000, 49_000, 50_050.0, 48_951.0, -2.395804),
        ("short", 50_000, 49_000, 49_950.0, 49_049.0, 1.603804),
        ("short", 50_000, 51_000, 49_950.0, 51_051.0, -2.404204),
    ],
)
def test_pnl_worked_examples_of_page_01_section_8(
    position: str, o: float, c: float, o_adj: float, c_adj: float, expected: float
) -> None:
    """The four verified examples;
    [decision 16](../docs/design/decisions.md#decision-16-pnl-prices-are-the-adjusted-ones):
    pnl.price_open/price_close are the adjusted prices."""
    result = pnl(position, o, c)
    assert round(result.pnl_percentage, 6) == expected
    assert result.price_open == pytest.approx(o_adj, abs=1e-6)
    assert result.price_close == pytest.approx(c_adj, abs=1e-6)


@pytest.mark.parametrize(
    ("position", "o", "c", "expected"),
    [
        ("long", 100, 100, -0.399800),
        ("short", 100, 100, -0.400200),
        ("long", 42_000, 42_084, -0.200200),
        ("long", 95, 110, 15.358126),
        ("long", 95, 105, 10.105484),
        ("long", 95, 100, 4.852842),
    ],
)
def test_pnl_further_reference_points(position: str, o: float, c: float, expected: float) -> None:
    assert round(pnl(position, o, c).pnl_percentage, 6) == expected


@pytest.mark.parametrize("position", ["long", "short"])
def test_pnl_prices_are_adjusted_against_the_trader_decision_16(position: str) -> None:
    result = pnl_of(row(position, price_open=200.0, tp=300.0 if position == "long" else 100.0,
                        sl=100.0 if position == "long" else 300.0), 210.0, 0.5, 0.25)
    if position == "long":
        assert result.price_open == pytest.approx(200 * 1.005)
        assert result.price_close == pytest.approx(210 * 0.995)
        expected = (210 * 0.995 - 200 * 1.005) / (200 * 1.005) * 100 - 0.5
    else:
        assert result.price_open == pytest.approx(200 * 0.995)
        assert result.price_close == pytest.approx(210 * 1.005)
        expected = (200 * 0.995 - 210 * 1.005) / (200 * 0.995) * 100 - 0.5
    assert result.pnl_percentage == pytest.approx(expected)


def test_pnl_without_costs_is_the_plain_move() -> None:
    assert pnl_of(row("long", 100, 110, 90), 110, 0, 0).pnl_percentage == pytest.approx(10)
    assert pnl_of(row("short", 100, 90, 110), 90, 0, 0).pnl_percentage == pytest.approx(10)


# ---------------------------------------------------------------------------------------------- progress


@pytest.mark.parametrize(
    ("price", "expected"),
    [(94, (0.0, 20.0)), (95, (0.0, 0.0)), (98, (30.0, 0.0)), (100.6, (56.0, 0.0)), (103.2, (82.0, 0.0)),
     (105, (100.0, 0.0)), (120, (100.0, 0.0)), (80, (0.0, 100.0))],
)
def test_progress_of_long_95_105_90_page_01_section_7_3(price: float, expected: tuple[float, float]) -> None:
    tp, sl = progress_of(row("long", price_open=95, tp=105, sl=90), price)
    assert (tp, sl) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("price", "expected"), [(106, (0.0, 20.0)), (105, (0.0, 0.0)), (102, (30.0, 0.0)), (99.4, (56.0, 0.0))]
)
def test_progress_of_short_mirror(price: float, expected: tuple[float, float]) -> None:
    tp, sl = progress_of(row("short", price_open=105, tp=95, sl=110), price)
    assert (tp, sl) == pytest.approx(expected)


# ---------------------------------------------------------------------------------------------- tick path


def test_close_on_price_time_first_then_tp_then_sl() -> None:
    r = row("long", 100, 110, 90, minutes=5, pending_at=T0)
    assert expires_at(r) == T0 + 5 * M
    assert close_on_price(r, 100, T0 + 5 * M - 1) is None
    # expiry at exactly pending_at + m minutes, at the given price, even when TP is reached too
    assert close_on_price(r, 111, T0 + 5 * M) == ("time_expired", 111)
    assert close_on_price(r, 110, T0) == ("take_profit", 110)
    assert close_on_price(r, 90, T0) == ("stop_loss", 90)
    s = row("short", 100, 90, 110, minutes=5, pending_at=T0)
    assert close_on_price(s, 90, T0) == ("take_profit", 90)
    assert close_on_price(s, 110, T0) == ("stop_loss", 110)
    assert close_on_price(s, 100, T0 + 4 * M) is None


def test_scheduled_on_price_timeout_then_sl_then_activation() -> None:
    await_ms = 120 * M
    r = row("long", 95, 110, 90, scheduled_at=T0, pending_at=T0, is_scheduled=True)
    assert scheduled_on_price(r, 100, T0 + 119 * M, await_ms) is None
    assert scheduled_on_price(r, 95, T0 + 120 * M, await_ms) == "timeout"
    assert scheduled_on_price(r, 90, T0, await_ms) == "stop_loss"
    assert scheduled_on_price(r, 95, T0, await_ms) == "activate"  # equality activates
    s = row("short", 105, 90, 110, scheduled_at=T0, pending_at=T0, is_scheduled=True)
    assert scheduled_on_price(s, 110, T0, await_ms) == "stop_loss"
    assert scheduled_on_price(s, 105, T0, await_ms) == "activate"
    assert scheduled_on_price(s, 104.9, T0, await_ms) is None


def test_is_immediate_table_of_section_6_1() -> None:
    assert is_immediate("long", 43_000, 42_000)  # market below a long's entry: fill now at 43 000
    assert is_immediate("long", 42_000, 42_000)
    assert not is_immediate("long", 41_000, 42_000)
    assert is_immediate("short", 41_000, 42_000)
    assert not is_immediate("short", 43_000, 42_000)


def test_window_vwap_volume_weighted_and_zero_volume() -> None:
    cs = [candle(T0, 100, 101, 99, 100, 100), candle(T0 + M, 101, 102, 100, 101, 200),
          candle(T0 + 2 * M, 102, 103, 101, 102, 0)]
    assert window_vwap(cs, 3, 5) == pytest.approx(100.666667, abs=1e-6)
    zero = [candle(c.timestamp, c.open, c.high, c.low, c.close, 0) for c in cs]
    assert window_vwap(zero, 3, 5) == pytest.approx(101)
    assert window_vwap(cs, 2, 1) == pytest.approx(101)  # only the candle before index 2


# ---------------------------------------------------------------------------------------------- scan_pending


def test_scan_pending_checks_the_candle_opening_at_when_and_tp_beats_sl() -> None:
    r = row("long", 42_000, 43_000, 41_000, minutes=60, pending_at=T0)
    cs = [candle(T0 - M, 42_000, 42_100, 41_900, 42_000), candle(T0, 42_000, 43_500, 40_500, 42_000)]
    out = scan_pending(r, cs, 1, 5)
    assert (out.kind, out.reason, out.price, out.timestamp) == ("closed", "take_profit", 43_000, T0)


def test_scan_pending_expires_at_pending_at_plus_m_with_vwap_of_closed_candles() -> None:
    """[Decision 3](../docs/design/decisions.md#decision-3-one-expiry-rule): m = 5 opened at T0 expires
    on the candle opening at T0 + 5 min (not T0 + 4)."""
    r = row("long", 100, 110, 90, minutes=5, pending_at=T0)
    cs = [candle(T0 + i * M, 100, 101, 99, 100) for i in range(-5, 10)]
    cs[5 + 5] = candle(T0 + 5 * M, 200, 200, 100, 100)  # the expiry candle itself must not be priced
    out = scan_pending(r, cs, 5, 5)
    assert (out.kind, out.reason, out.timestamp) == ("closed", "time_expired", T0 + 5 * M)
    assert out.price == pytest.approx(100)


def test_scan_pending_runs_out_of_candles() -> None:
    r = row("short", 100, 90, 110, minutes=60, pending_at=T0)
    cs = [candle(T0 + i * M, 100, 101, 99, 100) for i in range(10)]
    assert scan_pending(r, cs, 0, 5).kind == "open"


# ---------------------------------------------------------------------------------------------- scan_scheduled

AWAIT = 120 * M


def test_scan_scheduled_sl_beats_activation_on_the_same_candle() -> None:
    r = row("long", 42_000, 43_000, 40_000, scheduled_at=T0, is_scheduled=True)
    cs = [candle(T0, 45_000, 45_000, 39_000, 39_000)]
    out, index = scan_scheduled(r, cs, 0, 5, AWAIT)
    assert (out.kind, out.cancel_reason, out.timestamp, index) == ("cancelled", "stop_loss", T0, None)
    s = row("short", 42_000, 41_000, 44_000, scheduled_at=T0, is_scheduled=True)
    out, index = scan_scheduled(s, [candle(T0, 40_000, 45_000, 40_000, 45_000)], 0, 5, AWAIT)
    assert (out.kind, out.cancel_reason, index) == ("cancelled", "stop_loss", None)


def test_scan_scheduled_equality_activates_with_pending_at_of_that_candle() -> None:
    r = row("long", 95, 110, 90, scheduled_at=T0, is_scheduled=True)
    cs = [candle(T0 + i * M, 100, 101, 99, 100) for i in range(3)] + [candle(T0 + 3 * M, 100, 100, 95, 96)]
    out, index = scan_scheduled(r, cs, 0, 5, AWAIT)
    assert (out.kind, out.activated_at, index) == ("open", T0 + 3 * M, 3)
    s = row("short", 105, 90, 110, scheduled_at=T0, is_scheduled=True)
    cs = [candle(T0, 100, 101, 99, 100), candle(T0 + M, 100, 105, 100, 104)]
    out, index = scan_scheduled(s, cs, 0, 5, AWAIT)
    assert (out.activated_at, index) == (T0 + M, 1)


def test_scan_scheduled_times_out_exactly_at_await_minutes_before_any_price_check() -> None:
    r = row("long", 95, 110, 90, scheduled_at=T0, is_scheduled=True)
    cs = [candle(T0 + i * M, 100, 101, 99, 100) for i in range(120)]
    cs.append(candle(T0 + 120 * M, 100, 100, 95, 95))  # would activate, but the wait is over
    out, index = scan_scheduled(r, cs, 0, 5, AWAIT)
    assert (out.kind, out.cancel_reason, index) == ("cancelled", "timeout", None)
    assert out.timestamp - T0 == 120 * M
    # one minute earlier the same candle activates
    cs[119] = candle(T0 + 119 * M, 100, 100, 95, 95)
    out, index = scan_scheduled(r, cs, 0, 5, AWAIT)
    assert (out.kind, out.activated_at, index) == ("open", T0 + 119 * M, 119)


# ---------------------------------------------------------------------------------------------- hypothesis (b)


def naive_vwap(candles: list[bk.Candle]) -> float:
    typicals = [(c.high + c.low + c.close) / 3 for c in candles]
    volume = sum(c.volume for c in candles)
    if volume > 0:
        return sum(t * c.volume for t, c in zip(typicals, candles, strict=True)) / volume
    return sum(typicals) / len(typicals)


def naive_close(r: bk.SignalRow, candles: list[bk.Candle], start: int) -> tuple[str, int, float] | None:
    """Independent formulation: the first touch of TP or SL versus the first expired candle."""
    long_ = r.position == "long"

    def tp_hit(c: bk.Candle) -> bool:
        return c.high >= r.price_take_profit if long_ else c.low <= r.price_take_profit

    def sl_hit(c: bk.Candle) -> bool:
        return c.low <= r.price_stop_loss if long_ else c.high >= r.price_stop_loss

    indices = range(start, len(candles))
    touch = next((i for i in indices if tp_hit(candles[i]) or sl_hit(candles[i])), math.inf)
    deadline = r.pending_at + r.minute_estimated_time * 60_000
    expiry = next((i for i in indices if candles[i].timestamp >= deadline), math.inf)
    if touch == math.inf and expiry == math.inf:
        return None
    if expiry <= touch:
        i = int(expiry)
        return "time_expired", candles[i].timestamp, naive_vwap(candles[max(0, i - 5):i])
    i = int(touch)
    if tp_hit(candles[i]):
        return "take_profit", candles[i].timestamp, r.price_take_profit
    return "stop_loss", candles[i].timestamp, r.price_stop_loss


@st.composite
def candle_paths(draw: st.DrawFn, min_size: int = 6, max_size: int = 60) -> list[bk.Candle]:
    n = draw(st.integers(min_size, max_size))
    moves = draw(st.lists(st.integers(-6, 6), min_size=n, max_size=n))
    spreads = draw(st.lists(st.tuples(st.integers(0, 4), st.integers(0, 4)), min_size=n, max_size=n))
    volumes = draw(st.lists(st.sampled_from([0.0, 1.0, 100.0, 250.0]), min_size=n, max_size=n))
    out: list[bk.Candle] = []
    price = 100.0
    for i in range(n):
        o = price
        c = max(50.0, min(150.0, price + moves[i]))
        up, down = spreads[i]
        out.append(candle(T0 + (i - 5) * M, o, max(o, c) + up, min(o, c) - down, c, volumes[i]))
        price = c
    return out


@settings(max_examples=300, deadline=None)
@given(
    path=candle_paths(),
    position=st.sampled_from(["long", "short"]),
    start=st.integers(1, 5),
    tp_off=st.integers(1, 15),
    sl_off=st.integers(1, 15),
    minutes=st.integers(1, 40),
)
def test_scan_pending_closes_at_the_first_candle_reaching_tp_or_sl_or_at_expiry(
    path: list[bk.Candle], position: str, start: int, tp_off: int, sl_off: int, minutes: int
) -> None:
    """HYPOTHESIS (b): scan_pending agrees with a naive re-implementation on random candle paths."""
    start = min(start, len(path) - 1)
    entry = path[start - 1].close
    tp, sl = (entry + tp_off, entry - sl_off) if position == "long" else (entry - tp_off, entry + sl_off)
    r = row(position, price_open=entry, tp=tp, sl=sl, minutes=minutes, pending_at=path[start].timestamp)
    out = scan_pending(r, path, start, 5)
    expected = naive_close(r, path, start)
    if expected is None:
        assert out.kind == "open"
        return
    reason, ts, price = expected
    assert (out.kind, out.reason, out.timestamp) == ("closed", reason, ts)
    assert out.price == pytest.approx(price, rel=1e-12)


def naive_scheduled(r: bk.SignalRow, candles: list[bk.Candle], start: int, await_ms: int) -> tuple[str, int]:
    long_ = r.position == "long"
    for c in candles[start:]:
        if c.timestamp - r.scheduled_at >= await_ms:
            return "timeout", c.timestamp
        if (c.low <= r.price_stop_loss) if long_ else (c.high >= r.price_stop_loss):
            return "stop_loss", c.timestamp
        if (c.low <= r.price_open) if long_ else (c.high >= r.price_open):
            return "activate", c.timestamp
    return "waiting", 0


@settings(max_examples=300, deadline=None)
@given(
    path=candle_paths(),
    position=st.sampled_from(["long", "short"]),
    open_off=st.integers(0, 10),
    sl_off=st.integers(1, 10),
    await_minutes=st.integers(1, 40),
)
def test_scan_scheduled_matches_the_precedence_timeout_sl_activation(
    path: list[bk.Candle], position: str, open_off: int, sl_off: int, await_minutes: int
) -> None:
    start = 5 if len(path) > 5 else len(path) - 1
    ref = path[start - 1].close
    op = ref - open_off if position == "long" else ref + open_off
    sl = op - sl_off if position == "long" else op + sl_off
    tp = op + 20 if position == "long" else op - 20
    r = row(position, price_open=op, tp=tp, sl=sl, scheduled_at=path[start].timestamp,
            pending_at=path[start].timestamp, is_scheduled=True)
    out, index = scan_scheduled(r, path, start, 5, await_minutes * M)
    kind, ts = naive_scheduled(r, path, start, await_minutes * M)
    if kind == "waiting":
        assert (out.kind, index) == ("open", None)
    elif kind == "activate":
        assert out.activated_at == ts and index is not None and path[index].timestamp == ts
    else:
        assert (out.kind, out.cancel_reason, out.timestamp, index) == ("cancelled", kind, ts, None)

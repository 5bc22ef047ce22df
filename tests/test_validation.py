"""Signal validation ([lifecycle §5](../docs/design/lifecycle.md#5-signal-validation)) and
[decision 5](../docs/design/decisions.md#decision-5-bad-values-are-rejected-never-coerced) (bad values
rejected, never coerced).

The rule tables V/L/S/T of [§5.2](../docs/design/lifecycle.md#52-rules) are exercised on
`signal_problems` directly; the
[§5.3](../docs/design/lifecycle.md#53-boundaries-with-the-default-configuration) boundaries use the
default configuration; the decision-5 inputs (strings, booleans, NaN, infinities, an explicit
`price_open=None`) go end to end through a backtest tick so the message a user sees is checked. Python
has no "missing" `_isScheduled` (V5): `is_scheduled` is a required bool of `SignalRow`.
"""

from __future__ import annotations

import math
from typing import Any

import msgspec
import pytest
from helpers import T0, M, flat_candles, make_engine, once, row, setup
from hypothesis import given, settings
from hypothesis import strategies as st

import backtest_kit as bk
from backtest_kit.engine.config import Config
from backtest_kit.engine.models import decode_signal_dto
from backtest_kit.engine.validation import signal_problems, validate_signal

DEFAULT = Config()
OFF = Config(CC_MIN_TAKEPROFIT_DISTANCE_PERCENT=0, CC_MIN_STOPLOSS_DISTANCE_PERCENT=0,
             CC_MAX_STOPLOSS_DISTANCE_PERCENT=0, CC_MAX_SIGNAL_LIFETIME_MINUTES=0)
_replace = msgspec.structs.replace


def problems(r: bk.SignalRow, current: Any = 100.0, config: Config = OFF) -> list[str]:
    return signal_problems(r, current, config)


def long_row(**kw: Any) -> bk.SignalRow:
    base: dict[str, Any] = {"price_open": 100.0, "tp": 110.0, "sl": 90.0, "minutes": 60}
    base.update(kw)
    return row("long", **base)


def short_row(**kw: Any) -> bk.SignalRow:
    base: dict[str, Any] = {"price_open": 100.0, "tp": 90.0, "sl": 110.0, "minutes": 60}
    base.update(kw)
    return row("short", **base)


def test_a_good_long_and_short_pass() -> None:
    assert problems(long_row()) == []
    assert problems(short_row()) == []
    assert problems(long_row(is_scheduled=True), current=105.0) == []
    assert problems(long_row(), config=DEFAULT) == []


# ---------------------------------------------------------------------------------------------- V rules


@pytest.mark.parametrize("field", ["id", "exchange_name", "strategy_name", "symbol"])
@pytest.mark.parametrize("value", ["", None])
def test_v1_to_v4_identity_fields_must_be_present(field: str, value: Any) -> None:
    found = problems(_replace(long_row(), **{field: value}))
    assert len(found) == 1 and field in found[0]


@pytest.mark.parametrize("value", [None, "up", "LONG", 1])
def test_v6_v7_position_must_be_long_or_short(value: Any) -> None:
    found = problems(_replace(long_row(), position=value))
    assert any("position" in p and repr(value) in p for p in found)


@pytest.mark.parametrize("current", [math.nan, math.inf, -math.inf, None, "100", True])
def test_v8_current_price_must_be_finite(current: Any) -> None:
    found = problems(long_row(), current=current)
    assert any("current_price" in p and "finite" in p for p in found)


@pytest.mark.parametrize("current", [0.0, -1.0])
def test_v9_current_price_must_be_positive(current: float) -> None:
    found = problems(long_row(), current=current)
    assert any("current_price must be positive" in p for p in found)


@pytest.mark.parametrize("field", ["price_open", "price_take_profit", "price_stop_loss"])
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, None, "100", True, False])
def test_v10_to_v12_prices_must_be_finite_numbers(field: str, value: Any) -> None:
    found = problems(_replace(long_row(), **{field: value}))
    assert any(p.startswith(f"{field} is not a finite number") and repr(value) in p for p in found), found


@pytest.mark.parametrize("field", ["price_open", "price_take_profit", "price_stop_loss"])
@pytest.mark.parametrize("value", [0.0, -5.0])
def test_v13_to_v15_prices_must_be_positive(field: str, value: float) -> None:
    found = problems(_replace(long_row(), **{field: value}))
    assert any(p.startswith(f"{field} must be positive") for p in found), found


# ---------------------------------------------------------------------------------------------- L / S rules


def test_l1_long_tp_above_open_and_s1_short_tp_below_open() -> None:
    assert any("price_take_profit" in p for p in problems(long_row(tp=100.0)))
    assert any("price_take_profit" in p for p in problems(long_row(tp=99.0)))
    assert any("price_take_profit" in p for p in problems(short_row(tp=100.0)))
    assert any("price_take_profit" in p for p in problems(short_row(tp=101.0)))


def test_l2_long_sl_below_open_and_s2_short_sl_above_open() -> None:
    assert any("price_stop_loss" in p for p in problems(long_row(sl=100.0)))
    assert any("price_stop_loss" in p for p in problems(short_row(sl=100.0)))


def test_l3_l4_immediate_long_current_price_between_sl_and_tp() -> None:
    assert any("stops out at once" in p for p in problems(long_row(), current=90.0))
    assert any("no profit left" in p for p in problems(long_row(), current=110.0))
    assert problems(long_row(), current=90.01) == []
    # a scheduled row is not judged by the current price
    assert problems(long_row(is_scheduled=True), current=120.0) == []


def test_s3_s4_immediate_short_current_price_between_tp_and_sl() -> None:
    assert any("stops out at once" in p for p in problems(short_row(), current=110.0))
    assert any("no profit left" in p for p in problems(short_row(), current=90.0))
    assert problems(short_row(is_scheduled=True), current=80.0) == []


def test_l5_l6_s5_s6_scheduled_rows_need_open_between_sl_and_tp() -> None:
    assert problems(long_row(is_scheduled=True, sl=100.0), current=105)  # open <= sl
    assert problems(long_row(is_scheduled=True, tp=100.0), current=105)  # open >= tp
    assert problems(short_row(is_scheduled=True, sl=100.0), current=95)
    assert problems(short_row(is_scheduled=True, tp=100.0), current=95)


@pytest.mark.parametrize(
    ("tp", "sl", "ok"),
    [(100.5, 90.0, True), (100.4, 90.0, False),     # L7 min TP distance 0.5 %
     (110.0, 99.5, True), (110.0, 99.6, False),     # L8 min SL distance 0.5 %
     (110.0, 80.0, True), (110.0, 79.9, False),     # L9 max SL distance 20 %
     (250.0, 90.0, True)],                          # no upper TP limit
)
def test_section_5_3_long_boundaries_with_the_default_config(tp: float, sl: float, ok: bool) -> None:
    found = problems(long_row(tp=tp, sl=sl), config=DEFAULT)
    assert (found == []) is ok, found
    if not ok:
        assert any("CC_" in p and "price_open" in p for p in found)


@pytest.mark.parametrize(
    ("tp", "sl", "ok"),
    [(49_750.0, 50_250.0, True), (49_760.0, 50_250.0, False), (49_750.0, 50_240.0, False),
     (49_750.0, 60_000.0, True), (49_750.0, 60_001.0, False)],
)
def test_section_5_3_short_boundaries_with_the_default_config(tp: float, sl: float, ok: bool) -> None:
    found = problems(short_row(price_open=50_000.0, tp=tp, sl=sl), current=50_000.0, config=DEFAULT)
    assert (found == []) is ok, found


def test_distance_rules_are_switched_off_by_zero() -> None:
    r = long_row(tp=100.01, sl=10.0)
    assert problems(r, config=OFF) == []
    assert len(problems(r, config=DEFAULT)) == 2  # L7 and L9


# ---------------------------------------------------------------------------------------------- T rules


@pytest.mark.parametrize(
    ("minutes", "ok"), [(1440, True), (1441, False), (0, False), (-5, False), (1.5, False),
                        ("5", False), (True, False), (math.nan, False), (math.inf, False)],
)
def test_t1_t2_t3_minute_estimated_time(minutes: Any, ok: bool) -> None:
    found = problems(_replace(long_row(), minute_estimated_time=minutes), config=DEFAULT)
    assert (found == []) is ok, found
    if not ok:
        assert all("minute_estimated_time" in p for p in found)


def test_t3_lifetime_rule_off_by_zero() -> None:
    assert problems(long_row(minutes=100_000)) == []


@pytest.mark.parametrize("field", ["scheduled_at", "pending_at"])
@pytest.mark.parametrize("value", [0, -M])
def test_t4_t5_timestamps_after_the_epoch(field: str, value: int) -> None:
    found = problems(_replace(long_row(), **{field: value}))
    assert any(p.startswith(field) for p in found)


def test_several_failures_are_collected_into_one_error() -> None:
    r = long_row(tp=99.0, minutes=0)
    with pytest.raises(bk.SignalValidationError) as info:
        validate_signal(r, 100.0, DEFAULT)
    message = str(info.value)
    assert message.startswith("Invalid signal for long position")
    assert "price_take_profit" in message and "price_open" in message and "minute_estimated_time" in message
    assert message.count("\n  - ") >= 3


# ---------------- [decision 5](../docs/design/decisions.md#decision-5-bad-values-are-rejected-never-coerced) end to end


async def one_tick(dto: Any, tmp_config: dict[str, Any] | None = None) -> tuple[list[BaseException], Any]:
    """One backtest tick at T0 (market VWAP 100) returning `dto` from get_signal."""
    engine = make_engine(**(tmp_config or {}))
    h = setup(engine, flat_candles(T0 - 10 * M, 80, 100.0), once(dto), minutes=1, frame_interval="1h")  # one frame
    results = await h.run()
    return h.errors, (results, h.events)


GOOD: dict[str, Any] = {"position": "long", "price_take_profit": 110, "price_stop_loss": 90,
                        "minute_estimated_time": 5}


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"price_take_profit": "110"}, "price_take_profit"),
        ({"price_stop_loss": True}, "price_stop_loss"),
        ({"price_take_profit": math.nan}, "price_take_profit"),
        ({"price_take_profit": math.inf}, "price_take_profit"),
        ({"price_stop_loss": -math.inf}, "price_stop_loss"),
        ({"price_open": None}, "price_open"),
        ({"price_open": "100"}, "price_open"),
        ({"price_open": math.nan}, "price_open"),
        ({"minute_estimated_time": "5"}, "minute_estimated_time"),
        ({"minute_estimated_time": 1.5}, "minute_estimated_time"),
        ({"minute_estimated_time": False}, "minute_estimated_time"),
        ({"position": "up"}, "position"),
        ({"position": None}, "position"),
    ],
)
async def test_decision_5_bad_dict_values_are_rejected_naming_the_field(patch: dict[str, Any], field: str) -> None:
    errors, (results, events) = await one_tick({**GOOD, **patch})
    assert results == []
    assert [e.action for e in events] == ["idle"]
    assert len(errors) == 1
    assert isinstance(errors[0], bk.SignalValidationError)
    assert str(errors[0]).startswith("Invalid signal")
    assert field in str(errors[0])


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"price_take_profit": "110"}, "price_take_profit"),
        ({"price_take_profit": math.nan}, "price_take_profit"),
        ({"price_stop_loss": math.inf}, "price_stop_loss"),
        ({"price_open": None}, "price_open"),
        ({"price_open": "100"}, "price_open"),
        ({"price_open": True}, "price_open"),
        ({"price_open": math.inf}, "price_open"),
        ({"minute_estimated_time": "5"}, "minute_estimated_time"),
        ({"minute_estimated_time": True}, "minute_estimated_time"),
    ],
)
async def test_decision_5_bad_values_in_a_signal_dto_are_rejected_not_coerced(
    patch: dict[str, Any], field: str
) -> None:
    """msgspec does not type-check Struct constructors, so the engine must (no float("100"))."""
    errors, (results, events) = await one_tick(bk.SignalDto(**{**GOOD, **patch}))
    assert results == []
    assert [e.action for e in events] == ["idle"]
    assert len(errors) == 1, errors
    assert isinstance(errors[0], bk.SignalValidationError)
    assert str(errors[0]).startswith("Invalid signal")
    assert field in str(errors[0])


async def test_truthy_non_string_note_is_rejected() -> None:
    errors, (results, _) = await one_tick({**GOOD, "note": 42})
    assert results == [] and len(errors) == 1 and "note" in str(errors[0])


async def test_dict_dtos_are_accepted() -> None:
    errors, (results, events) = await one_tick({**GOOD, "note": "**bold** idea"})
    assert errors == []
    assert [e.action for e in events] == ["opened", "closed"]
    opened = events[0].signal
    assert opened.note == "bold idea" and opened.price_open == pytest.approx(100.0)
    assert results[0].close_reason == "time_expired"


async def test_limit_dict_dto_is_accepted_and_scheduled() -> None:
    errors, (_, events) = await one_tick({**GOOD, "price_open": 95, "price_stop_loss": 90})
    assert errors == []
    assert events[0].action == "scheduled" and events[0].signal.price_open == 95


async def test_default_config_boundary_end_to_end() -> None:
    """Under the default distance rules a long TP 0.4 % away fails (L7) and 0.5 % passes."""
    engine_cfg = {"CC_MIN_TAKEPROFIT_DISTANCE_PERCENT": 0.5, "CC_MIN_STOPLOSS_DISTANCE_PERCENT": 0.5,
                  "CC_MAX_STOPLOSS_DISTANCE_PERCENT": 20}
    errors, _ = await one_tick({**GOOD, "price_take_profit": 100.4}, engine_cfg)
    assert len(errors) == 1 and "CC_MIN_TAKEPROFIT_DISTANCE_PERCENT" in str(errors[0])
    errors, _ = await one_tick({**GOOD, "price_take_profit": 100.5}, engine_cfg)
    assert errors == []


# ---------------------------------------------------------------------------------------------- unknown dict keys


@pytest.mark.parametrize(
    ("key", "closest"),
    [("price_opn", "price_open"), ("priceOpen", "price_open"), ("take_profit", "price_take_profit"),
     ("price_stoploss", "price_stop_loss"), ("minutes_estimated_time", "minute_estimated_time"),
     ("Position", "position"), ("notes", "note")],
)
async def test_a_misspelled_dict_key_is_an_error_naming_it_and_the_closest_field(key: str, closest: str) -> None:
    """`{"price_opn": 95}` used to be dropped, silently turning a limit entry into a market entry."""
    errors, (results, events) = await one_tick({**GOOD, key: 95})
    assert results == []
    assert [e.action for e in events] == ["idle"]  # neither scheduled nor opened at market
    assert len(errors) == 1 and isinstance(errors[0], bk.SignalValidationError)
    message = str(errors[0])
    assert message.startswith("Invalid signal") and repr(key) in message
    assert f"did you mean {closest!r}?" in message


def test_an_unrelated_or_non_string_key_lists_the_valid_keys() -> None:
    for key in ("zzz", 7):
        with pytest.raises(bk.SignalValidationError, match="unknown key") as info:
            decode_signal_dto({**GOOD, key: 1})
        assert repr(key) in str(info.value) and "did you mean" not in str(info.value)
        assert all(name in str(info.value) for name in bk.SignalDto.__struct_fields__)


def test_every_valid_key_is_still_accepted() -> None:
    full = {**GOOD, "price_open": 100.0, "note": "n", "id": "x"}
    assert decode_signal_dto(full) == bk.SignalDto(**full)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(bk.SignalDto.__struct_fields__), st.data())
def test_any_single_typo_of_a_field_names_that_field(field: str, data: st.DataObject) -> None:
    """Property: deleting, doubling or swapping one character of a field's name is caught, and the
    suggestion is the field the user meant (never another one)."""
    i = data.draw(st.integers(0, len(field) - 1))
    deleted, doubled = field[:i] + field[i + 1:], field[:i] + field[i] + field[i:]
    swapped = field[:i] + field[i + 1:i + 2] + field[i] + field[i + 2:]
    typo = data.draw(st.sampled_from([deleted, doubled, swapped]))
    if typo in bk.SignalDto.__struct_fields__ or typo == field:
        return
    with pytest.raises(bk.SignalValidationError) as info:
        decode_signal_dto({**GOOD, typo: 1})
    assert f"unknown key {typo!r} (did you mean {field!r}?" in str(info.value)

"""Configuration: defaults, type and range checks, unknown keys, atomic updates
([events §5.1](../docs/design/events-and-api.md#51-configuration))."""

from __future__ import annotations

import math
from typing import Any

import msgspec
import pytest

import backtest_kit as bk
from backtest_kit.engine.config import Config

DEFAULTS: dict[str, Any] = {
    "CC_SCHEDULE_AWAIT_MINUTES": 120,
    "CC_AVG_PRICE_CANDLES_COUNT": 5,
    "CC_PERCENT_SLIPPAGE": 0.1,
    "CC_PERCENT_FEE": 0.1,
    "CC_MIN_TAKEPROFIT_DISTANCE_PERCENT": 0.5,
    "CC_MIN_STOPLOSS_DISTANCE_PERCENT": 0.5,
    "CC_MAX_STOPLOSS_DISTANCE_PERCENT": 20,
    "CC_MAX_SIGNAL_LIFETIME_MINUTES": 1440,
    "CC_MAX_SIGNAL_GENERATION_SECONDS": 180,
    "CC_GET_CANDLES_RETRY_COUNT": 3,
    "CC_GET_CANDLES_RETRY_DELAY_MS": 5000,
    "CC_GET_CANDLES_PRICE_ANOMALY_THRESHOLD_FACTOR": 20,
    "CC_GET_CANDLES_MIN_CANDLES_FOR_MEDIAN": 5,
    "CC_REPORT_SHOW_SIGNAL_NOTE": False,
    "MAX_EVENTS": 25,
    "CC_LIVE_MAX_CANDLE_AGE_MS": 120_000,
    "CC_LISTENER_TIMEOUT_SECONDS": 30,
    "CC_BACKTEST_LISTENER_TIMEOUT_SECONDS": 0,
}

INT_KEYS = [
    "CC_SCHEDULE_AWAIT_MINUTES",
    "CC_AVG_PRICE_CANDLES_COUNT",
    "CC_MAX_SIGNAL_LIFETIME_MINUTES",
    "CC_GET_CANDLES_RETRY_COUNT",
    "CC_GET_CANDLES_RETRY_DELAY_MS",
    "CC_GET_CANDLES_MIN_CANDLES_FOR_MEDIAN",
    "CC_CANDLE_STORE_MAX_CANDLES",
    "CC_TICK_TTL_MS",
    "MAX_EVENTS",
    "CC_LIVE_MAX_CANDLE_AGE_MS",
]
NUM_KEYS = [
    "CC_PERCENT_SLIPPAGE",
    "CC_PERCENT_FEE",
    "CC_MIN_TAKEPROFIT_DISTANCE_PERCENT",
    "CC_MIN_STOPLOSS_DISTANCE_PERCENT",
    "CC_MAX_STOPLOSS_DISTANCE_PERCENT",
    "CC_MAX_SIGNAL_GENERATION_SECONDS",
    "CC_GET_CANDLES_PRICE_ANOMALY_THRESHOLD_FACTOR",
    "CC_LISTENER_TIMEOUT_SECONDS",
    "CC_BACKTEST_LISTENER_TIMEOUT_SECONDS",
]
BOOL_KEYS = ["CC_REPORT_SHOW_SIGNAL_NOTE", "CC_LIVE_GC_TUNING"]
# counts: the smallest valid value is 1
COUNT_KEYS = [
    "CC_SCHEDULE_AWAIT_MINUTES",
    "CC_AVG_PRICE_CANDLES_COUNT",
    "CC_MAX_SIGNAL_LIFETIME_MINUTES",
    "CC_GET_CANDLES_RETRY_COUNT",
    "CC_GET_CANDLES_MIN_CANDLES_FOR_MEDIAN",
    "MAX_EVENTS",
]


def snapshot(engine: bk.Engine) -> dict[str, Any]:
    return msgspec.structs.asdict(engine.get_config())


def test_every_key_is_classified() -> None:
    assert set(INT_KEYS) | set(NUM_KEYS) | set(BOOL_KEYS) == set(Config.__struct_fields__)


# --------------------------------------------------------------------------- defaults
def test_defaults() -> None:
    defaults = bk.Engine.get_default_config()
    for key, value in DEFAULTS.items():
        got = getattr(defaults, key)
        assert got == value, key
        assert type(got) is type(value) or (isinstance(value, int) and isinstance(got, float)), key
    assert defaults.MAX_EVENTS == 25
    assert bk.get_default_config() == defaults
    assert bk.Engine().get_config() == defaults


def test_default_config_is_not_changed_by_set_config() -> None:
    engine = bk.Engine()
    engine.set_config(CC_PERCENT_FEE=0.05)
    assert engine.get_config().CC_PERCENT_FEE == 0.05
    assert engine.get_default_config().CC_PERCENT_FEE == 0.1
    assert bk.Engine().get_config().CC_PERCENT_FEE == 0.1


def test_config_is_immutable() -> None:
    cfg = bk.Engine().get_config()
    with pytest.raises(AttributeError):
        cfg.CC_PERCENT_FEE = 5  # type: ignore[misc]
    assert cfg.CC_PERCENT_FEE == 0.1


# --------------------------------------------------------------------------- set_config
def test_set_config_via_mapping_and_kwargs() -> None:
    engine = bk.Engine()
    result = engine.set_config({"CC_PERCENT_FEE": 0.05, "CC_SCHEDULE_AWAIT_MINUTES": 60})
    assert result is engine.get_config()
    assert engine.get_config().CC_PERCENT_FEE == 0.05
    assert engine.get_config().CC_SCHEDULE_AWAIT_MINUTES == 60
    engine.set_config(CC_MAX_SIGNAL_LIFETIME_MINUTES=480, CC_REPORT_SHOW_SIGNAL_NOTE=True)
    cfg = engine.get_config()
    assert cfg.CC_MAX_SIGNAL_LIFETIME_MINUTES == 480
    assert cfg.CC_REPORT_SHOW_SIGNAL_NOTE is True
    assert cfg.CC_PERCENT_FEE == 0.05  # earlier change kept
    engine.set_config({"CC_PERCENT_FEE": 0.02}, CC_PERCENT_SLIPPAGE=0.03)
    assert (engine.get_config().CC_PERCENT_FEE, engine.get_config().CC_PERCENT_SLIPPAGE) == (0.02, 0.03)


def test_seed_example_is_valid() -> None:
    engine = bk.Engine()
    engine.set_config({
        "CC_PERCENT_SLIPPAGE": 0.1,
        "CC_PERCENT_FEE": 0.1,
        "CC_SCHEDULE_AWAIT_MINUTES": 120,
        "CC_MAX_SIGNAL_LIFETIME_MINUTES": 480,
    })
    assert engine.get_config().CC_MAX_SIGNAL_LIFETIME_MINUTES == 480


def test_engine_constructor_config_is_validated() -> None:
    assert bk.Engine(config={"MAX_EVENTS": 10}).get_config().MAX_EVENTS == 10
    with pytest.raises(bk.ConfigError, match="MAX_EVENTS"):
        bk.Engine(config={"MAX_EVENTS": 0})


def test_whole_floats_for_int_keys_become_ints_and_ints_for_numbers_become_floats() -> None:
    engine = bk.Engine()
    engine.set_config(CC_SCHEDULE_AWAIT_MINUTES=90.0, CC_PERCENT_FEE=0)
    cfg = engine.get_config()
    assert cfg.CC_SCHEDULE_AWAIT_MINUTES == 90 and type(cfg.CC_SCHEDULE_AWAIT_MINUTES) is int
    assert cfg.CC_PERCENT_FEE == 0.0 and type(cfg.CC_PERCENT_FEE) is float


# --------------------------------------------------------------------------- types
BAD_NUMERIC = ["0.1", True, False, None, math.nan, math.inf, -math.inf, [1], {"x": 1}]


@pytest.mark.parametrize("key", INT_KEYS + NUM_KEYS)
@pytest.mark.parametrize("value", BAD_NUMERIC, ids=repr)
@pytest.mark.parametrize("unsafe", [False, True])
def test_numeric_keys_reject_non_numbers(key: str, value: Any, unsafe: bool) -> None:
    engine = bk.Engine()
    before = snapshot(engine)
    with pytest.raises(bk.ConfigError) as info:
        engine.set_config({key: value}, unsafe=unsafe)
    assert key in str(info.value)
    assert repr(value) in str(info.value)
    assert snapshot(engine) == before


@pytest.mark.parametrize("key", INT_KEYS)
@pytest.mark.parametrize("unsafe", [False, True])
def test_int_keys_reject_fractions(key: str, unsafe: bool) -> None:
    engine = bk.Engine()
    with pytest.raises(bk.ConfigError) as info:
        engine.set_config({key: 1.5}, unsafe=unsafe)
    assert key in str(info.value) and "1.5" in str(info.value)
    assert snapshot(engine) == snapshot(bk.Engine())


@pytest.mark.parametrize("key", BOOL_KEYS)
@pytest.mark.parametrize("value", [1, 0, "true", "false", None, 1.0], ids=repr)
@pytest.mark.parametrize("unsafe", [False, True])
def test_bool_keys_must_be_bool(key: str, value: Any, unsafe: bool) -> None:
    engine = bk.Engine()
    with pytest.raises(bk.ConfigError) as info:
        engine.set_config({key: value}, unsafe=unsafe)
    assert key in str(info.value) and repr(value) in str(info.value)
    assert getattr(engine.get_config(), key) is getattr(Config(), key)  # unchanged default


# --------------------------------------------------------------------------- ranges
@pytest.mark.parametrize(
    ("changes", "key"),
    [
        ({"CC_PERCENT_FEE": -0.01}, "CC_PERCENT_FEE"),
        ({"CC_PERCENT_SLIPPAGE": -1}, "CC_PERCENT_SLIPPAGE"),
        ({"CC_MIN_TAKEPROFIT_DISTANCE_PERCENT": -0.5}, "CC_MIN_TAKEPROFIT_DISTANCE_PERCENT"),
        ({"CC_MIN_STOPLOSS_DISTANCE_PERCENT": -1}, "CC_MIN_STOPLOSS_DISTANCE_PERCENT"),
        ({"CC_MAX_STOPLOSS_DISTANCE_PERCENT": -1}, "CC_MAX_STOPLOSS_DISTANCE_PERCENT"),
        ({"CC_MAX_SIGNAL_GENERATION_SECONDS": 0}, "CC_MAX_SIGNAL_GENERATION_SECONDS"),
        ({"CC_GET_CANDLES_RETRY_DELAY_MS": -1}, "CC_GET_CANDLES_RETRY_DELAY_MS"),
        ({"CC_GET_CANDLES_PRICE_ANOMALY_THRESHOLD_FACTOR": 0}, "CC_GET_CANDLES_PRICE_ANOMALY_THRESHOLD_FACTOR"),
        ({"CC_TICK_TTL_MS": 0}, "CC_TICK_TTL_MS"),
        ({"CC_LISTENER_TIMEOUT_SECONDS": -1}, "CC_LISTENER_TIMEOUT_SECONDS"),
        ({"CC_BACKTEST_LISTENER_TIMEOUT_SECONDS": -0.5}, "CC_BACKTEST_LISTENER_TIMEOUT_SECONDS"),
        # 2 x 0.1 + 2 x 0.1 = 0.4 is the floor for a take-profit distance
        ({"CC_MIN_TAKEPROFIT_DISTANCE_PERCENT": 0.39}, "CC_MIN_TAKEPROFIT_DISTANCE_PERCENT"),
        ({"CC_PERCENT_FEE": 0.2}, "CC_MIN_TAKEPROFIT_DISTANCE_PERCENT"),  # raises the floor to 0.6
        ({"CC_MIN_STOPLOSS_DISTANCE_PERCENT": 20}, "CC_MIN_STOPLOSS_DISTANCE_PERCENT"),
        ({"CC_MIN_STOPLOSS_DISTANCE_PERCENT": 25}, "CC_MAX_STOPLOSS_DISTANCE_PERCENT"),
        ({"CC_MAX_STOPLOSS_DISTANCE_PERCENT": 0.4}, "CC_MAX_STOPLOSS_DISTANCE_PERCENT"),
    ],
)
def test_range_rules(changes: dict[str, Any], key: str) -> None:
    engine = bk.Engine()
    before = snapshot(engine)
    with pytest.raises(bk.ConfigError) as info:
        engine.set_config(changes)
    assert key in str(info.value)
    for value in changes.values():
        assert repr(value) in str(info.value)
    assert snapshot(engine) == before
    # unsafe skips every range rule
    engine.set_config(changes, unsafe=True)
    for k, v in changes.items():
        assert getattr(engine.get_config(), k) == v


@pytest.mark.parametrize("key", COUNT_KEYS)
def test_counts_are_at_least_one(key: str) -> None:
    engine = bk.Engine()
    for bad in (0, -1):
        with pytest.raises(bk.ConfigError) as info:
            engine.set_config({key: bad})
        assert key in str(info.value)
    engine.set_config({key: 1})
    assert getattr(engine.get_config(), key) == 1


def test_take_profit_floor_message_and_boundaries() -> None:
    engine = bk.Engine()
    with pytest.raises(bk.ConfigError) as info:
        engine.set_config(CC_MIN_TAKEPROFIT_DISTANCE_PERCENT=0.3)
    text = str(info.value)
    assert "0.4" in text and "slippage" in text and "fee" in text
    engine.set_config(CC_MIN_TAKEPROFIT_DISTANCE_PERCENT=0.4)  # exactly 2 x slip + 2 x fee
    engine.set_config(CC_MIN_TAKEPROFIT_DISTANCE_PERCENT=0)  # 0 switches the check off
    assert engine.get_config().CC_MIN_TAKEPROFIT_DISTANCE_PERCENT == 0
    engine.set_config(CC_PERCENT_FEE=0, CC_PERCENT_SLIPPAGE=0, CC_MIN_TAKEPROFIT_DISTANCE_PERCENT=0.01)


def test_rules_see_the_merged_config() -> None:
    engine = bk.Engine()
    # both changes together are valid although either alone would break MIN < MAX
    engine.set_config(CC_MIN_STOPLOSS_DISTANCE_PERCENT=30, CC_MAX_STOPLOSS_DISTANCE_PERCENT=40)
    assert engine.get_config().CC_MIN_STOPLOSS_DISTANCE_PERCENT == 30
    # fee raised together with the take-profit floor
    engine.set_config(CC_PERCENT_FEE=1, CC_MIN_TAKEPROFIT_DISTANCE_PERCENT=2.2)
    assert engine.get_config().CC_PERCENT_FEE == 1


def test_every_failing_rule_is_listed_in_one_error() -> None:
    engine = bk.Engine()
    with pytest.raises(bk.ConfigError) as info:
        engine.set_config(CC_PERCENT_FEE=-1, CC_GET_CANDLES_RETRY_COUNT=0, MAX_EVENTS=0)
    text = str(info.value)
    for key in ("CC_PERCENT_FEE", "CC_GET_CANDLES_RETRY_COUNT", "MAX_EVENTS"):
        assert key in text


def test_retry_delay_zero_is_allowed() -> None:
    engine = bk.Engine()
    engine.set_config(CC_GET_CANDLES_RETRY_DELAY_MS=0)
    assert engine.get_config().CC_GET_CANDLES_RETRY_DELAY_MS == 0


# --------------------------------------------------------------------------- unknown keys, atomicity
@pytest.mark.parametrize("unsafe", [False, True])
def test_unknown_key_is_rejected_naming_the_key(unsafe: bool) -> None:
    engine = bk.Engine()
    before = snapshot(engine)
    with pytest.raises(bk.ConfigError, match="CC_PERCENT_FEES"):
        engine.set_config({"CC_PERCENT_FEES": 0.1}, unsafe=unsafe)
    with pytest.raises(bk.ConfigError, match="cc_percent_fee"):
        engine.set_config(cc_percent_fee=0.1, unsafe=unsafe)
    assert snapshot(engine) == before


def test_failing_call_changes_nothing() -> None:
    engine = bk.Engine()
    engine.set_config(CC_PERCENT_FEE=0.05)
    before = snapshot(engine)
    before_obj = engine.get_config()
    attempts: list[dict[str, Any]] = [
        {"CC_PERCENT_SLIPPAGE": 0.01, "CC_PERCENT_FEE": -1},  # valid + range error
        {"CC_PERCENT_SLIPPAGE": 0.01, "NOPE": 1},  # valid + unknown key
        {"CC_PERCENT_SLIPPAGE": 0.01, "MAX_EVENTS": "25"},  # valid + type error
        {"CC_REPORT_SHOW_SIGNAL_NOTE": True, "CC_MIN_TAKEPROFIT_DISTANCE_PERCENT": 0.1},
    ]
    for changes in attempts:
        with pytest.raises(bk.ConfigError):
            engine.set_config(changes)
        assert snapshot(engine) == before
        assert engine.get_config() is before_obj


def test_config_error_is_a_value_error_and_library_error() -> None:
    with pytest.raises(ValueError):
        bk.Engine().set_config(MAX_EVENTS=0)
    with pytest.raises(bk.BacktestKitError):
        bk.Engine().set_config(MAX_EVENTS=0)


def test_non_mapping_argument_is_rejected() -> None:
    engine = bk.Engine()
    with pytest.raises(bk.ConfigError):
        engine.set_config([("CC_PERCENT_FEE", 0.1)])  # type: ignore[arg-type]


def test_unsafe_still_rejects_types_but_accepts_bad_ranges() -> None:
    engine = bk.Engine()
    engine.set_config(CC_PERCENT_FEE=-5, CC_MIN_TAKEPROFIT_DISTANCE_PERCENT=0.01, unsafe=True)
    assert engine.get_config().CC_PERCENT_FEE == -5
    with pytest.raises(bk.ConfigError, match="CC_PERCENT_FEE"):
        engine.set_config(CC_PERCENT_FEE="1", unsafe=True)
    assert engine.get_config().CC_PERCENT_FEE == -5

"""Registration: keyword-only add_*, full validation before the name is taken, list_* order,
engine isolation, and name checks when a run starts
([events §5.3–5.4](../docs/design/events-and-api.md#5-configuration-and-registration),
[risk-sizing](../docs/design/risk-sizing-portfolio.md#1-risk-profiles))."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

import backtest_kit as bk

START = datetime(2025, 1, 1, tzinfo=UTC)
END = START + timedelta(days=1)


async def get_candles(symbol: str, interval: str, since: datetime, limit: int) -> list[Any]:
    return []


async def get_signal(symbol: str, when: datetime) -> None:
    return None


def validate(payload: Any) -> None:
    return None


def quantity(*args: Any) -> float:
    return 1.0


def registered(engine: bk.Engine) -> dict[str, list[Any]]:
    return {
        "exchange": engine.list_exchanges(),
        "strategy": engine.list_strategies(),
        "frame": engine.list_frames(),
        "risk": engine.list_risks(),
        "sizing": engine.list_sizings(),
    }


def full_engine() -> bk.Engine:
    engine = bk.Engine()
    engine.add_exchange(exchange_name="ex", get_candles=get_candles)
    engine.add_strategy(strategy_name="st", interval="5m", get_signal=get_signal)
    engine.add_frame(frame_name="fr", interval="1m", start_date=START, end_date=END)
    return engine


# --------------------------------------------------------------------------- keyword-only
@pytest.mark.parametrize(
    ("method", "args"),
    [
        ("add_exchange", ("ex", get_candles)),
        ("add_strategy", ("st", "5m", get_signal)),
        ("add_frame", ("fr", "1m", START, END)),
        ("add_risk", ("rk",)),
        ("add_sizing", ("sz", quantity)),
    ],
)
def test_add_functions_are_keyword_only(method: str, args: tuple[Any, ...]) -> None:
    engine = bk.Engine()
    with pytest.raises(TypeError):
        getattr(engine, method)(*args)
    assert all(not v for v in registered(engine).values())


def test_module_level_add_and_list_exist() -> None:
    for name in ("add_exchange", "add_strategy", "add_frame", "add_risk", "add_sizing",
                 "list_exchanges", "list_strategies", "list_frames", "list_risks", "list_sizings"):
        assert callable(getattr(bk, name)), name
        assert name in bk.__all__


# --------------------------------------------------------------------------- schema errors
# (kind, bad kwargs, corrected kwargs, texts the error must contain)
CASES: list[tuple[str, dict[str, Any], dict[str, Any], tuple[str, ...]]] = [
    ("strategy", {"interval": "5m", "get_signal": 42}, {"interval": "5m", "get_signal": get_signal},
     ("get_signal", "42")),
    ("strategy", {"interval": "2m", "get_signal": get_signal}, {"interval": "1m", "get_signal": get_signal},
     ("interval", "'2m'")),
    ("strategy", {"interval": "1d", "get_signal": get_signal}, {"interval": "1h", "get_signal": get_signal},
     ("interval", "'1d'")),
    ("strategy", {"interval": 5, "get_signal": get_signal}, {"interval": "5m", "get_signal": get_signal},
     ("interval", "5")),
    ("strategy", {"interval": "5m", "get_signal": get_signal, "callbacks": {"on_opne": print}},
     {"interval": "5m", "get_signal": get_signal, "callbacks": {"on_open": print}},
     ("callbacks", "on_opne")),
    ("strategy", {"interval": "5m", "get_signal": get_signal, "callbacks": {"on_open": "x"}},
     {"interval": "5m", "get_signal": get_signal, "callbacks": bk.StrategyCallbacks(on_open=print)},
     ("on_open", "'x'")),
    ("strategy", {"interval": "5m", "get_signal": get_signal, "callbacks": [print]},
     {"interval": "5m", "get_signal": get_signal}, ("callbacks",)),
    ("strategy", {"interval": "5m", "get_signal": get_signal, "risk_name": 3},
     {"interval": "5m", "get_signal": get_signal, "risk_name": "rk"}, ("risk_name", "3")),
    ("strategy", {"interval": "5m", "get_signal": get_signal, "note": 7},
     {"interval": "5m", "get_signal": get_signal, "note": "seven"}, ("note", "7")),
    ("strategy", {"interval": ["1m"], "get_signal": get_signal}, {"interval": "1m", "get_signal": get_signal},
     ("interval", "['1m']")),
    ("frame", {"interval": ["1m"], "start_date": START, "end_date": END},
     {"interval": "1m", "start_date": START, "end_date": END}, ("interval", "['1m']")),
    ("risk", {"callbacks": [print]}, {"callbacks": {"on_rejected": print}}, ("callbacks",)),
    ("risk", {"callbacks": {"on_reject": print}}, {"callbacks": {"on_allowed": print}}, ("on_reject",)),
    ("exchange", {"get_candles": "nope"}, {"get_candles": get_candles}, ("get_candles", "'nope'")),
    ("exchange", {"get_candles": get_candles, "format_price": 1.5},
     {"get_candles": get_candles, "format_price": None}, ("format_price", "1.5")),
    ("frame", {"interval": "2m", "start_date": START, "end_date": END},
     {"interval": "1m", "start_date": START, "end_date": END}, ("interval", "'2m'")),
    ("frame", {"interval": "1m", "start_date": END, "end_date": START},
     {"interval": "1m", "start_date": START, "end_date": END}, ("start_date", START.isoformat())),
    ("frame", {"interval": "1m", "start_date": START, "end_date": START},
     {"interval": "1m", "start_date": START, "end_date": END}, ("start_date", START.isoformat())),
    ("frame", {"interval": "1m", "start_date": datetime(2025, 1, 1), "end_date": END},
     {"interval": "1m", "start_date": START, "end_date": END}, ("start_date", "naive", "2025")),
    ("frame", {"interval": "1m", "start_date": START, "end_date": "2025-02-01"},
     {"interval": "1m", "start_date": START, "end_date": END}, ("end_date", "'2025-02-01'")),
    ("risk", {"validations": [42]}, {"validations": [validate]}, ("validations[0]", "42")),
    ("risk", {"validations": validate}, {"validations": [{"validate": validate, "note": "ok"}]},
     ("validations",)),
    ("risk", {"validations": [validate, {"validate": "x"}]}, {"validations": [validate]},
     ("validations[1]", "'x'")),
    ("risk", {"validations": [{"validate": validate, "notes": "typo"}]},
     {"validations": [{"validate": validate, "note": "typo"}]}, ("validations[0]", "notes")),
    ("risk", {"max_concurrent_positions": -1}, {"max_concurrent_positions": 1},
     ("max_concurrent_positions", "-1")),
    ("risk", {"max_concurrent_positions": 1.5}, {"max_concurrent_positions": 2},
     ("max_concurrent_positions", "1.5")),
    ("risk", {"max_concurrent_positions": True}, {"max_concurrent_positions": 2},
     ("max_concurrent_positions", "True")),
    ("sizing", {}, {"get_quantity": quantity}, ("get_quantity", "method")),
    ("sizing", {"get_quantity": quantity, "method": "fixed-percentage"},
     {"method": "fixed-percentage", "risk_percentage": 1}, ("get_quantity", "method")),
    ("sizing", {"method": "martingale"}, {"method": "kelly-criterion"}, ("method", "'martingale'")),
    ("sizing", {"get_quantity": 5}, {"get_quantity": quantity}, ("get_quantity", "5")),
]


@pytest.mark.parametrize(("kind", "bad", "good", "texts"), CASES)
def test_schema_error_names_field_and_value_and_takes_no_name(
    kind: str, bad: dict[str, Any], good: dict[str, Any], texts: tuple[str, ...]
) -> None:
    engine = bk.Engine()
    add: Callable[..., Any] = getattr(engine, f"add_{kind}")
    name_key = f"{kind}_name"
    with pytest.raises(bk.SchemaError) as info:
        add(**{name_key: "same", **bad})
    for text in texts:
        assert text in str(info.value), (text, str(info.value))
    assert all(not v for v in registered(engine).values())
    schema = add(**{name_key: "same", **good})  # the corrected retry takes the same name
    assert getattr(schema, name_key) == "same"
    assert [getattr(s, name_key) for s in registered(engine)[kind]] == ["same"]


@pytest.mark.parametrize("kind", ["exchange", "strategy", "frame", "risk", "sizing"])
@pytest.mark.parametrize("name", ["", "   ", None, 42])
def test_bad_names_are_rejected(kind: str, name: Any) -> None:
    engine = bk.Engine()
    good = {
        "exchange": {"get_candles": get_candles},
        "strategy": {"interval": "5m", "get_signal": get_signal},
        "frame": {"interval": "1m", "start_date": START, "end_date": END},
        "risk": {},
        "sizing": {"get_quantity": quantity},
    }[kind]
    with pytest.raises(bk.SchemaError) as info:
        getattr(engine, f"add_{kind}")(**{f"{kind}_name": name, **good})
    assert f"{kind}_name" in str(info.value) and repr(name) in str(info.value)


def test_schema_error_is_a_library_error() -> None:
    with pytest.raises(bk.BacktestKitError):
        bk.Engine().add_strategy(strategy_name="s", interval="2m", get_signal=get_signal)


# --------------------------------------------------------------------------- duplicates
@pytest.mark.parametrize(
    ("kind", "kwargs"),
    [
        ("exchange", {"get_candles": get_candles}),
        ("strategy", {"interval": "5m", "get_signal": get_signal}),
        ("frame", {"interval": "1m", "start_date": START, "end_date": END}),
        ("risk", {"max_concurrent_positions": 1}),
        ("sizing", {"method": "kelly-criterion"}),
    ],
)
def test_duplicate_name_is_rejected(kind: str, kwargs: dict[str, Any]) -> None:
    engine = bk.Engine()
    add = getattr(engine, f"add_{kind}")
    first = add(**{f"{kind}_name": "dup"}, **kwargs)
    with pytest.raises(bk.SchemaError) as info:
        add(**{f"{kind}_name": "dup"}, **kwargs)
    assert "already exist" in str(info.value)
    assert "dup" in str(info.value)
    assert registered(engine)[kind] == [first]
    assert registered(engine)[kind][0] is first


# --------------------------------------------------------------------------- reflection
def test_list_functions_return_schemas_in_registration_order() -> None:
    engine = bk.Engine()
    assert all(v == [] for v in registered(engine).values())
    names = ["zeta", "alpha", "mid"]
    for n in names:
        engine.add_exchange(exchange_name=n, get_candles=get_candles, note=f"note {n}")
        engine.add_strategy(strategy_name=n, interval="1m", get_signal=get_signal,
                            callbacks={"on_open": print})
        engine.add_frame(frame_name=n, interval="1h", start_date=START, end_date=END)
        engine.add_risk(risk_name=n, validations=[validate, {"validate": validate, "note": "v"}])
        engine.add_sizing(sizing_name=n, get_quantity=quantity)
    lists = registered(engine)
    for kind, items in lists.items():
        assert [getattr(s, f"{kind}_name") for s in items] == names
    ex = lists["exchange"][0]
    assert ex.get_candles is get_candles and ex.note == "note zeta"
    st = lists["strategy"][0]
    assert st.get_signal is get_signal and st.interval == "1m"
    assert st.callbacks.on_open is print  # dict coerced to StrategyCallbacks
    fr = lists["frame"][0]
    assert (fr.start_date, fr.end_date, fr.interval) == (START, END, "1h")
    rk = lists["risk"][0]
    assert [v.validate for v in rk.validations] == [validate, validate]
    assert [v.note for v in rk.validations] == [None, "v"]
    # the returned list is a copy; schemas are immutable
    lists["exchange"].clear()
    assert len(engine.list_exchanges()) == 3
    with pytest.raises(AttributeError):
        ex.note = "changed"  # type: ignore[misc]


def test_every_valid_interval_is_accepted() -> None:
    engine = bk.Engine()
    for i, interval in enumerate(["1m", "3m", "5m", "15m", "30m", "1h"]):
        engine.add_strategy(strategy_name=f"s{i}", interval=interval, get_signal=get_signal)
    for i, interval in enumerate(["1m", "3m", "5m", "15m", "30m", "1h", "2h", "4h", "6h", "8h", "1d"]):
        engine.add_frame(frame_name=f"f{i}", interval=interval, start_date=START, end_date=END)
    assert len(engine.list_strategies()) == 6
    assert len(engine.list_frames()) == 11


def test_sizing_methods_and_params() -> None:
    engine = bk.Engine()
    engine.add_sizing(sizing_name="a", method="fixed-percentage", risk_percentage=1)
    with pytest.raises(bk.SchemaError) as info:
        engine.add_sizing(sizing_name="b", method="fixed-percentage", risk_percentage="1")  # type: ignore[arg-type]
    assert "risk_percentage" in str(info.value) and "'1'" in str(info.value)
    assert [s.sizing_name for s in engine.list_sizings()] == ["a"]


def test_two_engines_are_isolated() -> None:
    e1 = bk.Engine()
    e2 = bk.Engine()
    e1.add_exchange(exchange_name="ex", get_candles=get_candles)
    e1.add_strategy(strategy_name="st", interval="5m", get_signal=get_signal)
    assert e2.list_exchanges() == [] and e2.list_strategies() == []
    e2.add_exchange(exchange_name="ex", get_candles=get_candles)  # same name, other world: fine
    assert len(e1.list_exchanges()) == 1 and len(e2.list_exchanges()) == 1
    e1.set_config(CC_PERCENT_FEE=0.05)
    assert e2.get_config().CC_PERCENT_FEE == 0.1


# --------------------------------------------------------------------------- names at run time
@pytest.mark.parametrize(
    ("names", "message"),
    [
        ({"strategy_name": "x", "exchange_name": "ex", "frame_name": "fr"}, "strategy x not found"),
        ({"strategy_name": "st", "exchange_name": "x", "frame_name": "fr"}, "exchange x not found"),
        ({"strategy_name": "st", "exchange_name": "ex", "frame_name": "x"}, "frame x not found"),
    ],
)
@pytest.mark.parametrize("method", ["run", "background"])
async def test_backtest_unknown_names_fail_at_call_time(
    names: dict[str, str], message: str, method: str
) -> None:
    engine = full_engine()
    with pytest.raises(bk.UnknownNameError) as info:
        getattr(engine.backtest, method)("BTCUSDT", **names)  # no iteration, no await
    assert message in str(info.value)
    assert isinstance(info.value, KeyError)
    assert await engine.backtest.list() == []


@pytest.mark.parametrize(
    ("names", "message"),
    [
        ({"strategy_name": "x", "exchange_name": "ex"}, "strategy x not found"),
        ({"strategy_name": "st", "exchange_name": "x"}, "exchange x not found"),
    ],
)
@pytest.mark.parametrize("method", ["run", "background"])
async def test_live_unknown_names_fail_at_call_time(names: dict[str, str], message: str, method: str) -> None:
    engine = full_engine()
    with pytest.raises(bk.UnknownNameError) as info:
        getattr(engine.live, method)("BTCUSDT", **names)
    assert message in str(info.value)
    assert await engine.live.list() == []


@pytest.mark.parametrize(("field", "message"), [("risk_name", "risk nope not found"),
                                                ("sizing_name", "sizing nope not found")])
async def test_unknown_risk_or_sizing_fails_when_the_run_starts(field: str, message: str) -> None:
    engine = full_engine()
    engine.add_strategy(strategy_name="st2", interval="5m", get_signal=get_signal, **{field: "nope"})
    with pytest.raises(bk.UnknownNameError) as info:
        engine.backtest.run("BTCUSDT", strategy_name="st2", exchange_name="ex", frame_name="fr")
    assert message in str(info.value)
    with pytest.raises(bk.UnknownNameError) as info:
        engine.live.run("BTCUSDT", strategy_name="st2", exchange_name="ex")
    assert message in str(info.value)


async def test_names_registered_in_another_engine_are_unknown() -> None:
    full_engine()
    other = bk.Engine()
    with pytest.raises(bk.UnknownNameError, match="strategy st not found"):
        other.backtest.run("BTCUSDT", strategy_name="st", exchange_name="ex", frame_name="fr")

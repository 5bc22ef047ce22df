"""The deliberate public surface (issue items 7 and 8): one error tree, `__all__` everywhere,
`bk.X.__module__ == "backtest_kit"` without breaking pickling, type hints or msgspec decoding."""

from __future__ import annotations

import importlib
import inspect
import pickle
import pkgutil
import re
import typing
from dataclasses import is_dataclass
from types import ModuleType

import msgspec
import pytest

import backtest_kit as bk
from backtest_kit.adapters import candles as candles_module
from backtest_kit.adapters import ccxt as ccxt_facade
from backtest_kit.adapters import ccxt_exchange
from backtest_kit.cli import loader
from backtest_kit.engine import errors
from backtest_kit.listeners import notifiers
from backtest_kit.listeners.notifiers import http
from backtest_kit.portfolio import sizing

PACKAGE = "backtest_kit"


def all_modules() -> list[ModuleType]:
    """The package and every module under it, imported (ccxt itself is only imported on first use)."""
    names = [PACKAGE] + [info.name for info in pkgutil.walk_packages(bk.__path__, PACKAGE + ".")]
    return [importlib.import_module(name) for name in names]


def defined_in_package(obj: object) -> bool:
    return getattr(obj, "__module__", "").split(".")[0] == PACKAGE


def package_exception_classes() -> set[type[BaseException]]:
    """Every exception class a module of the package defines at module level (found by value, since
    the re-exported ones now say `__module__ == "backtest_kit"`)."""
    found: set[type[BaseException]] = set()
    for module in all_modules():
        for value in vars(module).values():
            if inspect.isclass(value) and issubclass(value, BaseException) and defined_in_package(value):
                found.add(value)
    return found


# ---------------------------------------------------------------------- item 7: the error tree
_TREE_LINE = re.compile(r"^(?P<indent>(?:│   |    )*)(?:├── |└── )?(?P<name>\w+)(?: \((?P<builtins>[\w, ]+)\))?$")


def drawn_tree() -> dict[str, tuple[str | None, tuple[str, ...]]]:
    """name -> (drawn parent, drawn built-in bases) from the tree in engine/errors.py's docstring."""
    doc = errors.__doc__ or ""
    lines = [line[4:] for line in doc.splitlines() if line.startswith("    ") and line.strip()]
    assert lines and lines[0] == "BacktestKitError", "the docstring should draw the tree from BacktestKitError"
    tree: dict[str, tuple[str | None, tuple[str, ...]]] = {}
    stack: list[str] = []
    for line in lines:
        match = _TREE_LINE.match(line)
        assert match is not None, f"not a tree line: {line!r}"
        depth = len(match["indent"]) // 4 + (0 if line == match["name"] else 1)
        del stack[depth:]
        parent = stack[-1] if stack else None
        builtins = tuple(b.strip() for b in (match["builtins"] or "").split(",") if b.strip())
        assert match["name"] not in tree, f"{match['name']} drawn twice"
        tree[match["name"]] = (parent, builtins)
        stack.append(match["name"])
    return tree


def test_every_error_class_derives_from_backtest_kit_error_and_is_drawn_in_the_tree() -> None:
    classes = package_exception_classes()
    warnings = {c for c in classes if issubclass(c, Warning)}
    # Warnings are not errors: a `CandleDataWarning` reports suspect data that was kept, and
    # `except BacktestKitError` must not start catching it under `-W error`.
    assert warnings == {bk.CandleDataWarning}
    error_classes = classes - warnings
    assert [c.__name__ for c in error_classes if not issubclass(c, bk.BacktestKitError)] == []
    tree = drawn_tree()
    assert set(tree) == {c.__name__ for c in error_classes}
    for cls in error_classes:
        package_bases = [b for b in cls.__bases__ if defined_in_package(b)]
        builtin_bases = tuple(b.__name__ for b in cls.__bases__ if not defined_in_package(b))
        if cls is bk.BacktestKitError:
            assert tree[cls.__name__] == (None, ())
            continue
        assert len(package_bases) == 1, cls
        assert tree[cls.__name__] == (package_bases[0].__name__, builtin_bases), cls.__name__


def test_the_tree_parser_sees_depth_and_builtin_bases() -> None:
    """The tree test above must be able to fail: a wrongly nested line is told apart."""
    tree = drawn_tree()
    assert tree["UnknownSymbolError"] == ("CandleError", ("KeyError",))
    assert tree["ExchangeRateLimitError"] == ("ExchangeUnavailableError", ())
    assert tree["ExchangeResponseError"] == ("CcxtExchangeError", ())
    assert tree["CliError"] == ("BacktestKitError", ())


def test_old_import_locations_are_the_same_classes() -> None:
    assert sizing.SizingError is errors.SizingError is bk.SizingError
    assert candles_module.UnknownSymbolError is errors.UnknownSymbolError
    for name in ("CcxtExchangeError", "ExchangeUnavailableError", "ExchangeRateLimitError",
                 "ExchangeTimeoutError", "ExchangeResponseError"):
        assert getattr(ccxt_exchange, name) is getattr(errors, name) is getattr(ccxt_facade, name)
    assert http.DeliveryError is notifiers.DeliveryError is errors.DeliveryError
    assert loader.CliError is errors.CliError
    # renamed for the suffix convention (README, Architecture); the old name stays importable
    assert sizing.PositionSize is sizing.PositionSizeFacade
    assert isinstance(bk.PositionSize, sizing.PositionSizeFacade)


@pytest.mark.parametrize(("error", "builtin"), [
    (bk.ConfigError("x"), ValueError),
    (bk.UnknownNameError("x"), KeyError),
    (errors.UnknownSymbolError("x"), KeyError),
    (errors.UnknownSymbolError("x"), ValueError),
    (bk.SizingError("x"), ValueError),
    (bk.SignalTimeoutError("x"), TimeoutError),
    (bk.PersistError("x"), OSError),
    (bk.RunStateError("x"), RuntimeError),
    (errors.ExchangeTimeoutError("x"), bk.ExchangeError),
    (errors.DeliveryError("x", retryable=True), bk.BacktestKitError),
    (errors.CliError("x"), bk.BacktestKitError),
])
def test_errors_are_still_caught_by_the_bases_users_catch(error: BaseException, builtin: type) -> None:
    with pytest.raises(builtin):
        raise error


# ---------------------------------------------------------------------- item 8: __all__
@pytest.mark.parametrize("module", all_modules(), ids=lambda m: m.__name__)
def test_every_module_declares_all_and_every_name_in_it_exists(module: ModuleType) -> None:
    names = getattr(module, "__all__", None)
    assert isinstance(names, list | tuple), f"{module.__name__} has no __all__"
    assert all(isinstance(n, str) for n in names)
    assert len(names) == len(set(names)), f"duplicates in {module.__name__}.__all__"
    assert [n for n in names if not hasattr(module, n)] == []


def test_bk_all_resolves_has_no_duplicates_and_covers_the_spec_names() -> None:
    assert len(bk.__all__) == len(set(bk.__all__))
    assert [n for n in bk.__all__ if not hasattr(bk, n)] == []
    namespace: dict[str, object] = {}
    exec("from backtest_kit import *", namespace)
    assert set(namespace) - {"__builtins__"} == set(bk.__all__)
    # the spec's error names ([public API](../docs/design/public-api.md)) and this additions stay public
    for name in ("BacktestKitError", "ConfigError", "SchemaError", "UnknownNameError", "SignalValidationError",
                 "CandleError", "PersistError", "SizingError"):
        assert name in bk.__all__


def test_reexported_classes_and_functions_report_module_backtest_kit() -> None:
    adopted = [n for n in bk.__all__ if inspect.isclass(getattr(bk, n)) or inspect.isfunction(getattr(bk, n))]
    assert {"Candle", "Engine", "VirtualClock", "BacktestKitError", "get_candles", "replay_clock"} <= set(adopted)
    assert [n for n in adopted if getattr(bk, n).__module__ != PACKAGE] == []
    assert repr(bk.Candle) == "<class 'backtest_kit.Candle'>"
    # classes that are not re-exported keep their home module (pickle must find them there)
    assert errors.CliError.__module__ == "backtest_kit.engine.errors"


def test_adopted_classes_keep_resolvable_type_hints_and_msgspec_decoding() -> None:
    """`__module__` is where typing and msgspec evaluate string annotations: still resolvable."""
    for name in bk.__all__:
        cls = getattr(bk, name)
        if inspect.isclass(cls) and (issubclass(cls, msgspec.Struct) or is_dataclass(cls)):
            typing.get_type_hints(cls)
    assert typing.get_type_hints(bk.SignalRow)["position"] == typing.Literal["long", "short"]
    row = bk.SignalRow(id="a", position="long", price_open=100.0, price_take_profit=110.0, price_stop_loss=90.0,
                       minute_estimated_time=60, note="", symbol="BTCUSDT", strategy_name="s",
                       exchange_name="x", scheduled_at=1, pending_at=1, is_scheduled=False)
    assert msgspec.json.decode(msgspec.json.encode(row), type=bk.SignalRow) == row
    with pytest.raises(msgspec.ValidationError):  # the Literal is enforced, so it was resolved
        msgspec.json.decode(msgspec.json.encode(row).replace(b'"long"', b'"sideways"'), type=bk.SignalRow)


# ---------------------------------------------------------------------- pickling
def round_trip(obj: object) -> object:
    return pickle.loads(pickle.dumps(obj))


def test_models_pickle_round_trip() -> None:
    candle = bk.Candle(1_700_000_000_000, 100.0, 101.0, 99.0, 100.5, 3.0)
    assert round_trip(candle) == candle
    dto = bk.SignalDto(position="short", price_take_profit=90.0, price_stop_loss=110.0, minute_estimated_time=5)
    assert round_trip(dto) == dto
    gaps = bk.CandleGaps(count=1, missing=2, largest=2, first_after=0, first_resume=180_000, first_index=1)
    assert round_trip(gaps) == gaps
    assert type(round_trip(candle)) is bk.Candle


def test_errors_pickle_round_trip_with_their_attributes() -> None:
    stale = bk.StaleDataError("stale", symbol="BTCUSDT", close_time_ms=None, age_ms=5, limit_ms=2)
    back = round_trip(stale)
    assert type(back) is bk.StaleDataError and str(back) == "stale"
    assert (back.symbol, back.close_time_ms, back.age_ms, back.limit_ms) == ("BTCUSDT", None, 5, 2)

    ccxt_error = errors.ExchangeRateLimitError("429", exchange_name="b", exchange_id="binance", kind="DDoS")
    back = round_trip(ccxt_error)
    assert type(back) is errors.ExchangeRateLimitError and back.retryable is True
    assert (back.exchange_name, back.exchange_id, back.kind) == ("b", "binance", "DDoS")

    delivery = round_trip(errors.DeliveryError("down", retryable=True, retry_after=3.0))
    assert (delivery.retryable, delivery.retry_after, str(delivery)) == (True, 3.0, "down")

    slow = round_trip(bk.ListenerTimeoutError("on_tick", "signal", 2.0, "CC_LISTENER_TIMEOUT"))
    assert (slow.listener, slow.channel, slow.timeout) == ("on_tick", "signal", 2.0)

    unknown = round_trip(bk.UnknownNameError("no strategy 'x'"))
    assert isinstance(unknown, KeyError) and str(unknown) == "no strategy 'x'"
    persist = round_trip(bk.PersistError("disk full"))
    assert isinstance(persist, OSError) and str(persist) == "disk full"
    for error in (bk.ConfigError("bad key"), bk.SizingError("bad"), errors.CliError("no file"),
                  errors.UnknownSymbolError("ETHUSDT")):
        back = round_trip(error)
        assert type(back) is type(error) and str(back) == str(error)

"""Loading the user's strategy and building the engine a CLI run uses.

A strategy is given as

- nothing: the bundled SMA-crossover demo (`backtest_kit.demo:register`);
- `path/to/file.py` or `pkg.module`: the module's `register(engine, csv_path)` if it has one, else its
  `get_signal(symbol, when)`; a module that registers on `bk.default_engine` at import time works too
  (its registrations are copied);
- `path/to/file.py:name` or `pkg.module:name`: that function — a `get_signal` when it is called
  `get_signal` or its first parameter is `symbol`, else a `register`.

`register(engine, csv_path=None)` registers an exchange, the strategy and usually a frame on `engine`
and may return `(symbol, frame_name)`, a symbol, or None. It gets the `--data` CSV path (None when not
given: use your default data) — or the `--replay` CSV in a live replay. With a bare `get_signal` the
CLI registers the exchange (`--data` CSVs, the bundled sample by default, or `--exchange ccxt:ID`), the
strategy (`--strategy-name`, `--interval`) and the frame itself.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import backtest_kit

from ..adapters import CsvCandles, MemoryCandles, ReplayExchange, bundled_sample_path
from ..adapters.candles import resolve_sample_name
from ..engine.errors import CliError
from ..engine.registry import ExchangeSchema, FrameSchema, StrategySchema
from ..system.engine import Engine
from ..system.jobs import register_file_module
from .outcome import SignalCalls

__all__ = [
    "CLI_FRAME",
    "DEFAULT_STRATEGY",
    "REPLAY_EXCHANGE",
    "CliEngine",
    "CliError",
    "StrategyRef",
    "Target",
    "build_target",
    "candle_store",
    "load_strategy",
    "utc",
]

DEFAULT_STRATEGY = "backtest_kit.demo:register"
CLI_FRAME = "cli-frame"
REPLAY_EXCHANGE = "replay"


class CliEngine(Engine):
    """An engine whose candle stores become replay exchanges (never revealing a candle that is still
    forming at the clock's "now") when the CLI runs live mode over history."""

    def __init__(self, *, replay: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.replay = replay
        self.signal_calls = SignalCalls()  # lets the CLI tell a strategy that never worked

    def add_strategy(self, **kwargs: Any) -> StrategySchema:
        get_signal = kwargs.get("get_signal")
        if callable(get_signal):
            kwargs["get_signal"] = self.signal_calls.wrap(get_signal)
        return super().add_strategy(**kwargs)

    def add_exchange(self, **kwargs: Any) -> ExchangeSchema:
        source = kwargs.get("get_candles")
        if self.replay and isinstance(source, MemoryCandles):
            kwargs["get_candles"] = ReplayExchange(source, self.clock)
        return super().add_exchange(**kwargs)


@dataclass
class StrategyRef:
    """What `--strategy` named: exactly one of `register` / `get_signal` / `imported` is set."""

    label: str
    default_name: str
    register: Callable[..., Any] | None = None
    get_signal: Callable[..., Any] | None = None
    imported: Engine | None = None  # bk.default_engine holding import-time registrations


@dataclass
class Target:
    """Everything a run needs, resolved from the registrations and the options."""

    engine: Engine
    symbol: str
    strategy_name: str
    exchange_name: str
    frame_name: str | None
    source: MemoryCandles | None  # the candle store behind the exchange, when it is one


# ---------------------------------------------------------------------------------------------------------
# Strategy import
# ---------------------------------------------------------------------------------------------------------


def _import_file(path: Path) -> ModuleType:
    if not path.is_file():
        raise CliError(f"strategy file not found: {path}")
    name = f"_backtest_kit_strategy_{path.stem.replace('-', '_')}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise CliError(f"cannot load strategy file {path} (not a Python file?)")
    module = importlib.util.module_from_spec(spec)
    folder = str(path.resolve().parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)  # like `python file.py`: its neighbours are importable
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except SystemExit as exc:
        raise CliError(f"strategy file {path} called sys.exit({exc.code!r}) while being imported") from None
    except Exception as exc:
        sys.modules.pop(name, None)
        raise CliError(f"strategy file {path} failed to import: {type(exc).__name__}: {exc}") from exc
    register_file_module(name, str(path.resolve()))  # so process-pool workers can load it too
    return module


def _import_module(name: str) -> ModuleType:
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())  # console scripts do not put the working directory on the path
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (name == exc.name or name.startswith(exc.name + ".")):
            raise CliError(
                f"strategy module {name!r} not found (give a file path like my_strategy.py, "
                "or a module importable from the current directory)"
            ) from None
        raise CliError(f"strategy module {name!r} failed to import: {exc}") from exc
    except Exception as exc:
        raise CliError(f"strategy module {name!r} failed to import: {type(exc).__name__}: {exc}") from exc


def _is_get_signal(name: str, fn: Callable[..., Any]) -> bool:
    if name == "get_signal":
        return True
    try:
        params = list(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return False
    return bool(params) and params[0] == "symbol"


def load_strategy(spec: str | None) -> StrategyRef:
    """Import what `--strategy` names (see the module docstring)."""
    spec = spec or DEFAULT_STRATEGY
    target, sep, attr = spec.rpartition(":")
    if not sep or not target or "/" in attr or "\\" in attr:
        target, attr = spec, ""
    is_file = target.endswith(".py") or os.sep in target or "/" in target or Path(target).is_file()
    if is_file:
        path = Path(target)
        module = _import_file(path)
        default_name = path.stem
    else:
        module = _import_module(target)
        default_name = target.rsplit(".", 1)[-1]
    label = spec
    if attr:
        fn = getattr(module, attr, None)
        if fn is None or not callable(fn):
            raise CliError(f"{target} has no function {attr!r}")
        if _is_get_signal(attr, fn):
            return StrategyRef(label, default_name, get_signal=fn)
        return StrategyRef(label, default_name, register=fn)
    register = getattr(module, "register", None)
    if callable(register):
        return StrategyRef(label, default_name, register=register)
    get_signal = getattr(module, "get_signal", None)
    if callable(get_signal):
        return StrategyRef(label, default_name, get_signal=get_signal)
    if backtest_kit.default_engine.list_strategies():
        return StrategyRef(label, default_name, imported=backtest_kit.default_engine)
    raise CliError(
        f"{target} defines neither register(engine, csv_path) nor get_signal(symbol, when); "
        f"name the function explicitly as {target}:<function>"
    )


# ---------------------------------------------------------------------------------------------------------
# Engine setup
# ---------------------------------------------------------------------------------------------------------


async def _call_register(fn: Callable[..., Any], engine: Engine, data: str | list[str] | None) -> Any:
    try:
        params = [p for p in inspect.signature(fn).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)]
    except (TypeError, ValueError):
        params = []
    wants_data = len(params) >= 2 or any(p.kind == p.VAR_POSITIONAL for p in params)
    if not wants_data and data is not None:
        raise CliError(f"{getattr(fn, '__name__', 'register')}(engine) takes no data path, but --data was given")
    result = fn(engine, data) if wants_data else fn(engine)
    if inspect.isawaitable(result):
        result = await result
    return result


def _copy_registrations(src: Engine, dst: Engine) -> None:
    for schema in src.list_exchanges():
        dst.add_exchange(
            exchange_name=schema.exchange_name, get_candles=schema.get_candles, format_price=schema.format_price,
            format_quantity=schema.format_quantity, note=schema.note, on_candle_data=schema.on_candle_data,
            on_close=schema.on_close,
        )
    reg, dreg = src.registry, dst.registry
    for table, dtable in ((reg.strategies, dreg.strategies), (reg.frames, dreg.frames),
                          (reg.risks, dreg.risks), (reg.sizings, dreg.sizings)):
        for item in table.list():
            name = next(getattr(item, f) for f in ("strategy_name", "frame_name", "risk_name", "sizing_name")
                        if hasattr(item, f))
            dtable.add(name, item)  # type: ignore[arg-type]


def candle_store(engine: Engine, exchange_name: str) -> MemoryCandles | None:
    """The in-memory candle store behind a registered exchange, when it is one (for data ranges)."""
    source = engine.registry.exchanges.get(exchange_name).get_candles
    if isinstance(source, ReplayExchange):
        return source.source
    return source if isinstance(source, MemoryCandles) else None


def _pick(kind: str, option: str, wanted: str | None, names: Sequence[str]) -> str:
    if wanted is not None:
        if wanted not in names:
            known = ", ".join(names) or "none"
            raise CliError(f"{kind} {wanted!r} is not registered (registered: {known})")
        return wanted
    if len(names) == 1:
        return names[0]
    if not names:
        raise CliError(f"the strategy registered no {kind}")
    raise CliError(f"several {kind}s are registered ({', '.join(names)}); choose one with {option}")


def _add_ccxt(engine: Engine, spec: str, *, sandbox: bool = False) -> str:
    exchange_id = spec.split(":", 1)[1]
    if not exchange_id:
        raise CliError("--exchange ccxt:<id> needs an exchange id, e.g. ccxt:binance")
    try:
        from ..adapters.ccxt import add_ccxt_exchange
    except ImportError as exc:
        raise CliError(f"the ccxt exchange adapter is not available: {exc}") from None
    if exchange_id in engine.registry.exchanges:
        raise CliError(f"an exchange named {exchange_id!r} is already registered by the strategy")
    add_ccxt_exchange(exchange_id, exchange_id, engine=engine, sandbox=sandbox)
    return exchange_id


def utc(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


async def build_target(
    engine: Engine,
    ref: StrategyRef,
    *,
    data: Sequence[str],
    symbol: str | None,
    strategy_name: str | None,
    exchange: str | None,
    interval: str,
    warmup_minutes: int,
    frame: bool,
    frame_name: str | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
    frame_interval: str | None = None,
    replay_csv: str | None = None,
    sandbox: bool = False,
) -> Target:
    """Register the strategy on `engine` and resolve symbol, names and (for backtests) the frame."""
    for path in [*data, *([replay_csv] if replay_csv else [])]:
        if not resolve_sample_name(path).is_file():
            raise CliError(f"data file not found: {path}")
    csv_arg: str | list[str] | None = list(data) if len(data) > 1 else data[0] if data else None
    if replay_csv is not None:
        csv_arg = replay_csv
    returned_symbol: str | None = None
    returned_frame: str | None = None
    if ref.register is not None:
        result = await _call_register(ref.register, engine, csv_arg)
        if isinstance(result, str):
            returned_symbol = result
        elif isinstance(result, tuple | list) and result:
            returned_symbol = str(result[0])
            if len(result) > 1 and result[1] is not None:
                returned_frame = str(result[1])
    elif ref.imported is not None:
        _copy_registrations(ref.imported, engine)
    else:
        assert ref.get_signal is not None
        name = strategy_name or ref.default_name
        engine.add_strategy(strategy_name=name, interval=interval, get_signal=ref.get_signal)
        if exchange is None or not exchange.startswith("ccxt:"):
            paths: list[str] = [replay_csv] if replay_csv else list(data) or [str(bundled_sample_path())]
            engine.add_exchange(exchange_name=exchange or "csv",
                                get_candles=CsvCandles(paths[0]) if len(paths) == 1 else CsvCandles(paths))

    exchange_names = [s.exchange_name for s in engine.list_exchanges()]
    if exchange is not None and exchange.startswith("ccxt:"):
        exchange_name = _add_ccxt(engine, exchange, sandbox=sandbox)
    else:
        exchange_name = _pick("exchange", "--exchange", exchange, exchange_names)
    if replay_csv is not None and not isinstance(engine.registry.exchanges.get(exchange_name).get_candles,
                                                 ReplayExchange):
        if exchange is not None:
            raise CliError(f"--replay needs a candle-file exchange, but {exchange!r} is not one")
        if REPLAY_EXCHANGE not in engine.registry.exchanges:
            engine.add_exchange(exchange_name=REPLAY_EXCHANGE, get_candles=CsvCandles(replay_csv))
        exchange_name = REPLAY_EXCHANGE
    strategy = _pick("strategy", "--strategy-name", strategy_name,
                     [s.strategy_name for s in engine.list_strategies()])
    source = candle_store(engine, exchange_name)

    sym = symbol or returned_symbol or (source.symbols[0] if source is not None and source.symbols else None)
    if sym is None:
        raise CliError("--symbol is required with this exchange")
    if source is not None and sym not in source.symbols:
        raise CliError(f"symbol {sym!r} is not in the data (symbols: {', '.join(source.symbols)})")

    chosen_frame: str | None = None
    if frame:
        chosen_frame = _resolve_frame(engine, source, sym, frame_name or returned_frame, start, end,
                                      frame_interval, warmup_minutes)
    return Target(engine=engine, symbol=sym, strategy_name=strategy, exchange_name=exchange_name,
                  frame_name=chosen_frame, source=source)


def _resolve_frame(
    engine: Engine,
    source: MemoryCandles | None,
    symbol: str,
    wanted: str | None,
    start: datetime | None,
    end: datetime | None,
    interval: str | None,
    warmup_minutes: int,
) -> str:
    frames = [f.frame_name for f in engine.list_frames()]
    base: FrameSchema | None = None
    if wanted is not None:
        _pick("frame", "--frame-name", wanted, frames)
        base = engine.registry.frames.get(wanted)
    elif len(frames) == 1:
        base = engine.registry.frames.get(frames[0])
    if base is not None and start is None and end is None and interval is None:
        return base.frame_name
    if base is None and len(frames) > 1 and start is None and end is None:
        raise CliError(f"several frames are registered ({', '.join(frames)}); choose one with --frame-name")
    if start is None:
        if base is not None:
            start = base.start_date
        elif source is not None:
            start = utc(source.first_timestamp(symbol)) + timedelta(minutes=warmup_minutes)
        else:
            raise CliError("--from is required (no frame registered and no candle file to take the range from)")
    if end is None:
        if base is not None:
            end = base.end_date
        elif source is not None:
            end = utc(source.last_timestamp(symbol))
        else:
            raise CliError("--to is required (no frame registered and no candle file to take the range from)")
    if end < start:
        raise CliError(f"the frame ends before it starts: --from {start.isoformat()} --to {end.isoformat()}")
    engine.add_frame(frame_name=CLI_FRAME, interval=interval or (base.interval if base else "1m"),
                     start_date=start, end_date=end)
    return CLI_FRAME

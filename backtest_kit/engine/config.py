"""Engine configuration: the reference's `CC_*` keys, type- and range-checked, replaced atomically.

The config is an immutable Struct; `set_config` builds a new one and swaps it in only when every rule
passes, so a failed call never leaves a half-applied state behind. Code reads `engine.config` at the
moment of use, so a change applies to runs already in progress (the reference's behaviour).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import msgspec
from msgspec import Struct

from .errors import ConfigError

__all__ = ["DEFAULT_CONFIG", "Config", "ConfigListener", "merge_config"]


class Config(Struct, frozen=True):
    """Every setting with its default. Percent values are on a 0–100 scale."""

    CC_SCHEDULE_AWAIT_MINUTES: int = 120
    CC_AVG_PRICE_CANDLES_COUNT: int = 5
    CC_PERCENT_SLIPPAGE: float = 0.1
    CC_PERCENT_FEE: float = 0.1
    CC_MIN_TAKEPROFIT_DISTANCE_PERCENT: float = 0.5
    CC_MIN_STOPLOSS_DISTANCE_PERCENT: float = 0.5
    CC_MAX_STOPLOSS_DISTANCE_PERCENT: float = 20.0
    CC_MAX_SIGNAL_LIFETIME_MINUTES: int = 1440
    CC_MAX_SIGNAL_GENERATION_SECONDS: float = 180
    CC_GET_CANDLES_RETRY_COUNT: int = 3
    CC_GET_CANDLES_RETRY_DELAY_MS: int = 5000
    CC_GET_CANDLES_PRICE_ANOMALY_THRESHOLD_FACTOR: float = 20  # both ways; the reference has 1000, downward only
    CC_GET_CANDLES_MIN_CANDLES_FOR_MEDIAN: int = 5
    # per (exchange, symbol, interval): the most closed candles kept converted and validated; 0 = no store
    CC_CANDLE_STORE_MAX_CANDLES: int = 1000
    CC_REPORT_SHOW_SIGNAL_NOTE: bool = False
    CC_TICK_TTL_MS: int = 60_001
    MAX_EVENTS: int = 25
    CC_LIVE_MAX_CANDLE_AGE_MS: int = 120_000  # live: fail a tick whose newest closed 1m candle is older; 0 = off
    # per-delivery listener timeouts (seconds, 0 = off): a hung live listener must not freeze every pair
    CC_LISTENER_TIMEOUT_SECONDS: float = 30
    CC_BACKTEST_LISTENER_TIMEOUT_SECONDS: float = 0
    # live: gc.freeze() the settled heap, gen-0 threshold >= 10 000 while runs go (engine/gc_policy.py);
    # read when a run starts
    CC_LIVE_GC_TUNING: bool = True


DEFAULT_CONFIG = Config()

_INT = "int"
_NUM = "number"
_BOOL = "bool"

# key -> (kind, lower bound, bound inclusive?)  None bound = unchecked
_RULES: dict[str, tuple[str, float | None, bool]] = {
    "CC_SCHEDULE_AWAIT_MINUTES": (_INT, 1, True),
    "CC_AVG_PRICE_CANDLES_COUNT": (_INT, 1, True),
    "CC_PERCENT_SLIPPAGE": (_NUM, 0, True),
    "CC_PERCENT_FEE": (_NUM, 0, True),
    "CC_MIN_TAKEPROFIT_DISTANCE_PERCENT": (_NUM, 0, True),
    "CC_MIN_STOPLOSS_DISTANCE_PERCENT": (_NUM, 0, True),
    "CC_MAX_STOPLOSS_DISTANCE_PERCENT": (_NUM, 0, True),
    "CC_MAX_SIGNAL_LIFETIME_MINUTES": (_INT, 1, True),
    "CC_MAX_SIGNAL_GENERATION_SECONDS": (_NUM, 0, False),
    "CC_GET_CANDLES_RETRY_COUNT": (_INT, 1, True),
    "CC_GET_CANDLES_RETRY_DELAY_MS": (_INT, 0, True),
    "CC_GET_CANDLES_PRICE_ANOMALY_THRESHOLD_FACTOR": (_NUM, 0, False),
    "CC_GET_CANDLES_MIN_CANDLES_FOR_MEDIAN": (_INT, 1, True),
    "CC_CANDLE_STORE_MAX_CANDLES": (_INT, 0, True),
    "CC_REPORT_SHOW_SIGNAL_NOTE": (_BOOL, None, True),
    "CC_TICK_TTL_MS": (_INT, 1, True),
    "MAX_EVENTS": (_INT, 1, True),
    "CC_LIVE_MAX_CANDLE_AGE_MS": (_INT, 0, True),
    "CC_LISTENER_TIMEOUT_SECONDS": (_NUM, 0, True),
    "CC_BACKTEST_LISTENER_TIMEOUT_SECONDS": (_NUM, 0, True),
    "CC_LIVE_GC_TUNING": (_BOOL, None, True),
}


def _check_type(key: str, value: Any) -> str | None:
    kind = _RULES[key][0]
    if kind == _BOOL:
        return None if isinstance(value, bool) else f"{key} must be a bool, got {value!r}"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"{key} must be a {'whole number' if kind == _INT else 'number'}, got {value!r}"
    if kind == _INT and not (isinstance(value, int) or (math.isfinite(value) and value == int(value))):
        return f"{key} must be a whole number, got {value!r}"
    if not math.isfinite(value):
        return f"{key} must be finite, got {value!r}"
    return None


def _check_range(cfg: Config) -> list[str]:
    problems: list[str] = []
    for key, (kind, low, inclusive) in _RULES.items():
        if kind == _BOOL or low is None:
            continue
        value = getattr(cfg, key)
        if value < low or (not inclusive and value == low):
            sign = ">=" if inclusive else ">"
            problems.append(f"{key} must be {sign} {low:g}, got {value!r}")
    slip, fee = cfg.CC_PERCENT_SLIPPAGE, cfg.CC_PERCENT_FEE
    min_tp = cfg.CC_MIN_TAKEPROFIT_DISTANCE_PERCENT
    needed = 2 * slip + 2 * fee
    if min_tp > 0 and min_tp < needed:
        problems.append(
            f"CC_MIN_TAKEPROFIT_DISTANCE_PERCENT must be 0 (off) or >= {needed:g} "
            f"(2 x slippage {slip:g} + 2 x fee {fee:g}) so a take profit can be profitable, got {min_tp!r}"
        )
    min_sl, max_sl = cfg.CC_MIN_STOPLOSS_DISTANCE_PERCENT, cfg.CC_MAX_STOPLOSS_DISTANCE_PERCENT
    if min_sl > 0 and max_sl > 0 and min_sl >= max_sl:
        problems.append(
            f"CC_MIN_STOPLOSS_DISTANCE_PERCENT ({min_sl!r}) must be below "
            f"CC_MAX_STOPLOSS_DISTANCE_PERCENT ({max_sl!r})"
        )
    max_age = cfg.CC_LIVE_MAX_CANDLE_AGE_MS
    if 0 < max_age < 60_000:
        problems.append(
            f"CC_LIVE_MAX_CANDLE_AGE_MS must be 0 (off) or >= 60000: between two closes the newest closed "
            f"1m candle is up to a minute old, got {max_age!r}"
        )
    return problems


def merge_config(
    current: Config, changes: Mapping[str, Any] | None, keys: Mapping[str, Any], *, unsafe: bool = False
) -> Config:
    """A new Config with `changes` applied; raises one ConfigError listing every failed rule."""
    merged: dict[str, Any] = {}
    for source in (changes or {}), keys:
        if not isinstance(source, Mapping):
            raise ConfigError(f"set_config expects a mapping of CC_* keys, got {source!r}")
        merged.update(source)
    problems: list[str] = []
    for key, value in merged.items():
        if key not in _RULES:
            problems.append(f"unknown config key {key!r}; known keys: {', '.join(_RULES)}")
            continue
        problem = _check_type(key, value)
        if problem:
            problems.append(problem)
    if problems:
        raise ConfigError(_format(problems))
    typed = {k: (int(v) if _RULES[k][0] == _INT else float(v) if _RULES[k][0] == _NUM else v)
             for k, v in merged.items()}
    new = msgspec.structs.replace(current, **typed)
    if not unsafe:
        problems = _check_range(new)
        if problems:
            raise ConfigError(_format(problems))
    return new


def _format(problems: list[str]) -> str:
    if len(problems) == 1:
        return f"invalid config: {problems[0]}"
    lines = "\n".join(f"  {i}. {p}" for i, p in enumerate(problems, 1))
    return f"invalid config:\n{lines}"


ConfigListener = Callable[[Config], None]

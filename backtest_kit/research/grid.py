"""The parameter space of a sweep: lists of values (a grid) and ranges (for an Optuna search).

A sweep's `params` maps each parameter of the strategy factory to

- a list or tuple of values: every value in a grid; a categorical choice in an Optuna study;
- a `range` or an `IntRange(low, high, step)`: whole numbers, both ends included (a `range` keeps
  Python's exclusive end); every value in a grid; `suggest_int` in a study;
- a `FloatRange(low, high, step=None, log=False)`: `suggest_float` in a study; in a grid only with a
  `step` (a continuous range has no list of values to try).

Kept apart from the sweep itself so the CLI's `--param` parser, the grid and the Optuna search all
agree on one description of the space. Every error names the parameter and the bad value.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

from ..engine.errors import SchemaError

__all__ = ["FloatRange", "IntRange", "ParamSpace", "ParamSpec", "check_space", "grid_points", "space_values"]

_MAX_GRID_POINTS = 1_000_000  # a typo such as 1..10000000 should fail, not allocate


@dataclass(frozen=True)
class IntRange:
    """Whole numbers `low`, `low + step`, ... up to and including `high`."""

    low: int
    high: int
    step: int = 1
    log: bool = False

    def __post_init__(self) -> None:
        for label, value in (("low", self.low), ("high", self.high), ("step", self.step)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise SchemaError(f"IntRange.{label}: expected a whole number, got {value!r}")
        if self.high < self.low:
            raise SchemaError(f"IntRange.high: must be >= low ({self.low}), got {self.high}")
        if self.step < 1:
            raise SchemaError(f"IntRange.step: must be >= 1, got {self.step}")
        if self.log and (self.low < 1 or self.step != 1):
            raise SchemaError(f"IntRange.log: needs low >= 1 and step 1, got low={self.low} step={self.step}")

    def values(self) -> list[int]:
        return list(range(self.low, self.high + 1, self.step))


@dataclass(frozen=True)
class FloatRange:
    """Real numbers from `low` to `high`; with a `step`, the values `low`, `low + step`, ... <= `high`."""

    low: float
    high: float
    step: float | None = None
    log: bool = False

    def __post_init__(self) -> None:
        for label, value in (("low", self.low), ("high", self.high), ("step", self.step)):
            if value is None and label == "step":
                continue
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise SchemaError(f"FloatRange.{label}: expected a finite number, got {value!r}")
        if self.high < self.low:
            raise SchemaError(f"FloatRange.high: must be >= low ({self.low}), got {self.high}")
        if self.step is not None and self.step <= 0:
            raise SchemaError(f"FloatRange.step: must be > 0, got {self.step}")
        if self.log and (self.low <= 0 or self.step is not None):
            raise SchemaError(f"FloatRange.log: needs low > 0 and no step, got low={self.low} step={self.step}")

    def values(self) -> list[float]:
        if self.step is None:
            raise SchemaError(
                f"FloatRange({self.low}, {self.high}) has no step: a grid needs a list of values "
                "(give step=..., or search it with optuna=N)"
            )
        count = math.floor((self.high - self.low) / self.step + 1e-9) + 1
        # rounded to the step's decimals so 0.1 + 0.2 prints (and pickles) as 0.3
        decimals = max(0, -math.floor(math.log10(self.step)) + 6)
        return [round(self.low + i * self.step, decimals) for i in range(count)]


ParamSpec: TypeAlias = Sequence[Any] | range | IntRange | FloatRange
ParamSpace: TypeAlias = Mapping[str, ParamSpec]


def check_space(params: Any) -> dict[str, ParamSpec]:
    """`params` as a checked dict name -> spec; SchemaError naming the parameter and value otherwise."""
    if not isinstance(params, Mapping) or not params:
        raise SchemaError(f"params: expected a non-empty mapping name -> values, got {params!r}")
    checked: dict[str, ParamSpec] = {}
    for name, spec in params.items():
        if not isinstance(name, str) or not name.isidentifier():
            raise SchemaError(f"params: parameter names must be Python identifiers, got {name!r}")
        if isinstance(spec, IntRange | FloatRange | range):
            if isinstance(spec, range) and len(spec) == 0:
                raise SchemaError(f"params.{name}: the range is empty: {spec!r}")
            checked[name] = spec
        elif isinstance(spec, list | tuple):
            if not spec:
                raise SchemaError(f"params.{name}: expected at least one value, got {spec!r}")
            checked[name] = tuple(spec)
        else:
            raise SchemaError(
                f"params.{name}: expected a list of values, a range, IntRange or FloatRange, got {spec!r}"
            )
    return checked


def space_values(name: str, spec: ParamSpec) -> list[Any]:
    """Every value a grid tries for parameter `name`."""
    if isinstance(spec, IntRange | FloatRange):
        try:
            return list(spec.values())
        except SchemaError as exc:
            raise SchemaError(f"params.{name}: {exc}") from None
    return list(spec)


def grid_points(params: ParamSpace) -> list[dict[str, Any]]:
    """The cartesian product of the parameters' values, in declaration order (the last one varies fastest)."""
    space = check_space(params)
    columns = [space_values(name, spec) for name, spec in space.items()]
    size = math.prod(len(c) for c in columns)
    if size > _MAX_GRID_POINTS:
        raise SchemaError(f"params: the grid has {size} points (more than {_MAX_GRID_POINTS}); "
                          "narrow it or search it with optuna=N")
    names = list(space)
    return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*columns)]

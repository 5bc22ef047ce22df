"""The Optuna side of a sweep: one study per walk-forward split, driven by ask/tell.

Optuna is an optional extra (`pip install 'backtest-kit[optuna]'`), imported only when a sweep asks
for trials, so the package imports and type-checks without it. A sweep does not hand Optuna an
objective function: it asks each study for a batch of trials, runs their backtests through its
executor (in parallel, in other processes, on Ray), then tells the results back in the order the
trials were asked. The telling order, and so the study, does not depend on which job finished first:
with a `seed` the same trials are suggested on every run and on every executor.
"""

from __future__ import annotations

import copy
import importlib
from typing import Any

from ..engine.errors import SchemaError
from .grid import FloatRange, IntRange, ParamSpec
from .ranking import LOWER_IS_BETTER

__all__ = ["SAMPLERS", "check_searchable", "import_optuna", "make_study", "suggest_params", "tell"]

SAMPLERS = ("tpe", "random", "cmaes", "qmc")


def import_optuna() -> Any:
    """The optuna module; ImportError naming the extra when it is not installed (as a chart without
    matplotlib raises ImportError: a missing optional dependency is not a bad argument)."""
    try:
        return importlib.import_module("optuna")
    except ImportError:
        raise ImportError(
            "optuna: an Optuna search (optuna=N, --optuna N) needs the optuna extra: "
            "pip install 'backtest-kit[optuna]'"
        ) from None


def _sampler(optuna: Any, sampler: Any, seed: int | None) -> Any:
    if sampler is None or sampler == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if sampler == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed)
    if sampler == "qmc":
        return optuna.samplers.QMCSampler(seed=seed)
    if isinstance(sampler, str):
        raise SchemaError(f"sampler: unknown sampler {sampler!r}; expected one of {', '.join(SAMPLERS)} "
                          "or an optuna sampler object")
    if not isinstance(sampler, optuna.samplers.BaseSampler):
        raise SchemaError(f"sampler: expected a sampler name or an optuna sampler object, got {sampler!r}")
    return copy.deepcopy(sampler)  # one per study: a shared sampler's random state would couple them


def make_study(metric: str, sampler: Any, seed: int | None, name: str) -> Any:
    """A fresh in-memory study maximising `metric` (minimising the harm figures)."""
    optuna = import_optuna()
    direction = "minimize" if metric in LOWER_IS_BETTER else "maximize"
    return optuna.create_study(direction=direction, sampler=_sampler(optuna, sampler, seed), study_name=name)


def check_searchable(space: dict[str, ParamSpec]) -> None:
    """Every categorical choice must be a value Optuna stores (None, bool, int, float, str)."""
    for name, spec in space.items():
        if isinstance(spec, IntRange | FloatRange | range):
            continue
        for value in spec:
            if value is not None and not isinstance(value, bool | int | float | str):
                raise SchemaError(f"params.{name}: an Optuna choice must be None, bool, int, float or str, "
                                  f"got {value!r}")


def suggest_params(trial: Any, space: dict[str, ParamSpec]) -> dict[str, Any]:
    """The trial's parameters, in declaration order."""
    params: dict[str, Any] = {}
    for name, spec in space.items():
        if isinstance(spec, IntRange):
            params[name] = trial.suggest_int(name, spec.low, spec.high, step=spec.step, log=spec.log)
        elif isinstance(spec, FloatRange):
            params[name] = trial.suggest_float(name, spec.low, spec.high, step=spec.step, log=spec.log)
        elif isinstance(spec, range) and spec.step > 0:
            params[name] = trial.suggest_int(name, spec.start, spec[-1], step=spec.step)
        else:
            params[name] = trial.suggest_categorical(name, list(spec))
    return params


def tell(study: Any, trial: Any, value: float | None) -> None:
    """Report a trial's score; a failed or figure-less trial is told as failed (samplers skip it)."""
    if value is None:
        study.tell(trial, state=import_optuna().trial.TrialState.FAIL)
    else:
        study.tell(trial, value)

"""Pickling jobs for another process, with errors that say which part of which job does not travel.

A raw `PicklingError: Can't pickle <function <lambda> ...>` names neither the job nor the schema
field, and it surfaces from the pool's feeder thread long after `submit`. Here every job is pickled
in the submitting process before anything starts, and a failure is re-raised as a `SchemaError`
such as "job 'j3': get_signal of strategy 'x' is a lambda/closure ...; the local executor needs a
module-level function". Workers unpickle with `load_job`, which turns a function that exists only
in the parent (defined in a notebook or REPL `__main__`) into a job error with the same kind of hint.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import pickle
import sys
from collections.abc import Iterator
from typing import Any

from ..engine.errors import SchemaError
from ..system.jobs import BacktestJob, file_modules

__all__ = ["dump_job", "load_job"]


def dump_job(job: BacktestJob, executor: str) -> bytes:
    """`job` pickled (highest protocol), or a `SchemaError` naming the job and the unpicklable part.

    A job with a `strategy_factory` travels without its strategy's `get_signal`: the worker builds
    it from the factory, and the registered one is often a closure of that factory (it would not
    pickle, and is not needed).
    """
    if job.strategy_factory is not None:
        job = dataclasses.replace(job, strategy=dataclasses.replace(job.strategy, get_signal=_built_by_factory))
    try:
        inner = pickle.dumps(job, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        raise SchemaError(_explain(job, executor, exc)) from exc
    # builtins only, so the worker can always read it, and load the file modules before the job
    return pickle.dumps((file_modules(), inner), protocol=pickle.HIGHEST_PROTOCOL)


async def _built_by_factory(symbol: str, when: object) -> None:
    """Stands in for the get_signal of a factory job in transit; `run_job` replaces it before use."""
    raise RuntimeError("placeholder get_signal called: the job's strategy_factory should have replaced it")


def load_job(blob: bytes, job_id: str) -> BacktestJob:
    """Unpickle a job in a worker; an import failure becomes an error that says what to change."""
    modules, inner = pickle.loads(blob)
    try:
        _load_file_modules(modules)
        job = pickle.loads(inner)
    except (AttributeError, ImportError) as exc:
        raise SchemaError(
            f"job {job_id!r} could not be rebuilt in the worker process: {type(exc).__name__}: {exc}. "
            "Functions must live in an importable module (not a notebook or REPL), and a script "
            "must start its run under `if __name__ == \"__main__\":`"
        ) from exc
    if not isinstance(job, BacktestJob):
        raise SchemaError(f"job {job_id!r}: expected a BacktestJob, got {type(job).__name__}")
    return job


def _load_file_modules(modules: dict[str, str]) -> None:
    """Import every file module of the parent this worker lacks, under the parent's name for it."""
    for name, path in modules.items():
        if name in sys.modules:
            continue
        folder = os.path.dirname(path)
        if folder not in sys.path:
            sys.path.insert(0, folder)  # like the parent did: the file's neighbours are importable
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot load module {name!r} from {path}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            sys.modules.pop(name, None)
            raise


def _parts(job: BacktestJob) -> Iterator[tuple[str, Any]]:
    """(description, value) of every piece of a job a user supplies, most likely culprit first."""
    strategy, exchange, frame = job.strategy, job.exchange, job.frame
    if job.strategy_factory is not None:
        yield f"strategy_factory of strategy {strategy.strategy_name!r}", job.strategy_factory
    yield f"get_signal of strategy {strategy.strategy_name!r}", strategy.get_signal
    for field in dataclasses.fields(strategy.callbacks):
        yield f"callbacks.{field.name} of strategy {strategy.strategy_name!r}", getattr(strategy.callbacks, field.name)
    for schema, kind, name in ((exchange, "exchange", exchange.exchange_name), (frame, "frame", frame.frame_name)):
        for field in dataclasses.fields(schema):
            yield f"{field.name} of {kind} {name!r}", getattr(schema, field.name)
    for risk in job.risks:
        yield f"risk {risk.risk_name!r}", risk
    if job.sizing is not None:
        yield f"sizing {job.sizing.sizing_name!r}", job.sizing
    for key, value in job.params.items():
        yield f"parameter {key!r}", value
    yield "config", job.config


def _explain(job: BacktestJob, executor: str, exc: Exception) -> str:
    for where, value in _parts(job):
        try:
            pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as part_exc:
            reason = f"{type(part_exc).__name__}: {part_exc}"
            return f"job {job.job_id!r}: {where} {_what(value)}; {_rule(value, executor)} ({reason})"
    return f"job {job.job_id!r} cannot be pickled for the {executor} executor: {type(exc).__name__}: {exc}"


def _what(value: Any) -> str:
    qualname = getattr(value, "__qualname__", None)
    if isinstance(qualname, str) and ("<lambda>" in qualname or "<locals>" in qualname):
        return f"is a lambda/closure ({getattr(value, '__module__', '?')}.{qualname})"
    return f"is {type(value).__name__} {value!r:.80}, which cannot be pickled"


def _rule(value: Any, executor: str) -> str:
    if callable(value):
        return (f"the {executor} executor needs a module-level function (or a picklable object); "
                "for parameters use BacktestJob.strategy_factory, a module-level factory")
    return f"the {executor} executor sends every job to another process, so it must pickle"

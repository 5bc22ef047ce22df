"""Runs one `BacktestJob` on a fresh `Engine`: the body of a worker process, a Ray task or an
in-process run. Separate from `jobs.py` (the contract) so the Walker can use the contract without
importing the composition root that imports the Walker.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import socket
import time
import traceback

from ..engine.models import SignalRow
from ..engine.redact import redact
from ..reports.stats import Statistics
from .engine import Engine
from .jobs import MAX_JOB_WARNINGS, BacktestJob, JobResult

__all__ = ["run_job", "run_job_async"]


def _worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _error_text(exc: BaseException) -> str:
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)).rstrip()
    return redact(text)


async def run_job_async(job: BacktestJob) -> JobResult:
    """Run `job` on a fresh `Engine` of this process and return its statistics or its error.

    The engine is private to the job (own registry, bus and stores, no persistence: backtests do not
    persist), so jobs never see each other's state, and the statistics are exactly those of a
    `Backtest.run` of the same schemas in any other process.
    """
    started = time.perf_counter()
    warnings: list[str] = []
    stats: Statistics | None = None
    error: str | None = None
    open_signal: SignalRow | None = None
    last_price = 0.0
    strategy = job.strategy
    engine = Engine(config=job.config)

    def note_error(exc: BaseException) -> None:
        if len(warnings) < MAX_JOB_WARNINGS:
            warnings.append(redact(f"{type(exc).__name__}: {exc}"))

    try:
        if job.strategy_factory is not None:
            try:
                get_signal = job.strategy_factory(**dict(job.params))
            except Exception as exc:
                raise RuntimeError(
                    f"strategy factory {getattr(job.strategy_factory, '__qualname__', job.strategy_factory)!r} "
                    f"raised for params {dict(job.params)!r}: {type(exc).__name__}: {exc}"
                ) from exc
            if not callable(get_signal):
                raise TypeError(
                    f"strategy factory returned {get_signal!r} for params {dict(job.params)!r}; "
                    "expected a get_signal callable"
                )
            strategy = dataclasses.replace(strategy, get_signal=get_signal)
        registry = engine.registry
        registry.exchanges.add(job.exchange.exchange_name, job.exchange)
        registry.frames.add(job.frame.frame_name, job.frame)
        for risk in job.risks:
            registry.risks.add(risk.risk_name, risk)
        if job.sizing is not None:
            registry.sizings.add(job.sizing.sizing_name, job.sizing)
        registry.strategies.add(strategy.strategy_name, strategy)
        engine.listen_error(note_error)
        async for _ in engine.backtest.run(
            job.symbol, strategy_name=strategy.strategy_name,
            exchange_name=job.exchange.exchange_name, frame_name=job.frame.frame_name,
        ):
            pass
        stats = await engine.backtest.get_data(job.symbol, strategy.strategy_name)
        # the position still open is in `stats` only as figures; the submitter's store needs the row
        store = engine.backtest.pair_stats.stats(job.symbol, strategy.strategy_name)
        open_signal, last_price = store.open_signal, store.open_price
    except Exception as exc:
        error = _error_text(exc)
    finally:
        await engine.close()
    return JobResult(
        job_id=job.job_id, symbol=job.symbol, strategy_name=strategy.strategy_name,
        frame_name=job.frame.frame_name, params=dict(job.params), stats=stats, error=error,
        elapsed_seconds=time.perf_counter() - started, worker=_worker_name(), warnings=tuple(warnings),
        open_signal=open_signal, last_price=last_price,
    )


def run_job(job: BacktestJob) -> JobResult:
    """`run_job_async` on its own event loop: the entry point of a worker process or a Ray task."""
    return asyncio.run(run_job_async(job))

"""How a run body is iterated for its consumer: shared by `Backtest`/`Live` (`runner.py`) and `Walker`.

A run's own steps execute under its mode's per-delivery listener timeout (`enter_run`), but the
consumer's code between two items does not (it may be another run). The run's record follows the
iteration: an error is kept, the status becomes "done" when the iteration ends for any reason, and
the body is closed (under the run's mode, since closing runs the body's own clean-up steps).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any, Protocol, TypeVar

from .bus import enter_run, leave_run
from .models import InstanceStatus

__all__ = ["aclose_quietly", "follow_in_foreground"]

T = TypeVar("T")


class FollowedRecord(Protocol):
    """What the iteration updates: a run's status and the error that ended it."""

    status: InstanceStatus
    error: str | None


async def aclose_quietly(body: Any) -> None:
    """`await body.aclose()` if it has one; a generator already running (closing itself) is left be."""
    close: Callable[[], Any] | None = getattr(body, "aclose", None)
    if close is not None:
        with contextlib.suppress(RuntimeError):
            await close()


def follow_in_foreground(
    record: FollowedRecord, body: AsyncIterator[T], backtest: bool, on_end: Callable[[], None] | None = None,
) -> AsyncGenerator[T, None]:
    """`body`'s items for the consumer, each step under the run mode; `on_end` runs after the body closed."""

    async def foreground() -> AsyncGenerator[T, None]:
        try:
            while True:
                mode = enter_run(backtest)
                try:
                    item = await anext(body)
                except StopAsyncIteration:
                    break
                finally:
                    leave_run(mode)
                yield item
        except BaseException as exc:
            record.error = repr(exc) if not isinstance(exc, GeneratorExit | asyncio.CancelledError) else None
            raise
        finally:
            record.status = "done"
            mode = enter_run(backtest)
            try:
                await aclose_quietly(body)
            finally:
                leave_run(mode)
            if on_end is not None:
                on_end()

    return foreground()

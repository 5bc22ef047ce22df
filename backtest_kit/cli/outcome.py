"""How a CLI run went: the errors the engine reported, whether the strategy ever worked, Ctrl-C.

Why this exists: the engine keeps going when a tick or a `get_signal` call fails (a live process must
survive a bad minute), so a run whose every tick failed used to end with an empty report and exit 0.
The CLI watches the run instead and, when nothing ever worked, exits 1 naming how many ticks failed,
the first error and the line of the user's code it came from. It also turns Ctrl-C into a graceful
stop so that an interrupted run still writes its report.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import sys
import sysconfig
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, TextIO

from ..engine.errors import SignalValidationError
from ..system.shutdown import install_signal_handlers

__all__ = ["Interrupt", "RunLog", "SignalCalls", "error_origin", "until_done", "write_line"]

_MAX_ERRORS_KEPT = 20
_PACKAGE = Path(__file__).resolve().parents[1]  # backtest_kit/
_LIBRARY_DIRS = tuple(str(_PACKAGE / d) for d in ("engine", "adapters", "listeners", "cli"))
_PATHS = sysconfig.get_paths()
_STDLIB_DIRS = tuple(str(Path(_PATHS[k]).resolve()) for k in ("stdlib", "platstdlib"))
_THIRD_PARTY_DIRS = tuple(str(Path(_PATHS[k]).resolve()) for k in ("purelib", "platlib"))


# ---------------------------------------------------------------------------------------------------------
# Where an error came from
# ---------------------------------------------------------------------------------------------------------


def _frames(tb: TracebackType | None) -> list[tuple[str, int, str]]:
    out = []
    while tb is not None:
        code = tb.tb_frame.f_code
        out.append((code.co_filename, tb.tb_lineno, code.co_name))
        tb = tb.tb_next
    return out


def _rank(filename: str) -> int:
    """2: the user's own code; 1: an installed third-party package; 0: the engine or the standard library.

    The engine's own files are recognised by location, so the bundled demo strategy counts as user code.
    """
    if filename.startswith("<"):
        return 0
    try:
        resolved = str(Path(filename).resolve())
    except (OSError, ValueError):
        return 0
    if resolved.startswith(_LIBRARY_DIRS) or resolved.startswith(_STDLIB_DIRS):
        return 0
    return 1 if resolved.startswith(_THIRD_PARTY_DIRS) else 2


def _chain(error: BaseException) -> Iterator[BaseException]:
    """The error, then what caused it (`raise ... from`), then what it interrupted (unless `from None`)."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)


def _display(filename: str) -> str:
    try:
        return str(Path(filename).resolve().relative_to(Path.cwd().resolve()))
    except (OSError, ValueError):
        return filename


def error_origin(error: BaseException) -> str | None:
    """`file.py:12 in get_signal`: where the error started in the user's own code.

    The root cause is searched first (the engine wraps e.g. a failing `get_candles` in an
    `ExchangeError`), innermost frame first; without a frame of the user's code, the innermost frame
    of an installed package, else the innermost frame at all; None when there is no traceback.
    """
    best: tuple[int, str] | None = None
    for link in reversed(list(_chain(error))):
        frames = _frames(link.__traceback__)
        for filename, line, name in reversed(frames):
            rank = _rank(filename)
            if best is None or rank > best[0]:
                best = (rank, f"{_display(filename)}:{line} in {name}")
            if rank == 2:
                return best[1]
    return None if best is None else best[1]


# ---------------------------------------------------------------------------------------------------------
# Counting get_signal calls and errors
# ---------------------------------------------------------------------------------------------------------


class SignalCalls:
    """Counts the calls of the strategies' `get_signal` and how many raised (timeouts included).

    The engine throttles `get_signal` (interval) and reports its failures as errors while the tick
    itself stays idle, so "did any tick fail" cannot tell a broken strategy from a working one: the
    calls can. One integer increment per call, nothing per tick.
    """

    def __init__(self) -> None:
        self.calls = 0
        self.raised = 0

    def wrap(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """`fn` counted, keeping whether it is a coroutine function (the engine checks that)."""
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def counted_async(*args: Any, **kwargs: Any) -> Any:
                self.calls += 1
                try:
                    return await fn(*args, **kwargs)
                except BaseException:
                    self.raised += 1
                    raise

            return counted_async

        @functools.wraps(fn)
        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            try:
                result = fn(*args, **kwargs)
            except BaseException:
                self.raised += 1
                raise
            return self._awaited(result) if inspect.isawaitable(result) else result

        return counted

    async def _awaited(self, result: Any) -> Any:
        try:
            return await result
        except BaseException:
            self.raised += 1
            raise


class RunLog:
    """The errors the engine reported during a run (each one recoverable: the run went on).

    Nothing is printed per error: with `-v` the engine's logger already shows each one, so echoing
    them here too printed every error twice. The end of the run prints one summary instead.
    """

    def __init__(self, calls: SignalCalls | None = None) -> None:
        self.count = 0
        self.messages: list[str] = []
        self.first: BaseException | None = None
        self.rejected = 0  # signals get_signal returned that failed validation
        self.results = 0  # tick results, counted only until the first one (enough to know "any")
        self.calls = calls or SignalCalls()

    def __call__(self, error: BaseException) -> None:
        self.count += 1
        if self.first is None:
            self.first = error
        if isinstance(error, SignalValidationError):
            self.rejected += 1
        if len(self.messages) < _MAX_ERRORS_KEPT:
            self.messages.append(f"{type(error).__name__}: {error}")

    def on_result(self, result: object) -> None:
        self.results += 1

    def failed_ticks(self) -> int | None:
        """How many ticks failed when the run never worked, else None.

        Never worked = errors were reported and either no tick produced a result (every tick raised:
        no data for the frame, a dead exchange) or every `get_signal` call raised or returned a
        signal that validation rejected.
        """
        if self.count == 0:
            return None
        if self.results == 0:
            return self.count
        calls = self.calls.calls
        if calls and self.calls.raised + self.rejected >= calls:
            return calls
        return None

    def document(self) -> dict[str, Any]:
        first = None if self.first is None else {
            "type": type(self.first).__name__, "message": str(self.first), "origin": error_origin(self.first),
        }
        return {"count": self.count, "messages": self.messages, "first": first,
                "never_worked": self.failed_ticks() is not None}

    def summarise(self, stream: TextIO) -> None:
        """One warning line for a run that worked despite some errors."""
        if self.count and self.first is not None:
            where = error_origin(self.first)
            stream.write(f"warning: the engine reported {self.count} error(s) during the run (the run went on); "
                         f"first: {self.messages[0]}" + (f" (at {where})" if where else "") + "\n")

    def failure(self, stream: TextIO, *, prog: str, debug: bool) -> None:
        """The message of a run that never worked; with `debug`, the first error's traceback (once)."""
        failed = self.failed_ticks()
        assert self.first is not None and failed is not None
        what = "ticks" if self.results == 0 else "get_signal calls"
        stream.write(f"{prog}: error: the run never worked: all {failed} {what} failed\n")
        stream.write(f"  first error: {type(self.first).__name__}: {self.first}\n")
        where = error_origin(self.first)
        if where:
            stream.write(f"  raised at: {where}\n")
        if debug:
            stream.write("".join(traceback.format_exception(self.first)))
        else:
            stream.write("  (run with --debug for the traceback)\n")
        stream.flush()


# ---------------------------------------------------------------------------------------------------------
# Ctrl-C
# ---------------------------------------------------------------------------------------------------------


class Interrupt:
    """SIGINT / SIGTERM during a run: the first asks `stop` (graceful), a later one calls `abandon`.

    Installed around the run *and* the writing of its report, so a Ctrl-C never loses the report;
    `received` tells the command to exit 130.
    """

    def __init__(self, stop: Callable[[], Any], abandon: Callable[[], Any] | None = None) -> None:
        self.stop = stop
        self.abandon = abandon
        self.received = 0
        self._uninstall: Callable[[], None] | None = None

    def _first(self) -> None:
        self.received += 1
        self.stop()

    def _again(self) -> None:
        self.received += 1
        if self.abandon is not None:
            self.abandon()

    def __enter__(self) -> Interrupt:
        with contextlib.suppress(RuntimeError, ValueError):  # not the main thread: Python's default
            self._uninstall = install_signal_handlers(self._first, on_repeat=self._again)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._uninstall is not None:
            self._uninstall()
            self._uninstall = None


async def until_done(task: asyncio.Task[Any]) -> None:
    """Await `task`; its cancellation by a second Ctrl-C ends it early and is not an error here."""
    with contextlib.suppress(asyncio.CancelledError):
        await task
    current = asyncio.current_task()
    if current is not None and current.cancelling():
        raise asyncio.CancelledError  # our own task was cancelled, not just the run


def write_line(text: str, stream: TextIO | None = None) -> None:
    out = stream or sys.stderr
    out.write(text + "\n")
    out.flush()

"""OS signal handling for live processes: SIGINT / SIGTERM call a run's graceful `cancel()`.

    cancel = bk.Live.background("BTCUSDT", strategy_name="sma-cross", exchange_name="binance")
    uninstall = bk.install_signal_handlers(cancel)
    await cancel.wait()            # Ctrl-C or `kill` -> no new signals, open position runs to its close
    uninstall()

The handler runs as a callback of the event loop (never inside the interrupted frame), so `cancel`
may touch the loop's state freely. On loops without `add_signal_handler` (Windows) the handler falls
back to `signal.signal` and hands the call to the loop thread with `call_soon_threadsafe`.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable, Iterable
from types import FrameType
from typing import Any

__all__ = ["install_signal_handlers"]

_DEFAULT_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGINT, signal.SIGTERM)


def install_signal_handlers(
    cancel: Callable[[], Any],
    *,
    loop: asyncio.AbstractEventLoop | None = None,
    signals: Iterable[signal.Signals | int] = _DEFAULT_SIGNALS,
    on_repeat: Callable[[], Any] | None = None,
) -> Callable[[], None]:
    """Call `cancel()` when one of `signals` arrives; returns an idempotent uninstall function.

    `cancel` is typically the handle returned by `Live.background` (or a function stopping several
    runs). A second and later signal call `on_repeat` instead when given (e.g. the run task's
    `cancel` to abandon a position that a graceful stop would keep monitoring), else `cancel` again.
    Exceptions raised by the callbacks are swallowed: a signal handler must never break the loop.
    Must be called from the main thread (an OS restriction on signal handlers). Uninstalling puts
    back the handlers that were there before.
    """
    if loop is None:
        loop = asyncio.get_running_loop()
    target_loop = loop
    wanted = [signal.Signals(s) for s in signals]
    received = 0

    def fire() -> None:
        nonlocal received
        received += 1
        fn = on_repeat if received > 1 and on_repeat is not None else cancel
        with contextlib.suppress(Exception):
            fn()

    def from_os(signum: int, frame: FrameType | None) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            target_loop.call_soon_threadsafe(fire)

    installed: list[tuple[signal.Signals, Any, bool]] = []  # (signal, previous handler, via loop?)
    try:
        for sig in wanted:
            previous = signal.getsignal(sig)
            try:
                target_loop.add_signal_handler(sig, fire)
                installed.append((sig, previous, True))
            except (NotImplementedError, RuntimeError):  # no loop support (Windows) -> plain handler
                signal.signal(sig, from_os)
                installed.append((sig, previous, False))
    except ValueError as exc:  # not the main thread
        _restore(target_loop, installed)
        raise RuntimeError(f"install_signal_handlers must be called from the main thread: {exc}") from None

    def uninstall() -> None:
        _restore(target_loop, installed)
        installed.clear()

    return uninstall


def _restore(loop: asyncio.AbstractEventLoop, installed: list[tuple[signal.Signals, Any, bool]]) -> None:
    for sig, previous, via_loop in reversed(installed):
        with contextlib.suppress(Exception):
            if via_loop and not loop.is_closed():
                loop.remove_signal_handler(sig)
            if previous is not None:
                signal.signal(sig, previous)

"""Logger adapter: the engine logs through one object with `log/debug/info/warn(topic, *args)`.

Users may pass such an object (the reference's shape) or a `logging.Logger`. Logging must never
break a run, so a raising logger is swallowed. Text is redacted (`redact.py`): an exception message
can hold a signed URL or an API key.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol, runtime_checkable

from .errors import SchemaError
from .redact import redact

__all__ = ["EngineLogger", "LoggerLike"]


@runtime_checkable
class LoggerLike(Protocol):
    def log(self, topic: str, *args: Any) -> Any: ...
    def debug(self, topic: str, *args: Any) -> Any: ...
    def info(self, topic: str, *args: Any) -> Any: ...
    def warn(self, topic: str, *args: Any) -> Any: ...


_METHODS = ("log", "debug", "info", "warn")
_LIBRARY_LOGGER = logging.getLogger("backtest_kit")
_LIBRARY_LOGGER.addHandler(logging.NullHandler())  # silent unless the application configures logging


class EngineLogger:
    """What the engine calls; forwards to the user's logger or the stdlib logger `backtest_kit`."""

    def __init__(self, target: LoggerLike | logging.Logger | None = None) -> None:
        self._target: LoggerLike | logging.Logger = _LIBRARY_LOGGER
        if target is not None:
            self.set(target)

    def set(self, target: LoggerLike | logging.Logger) -> None:
        if not isinstance(target, logging.Logger) and not (
            isinstance(target, LoggerLike) and all(callable(getattr(target, m)) for m in _METHODS)
        ):
            raise SchemaError(
                f"logger: expected a logging.Logger or an object with log/debug/info/warn, got {target!r}"
            )
        self._target = target

    def _emit(self, level: int, method: str, topic: str, args: tuple[Any, ...]) -> None:
        target = self._target
        try:
            if isinstance(target, logging.Logger):
                if target.isEnabledFor(level):
                    text = " ".join([topic, *(str(a) for a in args)])
                    target.log(level, redact(text))
            else:  # text is redacted; other arguments are the caller's objects, passed on as they are
                getattr(target, method)(redact(topic), *(redact(a) if isinstance(a, str) else a for a in args))
        except Exception:  # a broken logger must not stop trading
            pass

    def log(self, topic: str, *args: Any) -> None:
        self._emit(logging.INFO, "log", topic, args)

    def debug(self, topic: str, *args: Any) -> None:
        self._emit(logging.DEBUG, "debug", topic, args)

    def info(self, topic: str, *args: Any) -> None:
        self._emit(logging.INFO, "info", topic, args)

    def warn(self, topic: str, *args: Any) -> None:
        self._emit(logging.WARNING, "warn", topic, args)

"""Error types. Every message names the offending field and value so a user can fix the input."""

from __future__ import annotations


class BacktestKitError(Exception):
    """Base of every error the library raises on purpose."""


class ConfigError(BacktestKitError, ValueError):
    """A `set_config` key is unknown or a value has the wrong type or range."""


class SchemaError(BacktestKitError, ValueError):
    """A registration (`add_*`) is malformed or its name is already taken."""


class UnknownNameError(BacktestKitError, KeyError):
    """A run or facade call names a strategy, exchange, frame, risk or sizing that is not registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class SignalValidationError(BacktestKitError, ValueError):
    """A signal returned by `get_signal` (or decoded from a dict) breaks a validation rule."""


class CandleError(BacktestKitError, ValueError):
    """A candle from an exchange or adapter is malformed, out of order or anomalous."""


class ExchangeError(BacktestKitError):
    """Fetching candles failed after every retry."""


class StaleDataError(ExchangeError):
    """Live mode: the newest closed 1m candle is older than `CC_LIVE_MAX_CANDLE_AGE_MS`, so the tick
    would trade on an old price; the tick fails (listen_error) and is retried one period later."""

    retryable = False

    def __init__(
        self, message: str, *, symbol: str, close_time_ms: int | None, age_ms: int, limit_ms: int
    ) -> None:
        # close_time_ms None: no candle in the window asked for (an awaited source); age_ms is then
        # the window's length, a lower bound of the real age.
        super().__init__(message)
        self.symbol = symbol
        self.close_time_ms = close_time_ms
        self.age_ms = age_ms
        self.limit_ms = limit_ms


class SignalTimeoutError(BacktestKitError, TimeoutError):
    """`get_signal` ran longer than `CC_MAX_SIGNAL_GENERATION_SECONDS` and was cancelled."""


class PersistError(BacktestKitError, OSError):
    """Live state could not be read or written; the engine keeps its memory state and retries."""


class RunStateError(BacktestKitError, RuntimeError):
    """A run was started in a state that forbids it (for example twice at once for one pair)."""


class ListenerTimeoutError(BacktestKitError, TimeoutError):
    """A listener took longer than the per-delivery timeout; its call was cancelled, delivery went on.

    Carries `listener` (its name), `channel` and `timeout` (seconds) so a handler on `listen_error`
    can tell which listener is stuck without parsing the message.
    """

    def __init__(self, listener: str, channel: str, timeout: float, key: str) -> None:
        super().__init__(
            f"listener {listener} on channel {channel!r} took longer than {key}={timeout:g} s and was "
            "cancelled; the other listeners and the run went on"
        )
        self.listener = listener
        self.channel = channel
        self.timeout = timeout

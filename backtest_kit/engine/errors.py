"""Every error the library raises on purpose, in one tree rooted at `BacktestKitError`.

`except bk.BacktestKitError` catches all of them; each also keeps the built-in base a caller may
already catch (`ValueError`, `KeyError`, `TimeoutError`, `OSError`, `RuntimeError`), so code written
against either keeps working. Every message names the offending field and value so a user can fix
the input. The tree (a test keeps it in step with the classes the package defines):

    BacktestKitError
    ├── ConfigError (ValueError)
    ├── SchemaError (ValueError)
    ├── UnknownNameError (KeyError)
    ├── SignalValidationError (ValueError)
    ├── SizingError (ValueError)
    ├── CandleError (ValueError)
    │   └── UnknownSymbolError (KeyError)
    ├── ExchangeError
    │   ├── StaleDataError
    │   └── CcxtExchangeError
    │       ├── ExchangeUnavailableError
    │       │   ├── ExchangeRateLimitError
    │       │   └── ExchangeTimeoutError
    │       └── ExchangeResponseError
    ├── SignalTimeoutError (TimeoutError)
    ├── ListenerTimeoutError (TimeoutError)
    ├── PersistError (OSError)
    │   ├── LeaseHeldError
    │   └── LeaseLostError
    ├── RunStateError (RuntimeError)
    ├── DeliveryError
    ├── EventsDroppedError
    ├── OrderRejected (ValueError)
    ├── OrderNeedsAttention
    ├── TradingDisabledError (PermissionError)
    └── CliError

Several classes are also importable from the module that raises them (`engine.sizing.SizingError`,
`adapters.candles.UnknownSymbolError`, `adapters.ccxt_exchange.*Error`,
`listeners.notifiers.http.DeliveryError`, `adapters.nats_bridge.EventsDroppedError`,
`cli.loader.CliError`): those are the same objects,
re-exported so older imports keep working. The order gateway's errors (`OrderRejected`,
`OrderNeedsAttention`, `TradingDisabledError`) live in `adapters.ccxt_order_types`.

Errors pickle (a worker process may hand one back to its parent): `BacktestKitError.__reduce__`
rebuilds an error from its `args` and attribute dict, so subclasses whose `__init__` takes
keyword-only arguments round-trip too.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "BacktestKitError",
    "CandleError",
    "CcxtExchangeError",
    "CliError",
    "ConfigError",
    "DeliveryError",
    "EventsDroppedError",
    "ExchangeError",
    "ExchangeRateLimitError",
    "ExchangeResponseError",
    "ExchangeTimeoutError",
    "ExchangeUnavailableError",
    "LeaseHeldError",
    "LeaseLostError",
    "ListenerTimeoutError",
    "PersistError",
    "RunStateError",
    "SchemaError",
    "SignalTimeoutError",
    "SignalValidationError",
    "SizingError",
    "StaleDataError",
    "UnknownNameError",
    "UnknownSymbolError",
]


def _rebuild(cls: type[BaseException], args: tuple[Any, ...]) -> BaseException:
    """Unpickle an error without calling its `__init__` (whose signature may differ from `args`)."""
    error = cls.__new__(cls, *args)
    error.args = args
    return error


class BacktestKitError(Exception):
    """Base of every error the library raises on purpose."""

    def __reduce__(self) -> tuple[Any, ...]:
        # The default reduce calls `cls(*self.args)`, which fails for a keyword-only `__init__`.
        return (_rebuild, (type(self), self.args), dict(self.__dict__) or None)


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


class SizingError(BacktestKitError, ValueError):
    """A quantity could not be computed: bad inputs, a method mismatch, or a bad `get_quantity` result."""


class CandleError(BacktestKitError, ValueError):
    """A candle from an exchange or adapter is malformed, out of order or anomalous."""


class UnknownSymbolError(CandleError, KeyError):
    """A symbol the source holds no candles for; a KeyError too, since it is a failed lookup."""

    retryable = False  # asking again cannot make the symbol appear

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


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

# ---------------------------------------------------------------------- the ccxt adapter's errors
class CcxtExchangeError(ExchangeError):
    """A ccxt call failed; `retryable` says whether trying again later may help."""

    retryable = False

    def __init__(self, message: str, *, exchange_name: str = "", exchange_id: str = "", kind: str = "") -> None:
        super().__init__(message)
        self.exchange_name = exchange_name
        self.exchange_id = exchange_id
        self.kind = kind  # the ccxt error class name, e.g. "RequestTimeout"


class ExchangeUnavailableError(CcxtExchangeError):
    """The exchange could not be reached or answered 5xx (ccxt `NetworkError`, `ExchangeNotAvailable`)."""

    retryable = True


class ExchangeRateLimitError(ExchangeUnavailableError):
    """HTTP 429 / 418: too many requests (ccxt `RateLimitExceeded`, `DDoSProtection`)."""


class ExchangeTimeoutError(ExchangeUnavailableError):
    """The request took longer than the client's `timeout` (ccxt `RequestTimeout`)."""


class ExchangeResponseError(CcxtExchangeError):
    """A 2xx answer that is not what was asked: not JSON, malformed candles, or no candles at all."""

    retryable = True


class SignalTimeoutError(BacktestKitError, TimeoutError):
    """`get_signal` ran longer than `CC_MAX_SIGNAL_GENERATION_SECONDS` and was cancelled."""


class PersistError(BacktestKitError, OSError):
    """Live state could not be read or written; the engine keeps its memory state and retries."""


class LeaseHeldError(PersistError):
    """A live run (without ``standby=True``) found its (symbol, strategy) pair owned by another live
    process through the shared store's lease; it traded nothing and touched no state."""


class LeaseLostError(PersistError):
    """This process no longer owns the pair: another owner took the lease over (a newer fencing token),
    so the server refused the state write. The run stops trading the pair; its new owner carries on."""


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


class DeliveryError(BacktestKitError):
    """One notifier delivery attempt failed; `retryable` says whether another attempt may succeed."""

    def __init__(self, message: str, *, retryable: bool, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.retry_after = retry_after


class EventsDroppedError(BacktestKitError):
    """An event bridge (`NatsBridge`) dropped events: its bounded queue was full (the broker slow or away
    for long); `dropped` is the count so far. Published on the `error` channel, so alerts see it."""

    def __init__(self, message: str, dropped: int) -> None:
        super().__init__(message)
        self.dropped = dropped


class CliError(BacktestKitError):
    """A command-line failure the user can fix (bad path, unknown name, missing option): exit code 1."""

"""What ccxt raises, as backtest-kit errors: the `ExchangeError` subclass, a scrubbed message, no chain.

Split out of `ccxt_exchange.py` so that the mapping from ccxt's exception classes to the error tree
(rate limit, timeout, unavailable, bad response, the rest) can be read and changed in one place.
Messages never contain a credential: the adapter's keys are replaced by `***` and `redact` masks
signatures in signed URLs.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ..engine.errors import (
    BacktestKitError,
    CcxtExchangeError,
    ExchangeRateLimitError,
    ExchangeResponseError,
    ExchangeTimeoutError,
    ExchangeUnavailableError,
)
from ..engine.redact import redact

__all__ = ["scrub", "translate_error"]


def scrub(text: str, secrets: Iterable[str]) -> str:
    """`text` with every value of `secrets` replaced by `***`."""
    for value in secrets:
        text = text.replace(value, "***")
    return text


def translate_error(
    exc: Exception, what: str, *, exchange_name: str, exchange_id: str, client: Any, secrets: Iterable[str]
) -> Exception:
    """A backtest-kit error for a ccxt (or other) exception; the message is scrubbed of keys."""
    import ccxt

    if isinstance(exc, BacktestKitError):
        return exc
    cls: type[CcxtExchangeError]
    if isinstance(exc, ccxt.DDoSProtection | ccxt.RateLimitExceeded):
        cls, label = ExchangeRateLimitError, "rate limited (HTTP 429/418)"
    elif isinstance(exc, ccxt.RequestTimeout):
        timeout = getattr(client, "timeout", None)
        cls, label = ExchangeTimeoutError, f"timed out (timeout {timeout} ms)"
    elif isinstance(exc, ccxt.NetworkError):
        cls, label = ExchangeUnavailableError, "exchange not available"
    elif isinstance(exc, ccxt.BadResponse):
        cls, label = ExchangeResponseError, "bad response"
    elif isinstance(exc, ccxt.AuthenticationError):
        cls, label = CcxtExchangeError, "authentication failed (check the API key and secret)"
    else:
        cls, label = CcxtExchangeError, "failed"
    detail = redact(scrub(str(exc), secrets))  # the keys, and signatures in a signed URL
    if len(detail) > 300:
        detail = detail[:300] + "…"
    return cls(
        f"exchange {exchange_name} ({exchange_id}): {what} {label}: {type(exc).__name__}: {detail}",
        exchange_name=exchange_name, exchange_id=exchange_id, kind=type(exc).__name__,
    )

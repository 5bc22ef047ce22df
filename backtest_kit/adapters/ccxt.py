"""`backtest_kit.adapters.ccxt`: the ccxt exchange adapter (implemented in `ccxt_exchange`).

The top-level `ccxt` package is unaffected: imports are absolute, so inside this package
`import ccxt` still means the ccxt library.
"""

from __future__ import annotations

from .ccxt_exchange import (
    CcxtExchange,
    CcxtExchangeError,
    ExchangeRateLimitError,
    ExchangeResponseError,
    ExchangeTimeoutError,
    ExchangeUnavailableError,
    Secret,
    add_ccxt_exchange,
    read_env_file,
)

__all__ = [
    "CcxtExchange",
    "CcxtExchangeError",
    "ExchangeRateLimitError",
    "ExchangeResponseError",
    "ExchangeTimeoutError",
    "ExchangeUnavailableError",
    "Secret",
    "add_ccxt_exchange",
    "read_env_file",
]

"""`backtest_kit.adapters.ccxt`: the ccxt exchange adapter (implemented in `ccxt_exchange`).

The top-level `ccxt` package is unaffected: imports are absolute, so inside this package
`import ccxt` still means the ccxt library.

The public names are those of `ccxt_exchange.__all__`, the one list of them.
"""

from .ccxt_exchange import *  # noqa: F403  (re-exports exactly ccxt_exchange.__all__)
from .ccxt_exchange import __all__ as __all__

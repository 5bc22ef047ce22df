"""The slot holding `bk.default_engine` for code below the root package that needs a default world.

`backtest_kit/__init__.py` creates the default engine and stores it here. An adapter that defaults
to it (`add_ccxt_exchange(engine=None)`) reads it from this slot instead of importing the root
package, which imports the adapter: that would be an import cycle. Python always imports the root
package before any submodule, so the slot is set whenever an adapter runs.
"""

from __future__ import annotations

from .ports import ExchangeHost

__all__ = ["default_engine"]

default_engine: ExchangeHost
"""`bk.default_engine`, set by `backtest_kit/__init__.py`."""

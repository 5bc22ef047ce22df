"""The composition root: `Engine` wires the engine core, portfolio, reports, listeners and adapters.

Like nautilus_trader's `system/kernel.py`, this is the only package that knows every service
(`engine.py`); `modes.py` joins the engine's run loops with the statistics of `reports/` into
`bk.Backtest` / `bk.Live`, and `shutdown.py` installs the OS signal handlers. Nothing below `system`
imports it.
"""

# Nothing is re-exported here: import the submodules by name (the public names are `backtest_kit.X`).
__all__: list[str] = []

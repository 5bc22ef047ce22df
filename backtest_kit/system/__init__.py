"""The composition root: `Engine` wires the engine core, portfolio, reports, listeners and adapters.

Like nautilus_trader's `system/kernel.py`, this is the only package that knows every service; the
mode runners (`Backtest`, `Live`) live here because they join the state machine with the reports
and the portfolio. Nothing below `system` imports it.
"""

# Nothing is re-exported here: import the submodules by name (the public names are `backtest_kit.X`).
__all__: list[str] = []

"""The runtime core: models, errors, config, clock, bus, registry, context, exchange client, the signal
state machine and its lifecycle maths, the backtest and live runners, the persistence protocol and the
signal store, and the Protocols through which the layers above plug in (`hooks.py`, `ports.py`).

It imports nothing else of backtest_kit (import-linter checks it, see pyproject.toml).
"""

# Nothing is re-exported here: import the submodules by name (the public names are `backtest_kit.X`).
__all__: list[str] = []

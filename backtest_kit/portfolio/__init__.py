"""Portfolio rules around the state machine: risk profiles, position sizing, partial profit/loss levels."""

# Nothing is re-exported here: import the submodules by name (the public names are `backtest_kit.X`).
__all__: list[str] = []

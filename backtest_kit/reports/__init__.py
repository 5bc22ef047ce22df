"""What a run produced, read back: statistics, markdown reports, plots, schedule and performance statistics."""

# Nothing is re-exported here: import the submodules by name (the public names are `backtest_kit.X`).
__all__: list[str] = []

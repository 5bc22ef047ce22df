"""The engine: models, config, registry, state machine, exchange client, runners, clock, bus."""

# Nothing is re-exported here: import the submodules by name (the public names are `backtest_kit.X`).
__all__: list[str] = []

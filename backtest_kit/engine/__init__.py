"""The engine: models, config, registry, state machine, exchange client, runners, clock, bus."""

__all__ = []

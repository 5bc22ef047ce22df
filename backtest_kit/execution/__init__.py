"""Order execution: a strategy's signal lifecycle turned into exchange orders, exactly once (issue 16)."""

__all__: list[str] = []

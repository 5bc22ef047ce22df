"""The live dashboard, JSON API and Prometheus metrics (the `web` extra, issue 17)."""

__all__: list[str] = []

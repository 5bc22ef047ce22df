"""The live dashboard, JSON API and Prometheus metrics (the `web` extra: `pip install 'backtest-kit[web]'`).

`serve_dashboard` is a thin wrapper so that `import backtest_kit` never imports aiohttp or
prometheus-client: they load when a dashboard is first served.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..system.engine import Engine
    from .server import DashboardHandle

__all__ = ["serve_dashboard"]


async def serve_dashboard(
    engine: Engine | None = None,
    host: str = "127.0.0.1",
    port: int = 8765,
    token: str | None = None,
    **options: Any,
) -> DashboardHandle:
    """Serve the live dashboard of `engine` (default `bk.default_engine`) at `http://host:port/`; see
    `backtest_kit.web.server.serve_dashboard` for `remote=` (fed from NATS) and the other options."""
    try:
        from .server import serve_dashboard as serve
    except ImportError as exc:  # prometheus-client (or aiohttp) missing
        raise ImportError(
            f"the dashboard needs the 'web' extra: pip install 'backtest-kit[web]' ({exc})") from exc
    return await serve(engine, host, port, token, **options)

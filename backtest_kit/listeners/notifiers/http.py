"""A tiny JSON-over-HTTP POST client for notifiers: aiohttp when installed, else urllib in a thread.

aiohttp is optional (`pip install aiohttp`); without it every request runs `urllib.request` in
`asyncio.to_thread`, which is fine for the few messages a notifier sends. Either way a request is
bounded by `timeout` seconds, and failures come back as `DeliveryError` whose text never contains
the URL (a webhook or bot URL is a secret) — only its scheme and host.
"""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from ...engine.errors import DeliveryError

__all__ = ["DeliveryError", "HttpClient", "HttpResponse", "aiohttp_available", "safe_url"]


@dataclass(frozen=True, slots=True)
class HttpResponse:
    status: int
    body: bytes
    retry_after: float | None = None

    def json(self) -> Any:
        try:
            return json.loads(self.body.decode("utf-8", "replace"))
        except ValueError:
            return None


def aiohttp_available() -> bool:
    try:
        import aiohttp  # noqa: F401
    except ImportError:
        return False
    return True


def safe_url(url: str) -> str:
    """`https://host:port/…`: the URL without path, query and credentials, for logs and errors."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or "?"
        port = f":{parts.port}" if parts.port else ""
        return f"{parts.scheme}://{host}{port}/…"
    except ValueError:
        return "<url>"


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


class HttpClient:
    """POST JSON and return the status and body; one connection pool per notifier."""

    def __init__(self, *, use_aiohttp: bool | None = None) -> None:
        self.use_aiohttp = aiohttp_available() if use_aiohttp is None else use_aiohttp
        if self.use_aiohttp and not aiohttp_available():
            raise ImportError("use_aiohttp=True needs aiohttp: pip install aiohttp")
        self._session: Any = None

    async def post_json(
        self, url: str, body: Any, *, headers: Mapping[str, str] | None = None, timeout: float = 10.0
    ) -> HttpResponse:
        data = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        all_headers = {"Content-Type": "application/json; charset=utf-8", **(headers or {})}
        try:
            if self.use_aiohttp:
                return await self._post_aiohttp(url, data, all_headers, timeout)
            return await asyncio.to_thread(_post_urllib, url, data, all_headers, timeout)
        except DeliveryError:
            raise
        except TimeoutError:
            raise DeliveryError(f"POST {safe_url(url)} timed out after {timeout:g}s", retryable=True) from None
        except Exception as exc:  # connection refused, DNS, TLS, ...: never echo the URL
            raise DeliveryError(
                f"POST {safe_url(url)} failed: {type(exc).__name__}", retryable=True
            ) from None

    async def _post_aiohttp(self, url: str, data: bytes, headers: dict[str, str], timeout: float) -> HttpResponse:
        import aiohttp

        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
        client_timeout = aiohttp.ClientTimeout(total=timeout)
        async with self._session.post(url, data=data, headers=headers, timeout=client_timeout) as resp:
            body = await resp.read()
            return HttpResponse(resp.status, body, _retry_after(resp.headers.get("Retry-After")))

    async def aclose(self) -> None:
        session, self._session = self._session, None
        if session is not None and not session.closed:
            await session.close()


def _post_urllib(url: str, data: bytes, headers: dict[str, str], timeout: float) -> HttpResponse:
    request = urllib.request.Request(url, data=data, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return HttpResponse(resp.status, resp.read(), _retry_after(resp.headers.get("Retry-After")))
    except urllib.error.HTTPError as exc:
        body = exc.read() if exc.fp is not None else b""
        return HttpResponse(exc.code, body, _retry_after(exc.headers.get("Retry-After") if exc.headers else None))

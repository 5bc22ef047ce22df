"""Who may talk to the dashboard: loopback by default, a token for anything else, no CORS.

Why these rules:
- the page shows positions and errors of a trading process, and `POST /api/stop` stops it, so the
  server binds to loopback unless told otherwise, and any other bind must carry a token (refused
  before the socket opens, with a message that says how to give one);
- a server on loopback is still reachable from a browser tab on another site through DNS rebinding
  (a hostile name resolving to 127.0.0.1): on a loopback bind only requests whose `Host` is a
  loopback name are answered;
- tokens are compared with `hmac.compare_digest` (no timing side channel), accepted only from an
  `Authorization: Bearer` header (never from the URL, which lands in logs and history);
- no `Access-Control-Allow-Origin` is ever sent, so another origin's script cannot read a response,
  and a cross-origin `POST` with an `Authorization` header needs a preflight that is refused;
- every response carries `nosniff`, `DENY` framing and a same-origin content security policy.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Awaitable, Callable, MutableMapping

from aiohttp import web

from ..engine.errors import ConfigError

__all__ = [
    "MIN_TOKEN_LENGTH",
    "SECURITY_HEADERS",
    "check_bind",
    "is_loopback",
    "security_middleware",
    "token_matches",
]

MIN_TOKEN_LENGTH = 16

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
}


def is_loopback(host: str) -> bool:
    """`localhost`, 127.0.0.0/8 or ::1 (a bare name other than localhost may resolve anywhere)."""
    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None) -> None:
    """Raise `ConfigError` (the dashboard refuses to start) unless `host` is loopback or a token of
    `MIN_TOKEN_LENGTH` characters or more is given."""
    if token is not None and len(token) < MIN_TOKEN_LENGTH:
        raise ConfigError(
            f"dashboard token: expected at least {MIN_TOKEN_LENGTH} characters, got {len(token)} "
            "(e.g. python -c 'import secrets; print(secrets.token_urlsafe(24))')")
    if is_loopback(host):
        return
    if token is None:
        raise ConfigError(
            f"dashboard: refusing to listen on {host!r} without a token: anyone who can reach it would see "
            "positions and errors. Bind to 127.0.0.1, or give a token (token=... / the BK_DASHBOARD_TOKEN "
            "environment variable); clients then send 'Authorization: Bearer <token>'")


def token_matches(request: web.Request, token: str) -> bool:
    header = request.headers.get("Authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not given:
        return False
    return hmac.compare_digest(given.strip().encode(), token.encode())


def _host_is_loopback(request: web.Request) -> bool:
    host = request.host
    if host.startswith("["):
        name = host[1:].partition("]")[0]
    else:
        name = host.rpartition(":")[0] if host.count(":") == 1 else host
    return is_loopback(name)


def security_middleware(
    *, loopback: bool, token: str | None, protect_reads: bool
) -> Callable[..., Awaitable[web.StreamResponse]]:
    """The middleware enforcing the module's rules; `protect_reads`: data endpoints need the token too
    (a non-loopback bind), else only writes do."""

    def unauthorized(message: str) -> web.Response:
        return web.json_response({"error": "unauthorized", "message": message}, status=401,
                                 headers={"WWW-Authenticate": 'Bearer realm="backtest-kit"'})

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if loopback and not _host_is_loopback(request):
            response: web.StreamResponse = web.json_response(
                {"error": "misdirected", "message": "this dashboard answers loopback host names only"}, status=421)
        elif (token is not None and protect_reads and _is_data(request.path)
              and not token_matches(request, token)):
            response = unauthorized("send 'Authorization: Bearer <token>'")
        else:
            try:
                response = await handler(request)
            except web.HTTPException as exc:  # 404, 405, ...: raised on, with the same headers
                _secure(exc.headers)
                raise
        if not response.prepared:  # a stream sets its own before it starts
            _secure(response.headers)
        return response

    return middleware


def _secure(headers: MutableMapping[str, str]) -> None:
    for key, value in SECURITY_HEADERS.items():
        headers.setdefault(key, value)
    headers.pop("Access-Control-Allow-Origin", None)


def _is_data(path: str) -> bool:
    """Data endpoints (everything but the static page, its assets and the OpenAPI document)."""
    if path == "/api/openapi.json":
        return False
    return path.startswith("/api/") or path == "/metrics"

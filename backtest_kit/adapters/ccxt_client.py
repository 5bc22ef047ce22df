"""Building the ccxt client: default options per exchange, a guarded client class, sandbox and URLs.

Split out of `ccxt_exchange.py`, which decides *when* a client is made (one per event loop) and what
it is asked; this module is *how* one is made, and the one place that subclasses a ccxt exchange
class. The subclass turns a 2xx answer whose body is not JSON into a `ccxt.BadResponse` (ccxt would
hand back an empty candle list) and redacts ccxt's `verbose` printing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..engine.redact import install_log_redaction, redact

__all__ = ["new_client"]

# Per-exchange ccxt options: only spot markets (no fapi/dapi/eapi calls), no currencies (a private
# endpoint on Binance), no margin pair lists. `options=` overrides any of them.
_BINANCE_OPTIONS: dict[str, Any] = {
    "fetchMarkets": {"types": ["spot"]},
    "fetchCurrencies": False,
    "fetchMargins": False,
}
_DEFAULT_OPTIONS: dict[str, dict[str, Any]] = {
    "binance": _BINANCE_OPTIONS,
    "binanceus": _BINANCE_OPTIONS,
}


def new_client(
    exchange_id: str, params: dict[str, Any], *, sandbox: bool, api_urls: Mapping[str, str] | None
) -> Any:
    """A guarded `ccxt.async_support` client of `exchange_id` built from `params` (credentials
    included), with its logger redacted, sandbox mode set and `api_urls` merged into `urls['api']`."""
    import ccxt.async_support as ccxt_async

    base = getattr(ccxt_async, exchange_id)
    client = _guarded(base)(params)
    install_log_redaction(client.logger)  # ccxt logs request headers and signed URLs at DEBUG
    if sandbox:
        client.set_sandbox_mode(True)
    if api_urls is not None:
        urls = dict(client.urls.get("api") or {}) if isinstance(client.urls.get("api"), dict) else {}
        urls.update(api_urls)
        client.urls["api"] = urls
    return client


def _guarded(base: type[Any]) -> type[Any]:
    """`base` (a ccxt exchange class) that raises on a 2xx answer whose body is HTML or broken JSON,
    and whose `verbose` printing is redacted.

    ccxt hands such a body on as a string and `fetch_ohlcv` turns it into an empty list, which
    would be indistinguishable from "no candles"; this makes it a `BadResponse` at the source.
    """
    cached = _GUARDED.get(base)
    if cached is not None:
        return cached
    import ccxt

    def handle_errors(self: Any, code: Any, reason: Any, url: Any, method: Any, headers: Any, body: Any,
                      response: Any, request_headers: Any, request_body: Any) -> Any:
        if (isinstance(code, int) and 200 <= code < 300 and response is None and isinstance(body, str)
                and body.lstrip()[:1] in ("<", "{", "[")):
            kind = "an HTML page" if body.lstrip()[:1] == "<" else "truncated or invalid JSON"
            raise ccxt.BadResponse(
                f"{self.id} {method} {str(url).split('?', 1)[0]} {code}: the body is {kind}, not JSON: "
                f"{body[:80]!r}"
            )
        return base.handle_errors(self, code, reason, url, method, headers, body, response,
                                  request_headers, request_body)

    def log(self: Any, *args: Any) -> None:
        """ccxt's `verbose` output (request headers, signed URLs), printed as ccxt does, but redacted."""
        print(redact(" ".join(str(arg) for arg in args)))

    guarded = type(base.__name__, (base,), {"handle_errors": handle_errors, "log": log, "__module__": __name__})
    _GUARDED[base] = guarded
    return guarded


_GUARDED: dict[type[Any], type[Any]] = {}

"""`/api/openapi.json`: the API described from the very msgspec models the handlers encode.

Why generated: a hand-written document drifts; here every response schema is
`msgspec.json.schema_components` of the model the handler returns, so `tests/test_dashboard_api.py`'s
schemathesis run checks the handlers against the models themselves. OpenAPI 3.1, whose schemas are JSON
Schema 2020-12, what msgspec emits (`prefixItems` for the array-like equity points).

The event stream (`/api/stream`, `text/event-stream`) is left out on purpose: it never ends, so a
generic client reading it as a document would hang; the description names it.
"""

from __future__ import annotations

from typing import Any

import msgspec

from .models import (
    EquityCurve,
    ErrorBody,
    ErrorView,
    EventView,
    Health,
    InstanceView,
    Overview,
    PairStats,
    PartialView,
    PositionView,
    RiskView,
    StopRequest,
    StopResult,
)

__all__ = ["API_VERSION", "GET_ENDPOINTS", "MAX_EVENTS_LIMIT", "openapi_document"]

API_VERSION = "1"
"""The API contract's version (raised when a response shape changes), not the package's."""

MAX_EVENTS_LIMIT = 500

# path -> (response type, summary); the handlers in `api.py` return exactly these types
GET_ENDPOINTS: dict[str, tuple[Any, str]] = {
    "/api/overview": (Overview, "Everything the page shows, in one document"),
    "/api/instances": (list[InstanceView], "Live instances with status, tick counts and errors"),
    "/api/positions": (list[PositionView], "Open and scheduled positions at their last price"),
    "/api/events": (list[EventView], "Recent signal events, newest first"),
    "/api/stats": (list[PairStats], "Statistics per (symbol, strategy)"),
    "/api/equity": (list[EquityCurve], "Equity curve (cumulative net PnL %) per strategy"),
    "/api/risk": (list[RiskView], "Recent risk rejections, newest first"),
    "/api/partials": (list[PartialView], "Recent partial profit/loss levels, newest first"),
    "/api/errors": (list[ErrorView], "Recent errors (type and redacted message), newest first"),
    "/api/health": (Health, "The dashboard's own health"),
}

_REF = "#/components/schemas/{name}"


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def openapi_document(*, protect_reads: bool) -> dict[str, Any]:
    """The OpenAPI 3.1 document; `protect_reads`: the data endpoints need the bearer token too."""
    types: list[Any] = [t for t, _ in GET_ENDPOINTS.values()] + [StopRequest, StopResult, ErrorBody]
    schemas, components = msgspec.json.schema_components(types, ref_template=_REF)
    by_type = dict(zip(range(len(types)), schemas, strict=True))
    error = {"$ref": _REF.format(name="ErrorBody")}
    paths: dict[str, Any] = {}
    for index, (path, (_, summary)) in enumerate(GET_ENDPOINTS.items()):
        responses: dict[str, Any] = {"200": _json(by_type[index], summary)}
        operation: dict[str, Any] = {"summary": summary, "operationId": "get_" + path.rsplit("/", 1)[1],
                                     "responses": responses}
        if path == "/api/events":
            operation["parameters"] = [{
                "name": "limit", "in": "query", "required": False,
                "description": "at most this many rows (newest first)",
                "schema": {"type": "integer", "minimum": 1, "maximum": MAX_EVENTS_LIMIT},
            }]
            responses["400"] = _json(error, "limit is not a whole number in range")
        if protect_reads:
            operation["security"] = [{"bearer": []}]
            responses["401"] = _json(error, "missing or wrong bearer token")
        paths[path] = {"get": operation}
    n = len(GET_ENDPOINTS)
    paths["/api/stop"] = {"post": {
        "summary": "Stop one live instance gracefully (an open position is watched to its close)",
        "operationId": "post_stop",
        "security": [{"bearer": []}],
        "requestBody": {"required": True, "content": {"application/json": {"schema": by_type[n]}}},
        "responses": {
            "200": _json(by_type[n + 1], "the stop was requested, or the instance was not running"),
            "400": _json(error, "the body is not a StopRequest"),
            "401": _json(error, "missing or wrong bearer token"),
            "403": _json(error, "the dashboard was started without a token: writes are disabled"),
            "409": _json(error, "this dashboard has no engine (fed from NATS)"),
        },
    }}
    paths["/metrics"] = {"get": {
        "summary": "Prometheus metrics (text exposition format)", "operationId": "get_metrics",
        **({"security": [{"bearer": []}]} if protect_reads else {}),
        "responses": {
            "200": {"description": "metrics", "content": {"text/plain": {"schema": {"type": "string"}}}},
            **({"401": _json(error, "missing or wrong bearer token")} if protect_reads else {}),
        },
    }}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "backtest-kit dashboard API",
            "version": API_VERSION,
            "description": "Read-only JSON views of a live engine (or of events received from NATS). Live "
                           "updates: GET /api/stream (Server-Sent Events, `overview` events carrying an "
                           "Overview). POST /api/stop needs the dashboard's bearer token.",
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }

"""A lean start for the private local Ray a sweep starts: 1.5-2.8 s sooner (medians) on a 2-core box.

`ray.init()` without an address starts a whole head node for the one sweep, and the sweep waits for it.
On the 2-core development VM that took 4.3-7.6 s, and four parts of that buy a private one-node Ray
nothing (the fourth only when the driver does not print the workers' output):

1. **The autoscaler monitor.** A Python process that imports Ray and the autoscaler while the other
   services start, competing for the same two cores. A one-node Ray started for one sweep has nothing
   to scale (Ray itself can start without it: `ray start --no-monitor`).
2. **The API server when the dashboard is off.** With `include_dashboard=False` (the executor's
   default) Ray's API server loads only its usage-statistics module, yet `ray.init` polls for it to
   come up (another Python process importing Ray and aiohttp, ~1 s here) before it starts the raylet.
   Skipped only when `include_dashboard` is exactly False: a dashboard asked for still starts.
3. **The wait for the raylet.** `ray.init` asks the GCS for the new node through a call that sleeps a
   whole second between tries (`GlobalStateAccessor::GetNode`); the raylet registers ~1.4 s after it
   starts, so the driver sat idle ~0.6 s on average with both cores free. Here the node is awaited with
   a 20 ms poll first, then Ray's own call finds it at its first try.
4. **The log monitor when nobody reads it.** A Python process that imports Ray (~1 CPU-second here)
   and then tails every worker's log files (~0.5 CPU-second over a 45 s sweep) only to forward their
   lines to a driver that prints them. With `ray.init(log_to_driver=False)` nothing prints them, so
   it is not started (the lines stay in the session's log files). With Ray's default (forwarding on)
   it starts as usual.

Each part replaces one Ray-internal function for the duration of the `ray.init` call and restores it
afterwards (the context manager below). A Ray whose internals differ (a function renamed, or with
another signature) keeps its stock start-up for that part: never an error, only the seconds. Measured
with `benchmarks/bench_ray_start.py` (stock and lean alternating, fresh processes): see its docstring.
A Ray joined through an address, `RAY_ADDRESS` or an initialised Ray is never touched; so is one
started with `RayExecutor(lean_start=False)`.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Final

__all__ = ["LEAN_PARTS", "lean_ray_start", "wait_until_registered"]

LEAN_PARTS: Final = ("no-monitor", "no-api-server", "fast-registration", "no-log-monitor")
"""The parts of the lean start, as `lean_ray_start` reports those it applied ("no-log-monitor" only
when the driver does not print the workers' output)."""

_REGISTRATION_POLL_SECONDS: Final = 0.02
_REGISTRATION_WAIT_SECONDS: Final = 30.0
"""As long as Ray's own wait for a starting raylet (`raylet_start_wait_time_s`); then Ray's call decides."""


def _module(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def _parameters(function: object) -> list[str] | None:
    try:
        return list(inspect.signature(function).parameters)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def wait_until_registered(
    gcs_client_type: Any, gcs_address: str, node_id: str, *, timeout: float = _REGISTRATION_WAIT_SECONDS,
) -> bool:
    """Whether the node `node_id` (hex) registered with the GCS at `gcs_address` within `timeout`.

    Polls every 20 ms. Any error (a GCS not answering yet, an API that differs) ends the wait with
    False: the caller then falls back to Ray's own, slower, wait.
    """
    deadline = time.monotonic() + timeout
    try:
        client = gcs_client_type(address=gcs_address)
        while True:
            left = deadline - time.monotonic()
            if any(key.hex() == node_id for key in client.get_all_node_info(timeout=max(0.1, min(5.0, left)))):
                return True
            if left <= 0:
                return False
            time.sleep(_REGISTRATION_POLL_SECONDS)
    except Exception:
        return False


def _skip_process(original: Callable[..., Any]) -> Callable[..., Any]:
    """A `Node.start_*` method that starts nothing (the docstring above says why, part by part)."""

    @functools.wraps(original)
    def start_nothing(self: Any) -> None:
        return None

    return start_nothing


def _skip_api_server_without_dashboard(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def start_api_server(self: Any, *, include_dashboard: bool | None, raise_on_failure: bool) -> Any:
        if include_dashboard is False:
            return None
        return original(self, include_dashboard=include_dashboard, raise_on_failure=raise_on_failure)

    return start_api_server


def _registration_first(original: Callable[..., Any], gcs_client_type: Any) -> Callable[..., Any]:
    @functools.wraps(original)
    def get_node(gcs_address: str, node_id: str) -> Any:
        wait_until_registered(gcs_client_type, gcs_address, node_id)
        return original(gcs_address, node_id)

    return get_node


@contextmanager
def lean_ray_start(*, log_to_driver: bool = True) -> Iterator[tuple[str, ...]]:
    """Within: a `ray.init` that starts a local Ray skips the parts above; yields those it applies.

    `log_to_driver` is what that `ray.init` is given: only False drops the log monitor.

    Process-wide while it lasts (Ray's functions are module attributes): meant around the one
    `ray.init` call on the main thread, as `RayExecutor` uses it. Everything is restored on exit,
    whether `ray.init` succeeded or raised.
    """
    node_type = getattr(_module("ray._private.node"), "Node", None)
    services = _module("ray._private.services")
    gcs_client_type = getattr(_module("ray._raylet"), "GcsClient", None)
    candidates: tuple[tuple[str, object, str, list[str], Callable[[Callable[..., Any]], Callable[..., Any]]], ...] = (
        ("no-monitor", node_type, "start_monitor", ["self"], _skip_process),
        ("no-api-server", node_type, "start_api_server", ["self", "include_dashboard", "raise_on_failure"],
         _skip_api_server_without_dashboard),
        ("fast-registration", services if gcs_client_type is not None else None, "get_node",
         ["gcs_address", "node_id"], functools.partial(_registration_first, gcs_client_type=gcs_client_type)),
        ("no-log-monitor", node_type if not log_to_driver else None, "start_log_monitor", ["self"],
         _skip_process),
    )
    patches: list[tuple[str, object, str, Callable[..., Any], Callable[..., Any]]] = []
    """(part, owner, attribute, Ray's function, its replacement): only functions the owner defines itself."""
    for part, owner, name, parameters, lean in candidates:
        original = vars(owner).get(name) if owner is not None else None
        if callable(original) and _parameters(original) == parameters:
            patches.append((part, owner, name, original, lean(original)))
    try:
        for _part, owner, name, _original, replacement in patches:
            setattr(owner, name, replacement)
        yield tuple(part for part, *_rest in patches)
    finally:
        for _part, owner, name, original, _replacement in patches:
            setattr(owner, name, original)

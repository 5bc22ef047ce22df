"""The lean start of a private local Ray (`research/ray_start.py`): what it replaces, only while it lasts.

A real lean start (services, results, priority) is tested in a fresh process by
`test_executors.py::test_a_local_ray_started_by_the_executor_is_lean_runs_at_normal_priority_and_gives_the_same_results`;
here: the patches and their restoration, a Ray whose internals differ, and the registration wait
against the real GCS of a running local Ray.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from backtest_kit.research.ray_start import (
    LEAN_PARTS,
    _skip_api_server_without_dashboard,
    lean_ray_start,
    wait_until_registered,
)

ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'backtest-kit[ray]')")
from ray._private import node as ray_node  # noqa: E402
from ray._private import services as ray_services  # noqa: E402
from ray._raylet import GcsClient  # noqa: E402


def _ray_functions() -> dict[str, Any]:
    return {
        "start_monitor": ray_node.Node.__dict__["start_monitor"],
        "start_log_monitor": ray_node.Node.__dict__["start_log_monitor"],
        "start_api_server": ray_node.Node.__dict__["start_api_server"],
        "get_node": ray_services.__dict__["get_node"],
    }


@pytest.fixture
def ray_functions() -> Iterator[dict[str, Any]]:
    before = _ray_functions()
    yield before
    assert _ray_functions() == before, "a test left Ray's functions replaced"


def test_the_lean_start_replaces_its_functions_only_while_it_lasts(ray_functions: dict[str, Any]) -> None:
    with lean_ray_start() as parts:  # worker output forwarded (Ray's default): the log monitor stays
        assert parts == LEAN_PARTS[:3]
        inside = _ray_functions()
        assert inside["start_log_monitor"] is ray_functions["start_log_monitor"]
        assert all(inside[name] is not ray_functions[name] for name in ray_functions if name != "start_log_monitor")
        assert inside["get_node"].__wrapped__ is ray_functions["get_node"]
    assert _ray_functions() == ray_functions
    with lean_ray_start(log_to_driver=False) as parts:
        assert parts == LEAN_PARTS
        inside = _ray_functions()
        assert all(inside[name] is not ray_functions[name] for name in ray_functions)
        assert inside["start_log_monitor"](object()) is None
    assert _ray_functions() == ray_functions
    with pytest.raises(RuntimeError, match="init failed"), lean_ray_start():  # restored after an error too
        raise RuntimeError("ray.init failed")
    assert _ray_functions() == ray_functions


def test_a_ray_whose_internals_differ_keeps_its_stock_start_up(
    ray_functions: dict[str, Any], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A renamed function or another signature: that part is skipped, the rest applies, nothing raises."""

    def start_api_server(self: Any, include_dashboard: bool, raise_on_failure: bool, port: int) -> None:
        raise AssertionError("never called here")

    monkeypatch.setattr(ray_node.Node, "start_api_server", start_api_server)
    monkeypatch.delattr(ray_services, "get_node")
    with lean_ray_start() as parts:
        assert parts == ("no-monitor",)
        assert ray_node.Node.__dict__["start_api_server"] is start_api_server
        assert not hasattr(ray_services, "get_node")
    assert ray_node.Node.__dict__["start_monitor"] is ray_functions["start_monitor"]
    monkeypatch.undo()


def test_the_api_server_is_skipped_only_when_the_dashboard_is_off() -> None:
    calls: list[tuple[bool | None, bool]] = []

    def start_api_server(self: Any, *, include_dashboard: bool | None, raise_on_failure: bool) -> str:
        calls.append((include_dashboard, raise_on_failure))
        return "started"

    lean = _skip_api_server_without_dashboard(start_api_server)
    assert lean(object(), include_dashboard=False, raise_on_failure=False) is None
    assert lean(object(), include_dashboard=None, raise_on_failure=False) == "started"  # Ray's default: a dashboard
    assert lean(object(), include_dashboard=True, raise_on_failure=True) == "started"
    assert calls == [(None, False), (True, True)]


@pytest.fixture(scope="module")
def running_ray() -> Iterator[Any]:
    """A local Ray for the registration checks (stock start-up; shut down after the module)."""
    if ray.is_initialized():
        yield ray
        return
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_the_registration_wait_finds_a_registered_node_and_gives_up_on_others(running_ray: Any) -> None:
    context = running_ray.get_runtime_context()
    address, node_id = context.gcs_address, context.get_node_id()
    started = time.monotonic()
    assert wait_until_registered(GcsClient, address, node_id, timeout=10) is True
    assert time.monotonic() - started < 5  # found at its first poll, not after Ray's one-second sleeps

    started = time.monotonic()
    assert wait_until_registered(GcsClient, address, "ab" * 28, timeout=0.3) is False  # a node that never comes
    assert 0.3 <= time.monotonic() - started < 10


def test_the_registration_wait_never_raises(running_ray: Any) -> None:
    """A GCS client that fails (an API that changed, a GCS gone): False, and Ray's own wait decides."""

    class Broken:
        def __init__(self, address: str) -> None:
            raise TypeError(f"unexpected keyword for {address}")

    assert wait_until_registered(Broken, "127.0.0.1:1", "ab" * 28, timeout=1) is False

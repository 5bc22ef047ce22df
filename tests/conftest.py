"""Shared fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real-candle folder next to the repository (`../shared/data`); tests using it skip without it."""
    path = Path(__file__).resolve().parents[1].parent / "shared" / "data"
    if not path.is_dir():
        pytest.skip(f"real candle data not found at {path}")
    return path

from binance_server import binance_server_factory  # noqa: E402, F401  (local Binance-protocol server fixture)


def pytest_addoption(parser: pytest.Parser) -> None:
    """`--trials N`: SIGKILLs of the kill -9 harness (tests/test_killtest.py); env BK_KILLTEST_TRIALS."""
    parser.addoption("--trials", type=int, default=None,
                     help="kill -9 harness: number of SIGKILLs (default 30, or env BK_KILLTEST_TRIALS)")


@pytest.fixture
def kill_trials(request: pytest.FixtureRequest) -> int:
    """How many times the kill -9 harness kills its child: `--trials`, else BK_KILLTEST_TRIALS, else 30."""
    import os

    value = request.config.getoption("--trials")
    return int(value if value is not None else os.environ.get("BK_KILLTEST_TRIALS", "30"))

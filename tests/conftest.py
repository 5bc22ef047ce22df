"""Shared fixtures, and the rule that no test may skip for missing data.

Every test runs on a fresh clone: candles come from the sample bundled in the package
(`bk.bundled_sample_path()`) or the small real-data slices in `tests/data/`. A skip whose reason says
data was not found would hide a whole area from CI, so `pytest_runtest_makereport` turns it into a
failure.
"""

from __future__ import annotations

import os
import re
from collections.abc import Generator

import pytest

MISSING_DATA = re.compile(r"not found|no such file|missing data", re.IGNORECASE)
"""Skip reasons that mean "the data is not there" (turned into failures)."""


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A test skipped because its data was not found fails instead: the suite must run everything."""
    report = yield
    if report.skipped and not hasattr(report, "wasxfail") and isinstance(report.longrepr, tuple):
        reason = str(report.longrepr[2])
        if MISSING_DATA.search(reason):
            report.outcome = "failed"
            report.longrepr = f"{item.nodeid}: skipped for missing data, which CI does not allow ({reason})"
    return report

from binance_server import binance_server_factory  # noqa: E402, F401  (local Binance-protocol server fixture)


def pytest_addoption(parser: pytest.Parser) -> None:
    """`--trials N`: SIGKILLs of the kill -9 harness (tests/test_killtest.py); env BK_KILLTEST_TRIALS."""
    parser.addoption("--trials", type=int, default=None,
                     help="kill -9 harness: number of SIGKILLs (default 30, or env BK_KILLTEST_TRIALS)")


@pytest.fixture
def kill_trials(request: pytest.FixtureRequest) -> int:
    """How many times the kill -9 harness kills its child: `--trials`, else BK_KILLTEST_TRIALS, else 30."""

    value = request.config.getoption("--trials")
    return int(value if value is not None else os.environ.get("BK_KILLTEST_TRIALS", "30"))

"""`backtest-kit sweep`: grid and Optuna sweeps from the command line, `--json`, reports, exit codes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from backtest_kit.cli.app import main
from backtest_kit.cli.sweep import param_item
from backtest_kit.research.grid import FloatRange, IntRange

FAST = ["--executor", "sequential", "--no-progress", "--from", "2025-05-21", "--to", "2025-05-22"]

FACTORY_FILE = '''
from backtest_kit import demo

def make_strategy(fast, slow=30):
    if fast == 7:
        raise ValueError("seven is unlucky")
    return demo.make_strategy(fast=fast, slow=slow)

def always_fails(fast):
    raise RuntimeError("no")
'''


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


def _json(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, dict[str, Any]]:
    code = main(["sweep", *argv, "--json"])
    out = capsys.readouterr().out
    return code, json.loads(out)


def test_a_grid_sweep_prints_json_rows_and_best_and_writes_the_reports(capsys: pytest.CaptureFixture[str]) -> None:
    code, doc = _json(capsys, ["--param", "fast=5,10", "--param", "slow=30,60", "--metric", "total_pnl", *FAST])
    assert code == 0
    assert doc["command"] == "sweep" and doc["search"] == "grid" and doc["metric"] == "total_pnl"
    assert len(doc["rows"]) == 4 and doc["jobs"] == {"total": 4, "finished": 4, "failed": 0}
    assert {(r["params"]["fast"], r["params"]["slow"]) for r in doc["rows"]} == {(5, 30), (5, 60), (10, 30), (10, 60)}
    best = max(doc["rows"], key=lambda r: r["in_sample"])
    assert doc["best"] == best["params"] and doc["best_score"] == best["in_sample"]
    assert doc["files"]["markdown"] == "dump/sweep/make_strategy.md"
    assert Path(doc["files"]["markdown"]).is_file() and Path(doc["files"]["csv"]).is_file()


def test_the_default_sweep_prints_a_summary_with_walk_forward_splits(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["sweep", "--executor", "sequential", "--no-progress", "--folds", "2", "--no-plot"])
    out = capsys.readouterr().out
    assert code == 0
    assert "Sweep make_strategy (grid, 12 runs)" in out and "Split 0" in out and "Split 1" in out
    assert "Best parameters  fast=" in out and "dump/sweep/make_strategy.md" in out
    assert not Path("dump/sweep/make_strategy.png").exists()


@pytest.mark.parametrize("executor", ["sequential", "local"])
def test_a_factory_from_a_file_reports_the_params_that_raised(
    capsys: pytest.CaptureFixture[str], executor: str
) -> None:
    """Also under the process pool: its workers load the file under the CLI's module name for it."""
    Path("strats.py").write_text(FACTORY_FILE, encoding="utf-8")
    argv = ["strats.py:make_strategy", "--param", "fast=5,7", "--name", "lucky", *FAST, "--executor", executor]
    code, doc = _json(capsys, argv)
    assert code == 0
    failed = [r for r in doc["rows"] if r["error"]]
    assert [r["params"] for r in failed] == [{"fast": 7}]
    assert "{'fast': 7}" in failed[0]["error"] and "seven is unlucky" in failed[0]["error"]
    assert doc["best"] == {"fast": 5} and Path("dump/sweep/lucky.md").is_file()


def test_a_sweep_whose_every_job_fails_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    Path("strats.py").write_text(FACTORY_FILE, encoding="utf-8")
    code = main(["sweep", "strats.py:always_fails", "--param", "fast=1,2", *FAST])
    assert code == 1
    assert "every job of the sweep failed (2)" in capsys.readouterr().err


def test_an_optuna_sweep_with_a_seed_repeats_itself(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--optuna", "4", "--seed", "3", "--param", "fast=3..15", "--param", "take_profit=0.5..2.0", *FAST,
            "--no-dump"]
    first = _json(capsys, argv)
    second = _json(capsys, argv)
    assert first[0] == second[0] == 0
    assert first[1]["search"] == "optuna" and len(first[1]["rows"]) == 4
    assert [r["params"] for r in first[1]["rows"]] == [r["params"] for r in second[1]["rows"]]
    assert all(3 <= r["params"]["fast"] <= 15 for r in first[1]["rows"])


@pytest.mark.parametrize(("text", "expected"), [
    ("fast=5,10,20", ("fast", [5, 10, 20])),
    ("mode=long,short", ("mode", ["long", "short"])),
    ("tp=0.5,1", ("tp", [0.5, 1])),
    ("fast=5..20", ("fast", IntRange(5, 20))),
    ("fast=5..20:5", ("fast", IntRange(5, 20, 5))),
    ("tp=0.5..2.0", ("tp", FloatRange(0.5, 2.0))),
    ("tp=0.5..2:0.5", ("tp", FloatRange(0.5, 2.0, 0.5))),
])
def test_param_values_parse_as_lists_and_ranges(text: str, expected: tuple[str, Any]) -> None:
    assert param_item(text) == expected


@pytest.mark.parametrize(("text", "message"), [
    ("fast", "--param: expected NAME=V1,V2,... or NAME=LOW..HIGH[:STEP]"),
    ("fast=", "got 'fast='"),
    ("fast=5,,6", "--param fast: an empty value in '5,,6'"),
    ("fast=a..9", "--param fast: 'a' is not a number in 'a..9'"),
    ("fast=9..5", "--param fast=9..5: IntRange.high: must be >= low (9), got 5"),
])
def test_bad_param_text_is_a_usage_error_naming_it(capsys: pytest.CaptureFixture[str], text: str,
                                                   message: str) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["sweep", "--param", text, *FAST])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_a_grid_over_a_real_range_without_step_is_an_error_naming_the_param(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sweep", "--param", "take_profit=0.5..2.0", *FAST]) == 1
    assert "params.take_profit: FloatRange(0.5, 2.0) has no step" in capsys.readouterr().err

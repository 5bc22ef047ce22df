"""`backtest-kit walk`: strategies of a module compared by the Walker, `--json`, report, executors, exit codes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from backtest_kit import Engine, demo
from backtest_kit.cli.app import main

FAST = ["--no-progress", "--from", "2025-05-21", "--to", "2025-05-22"]

STRATEGY_FILE = '''
from backtest_kit import demo

async def quick(symbol, when):
    return await demo.sma_5_20(symbol, when)

async def broken(symbol, when):
    raise RuntimeError("this strategy is broken")

def helper(x):
    return x
'''


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


def _json(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, dict[str, Any]]:
    code = main(["walk", *argv, "--json"])
    return code, json.loads(capsys.readouterr().out)


async def _separate(strategy: Any) -> Any:
    """The statistics of a separate backtest of `strategy` on the walk's frame (same data, same dates)."""
    from datetime import UTC, datetime

    engine = Engine()  # the CLI's engine: default settings
    source = demo.CsvCandles(demo.bundled_sample_path())
    engine.add_exchange(exchange_name="csv", get_candles=source)
    engine.add_strategy(strategy_name="s", interval="5m", get_signal=strategy)
    engine.add_frame(frame_name="f", interval="1m", start_date=datetime(2025, 5, 21, tzinfo=UTC),
                     end_date=datetime(2025, 5, 22, tzinfo=UTC))
    async for _ in engine.backtest.run("BTCUSDT", strategy_name="s", exchange_name="csv", frame_name="f"):
        pass
    return await engine.backtest.get_data("BTCUSDT", "s")


@pytest.mark.parametrize("executor", ["sequential", "local"])
def test_the_default_walk_ranks_the_demo_variants(capsys: pytest.CaptureFixture[str], executor: str) -> None:
    code, doc = _json(capsys, ["--executor", executor, "--metric", "total_pnl", *FAST])
    assert code == 0
    assert doc["command"] == "walk" and doc["executor"] == executor and doc["failed"] == []
    assert [r["strategy"] for r in doc["results"]] == list(demo.WALK_STRATEGIES)
    best = max(doc["results"], key=lambda r: r["metric_value"])
    assert doc["best_strategy"] == best["strategy"] and doc["best_metric"] == best["metric_value"]
    assert doc["files"]["report"] == "dump/walker/walk.md"
    report = Path(doc["files"]["report"]).read_text(encoding="utf-8")
    assert "# Walker Comparison Report: walk" in report and best["strategy"] in report


def test_each_result_equals_a_separate_backtest_of_that_strategy(capsys: pytest.CaptureFixture[str]) -> None:
    import asyncio

    code, doc = _json(capsys, ["--executor", "local", *FAST])
    assert code == 0
    for row in doc["results"]:
        alone = asyncio.run(_separate(demo.WALK_STRATEGIES[row["strategy"]]))
        assert row["stats"]["total_trades"] == alone.total_trades
        assert row["stats"]["total_pnl"] == alone.total_pnl
        assert row["stats"]["sharpe_ratio"] == alone.sharpe_ratio


@pytest.mark.parametrize("executor", ["sequential", "local"])
def test_a_strategy_file_with_a_failing_strategy_still_ranks_the_others(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, executor: str
) -> None:
    """A file is imported under a made-up module name; the local pool's workers load the same file
    under the same name, so its functions travel by reference like those of a package."""
    (tmp_path / "strats.py").write_text(STRATEGY_FILE, encoding="utf-8")
    code, doc = _json(capsys, ["strats.py", "--executor", executor, *FAST])
    assert code == 0
    # the async functions of the file whose first parameter is `symbol`, in file order (not `helper`)
    assert [r["strategy"] for r in doc["results"]] == ["quick", "broken"]
    # a get_signal that raises is a tick error (each tick ends idle), not a failed backtest: no trades,
    # an undefined Sharpe ratio, never the best
    broken = doc["results"][1]
    assert broken["stats"]["total_trades"] == 0 and broken["metric_value"] is None
    assert doc["best_strategy"] == "quick" and doc["results"][0]["stats"]["total_trades"] > 0


def test_strategies_named_on_the_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    code, doc = _json(capsys, ["--strategy", "sma-5-20", "--strategy", "sma-20-60", "--executor", "sequential", *FAST])
    assert code == 0
    assert [r["strategy"] for r in doc["results"]] == ["sma-5-20", "sma-20-60"]


def test_an_unknown_strategy_name_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["walk", "--strategy", "nope", "--executor", "sequential", *FAST])
    assert code != 0
    assert "--strategy 'nope'" in capsys.readouterr().err


def test_a_module_with_one_strategy_is_refused(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    (tmp_path / "one.py").write_text("async def only(symbol, when):\n    return None\n", encoding="utf-8")
    code = main(["walk", "one.py", "--executor", "sequential", *FAST])
    assert code != 0
    assert "a walk compares two or more" in capsys.readouterr().err


def test_the_text_summary_lists_every_strategy_best_first(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["walk", "--executor", "sequential", "--no-dump", *FAST])
    out = capsys.readouterr().out
    assert code == 0
    assert "Walk walk (3 of 3 strategies)" in out and "Best strategy" in out
    best_line = next(line for line in out.splitlines() if "Best strategy" in line)
    first_ranked = next(line for line in out.splitlines() if line.strip().startswith("#1 "))
    assert first_ranked.split()[1] in best_line
    assert not Path("dump/walker/walk.md").exists()

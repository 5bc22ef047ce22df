"""How CLI runs end: Ctrl-C keeps the report, runs that never worked exit 1, replays end and repeat.

Every test runs the real `python -m backtest_kit` in a subprocess over the bundled sample (or small
files written here). Interruptions are made deterministic without timing: the strategy announces a
chosen `get_signal` call on stderr and then blocks reading its stdin; the test sends SIGINT while it
is blocked and only then releases it, so the signal is always pending when the run goes on.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

import backtest_kit as bk
from backtest_kit.reports.report import format_signed_percent

TIMEOUT = 180
SAMPLE = str(bk.bundled_sample_path())
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "120"}


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "backtest_kit", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=TIMEOUT, env=ENV, check=False)


# A strategy that pauses at its PAUSE_AT-th get_signal call until a line arrives on stdin.
PAUSING = '''
import sys
import backtest_kit as bk
from backtest_kit import demo

PAUSE_AT = {pause_at}
calls = [0]

async def get_signal(symbol, when):
    calls[0] += 1
    if calls[0] == PAUSE_AT:
        print(f"paused at {{when.isoformat()}}", file=sys.stderr, flush=True)
        sys.stdin.readline()
    return await demo.get_signal(symbol, when)

def register(engine, csv_path=None):
    engine.add_exchange(exchange_name="csv", get_candles=bk.CsvCandles(csv_path or bk.bundled_sample_path()))
    engine.add_strategy(strategy_name="sma-cross", interval="5m", get_signal=get_signal)
    return "BTCUSDT"
'''


def interrupt_at_pause(args: list[str], cwd: Path) -> tuple[int, str, str, str]:
    """Run the CLI, send SIGINT while the strategy is paused, release it; (code, stdout, stderr, paused-at)."""
    proc = subprocess.Popen([sys.executable, "-m", "backtest_kit", *args], cwd=cwd, env=ENV, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdin is not None and proc.stderr is not None
    try:
        seen: list[str] = []
        for line in proc.stderr:
            seen.append(line)
            if line.startswith("paused at "):
                break
        else:
            raise AssertionError("the strategy never paused:\n" + "".join(seen))
        paused_at = seen[-1].removeprefix("paused at ").strip()
        proc.send_signal(signal.SIGINT)
        proc.stdin.write("\n")
        proc.stdin.flush()
        out, err = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, out, "".join(seen) + err, paused_at


def closed_count(report: str) -> int:
    match = re.search(r"^\*\*Closed signals:\*\* (\d+)$", report, re.M)
    assert match is not None, report
    return int(match.group(1))


# ---------------------------------------------------------------------------------------------------------
# Item 11: Ctrl-C keeps the report
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_ctrl_c_on_a_replay_writes_the_report_and_exits_130(tmp_path: Path) -> None:
    (tmp_path / "pausing.py").write_text(PAUSING.format(pause_at=150))  # a few days into the week
    code, out, err, paused_at = interrupt_at_pause(["live", "pausing.py", "--replay", SAMPLE, "--no-plot"], tmp_path)
    assert code == 130, err
    assert "interrupted: the report covers the replay up to the interruption" in err
    report_file = tmp_path / "dump" / "live" / "BTCUSDT_sma-cross.md"
    assert report_file.is_file(), err
    written = report_file.read_text()
    assert out.startswith(written + "\n")  # the summary (the report) is printed too
    trades = closed_count(written)
    assert trades > 0
    # The run stopped near the pause, far from the data's end: the status line says where.
    status = [line for line in err.splitlines() if line.startswith("replay sma-cross BTCUSDT | ")][-1]
    stopped = status.split(" | ")[1]
    assert stopped[:10] == paused_at[:10]
    full = run("live", "--replay", SAMPLE, "--json", "--no-dump", "--no-progress", cwd=tmp_path)
    assert json.loads(full.stdout)["statistics"]["total_trades"] > trades


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_ctrl_c_on_a_backtest_writes_the_report_and_exits_130(tmp_path: Path) -> None:
    (tmp_path / "pausing.py").write_text(PAUSING.format(pause_at=150))
    code, out, err, _ = interrupt_at_pause(["backtest", "pausing.py", "--no-plot", "--no-progress"], tmp_path)
    assert code == 130, err
    match = re.search(r"interrupted after (\d+) of (\d+) frames", out)
    assert match is not None, out
    assert 0 < int(match.group(1)) < int(match.group(2))
    report = (tmp_path / "dump" / "backtest" / "BTCUSDT_sma-cross.md").read_text()
    trades = int(re.search(r"Trades\s+(\d+)", out).group(1))  # type: ignore[union-attr]
    assert trades > 0 and closed_count(report) == trades
    assert "interrupted: the report covers the backtest" in err


# ---------------------------------------------------------------------------------------------------------
# Item 13: runs that never work exit 1
# ---------------------------------------------------------------------------------------------------------

BROKEN = '''
import backtest_kit as bk

async def get_signal(symbol, when):
    candles = await bk.get_candles(symbol, "1m", 3)
    fields = {"close": candles[-1].close}
    return {"position": fields["no-such-field-xyz"]}  # BROKEN LINE
'''


def _broken_line(path: Path) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if "BROKEN LINE" in line)


def test_a_strategy_whose_every_call_fails_exits_1_naming_its_line(tmp_path: Path) -> None:
    strategy = tmp_path / "broken.py"
    strategy.write_text(BROKEN)
    window = ["--from", "2025-05-21T00:00", "--to", "2025-05-21T01:00", "--interval", "5m"]
    proc = run("backtest", "broken.py", *window, "--no-progress", "--no-plot", cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    calls = 13  # a 1m frame of 61 ticks, get_signal every 5 minutes
    assert f"error: the run never worked: all {calls} get_signal calls failed" in proc.stderr
    assert "first error: KeyError: 'no-such-field-xyz'" in proc.stderr
    assert f"raised at: broken.py:{_broken_line(strategy)} in get_signal" in proc.stderr
    assert "Traceback" not in proc.stderr and "--debug" in proc.stderr
    assert (tmp_path / "dump" / "backtest" / "BTCUSDT_broken.md").is_file()  # the report is still written

    debug = run("backtest", "broken.py", *window, "--no-progress", "--no-dump", "--debug", cwd=tmp_path)
    assert debug.returncode == 1
    assert debug.stderr.count("Traceback (most recent call last)") == 1
    assert f'broken.py", line {_broken_line(strategy)}, in get_signal' in debug.stderr

    verbose = run("backtest", "broken.py", *window, "--no-progress", "--no-dump", "-v", "--json", cwd=tmp_path)
    assert verbose.returncode == 1
    doc = json.loads(verbose.stdout)
    assert doc["errors"]["count"] == calls and doc["errors"]["never_worked"] is True
    assert doc["errors"]["first"]["origin"] == f"broken.py:{_broken_line(strategy)} in get_signal"
    mentions = [line for line in verbose.stderr.splitlines() if "no-such-field-xyz" in line]
    assert len(mentions) == calls + 1  # each error logged once, plus the closing "first error" line


def test_a_replay_whose_every_call_fails_exits_1(tmp_path: Path) -> None:
    (tmp_path / "broken.py").write_text(BROKEN)
    proc = run("live", "broken.py", "--replay", SAMPLE, "--to", "2025-05-20T03:00", "--json", cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    doc = json.loads(proc.stdout)  # still exactly one JSON document
    assert doc["errors"]["never_worked"] is True and doc["errors"]["count"] > 0
    assert f"all {doc['errors']['count']} get_signal calls failed" in proc.stderr


@pytest.mark.parametrize("window", [["--from", "2030-01-01", "--to", "2030-01-02"],
                                    ["--from", "2020-01-01", "--to", "2020-01-02"]])
def test_a_frame_outside_the_data_exits_1(tmp_path: Path, window: list[str]) -> None:
    proc = run("backtest", *window, "--no-progress", "--json", cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout
    assert proc.stdout == ""
    first = datetime.fromtimestamp(bk.CsvCandles(SAMPLE).first_timestamp("BTCUSDT") / 1000, UTC)
    assert f"lies outside the data of BTCUSDT ({first.isoformat()} .. " in proc.stderr


def test_a_strategy_failing_now_and_then_still_exits_0(tmp_path: Path) -> None:
    (tmp_path / "flaky.py").write_text('''
from backtest_kit import demo
calls = [0]

async def get_signal(symbol, when):
    calls[0] += 1
    if calls[0] % 3 == 0:
        raise RuntimeError("flaky-marker")
    return await demo.get_signal(symbol, when)
''')
    proc = run("backtest", "flaky.py", "--no-progress", "--no-dump", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["errors"]["never_worked"] is False and doc["errors"]["count"] > 0
    assert "warning: the engine reported" in proc.stderr and "flaky.py:" in proc.stderr


# ---------------------------------------------------------------------------------------------------------
# Items 16 / 17: the replay ends with the data, reports its open position, and repeats exactly
# ---------------------------------------------------------------------------------------------------------


def _trades(doc: dict[str, Any]) -> list[tuple[Any, ...]]:
    return [(s["signal"]["position"], s["signal"]["pending_at"], s["close_timestamp"], s["close_reason"],
             s["pnl"]["pnl_percentage"]) for s in doc["statistics"]["signals"]]


def test_speed_replays_are_deterministic(tmp_path: Path) -> None:
    window = ["--replay", SAMPLE, "--to", "2025-05-20T16:00", "--json", "--no-dump", "--no-progress"]
    virtual = json.loads(run("live", *window, cwd=tmp_path).stdout)
    paced = [run("live", *window, "--speed", "200000", cwd=tmp_path) for _ in range(2)]
    for proc in paced:
        assert proc.returncode == 0, proc.stderr
    first, second = (json.loads(p.stdout) for p in paced)
    assert _trades(first) and _trades(first) == _trades(second) == _trades(virtual)
    assert first["ticks"] == second["ticks"] == virtual["ticks"]


def test_a_replay_reports_its_open_position_and_ends_with_the_data(tmp_path: Path) -> None:
    proc = run("live", "--replay", SAMPLE, "--json", "--no-plot", "--no-progress", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    stats = doc["statistics"]
    assert doc["interrupted"] is False
    assert stats["open_positions"] == (doc["open_position"] is not None)
    report = (tmp_path / doc["files"]["report"]).read_text()
    if stats["open_positions"]:
        line = (f"**Open positions:** 1 (unrealized PNL at the last price: "
                f"{format_signed_percent(stats['unrealized_pnl'])})")
        assert line in report.splitlines()
    # One tick per CC_TICK_TTL_MS from the warm-up up to the first tick at or past the data's end.
    source = bk.CsvCandles(SAMPLE)
    start = source.first_timestamp("BTCUSDT") + 60 * 60_000
    end = source.last_timestamp("BTCUSDT") + 60_000
    ttl = bk.DEFAULT_CONFIG.CC_TICK_TTL_MS
    assert doc["ticks"] == -(-(end - start) // ttl) + 1


# ---------------------------------------------------------------------------------------------------------
# Item 18: `report NAME` right after the README's own commands
# ---------------------------------------------------------------------------------------------------------


def test_report_name_after_the_readme_commands(tmp_path: Path) -> None:
    assert run("backtest", "--no-progress", "--no-plot", cwd=tmp_path).returncode == 0
    assert run("live", "--replay", SAMPLE, "--no-progress", "--no-plot", cwd=tmp_path).returncode == 0
    listed = run("report", "--json", cwd=tmp_path)
    names = [r["name"] for r in json.loads(listed.stdout)["reports"]]
    assert names == ["backtest/BTCUSDT_sma-cross", "live/BTCUSDT_sma-cross"]
    ambiguous = run("report", "sma-cross", cwd=tmp_path)
    assert ambiguous.returncode == 1 and ambiguous.stdout == ""
    assert "'sma-cross' matches 2 reports: backtest/BTCUSDT_sma-cross, live/BTCUSDT_sma-cross" in ambiguous.stderr
    for name, folder in (("backtest/sma-cross", "backtest"), ("live/BTCUSDT_sma-cross", "live")):
        proc = run("report", name, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == (tmp_path / "dump" / folder / "BTCUSDT_sma-cross.md").read_text() + "\n"


def test_the_backtest_summary_shows_the_position_open_at_the_end(tmp_path: Path) -> None:
    doc = json.loads(run("backtest", "--json", "--no-progress", "--no-dump", cwd=tmp_path).stdout)
    stats = doc["statistics"]
    assert stats["open_positions"] == 1  # the bundled week ends with a position open
    text = run("backtest", "--no-progress", "--no-dump", cwd=tmp_path).stdout
    rows = [line.split() for line in text.splitlines() if line.strip().startswith("Open at the end")]
    expected = f"1 (unrealized {stats['unrealized_pnl']:+.2f}% at the last price, not counted as a trade)"
    assert rows == [["Open", "at", "the", "end", *expected.split()]]


async def test_error_origin_points_into_the_users_file_through_engine_wrappers(tmp_path: Path) -> None:
    import importlib.util

    from backtest_kit.cli.outcome import error_origin

    source = tmp_path / "user_exchange.py"
    source.write_text("async def get_candles(symbol, interval, since, limit):\n"
                      "    raise ConnectionError('exchange down')  # line 2\n")
    spec = importlib.util.spec_from_file_location("user_exchange", source)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    engine = bk.Engine(config={"CC_GET_CANDLES_RETRY_COUNT": 1})
    engine.add_exchange(exchange_name="x", get_candles=module.get_candles)
    with pytest.raises(bk.ExchangeError) as caught:  # the engine wraps the user's error
        await engine.exchange("x").get_candles("BTCUSDT", "1m", 5, 1_747_699_200_000)
    origin = error_origin(caught.value)
    assert origin is not None and origin.endswith("user_exchange.py:2 in get_candles")
    assert error_origin(RuntimeError("never raised")) is None


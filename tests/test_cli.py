"""The `backtest-kit` command line as a user runs it: subprocesses, exit codes, stdout/stderr, files."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

import backtest_kit as bk
from backtest_kit.cli.app import build_parser, config_item, parse_value, speed, when
from backtest_kit.cli.render import LiveStatus, PlainProgress, format_span, summary_rows
from backtest_kit.engine.models import ProgressEvent
from backtest_kit.reports import plots

HAS_MPL = plots.plot_available()
TIMEOUT = 180


def run(*args: str, cwd: Path, timeout: float = TIMEOUT) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "120"}
    return subprocess.run([sys.executable, "-m", "backtest_kit", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env=env, check=False)


LIMIT_STRATEGY = '''
import backtest_kit as bk

async def get_signal(symbol, when):
    candles = await bk.get_candles(symbol, "1m", 5)
    if len(candles) < 5:
        return None
    price = candles[-1].close
    print("strategy output must not reach stdout with --json")
    return bk.SignalDto(position="long", price_open=price * 0.998, price_take_profit=price * 1.01,
                        price_stop_loss=price * 0.99, minute_estimated_time=120)
'''


# ---------------------------------------------------------------------------------------------------------
# Backtests
# ---------------------------------------------------------------------------------------------------------


def test_default_backtest_json_on_the_bundled_data(tmp_path: Path) -> None:
    proc = run("backtest", "--json", "--no-progress", "--performance", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)  # stdout is exactly one JSON document
    assert doc["command"] == "backtest"
    assert (doc["strategy_name"], doc["symbol"], doc["exchange_name"]) == ("sma-cross", "BTCUSDT", "csv")
    stats = doc["statistics"]
    assert stats["total_trades"] > 0
    assert stats["total_trades"] == stats["winning_trades"] + stats["losing_trades"] + sum(
        1 for s in stats["signals"] if s["pnl"]["pnl_percentage"] == 0)
    assert len(stats["signals"]) == stats["total_trades"]
    assert 0 <= stats["win_rate"] <= 1 and stats["max_drawdown"] >= 0
    assert doc["errors"] == {"count": 0, "messages": [], "first": None, "never_worked": False}
    assert {"backtest_total", "backtest_timeframe"} <= set(doc["performance"]["metric_stats"])
    files = doc["files"]
    report = tmp_path / files["report"]
    assert files["report"] == os.path.join("dump", "backtest", "BTCUSDT_sma-cross.md") and report.is_file()
    assert (tmp_path / files["performance"]).is_file()
    assert files["schedule"] is None  # market orders only: nothing scheduled, no schedule report
    text = report.read_text()
    assert text.startswith("# Backtest Report: sma-cross\n")
    if HAS_MPL:
        png = tmp_path / files["chart"]
        assert png.name == "BTCUSDT_sma-cross-equity.png" and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert "![equity](BTCUSDT_sma-cross-equity.png)" in text.split("\n")[2]
    else:
        assert files["chart"] is None and "![equity]" not in text


def test_same_numbers_as_the_library(tmp_path: Path) -> None:
    proc = run("backtest", "--json", "--no-progress", "--no-dump", "-c", "CC_PERCENT_FEE=0.05", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["files"] == {}
    assert not (tmp_path / "dump").exists()

    import asyncio

    from backtest_kit import demo

    async def library() -> bk.Statistics:
        engine = bk.Engine(dump_dir=tmp_path / "lib")
        engine.set_config(CC_PERCENT_FEE=0.05)
        symbol, frame = demo.register(engine)
        async for _ in engine.backtest.run(symbol, strategy_name="sma-cross", exchange_name="csv",
                                           frame_name=frame):
            pass
        return await engine.backtest.get_data(symbol, "sma-cross")

    stats = asyncio.run(library())
    assert doc["statistics"]["total_trades"] == stats.total_trades
    assert doc["statistics"]["total_pnl"] == pytest.approx(stats.total_pnl)


def test_text_output_progress_and_markdown(tmp_path: Path) -> None:
    proc = run("backtest", "--no-plot", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "Backtest sma-cross on BTCUSDT" in proc.stdout and "Trades" in proc.stdout
    assert "Max drawdown" in proc.stdout and "report:" in proc.stdout
    # stderr is a pipe: plain-text progress, one line per 10 % step, ending at 100 %.
    lines = [line for line in proc.stderr.splitlines() if "frames" in line]
    assert 5 <= len(lines) <= 12, proc.stderr
    assert "100%" in lines[-1] and "trades" in lines[-1]

    proc = run("backtest", "--markdown", "--no-progress", "--no-dump", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("# Backtest Report: sma-cross\n\n| Signal ID |")
    assert proc.stderr == ""


def test_strategy_file_with_limit_signals_and_a_frame(tmp_path: Path) -> None:
    (tmp_path / "limit_strat.py").write_text(LIMIT_STRATEGY)
    proc = run("backtest", "limit_strat.py", "--interval", "1h", "--from", "2025-05-21", "--to",
               "2025-05-23T00:00Z", "--json", "--no-progress", "--no-plot", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert "must not reach stdout" in proc.stderr
    assert doc["strategy_name"] == "limit_strat"
    assert doc["frame"] == {"name": "cli-frame", "interval": "1m", "start": "2025-05-21T00:00:00+00:00",
                            "end": "2025-05-23T00:00:00+00:00"}
    sched = doc["schedule"]
    assert sched["total_scheduled"] > 0
    assert sched["total_opened"] + sched["total_cancelled"] <= sched["total_scheduled"]
    assert sched["total_opened"] > 0 and sched["total_cancelled"] > 0
    assert sched["activation_rate"] == pytest.approx(sched["total_opened"] / sched["total_scheduled"])
    assert (tmp_path / doc["files"]["schedule"]).read_text().startswith("# Scheduled Signals Report: limit_strat")


def test_module_function_spec_and_register_protocol(tmp_path: Path) -> None:
    pkg = tmp_path / "mystrats"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "trend.py").write_text(textwrap.dedent('''
        from datetime import UTC, datetime
        import backtest_kit as bk
        from backtest_kit import demo

        def setup(engine, csv_path=None):
            engine.add_exchange(exchange_name="file", get_candles=bk.CsvCandles(csv_path or bk.bundled_sample_path()))
            engine.add_strategy(strategy_name="trend", interval="15m", get_signal=demo.get_signal)
            engine.add_frame(frame_name="day", interval="1m", start_date=datetime(2025, 5, 21, tzinfo=UTC),
                             end_date=datetime(2025, 5, 22, tzinfo=UTC))
            return "BTCUSDT", "day"
    '''))
    proc = run("backtest", "--strategy", "mystrats.trend:setup", "--json", "--no-progress", "--no-dump",
               cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert (doc["strategy_name"], doc["exchange_name"], doc["frame"]["name"]) == ("trend", "file", "day")


# ---------------------------------------------------------------------------------------------------------
# Errors and exit codes
# ---------------------------------------------------------------------------------------------------------


def test_unknown_config_key_exits_1_naming_it(tmp_path: Path) -> None:
    proc = run("backtest", "--config", "CC_FOO=1", "--json", cwd=tmp_path)
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert "CC_FOO" in proc.stderr and proc.stderr.startswith("backtest-kit: error: invalid config")
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["backtest", "--data", "missing.csv"], "data file not found: missing.csv"),
        (["backtest", "missing_strategy.py"], "strategy file not found: missing_strategy.py"),
        (["backtest", "no_such_pkg.mod:register"], "strategy module 'no_such_pkg.mod' not found"),
        (["backtest", "-c", "CC_PERCENT_FEE=abc"], "CC_PERCENT_FEE must be a number"),
        (["backtest", "--symbol", "ETHUSDT"], "symbol 'ETHUSDT' is not in the data"),
        (["report", "--dump-dir", "nowhere"], "nowhere does not exist"),
        (["live"], "add --replay CSV"),
    ],
)
def test_run_errors_exit_1_with_a_clear_message(tmp_path: Path, args: list[str], needle: str) -> None:
    proc = run(*args, "--no-progress" if args[0] != "report" else "--json", cwd=tmp_path)
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert needle in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("args", [[], ["backtest", "--bogus"], ["backtest", "-c", "NOEQUALS"],
                                  ["backtest", "--from", "yesterday"], ["live", "--speed", "-3"]])
def test_usage_errors_exit_2(tmp_path: Path, args: list[str]) -> None:
    proc = run(*args, cwd=tmp_path)
    assert proc.returncode == 2
    assert "usage:" in proc.stderr and proc.stdout == ""


def test_console_script_is_installed(tmp_path: Path) -> None:
    script = shutil.which("backtest-kit") or str(Path(sys.executable).parent / "backtest-kit")
    assert Path(script).is_file()
    proc = subprocess.run([script, "--version"], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0 and proc.stdout.strip() == f"backtest-kit {bk.__version__}"


# ---------------------------------------------------------------------------------------------------------
# live --replay and report
# ---------------------------------------------------------------------------------------------------------


def test_live_replay_until_the_window_ends(tmp_path: Path) -> None:
    proc = run("live", "--replay", str(bk.bundled_sample_path()), "--to", "2025-05-20T12:00", "--json",
               cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert (doc["command"], doc["mode"]) == ("live", "replay")
    assert doc["replay"]["start"] == "2025-05-20T01:00:00+00:00"  # first candle + 60 min warm-up
    assert doc["replay"]["end"] == "2025-05-20T12:00:00+00:00"
    assert 600 <= doc["ticks"] <= 700  # ~one tick a minute for 11 hours
    assert doc["statistics"]["total_trades"] > 0
    assert doc["errors"]["count"] == 0
    assert (tmp_path / doc["files"]["report"]).read_text().startswith("# Live Trading Report: sma-cross")
    # Trade events went to stderr (not a terminal: one line each, then the final status line).
    assert "OPENED" in proc.stderr and "CLOSED" in proc.stderr
    assert proc.stderr.rstrip().splitlines()[-1].startswith("replay sma-cross BTCUSDT | 2025-05-20 12:0")
    # Nothing persisted in the working directory: a replay uses a temporary state directory.
    assert not (tmp_path / "data").exists()


SYNTHETIC_EXCHANGE = """
import math, time
from datetime import datetime

async def get_candles(symbol, interval, since, limit):
    start = int(since.timestamp() * 1000) if isinstance(since, datetime) else int(since)
    now = int(time.time() * 1000)
    out, t = [], start - start % 60_000
    while len(out) < limit and t + 60_000 <= now:
        p = 100 + math.sin(t / 600_000)
        out.append((t, p, p + 0.1, p - 0.1, p, 10.0))
        t += 60_000
    return out

async def get_signal(symbol, when):
    return None

def register(engine, csv_path=None):
    engine.add_exchange(exchange_name="synthetic", get_candles=get_candles)
    engine.add_strategy(strategy_name="idle", interval="1m", get_signal=get_signal)
    return "SYNTH"
"""


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_live_runs_until_ctrl_c_then_reports(tmp_path: Path) -> None:
    (tmp_path / "synth.py").write_text(SYNTHETIC_EXCHANGE)
    proc = subprocess.Popen([sys.executable, "-m", "backtest_kit", "live", "synth.py", "-c", "CC_TICK_TTL_MS=50",
                             "--no-plot"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        banner = proc.stderr.readline()  # printed once the run has started
        assert banner.startswith("live idle on SYNTH (synthetic); Ctrl-C stops")
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert out.startswith("# Live Trading Report: idle\n")
    assert "| IDLE | SYNTH |" in out
    status = err.strip().splitlines()[-1]
    assert status.startswith("live idle SYNTH | ") and int(status.split("ticks ")[1].split(" ")[0]) > 0
    assert (tmp_path / "dump" / "live" / "SYNTH_idle.md").is_file()


def test_report_lists_and_prints_dumps(tmp_path: Path) -> None:
    assert run("backtest", "--no-progress", "--no-plot", cwd=tmp_path).returncode == 0
    proc = run("report", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("backtest/BTCUSDT_sma-cross  ") and "Backtest Report: sma-cross" in proc.stdout
    written = (tmp_path / "dump" / "backtest" / "BTCUSDT_sma-cross.md").read_text() + "\n"
    for name in ("sma-cross", "backtest/sma-cross", "BTCUSDT_sma-cross", "backtest/BTCUSDT_sma-cross"):
        proc = run("report", name, cwd=tmp_path)  # the only match, whichever way it is named
        assert proc.returncode == 0, (name, proc.stderr)
        assert proc.stdout == written
    doc = json.loads(run("report", "--json", cwd=tmp_path).stdout)
    assert [r["name"] for r in doc["reports"]] == ["backtest/BTCUSDT_sma-cross"]
    proc = run("report", "nope", cwd=tmp_path)
    assert proc.returncode == 1 and "no report named 'nope'" in proc.stderr
    assert "backtest/BTCUSDT_sma-cross" in proc.stderr


# ---------------------------------------------------------------------------------------------------------
# In-process: argument types and renderers
# ---------------------------------------------------------------------------------------------------------


def test_argument_types() -> None:
    assert parse_value("true") is True and parse_value("False") is False
    assert parse_value("12") == 12 and isinstance(parse_value("12"), int)
    assert parse_value("0.075") == 0.075 and parse_value("abc") == "abc"
    assert config_item("CC_PERCENT_FEE = 0.1") == ("CC_PERCENT_FEE", 0.1)
    assert when("2025-05-21").isoformat() == "2025-05-21T00:00:00+00:00"
    assert when("2025-05-21T06:30+02:00").isoformat() == "2025-05-21T04:30:00+00:00"
    assert when("1747699200000").isoformat() == "2025-05-20T00:00:00+00:00"
    assert speed("virtual") is None and speed("60") == 60.0
    args = build_parser().parse_args(["backtest", "x.py", "-c", "A=1", "-c", "B=true", "--data", "a.csv"])
    assert (args.strategy_pos, args.config, args.data) == ("x.py", [("A", 1), ("B", True)], ["a.csv"])


def test_plain_progress_in_a_log_and_on_a_terminal() -> None:
    log = io.StringIO()
    progress = PlainProgress("s BTCUSDT", log, tty=False)
    for i in range(0, 1001):
        progress.on_progress(ProgressEvent(symbol="BTCUSDT", strategy_name="s", exchange_name="x",
                                           total_frames=1000, processed_frames=i, progress=i / 1000))
    progress.close()
    lines = log.getvalue().splitlines()
    assert len(lines) == 11 and lines[0].startswith("s BTCUSDT [") and "1000/1000 frames" in lines[-1]

    term = io.StringIO()
    progress = PlainProgress("s", term, tty=True)
    progress.on_progress(ProgressEvent(symbol="B", strategy_name="s", exchange_name="x", total_frames=10,
                                       processed_frames=10, progress=1.0))
    assert term.getvalue().startswith("\r") and term.getvalue().endswith("\n")


def test_live_status_line() -> None:
    out = io.StringIO()
    status = LiveStatus("replay s BTCUSDT", out, tty=False, start_ms=0, end_ms=100)
    from backtest_kit.engine.models import IdleResult

    status.on_tick(IdleResult(symbol="BTCUSDT", strategy_name="s", exchange_name="x", current_price=101.5,
                              backtest=False), 50)
    assert status.text() == (
        "replay s BTCUSDT | 1970-01-01 00:00Z |  50% | ticks 1 | flat @ 101.50 | trades 0 (0W/0L) | pnl +0.00%"
    )
    status.close()
    assert out.getvalue() == status.text() + "\n"


def test_summary_rows_handle_an_empty_run() -> None:
    from backtest_kit.reports.mode_stats import BacktestStats

    rows: dict[str, Any] = dict(summary_rows(BacktestStats().data()))
    assert rows["Trades"] == "0 (0 won / 0 lost)" and rows["Win rate"] == "n/a" and rows["Max drawdown"] == "n/a"
    assert (format_span(42 * 60_000), format_span(307 * 60_000), format_span(90 * 86_400_000)) == (
        "42 min", "5 h 07 min", "90.0 days")

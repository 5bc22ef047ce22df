"""Markdown reports: the [events §4.10](../docs/design/events-and-api.md#410-worked-example) layout, the
[§4.0](../docs/design/events-and-api.md#40-common-rules) formatting rules, and the dump file helper."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers import active_result, closed_result, example_trades, idle_result, iso_ms, opened_result, trade_signal

from backtest_kit.engine.models import ClosedResult, PnL
from backtest_kit.reports.mode_stats import BacktestStats, LiveStats
from backtest_kit.reports.report import (
    backtest_report,
    format_percent,
    format_price,
    format_signed_percent,
    format_timestamp,
    live_report,
    write_report,
)

EXAMPLE = """\
# Backtest Report: macd-crossover

| Signal ID | Symbol | Position | Open Price | Close Price | Take Profit | Stop Loss | PNL (net) | Close Reason | Duration (min) | Open Time | Close Time |
| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |
| c3f1 | BTCUSDT | SHORT | 98000.00000000 USD | 95900.00000000 USD | 95900.00000000 USD | 99500.00000000 USD | +1.75% | take_profit | 300 | 2025-12-02T00:00:00.000Z | 2025-12-02T05:00:00.000Z |
| b2e9 | BTCUSDT | LONG | 97000.00000000 USD | 96000.00000000 USD | 98500.00000000 USD | 96000.00000000 USD | -1.43% | stop_loss | 120 | 2025-12-01T12:00:00.000Z | 2025-12-01T14:00:00.000Z |
| a1d4 | BTCUSDT | LONG | 96400.00000000 USD | 97850.00000000 USD | 97850.00000000 USD | 95000.00000000 USD | +1.10% | take_profit | 47 | 2025-12-01T10:00:00.000Z | 2025-12-01T10:47:00.000Z |

**Total signals:** 3
**Closed signals:** 3
**Win rate:** 66.67% (2W / 1L) (higher is better)
**Average PNL:** +0.47% (higher is better)
**Total PNL:** +1.42% (higher is better)
**Standard Deviation:** 1.370% (lower is better)
**Sharpe Ratio:** 0.345 (higher is better)
**Annualized Sharpe Ratio:** 6.597 (higher is better)
**Certainty Ratio:** 0.997 (higher is better)
**Expected Yearly Returns:** +1597.76% (higher is better)
**Max Drawdown:** 1.43% (lower is better)"""  # noqa: E501

EXTRA = """\
**Sortino Ratio:** 0.574 (higher is better)
**Profit Factor:** 1.994 (higher is better)
**Expectancy:** +0.47% (higher is better)
**Average Trade Duration:** 155.67 min
**Close Reasons:** take_profit: 2, stop_loss: 1"""


def backtest_stats(trades: list[ClosedResult]) -> BacktestStats:
    store = BacktestStats()
    for t in trades:
        store.add(t)
    return store


def test_backtest_report_matches_the_example() -> None:
    text = backtest_report("macd-crossover", backtest_stats(example_trades()).data())
    assert text == EXAMPLE + "\n" + EXTRA
    assert not text.endswith("\n")


def test_backtest_report_note_column() -> None:
    trades = example_trades()
    sig = trade_signal("n1", 0, note="breakout | volume\nspike")
    trades.append(closed_result(sig, 0.5, 60_000, 101.0))
    text = backtest_report("s", backtest_stats(trades).data(), show_note=True)
    lines = text.split("\n")
    assert lines[2].startswith("| Signal ID | Symbol | Position | Note | Open Price |")
    assert lines[3] == "| " + " | ".join(["---"] * 13) + " |"
    assert lines[4].startswith("| n1 | BTCUSDT | LONG | breakout \\| volume spike | 100.00000000 USD |")
    assert lines[5].startswith("| c3f1 | BTCUSDT | SHORT | N/A | 98000.00000000 USD |")
    assert "Note" not in backtest_report("s", backtest_stats(trades).data())


def test_empty_reports() -> None:
    assert backtest_report("s", BacktestStats().data()) == "# Backtest Report: s\n\nNo signals closed yet."
    assert live_report("s", LiveStats().data()) == "# Live Trading Report: s\n\nNo events recorded yet."


def test_live_report_layout_and_na_cells() -> None:
    live = LiveStats()
    now = iso_ms("2025-12-02T06:00:00")
    trades = example_trades(backtest=False)
    for t in trades:
        live.add(opened_result(t.signal), 0)
        live.add(active_result(t.signal, t.current_price, -0.0, 12.345), t.close_timestamp - 1000)
        live.add(t, 0)
    live.add(idle_result(96500.0), now)
    text = live_report("macd-crossover", live.data())
    lines = text.split("\n")
    assert lines[0] == "# Live Trading Report: macd-crossover" and lines[1] == ""
    assert lines[2] == (
        "| Timestamp | Action | Symbol | Signal ID | Position | Current Price | Open Price | Take Profit"
        " | Stop Loss | % to TP | % to SL | PNL (net) | Close Reason | Duration (min) |"
    )
    assert lines[4] == (
        "| 2025-12-02T06:00:00.000Z | IDLE | BTCUSDT | N/A | N/A | 96500.00000000 USD | N/A | N/A | N/A"
        " | N/A | N/A | N/A | N/A | N/A |"
    )
    assert lines[5] == (
        "| 2025-12-02T05:00:00.000Z | CLOSED | BTCUSDT | c3f1 | SHORT | 95900.00000000 USD"
        " | 98000.00000000 USD | 95900.00000000 USD | 99500.00000000 USD | N/A | N/A | +1.75% | take_profit"
        " | 300 |"
    )
    assert lines[6] == (
        "| 2025-12-02T04:59:59.000Z | ACTIVE | BTCUSDT | c3f1 | SHORT | 95900.00000000 USD"
        " | 98000.00000000 USD | 95900.00000000 USD | 99500.00000000 USD | 0.00% | 12.35% | N/A | N/A | N/A |"
    )
    assert lines[7].startswith("| 2025-12-02T00:00:00.000Z | OPENED | BTCUSDT | c3f1 | SHORT |")
    assert len(lines) == 4 + 10 + 1 + 16  # title, blank, header, sep; 10 rows; blank; summary
    summary = "\n".join(lines[15:])
    expected_tail = EXAMPLE.split("**Closed signals:** 3\n", 1)[1]
    assert summary == "**Total events:** 10\n**Closed signals:** 3\n" + expected_tail + "\n" + EXTRA


def test_live_report_closed_count_covers_trades_beyond_the_deque() -> None:
    live = LiveStats(max_events=2)
    for i in range(5):
        live.add(closed_result(trade_signal(f"s{i}", i * 1000), 1.0, i * 1000 + 500, 101.0, backtest=False), 0)
    text = live_report("s", live.data())
    assert "**Total events:** 2\n**Closed signals:** 5\n" in text
    assert "**Win rate:** 100.00% (5W / 0L) (higher is better)" in text
    assert "**Profit Factor:** N/A\n" in text  # no losses: N/A with no suffix
    assert "**Sortino Ratio:** N/A\n" in text
    assert "**Certainty Ratio:** 0.000 (higher is better)" in text


def test_live_report_without_closed_trades_prints_na_figures() -> None:
    live = LiveStats()
    live.add(idle_result(1.0), 0)
    text = live_report("s", live.data())
    assert "**Closed signals:** 0\n**Win rate:** N/A\n**Average PNL:** N/A\n" in text
    assert text.endswith(
        "**Max Drawdown:** N/A\n**Sortino Ratio:** N/A\n**Profit Factor:** N/A\n"
        "**Expectancy:** N/A\n**Average Trade Duration:** N/A\n**Close Reasons:** N/A"
    )


def test_pipes_escaped_in_every_cell() -> None:
    sig = trade_signal("id|1", 0, symbol="A|B")
    r = ClosedResult(
        symbol="A|B",
        strategy_name="s",
        exchange_name="e",
        current_price=1.0,
        backtest=True,
        signal=sig,
        close_reason="stop_loss",
        close_timestamp=0,
        pnl=PnL(-0.0, 1.0, 1.0),
    )
    text = backtest_report("s", backtest_stats([r]).data(), show_note=True)
    row = text.split("\n")[4]
    assert row.startswith("| id\\|1 | A\\|B | LONG | N/A |")
    assert row.count(" | ") == 12  # 13 cells: no unescaped pipe added a column
    assert "| 0.00% |" in row  # −0.0 prints 0.00%


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (-0.0, "0.00%"),
        (0.0, "0.00%"),
        (-0.004, "0.00%"),
        (0.004, "+0.00%"),  # > 0 gets the '+' (reference rule)
        (1.1013, "+1.10%"),
        (-1.4287, "-1.43%"),
        (1597.76, "+1597.76%"),
        (None, "N/A"),
        (float("nan"), "N/A"),
        (float("inf"), "N/A"),
    ],
)
def test_signed_percent(value: float | None, text: str) -> None:
    assert format_signed_percent(value) == text


def test_other_formats() -> None:
    assert format_price(96400) == "96400.00000000 USD"
    assert format_price(-0.0) == "0.00000000 USD"
    assert format_price(None) == "N/A"
    assert format_percent(-0.0) == "0.00%"
    assert format_percent(1.37041, 3) == "1.370%"
    assert format_percent(None) == "N/A"
    assert format_timestamp(iso_ms("2025-12-01T10:00:00")) == "2025-12-01T10:00:00.000Z"
    assert format_timestamp(iso_ms("2025-12-01T10:00:00") + 7) == "2025-12-01T10:00:00.007Z"
    assert format_timestamp(0) == "1970-01-01T00:00:00.000Z"
    assert format_timestamp(-1) == "1969-12-31T23:59:59.999Z"
    assert format_timestamp(None) == "N/A"


def test_write_report_creates_dirs_and_overwrites(tmp_path: Path) -> None:
    target = tmp_path / "dump" / "backtest" / "macd.md"
    assert write_report(target, "first") == target
    assert write_report(target, "# second\n\ntext") == target
    assert target.read_text(encoding="utf-8") == "# second\n\ntext"
    assert os.listdir(target.parent) == ["macd.md"]  # no temp file left behind
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask

"""Terminal output of the CLI: the backtest progress bar, the live status line and the summaries.

Progress and status go to stderr (stdout carries the result, e.g. the `--json` document). `rich` (the
`cli` extra) draws the progress bar when stderr is a terminal; without rich, or when stderr is not a
terminal, a plain-text fallback is used: an updating line on a terminal, a line per 10 % in a log.
Every renderer throttles itself, so a listener called for each of 100 000 frames stays cheap.
"""

from __future__ import annotations

import importlib.util
import math
import shutil
import sys
import time
from collections.abc import Sequence
from typing import Any, Protocol, TextIO

from ..engine.models import ActiveResult, ProgressEvent, SignalRow, TickResult
from ..reports.report import format_timestamp
from ..reports.stats import Statistics

__all__ = [
    "LiveStatus",
    "NullProgress",
    "PlainProgress",
    "Progress",
    "RichProgress",
    "format_seconds",
    "format_span",
    "make_progress",
    "print_summary",
    "rich_available",
    "summary_rows",
]

_REFRESH_SECONDS = 0.1


def rich_available() -> bool:
    return importlib.util.find_spec("rich") is not None


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def format_seconds(seconds: float) -> str:
    if not math.isfinite(seconds) or seconds < 0:
        return "--:--"
    whole = round(seconds)
    h, rest = divmod(whole, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def format_span(ms: int) -> str:
    """A duration for people: `3.2 days`, `5 h 07 min`, `42 min`."""
    minutes = ms / 60_000
    if minutes >= 2 * 1440:
        return f"{minutes / 1440:.1f} days"
    if minutes >= 60:
        return f"{int(minutes // 60)} h {int(minutes % 60):02d} min"
    return f"{minutes:.0f} min"


# ---------------------------------------------------------------------------------------------------------
# Backtest progress
# ---------------------------------------------------------------------------------------------------------


class Progress(Protocol):
    def on_progress(self, event: ProgressEvent) -> None: ...
    def on_trade(self, trades: int, total_pnl: float) -> None: ...
    def close(self) -> None: ...


class NullProgress:
    def on_progress(self, event: ProgressEvent) -> None:
        pass

    def on_trade(self, trades: int, total_pnl: float) -> None:
        pass

    def close(self) -> None:
        pass


class PlainProgress:
    """`[#####.....]  45%  4536/10080 frames  12 trades  +1.20%  0:03 < 0:04` without rich.

    On a terminal the line is rewritten in place (at most 10 times a second); in a log file or pipe
    one line is written per 10 % step, plus the final one.
    """

    def __init__(self, label: str, stream: TextIO = sys.stderr, *, tty: bool | None = None) -> None:
        self.label = label
        self.stream = stream
        self.tty = _isatty(stream) if tty is None else tty
        self.started = time.monotonic()
        self.last_draw = 0.0
        self.last_decile = -1
        self.trades = 0
        self.pnl = 0.0
        self.done = False

    def on_trade(self, trades: int, total_pnl: float) -> None:
        self.trades, self.pnl = trades, total_pnl

    def line(self, processed: int, total: int) -> str:
        fraction = processed / total if total else 1.0
        width = 24
        filled = int(width * fraction)
        elapsed = time.monotonic() - self.started
        eta = elapsed / fraction * (1 - fraction) if fraction > 0 else math.inf
        return (f"{self.label} [{'#' * filled}{'.' * (width - filled)}] {fraction * 100:3.0f}%  "
                f"{processed}/{total} frames  {self.trades} trades  {self.pnl:+.2f}%  "
                f"{format_seconds(elapsed)} < {format_seconds(eta)}")

    def on_progress(self, event: ProgressEvent) -> None:
        if self.done:
            return
        final = event.processed_frames >= event.total_frames
        if self.tty:
            now = time.monotonic()
            if not final and now - self.last_draw < _REFRESH_SECONDS:
                return
            self.last_draw = now
            self.stream.write("\r" + self.line(event.processed_frames, event.total_frames) + "\x1b[K")
            if final:
                self.stream.write("\n")
                self.done = True
            self.stream.flush()
            return
        decile = int(event.progress * 10) if not final else 10
        if decile == self.last_decile:
            return
        self.last_decile = decile
        self.stream.write(self.line(event.processed_frames, event.total_frames) + "\n")
        self.stream.flush()
        self.done = final

    def close(self) -> None:
        if self.tty and not self.done and self.last_draw:
            self.stream.write("\n")
            self.stream.flush()
        self.done = True


class RichProgress:
    """A rich progress bar with percentage, frames, elapsed time and ETA, on stderr."""

    def __init__(self, label: str) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TaskProgressColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.progress: Any = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            MofNCompleteColumn(),
            TextColumn("frames  {task.fields[trades]} trades  {task.fields[pnl]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            refresh_per_second=10,
        )
        self.task: Any = self.progress.add_task(label, total=None, trades=0, pnl="+0.00%")
        self.progress.start()
        self.last = 0.0
        self.trades = 0
        self.pnl = 0.0

    def on_trade(self, trades: int, total_pnl: float) -> None:
        self.trades, self.pnl = trades, total_pnl

    def on_progress(self, event: ProgressEvent) -> None:
        now = time.monotonic()
        final = event.processed_frames >= event.total_frames
        if not final and now - self.last < _REFRESH_SECONDS / 2:
            return
        self.last = now
        self.progress.update(self.task, total=event.total_frames, completed=event.processed_frames,
                             trades=self.trades, pnl=f"{self.pnl:+.2f}%")

    def close(self) -> None:
        self.progress.stop()


def make_progress(label: str, *, enabled: bool, stream: TextIO = sys.stderr) -> Progress:
    """The best progress display available: rich on a terminal, else plain text; or none."""
    if not enabled:
        return NullProgress()
    if _isatty(stream) and rich_available() and stream is sys.stderr:
        try:
            return RichProgress(label)
        except Exception:  # a broken terminal or rich version: plain text still works
            pass
    return PlainProgress(label, stream)


# ---------------------------------------------------------------------------------------------------------
# Live status line
# ---------------------------------------------------------------------------------------------------------


def _iso_minute(ms: int) -> str:
    return format_timestamp(ms)[:16].replace("T", " ") + "Z"


class LiveStatus:
    """Counts live ticks and trades and shows them on one line.

    On a terminal the line is rewritten in place (10 times a second at most) and trade events are
    printed above it; otherwise only the trade events are written, one line each.
    """

    def __init__(self, label: str, stream: TextIO = sys.stderr, *, enabled: bool = True,
                 tty: bool | None = None, end_ms: int | None = None, start_ms: int | None = None) -> None:
        self.label = label
        self.stream = stream
        self.enabled = enabled
        self.tty = _isatty(stream) if tty is None else tty
        self.ticks = 0
        self.trades = 0
        self.wins = 0
        self.losses = 0
        self.pnl = 0.0
        self.now_ms = 0
        self.position: SignalRow | None = None
        self.waiting: SignalRow | None = None
        self.price = 0.0
        self.percent_tp = 0.0
        self.percent_sl = 0.0
        self.start_ms = start_ms
        self.end_ms = end_ms
        self.last_draw = 0.0
        self.drawn = False

    def on_tick(self, result: TickResult, now_ms: int) -> None:
        self.ticks += 1
        self.now_ms = now_ms
        self.price = result.current_price
        action = result.action
        if action == "idle":
            self.position = self.waiting = None
        elif isinstance(result, ActiveResult):
            if result.signal.is_scheduled:
                self.waiting, self.position = result.signal, None
            else:
                self.position, self.waiting = result.signal, None
                self.percent_tp, self.percent_sl = result.percent_tp, result.percent_sl
        elif action == "scheduled":
            self.waiting = result.signal
            self.event(f"SCHEDULED {self._describe(result.signal)}")
        elif action == "opened":
            self.position, self.waiting = result.signal, None
            self.percent_tp = self.percent_sl = 0.0
            self.event(f"OPENED {self._describe(result.signal)}")
        elif action == "closed":
            self.position = None
            pnl = result.pnl.pnl_percentage  # type: ignore[union-attr]
            self.trades += 1
            self.pnl += pnl
            if pnl > 0:
                self.wins += 1
            elif pnl < 0:
                self.losses += 1
            self.event(f"CLOSED {result.signal.position.upper()} {result.close_reason} "  # type: ignore[union-attr]
                       f"at {result.current_price:.2f}  {pnl:+.2f}%  (total {self.pnl:+.2f}%)")
        elif action == "cancelled":
            self.waiting = None
            self.event(f"CANCELLED {self._describe(result.signal)}")
        self.draw()

    @staticmethod
    def _describe(s: SignalRow | None) -> str:
        if s is None:
            return ""
        return (f"{s.position.upper()} entry {s.price_open:.2f} TP {s.price_take_profit:.2f} "
                f"SL {s.price_stop_loss:.2f}")

    def text(self) -> str:
        parts = [self.label]
        if self.now_ms:
            parts.append(_iso_minute(self.now_ms))
        if self.start_ms is not None and self.end_ms is not None and self.end_ms > self.start_ms and self.now_ms:
            share = min(max((self.now_ms - self.start_ms) / (self.end_ms - self.start_ms), 0.0), 1.0)
            parts.append(f"{share * 100:3.0f}%")
        parts.append(f"ticks {self.ticks}")
        if self.position is not None:
            p = self.position
            parts.append(f"{p.position.upper()} @ {p.price_open:.2f} now {self.price:.2f} "
                         f"(TP {self.percent_tp:.0f}% / SL {self.percent_sl:.0f}%)")
        elif self.waiting is not None:
            parts.append(f"waiting {self.waiting.position.upper()} @ {self.waiting.price_open:.2f}")
        else:
            parts.append(f"flat @ {self.price:.2f}")
        parts.append(f"trades {self.trades} ({self.wins}W/{self.losses}L)")
        parts.append(f"pnl {self.pnl:+.2f}%")
        return " | ".join(parts)

    def event(self, message: str) -> None:
        if not self.enabled:
            return
        when = _iso_minute(self.now_ms) if self.now_ms else ""
        prefix = "\r\x1b[K" if self.tty and self.drawn else ""
        self.stream.write(f"{prefix}{when} {message}\n")
        self.drawn = False
        self.stream.flush()

    def draw(self, force: bool = False) -> None:
        if not self.enabled or not self.tty:
            return
        now = time.monotonic()
        if not force and now - self.last_draw < _REFRESH_SECONDS:
            return
        self.last_draw = now
        width = shutil.get_terminal_size((120, 20)).columns
        self.stream.write("\r" + self.text()[: max(20, width - 1)] + "\x1b[K")
        self.stream.flush()
        self.drawn = True

    def close(self) -> None:
        if not self.enabled:
            return
        if self.tty:
            self.draw(force=True)
            self.stream.write("\n")
        else:
            self.stream.write(self.text() + "\n")
        self.stream.flush()


# ---------------------------------------------------------------------------------------------------------
# Summaries
# ---------------------------------------------------------------------------------------------------------


def _pct(x: float | None, signed: bool = True) -> str:
    if x is None:
        return "n/a"
    return f"{x:+.2f}%" if signed else f"{x:.2f}%"


def _num(x: float | None, decimals: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{decimals}f}"


def summary_rows(stats: Statistics) -> list[tuple[str, str]]:
    """Label / value pairs of the headline figures."""
    win = "n/a" if stats.win_rate is None else f"{stats.win_rate * 100:.2f}%"
    duration = stats.avg_trade_duration_minutes
    dd_ms = stats.max_drawdown_duration_ms
    reasons = ", ".join(f"{k} {v}" for k, v in stats.close_reasons.items()) or "n/a"
    return [
        ("Trades", f"{stats.total_trades} ({stats.winning_trades} won / {stats.losing_trades} lost)"),
        ("Win rate", win),
        ("Total PnL", _pct(stats.total_pnl)),
        ("Average PnL", _pct(stats.avg_pnl)),
        ("Std dev", _pct(stats.std_dev, signed=False)),
        ("Sharpe (annualized)", f"{_num(stats.sharpe_ratio)} ({_num(stats.annualized_sharpe_ratio)})"),
        ("Sortino", _num(stats.sortino_ratio)),
        ("Profit factor", _num(stats.profit_factor)),
        ("Expectancy", _pct(stats.expectancy)),
        ("Certainty ratio", _num(stats.certainty_ratio)),
        ("Expected yearly returns", _pct(stats.expected_yearly_returns)),
        ("Max drawdown", _pct(stats.max_drawdown, signed=False)
         + ("" if not dd_ms else f" (longest time below a peak: {format_span(dd_ms)})")),
        ("Avg trade duration", "n/a" if duration is None else f"{duration:.1f} min"),
        ("Close reasons", reasons),
        *_open_rows(stats),
    ]


def _open_rows(stats: Statistics) -> list[tuple[str, str]]:
    """The position the data ended with (the report's `**Open positions:**` line), when there is one."""
    if not stats.open_positions:
        return []
    return [("Open at the end", f"{stats.open_positions} (unrealized {_pct(stats.unrealized_pnl)} at the last price, "
                                "not counted as a trade)")]


def print_summary(title: str, rows: Sequence[tuple[str, str]], out: TextIO = sys.stdout) -> None:
    """A two-column table: rich on a terminal (when installed), aligned plain text otherwise."""
    if _isatty(out) and rich_available():
        try:
            from rich.console import Console
            from rich.table import Table
            from rich.text import Text

            table = Table(title=title, show_header=False, title_justify="left", box=None, padding=(0, 2))
            table.add_column(style="bold")
            table.add_column()
            for label, value in rows:
                style = ""
                if value.startswith("+"):
                    style = "green"
                elif value.startswith("-") and value != "-":
                    style = "red"
                table.add_row(Text(label), Text(value, style=style))
            Console(file=out).print(table)
            return
        except Exception:
            pass
    width = max((len(label) for label, _ in rows), default=0)
    out.write(title + "\n")
    for label, value in rows:
        out.write(f"  {label.ljust(width)}  {value}\n")
    out.flush()

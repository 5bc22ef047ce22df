"""Markdown reports of the run statistics
([events §4.0–4.2](../../docs/design/events-and-api.md#4-markdown-reports)) and the file helper behind
`dump`.

Pure text building: the facades fetch a `Statistics` snapshot, call `backtest_report` /
`live_report`, and `dump` hands the text to `write_report`. Formatting rules
([events §4.0](../../docs/design/events-and-api.md#40-common-rules)):

- a report is lines joined with "\\n", no trailing newline; line 1 is the title, line 2 empty;
- prices: 8 decimals + " USD"; signed percents: "+" only when the value is > 0, 2 decimals, "%",
  and never "-0.00" (a value that rounds to zero prints "0.00");
- timestamps: ISO 8601 UTC with milliseconds and "Z";
- positions and actions upper-cased; every missing value prints "N/A";
- every table cell has `|` escaped and line breaks flattened, so user text cannot break the table
  (PORT rule; the reference does not escape);
- the `Note` column exists only when `show_note` is true (config `CC_REPORT_SHOW_SIGNAL_NOTE`).
"""

from __future__ import annotations

import asyncio
import math
import os
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

from ..engine.naming import pair_file_stem
from ..engine.ports import ReportSink
from .stats import LiveEvent, Statistics, round_minutes

__all__ = [
    "backtest_report",
    "format_percent",
    "format_price",
    "format_signed_percent",
    "format_timestamp",
    "live_report",
    "write_atomic",
    "write_report",
]

NA: Final = "N/A"
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_KNOWN_REASONS: Final = ("take_profit", "stop_loss", "time_expired")


# ---------------------------------------------------------------------------------------------------------
# Cell formatting
# ---------------------------------------------------------------------------------------------------------


def _fixed(x: float, decimals: int) -> str:
    """`x` with `decimals` places; a value that rounds to zero never keeps a minus sign."""
    s = f"{x:.{decimals}f}"
    if s[0] == "-" and float(s) == 0:
        return s[1:]
    return s


def format_price(x: float | None) -> str:
    """`96400.00000000 USD`; `N/A` when missing or not finite."""
    if x is None or not math.isfinite(x):
        return NA
    return f"{_fixed(x, 8)} USD"


def format_signed_percent(x: float | None) -> str:
    """`+1.10%` / `-1.43%` / `0.00%`: '+' only when the value is > 0 (reference), never `-0.00%`."""
    if x is None or not math.isfinite(x):
        return NA
    s = _fixed(x, 2)
    return f"+{s}%" if x > 0 else f"{s}%"


def format_percent(x: float | None, decimals: int = 2) -> str:
    """Unsigned-prefix percent (`1.370%`, `% to TP` cells); `N/A` when missing."""
    if x is None or not math.isfinite(x):
        return NA
    return f"{_fixed(x, decimals)}%"


def _number(x: float | None, decimals: int = 3) -> str:
    if x is None or not math.isfinite(x):
        return NA
    return _fixed(x, decimals)


def format_timestamp(ms: int | None) -> str:
    """ISO 8601 UTC with milliseconds and `Z` (`2025-12-01T10:00:00.000Z`), like JS `toISOString`.

    Built from integer milliseconds (no float seconds), so the millisecond part is exact. A value
    outside datetime's range prints as the raw number rather than failing the whole report.
    """
    if ms is None:
        return NA
    ms = int(ms)
    try:
        dt = _EPOCH + timedelta(milliseconds=ms)
    except OverflowError:
        return str(ms)
    return (
        f"{dt.year:04d}-{dt.month:02d}-{dt.day:02d}T{dt.hour:02d}:{dt.minute:02d}:{dt.second:02d}"
        f".{ms % 1000:03d}Z"
    )


def _text(value: str | None) -> str:
    """Free text for a cell: `N/A` when empty; whitespace (line breaks included) collapsed to spaces.

    Notes are already stored as one-line plain text (markup stripped when the signal is built), so
    only the line-break flattening is repeated here, as a guard for rows built elsewhere.
    """
    if not value:
        return NA
    flat = " ".join(value.split())
    return flat or NA


def _upper(value: str | None) -> str:
    return value.upper() if value else NA


def _int(value: int | None) -> str:
    return NA if value is None else str(value)


def table_row(cells: Sequence[str]) -> str:
    """One table row; `|` is escaped and line breaks are flattened in every cell (PORT rule)."""
    out = []
    for c in cells:
        if "|" in c:
            c = c.replace("|", "\\|")
        if "\n" in c or "\r" in c:
            c = " ".join(c.split())
        out.append(c)
    return "| " + " | ".join(out) + " |"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Header, separator and rows, every cell escaped (shared by every report)."""
    lines = [table_row(header), table_row(["---"] * len(header))]
    lines.extend(table_row(r) for r in rows)
    return lines


# ---------------------------------------------------------------------------------------------------------
# Summary lines
# ---------------------------------------------------------------------------------------------------------


def _line(label: str, value: str | None, suffix: str = "") -> str:
    """`**Label:** value suffix`; a missing value prints `N/A` with no suffix
    ([events §4.1](../../docs/design/events-and-api.md#41-backtest-report))."""
    if value is None:
        return f"**{label}:** {NA}"
    return f"**{label}:** {value}{suffix}"


def _fmt(fn: Callable[[float], str], x: float | None) -> str | None:
    return None if x is None or not math.isfinite(x) else fn(x)


def _summary(stats: Statistics) -> list[str]:
    """The summary lines shared by both reports, after the two count lines.

    Reference lines first ([events §4.1](../../docs/design/events-and-api.md#41-backtest-report)), then
    the PORT max drawdown line, then the port's extra figures.
    """
    hib = " (higher is better)"
    lib = " (lower is better)"
    win_rate = _fmt(
        lambda w: f"{_fixed(w * 100, 2)}% ({stats.winning_trades}W / {stats.losing_trades}L)",
        stats.win_rate,
    )
    return [
        _line("Win rate", win_rate, hib),
        _line("Average PNL", _fmt(format_signed_percent, stats.avg_pnl), hib),
        _line("Total PNL", _fmt(format_signed_percent, stats.total_pnl), hib),
        _line("Standard Deviation", _fmt(lambda x: format_percent(x, 3), stats.std_dev), lib),
        _line("Sharpe Ratio", _fmt(_number, stats.sharpe_ratio), hib),
        _line("Annualized Sharpe Ratio", _fmt(_number, stats.annualized_sharpe_ratio), hib),
        _line("Certainty Ratio", _fmt(_number, stats.certainty_ratio), hib),
        _line("Expected Yearly Returns", _fmt(format_signed_percent, stats.expected_yearly_returns), hib),
        _line("Max Drawdown", _fmt(format_percent, stats.max_drawdown), lib),
        _line("Sortino Ratio", _fmt(_number, stats.sortino_ratio), hib),
        _line("Profit Factor", _fmt(_number, stats.profit_factor), hib),
        _line("Expectancy", _fmt(format_signed_percent, stats.expectancy), hib),
        _line(
            "Average Trade Duration",
            _fmt(lambda m: _fixed(m, 2), stats.avg_trade_duration_minutes),
            " min",
        ),
        _line("Close Reasons", _close_reasons(stats.close_reasons)),
        *_fill_lines(stats),
    ]


def _fill_lines(stats: Statistics) -> list[str]:
    """The realised figures of an executor's fills, after the model's; nothing without fills."""
    if not stats.filled_trades:
        return []
    return [
        _line("Realized PNL (fills)", _fmt(format_signed_percent, stats.realized_pnl),
              f" over {stats.filled_trades} filled trades"),
        _line("Fill slippage vs model", _fmt(format_signed_percent, stats.fill_slippage),
              " (realized − model PNL; higher is better)"),
    ]


def _fill_cells(stats: Statistics, signal_id: str | None) -> list[str]:
    """The Fill PNL and Slippage cells of a row (N/A for a row without a filled trade)."""
    fill = stats.fills.get(signal_id or "")
    if fill is None:
        return [NA, NA]
    return [format_signed_percent(fill.realized_pnl), format_signed_percent(fill.slippage)]


def open_position_line(stats: Statistics) -> str | None:
    """`**Open positions:** 1 (unrealized PNL at the last price: -0.42%)`, or None when flat.

    The same line in the backtest and the live report, so a position the data ended with is never
    silently missing from either (it is not a trade: no summary figure counts it).
    """
    if not stats.open_positions:
        return None
    return (f"**Open positions:** {stats.open_positions} "
            f"(unrealized PNL at the last price: {format_signed_percent(stats.unrealized_pnl)})")


def _with_open(lines: list[str], stats: Statistics) -> list[str]:
    extra = open_position_line(stats)
    return lines if extra is None else [*lines, extra]


def _close_reasons(counts: dict[str, int]) -> str | None:
    """`take_profit: 2, stop_loss: 1` in a fixed order (known reasons first), so reports diff well."""
    if not counts:
        return None
    keys: list[str] = [r for r in _KNOWN_REASONS if r in counts]
    keys += sorted(k for k in counts if k not in _KNOWN_REASONS)
    return ", ".join(f"{k}: {counts[k]}" for k in keys)


# ---------------------------------------------------------------------------------------------------------
# Reports
# ---------------------------------------------------------------------------------------------------------


def _columns(lead: list[str], quantity: str | None, note: str | None, rest: list[str]) -> list[str]:
    """A header or row of a report table: `lead`, the Quantity column when `quantity` is not None
    (a run with sized trades), the Note column when `note` is not None (`show_note`), then `rest`."""
    if quantity is not None:
        lead.append(quantity)
    if note is not None:
        lead.append(note)
    lead += rest
    return lead


def backtest_report(
    strategy_name: str, stats: Statistics, *, show_note: bool = False, quantities: Mapping[str, str] | None = None
) -> str:
    """Backtest report ([events §4.1](../../docs/design/events-and-api.md#41-backtest-report)): one row
    per closed trade, newest first, then the summary.

    `quantities` (signal id -> text formatted by the exchange's `format_quantity`) adds a Quantity
    column after Position when any trade was sized (`add_sizing(get_quantity=...)`).
    """
    title = f"# Backtest Report: {strategy_name}"
    if stats.total_trades == 0:
        return "\n".join(_with_open([title, "", "No signals closed yet."], stats))
    header = _columns(
        ["Signal ID", "Symbol", "Position"],
        "Quantity" if quantities else None,
        "Note" if show_note else None,
        [
            "Open Price",
            "Close Price",
            "Take Profit",
            "Stop Loss",
            "PNL (net)",
            *(["Fill PNL", "Slippage"] if stats.fills else []),
            "Close Reason",
            "Duration (min)",
            "Open Time",
            "Close Time",
        ],
    )
    rows: list[list[str]] = []
    for r in stats.signals:
        s = r.signal
        cells = _columns(
            [s.id, r.symbol, s.position.upper()],
            quantities.get(s.id, NA) if quantities else None,
            _text(s.note) if show_note else None,
            [
                format_price(s.price_open),
                format_price(r.current_price),
                format_price(s.price_take_profit),
                format_price(s.price_stop_loss),
                format_signed_percent(r.pnl.pnl_percentage),
                *(_fill_cells(stats, s.id) if stats.fills else []),
                r.close_reason,
                str(round_minutes(r.close_timestamp - s.pending_at)),
                format_timestamp(s.pending_at),
                format_timestamp(r.close_timestamp),
            ],
        )
        rows.append(cells)
    lines = [title, "", *markdown_table(header, rows), ""]
    lines.append(f"**Total signals:** {stats.total_trades}")
    lines.append(f"**Closed signals:** {stats.total_trades}")
    lines += _summary(stats)
    return "\n".join(_with_open(lines, stats))


def _live_cells(
    e: LiveEvent, show_note: bool, quantities: Mapping[str, str] | None = None, stats: Statistics | None = None
) -> list[str]:
    fills = _fill_cells(stats, e.signal_id if e.action == "closed" else None) if stats and stats.fills else []
    return _columns(
        [
            format_timestamp(e.timestamp),
            _upper(e.action),
            _text(e.symbol),
            _text(e.signal_id),
            _upper(e.position),
        ],
        quantities.get(e.signal_id or "", NA) if quantities else None,
        _text(e.note) if show_note else None,
        [
            format_price(e.current_price),
            format_price(e.open_price),
            format_price(e.take_profit),
            format_price(e.stop_loss),
            format_percent(e.percent_tp),
            format_percent(e.percent_sl),
            format_signed_percent(e.pnl),
            *fills,
            _text(e.close_reason),
            _int(e.duration),
        ],
    )


def live_report(
    strategy_name: str, stats: Statistics, *, show_note: bool = False, quantities: Mapping[str, str] | None = None
) -> str:
    """Live report ([events §4.2](../../docs/design/events-and-api.md#42-live-report)): the recent
    events newest first, then the summary over every closed trade.

    `**Closed signals:**` counts every closed trade of the run (the statistics are running aggregates,
    [decision 12](../../docs/design/decisions.md#decision-12-bounded-live-table-exact-statistics)),
    which can exceed the number of CLOSED rows left in the bounded table.
    """
    title = f"# Live Trading Report: {strategy_name}"
    if not stats.events and stats.total_trades == 0:
        return f"{title}\n\nNo events recorded yet."
    header = _columns(
        ["Timestamp", "Action", "Symbol", "Signal ID", "Position"],
        "Quantity" if quantities else None,
        "Note" if show_note else None,
        [
            "Current Price",
            "Open Price",
            "Take Profit",
            "Stop Loss",
            "% to TP",
            "% to SL",
            "PNL (net)",
            *(["Fill PNL", "Slippage"] if stats.fills else []),
            "Close Reason",
            "Duration (min)",
        ],
    )
    rows = [_live_cells(e, show_note, quantities, stats) for e in stats.events]
    lines = [title, "", *markdown_table(header, rows), ""]
    lines.append(f"**Total events:** {len(stats.events)}")
    lines.append(f"**Closed signals:** {stats.total_trades}")
    lines += _summary(stats)
    return "\n".join(_with_open(lines, stats))


def write_report(path: Path, text: str) -> Path:
    """Write `text` to `path` (overwriting), creating parent directories; returns `path`.

    Written to a temp file in the same directory and renamed over the target, so a reader (or a
    crash) never sees a half-written report. The temp file is created with `open(..., "x")`, so the
    report gets the default permissions (umask), not mkstemp's 0600. Errors propagate: `dump`
    decides to log and swallow them.
    """
    return write_atomic(Path(path), text)


def write_atomic(path: Path, data: str | bytes) -> Path:
    """Write `data` (a str as UTF-8, newlines untranslated) to `path` atomically; returns `path`.

    Parent directories are created; a temp file next to the target, created with `open(..., "x")`
    (default permissions), is renamed over it and removed when anything fails. Serves
    `write_report` and the equity chart (`plots.write_equity_png`).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "xb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


async def save_report(target: Path, text: str, logger: Any, kind: str) -> Path | None:
    """Write a report off the event loop; a failure is logged and gives None (`dump` never raises)."""
    try:
        written = await asyncio.to_thread(write_report, target, text)
    except OSError as exc:
        logger.warn(f"{kind} report could not be written to {target}", repr(exc))
        return None
    logger.info(f"{kind} report saved: {written}")
    return written


async def save_pair_report(
    engine: ReportSink, kind: str, symbol: str, strategy_name: str, path: str | Path | None, text: str
) -> Path | None:
    """A per-pair report at `<path or dump_dir/kind>/<symbol>_<strategy>.md` (names sanitized)."""
    base = Path(path) if path is not None else Path(engine.dump_dir) / kind
    target = base / f"{pair_file_stem(symbol, strategy_name)}.md"
    return await save_report(target, text, engine.logger, kind)

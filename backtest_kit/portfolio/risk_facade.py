"""`bk.Risk`: the rejection statistics of a (symbol, strategy), their markdown report and profile
introspection
([risk-sizing §1.7](../../docs/design/risk-sizing-portfolio.md#17-risk-events-listeners-and-the-rejection-report)).

The profiles, the gate and the rejection store it reads are in `risk.py`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from msgspec import Struct

from ..engine.models import RiskEvent
from ..reports.report import format_price, format_timestamp, markdown_table, save_pair_report
from .risk import NA, ActivePosition, RiskService

__all__ = ["RiskFacade", "RiskStatistics", "risk_report"]


class RiskStatistics(Struct, frozen=True, kw_only=True):
    """`Risk.get_data`
    ([risk-sizing §1.7](../../docs/design/risk-sizing-portfolio.md#17-risk-events-listeners-and-the-rejection-report)):
    rejections of one (symbol, strategy), newest first."""

    event_list: list[RiskEvent]
    total_rejections: int
    by_symbol: dict[str, int]
    by_strategy: dict[str, int]


class RiskFacade:
    """`bk.Risk`: rejection statistics and reports per (symbol, strategy), and profile introspection."""

    def __init__(self, service: RiskService) -> None:
        self._service = service

    def _validate(self, strategy_name: str, source: str) -> None:
        self._service.engine.check_strategy(strategy_name, source)

    async def get_data(self, symbol: str, strategy_name: str) -> RiskStatistics:
        """Rejections of the pair, newest first (at most 250), with counts by symbol and strategy."""
        self._validate(strategy_name, "Risk.get_data")
        events = self._service.events(symbol, strategy_name)
        by_symbol: dict[str, int] = {}
        by_strategy: dict[str, int] = {}
        for e in events:
            by_symbol[e.symbol] = by_symbol.get(e.symbol, 0) + 1
            by_strategy[e.strategy_name] = by_strategy.get(e.strategy_name, 0) + 1
        return RiskStatistics(event_list=events, total_rejections=len(events), by_symbol=by_symbol,
                              by_strategy=by_strategy)

    async def get_report(self, symbol: str, strategy_name: str) -> str:
        data = await self.get_data(symbol, strategy_name)
        show_note = self._service.engine.config.CC_REPORT_SHOW_SIGNAL_NOTE
        return risk_report(symbol, strategy_name, data, show_note=show_note)

    async def dump(self, symbol: str, strategy_name: str, path: str | Path | None = None) -> Path | None:
        """Write the report to `<path or dump_dir/risk>/<symbol>_<strategy>.md`; None if it failed."""
        text = await self.get_report(symbol, strategy_name)
        return await save_pair_report(self._service.engine, "risk", symbol, strategy_name, path, text)

    def clear(self, symbol: str | None = None, strategy_name: str | None = None) -> None:
        """Forget recorded rejections (all, or of one symbol and/or strategy); positions are untouched."""
        self._service.clear_events(symbol, strategy_name)

    async def get_positions(self, risk_name: str, *, backtest: bool = False) -> list[ActivePosition]:
        """The open positions of a profile in one mode, in open order (loads the live state if needed)."""
        state = self._service.state(risk_name, backtest=backtest, source="Risk.get_positions")
        async with state.lock:
            await state.ensure_loaded()
            if backtest:
                state.purge_finished_backtests()
            return list(state.positions.values())


# ---------------------------------------------------------------------------------------------------------
# Report ([events §4.7](../../docs/design/events-and-api.md#47-risk-rejection-report))
# ---------------------------------------------------------------------------------------------------------



def _flat(value: str | None) -> str:
    if not value:
        return NA
    return " ".join(value.split()) or NA


def _signal_field(signal: Any, name: str) -> Any:
    if signal is None:
        return None
    if isinstance(signal, dict):
        return signal.get(name)
    return getattr(signal, name, None)


def risk_report(symbol: str, strategy_name: str, data: RiskStatistics, *, show_note: bool = False) -> str:
    """`# Risk Rejection Report: <symbol>:<strategy>` with the rejections table and the two tallies."""
    title = f"# Risk Rejection Report: {symbol}:{strategy_name}"
    if not data.event_list:
        return f"{title}\n\nNo risk rejections recorded yet."
    header = ["Symbol", "Strategy", "Signal ID", "Position"]
    if show_note:
        header.append("Note")
    header += ["Exchange", "Open Price", "Take Profit", "Stop Loss", "Current Price", "Active Positions",
               "Reason", "Timestamp"]
    rows: list[list[str]] = []
    for e in data.event_list:
        s = e.pending_signal
        position = _signal_field(s, "position")
        cells = [e.symbol, e.strategy_name, _flat(_signal_field(s, "id")),
                 str(position).upper() if position else NA]
        if show_note:
            cells.append(_flat(_signal_field(s, "note")))
        cells += [
            e.exchange_name,
            format_price(_signal_field(s, "price_open")),
            format_price(_signal_field(s, "price_take_profit")),
            format_price(_signal_field(s, "price_stop_loss")),
            format_price(e.current_price),
            str(e.active_position_count),
            _flat(e.comment),
            format_timestamp(e.timestamp),
        ]
        rows.append(cells)
    lines = [title, "", *markdown_table(header, rows), "", f"**Total rejections:** {data.total_rejections}", "",
             "## Rejections by Symbol"]
    lines += [f"- {k}: {v}" for k, v in data.by_symbol.items()]
    lines += ["", "## Rejections by Strategy"]
    lines += [f"- {k}: {v}" for k, v in data.by_strategy.items()]
    return "\n".join(lines)

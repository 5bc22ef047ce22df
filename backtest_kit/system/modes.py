"""`bk.Backtest` and `bk.Live`: the run loops of `engine/` joined with the statistics of `reports/`.

The engine's runners (`engine/backtest.py`, `engine/live.py`) drive the state machine and feed the
stores they are given (the `RunStores` protocol); this module owns those stores (per-pair
`BacktestStats` / `LiveStats` from `reports/mode_stats.py`, and the schedule statistics both modes
share) and adds the read side: `get_data`, `get_report` and `dump`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..engine.backtest import BacktestRunner
from ..engine.live import LiveRunner
from ..engine.models import ClosedResult
from ..engine.naming import pair_file_stem
from ..engine.ports import Services
from ..engine.runner import RunHooks
from ..portfolio.sizing import format_quantities
from ..reports.mode_stats import BacktestStats, LiveStats, with_open_position
from ..reports.plots import attach_equity_plot
from ..reports.report import backtest_report, live_report, save_report
from ..reports.schedule_stats import ScheduleFacade, ScheduleStats
from ..reports.stats import Statistics

__all__ = ["BacktestFacade", "BacktestStores", "LiveFacade", "LiveStores"]


ClosedSink = Callable[[ClosedResult], None]


class BacktestStores:
    """Per-pair `BacktestStats` (replaced when a run of the pair starts) and the schedule statistics.

    `on_closed` (the heatmap's store) gets every closed trade as the statistics record it.
    """

    def __init__(self, schedule: ScheduleFacade, on_closed: ClosedSink | None = None) -> None:
        self._schedule = schedule
        self._on_closed = on_closed
        self._stats: dict[tuple[str, str], BacktestStats] = {}

    def reset(self, symbol: str, strategy_name: str) -> None:
        self._stats[(symbol, strategy_name)] = BacktestStats(on_closed=self._on_closed)
        self._schedule.reset(symbol, strategy_name)

    def stats(self, symbol: str, strategy_name: str) -> BacktestStats:
        key = (symbol, strategy_name)
        stats = self._stats.get(key)
        if stats is None:
            stats = self._stats[key] = BacktestStats(on_closed=self._on_closed)
        return stats

    def schedule(self, symbol: str, strategy_name: str) -> ScheduleStats:
        return self._schedule.store(symbol, strategy_name)


class LiveStores:
    """Per-pair `LiveStats` (bounded by the `MAX_EVENTS` setting when created) and the schedule statistics.

    `on_closed` (the heatmap's store) gets every closed trade as the statistics record it.
    """

    def __init__(self, engine: Services, schedule: ScheduleFacade, on_closed: ClosedSink | None = None) -> None:
        self._engine = engine
        self._schedule = schedule
        self._on_closed = on_closed
        self._stats: dict[tuple[str, str], LiveStats] = {}

    def reset(self, symbol: str, strategy_name: str) -> None:
        self._stats[(symbol, strategy_name)] = LiveStats(self._engine.config.MAX_EVENTS, self._on_closed)
        self._schedule.reset(symbol, strategy_name)

    def stats(self, symbol: str, strategy_name: str) -> LiveStats:
        key = (symbol, strategy_name)
        stats = self._stats.get(key)
        if stats is None:
            stats = self._stats[key] = LiveStats(self._engine.config.MAX_EVENTS, self._on_closed)
        return stats

    def schedule(self, symbol: str, strategy_name: str) -> ScheduleStats:
        return self._schedule.store(symbol, strategy_name)


def _dump_path(engine: Services, mode: str, symbol: str, strategy_name: str, path: str | Path | None) -> Path:
    """`<path or dump_dir/mode>/<symbol>_<strategy>.md`, like every other per-pair report.

    The symbol is part of the name so that two symbols of one strategy never overwrite each
    other's report (names sanitized, so no symbol can leave the directory).
    """
    base = Path(path) if path is not None else Path(engine.dump_dir) / mode
    return base / f"{pair_file_stem(symbol, strategy_name)}.md"


def _with_open(engine: Services, store: BacktestStats | LiveStats) -> Statistics:
    config = engine.config
    return with_open_position(store.data(), store.open_signal, store.open_price,
                              slippage_percent=config.CC_PERCENT_SLIPPAGE, fee_percent=config.CC_PERCENT_FEE)


async def _dump(
    facade: BacktestFacade | LiveFacade, symbol: str, strategy_name: str, path: str | Path | None, plot: bool,
    *, title: str, live: bool,
) -> Path | None:
    """`dump` of both modes: the report, with the equity chart when `plot` (titled `title strategy · symbol`)."""
    engine = facade.engine
    text = await facade.get_report(symbol, strategy_name)
    target = _dump_path(engine, facade.mode, symbol, strategy_name, path)
    if plot:
        text = await attach_equity_plot(text, await facade.get_data(symbol, strategy_name), target,
                                        title=f"{title} {strategy_name} · {symbol}", logger=engine.logger, live=live)
    return await save_report(target, text, engine.logger, facade.mode)


class BacktestFacade(BacktestRunner):
    """`bk.Backtest`: run / background / stop / get_data / get_report / dump / list."""

    def __init__(
        self, engine: Services, hooks: RunHooks, schedule: ScheduleFacade, on_closed: ClosedSink | None = None
    ) -> None:
        self.pair_stats = BacktestStores(schedule, on_closed)
        super().__init__(engine, hooks, self.pair_stats)

    async def get_data(self, symbol: str, strategy_name: str) -> Statistics:
        """Statistics over every closed trade of the pair's latest backtest, and the position open at its end."""
        self.engine.registry.strategies.get(strategy_name, "Backtest.get_data")
        return _with_open(self.engine, self.pair_stats.stats(symbol, strategy_name))

    async def get_report(self, symbol: str, strategy_name: str) -> str:
        stats = await self.get_data(symbol, strategy_name)
        quantities = await format_quantities(
            self.engine, ((r.exchange_name, r.symbol, r.signal.id, r.signal.quantity) for r in stats.signals))
        return backtest_report(strategy_name, stats, show_note=self.engine.config.CC_REPORT_SHOW_SIGNAL_NOTE,
                               quantities=quantities)

    async def dump(
        self, symbol: str, strategy_name: str, path: str | Path | None = None, *, plot: bool = True
    ) -> Path | None:
        """Write the report to `<path or dump_dir/backtest>/<symbol>_<strategy>.md`; returns the path.

        With `plot` and matplotlib importable (the `plot` extra), the equity/drawdown chart is
        written next to it as `<symbol>_<strategy>-equity.png` and linked below the title.
        """
        return await _dump(self, symbol, strategy_name, path, plot, title="Backtest", live=False)


class LiveFacade(LiveRunner):
    """`bk.Live`: run / background / stop / get_data / get_report / dump / list."""

    def __init__(
        self, engine: Services, hooks: RunHooks, schedule: ScheduleFacade, on_closed: ClosedSink | None = None
    ) -> None:
        self.pair_stats = LiveStores(engine, schedule, on_closed)
        super().__init__(engine, hooks, self.pair_stats)

    async def get_data(self, symbol: str, strategy_name: str) -> Statistics:
        """Exact statistics over every closed trade plus the last MAX_EVENTS events and the open position."""
        self.engine.registry.strategies.get(strategy_name, "Live.get_data")
        return _with_open(self.engine, self.pair_stats.stats(symbol, strategy_name))

    async def get_report(self, symbol: str, strategy_name: str) -> str:
        stats = await self.get_data(symbol, strategy_name)
        exchange_name = self.exchange_name_of(symbol, strategy_name)
        quantities = await format_quantities(
            self.engine, ((exchange_name, e.symbol, e.signal_id, e.quantity) for e in stats.events))
        return live_report(strategy_name, stats, show_note=self.engine.config.CC_REPORT_SHOW_SIGNAL_NOTE,
                           quantities=quantities)

    async def dump(
        self, symbol: str, strategy_name: str, path: str | Path | None = None, *, plot: bool = True
    ) -> Path | None:
        """Write the report to `<path or dump_dir/live>/<symbol>_<strategy>.md`; returns the path.

        With `plot` and matplotlib importable, the equity/drawdown chart of the recent closed trades
        is written next to it as `<symbol>_<strategy>-equity.png` and linked below the title.
        """
        return await _dump(self, symbol, strategy_name, path, plot, title="Live", live=True)

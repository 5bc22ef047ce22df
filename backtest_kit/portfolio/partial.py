"""Partial profit / loss milestones
([risk-sizing §3](../../docs/design/risk-sizing-portfolio.md#3-partial-profit-and-loss-levels)): levels
10 … 100 % of the way to TP / SL.

The state machine reports the progress of an open position on every evaluation (live ticks, and each
candle of a backtest fast-forward). `LevelTracker.progress` emits, per signal id and side, each level
L (ascending) with `percent >= L` that was not emitted before, as a `PartialEvent` on the
`partial_profit` / `partial_loss` channel. A jump from 0 to 35 % emits 10, 20 and 30 in that order,
with the same price and timestamp; a level is never emitted twice for a signal, even if the price
falls back and crosses it again. Profit and loss are independent.

Because levels are emitted in ascending order, the emitted set of a side is always {10, …, top}; the
tracker keeps only `top` per side, so an evaluation that reaches no new level costs one dict lookup
and two comparisons.

Persistence
([risk-sizing §3.4](../../docs/design/risk-sizing-portfolio.md#34-state-lifetime-and-persistence)): live
mode only, one document per pair (entity `partial`, key `<symbol>-<strategy>` escaped as in
`naming.pair_key`, `{signal_id: {"profit_levels": [...], "loss_levels": [...]}}`), read once when the
tracker is first used, written after every evaluation that reached a new level (before the events are
published, so a crash can lose a notification but never repeat one), and updated when the signal closes.
A restarted live process therefore does not re-emit levels it emitted before. Backtests never read or
write it.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import deque
from collections.abc import Sequence
from itertools import accumulate, repeat
from operator import add, attrgetter, mul, neg, sub, truediv
from pathlib import Path
from typing import TYPE_CHECKING, Final, Literal

import msgspec
from msgspec import Struct

from ..engine.channels import PARTIAL_LOSS, PARTIAL_PROFIT
from ..engine.intervals import MINUTE_MS
from ..engine.lifecycle import window_vwap
from ..engine.models import Candle, PartialEvent, SignalRow
from ..engine.naming import pair_key
from ..engine.persist import ENTITY_PARTIAL, read_snapshot
from ..reports.report import markdown_table, save_pair_report
from .pair_events import add_pair_event, clear_pair_events

if TYPE_CHECKING:
    from ..engine.ports import Services

__all__ = [
    "LEVELS",
    "LevelTracker",
    "PartialEntry",
    "PartialFacade",
    "PartialService",
    "PartialStatistics",
    "partial_report",
]

LEVELS: Final = (10, 20, 30, 40, 50, 60, 70, 80, 90, 100)
MAX_REPORT_EVENTS: Final = 250


class _Levels(Struct, kw_only=True):
    profit_levels: list[int] = msgspec.field(default_factory=list)
    loss_levels: list[int] = msgspec.field(default_factory=list)


_Document = dict[str, _Levels]


def _top(percent: float) -> int:
    """The highest level reached by `percent` (0 when below 10)."""
    if percent >= 100:
        return 100
    return int(percent // 10) * 10


class LevelTracker:
    """The `PartialTracker` of one (mode, symbol, strategy) instance."""

    __slots__ = ("_backtest", "_emit", "_engine", "_key", "_loaded", "_state", "_strategy_name", "_symbol")

    def __init__(self, engine: Services, symbol: str, strategy_name: str, backtest: bool) -> None:
        self._engine = engine
        self._symbol = symbol
        self._strategy_name = strategy_name
        self._backtest = backtest
        self._key = pair_key(symbol, strategy_name)  # injective: see naming.py
        self._state: dict[str, list[int]] = {}  # signal id -> [top profit level, top loss level]
        self._loaded = backtest
        self._emit = engine.bus.emit

    async def progress(
        self, row: SignalRow, price: float, percent_tp: float, percent_sl: float, timestamp: int
    ) -> None:
        if percent_tp > 0:
            side = 0
            top = _top(percent_tp)
        elif percent_sl > 0:
            side = 1
            top = _top(percent_sl)
        else:
            return
        if top < 10:
            return
        if not self._loaded:
            await self._load()
        levels = self._state.get(row.id)
        if levels is None:
            levels = self._state[row.id] = [0, 0]
        done = levels[side]
        if top <= done:
            return
        levels[side] = top
        if not self._backtest:
            await self._save()
        channel = PARTIAL_PROFIT if side == 0 else PARTIAL_LOSS
        for level in range(done + 10, top + 10, 10):
            await self._emit(channel, PartialEvent(
                symbol=row.symbol, strategy_name=row.strategy_name, exchange_name=row.exchange_name,
                signal=row, current_price=price, level=level, backtest=self._backtest, timestamp=timestamp,
            ))

    async def replay(
        self, row: SignalRow, candles: Sequence[Candle], start: int, end_ts: int, count: int
    ) -> None:
        """The backtest fast-forward's evaluations in one pass: the same levels, prices and timestamps
        as calling `progress` for every candle in `candles[start:]` opening before `end_ts` (0: all),
        with the price = VWAP of that candle and the `count - 1` before it, at the candle's close time.

        Levels only depend on the running extreme of the price, so the window VWAPs are computed with
        C-level `map` folds (in the same summation order as `lifecycle.window_vwap`, so the floats are
        identical) and each level's first candle is found by bisection over the running maximum.
        """
        stop = bisect_left(candles, end_ts, lo=start, key=_ts) if end_ts else len(candles)
        if stop <= start:
            return
        levels = self._state.get(row.id)
        done_p, done_l = (levels[0], levels[1]) if levels is not None else (0, 0)
        if done_p >= 100 and done_l >= 100:
            return
        prices = _window_vwaps(candles, start, stop, count)
        o = row.price_open
        long = row.position == "long"
        d = list(map(sub, prices, repeat(o)) if long else map(sub, repeat(o), prices))
        found: list[tuple[int, int, int]] = []  # (candle offset, side, level)
        span_tp = abs(row.price_take_profit - o)
        span_sl = abs(o - row.price_stop_loss)
        if done_p < 100 and span_tp:
            _first_reach(list(accumulate(d, max)), span_tp, done_p, 0, found)
        if done_l < 100 and span_sl:
            _first_reach(list(accumulate(map(neg, d), max)), span_sl, done_l, 1, found)
        if not found:
            return
        found.sort(key=_offset)  # the two sides never share a candle; levels stay ascending
        if levels is None:
            levels = self._state[row.id] = [0, 0]
        for offset, side, level in found:
            levels[side] = max(levels[side], level)
            await self._emit(PARTIAL_PROFIT if side == 0 else PARTIAL_LOSS, PartialEvent(
                symbol=row.symbol, strategy_name=row.strategy_name, exchange_name=row.exchange_name,
                signal=row, current_price=prices[offset], level=level, backtest=self._backtest,
                timestamp=candles[start + offset].timestamp + MINUTE_MS,
            ))
        if not self._backtest:
            await self._save()

    async def clear(self, row: SignalRow) -> None:
        if not self._loaded:
            await self._load()
        if self._state.pop(row.id, None) is not None and not self._backtest:
            await self._save()

    def levels(self, signal_id: str) -> tuple[list[int], list[int]]:
        """(profit levels, loss levels) emitted so far for a signal."""
        top = self._state.get(signal_id, [0, 0])
        return list(range(10, top[0] + 10, 10)), list(range(10, top[1] + 10, 10))

    # ------------------------------------------------------------------ persistence (live only)
    async def _load(self) -> None:
        self._loaded = True
        engine = self._engine

        def parse(data: bytes) -> dict[str, list[int]]:
            doc = msgspec.json.decode(data, type=_Document)
            return {sid: [_prefix_top(lv.profit_levels), _prefix_top(lv.loss_levels)] for sid, lv in doc.items()}

        state = await read_snapshot(engine.persist_for(ENTITY_PARTIAL), ENTITY_PARTIAL, self._key, parse,
                                    f"partial levels {self._key}", engine.report_error)
        if state:
            self._state.update(state)

    async def _save(self) -> None:
        backend = self._engine.persist_for(ENTITY_PARTIAL)
        try:
            if self._state:
                doc = {
                    sid: _Levels(profit_levels=list(range(10, t[0] + 10, 10)),
                                 loss_levels=list(range(10, t[1] + 10, 10)))
                    for sid, t in self._state.items()
                }
                await backend.write(ENTITY_PARTIAL, self._key, msgspec.json.encode(doc))
            else:
                await backend.delete(ENTITY_PARTIAL, self._key)
        except Exception as exc:
            await self._engine.report_error(exc)


def _ts(candle: Candle) -> int:
    return candle.timestamp


def _offset(item: tuple[int, int, int]) -> int:
    return item[0]


def _first_reach(extreme: list[float], span: float, done: int, side: int, out: list[tuple[int, int, int]]) -> None:
    """Append (offset, side, level) for each level above `done` reached by the running extreme of the
    price distance; the percent is computed as `lifecycle.progress_of` does."""
    for level in LEVELS:
        if level <= done:
            continue
        threshold = float(level)
        i = bisect_left(extreme, True, key=lambda x: x > 0 and min(100.0, x / span * 100) >= threshold)
        if i == len(extreme):
            return
        out.append((i, side, level))


def _fold(values: list[float], width: int, n: int) -> list[float]:
    """`n` sliding sums of `width` consecutive values, each added left to right from the first."""
    acc = values[:n]
    for j in range(1, width):
        acc = list(map(add, acc, values[j:j + n]))
    return acc


def _window_vwaps(candles: Sequence[Candle], start: int, stop: int, count: int) -> list[float]:
    """`lifecycle.window_vwap(candles, i + 1, count)` for every i in [start, stop), bit for bit."""
    head_end = min(stop, max(start, count - 1))
    out = [window_vwap(candles, i + 1, count) for i in range(start, head_end)]
    if head_end >= stop:
        return out
    lo = head_end + 1 - count
    seg = candles[lo:stop]
    n = stop - head_end
    highs = map(attrgetter("high"), seg)
    lows = map(attrgetter("low"), seg)
    closes = map(attrgetter("close"), seg)
    volumes = list(map(attrgetter("volume"), seg))
    typical = list(map(truediv, map(add, map(add, highs, lows), closes), repeat(3)))
    weighted = _fold(list(map(mul, typical, volumes)), count, n)
    volume = _fold(volumes, count, n)
    if min(volume) > 0:
        out.extend(map(truediv, weighted, volume))
        return out
    typical_sum = _fold(typical, count, n)
    out.extend(w / v if v > 0 else t / count for w, v, t in zip(weighted, volume, typical_sum, strict=True))
    return out


def _prefix_top(levels: list[int]) -> int:
    """The top of a stored level list, which must be {10, 20, …, top}."""
    if not levels:
        return 0
    top = max(levels)
    if top not in LEVELS or sorted(set(levels)) != list(range(10, top + 10, 10)):
        raise ValueError(f"levels {levels!r} are not 10, 20, … up to their maximum")
    return top


# ---------------------------------------------------------------------------------------------------------
# Store, facade and report
# ---------------------------------------------------------------------------------------------------------


class PartialEntry(Struct, frozen=True, kw_only=True):
    """One row of the partial report store
    ([risk-sizing §3.5](../../docs/design/risk-sizing-portfolio.md#35-the-partial-facade-and-report))."""

    timestamp: int
    action: Literal["profit", "loss"]
    symbol: str
    strategy_name: str
    signal_id: str
    position: str
    current_price: float
    level: int
    backtest: bool


class PartialStatistics(Struct, frozen=True, kw_only=True):
    """`Partial.get_data`: events of one (symbol, strategy), newest first, and their counts."""

    event_list: list[PartialEntry]
    total_events: int
    total_profit: int
    total_loss: int


class PartialService:
    """Trackers for strategy instances and the report store (subscribed at engine creation)."""

    def __init__(self, engine: Services) -> None:
        self.engine = engine
        self.track_backtests = False
        self._events: dict[tuple[str, str], deque[PartialEntry]] = {}
        engine.bus.subscribe(PARTIAL_PROFIT, self._on_profit)
        engine.bus.subscribe(PARTIAL_LOSS, self._on_loss)

    def tracker(
        self, symbol: str, strategy_name: str, *, backtest: bool, callbacks: bool = False
    ) -> LevelTracker | None:
        """A tracker for a new instance; in a backtest only when something consumes the levels.

        Replaying every fast-forward candle's VWAP costs a backtest about a quarter of its speed, so a
        backtest tracks levels only when a user listener (or notifier that wants backtest events) is
        subscribed to a partial channel when the run starts, when the strategy has `on_partial_*`
        callbacks, or when `Partial.track_backtests` is True. Live runs always track.
        """
        if backtest and not (self.track_backtests or callbacks or self._backtest_listeners()):
            return None
        return LevelTracker(self.engine, symbol, strategy_name, backtest)

    def _backtest_listeners(self) -> bool:
        own = (self._on_profit, self._on_loss)
        for channel in (PARTIAL_PROFIT, PARTIAL_LOSS):
            for listener in self.engine.bus.emitter.listeners(channel.name):
                callback = getattr(listener, "callback", listener)
                if callback not in own and not getattr(callback, "live_only", False):
                    return True
        return False

    def _on_profit(self, event: PartialEvent) -> None:
        self._record("profit", event)

    def _on_loss(self, event: PartialEvent) -> None:
        self._record("loss", event)

    def _record(self, action: Literal["profit", "loss"], e: PartialEvent) -> None:
        entry = PartialEntry(
            timestamp=e.timestamp, action=action, symbol=e.symbol, strategy_name=e.strategy_name,
            signal_id=e.signal.id, position=e.signal.position, current_price=e.current_price,
            level=e.level, backtest=e.backtest,
        )
        add_pair_event(self._events, e.symbol, e.strategy_name, entry, MAX_REPORT_EVENTS)

    def events(self, symbol: str, strategy_name: str) -> list[PartialEntry]:
        return list(self._events.get((symbol, strategy_name), ()))

    def clear(self, symbol: str | None = None, strategy_name: str | None = None) -> None:
        clear_pair_events(self._events, symbol, strategy_name)


class PartialFacade:
    """`bk.Partial`: milestone statistics and reports per (symbol, strategy)."""

    def __init__(self, service: PartialService) -> None:
        self._service = service

    @property
    def track_backtests(self) -> bool:
        """Record levels in every backtest, even with no partial listener (slower; default False)."""
        return self._service.track_backtests

    @track_backtests.setter
    def track_backtests(self, value: bool) -> None:
        self._service.track_backtests = bool(value)

    def _validate(self, strategy_name: str, source: str) -> None:
        self._service.engine.check_strategy(strategy_name, source)

    async def get_data(self, symbol: str, strategy_name: str) -> PartialStatistics:
        self._validate(strategy_name, "Partial.get_data")
        events = self._service.events(symbol, strategy_name)
        profit = sum(1 for e in events if e.action == "profit")
        return PartialStatistics(event_list=events, total_events=len(events), total_profit=profit,
                                 total_loss=len(events) - profit)

    async def get_report(self, symbol: str, strategy_name: str) -> str:
        return partial_report(symbol, strategy_name, await self.get_data(symbol, strategy_name))

    async def dump(self, symbol: str, strategy_name: str, path: str | Path | None = None) -> Path | None:
        """Write the report to `<path or dump_dir/partial>/<symbol>_<strategy>.md`; None if it failed."""
        text = await self.get_report(symbol, strategy_name)
        return await save_pair_report(self._service.engine, "partial", symbol, strategy_name, path, text)

    def clear(self, symbol: str | None = None, strategy_name: str | None = None) -> None:
        """Forget recorded milestone events (all, or of one symbol and/or strategy)."""
        self._service.clear(symbol, strategy_name)


def partial_report(symbol: str, strategy_name: str, data: PartialStatistics) -> str:
    """`# Partial Profit/Loss Report: <symbol>:<strategy>`
    ([events §4.6](../../docs/design/events-and-api.md#46-partial-report))."""
    from ..reports.report import format_price, format_timestamp

    title = f"# Partial Profit/Loss Report: {symbol}:{strategy_name}"
    if not data.event_list:
        return f"{title}\n\nNo partial profit/loss events recorded yet."
    header = ["Action", "Symbol", "Strategy", "Signal ID", "Position", "Level %", "Current Price", "Timestamp",
              "Mode"]
    rows = [
        [e.action.upper(), e.symbol, e.strategy_name, e.signal_id, e.position.upper(),
         f"+{e.level}%" if e.action == "profit" else f"-{e.level}%", format_price(e.current_price),
         format_timestamp(e.timestamp), "Backtest" if e.backtest else "Live"]
        for e in data.event_list
    ]
    return "\n".join([
        title, "", *markdown_table(header, rows), "",
        f"**Total events:** {data.total_events}",
        f"**Profit events:** {data.total_profit}",
        f"**Loss events:** {data.total_loss}",
    ])

"""Synthetic candles and a small harness for end-to-end backtests on a fresh `bk.Engine`.

Candle helpers build absolute candle arrays (timestamps are open times in ms, 1 minute apart).
`REFERENCE_CONFIG`, `make_engine` and `MemoryPersist` come from the public `backtest_kit.testing`
(re-exported here so the suite tests with exactly what users get).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import backtest_kit as bk
from backtest_kit.testing import REFERENCE_CONFIG, MemoryPersist, make_engine  # noqa: F401 (re-exported)

M = 60_000
T0_DT = datetime(2024, 1, 1, tzinfo=UTC)
T0 = int(T0_DT.timestamp() * 1000)


def ms(dt: datetime) -> int:
    return int(dt.timestamp() * 1000)


def dt(ms_value: int) -> datetime:
    return datetime.fromtimestamp(ms_value / 1000, UTC)


def candle(ts: int, o: float, h: float, low: float, c: float, v: float = 100.0) -> bk.Candle:
    return bk.Candle(ts, float(o), float(h), float(low), float(c), float(v))


def flat_candles(start_ms: int, n: int, price: float, vol: float = 100.0, spread: float = 1.0) -> list[bk.Candle]:
    """`n` candles open = close = price, high = price + spread, low = price − spread."""
    return [candle(start_ms + i * M, price, price + spread, price - spread, price, vol) for i in range(n)]


def band_candles(start_ms: int, n: int, high: float, low: float, close: float, vol: float = 100.0) -> list[bk.Candle]:
    """`n` identical candles (open = close) with the given high / low / close."""
    return [candle(start_ms + i * M, close, high, low, close, vol) for i in range(n)]


def candles_from_path(start_ms: int, closes: Sequence[float], spread: float = 0.0,
                      vol: float = 100.0) -> list[bk.Candle]:
    """One candle per close; open = previous close, high/low = max/min(open, close) ± spread."""
    out: list[bk.Candle] = []
    previous = closes[0] if closes else 0.0
    for i, c in enumerate(closes):
        o = previous
        out.append(candle(start_ms + i * M, o, max(o, c) + spread, min(o, c) - spread, c, vol))
        previous = c
    return out


def concat(*parts: Iterable[bk.Candle]) -> list[bk.Candle]:
    """Concatenate parts and check they form one 1-minute grid (a guard against test typos)."""
    out = [c for part in parts for c in part]
    for a, b in itertools.pairwise(out):
        assert b.timestamp - a.timestamp == M, (a.timestamp, b.timestamp)
    return out


@dataclass
class Harness:
    """A registered exchange "mem", strategy "s" and frame "f" plus recorders of what happened."""

    engine: bk.Engine
    symbol: str = "BTCUSDT"
    strategy: str = "s"
    exchange: str = "mem"
    frame: str = "f"
    events: list[bk.TickResult] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)
    whens: list[datetime] = field(default_factory=list)

    async def run(self) -> list[bk.FinishedResult]:
        return [r async for r in self.engine.backtest.run(
            self.symbol, strategy_name=self.strategy, exchange_name=self.exchange, frame_name=self.frame)]

    def by_action(self, action: str) -> list[bk.TickResult]:
        return [e for e in self.events if e.action == action]


SignalFn = Callable[[str, datetime], Any]


def setup(
    engine: bk.Engine,
    candles: Sequence[bk.Candle] | None,
    get_signal: SignalFn,
    *,
    start: int = T0,
    minutes: int = 30,
    frame_interval: str = "1m",
    interval: str = "1m",
    callbacks: Any = None,
    get_candles: Callable[..., Any] | None = None,
    symbol: str = "BTCUSDT",
) -> Harness:
    """Register everything for one backtest over [start, start + minutes] and attach recorders.

    `get_signal` may be sync or async; every `when` it is called with is recorded in `h.whens`.
    """
    h = Harness(engine, symbol=symbol)
    source: Any = get_candles if get_candles is not None else bk.MemoryCandles({symbol: list(candles or [])})
    engine.add_exchange(exchange_name=h.exchange, get_candles=source)

    async def recording_signal(sym: str, when: datetime) -> Any:
        h.whens.append(when)
        result = get_signal(sym, when)
        if hasattr(result, "__await__"):
            result = await result
        return result

    engine.add_strategy(strategy_name=h.strategy, interval=interval, get_signal=recording_signal,
                        callbacks=callbacks)
    engine.add_frame(frame_name=h.frame, interval=frame_interval, start_date=dt(start),
                     end_date=dt(start) + timedelta(minutes=minutes))
    engine.listen_signal_backtest(h.events.append)
    engine.listen_error(h.errors.append)
    return h


CALLBACK_NAMES = ("on_tick", "on_open", "on_active", "on_idle", "on_schedule", "on_cancel", "on_close",
                  "on_write", "on_partial_profit", "on_partial_loss")


def recorder(log: list[tuple[str, tuple[Any, ...]]]) -> bk.StrategyCallbacks:
    """Strategy callbacks that append (name, args) to `log`."""

    def make(name: str) -> Callable[..., None]:
        return lambda *args: log.append((name, args))

    return bk.StrategyCallbacks(**{name: make(name) for name in CALLBACK_NAMES})


def expected_pnl(position: str, o: float, c: float, slip: float = 0.1, fee: float = 0.1) -> float:
    """[Lifecycle §8](../docs/design/lifecycle.md#8-pnl), written out independently of the engine."""
    s = slip / 100
    if position == "long":
        oa, ca = o * (1 + s), c * (1 - s)
        return (ca - oa) / oa * 100 - 2 * fee
    oa, ca = o * (1 - s), c * (1 + s)
    return (oa - ca) / oa * 100 - 2 * fee


def once(*signals: Any) -> SignalFn:
    """A get_signal that returns the given signals on its first calls, then None."""
    queue = list(signals)

    def get_signal(symbol: str, when: datetime) -> Any:
        return queue.pop(0) if queue else None

    return get_signal


def always(signal: Any) -> SignalFn:
    def get_signal(symbol: str, when: datetime) -> Any:
        return signal

    return get_signal


def long(tp: float, sl: float, minutes: int, price_open: float | None = None, **extra: Any) -> bk.SignalDto:
    if price_open is None:
        return bk.SignalDto(position="long", price_take_profit=tp, price_stop_loss=sl,
                            minute_estimated_time=minutes, **extra)
    return bk.SignalDto(position="long", price_take_profit=tp, price_stop_loss=sl,
                        minute_estimated_time=minutes, price_open=price_open, **extra)


def short(tp: float, sl: float, minutes: int, price_open: float | None = None, **extra: Any) -> bk.SignalDto:
    if price_open is None:
        return bk.SignalDto(position="short", price_take_profit=tp, price_stop_loss=sl,
                            minute_estimated_time=minutes, **extra)
    return bk.SignalDto(position="short", price_take_profit=tp, price_stop_loss=sl,
                        minute_estimated_time=minutes, price_open=price_open, **extra)


def row(position: str = "long", price_open: float = 100.0, tp: float = 110.0, sl: float = 90.0,
        minutes: int = 60, pending_at: int = T0, scheduled_at: int | None = None,
        is_scheduled: bool = False, **extra: Any) -> bk.SignalRow:
    """A SignalRow for the pure functions (no validation)."""
    return bk.SignalRow(
        id="id-1", position=position, price_open=price_open, price_take_profit=tp,  # type: ignore[arg-type]
        price_stop_loss=sl, minute_estimated_time=minutes, note="", symbol="BTCUSDT",
        strategy_name="s", exchange_name="mem",
        scheduled_at=pending_at if scheduled_at is None else scheduled_at, pending_at=pending_at,
        is_scheduled=is_scheduled, **extra,
    )

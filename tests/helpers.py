"""Synthetic candles and a small harness for end-to-end backtests on a fresh `bk.Engine`.

Candle helpers build absolute candle arrays (timestamps are open times in ms, 1 minute apart).
Result builders (`trade_signal`, `closed_result`, `example_trades`, ...) make the tick results that the
statistics and report tests feed to the stores directly, without running an engine.
`REFERENCE_CONFIG`, `make_engine` and `MemoryPersist` come from the public `backtest_kit.testing`
(re-exported here so the suite tests with exactly what users get).
"""

from __future__ import annotations

import asyncio
import importlib.util
import itertools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import backtest_kit as bk
from backtest_kit.engine.models import CloseReason, Position
from backtest_kit.testing import REFERENCE_CONFIG, MemoryPersist, make_engine  # noqa: F401 (re-exported)

M = 60_000
T0_DT = datetime(2024, 1, 1, tzinfo=UTC)
T0 = int(T0_DT.timestamp() * 1000)

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def load_example(module_name: str, file_name: str = "backtest_sma.py") -> ModuleType:
    """A fresh import of `examples/<file_name>` as `module_name` (not put in `sys.modules`)."""
    spec = importlib.util.spec_from_file_location(module_name, EXAMPLES / file_name)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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



async def live_until_closed(engine: bk.Engine, symbol: str = "BTCUSDT", *, timeout: float = 10.0) -> None:
    """Run strategy "s" on exchange "mem" live in the background until its first closed signal, then
    stop the run and wait for it to end."""
    closed = asyncio.Event()
    engine.listen_signal_live(lambda r: closed.set() if r.action == "closed" else None)
    handle = engine.live.background(symbol, strategy_name="s", exchange_name="mem")
    await asyncio.wait_for(closed.wait(), timeout)
    handle()
    await handle.wait()

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


def _dto(position: Position, tp: float, sl: float, minutes: int, price_open: float | None,
         extra: dict[str, Any]) -> bk.SignalDto:
    """A SignalDto; without `price_open` it is a market entry (the field is left out, not None)."""
    if price_open is not None:
        extra = {**extra, "price_open": price_open}
    return bk.SignalDto(position=position, price_take_profit=tp, price_stop_loss=sl,
                        minute_estimated_time=minutes, **extra)


def long(tp: float, sl: float, minutes: int, price_open: float | None = None, **extra: Any) -> bk.SignalDto:
    return _dto("long", tp, sl, minutes, price_open, extra)


def short(tp: float, sl: float, minutes: int, price_open: float | None = None, **extra: Any) -> bk.SignalDto:
    return _dto("short", tp, sl, minutes, price_open, extra)


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


# ---------------------------------------------------------------------- tick results for stats and reports
RESULT_BASE: dict[str, Any] = {"symbol": "BTCUSDT", "strategy_name": "macd-crossover", "exchange_name": "binance"}
"""The symbol, strategy and exchange of every result built below (those of the worked example)."""


def iso_ms(text: str) -> int:
    """Milliseconds of an ISO date-time without offset, read as UTC."""
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp() * 1000)


def trade_signal(sid: str, pending_at: int, *, position: Position = "long", price_open: float = 100.0,
                 tp: float = 110.0, sl: float = 90.0, note: str = "", symbol: str = RESULT_BASE["symbol"],
                 scheduled_at: int | None = None) -> bk.SignalRow:
    """The signal of a one-day trade opened at `pending_at` (scheduled first when `scheduled_at` is given)."""
    return bk.SignalRow(
        id=sid, position=position, price_open=price_open, price_take_profit=tp, price_stop_loss=sl,
        minute_estimated_time=1440, note=note, symbol=symbol, strategy_name=RESULT_BASE["strategy_name"],
        exchange_name=RESULT_BASE["exchange_name"], scheduled_at=pending_at if scheduled_at is None else scheduled_at,
        pending_at=pending_at, is_scheduled=scheduled_at is not None,
    )


def closed_result(sig: bk.SignalRow, pnl: float, close_ts: int, current_price: float = 101.0,
                  reason: CloseReason = "take_profit", backtest: bool = True) -> bk.ClosedResult:
    """`sig` closed at `close_ts` and `current_price` with a net PnL of `pnl` percent."""
    return bk.ClosedResult(**RESULT_BASE, current_price=current_price, backtest=backtest, signal=sig,
                           close_reason=reason, close_timestamp=close_ts,
                           pnl=bk.PnL(pnl, sig.price_open, current_price))


def idle_result(price: float = 1.0, backtest: bool = False) -> bk.IdleResult:
    return bk.IdleResult(**RESULT_BASE, backtest=backtest, current_price=price)


def opened_result(sig: bk.SignalRow, backtest: bool = False) -> bk.OpenedResult:
    return bk.OpenedResult(**RESULT_BASE, backtest=backtest, current_price=sig.price_open, signal=sig)


def active_result(sig: bk.SignalRow, price: float, tp: float = 10.0, sl: float = 0.0,
                  backtest: bool = False) -> bk.ActiveResult:
    return bk.ActiveResult(**RESULT_BASE, backtest=backtest, current_price=price, signal=sig,
                           percent_tp=tp, percent_sl=sl)


def example_trades(backtest: bool = True) -> list[bk.ClosedResult]:
    """The three trades of [events §4.10](../docs/design/events-and-api.md#410-worked-example), oldest
    first: +1.1013 % (47 min), −1.4287 % (120 min), +1.7469 % (300 min), unrounded, PnL from
    [lifecycle §8](../docs/design/lifecycle.md#8-pnl) with 0.1 % fee / slippage."""
    a = trade_signal("a1d4", iso_ms("2025-12-01T10:00:00"), price_open=96400, tp=97850, sl=95000)
    b = trade_signal("b2e9", iso_ms("2025-12-01T12:00:00"), price_open=97000, tp=98500, sl=96000)
    c = trade_signal("c3f1", iso_ms("2025-12-02T00:00:00"), position="short", price_open=98000, tp=95900, sl=99500)
    return [
        closed_result(a, expected_pnl("long", 96400, 97850), iso_ms("2025-12-01T10:47:00"), 97850, backtest=backtest),
        closed_result(b, expected_pnl("long", 97000, 96000), iso_ms("2025-12-01T14:00:00"), 96000, "stop_loss",
                      backtest),
        closed_result(c, expected_pnl("short", 98000, 95900), iso_ms("2025-12-02T05:00:00"), 95900,
                      backtest=backtest),
    ]

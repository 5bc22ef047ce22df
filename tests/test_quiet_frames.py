"""Skipped idle frames (issue "Speed", backtest part): a backtest frame whose tick could only return an
idle result nobody sees is skipped up to the strategy's next throttle slot
(`StrategyInstance.quiet_until`, `engine/sources.py` on `prices_persist`).

The proof is a comparison: the same backtest run once unobserved (the skip may apply) and once with a
`listen_signal_backtest` listener (every frame ticks, as before the skip existed) must give the same
yielded results, the same `get_signal` calls, the same errors and the same statistics, including the
position left open and the last price the run saw. A counting source shows the skip really happened.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any

import msgspec
from helpers import T0, M, candles_from_path, dt, long, make_engine, short
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import backtest_kit as bk

SYMBOL = "BTCUSDT"


class CountingCandles(bk.MemoryCandles):
    """MemoryCandles that count the engine's price reads (one per frame that ticks)."""

    reads = 0

    def average_price(self, symbol: str, when_ms: int, count: int) -> float | None:
        self.reads += 1
        return super().average_price(symbol, when_ms, count)


def _scrub(value: Any) -> Any:
    """Builtins without the random signal ids (two runs draw different uuid4s)."""
    if isinstance(value, dict):
        return {k: _scrub(v) for k, v in value.items() if k not in ("id", "signal_id")}
    if isinstance(value, list | tuple):
        return [_scrub(v) for v in value]
    return value


async def _run(case: dict[str, Any], *, observed: bool, callbacks: Any = None) -> dict[str, Any]:
    engine = make_engine(CC_SCHEDULE_AWAIT_MINUTES=case["await"])
    source = CountingCandles({SYMBOL: candles_from_path(T0 - 10 * M, case["closes"], spread=0.4)})
    plans = list(case["plans"])
    whens: list[int] = []

    async def get_signal(symbol: str, when: datetime) -> Any:
        kind, tp, sl, m, off = plans[len(whens) % len(plans)]
        whens.append(int(when.timestamp() * 1000))
        p = await bk.get_average_price(symbol)
        if kind == "none":
            return None
        if kind == "long":
            return long(p * (1 + tp / 100), p * (1 - sl / 100), m)
        if kind == "short":
            return short(p * (1 - tp / 100), p * (1 + sl / 100), m)
        if kind == "long_limit":
            o = p * (1 - off / 100)
            return long(o * (1 + tp / 100), o * (1 - sl / 100), m, price_open=o)
        if kind == "short_limit":
            o = p * (1 + off / 100)
            return short(o * (1 - tp / 100), o * (1 + sl / 100), m, price_open=o)
        return long(p * (1 - tp / 100), p * (1 - sl / 100), m)  # TP below open: invalid, an error

    engine.add_exchange(exchange_name="mem", get_candles=source)
    engine.add_strategy(strategy_name="s", interval=case["interval"], get_signal=get_signal, callbacks=callbacks)
    engine.add_frame(frame_name="f", interval=case["frame_interval"], start_date=dt(T0),
                     end_date=dt(T0) + timedelta(minutes=case["frame"]))
    errors: list[str] = []
    engine.listen_error(lambda e: errors.append(repr(e)))
    events: list[bk.TickResult] = []
    if observed:
        engine.listen_signal_backtest(events.append)
    results = [r async for r in engine.backtest.run(SYMBOL, strategy_name="s", exchange_name="mem", frame_name="f")]
    stats = await engine.backtest.get_data(SYMBOL, "s")
    await engine.close()
    return {
        "results": _scrub(msgspec.to_builtins(results)),
        "whens": whens,
        "errors": [e.split("id=")[0] for e in errors],
        "stats": _scrub(msgspec.to_builtins(stats)),
        "reads": source.reads,
        "events": events,
    }


@st.composite
def quiet_case(draw: st.DrawFn) -> dict[str, Any]:
    n = draw(st.integers(80, 240))
    moves = draw(st.lists(st.floats(-1.5, 1.5, allow_nan=False), min_size=n, max_size=n))
    closes, price = [], 100.0
    for step in moves:
        price = min(140.0, max(60.0, price + step))
        closes.append(round(price, 3))
    plans = draw(st.lists(
        st.tuples(st.sampled_from(["none", "none", "long", "short", "long_limit", "short_limit", "bad"]),
                  st.floats(0.2, 4.0), st.floats(0.2, 4.0), st.integers(1, 30), st.floats(0.0, 3.0)),
        min_size=1, max_size=12))
    return {"closes": closes, "plans": plans, "await": draw(st.integers(2, 30)),
            "interval": draw(st.sampled_from(["1m", "3m", "5m", "15m", "30m"])),
            "frame_interval": draw(st.sampled_from(["1m", "1m", "3m", "5m"])),
            "frame": draw(st.integers(20, n - 5))}


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=quiet_case())
def test_skipping_quiet_frames_changes_nothing_observable(case: dict[str, Any]) -> None:
    """HYPOTHESIS: on random candles, signal plans (market, limit, invalid, none), strategy throttles
    and frame steps, an unobserved run equals an observed one in results, get_signal calls, errors and
    statistics (open position and last price included); it never reads more prices."""
    quiet = asyncio.run(_run(case, observed=False))
    full = asyncio.run(_run(case, observed=True))
    for key in ("results", "whens", "errors", "stats"):
        assert quiet[key] == full[key], key
    assert quiet["reads"] <= full["reads"]


def _flat_case(interval: str, frame: int = 120) -> dict[str, Any]:
    return {"closes": [100.0] * (frame + 20), "plans": [("none", 1.0, 1.0, 10, 0.0)], "await": 10,
            "interval": interval, "frame_interval": "1m", "frame": frame}


def test_a_5m_throttle_skips_four_frames_in_five_and_the_last_frame_ticks() -> None:
    """121 one-minute frames, a 5m strategy that never signals: get_signal runs on frames 0, 5, ...,
    120 (25 calls, each reading the price once more) either way; unobserved, only those frames tick
    (the last frame is a slot here); observed, all 121 do."""
    quiet = asyncio.run(_run(_flat_case("5m"), observed=False))
    full = asyncio.run(_run(_flat_case("5m"), observed=True))
    assert quiet["whens"] == full["whens"] == [T0 + k * 5 * M for k in range(25)]
    assert full["reads"] == 121 + 25
    assert quiet["reads"] == 25 + 25
    assert len(full["events"]) == 121 and {e.action for e in full["events"]} == {"idle"}


def test_the_last_frame_ticks_even_inside_a_quiet_stretch() -> None:
    """Frame of 0..122 minutes, 5m throttle: the last slot is 120, but frame 122 still ticks (its price
    is the run's last price in the statistics)."""
    quiet = asyncio.run(_run(_flat_case("5m", frame=122), observed=False))
    assert quiet["reads"] == 25 + 1 + 25


def test_a_1m_throttle_or_an_idle_callback_skips_nothing() -> None:
    """With a 1m throttle every frame is a slot; with `on_idle` (or `on_tick`) every idle tick is seen."""
    one_minute = asyncio.run(_run(_flat_case("1m"), observed=False))
    assert one_minute["reads"] == 121 + 121
    idles: list[float] = []
    with_idle = asyncio.run(_run(_flat_case("5m"), observed=False,
                                 callbacks=bk.StrategyCallbacks(on_idle=lambda s, p, b: idles.append(p))))
    assert with_idle["reads"] == 121 + 25 and len(idles) == 121  # a slot with no signal is idle too

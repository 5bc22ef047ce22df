"""A live engine on the bundled BTCUSDT week for the dashboard tests: two strategies (one behind a risk
profile that refuses every second signal, so rejections show), replayed on a virtual or paced clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import backtest_kit as bk
from backtest_kit.demo import get_signal, sma_5_20

SYMBOL = "BTCUSDT"
GUARD = 120.0  # seconds: a bound for waits that end on their own (reached only when something is broken)
TOKEN = "test-token-0123456789abcdef"
SECRET = "sk-live-SECRET-dashboard-key-42"  # put where a careless API would leak it; must never be served


def refuse_every_second() -> Any:
    seen = [0]

    def validate(args: bk.RiskCheckArgs) -> None:
        seen[0] += 1
        if seen[0] % 2 == 0:
            raise ValueError("demo rule: every second signal is refused")

    return validate


def replay_engine(tmp_path: Path, *, hours: float = 24, clock: bk.VirtualClock | None = None,
                  config: dict[str, Any] | None = None) -> bk.Engine:
    """An engine trading `sma-cross` (behind the risk profile) and `sma-5-20` live over `hours` of data."""
    source = bk.CsvCandles(bk.bundled_sample_path())
    first = datetime.fromtimestamp(source.first_timestamp(SYMBOL) / 1000, UTC) + timedelta(minutes=60)
    if clock is None:
        clock = bk.VirtualClock(first)
    else:
        clock.advance((int(first.timestamp() * 1000) - clock.now_ms()) / 1000)
    engine = bk.Engine(clock=clock, persist_dir=tmp_path / "data", dump_dir=tmp_path / "dump", config=config)
    exchange = bk.ReplayExchange(source, clock, end=first + timedelta(hours=hours))
    engine.add_exchange(exchange_name="replay", get_candles=exchange)
    engine.add_risk(risk_name="every-second", validations=[
        {"validate": refuse_every_second(), "note": "demo rule: every second signal is refused"}])
    engine.add_strategy(strategy_name="sma-cross", interval="5m", get_signal=get_signal, risk_name="every-second")
    engine.add_strategy(strategy_name="sma-5-20", interval="5m", get_signal=sma_5_20)
    return engine


def start(engine: bk.Engine) -> list[bk.CancelHandle]:
    return [engine.live.background(SYMBOL, strategy_name=name, exchange_name="replay")
            for name in ("sma-cross", "sma-5-20")]

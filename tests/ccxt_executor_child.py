"""Child program of the CcxtExecutor kill -9 test (`tests/test_ccxt_executor_killtest.py`).

    python tests/ccxt_executor_child.py CONFIG_JSON

Trades live on a `VirtualClock` through `bk.CcxtExecutor` (the real ccxt client) against the parent's
Binance-protocol server, with its state (signals, order journal) in WORKDIR/data. The clock is
published to WORKDIR/clock on every change (the server's "now" is the child's clock, as a real
exchange's is the real time) and resumes from it after a restart. The strategy opens a long market
signal whenever it is flat; each closes by time a few minutes later. Prints ``ready`` once the exchange
answered, and ``done`` when the clock passed the window's end and the last position was closed.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import backtest_kit as bk
from backtest_kit.adapters.ccxt import add_ccxt_exchange

SYMBOL = "BTCUSDT"


class PublishedClock(bk.VirtualClock):
    """A VirtualClock whose time is also written to a file, one fixed-width write per change."""

    def __init__(self, path: Path, start_ms: int) -> None:
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        super().__init__(datetime.fromtimestamp(start_ms / 1000, UTC))

    @property  # type: ignore[override]
    def _now_ms(self) -> int:
        return self._value

    @_now_ms.setter
    def _now_ms(self, value: int) -> None:
        self._value = value
        os.pwrite(self._fd, f"{value:016d}".encode(), 0)


async def main(config: dict[str, Any]) -> None:
    workdir = Path(config["workdir"])
    saved = workdir / "clock"
    now = int(saved.read_text()) if saved.exists() and saved.read_text().strip() else int(config["start"])
    clock = PublishedClock(saved, now)
    engine = bk.Engine(clock=clock, persist_dir=workdir / "data", dump_dir=workdir / "dump")
    engine.set_config(CC_MIN_TAKEPROFIT_DISTANCE_PERCENT=0, CC_MIN_STOPLOSS_DISTANCE_PERCENT=0, unsafe=True)
    add_ccxt_exchange("binance", "binance", engine=engine, api_urls=config["api_urls"], api_key=config["key"],
                      secret=config["secret"], config={"enableRateLimit": False, "timeout": 5000})
    end = int(config["end"])

    async def churn(symbol: str, when: datetime) -> bk.SignalDto | None:
        if clock.now_ms() >= end:
            return None
        price = await bk.get_average_price(symbol)
        return bk.SignalDto(position="long", price_take_profit=price * 1.5, price_stop_loss=price * 0.9,
                            minute_estimated_time=2)

    engine.add_strategy(strategy_name="churn", interval="1m", get_signal=churn)
    engine.add_order_executor(strategy_name="churn", trade=True, executor=bk.CcxtExecutor(
        "binance", amount=1.0, attempts=4, retry_delay=0, resend_after=0))
    errors: list[str] = []
    engine.listen_error(lambda e: errors.append(f"{type(e).__name__}: {e}"))
    # one line per order event, after its answer was journalled: a kill point for the parent
    engine.listen_order(lambda e: print("order", e.role, e.status, e.client_order_id, flush=True))
    handle: bk.CancelHandle | None = None

    def stop_at_end(result: bk.TickResult) -> None:
        nonlocal handle
        if clock.now_ms() >= end and handle is not None:
            handle()  # graceful: an open position runs to its close first
            handle = None

    engine.listen_signal_live(stop_at_end)
    print("ready", flush=True)
    handle = engine.live.background(SYMBOL, strategy_name="churn", exchange_name="binance")
    await handle.wait()
    await engine.close()
    for line in errors:
        print("error", line, flush=True)
    print("done", flush=True)


if __name__ == "__main__":
    asyncio.run(main(json.loads(sys.argv[1])))

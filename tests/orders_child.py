"""Child program of the order-journal kill -9 test (`tests/test_orders_killtest.py`).

    python tests/orders_child.py WORKDIR

Paper-trades the bundled week of BTCUSDT in live mode on a `VirtualClock` (state under WORKDIR/data) with a
`PaperExecutor` whose venue survives the process: every order the venue accepts is appended to
WORKDIR/venue.jsonl (fsync-ed) and read back on start, as a real exchange would remember it. The clock
resumes at the time saved in WORKDIR/clock after every tick. Prints ``done`` when the replay window ends.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from datetime import UTC, datetime
from pathlib import Path

import backtest_kit as bk
from backtest_kit.execution.paper import PaperGateway, _PaperOrder

MINUTES = 600


class DurableVenue(PaperGateway):
    def __init__(self, log: Path) -> None:
        super().__init__()
        self.log = log
        if log.exists():
            for line in log.read_text().splitlines():
                request = bk.OrderRequest(**json.loads(line))
                self._sequence += 1
                self.orders[request.client_order_id] = _PaperOrder(
                    request=request, exchange_order_id=f"paper-{self._sequence}", timestamp=request.timestamp,
                    scanned_until=request.timestamp)

    async def place(self, request: bk.OrderRequest) -> bk.OrderEvent:
        if request.client_order_id not in self.orders:
            with self.log.open("a") as f:
                f.write(json.dumps({f: getattr(request, f) for f in request.__struct_fields__}) + "\n")
                f.flush()
                os.fsync(f.fileno())
        return await super().place(request)


class DurablePaper(bk.PaperExecutor):
    def __init__(self, log: Path) -> None:
        super().__init__()
        self.paper = DurableVenue(log)
        self.gateway = self.paper


async def main(workdir: Path) -> None:
    source = bk.CsvCandles(bk.bundled_sample_path())
    start = source.first_timestamp("BTCUSDT") + 60 * 60_000
    saved = workdir / "clock"
    now = int(saved.read_text()) if saved.exists() else start
    clock = bk.VirtualClock(datetime.fromtimestamp(now / 1000, UTC))
    engine = bk.Engine(clock=clock, persist_dir=workdir / "data", dump_dir=workdir / "dump")
    engine.set_config(CC_MIN_TAKEPROFIT_DISTANCE_PERCENT=0, CC_MIN_STOPLOSS_DISTANCE_PERCENT=0, unsafe=True)
    engine.add_exchange(exchange_name="replay",
                        get_candles=bk.ReplayExchange(source, clock, end=start + MINUTES * 60_000))

    async def churn(symbol: str, when: datetime) -> bk.SignalDto:
        price = await bk.get_average_price(symbol)
        return bk.SignalDto(position="long", price_take_profit=price * 1.001, price_stop_loss=price * 0.999,
                            minute_estimated_time=3)

    engine.add_strategy(strategy_name="churn", interval="1m", get_signal=churn)
    engine.add_order_executor(strategy_name="churn", executor=DurablePaper(workdir / "venue.jsonl"))
    engine.listen_signal_live(lambda r: saved.write_text(str(clock.now_ms())))
    print("ready", flush=True)
    await engine.live.background("BTCUSDT", strategy_name="churn", exchange_name="replay").wait()
    await engine.close()
    print("done", flush=True)


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1])))

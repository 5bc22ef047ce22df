"""The child of the order kill -9 test (tests/test_order_killtest.py): places one order, then exits.

`python order_kill_child.py CONFIG_JSON` where the config holds the server's `api_urls`, the keys and
the intent. It prints `START` just before `OrderGateway.place` and `DONE <exchange id> <status>`
after it, flushing each line, so the parent can kill it at those points; the server's `on_order` hook
gives the parent the points in between (request received, order accepted, look-up).
"""

from __future__ import annotations

import asyncio
import json
import sys

from backtest_kit.adapters.ccxt_exchange import CcxtExchange
from backtest_kit.adapters.ccxt_orders import OrderGateway, OrderIntent


async def main(config: dict[str, object]) -> None:
    exchange = CcxtExchange("binance", "binance", api_urls=config["api_urls"],  # type: ignore[arg-type]
                            api_key=str(config["key"]), secret=str(config["secret"]),
                            config={"enableRateLimit": False, "timeout": 5000})
    gateway = OrderGateway(exchange, trade=True, attempts=4, retry_delay=0, resend_after=0)
    intent = OrderIntent(**config["intent"])  # type: ignore[arg-type]
    await exchange.load_markets()
    print("START", flush=True)
    state = await gateway.place(intent)
    print("DONE", state.exchange_id, state.status, flush=True)
    await exchange.close()


if __name__ == "__main__":
    asyncio.run(main(json.loads(sys.argv[1])))

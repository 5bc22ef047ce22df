"""kill -9 while placing an order: after the restart, reconciling by client order id never makes two.

Each trial starts a child process that places one order through `OrderGateway` against the local
Binance-protocol server (which runs here, in the test's event loop, and outlives the child), and
SIGKILLs it at a point picked at random: when it says it is about to send, when the server has
received the request (dropping it, or letting it through), when the order was accepted but before
the answer is written, during the look-up after an injected fault, or after it finished. Some trials
first inject a fault (500, 429, a lost answer) so the kill strikes a re-send or a look-up (a 500 /
429 is answered before the handler, so "received" / "accepted" then mean the second attempt). Then a fresh
gateway — the restart — calls `resume(intent)`. The server must hold exactly one order for the
client order id, and it must be the one `resume` reports.

Trials: env BK_ORDER_KILL_TRIALS (default 20; the issue's full run is 200); seed BK_ORDER_KILL_SEED.
The kill points are server events and the child's own output lines: nothing here waits on a timer.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import sys
from collections import Counter
from pathlib import Path

from binance_server import ORDER, BinanceServer, Order, Symbol
from test_ccxt_orders import CANDLES, KEY, NOW, SECRET, SYMBOL

from backtest_kit.adapters.ccxt_exchange import CcxtExchange
from backtest_kit.adapters.ccxt_orders import OrderGateway, OrderIntent

ROOT = Path(__file__).resolve().parents[1]
CHILD = Path(__file__).with_name("order_kill_child.py")
POINTS = ("start", "received_drop", "received", "accepted", "lookup", "done")


class KillPoint:
    """One trial's kill: SIGKILL the child once, at `point`, when the server or the child reaches it."""

    def __init__(self, pid: int, point: str, killed_at: Counter[str]) -> None:
        self.pid, self.point, self.killed_at = pid, point, killed_at
        self.fired = False
        self.posts = 0  # POSTs that reached the handler (a 500 / 429 fault is answered before it)

    def kill(self, where: str) -> None:
        if not self.fired:
            self.fired = True
            self.killed_at[where] += 1
            os.kill(self.pid, signal.SIGKILL)

    async def hook(self, phase: str, order: Order | None) -> bool | None:
        """The server's `on_order`: False drops the request (it died on the way in)."""
        if phase == "received":
            self.posts += 1
        if self.fired:
            return None
        if phase == "received" and self.posts == 1 and self.point in ("received", "received_drop"):
            self.kill(self.point)
            return False if self.point == "received_drop" else None
        if phase == "accepted" and self.posts == 1 and self.point == "accepted":
            self.kill("accepted")
        if phase == "lookup" and self.point == "lookup":
            self.kill("lookup")
        return None


async def test_kill_9_while_placing_never_gives_two_orders_for_one_client_id() -> None:
    trials = int(os.environ.get("BK_ORDER_KILL_TRIALS", "20"))
    seed = int(os.environ.get("BK_ORDER_KILL_SEED", "16"))
    rng = random.Random(seed)
    server = await BinanceServer(CANDLES, now_ms=lambda: NOW, api_keys={KEY: SECRET}, balances={"USDT": "1e9"},
                                 symbols={SYMBOL: Symbol(SYMBOL, "BTC", "USDT")}).start()
    exchange = CcxtExchange("binance", "binance", api_urls=server.api_urls(), api_key=KEY, secret=SECRET,
                            config={"enableRateLimit": False, "timeout": 5000})
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(CHILD.parent)])}
    killed_at: Counter[str] = Counter()
    outcome: Counter[str] = Counter()
    try:
        for trial in range(trials):
            cid = f"kill-{seed}-{trial}"
            point = rng.choice(POINTS)
            fault = rng.choice([None, None, "500", "429", "lost"])
            kind = rng.choice(["market", "market", "limit"])
            intent = {"client_order_id": cid, "symbol": SYMBOL, "side": "buy", "type": kind, "amount": 0.5,
                      "price": 98.0 if kind == "limit" else None}
            if fault is not None:
                server.fail(fault, path=ORDER, method="POST")
            proc = await asyncio.create_subprocess_exec(
                sys.executable, str(CHILD), json.dumps({"api_urls": server.api_urls(), "key": KEY,
                                                        "secret": SECRET, "intent": intent}),
                stdout=asyncio.subprocess.PIPE, env=env)
            run = KillPoint(proc.pid, point, killed_at)
            server.on_order = run.hook
            assert proc.stdout is not None
            async for raw in proc.stdout:
                line = raw.decode().strip()
                if line == "START" and point == "start":
                    run.kill("start")
                if line.startswith("DONE"):
                    outcome["child finished"] += 1
                    if point == "done":
                        run.kill("done")
            await proc.wait()
            if not run.fired:
                killed_at["not reached (" + point + ")"] += 1
            await server.wait_idle()  # the dead child's last request, if any, is handled before the restart
            server.on_order = None
            server.clear_faults()
            before = len(server.orders_for(cid))
            restarted = OrderGateway(exchange, trade=True, attempts=4, retry_delay=0, resend_after=0)
            state = await restarted.resume(OrderIntent(**intent))  # type: ignore[arg-type]
            orders = server.orders_for(cid)
            assert len(orders) == 1, f"trial {trial} ({point}, fault {fault}): {len(orders)} orders for {cid}"
            assert state.exchange_id == str(orders[0].order_id) and state.client_order_id == cid
            outcome["resume found it" if before else "resume placed it"] += 1
    finally:
        await exchange.close()
        await server.close()
    print(f"\norder kill -9: {trials} trials, seed {seed}; killed at {dict(killed_at)}; {dict(outcome)}")
    if trials >= 10:  # both sides of the rule were exercised
        assert outcome["resume found it"] and outcome["resume placed it"]

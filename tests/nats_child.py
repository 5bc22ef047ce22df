"""A process with an engine that publishes a backtest's events over NATS (tests/test_nats_bridge.py).

    python tests/nats_child.py <nats url> <stream> <prefix>

Runs the SMA example's backtest over the bundled week with a `NatsBridge` attached, then prints, as
one JSON line, what the bridge was given in bus order: [channel, event type, symbol] per event, so the
test can compare it with what a subscriber in another process received.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))

from backtest_sma import register  # noqa: E402

import backtest_kit as bk  # noqa: E402


async def main(url: str, stream: str, prefix: str) -> None:
    engine = bk.Engine()
    symbol, frame = register(engine)
    bridge = bk.NatsBridge(url, stream=stream, prefix=prefix)
    bridge.attach(engine)
    sent: list[list[Any]] = []
    for name in bridge.channels:
        engine.bus.subscribe(name, lambda e, name=name: sent.append([name, type(e).__name__, e.symbol])
                             if bridge.filter(e) else None)
    handle = engine.backtest.background(symbol, strategy_name="sma-cross", exchange_name="csv", frame_name=frame)
    await handle.wait()
    await engine.close()  # flushes the bridge
    assert bridge.stats.published == len(sent) and bridge.stats.dropped == 0, bridge.stats
    print(json.dumps(sent))


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))

"""Notifiers and the seed's "critical alert" pattern, on a paper live run over real candles.

    python examples/notifiers_alerts.py                 # console + a local webhook receiver
    TELEGRAM_BOT_TOKEN=... TELEGRAM_CHAT_ID=... python examples/notifiers_alerts.py
    ALERT_WEBHOOK_URL=https://hooks.example.com/... python examples/notifiers_alerts.py

The strategy trades the bundled week of BTCUSDT 1m candles in *live* mode: a `ReplayExchange` serves
the history as if it were live and a `VirtualClock` lets a day of one-minute ticks pass in a moment.

Notifiers:

- a `ConsoleNotifier` prints every opened / closed / cancelled trade and every risk rejection;
- the critical alert (the seed's pattern) fires on a trade closed with a loss below -5 % (`--loss`
  changes the threshold: try `--loss -0.5` to see it fire on this data) and on every error, and
  goes to Telegram, to your webhook, or, with neither configured, to a webhook receiver started on
  127.0.0.1 that prints what arrives — real HTTP either way. Its formatter is overridden.

Every notifier runs behind its own bounded queue with retries and a timeout, so a slow or dead
endpoint never slows the run; `engine.close()` drains them.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
from datetime import datetime, timedelta
from typing import Any

import backtest_kit as bk


def sma(values: list[float]) -> float:
    return sum(values) / len(values)


def make_get_signal(fail_at: datetime) -> Any:
    failed: list[bool] = []

    async def get_signal(symbol: str, when: datetime) -> bk.SignalDto | None:
        if when >= fail_at and not failed:
            failed.append(True)
            raise RuntimeError("simulated exchange hiccup")  # reported through listen_error -> alert
        candles = await bk.get_candles(symbol, "1m", 32)
        if len(candles) < 31:
            return None
        closes = [c.close for c in candles]
        fast, slow = sma(closes[-10:]), sma(closes[-30:])
        fast_before, slow_before = sma(closes[-11:-1]), sma(closes[-31:-1])
        price = closes[-1]
        if fast_before <= slow_before and fast > slow:
            return bk.SignalDto(position="long", price_take_profit=price * 1.01, price_stop_loss=price * 0.99,
                                minute_estimated_time=240)
        return None

    return get_signal


def critical(threshold: float) -> Any:
    """The seed's critical-alert filter: a loss below `threshold` % on a closed trade, or any error."""

    def is_critical(event: Any) -> bool:
        if isinstance(event, BaseException):
            return True
        return getattr(event, "action", None) == "closed" and event.pnl.pnl_percentage < threshold

    return is_critical


def alert_text(event: Any) -> str:
    """A custom formatter: one line a phone can show in a notification."""
    if isinstance(event, BaseException):
        return f"CRITICAL: {type(event).__name__}: {event}"
    return (f"CRITICAL: {event.symbol} {event.signal.position} closed by {event.close_reason} with "
            f"{event.pnl.pnl_percentage:+.2f}% ({event.strategy_name})")


async def local_receiver() -> tuple[str, Any]:
    """A tiny webhook receiver on 127.0.0.1 that prints each JSON body (needs aiohttp)."""
    from aiohttp import web

    async def hook(request: web.Request) -> web.Response:
        body = await request.json()
        print(f"  [webhook received] {body['text']}")
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/alerts", hook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    return f"http://{host}:{port}/alerts", runner


async def main(loss_threshold: float, days: float) -> None:
    source = bk.CsvCandles(bk.bundled_sample_path())
    symbol = source.symbols[0]
    clock = bk.replay_clock(source, symbol)
    start = clock.now()
    with tempfile.TemporaryDirectory() as state_dir:
        engine = bk.Engine(clock=clock, persist_dir=state_dir)
        engine.add_exchange(exchange_name="replay", get_candles=bk.ReplayExchange(source, clock))
        engine.add_strategy(strategy_name="sma-live", interval="5m",
                            get_signal=make_get_signal(start + timedelta(hours=6)))
        engine.listen_error(lambda e: None)  # errors are reported, the run continues

        engine.add_notifier(bk.ConsoleNotifier(), channels=["signal_live", "risk"])

        runner = None
        token, chat = os.environ.get("TELEGRAM_BOT_TOKEN"), os.environ.get("TELEGRAM_CHAT_ID")
        if token and chat:
            alerts: bk.QueuedNotifier = bk.TelegramNotifier(token, chat, formatter=alert_text)
        elif os.environ.get("ALERT_WEBHOOK_URL"):
            alerts = bk.WebhookNotifier(os.environ["ALERT_WEBHOOK_URL"], formatter=alert_text)
        else:
            url, runner = await local_receiver()
            alerts = bk.WebhookNotifier(url, formatter=alert_text)
        engine.add_notifier(alerts, channels=["signal_live", "error"], filter=critical(loss_threshold))

        end = start + timedelta(days=days)
        handle = engine.live.background(symbol, strategy_name="sma-live", exchange_name="replay")
        engine.listen_signal_live(lambda r: handle() if clock.now() >= end else None)
        await handle.wait()
        await engine.close()  # drains and closes the notifiers
        if runner is not None:
            await runner.cleanup()
        stats = await engine.live.get_data(symbol, "sma-live")
        print(f"paper run {start:%Y-%m-%d %H:%M} -> {clock.now():%Y-%m-%d %H:%M}: {stats.total_trades} trades, "
              f"total PnL {stats.total_pnl or 0:+.2f}%")
        print(f"alerts: sent {alerts.stats.sent}, failed {alerts.stats.failed}, dropped {alerts.stats.dropped}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--loss", type=float, default=-5.0, help="alert below this closed-trade PnL %% (default -5)")
    parser.add_argument("--days", type=float, default=1.0, help="days of paper trading (default 1)")
    args = parser.parse_args()
    asyncio.run(main(args.loss, args.days))

"""ExchangeClient retries: transient failures are retried, permanent ones (retryable = False) are not."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

import backtest_kit as bk
from backtest_kit.engine.exchange import ExchangeClient

WHEN = int(datetime(2025, 1, 1, 1, tzinfo=UTC).timestamp() * 1000)


class Permanent(bk.ExchangeError):
    retryable = False


def client_for(engine: bk.Engine, source: Any) -> ExchangeClient:
    engine.set_config(CC_GET_CANDLES_RETRY_COUNT=3, CC_GET_CANDLES_RETRY_DELAY_MS=0)
    engine.add_exchange(exchange_name="x", get_candles=source)
    return engine.exchange("x")


async def test_transient_errors_are_retried_up_to_the_attempt_count() -> None:
    calls = 0

    async def flaky(symbol: str, interval: str, since: datetime, limit: int) -> list[bk.Candle]:
        nonlocal calls
        calls += 1
        raise ConnectionError("reset by peer")

    client = client_for(bk.Engine(), flaky)
    with pytest.raises(bk.ExchangeError, match="failed after 3 attempt"):
        await client.get_candles("BTCUSDT", "1m", 5, WHEN)
    assert calls == 3


async def test_a_permanent_error_is_not_retried() -> None:
    calls = 0

    async def unknown(symbol: str, interval: str, since: datetime, limit: int) -> list[bk.Candle]:
        nonlocal calls
        calls += 1
        raise Permanent(f"unknown symbol {symbol}")

    client = client_for(bk.Engine(), unknown)
    with pytest.raises(bk.ExchangeError, match="unknown symbol NOPE"):
        await client.get_candles("NOPE", "1m", 5, WHEN)
    assert calls == 1


async def test_a_failure_then_success_returns_the_candles() -> None:
    calls = 0
    minute = 60_000

    async def once_broken(symbol: str, interval: str, since: datetime, limit: int) -> list[tuple[Any, ...]]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise TimeoutError("slow")
        start = int(since.timestamp() * 1000)
        return [(start + i * minute, 100.0, 101.0, 99.0, 100.0, 1.0) for i in range(limit)]

    client = client_for(bk.Engine(), once_broken)
    candles = await client.get_candles("BTCUSDT", "1m", 5, WHEN)
    assert calls == 2
    assert [c.timestamp for c in candles] == [WHEN - (5 - i) * minute for i in range(5)]
    assert all(c.timestamp + minute <= WHEN for c in candles)  # closed candles only

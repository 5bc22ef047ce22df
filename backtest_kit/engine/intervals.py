"""Interval names and their lengths in minutes (one table each for candles, throttling and frames)."""

from __future__ import annotations

from typing import Final

from .errors import SchemaError

__all__ = ["CANDLE_INTERVALS", "FRAME_INTERVALS", "MINUTE_MS", "SIGNAL_INTERVALS", "interval_ms"]

MINUTE_MS: Final = 60_000

CANDLE_INTERVALS: Final[dict[str, int]] = {
    "1m": 1, "3m": 3, "5m": 5, "15m": 15, "30m": 30,
    "1h": 60, "2h": 120, "4h": 240, "6h": 360, "8h": 480, "1d": 1440,
}
SIGNAL_INTERVALS: Final[dict[str, int]] = {"1m": 1, "3m": 3, "5m": 5, "15m": 15, "30m": 30, "1h": 60}
FRAME_INTERVALS: Final[dict[str, int]] = {**CANDLE_INTERVALS, "12h": 720, "3d": 4320}


def interval_ms(interval: str, table: dict[str, int] = CANDLE_INTERVALS, field: str = "interval") -> int:
    """Length of `interval` in milliseconds; a clear error for names outside `table`."""
    minutes = table.get(interval) if isinstance(interval, str) else None
    if minutes is None:
        raise SchemaError(f"{field}: unknown interval {interval!r}; expected one of {', '.join(table)}")
    return minutes * MINUTE_MS

"""Adapters: candle sources (in-memory, CSV), persistence backends, exchanges."""

from .candles import CsvCandles, MemoryCandles, bundled_sample_path
from .file_persist import FilePersist
from .replay import ReplayExchange, replay_clock

__all__ = ["CsvCandles", "FilePersist", "MemoryCandles", "ReplayExchange", "bundled_sample_path", "replay_clock"]

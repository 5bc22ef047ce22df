"""Adapters: candle sources (in-memory, CSV), persistence backends, exchanges."""

from .candles import CsvCandles, MemoryCandles, bundled_sample_path
from .file_persist import FilePersist

__all__ = ["CsvCandles", "FilePersist", "MemoryCandles", "bundled_sample_path"]

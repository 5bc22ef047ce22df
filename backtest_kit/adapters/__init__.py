"""Adapters: candle sources (in-memory, CSV), persistence backends, exchanges."""

from .candles import CsvCandles, MemoryCandles, bundled_sample_path
from .ccxt_exchange import CcxtExchange, add_ccxt_exchange  # ccxt itself is imported on first use
from .file_persist import FilePersist
from .postgres_persist import PostgresPersist  # asyncpg is imported on first use (extra "postgres")
from .redis_persist import RedisPersist  # redis.asyncio is imported on first use (extra "redis")
from .replay import ReplayExchange, replay_clock

__all__ = ["CcxtExchange", "CsvCandles", "FilePersist", "MemoryCandles", "PostgresPersist",
           "RedisPersist", "ReplayExchange", "add_ccxt_exchange",
           "bundled_sample_path", "replay_clock"]

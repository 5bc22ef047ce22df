"""Adapters: candle sources (in-memory, CSV), persistence backends, exchanges."""

from .candles import CsvCandles, MemoryCandles, bundled_sample_path
from .ccxt_exchange import CcxtExchange, add_ccxt_exchange  # ccxt itself is imported on first use
from .file_persist import FilePersist
from .nats_bridge import BridgeStats, EventsDroppedError, NatsBridge  # nats-py loads on first use (extra "nats")
from .nats_remote import RemoteEvent, RemoteEvents, RemoteStats, RemoteSubscription, listen_remote
from .nats_wire import RemoteError
from .postgres_persist import PostgresPersist  # asyncpg is imported on first use (extra "postgres")
from .redis_persist import RedisPersist  # redis.asyncio is imported on first use (extra "redis")
from .replay import ReplayExchange, replay_clock

__all__ = ["BridgeStats", "CcxtExchange", "CsvCandles", "EventsDroppedError", "FilePersist", "MemoryCandles",
           "NatsBridge", "PostgresPersist", "RedisPersist", "RemoteError", "RemoteEvent", "RemoteEvents",
           "RemoteStats", "RemoteSubscription", "ReplayExchange", "add_ccxt_exchange",
           "bundled_sample_path", "listen_remote", "replay_clock"]

"""A ccxt exchange as a backtest-kit exchange: candles, price/quantity formatting, one client.

    from backtest_kit.adapters.ccxt import add_ccxt_exchange
    exchange = add_ccxt_exchange("binance", "binance", env_file=".env", sandbox=True)

What it does, and what it leaves to the engine:

- **One ccxt client per registered exchange** (`ccxt.async_support`), created on first use inside the
  running event loop (a ccxt client is bound to the loop it first ran on) and closed when the engine
  closes (`on_close` plus a shutdown hook; closing twice is harmless). A later use, for instance
  under another event loop, opens a fresh client.
- **Markets are loaded once and cached**; they are reloaded after `markets_ttl` seconds of wall-clock
  time (not engine time: a `VirtualClock` replaying days must not reload them every virtual hour). A
  failed reload keeps the old markets and is retried a minute later.
- **`get_candles`** maps the engine's intervals to ccxt timeframes, accepts exchange ids (`BTCUSDT`)
  and unified symbols (`BTC/USDT`), and paginates past the exchange's per-request limit (ccxt's
  `features[...]['fetchOHLCV']['limit']`, 1000 on Binance). An empty answer, a 200 whose body is
  not JSON (an HTML maintenance page, cut-off JSON) and a malformed row are errors, never "no data".
- **Errors** become `backtest_kit.ExchangeError` subclasses: `ExchangeRateLimitError` (429/418,
  ccxt `DDoSProtection` / `RateLimitExceeded`), `ExchangeTimeoutError` (`RequestTimeout`),
  `ExchangeUnavailableError` (5xx `ExchangeNotAvailable`, any other `NetworkError`),
  `ExchangeResponseError` (bad or empty body) and `CcxtExchangeError` for the rest. Messages never
  contain the API key, secret or password, and the original ccxt exception is not chained.
- **Retries are the engine's job**: each adapter call makes one attempt per page; the engine's
  `ExchangeClient` retries any failure `CC_GET_CANDLES_RETRY_COUNT` times with exponential backoff
  and jitter from `CC_GET_CANDLES_RETRY_DELAY_MS` on the engine clock, then publishes the error on
  `listen_error`; the live loop reports a failed tick and carries on. ccxt's own rate limiter
  (`enableRateLimit`, on by default) spaces requests so that 429s are rare in the first place.
- **Keys** come from the arguments, else the environment (`BINANCE_API_KEY`, `BINANCE_SECRET` /
  `BINANCE_API_SECRET`, `BINANCE_PASSWORD` — the prefix is the upper-cased exchange id), else an
  optional `.env` file (read here, never written to `os.environ`). They are held as `Secret`s whose
  `str` / `repr` are `'***'`, are handed only to the ccxt client, and appear in no log line, event,
  report, snapshot or `repr`. ccxt itself logs every request at DEBUG (headers such as `X-MBX-APIKEY`,
  signed URLs) and prints them with `verbose=True`: the client's logger gets the redacting filter of
  `engine/redact.py`, its `verbose` output goes through the same redaction, and the keys are
  registered there so that the engine's own log lines mask them too.

The parts live in their own modules: `ccxt_credentials.py` (`Secret`, `.env`, where keys come from),
`ccxt_client.py` (building the guarded ccxt client) and `ccxt_errors.py` (ccxt exceptions as
backtest-kit errors); this module is the adapter itself, and every public name stays importable here.
"""

from __future__ import annotations

import asyncio
import copy
import math
import os
import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from ..engine import default_slot
from ..engine.errors import (
    CandleError,
    CcxtExchangeError,
    ExchangeRateLimitError,
    ExchangeResponseError,
    ExchangeTimeoutError,
    ExchangeUnavailableError,
    SchemaError,
    UnknownSymbolError,
)
from ..engine.exchange import step_ms
from ..engine.intervals import CANDLE_INTERVALS
from ..engine.models import Candle
from ..engine.ports import ExchangeHost
from ..engine.redact import register_secret
from .ccxt_client import _DEFAULT_OPTIONS, new_client
from .ccxt_credentials import _SECRET_KEYS, Secret, _credential, read_env_file
from .ccxt_errors import scrub, translate_error

__all__ = [
    "CcxtExchange",
    "CcxtExchangeError",
    "ExchangeRateLimitError",
    "ExchangeResponseError",
    "ExchangeTimeoutError",
    "ExchangeUnavailableError",
    "Secret",
    "add_ccxt_exchange",
    "read_env_file",
]

DEFAULT_MARKETS_TTL = 3600.0
"""Seconds of wall-clock time between market reloads."""
MARKETS_RETRY_SECONDS = 60.0
"""After a failed reload, the cached markets are used for this long before the next attempt."""
DEFAULT_CANDLES_PER_REQUEST = 500
"""Page size when ccxt does not say how many candles one request of the exchange may return."""

# The engine's candle intervals are ccxt's unified timeframe names.
TIMEFRAMES: dict[str, str] = {interval: interval for interval in CANDLE_INTERVALS}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS = timedelta(milliseconds=1)
_monotonic = time.monotonic  # a module attribute so tests can move time


# ---------------------------------------------------------------------- the adapter
class CcxtExchange:
    """One ccxt exchange serving `get_candles`, `format_price` and `format_quantity` to an engine.

    Build it with `add_ccxt_exchange(...)`, or construct it and call `register(engine)`.
    """

    def __init__(
        self,
        exchange_name: str,
        exchange_id: str = "binance",
        *,
        api_key: str | Secret | None = None,
        secret: str | Secret | None = None,
        password: str | Secret | None = None,
        sandbox: bool = False,
        options: Mapping[str, Any] | None = None,
        config: Mapping[str, Any] | None = None,
        env_file: str | os.PathLike[str] | None = None,
        api_urls: Mapping[str, str] | None = None,
        markets_ttl: float | None = DEFAULT_MARKETS_TTL,
        candles_per_request: int | None = None,
        market_type: str = "spot",
    ) -> None:
        import ccxt.async_support as ccxt_async

        if not isinstance(exchange_name, str) or not exchange_name:
            raise SchemaError(f"exchange_name: expected a non-empty string, got {exchange_name!r}")
        if not isinstance(exchange_id, str) or exchange_id not in ccxt_async.exchanges:
            raise SchemaError(
                f"exchange_id: {exchange_id!r} is not a ccxt exchange id (e.g. 'binance', 'bybit', 'okx')"
            )
        if markets_ttl is not None and (not isinstance(markets_ttl, int | float) or not markets_ttl > 0):
            raise SchemaError(f"markets_ttl: expected seconds > 0 or None, got {markets_ttl!r}")
        if candles_per_request is not None and (
            isinstance(candles_per_request, bool) or not isinstance(candles_per_request, int)
            or candles_per_request < 1
        ):
            raise SchemaError(f"candles_per_request: expected a whole number >= 1, got {candles_per_request!r}")
        self.exchange_name = exchange_name
        self.exchange_id = exchange_id
        self.sandbox = bool(sandbox)
        self.markets_ttl = float(markets_ttl) if markets_ttl is not None else None
        self.market_type = market_type
        self._candles_per_request = candles_per_request
        self._api_urls = dict(api_urls) if api_urls is not None else None

        config = dict(config or {})
        # Credentials passed inside `config` are taken out and treated like the keyword arguments.
        in_config = {key: config.pop(key) for key in _SECRET_KEYS if key in config}
        self._extra_secrets: dict[str, Secret] = {
            key: Secret(str(value)) for key, value in in_config.items()
            if key not in ("apiKey", "secret", "password") and value
        }
        file_values = read_env_file(env_file) if env_file is not None else {}
        prefix = exchange_id.upper()
        self._api_key = _credential(
            api_key if api_key is not None else in_config.get("apiKey"),
            (f"{prefix}_API_KEY", f"{prefix}_APIKEY"), file_values)
        self._secret = _credential(
            secret if secret is not None else in_config.get("secret"),
            (f"{prefix}_SECRET", f"{prefix}_API_SECRET", f"{prefix}_SECRET_KEY"), file_values)
        self._password = _credential(
            password if password is not None else in_config.get("password"),
            (f"{prefix}_PASSWORD", f"{prefix}_PASSPHRASE", f"{prefix}_API_PASSWORD"), file_values)
        for value in self._secrets():
            register_secret(value)
        merged_options = {**_DEFAULT_OPTIONS.get(exchange_id, {}), **dict(options or {})}
        self._config: dict[str, Any] = {"enableRateLimit": True, **config, "options": merged_options}

        self._client: Any = None
        self._client_loop: asyncio.AbstractEventLoop | None = None
        self._markets_lock: asyncio.Lock | None = None
        self._markets_at: float | None = None
        self._symbols: dict[str, str] = {}
        self._logger: Any = None
        self.markets_loads = 0
        """How many times markets were (re)loaded successfully (a test and monitoring aid)."""

    # -------------------------------------------------------------- introspection
    def __repr__(self) -> str:
        def masked(value: Secret | None) -> str:
            return "'***'" if value else "None"

        return (
            f"{type(self).__name__}(exchange_name={self.exchange_name!r}, exchange_id={self.exchange_id!r}, "
            f"sandbox={self.sandbox}, api_key={masked(self._api_key)}, secret={masked(self._secret)})"
        )

    @property
    def has_credentials(self) -> bool:
        return bool(self._api_key) and bool(self._secret)

    @property
    def client(self) -> Any:
        """The ccxt client (None before first use and after `close()`)."""
        return self._client

    # -------------------------------------------------------------- registration
    def register(self, engine: ExchangeHost, *, note: str | None = None) -> CcxtExchange:
        """`engine.add_exchange(...)` with this adapter; the client is closed by `engine.close()`."""
        engine.add_exchange(
            exchange_name=self.exchange_name, get_candles=self.get_candles, format_price=self.format_price,
            format_quantity=self.format_quantity, note=note, on_close=self.close,
        )
        # on_close only runs for an exchange a run used; the hook also covers a client opened directly
        # (e.g. `await exchange.load_markets()` at start-up). Closing twice is a no-op.
        engine.add_shutdown_hook(self.close)
        self._logger = engine.logger
        return self

    # -------------------------------------------------------------- client and markets
    def _new_client(self) -> Any:
        params: dict[str, Any] = copy.deepcopy(self._config)  # ccxt may mutate nested options
        for key, value in (("apiKey", self._api_key), ("secret", self._secret), ("password", self._password)):
            if value:
                params[key] = value.reveal()
        for key, value in self._extra_secrets.items():
            params[key] = value.reveal()
        return new_client(self.exchange_id, params, sandbox=self.sandbox, api_urls=self._api_urls)

    def _get_client(self) -> Any:
        loop = asyncio.get_running_loop()
        if self._client is not None and self._client_loop is not loop:
            # A ccxt client is bound to its first loop; a new loop (a new asyncio.run) gets a new one.
            self._drop_client()
        if self._client is None:
            self._client = self._new_client()
            self._client_loop = loop
            self._markets_lock = asyncio.Lock()
        return self._client

    def _drop_client(self) -> None:
        self._client = None
        self._client_loop = None
        self._markets_lock = None
        self._markets_at = None
        self._symbols = {}

    async def load_markets(self, *, reload: bool = False) -> dict[str, Any]:
        """A copy of the cached markets; loaded on first use and again after `markets_ttl` seconds."""
        client = await self._ensure_markets(reload=reload)
        return dict(client.markets or {})

    async def _ensure_markets(self, *, reload: bool = False) -> Any:
        """The client, with markets loaded (or reloaded when due); no copy, no request when fresh."""
        client = self._get_client()
        if not reload and not self._markets_due():
            return client
        lock = self._markets_lock
        assert lock is not None
        async with lock:  # one load at a time; callers that waited find the markets fresh
            if reload or self._markets_due():
                first = self._markets_at is None
                error: Exception | None = None
                try:
                    await client.load_markets(reload=not first)
                except Exception as exc:
                    error = self._translate(exc, "load_markets")
                if error is not None:
                    if first:
                        raise error  # outside the handler: the ccxt exception is not chained
                    self._log("warn", f"exchange {self.exchange_name}: markets reload failed, keeping the "
                                      f"cached markets", str(error))
                    self._markets_at = _monotonic() - (self.markets_ttl or 0.0) + MARKETS_RETRY_SECONDS
                else:
                    self._markets_at = _monotonic()
                    self._symbols = {}
                    self.markets_loads += 1
                    self._log("info", f"exchange {self.exchange_name}: {len(client.markets or {})} markets "
                                      f"loaded from {self.exchange_id}{' (sandbox)' if self.sandbox else ''}")
        return client

    def _markets_due(self) -> bool:
        if self._markets_at is None:
            return True
        return self.markets_ttl is not None and _monotonic() - self._markets_at >= self.markets_ttl

    async def _market(self, symbol: str) -> tuple[Any, str]:
        """The client and the unified ccxt symbol of `symbol` (an exchange id or a unified symbol)."""
        client = await self._ensure_markets()
        unified = self._symbols.get(symbol)
        if unified is None:
            markets = client.markets or {}
            if symbol in markets:
                unified = symbol
            else:
                by_id = (client.markets_by_id or {}).get(symbol) or []
                candidates = [m for m in by_id if m.get("type") == self.market_type] or list(by_id)
                if not candidates:
                    example = next(iter(markets), "BTC/USDT")
                    raise UnknownSymbolError(
                        f"exchange {self.exchange_name} ({self.exchange_id}): unknown symbol {symbol!r}; "
                        f"use a market id like {markets[example]['id'] if example in markets else 'BTCUSDT'!r} "
                        f"or a unified symbol like {example!r}"
                    )
                unified = str(candidates[0]["symbol"])
            self._symbols[symbol] = unified
        return client, unified

    def _per_request(self, client: Any) -> int:
        if self._candles_per_request is not None:
            return self._candles_per_request
        features = getattr(client, "features", None) or {}
        section = features.get(self.market_type) or {}
        if self.market_type != "spot" and isinstance(section, Mapping) and "fetchOHLCV" not in section:
            section = next((v for v in section.values() if isinstance(v, Mapping) and "fetchOHLCV" in v), {})
        limit = (section.get("fetchOHLCV") or {}).get("limit") if isinstance(section, Mapping) else None
        if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0:
            return limit
        return DEFAULT_CANDLES_PER_REQUEST

    # -------------------------------------------------------------- the engine's callbacks
    async def get_candles(self, symbol: str, interval: str, since: datetime | int, limit: int) -> list[Candle]:
        """Up to `limit` candles of `interval` opening at or after `since`, ascending (paginated)."""
        return await self.fetch_candles(symbol, interval, _since_ms(since), limit)

    async def fetch_candles(self, symbol: str, interval: str, since_ms: int, limit: int) -> list[Candle]:
        step = step_ms(interval)
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise CandleError(f"limit: expected a whole number >= 1, got {limit!r}")
        client, unified = await self._market(symbol)
        timeframes = getattr(client, "timeframes", None) or {}
        timeframe = TIMEFRAMES[interval]
        if timeframes and timeframe not in timeframes:
            raise CandleError(
                f"interval: exchange {self.exchange_name} ({self.exchange_id}) has no {interval!r} candles; "
                f"it offers {', '.join(timeframes)}"
            )
        per_request = self._per_request(client)
        out: list[Candle] = []
        cursor = since_ms
        while len(out) < limit:
            chunk = min(per_request, limit - len(out))
            rows: Any = None
            error: Exception | None = None
            try:
                rows = await client.fetch_ohlcv(unified, timeframe, cursor, chunk)
            except Exception as exc:
                error = self._translate(exc, f"fetch_ohlcv({symbol!r}, {interval!r}, since={cursor}, limit={chunk})")
            if error is not None:
                raise error  # outside the handler: the ccxt exception is not chained as __context__
            page = [c for c in self._parse_rows(rows, symbol, interval) if c.timestamp >= cursor]
            if not page:
                break
            out.extend(page[: limit - len(out)])
            if len(page) < chunk:
                break  # the exchange has nothing further (yet)
            cursor = page[-1].timestamp + step
        if not out:
            raise ExchangeResponseError(
                f"exchange {self.exchange_name} ({self.exchange_id}): fetch_ohlcv({symbol!r}, {interval!r}, "
                f"since={_iso(since_ms)}, limit={limit}) returned no candles; an empty answer is an error, "
                "not 'no data'", exchange_name=self.exchange_name, exchange_id=self.exchange_id, kind="empty",
            )
        return out

    def _parse_rows(self, rows: Any, symbol: str, interval: str) -> list[Candle]:
        if not isinstance(rows, list):
            raise self._bad(f"{symbol} {interval}: expected a list of candles, got {type(rows).__name__}")
        out: list[Candle] = []
        for i, row in enumerate(rows):
            if not isinstance(row, list | tuple) or len(row) < 6:
                raise self._bad(f"{symbol} {interval}: candle #{i} is not a 6-field row: {row!r:.120}")
            ts, *values = row[:6]
            if isinstance(ts, bool) or not isinstance(ts, int | float) or not math.isfinite(ts):
                raise self._bad(f"{symbol} {interval}: candle #{i} has no valid timestamp: {row!r:.120}")
            if any(isinstance(v, bool) or not isinstance(v, int | float) for v in values):
                raise self._bad(f"{symbol} {interval}: candle #{i} has a missing or non-numeric value: {row!r:.120}")
            o, h, low, c, v = (float(x) for x in values)
            out.append(Candle(int(ts), o, h, low, c, v))
        return out

    def _bad(self, what: str) -> ExchangeResponseError:
        return ExchangeResponseError(
            f"exchange {self.exchange_name} ({self.exchange_id}): malformed fetch_ohlcv answer: {what}",
            exchange_name=self.exchange_name, exchange_id=self.exchange_id, kind="malformed",
        )

    async def format_price(self, symbol: str, price: float) -> str:
        """`price` rounded to the market's price precision (tick size), as ccxt's `price_to_precision`."""
        client, unified = await self._market(symbol)
        try:
            return str(client.price_to_precision(unified, price))
        except Exception as exc:
            error = self._translate(exc, f"format_price({symbol!r}, {price!r})")
        raise error

    async def format_quantity(self, symbol: str, quantity: float) -> str:
        """`quantity` truncated to the market's amount precision (lot step), as `amount_to_precision`."""
        client, unified = await self._market(symbol)
        try:
            return str(client.amount_to_precision(unified, quantity))
        except Exception as exc:
            error = self._translate(exc, f"format_quantity({symbol!r}, {quantity!r})")
        raise error

    async def close(self) -> None:
        """Close the ccxt client (its HTTP session); safe to call more than once."""
        client = self._client
        self._drop_client()
        if client is not None:
            await client.close()

    # -------------------------------------------------------------- errors and logging
    def _secrets(self) -> list[str]:
        values = [s.reveal() for s in (self._api_key, self._secret, self._password) if s]
        values += [s.reveal() for s in self._extra_secrets.values() if s]
        return [v for v in values if v]

    def _scrub(self, text: str) -> str:
        return scrub(text, self._secrets())

    def _translate(self, exc: Exception, what: str) -> Exception:
        """A backtest-kit error for a ccxt (or other) exception; the message is scrubbed of keys."""
        return translate_error(exc, what, exchange_name=self.exchange_name, exchange_id=self.exchange_id,
                               client=self._client, secrets=self._secrets())

    def _log(self, level: str, topic: str, *args: Any) -> None:
        logger = self._logger
        if logger is not None:
            getattr(logger, level)(topic, *args)


def _since_ms(since: datetime | int) -> int:
    if isinstance(since, int) and not isinstance(since, bool):
        return since
    if not isinstance(since, datetime):
        raise CandleError(f"since: expected a datetime, got {type(since).__name__}: {since!r}")
    if since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    return -((_EPOCH - since) // _ONE_MS)  # rounded up to whole milliseconds


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def add_ccxt_exchange(
    exchange_name: str,
    exchange_id: str = "binance",
    *,
    engine: ExchangeHost | None = None,
    api_key: str | Secret | None = None,
    secret: str | Secret | None = None,
    password: str | Secret | None = None,
    sandbox: bool = False,
    options: Mapping[str, Any] | None = None,
    config: Mapping[str, Any] | None = None,
    env_file: str | os.PathLike[str] | None = None,
    api_urls: Mapping[str, str] | None = None,
    markets_ttl: float | None = DEFAULT_MARKETS_TTL,
    candles_per_request: int | None = None,
    market_type: str = "spot",
    note: str | None = None,
) -> CcxtExchange:
    """Register the ccxt exchange `exchange_id` as `exchange_name` on `engine` (default `bk.default_engine`).

    - `api_key` / `secret` / `password`: else `<ID>_API_KEY` / `<ID>_SECRET` / `<ID>_PASSWORD` from
      the environment, else from `env_file`. Market data needs no keys.
    - `sandbox`: ccxt's `set_sandbox_mode(True)` (Binance: the spot testnet).
    - `options`: ccxt options, merged over the defaults (Binance: spot markets only, no currencies,
      no margin lists). `config`: other ccxt constructor parameters, e.g. `{"timeout": 10_000,
      "enableRateLimit": True}`. `api_urls`: entries replacing the client's `urls['api']` (a proxy,
      a local test server).
    - `markets_ttl`: seconds between market reloads (None: load once). `candles_per_request`: the
      page size (default: what ccxt says the exchange allows). `market_type`: which market an id
      such as `BTCUSDT` means when several share it.

    Returns the adapter (`repr` masks the keys); `await engine.close()` closes its client.
    """
    if engine is None:
        engine = default_slot.default_engine  # bk.default_engine, without importing the root package
    adapter = CcxtExchange(
        exchange_name, exchange_id, api_key=api_key, secret=secret, password=password, sandbox=sandbox,
        options=options, config=config, env_file=env_file, api_urls=api_urls, markets_ttl=markets_ttl,
        candles_per_request=candles_per_request, market_type=market_type,
    )
    return adapter.register(engine, note=note)

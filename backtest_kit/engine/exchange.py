"""Exchange client: candles without look-ahead, retries, validation and the average price.

A tick at time `when` may only see candles that have closed by `when`
([decision 1](../../docs/design/decisions.md#decision-1-no-look-ahead)): the candle that opens at `when`
lies in the future. Every backward read here enforces `ts + step <= when`.
"""

from __future__ import annotations

import inspect
import math
import random
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import msgspec

from .candle_store import CandleStore
from .config import Config
from .errors import CandleError, ExchangeError, StaleDataError
from .intervals import CANDLE_INTERVALS, MINUTE_MS
from .logger import EngineLogger
from .models import Candle
from .registry import ExchangeSchema
from .sources import SyncCandleSource

__all__ = [
    "ExchangeClient",
    "check_limit",
    "coerce_candle",
    "coerce_candles",
    "step_ms",
    "to_datetime",
    "validate_candles",
    "vwap",
]

_FIELDS = ("open", "high", "low", "close", "volume")


def to_datetime(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def step_ms(interval: str) -> int:
    minutes = CANDLE_INTERVALS.get(interval) if isinstance(interval, str) else None
    if minutes is None:
        raise CandleError(
            f"interval: unknown candle interval {interval!r}; expected one of {', '.join(CANDLE_INTERVALS)}"
        )
    return minutes * MINUTE_MS


def check_limit(limit: Any) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise CandleError(f"limit: expected a whole number >= 1, got {limit!r}")
    return limit


def coerce_candle(raw: Any, index: int, symbol: str) -> Candle:
    """A Candle from a Candle, a mapping or a 6-tuple; anything else names the candle."""
    if isinstance(raw, Candle):
        return raw
    try:
        if isinstance(raw, Mapping):
            ts = raw["timestamp"]
            values = [raw[f] for f in _FIELDS]
        else:
            ts, *values = raw
            if len(values) != 5:
                raise ValueError("expected 6 values (timestamp, open, high, low, close, volume)")
    except (KeyError, TypeError, ValueError) as exc:
        raise CandleError(f"{symbol} candle #{index}: malformed candle {raw!r} ({exc})") from None
    if isinstance(ts, bool) or not isinstance(ts, int | float) or not math.isfinite(ts) or ts != int(ts):
        raise CandleError(f"{symbol} candle #{index}: timestamp must be whole milliseconds, got {ts!r}")
    for name, value in zip(_FIELDS, values, strict=True):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise CandleError(f"{symbol} candle #{index}: {name} must be a number, got {value!r}")
    o, h, low, c, v = (float(x) for x in values)
    return Candle(int(ts), o, h, low, c, v)


def coerce_candles(raw: Sequence[Any], symbol: str, first_index: int = 0) -> list[Candle]:
    """`coerce_candle` over a batch; candle #i of the error messages is ``first_index + i``.

    The common shapes (all tuples/lists of six numbers, all dicts, all `Candle`) are converted by
    msgspec in one C pass, about 15x faster than the per-candle Python path. msgspec is stricter
    (a whole float timestamp such as ``1.7e12`` or a dict subclass it does not take), so on any
    rejection the batch goes through `coerce_candle`, which accepts what it always accepted and raises
    the error naming the candle and field: results and messages are those of `coerce_candle`.
    """
    if raw:
        first = raw[0]
        try:
            if type(first) is tuple or type(first) is list:
                return [Candle(*row) for row in _convert(raw, _ROWS, strict=True)]
            if type(first) is dict or type(first) is Candle:
                return _convert(raw, _CANDLES, strict=True)
        except (msgspec.ValidationError, TypeError, ValueError):
            pass
    return [coerce_candle(c, first_index + i, symbol) for i, c in enumerate(raw)]


_ROWS = list[tuple[int, float, float, float, float, float]]
_CANDLES = list[Candle]
_convert = msgspec.convert


def _reference(prices: list[float], count: int, symbol: str, config: Config) -> float:
    """The anomaly filter's reference: the median of the positive prices of `count` candles, or their
    mean below CC_GET_CANDLES_MIN_CANDLES_FOR_MEDIAN candles."""
    if not prices:
        raise CandleError(f"{symbol}: cannot calculate a reference price, no positive price in {count} candles")
    if count >= config.CC_GET_CANDLES_MIN_CANDLES_FOR_MEDIAN:
        prices.sort()
        return prices[len(prices) // 2]
    return sum(prices) / len(prices)


def validate_candles(candles: Sequence[Candle], symbol: str, step: int, config: Config) -> None:
    """Reject the whole answer on the first bad candle: values, OHLC consistency, grid, order, anomaly.

    The anomaly filter is symmetric in log space: a price below reference / factor or above
    reference x factor is rejected, the same factor both ways, so one spiked print (a bad tick, a
    unit mix-up) can neither fake a stop loss nor a take profit.

    A first pass checks each candle with one chained comparison (NaN fails every comparison, inf
    fails the ceiling, a positive threshold implies positive prices); only when it fails do the named
    checks run, so a bad answer gets the same message, candle and field as always.
    """
    if not candles:
        return
    prices = [p for c in candles for p in (c.open, c.high, c.low, c.close) if p > 0]
    reference = _reference(prices, len(candles), symbol, config)
    factor = config.CC_GET_CANDLES_PRICE_ANOMALY_THRESHOLD_FACTOR
    threshold = reference / factor
    # symmetric: a x100 print is as wrong as a /100 one
    # ([hardening #7](../../docs/design/decisions.md#hardening-7-symmetric-candle-anomaly-filter-default-factor-20))
    ceiling = reference * factor
    prev = -1
    for c in candles:
        ts = c.timestamp
        lo = c.low
        hi = c.high
        o = c.open
        cl = c.close
        if not (threshold <= lo <= o <= hi <= ceiling and lo <= cl <= hi and 0 <= c.volume < math.inf
                and ts > prev and not ts % step):
            break
        prev = ts
    else:
        return
    previous: int | None = None
    for i, c in enumerate(candles):
        where = f"{symbol} candle #{i} (timestamp {c.timestamp})"
        for name in _FIELDS:
            value = getattr(c, name)
            if not math.isfinite(value):
                raise CandleError(f"{where}: {name} is not finite: {value!r}")
            if name == "volume":
                if value < 0:
                    raise CandleError(f"{where}: volume is negative: {value!r}")
            elif value <= 0:
                raise CandleError(f"{where}: {name} must be positive, got {value!r}")
            elif value < threshold:
                raise CandleError(
                    f"{where}: anomalously low price {name}={value!r} "
                    f"(open {c.open}, high {c.high}, low {c.low}, close {c.close}; "
                    f"reference {reference}, threshold {threshold})"
                )
            elif value > ceiling:
                raise CandleError(
                    f"{where}: anomalously high price {name}={value!r} "
                    f"(open {c.open}, high {c.high}, low {c.low}, close {c.close}; "
                    f"reference {reference}, ceiling {ceiling} = reference x {factor:g})"
                )
        if c.high < max(c.open, c.close) or c.low > min(c.open, c.close) or c.high < c.low:
            raise CandleError(
                f"{where}: inconsistent OHLC (open {c.open}, high {c.high}, low {c.low}, close {c.close})"
            )
        if c.timestamp % step:
            raise CandleError(f"{where}: timestamp is not on the {step // MINUTE_MS}m grid")
        if previous is not None and c.timestamp <= previous:
            raise CandleError(f"{where}: timestamps must ascend, previous was {previous}")
        previous = c.timestamp


def vwap(candles: Sequence[Candle]) -> float:
    """Volume-weighted typical price; the mean of typical prices when no volume traded."""
    total_volume = 0.0
    weighted = 0.0
    typical_sum = 0.0
    for c in candles:
        typical = (c.high + c.low + c.close) / 3
        weighted += typical * c.volume
        total_volume += c.volume
        typical_sum += typical
    if total_volume > 0:
        return weighted / total_volume
    return typical_sum / len(candles)


class ExchangeClient:
    """One registered exchange as the engine uses it."""

    def __init__(
        self,
        schema: ExchangeSchema,
        config: Callable[[], Config],
        logger: EngineLogger,
        now_ms: Callable[[], int],
        sleep: Callable[[float], Awaitable[None]],
    ) -> None:
        self.schema = schema
        self.name = schema.exchange_name
        self._config = config
        self._logger = logger
        self._now_ms = now_ms
        self._sleep = sleep
        source = schema.get_candles
        self.sync_source: SyncCandleSource | None = source if isinstance(source, SyncCandleSource) else None
        self._stores: dict[tuple[str, str], CandleStore] = {}
        self._log_load_warnings(source)

    def _log_load_warnings(self, source: object) -> None:
        """Repeat a local source's load-time findings (gaps, dropped anomalies) through the engine logger.

        They were raised as Python warnings when the file was read, possibly before the application
        configured anything; the engine logger is where a run's operator looks, so say it again there.
        """
        found = getattr(source, "load_warnings", None)
        if isinstance(found, list):
            for text in found:
                self._logger.warn(f"exchange {self.name}: candle data", str(text))

    # -------------------------------------------------------------- raw fetching
    async def _fetch(
        self, symbol: str, interval: str, since_ms: int, limit: int, step: int,
        context: Sequence[Candle] = (), read_limit: int | None = None,
    ) -> list[Candle]:
        """Ask the source (with retries), convert and validate its whole answer.

        `context`: the candle store's cached candles that precede `since_ms` in the read being
        served. They are not converted again, but they are validated again together with the answer,
        so the anomaly reference (the median of the window), every verdict and the candle numbers in
        error messages are those of a fetch of the whole window; the first-pass check makes that
        cheap. `read_limit`: the limit of that read, named in the give-up message instead of the tail's.
        """
        config = self._config()
        attempts = config.CC_GET_CANDLES_RETRY_COUNT
        delay = config.CC_GET_CANDLES_RETRY_DELAY_MS / 1000
        last: Exception | None = None
        for attempt in range(attempts):
            try:
                raw = self.schema.get_candles(symbol, interval, to_datetime(since_ms), limit)
                if inspect.isawaitable(raw):
                    raw = await raw
                if type(raw) is not list:  # the usual answer skips the checks below
                    if type(raw).__module__ == "numpy" and getattr(raw, "ndim", 0) == 2:
                        raw = raw.tolist()  # an (n, 6) array: rows of Python numbers, one C call
                    if raw is None or isinstance(raw, str | bytes) or not isinstance(raw, Sequence):
                        raise CandleError(
                            f"{symbol}: get_candles must return a list of candles, got {raw!r:.200}")
                candles = coerce_candles(raw, symbol, len(context))
                # the head joins the checks: the whole window is judged as a fetch of it would be
                validate_candles([*context, *candles] if context else candles, symbol, step, config)
                return candles
            except Exception as exc:
                last = exc
                self._logger.warn(
                    f"exchange {self.name}: get_candles {symbol} {interval} attempt "
                    f"{attempt + 1}/{attempts} failed", repr(exc)
                )
                if getattr(exc, "retryable", True) is False:
                    break  # e.g. an unknown symbol or rejected keys: waiting will not help
                if attempt + 1 < attempts and delay > 0:
                    await self._sleep(delay * (2**attempt) * random.uniform(0.8, 1.2))
        assert last is not None
        if isinstance(last, CandleError):
            raise last
        raise ExchangeError(
            f"exchange {self.name}: get_candles({symbol!r}, {interval!r}, "
            f"limit={limit if read_limit is None else read_limit}) failed after "
            f"{attempts} attempt(s): {last!r}"
        ) from last

    def _store(self, symbol: str, interval: str, step: int, limit: int) -> CandleStore | None:
        """The key's candle store (created on first use), or None when CC_CANDLE_STORE_MAX_CANDLES is 0."""
        store = self._stores.get((symbol, interval))
        if store is None:
            size = self._config().CC_CANDLE_STORE_MAX_CANDLES
            if size <= 0:
                return None
            store = self._stores[(symbol, interval)] = CandleStore(step, size)
        store.reserve(limit)
        return store

    def candle_store_bytes(self, at_bound: bool = False) -> int:
        """Bytes held by this exchange's candle stores (`CandleStore.nbytes`), for benchmarks and monitoring."""
        return sum(store.nbytes(at_bound) for store in self._stores.values())

    # -------------------------------------------------------------- backward (closed candles only)
    async def get_candles(self, symbol: str, interval: str, limit: int, when_ms: int) -> list[Candle]:
        """The newest `limit` candles closed by `when_ms`, ascending (fewer if the source has fewer).

        A callback source goes through the key's `CandleStore` (see engine/candle_store.py): a
        window it fully knows is served from memory without calling the source; a window whose head it
        knows asks the source only for what follows the head: ``limit - len(head)`` candles from
        ``store.hi``, which are exactly the rest of what a whole-window fetch would answer (the known
        range holds every candle of the head, and the source answers ascending from `since`), validated
        together with the cached head (same reference, verdicts and candle numbers); any other window is
        fetched whole, exactly as without a store. Only closed candles (``ts + step <= when``) are
        stored, so what a tick sees is unchanged.

        The one difference: a window served from memory calls no source and validates nothing again.
        (a) Its candles passed validation in an earlier window and keep that verdict, not re-judged
        against this window's median (a closed candle accepted once stays accepted; with the factor-20
        band only a market moving 20x inside one window could tell). (b) The candles a source pads a
        gapped window with (it answers `limit` candles from `since`, reaching past `when` by as many
        as the window lacks) are not validated with it: they have not closed by `when`, and the store
        never lets a future candle fail or shift the reference of a read.
        """
        step = step_ms(interval)
        check_limit(limit)
        if self.sync_source is not None:
            found = self.sync_source.closed_candles(symbol, interval, when_ms, limit)
            return found if type(found) is list else list(found)  # adapters hand out fresh lists
        newest_open = (when_ms - step) - (when_ms - step) % step
        since = newest_open - (limit - 1) * step
        stop = newest_open + step  # <= when_ms: every slot before stop is closed by when_ms
        store = self._store(symbol, interval, step, limit)
        if store is None:
            candles = await self._fetch(symbol, interval, since, limit, step)
            kept = [c for c in candles if since <= c.timestamp and c.timestamp + step <= when_ms]
        elif store.covers(since, stop):
            kept = store.window(since, stop)
        else:
            hi = store.hi
            if store.lo < hi and store.lo <= since < hi:
                head = store.window(since, hi)
                start = hi
                # the source's first limit - len(head) candles from hi are what a whole-window fetch
                # would answer after the head: the same batch, in two parts
                fetched = await self._fetch(symbol, interval, hi, limit - len(head), step, head, limit)
            else:
                head = []
                start = since
                fetched = await self._fetch(symbol, interval, since, limit, step)
            new = [c for c in fetched if start <= c.timestamp < stop]
            if fetched and fetched[0].timestamp >= start:
                # known up to the newest candle the source answered (gaps before it are real gaps),
                # never past stop: later slots may not have closed by when_ms. A source that answers
                # candles from before `since` does not answer by open time: nothing is taken as known
                store.merge(start, min(stop, fetched[-1].timestamp + step), new)
            kept = head + new if head else new
        if len(kept) < limit:
            self._logger.debug(f"exchange {self.name}: {symbol} {interval} got {len(kept)} of {limit} candles")
        self._candle_data(symbol, interval, since, limit, kept)
        return kept

    async def get_next_candles(self, symbol: str, interval: str, since_ms: int, limit: int) -> list[Candle]:
        """Up to `limit` candles opening at or after `since_ms`, ascending (backtest fast-forward).

        Candles that would not have closed yet by the engine clock are never returned.
        """
        step = step_ms(interval)
        check_limit(limit)
        now = self._now_ms()
        if self.sync_source is not None:
            found = self.sync_source.next_candles(symbol, interval, since_ms, limit)
            candles = found if type(found) is list else list(found)
        else:
            candles = await self._fetch(symbol, interval, since_ms, limit, step)
            end = since_ms + limit * step
            candles = [c for c in candles if since_ms <= c.timestamp < end]
            self._candle_data(symbol, interval, since_ms, limit, candles)
        while candles and candles[-1].timestamp + step > now:
            candles.pop()
        return candles

    def _candle_data(self, symbol: str, interval: str, since: int, limit: int, candles: list[Candle]) -> None:
        callback = self.schema.on_candle_data
        if callback is not None:
            try:
                callback(symbol, interval, to_datetime(since), limit, candles)
            except Exception as exc:
                self._logger.warn(f"exchange {self.name}: on_candle_data raised", repr(exc))

    def data_end_ms(self, symbol: str) -> int | None:
        """When the source's data for `symbol` runs out (a replay), else None (a real exchange).

        A source opts in with a `data_end_ms(symbol)` method (`ReplayExchange` has one); the live
        loop ends the run after its first tick at or past that time.
        """
        end = getattr(self.schema.get_candles, "data_end_ms", None)
        if not callable(end):
            return None
        value = end(symbol)
        return None if value is None else int(value)

    # -------------------------------------------------------------- prices
    def average_price_now(self, symbol: str, when_ms: int) -> float | None:
        """The average price without an await when the source answers synchronously, else None."""
        source = self.sync_source
        if source is None:
            return None
        price = source.average_price(symbol, when_ms, self._config().CC_AVG_PRICE_CANDLES_COUNT)
        if price is None:
            raise ExchangeError(f"exchange {self.name}: no closed 1m candles for {symbol} before {when_ms}")
        return price

    async def average_price(self, symbol: str, when_ms: int) -> float:
        """VWAP of the last CC_AVG_PRICE_CANDLES_COUNT closed 1m candles."""
        fast = self.average_price_now(symbol, when_ms)
        if fast is not None:
            return fast
        candles = await self.get_candles(symbol, "1m", self._config().CC_AVG_PRICE_CANDLES_COUNT, when_ms)
        if not candles:
            raise ExchangeError(f"exchange {self.name}: no closed 1m candles for {symbol} before {when_ms}")
        return vwap(candles)

    async def live_price(self, symbol: str, when_ms: int) -> float:
        """`average_price` plus live mode's freshness check
        ([hardening #8](../../docs/design/decisions.md#hardening-8-stale-live-data-fails-the-tick)).

        A feed that stopped still answers with its last candles, and their average would be traded
        on as if it were the price now; past `CC_LIVE_MAX_CANDLE_AGE_MS` the tick fails instead.
        """
        config = self._config()
        limit = config.CC_LIVE_MAX_CANDLE_AGE_MS
        source = self.sync_source
        if limit <= 0:
            return await self.average_price(symbol, when_ms)
        if source is not None:
            price = self.average_price_now(symbol, when_ms)
            assert price is not None  # a sync source answers or raises
            newest = source.closed_candles(symbol, "1m", when_ms, 1)
            self._check_fresh(symbol, newest[-1].timestamp + MINUTE_MS, when_ms, limit)
            return price
        return await self._awaited_live_price(symbol, when_ms, config.CC_AVG_PRICE_CANDLES_COUNT, limit)

    async def _awaited_live_price(self, symbol: str, when_ms: int, count: int, limit: int) -> float:
        """The usual `count`-candle request; only an empty answer looks further back, as far as `limit`,
        to tell a stalled feed (StaleDataError) from a short hole (the ExchangeError of `average_price`)."""
        candles = await self.get_candles(symbol, "1m", count, when_ms)
        if candles:
            self._check_fresh(symbol, candles[-1].timestamp + MINUTE_MS, when_ms, limit)
            return vwap(candles)
        window = max(count, -(-limit // MINUTE_MS) + 1)  # window x 1m > limit: empty proves staleness
        older = await self.get_candles(symbol, "1m", window, when_ms) if window > count else []
        if older:
            self._check_fresh(symbol, older[-1].timestamp + MINUTE_MS, when_ms, limit)
        else:
            newest_open = (when_ms - MINUTE_MS) - (when_ms - MINUTE_MS) % MINUTE_MS
            self._check_fresh(symbol, None, when_ms, limit, newest_open - (window - 1) * MINUTE_MS)
        raise ExchangeError(f"exchange {self.name}: no closed 1m candles for {symbol} before {when_ms}")

    def _check_fresh(
        self, symbol: str, close_ms: int | None, when_ms: int, limit: int, window_start: int = 0
    ) -> None:
        """Raise StaleDataError when the newest 1m close (None: none since `window_start`) is too old."""
        age = when_ms - (close_ms if close_ms is not None else window_start)
        if age <= limit:
            return
        if close_ms is not None:
            what = f"the newest closed 1m candle closed at {to_datetime(close_ms).isoformat()} ({close_ms}), "
        else:
            what = (f"no 1m candle opened at or after {to_datetime(window_start).isoformat()} ({window_start}), "
                    "so the newest closed at least ")
        raise StaleDataError(
            f"{symbol}: stale candles from exchange {self.name}: {what}{age / 1000:g} s before this tick at "
            f"{to_datetime(when_ms).isoformat()}, older than CC_LIVE_MAX_CANDLE_AGE_MS={limit} "
            f"({limit / 1000:g} s); the tick is skipped, is the data feed stalled?",
            symbol=symbol, close_time_ms=close_ms, age_ms=age, limit_ms=limit,
        )

    async def format_price(self, symbol: str, price: float) -> str:
        return await self._format(self.schema.format_price, symbol, price)

    async def format_quantity(self, symbol: str, quantity: float) -> str:
        return await self._format(self.schema.format_quantity, symbol, quantity)

    @staticmethod
    async def _format(fn: Callable[..., Any] | None, symbol: str, value: float) -> str:
        if fn is None:
            text = f"{value:.8f}".rstrip("0").rstrip(".")
            return text or "0"
        result = fn(symbol, value)
        if inspect.isawaitable(result):
            result = await result
        return str(result)

    async def close(self) -> None:
        """Release the exchange's resources (e.g. a ccxt client) when the engine closes."""
        callback = self.schema.on_close
        if callback is not None:
            result = callback()
            if inspect.isawaitable(result):
                await result

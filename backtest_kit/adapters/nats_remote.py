"""`RemoteEvents` / `listen_remote`: receive a `NatsBridge`'s events in a process without an engine.

A dashboard or a notifier service subscribes to the bridge's JetStream stream and gets each event
as the engine's own msgspec model (`TickResult`, `RiskEvent`, ...; errors as `RemoteError`) in a
`RemoteEvent` envelope that also names the channel, symbol, strategy, publisher and sequence.

One JetStream pull consumer per subscription, so the events of all chosen channels come in stream
order (one bridge publishes in bus order). The consumer filters on the server by one channel and
symbol / strategy when given (NATS 2.9 has one filter subject per consumer; for several channels the
channel token is a wildcard and the rest is filtered here). Durable (`durable="dashboard"`: the
server remembers what was acknowledged, a restarted subscriber resumes there) or ephemeral (removed
by the server `inactive_threshold` seconds after the subscriber goes away).

Delivery is at least once, made exactly once per process: a message is acknowledged after the
callback returned; a callback that raises (or outlives `callback_timeout`) is logged and the message
is negatively acknowledged, so JetStream redelivers it (after later ones; up to `max_deliver` times);
the ids of the last `dedup_size` handled messages are kept and a repeat (a redelivery after a lost
ack, a publisher retry outside the duplicate window) is acknowledged without calling back again. A
payload that does not decode is logged and terminated (never redelivered).

Closing a subscription stops it after the pull in flight (at most a second) rather than cancelling
that pull: a cancelled pull could still be pending on the server when the next event is published
(the server may see the publish before the unsubscribe), and that event would then wait `ack_wait`
before a resumed durable subscriber got it. Messages of a batch that arrives while stopping are
handed back at once (`nak`); those being handled are finished and acknowledged first.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar

from ..engine.channels import Channel
from ..engine.errors import ConfigError
from ..engine.logger import EngineLogger
from ..engine.redact import redact
from .nats_bridge import register_url_secrets, server_label
from .nats_wire import (
    CHANNEL_MODELS,
    HEADER_MSG_ID,
    HEADER_SEQ,
    HEADER_SOURCE,
    check_name,
    decode_event,
    ensure_stream,
    filter_subject,
    import_nats,
    parse_subject,
    resolve_channels,
)

__all__ = ["RemoteEvent", "RemoteEvents", "RemoteStats", "RemoteSubscription", "listen_remote"]

E = TypeVar("E")
_log = logging.getLogger("backtest_kit.nats")

_FETCH_SECONDS = 1.0
"""How long one pull waits for messages: also how long `aclose` may wait for the pull in flight."""
_STOP_GRACE_SECONDS = 2.0
"""Beyond the pull, how long `aclose` lets the batch being handled finish before cancelling it."""
Deliver = Literal["all", "new", "last"]


@dataclass(frozen=True, slots=True)
class RemoteEvent(Generic[E]):
    """One event received from NATS: `event` is the channel's model, decoded."""

    channel: str
    event: E
    symbol: str
    strategy_name: str
    source: str  # the publishing bridge's id
    seq: int  # the event's number in that bridge (0 if the header is missing)
    msg_id: str


@dataclass
class RemoteStats:
    """Counters of one subscription: `delivered` to the callback, `duplicates` skipped, `failed`
    callbacks (redelivered), `invalid` payloads (terminated), `skipped` (other channels)."""

    delivered: int = 0
    duplicates: int = 0
    failed: int = 0
    invalid: int = 0
    skipped: int = 0


class _Seen:
    """The last `size` message ids handled (insertion order; a bounded memory, not a window in time)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._ids: OrderedDict[str, None] = OrderedDict()

    def __contains__(self, msg_id: str) -> bool:
        return msg_id in self._ids

    def add(self, msg_id: str) -> None:
        self._ids[msg_id] = None
        if len(self._ids) > self.size:
            self._ids.popitem(last=False)


@dataclass
class RemoteSubscription:
    """A running subscription; `await sub.aclose()` stops it (and `async with` does)."""

    stats: RemoteStats = field(default_factory=RemoteStats)
    _task: asyncio.Task[None] | None = None
    _psub: Any = None
    _owner: RemoteEvents | None = None  # closed with the subscription (`listen_remote`)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def aclose(self) -> None:
        """Stop after the pull in flight (at most `_FETCH_SECONDS`), then unsubscribe.

        Cancelling the pull instead would leave the server a pending pull request for its last
        second: a message published then is handed to that dead request and waits `ack_wait` (30 s
        by default) before a resumed durable subscriber gets it. A stop that outlasts the pull (a
        slow callback) still cancels, as before.
        """
        task, self._task = self._task, None
        if task is not None:
            self._stop.set()
            try:
                await asyncio.wait_for(asyncio.shield(task), _FETCH_SECONDS + _STOP_GRACE_SECONDS)
            except TimeoutError:
                await _cancel(task)
            except asyncio.CancelledError:  # our caller is cancelled: stop the pull now, then go on unwinding
                await _cancel(task)
                raise
            except Exception:  # the pull task ended with an error of its own: nothing to stop
                pass
        psub, self._psub = self._psub, None
        if psub is not None:
            with contextlib.suppress(Exception):
                await psub.unsubscribe()
        owner, self._owner = self._owner, None
        if owner is not None:
            await owner.aclose()

    async def __aenter__(self) -> RemoteSubscription:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task


class RemoteEvents:
    """A connection to the NATS server(s) holding a bridge's stream; `subscribe` as often as needed."""

    def __init__(
        self,
        servers: str | list[str] = "nats://127.0.0.1:4222",
        *,
        stream: str = "BK_EVENTS",
        prefix: str = "bk",
        connect_timeout: float = 2.0,
        reconnect_wait: float = 0.5,
        logger: logging.Logger | None = None,
    ) -> None:
        if not servers:
            raise ConfigError("servers: expected a NATS URL or a list of them")
        register_url_secrets(servers)
        self.servers = servers
        self.server = server_label(servers)
        self.stream = check_name("stream", stream)
        self.prefix = check_name("prefix", prefix)
        self.connect_timeout = float(connect_timeout)
        self.reconnect_wait = float(reconnect_wait)
        self._logger = EngineLogger(logger or _log)
        self._nc: Any = None
        self._subs: list[RemoteSubscription] = []

    async def connect(self) -> None:
        """Connect now (`subscribe` does it on first use); raises when no server answers in time."""
        if self._nc is not None and not self._nc.is_closed:
            return
        nats = import_nats()
        self._nc = await nats.connect(
            self.servers, name="backtest-kit remote events", connect_timeout=self.connect_timeout,
            reconnect_time_wait=self.reconnect_wait, max_reconnect_attempts=-1, allow_reconnect=True,
            error_cb=self._on_error,
        )

    async def _on_error(self, exc: Exception) -> None:
        self._logger.debug(f"RemoteEvents: NATS client error at {self.server}",
                           f"{type(exc).__name__}: {redact(str(exc))}")

    async def subscribe(
        self,
        callback: Callable[[RemoteEvent[Any]], Any],
        *,
        channels: Iterable[Channel[Any] | str] | Channel[Any] | str | None = None,
        symbol: str | None = None,
        strategy: str | None = None,
        durable: str | None = None,
        deliver: Deliver = "new",
        batch: int = 100,
        callback_timeout: float | None = None,
        max_deliver: int = 5,
        ack_wait: float = 30.0,
        inactive_threshold: float = 60.0,
        dedup_size: int = 100_000,
    ) -> RemoteSubscription:
        """Call `callback(RemoteEvent)` (sync or async) for each event of `channels` (default: every
        channel) of `symbol` / `strategy` (None: any), in stream order; see the module docstring.

        `deliver`: where a new consumer starts ("new": events published from now on, "all": the whole
        stream, "last": the last event); a durable consumer that exists resumes where it was."""
        if deliver not in ("all", "new", "last"):
            raise ConfigError(f"deliver: expected 'all', 'new' or 'last', got {deliver!r}")
        for label, value in (("batch", batch), ("max_deliver", max_deliver), ("dedup_size", dedup_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{label}: expected a whole number >= 1, got {value!r}")
        if not callable(callback):
            raise ConfigError(f"callback: expected a callable, got {callback!r}")
        names = frozenset(resolve_channels(channels, CHANNEL_MODELS))
        if durable is not None:
            check_name("durable", durable)
        await self.connect()
        import_nats()
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

        only = next(iter(names)) if len(names) == 1 else None
        config = ConsumerConfig(
            deliver_policy=DeliverPolicy(deliver), ack_policy=AckPolicy.EXPLICIT, max_deliver=max_deliver,
            ack_wait=ack_wait, inactive_threshold=None if durable else inactive_threshold,
        )
        js = self._nc.jetstream()
        await ensure_stream(js, self.stream, self.prefix)
        psub = await js.pull_subscribe(filter_subject(self.prefix, only, symbol, strategy),
                                       durable=durable, stream=self.stream, config=config)
        subscription = RemoteSubscription(_psub=psub)
        handler = _Handler(self.prefix, names, callback, callback_timeout, _Seen(dedup_size),
                           subscription.stats, self._logger)
        subscription._task = asyncio.get_running_loop().create_task(
            _pull(psub, batch, handler, self._logger, self.server, subscription._stop),
            name="backtest-kit remote events")
        self._subs.append(subscription)
        return subscription

    async def aclose(self) -> None:
        """Stop every subscription and close the connection."""
        subs, self._subs = self._subs, []
        for sub in subs:
            await sub.aclose()
        nc, self._nc = self._nc, None
        if nc is not None and not nc.is_closed:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(nc.close(), self.connect_timeout)

    async def __aenter__(self) -> RemoteEvents:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


async def listen_remote(
    callback: Callable[[RemoteEvent[Any]], Any],
    servers: str | list[str] = "nats://127.0.0.1:4222",
    *,
    stream: str = "BK_EVENTS",
    prefix: str = "bk",
    **options: Any,
) -> RemoteSubscription:
    """Subscribe `callback` to a bridge's events on its own connection (`RemoteEvents.subscribe`'s
    options: `channels`, `symbol`, `strategy`, `durable`, `deliver`, ...); `aclose()` closes both."""
    remote = RemoteEvents(servers, stream=stream, prefix=prefix)
    try:
        subscription = await remote.subscribe(callback, **options)
    except BaseException:
        await remote.aclose()
        raise
    remote._subs.remove(subscription)
    subscription._owner = remote
    return subscription


class _Handler:
    """Decode, deduplicate, call back, then acknowledge one message (see the module docstring)."""

    def __init__(self, prefix: str, channels: frozenset[str], callback: Callable[[RemoteEvent[Any]], Any],
                 timeout: float | None, seen: _Seen, stats: RemoteStats, logger: EngineLogger) -> None:
        self.prefix = prefix
        self.channels = channels
        self.callback = callback
        self.timeout = timeout
        self.seen = seen
        self.stats = stats
        self.logger = logger

    async def __call__(self, msg: Any) -> None:
        headers = msg.headers or {}
        try:
            prefix, channel, symbol, strategy = parse_subject(msg.subject)
            if prefix != self.prefix:
                raise ValueError(f"subject {msg.subject!r} is not under {self.prefix!r}")
            if channel not in self.channels:
                self.stats.skipped += 1
                await msg.ack()
                return
            event = decode_event(channel, msg.data)
        except Exception as exc:
            self.stats.invalid += 1
            self.logger.warn(f"RemoteEvents: cannot decode a message on {msg.subject!r}; dropped",
                             f"{type(exc).__name__}: {exc}")
            await msg.term()
            return
        msg_id = headers.get(HEADER_MSG_ID) or f"{msg.subject}#{msg.metadata.sequence.stream}"
        if msg_id in self.seen:
            self.stats.duplicates += 1
            await msg.ack()
            return
        seq = headers.get(HEADER_SEQ, "0")
        remote = RemoteEvent(channel=channel, event=event, symbol=symbol, strategy_name=strategy,
                             source=headers.get(HEADER_SOURCE, ""), seq=int(seq) if seq.isdigit() else 0,
                             msg_id=msg_id)
        try:
            async with asyncio.timeout(self.timeout):
                result = self.callback(remote)
                if inspect.isawaitable(result):
                    await result
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.stats.failed += 1
            self.logger.warn(f"RemoteEvents: callback raised on {channel} event {msg_id}; redelivery",
                             redact(repr(exc)))
            await msg.nak()
            return
        self.seen.add(msg_id)
        self.stats.delivered += 1
        await msg.ack()


async def _pull(psub: Any, batch: int, handle: _Handler, logger: EngineLogger, server: str,
                stop: asyncio.Event) -> None:
    """Fetch and handle messages until `stop` is set (or cancelled); a broker away is waited out (the
    client reconnects). A batch that arrives after `stop` is handed back (`nak`) at once, for the next
    subscriber, instead of being held until `ack_wait` runs out."""
    failing = False
    while not stop.is_set():
        try:
            msgs = await psub.fetch(batch, timeout=_FETCH_SECONDS)
        except asyncio.CancelledError:
            raise
        except TimeoutError:  # nothing new (nats' TimeoutError is an asyncio.TimeoutError)
            continue
        except Exception as exc:
            if not failing:
                logger.warn(f"RemoteEvents: fetching from NATS at {server} failed; retrying",
                            f"{type(exc).__name__}: {redact(str(exc))}")
            failing = True
            await asyncio.sleep(0.5)
            continue
        failing = False
        if stop.is_set():
            for msg in msgs:
                with contextlib.suppress(Exception):
                    await msg.nak()
            return
        for msg in msgs:
            try:
                await handle(msg)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # an ack lost with the connection: the redelivery is deduplicated
                logger.debug("RemoteEvents: acknowledging failed", f"{type(exc).__name__}: {redact(str(exc))}")

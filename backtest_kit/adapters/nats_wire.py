"""What engine events look like on NATS: subjects, message ids, payloads, and the lazy client import.

Shared by the publishing side (`nats_bridge.py`) and the subscribing side (`nats_remote.py`), which
usually run in different processes and must agree on every byte of this.

- **Subject** ``<prefix>.<channel>.<symbol>.<strategy>``: the channel's name as it is (``[a-z_]``), the
  symbol and the strategy name as `engine/naming.subject_token` makes them (percent-encoded, so a
  ``.``, ``*``, ``>`` or a space in a user's name cannot add a token or become a wildcard, and no two
  names share a token). An event without a symbol (most errors) has the empty name, token ``%``.
- **Payload**: the event as msgspec JSON; a subscriber decodes it with the channel's model
  (`CHANNEL_MODELS`), so it gets the same `TickResult` / `RiskEvent` / ... Structs the engine
  published. An exception is not a Struct: errors travel as `RemoteError` (its type name and its
  redacted message; never its repr or traceback, which may hold a signed URL or a key).
- **Message id** (``Nats-Msg-Id``) ``<source>-<seq>``: the bridge's instance id and the event's
  sequence number in that bridge, fixed when the event is queued, so a retried publish carries the
  same id and JetStream's duplicate window stores it once; a subscriber drops an id it has already
  handled (a redelivery after a lost ack). ``Bk-Source`` / ``Bk-Seq`` repeat the two parts.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from types import ModuleType
from typing import Any, Final

import msgspec

from ..engine.channels import (
    DONE_BACKTEST,
    DONE_LIVE,
    ERROR,
    EXIT,
    PARTIAL_LOSS,
    PARTIAL_PROFIT,
    PERFORMANCE,
    PROGRESS,
    RISK,
    SIGNAL,
    SIGNAL_BACKTEST,
    SIGNAL_LIVE,
    VALIDATION,
    Channel,
)
from ..engine.errors import ConfigError, SchemaError
from ..engine.models import DoneEvent, PartialEvent, PerformanceEvent, ProgressEvent, RiskEvent, TickResult
from ..engine.naming import parse_subject_token, subject_token
from ..engine.redact import redact

__all__ = [
    "CHANNEL_MODELS",
    "DEFAULT_BRIDGE_CHANNELS",
    "HEADER_MSG_ID",
    "HEADER_SEQ",
    "HEADER_SOURCE",
    "RemoteError",
    "check_name",
    "decode_event",
    "encode_event",
    "ensure_stream",
    "event_names",
    "filter_subject",
    "import_nats",
    "parse_subject",
    "resolve_channels",
    "subject_for",
]

HEADER_MSG_ID: Final = "Nats-Msg-Id"
HEADER_SOURCE: Final = "Bk-Source"
HEADER_SEQ: Final = "Bk-Seq"


class RemoteError(msgspec.Struct, frozen=True, kw_only=True):
    """An error event (`error`, `exit`, `validation` channels) as it crosses the wire.

    `type` is the exception's class name (`ExchangeUnavailableError`), `message` its `str()` with
    secrets redacted (`engine/redact.py`); `symbol` / `strategy_name` when the exception carried them.
    """

    type: str
    message: str
    symbol: str | None = None
    strategy_name: str | None = None


CHANNEL_MODELS: Final[dict[str, Any]] = {
    SIGNAL.name: TickResult,
    SIGNAL_LIVE.name: TickResult,
    SIGNAL_BACKTEST.name: TickResult,
    ERROR.name: RemoteError,
    EXIT.name: RemoteError,
    VALIDATION.name: RemoteError,
    DONE_LIVE.name: DoneEvent,
    DONE_BACKTEST.name: DoneEvent,
    PROGRESS.name: ProgressEvent,
    PERFORMANCE.name: PerformanceEvent,
    PARTIAL_PROFIT.name: PartialEvent,
    PARTIAL_LOSS.name: PartialEvent,
    RISK.name: RiskEvent,
}
"""channel name -> the type its payloads decode to (every channel of the bus)."""

DEFAULT_BRIDGE_CHANNELS: Final[tuple[str, ...]] = tuple(
    channel.name for channel in (SIGNAL_LIVE, SIGNAL_BACKTEST, ERROR, EXIT, RISK, PARTIAL_PROFIT,
                                 PARTIAL_LOSS, DONE_LIVE, DONE_BACKTEST)
)
"""What `NatsBridge` publishes by default: the signal/trade lifecycle of both modes (each mode's own
channel, so the subject says the mode; `signal` would repeat every event), errors, the error that
ended a run, risk rejections, partial levels and run ends. Idle and active ticks are left out by the
default filter (one per pair per tick: a firehose no dashboard needs)."""

_NAME: Final = re.compile(r"[A-Za-z0-9_-]{1,64}\Z")
_DECODERS: Final = {name: msgspec.json.Decoder(model) for name, model in CHANNEL_MODELS.items()}


def import_nats() -> ModuleType:
    """The `nats` client module (extra `nats`), with an ImportError that says how to install it."""
    try:
        import nats
    except ImportError as exc:
        raise ImportError(
            "the NATS event bridge needs the nats-py client: pip install 'backtest-kit[nats]'"
        ) from exc
    return nats


def check_name(label: str, value: str) -> str:
    """A stream name, subject prefix, source id or durable name: 1-64 of ``A-Za-z0-9_-`` (one subject
    token, one JetStream name; nothing to escape)."""
    if not isinstance(value, str) or not _NAME.match(value):
        raise ConfigError(f"{label}: expected 1-64 of A-Za-z0-9_-, got {value!r}")
    return value


def resolve_channels(channels: Iterable[Channel[Any] | str] | Channel[Any] | str | None,
                     default: Iterable[str]) -> tuple[str, ...]:
    """Channel names from constants or names (one or many); unknown names raise SchemaError."""
    if channels is None:
        names = tuple(default)
    elif isinstance(channels, Channel | str):
        names = (str(channels),)
    else:
        names = tuple(str(channel) for channel in channels)
    for name in names:
        if name not in CHANNEL_MODELS:
            raise SchemaError(f"channels: unknown channel {name!r}; known: {', '.join(CHANNEL_MODELS)}")
    if not names:
        raise SchemaError("channels: expected at least one channel")
    return tuple(dict.fromkeys(names))


def event_names(event: Any) -> tuple[str, str]:
    """(symbol, strategy name) of an event; empty when it has none (most errors)."""
    symbol = getattr(event, "symbol", None)
    strategy = getattr(event, "strategy_name", None)
    return (symbol if isinstance(symbol, str) else "", strategy if isinstance(strategy, str) else "")


def subject_for(prefix: str, channel: str, symbol: str, strategy: str) -> str:
    return f"{prefix}.{channel}.{subject_token(symbol)}.{subject_token(strategy)}"


def filter_subject(prefix: str, channel: str | None, symbol: str | None, strategy: str | None) -> str:
    """The subject filter for one channel (or any: None) and symbol / strategy (None: any)."""
    def token(name: str | None) -> str:
        return "*" if name is None else subject_token(name)

    return f"{prefix}.{channel or '*'}.{token(symbol)}.{token(strategy)}"


def parse_subject(subject: str) -> tuple[str, str, str, str]:
    """(prefix, channel, symbol, strategy) of a subject made by `subject_for`; ValueError otherwise."""
    parts = subject.split(".")
    if len(parts) != 4:
        raise ValueError(f"subject {subject!r}: expected <prefix>.<channel>.<symbol>.<strategy>")
    prefix, channel, symbol, strategy = parts
    return prefix, channel, parse_subject_token(symbol), parse_subject_token(strategy)


def _remote_error(error: BaseException) -> RemoteError:
    symbol = getattr(error, "symbol", None)
    strategy = getattr(error, "strategy_name", None)
    return RemoteError(
        type=type(error).__name__,
        message=redact(str(error)),
        symbol=symbol if isinstance(symbol, str) else None,
        strategy_name=strategy if isinstance(strategy, str) else None,
    )


def _enc_hook(obj: Any) -> Any:
    # RiskEvent.pending_signal is `Any` (a SignalDto, a dict or a user object): never fail on it
    return redact(repr(obj))


_ENCODER: Final = msgspec.json.Encoder(enc_hook=_enc_hook)


def encode_event(event: Any) -> bytes:
    """The payload of `event` (an exception becomes a `RemoteError`)."""
    if isinstance(event, BaseException):
        return _ENCODER.encode(_remote_error(event))
    return _ENCODER.encode(event)


def decode_event(channel: str, payload: bytes) -> Any:
    """The event of `channel` in `payload`; raises KeyError (unknown channel) or msgspec errors."""
    return _DECODERS[channel].decode(payload)


async def ensure_stream(js: Any, stream: str, prefix: str, *, duplicate_window: float = 120.0,
                        max_age: float = 0.0, max_bytes: int = -1, storage: str = "file") -> None:
    """Create `stream` holding ``<prefix>.>`` if it does not exist (either side may start first), or
    add the subject to the one that does; an existing stream's other settings are left as they are."""
    import_nats()
    from nats.js.api import StorageType, StreamConfig
    from nats.js.errors import NotFoundError

    subject = f"{prefix}.>"
    try:
        info = await js.stream_info(stream)
    except NotFoundError:
        await js.add_stream(StreamConfig(
            name=stream, subjects=[subject], duplicate_window=duplicate_window, max_age=max_age or None,
            max_bytes=max_bytes, storage=StorageType.FILE if storage == "file" else StorageType.MEMORY,
        ))
        return
    have = list(info.config.subjects or [])
    if subject not in have:
        info.config.subjects = [*have, subject]
        await js.update_stream(info.config)

"""What the network persistence backends (`RedisPersist`, `PostgresPersist`) share.

Why a module of its own: both backends must answer the same questions the same way, or the contract
tests would pass for one and not the other: which namespace texts are allowed, how a server address is
shown without its password, how an unreachable or slow server becomes one `PersistError` that names
the entity, the key and the address, and how the client library is imported only when first used (the
core of the package imports without the ``redis`` / ``postgres`` extras).
"""

from __future__ import annotations

import asyncio
import importlib
import os
import re
import socket
import uuid
from collections.abc import Awaitable, Callable
from types import ModuleType
from typing import Final, TypeVar
from urllib.parse import SplitResult, unquote, urlsplit, urlunsplit

from backtest_kit.engine.errors import ConfigError, PersistError
from backtest_kit.engine.lease import Fence
from backtest_kit.engine.redact import redact, register_secret

__all__ = [
    "NAMESPACE_PATTERN",
    "default_owner",
    "describe_target",
    "import_extra",
    "lease_lost_message",
    "safe_url",
    "short_key",
    "validate_lease_ttl",
    "validate_namespace",
    "validate_owner",
    "validate_pool_size",
    "validate_timeout",
    "with_deadline",
]

_T = TypeVar("_T")

NAMESPACE_PATTERN: Final = re.compile(r"[A-Za-z0-9_.-]{1,64}")
"""One deployment's namespace: plain ASCII without ``:`` so it can never run into the separator of the
keys built around it (Redis) and reads the same in SQL, logs and ``redis-cli``."""


def validate_namespace(namespace: object) -> str:
    """`namespace` itself, or a `ConfigError` saying what is allowed."""
    if not isinstance(namespace, str) or NAMESPACE_PATTERN.fullmatch(namespace) is None:
        raise ConfigError(
            f"persist namespace must be 1-64 characters of A-Z a-z 0-9 _ . - (one per deployment), got {namespace!r}"
        )
    return namespace


def validate_timeout(timeout: object) -> float:
    """A positive number of seconds: every operation must give up at some point, never hang a tick."""
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout < float("inf"):
        raise ConfigError(f"persist timeout must be a positive number of seconds, got {timeout!r}")
    return float(timeout)


def validate_pool_size(pool_size: object, backend: str) -> int:
    """A positive int: the most connections a backend opens; more concurrent operations wait."""
    if isinstance(pool_size, bool) or not isinstance(pool_size, int) or pool_size < 1:
        raise ConfigError(f"{backend}: pool_size must be a positive int, got {pool_size!r}")
    return pool_size


def validate_lease_ttl(ttl: object, backend: str) -> float:
    """Lease time-to-live in seconds: at least 0.1 (renewals every third of it must keep up)."""
    if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not 0.1 <= ttl < float("inf"):
        raise ConfigError(f"{backend}: lease_ttl must be a number of seconds >= 0.1, got {ttl!r}")
    return float(ttl)


def validate_owner(owner: object, backend: str) -> str:
    """A lease owner name: 1-200 printable characters."""
    if not isinstance(owner, str) or not 0 < len(owner) <= 200 or not owner.isprintable():
        raise ConfigError(f"{backend}: owner must be 1-200 printable characters, got {owner!r}")
    return owner


def default_owner() -> str:
    """``host:pid:random``: unique per backend object, so two processes never share an owner."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def lease_lost_message(action: str, target: str, where: str, fence: Fence, current: str | None) -> str:
    """Why a fenced change was refused: which pair, which token, which newer token the store holds."""
    latest = "no lease at all" if current is None else f"fencing token {current}"
    return (f"cannot {action} {target} on {where}: refused, the lease of pair {fence.pair!r} was taken over "
            f"(this owner holds fencing token {fence.token}, the store has {latest}); this process no "
            "longer owns the pair and stops trading it")


def import_extra(module: str, extra: str, backend: str) -> ModuleType:
    """Import a client library of an optional extra, or say which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(
            f"{backend} needs the {module!r} package: pip install 'backtest-kit[{extra}]'"
        ) from exc


def safe_url(url: str) -> tuple[str, str]:
    """(`url` with its password replaced by ``***``, ``host:port``) for messages and logs.

    The password is also registered with the log redaction (`register_secret`), so a client library
    that prints the full URL in an error cannot leak it through the engine's log either.
    """
    parts = urlsplit(url)
    if parts.password:
        register_secret(parts.password)
        register_secret(unquote(parts.password))
    try:
        port = parts.port
    except ValueError:
        port = None
    host = parts.hostname or "localhost"
    address = f"[{host}]:{port}" if ":" in host and port else (f"{host}:{port}" if port else host)
    if parts.password is None:
        return url, address
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = f"{parts.username}:***@" if parts.username else ":***@"
    masked = SplitResult(parts.scheme, user + netloc, parts.path, parts.query, parts.fragment)
    return urlunsplit(masked), address


def short_key(text: str, limit: int = 80) -> str:
    """`repr` of a possibly 10,000-character key, cut so error messages stay readable."""
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}...({len(text)} chars)"


def describe_target(entity: str, key: str | None) -> str:
    """``entity 'signals' key 'BTCUSDT-rsi'`` (or without the key for whole-entity operations)."""
    return f"entity {entity!r}" if key is None else f"entity {entity!r} key {short_key(key)}"


async def with_deadline(
    call: Callable[[], Awaitable[_T]],
    *,
    timeout: float,
    action: str,
    entity: str,
    key: str | None,
    where: str,
    failures: tuple[type[BaseException], ...],
) -> _T:
    """Run one backend operation under `timeout`; a server error, a refused connection or the
    deadline becomes a `PersistError` naming the operation, entity, key and server (`where`).

    The deadline covers the whole operation (connecting, a client-side retry, the reply), so a dead
    server costs a tick at most `timeout` seconds, whatever the client library's own retry policy.
    Messages go through `redact`, in case a client library echoes a URL with its password.
    """
    try:
        async with asyncio.timeout(timeout):
            return await call()
    except TimeoutError as exc:
        reason = f"no answer within {timeout:g} s" + (f" ({exc})" if str(exc) else "")
        error = PersistError(redact(f"cannot {action} {describe_target(entity, key)} on {where}: {reason}"))
        raise error from exc
    except failures as exc:
        reason = str(exc) or type(exc).__name__
        error = PersistError(
            redact(f"cannot {action} {describe_target(entity, key)} on {where}: {type(exc).__name__}: {reason}")
        )
        raise error from exc

"""Client order ids: deterministic from (signal id, role, attempt), so a replayed placement is the same order.

Why deterministic: after a crash or a lost reply the executor cannot know whether the exchange got an
order. Placing it again under the *same* client order id lets the exchange refuse the duplicate (and
lets `fetch` find the original), which is what makes a signal's entry happen exactly once.

Format: ``bk<role><attempt>-<tag>``

- ``role`` one letter: ``e`` entry, ``x`` exit, ``c`` cancel;
- ``attempt`` base 36, no leading zeros (``0`` for the first): a new attempt is a deliberately new order
  (e.g. an exit re-sent after the exchange rejected the first);
- ``tag`` = the first 16 bytes of BLAKE2b(signal id), URL-safe base64 without padding (22 characters):
  the signal id itself may be any text (a user's `SignalDto.id`), longer than the exchange allows.

At most 36 characters (Binance's `newClientOrderId` limit) in the charset ``[.A-Z:/a-z0-9_-]``. Distinct
(signal id, role, attempt) give distinct ids as long as 128-bit BLAKE2b digests of distinct signal ids
differ (a collision is not a practical concern); every order of one signal shares its tag, so a
reconciliation can find them by suffix.
"""

from __future__ import annotations

import base64
import hashlib
import re
from typing import Final, get_args

from ..engine.errors import SchemaError
from ..engine.models import OrderRole

__all__ = ["CLIENT_ORDER_ID_PATTERN", "MAX_ATTEMPT", "client_order_id", "parse_client_order_id", "signal_tag"]

_ROLE_CODE: Final[dict[str, str]] = {"entry": "e", "exit": "x", "cancel": "c"}
_CODE_ROLE: Final[dict[str, OrderRole]] = {"e": "entry", "x": "exit", "c": "cancel"}
_DIGITS: Final = "0123456789abcdefghijklmnopqrstuvwxyz"
MAX_ATTEMPT: Final = 36**10 - 1
"""The largest attempt number: ten base-36 digits keep the id within 36 characters."""
CLIENT_ORDER_ID_PATTERN: Final = re.compile(r"^bk([exc])([0-9a-z]{1,10})-([A-Za-z0-9_-]{22})$")


def signal_tag(signal_id: str) -> str:
    """The 22-character tag every client order id of `signal_id` ends with."""
    digest = hashlib.blake2b(signal_id.encode("utf-8"), digest_size=16).digest()
    return base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")


def _base36(n: int) -> str:
    if n == 0:
        return "0"
    out: list[str] = []
    while n:
        n, r = divmod(n, 36)
        out.append(_DIGITS[r])
    return "".join(reversed(out))


def client_order_id(signal_id: str, role: OrderRole, attempt: int = 0) -> str:
    """The client order id of the `attempt`-th order of `role` for `signal_id` (see the module docstring)."""
    if not isinstance(signal_id, str) or not signal_id:
        raise SchemaError(f"client_order_id: signal_id must be a non-empty string, got {signal_id!r}")
    code = _ROLE_CODE.get(role)
    if code is None:
        raise SchemaError(f"client_order_id: role must be one of {', '.join(get_args(OrderRole))}, got {role!r}")
    if isinstance(attempt, bool) or not isinstance(attempt, int) or not 0 <= attempt <= MAX_ATTEMPT:
        raise SchemaError(f"client_order_id: attempt must be an int in 0..{MAX_ATTEMPT}, got {attempt!r}")
    return f"bk{code}{_base36(attempt)}-{signal_tag(signal_id)}"


def parse_client_order_id(value: str) -> tuple[OrderRole, int, str] | None:
    """(role, attempt, tag) of an id `client_order_id` made, or None for any other text."""
    match = CLIENT_ORDER_ID_PATTERN.match(value)
    if match is None:
        return None
    attempt_text = match.group(2)
    if len(attempt_text) > 1 and attempt_text[0] == "0":
        return None  # not canonical: client_order_id never writes leading zeros
    return _CODE_ROLE[match.group(1)], int(attempt_text, 36), match.group(3)

"""Turning user-given names (symbols, strategy names) into safe file names and unique state keys.

State keys
([decision 14](../../docs/design/decisions.md#decision-14-persistence-layout-follows-the-seed),
[hardening item 2](../../docs/design/decisions.md#hardening-2-injective-state-keys)).
Persisted state is keyed by a *pair* of user names:
``<symbol>-<strategy>`` for signals, schedules and partial levels, ``<strategy>:<symbol>`` for a
position in a risk registry. Joining raw names is not injective (``("BTC-PERP", "x")`` and
``("BTC", "PERP-x")`` both give ``BTC-PERP-x``), so the *first* name is escaped before the join:

* in the first name, ``%`` becomes ``%25`` and the separator becomes ``%2D`` (``-``) or ``%3A``
  (``:``); nothing else changes, and the second name is kept as it is;
* the key is ``<escaped first><separator><second>``.

The escaped first name holds no separator, so the key's first separator is the join, and unescaping
the part before it gives the first name back exactly (`split_pair_key`): no two pairs share a key.
Every name without ``%`` or the separator in the first position keeps the seed's key, so
``BTCUSDT-rsi`` and ``BTCUSDT-sma-1m`` (files ``signals/BTCUSDT-sma-1m.json``) are unchanged, while
``("BTC-PERP", "x")`` becomes ``BTC%2DPERP-x``. The storage backend then makes the key safe for itself
(`FilePersist` percent-encodes ``/``, ``:`` and ``%``), which is injective as well.

`legacy_pair_key` is the pre-escaping key, used only to find state written by older versions.

Report files (`pair_file_stem`) are named ``<symbol>_<strategy>``: each name is percent-encoded (every
byte outside ``[A-Za-z0-9.-]`` and, in the symbol, ``_``), so the first ``_`` is the join and no two
pairs share a report; ``BTCUSDT_sma-cross`` stays readable and ``BTC/USDT`` becomes ``BTC%2FUSDT``.
Reports named by one name (`name_file_stem`: a walker, a strategy's heatmap) encode it the same way.

Message subjects (`subject_token`): a NATS subject is a ``.``-separated list of tokens where ``*`` and
``>`` are wildcards and whitespace ends the subject, so a user name becomes one token by
percent-encoding every UTF-8 byte outside ``[A-Za-z0-9_-]`` (``BTC.PERP`` -> ``BTC%2EPERP``, ``a b`` ->
``a%20b``); the empty name, which would be an empty (invalid) token, is a lone ``%``, which no
non-empty name encodes to. `parse_subject_token` inverts it and accepts canonical tokens only, so one
name has one token and one token one name.
"""

from __future__ import annotations

import hashlib
import re

__all__ = [
    "POSITION_SEPARATOR",
    "SIGNAL_SEPARATOR",
    "legacy_pair_key",
    "name_file_stem",
    "pair_file_stem",
    "pair_key",
    "parse_subject_token",
    "split_pair_key",
    "subject_token",
]

_KEY_ESCAPES = {"%": "%25", "-": "%2D", ":": "%3A"}
_KEY_UNESCAPE = re.compile(r"%(25|2D|3A)")
_KEY_UNESCAPES = {"25": "%", "2D": "-", "3A": ":"}
SIGNAL_SEPARATOR = "-"
POSITION_SEPARATOR = ":"


_STEM_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789.-")
_MAX_STEM = 200  # bytes; file systems allow 255 for a whole name


def _encode_name(name: str, keep_underscore: bool) -> str:
    safe = _STEM_SAFE | {ord("_")} if keep_underscore else _STEM_SAFE
    encoded = "".join(chr(b) if b in safe else f"%{b:02X}" for b in name.encode("utf-8", "surrogatepass"))
    return "%2E" + encoded[1:] if encoded.startswith(".") else encoded or "%00"


def pair_file_stem(symbol: str, strategy_name: str) -> str:
    """The injective file stem ``<symbol>_<strategy>`` of a per-pair report (see the module docstring).

    A stem too long for a file name keeps a readable prefix and ends in a sha256 of both names.
    """
    stem = f"{_encode_name(symbol, False)}_{_encode_name(strategy_name, True)}"
    if len(stem) <= _MAX_STEM:
        return stem
    digest = hashlib.sha256(f"{symbol}\0{strategy_name}".encode("utf-8", "surrogatepass")).hexdigest()
    return f"{stem[: _MAX_STEM - 66]}~{digest}"


def name_file_stem(name: str) -> str:
    """The file stem of a report named by one name (a walker's, or a strategy's heatmap): percent-encoded
    like the strategy half of `pair_file_stem` (``sma-cross`` stays, ``a/b`` becomes ``a%2Fb``), so no
    name can leave the report directory; a stem too long for a file name ends in a sha256 of the name."""
    stem = _encode_name(name, True)
    if len(stem) <= _MAX_STEM:
        return stem
    digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()
    return f"{stem[: _MAX_STEM - 66]}~{digest}"


def pair_key(first: str, second: str, separator: str = SIGNAL_SEPARATOR) -> str:
    """The injective key of two names joined by `separator` ("-" or ":"); see the module docstring."""
    if "%" in first or separator in first:
        first = first.replace("%", "%25").replace(separator, _KEY_ESCAPES[separator])
    return f"{first}{separator}{second}"


def split_pair_key(key: str, separator: str = SIGNAL_SEPARATOR) -> tuple[str, str]:
    """The two names of a `pair_key`; raises ValueError naming the key when it is not one."""
    first, found, second = key.partition(separator)
    if not found:
        raise ValueError(f"key {key!r} has no {separator!r} between two names")
    name = _KEY_UNESCAPE.sub(lambda m: _KEY_UNESCAPES[m.group(1)], first)
    if pair_key(name, second, separator) != key:  # only canonical keys: one key per pair
        raise ValueError(f"key {key!r}: {first!r} is not an escaped name")
    return name, second


def legacy_pair_key(first: str, second: str, separator: str = SIGNAL_SEPARATOR) -> str:
    """The key older versions used (plain join, not injective): only to find their files."""
    return f"{first}{separator}{second}"


_TOKEN_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
_TOKEN_ESCAPE = re.compile(r"%([0-9A-F]{2})")


def subject_token(name: str) -> str:
    """`name` as one message-subject token: no ``.``, ``*``, ``>``, whitespace or empty token, injective
    (see the module docstring)."""
    if not name:
        return "%"
    return "".join(chr(b) if b in _TOKEN_SAFE else f"%{b:02X}" for b in name.encode("utf-8", "surrogatepass"))


def parse_subject_token(token: str) -> str:
    """The name of a `subject_token`; raises ValueError naming the token when it is not a canonical one."""
    if token == "%":
        return ""
    out = bytearray()
    i = 0
    while i < len(token):
        if token[i] == "%":
            match = _TOKEN_ESCAPE.match(token, i)
            if match is None:
                raise ValueError(f"subject token {token!r}: bad escape at {i}")
            out.append(int(match.group(1), 16))
            i += 3
        else:
            out.extend(token[i].encode("utf-8"))
            i += 1
    try:
        name = out.decode("utf-8", "surrogatepass")
    except UnicodeDecodeError:
        raise ValueError(f"subject token {token!r} is not UTF-8") from None
    if subject_token(name) != token:
        raise ValueError(f"subject token {token!r} is not canonical")
    return name

"""Exchange credentials: `Secret` (a key that does not print), `.env` reading, and where keys come from.

Split out of `ccxt_exchange.py`: the rules for finding an API key (argument, else environment, else
`.env` file) and for keeping it out of every `str`, `repr`, f-string and pickle are self-contained and
worth reading on their own; the adapter only asks for the three credentials and reveals them to the
ccxt client.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..engine.errors import SchemaError

__all__ = ["Secret", "read_env_file"]

_SECRET_KEYS = ("apiKey", "secret", "password", "uid", "privateKey", "walletAddress", "token")
"""ccxt constructor parameters that hold credentials: taken out of `config=` and kept as `Secret`s."""


class Secret:
    """A credential that does not print: `str()` and `repr()` are `'***'`; `reveal()` gives the value."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "'***'"

    def __str__(self) -> str:
        return "***"

    def __format__(self, spec: str) -> str:
        return "***"

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(("Secret", self._value))

    def __reduce__(self) -> Any:
        raise TypeError("a Secret cannot be pickled")


def read_env_file(path: str | os.PathLike[str]) -> dict[str, str]:
    """`KEY=value` pairs of a `.env` file (no new dependency, `os.environ` is left alone).

    Understands blank lines, `# comments`, an optional `export ` prefix, single- or double-quoted
    values (double quotes take `\\n`, `\\"` and `\\\\` escapes), and ` #` comments after unquoted
    values. A line without `=` is an error naming the line number, never the line (it may be a key).
    """
    text = Path(path).read_text(encoding="utf-8-sig")
    values: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export "):].lstrip()
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep or not key or not key.replace("_", "").replace(".", "").isalnum():
            raise SchemaError(f"env_file: {Path(path).name} line {number}: expected KEY=value")
        value = value.strip()
        if value[:1] in ("'", '"'):
            quote = value[0]
            end = _closing_quote(value, quote)
            if end < 0:
                raise SchemaError(f"env_file: {Path(path).name} line {number}: unterminated {quote} quote")
            value = value[1:end]
            if quote == '"':
                value = _unescape(value)
        else:
            hash_at = value.find(" #")
            if hash_at >= 0:
                value = value[:hash_at].rstrip()
        values[key] = value
    return values


def _closing_quote(value: str, quote: str) -> int:
    i = 1
    while i < len(value):
        if value[i] == "\\" and quote == '"':
            i += 2
            continue
        if value[i] == quote:
            return i
        i += 1
    return -1


def _unescape(value: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(value):
        ch = value[i]
        if ch == "\\" and i + 1 < len(value):
            nxt = value[i + 1]
            out.append({"n": "\n", "t": "\t", "r": "\r"}.get(nxt, nxt))
            i += 2
            continue
        out.append(ch)
        i += 1
    return "".join(out)


def _credential(
    given: str | Secret | None, names: tuple[str, ...], file_values: Mapping[str, str]
) -> Secret | None:
    """Argument, else the first non-empty environment variable, else the `.env` file."""
    if isinstance(given, Secret):
        return given if given else None
    if given:
        return Secret(given)
    for source in (os.environ, file_values):
        for name in names:
            value = source.get(name)
            if value:
                return Secret(value)
    return None


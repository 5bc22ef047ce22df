"""Signal notes are stored as one line of plain text (reports are tables; markup would break them)."""

from __future__ import annotations

import re
from functools import lru_cache

from .errors import SignalValidationError

__all__ = ["normalize_note"]

_RULES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"```.*?```", re.S), ""),
    (re.compile(r"`([^`]*)`"), r"\1"),
    (re.compile(r"!\[([^\]]*)\]\([^)]*\)"), r"\1"),
    (re.compile(r"\[([^\]]*)\]\([^)]*\)"), r"\1"),
    (re.compile(r"^\s{0,3}#{1,6}\s+", re.M), ""),
    (re.compile(r"\*\*\*(.+?)\*\*\*"), r"\1"),
    (re.compile(r"\*\*(.+?)\*\*"), r"\1"),
    (re.compile(r"\*(.+?)\*"), r"\1"),
    (re.compile(r"___(.+?)___"), r"\1"),
    (re.compile(r"__(.+?)__"), r"\1"),
    (re.compile(r"\b_(.+?)_\b"), r"\1"),
    (re.compile(r"~~(.+?)~~"), r"\1"),
    (re.compile(r"^[ \t]*(?:[-*+]|\d+\.)\s+", re.M), "• "),
    (re.compile(r"^[ \t]*>\s?", re.M), ""),
    (re.compile(r"^[ \t]*([*\-_])(?:[ \t]*\1){2,}[ \t]*$", re.M), ""),
    (re.compile(r"<[^>]+>"), ""),
    (re.compile(r"\s+"), " "),
)


def normalize_note(note: object) -> str:
    """Plain one-line text of a markdown-ish note; None/empty gives ""."""
    if not note:
        return ""
    if not isinstance(note, str):
        raise SignalValidationError(f"Invalid signal: note must be a string, got {note!r}")
    if type(note) is not str:  # a str subclass may override __hash__/__eq__: never cache it
        note = str.__str__(note)
    if len(note) > _CACHED_LEN:  # bounded memory: a huge one-off note is not worth keeping
        return _normalize.__wrapped__(note)
    return _normalize(note)


_CACHED_LEN = 2048


@lru_cache(maxsize=4096)
def _normalize(note: str) -> str:
    """Cached: a strategy usually repeats a handful of notes, and the 17 regex passes were 30 % of a
    backtest's time. Only `str` reaches here (a subclass could hash alike yet differ), so the cache
    is bounded and pure."""
    text = note
    for pattern, repl in _RULES:
        text = pattern.sub(repl, text)
    return text.strip()

"""Signal notes are stored as one line of plain text (reports are tables; markup would break them)."""

from __future__ import annotations

import re

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
    text = note
    for pattern, repl in _RULES:
        text = pattern.sub(repl, text)
    return text.strip()

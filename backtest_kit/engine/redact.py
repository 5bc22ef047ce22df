"""Secret redaction for every line the library and its adapters log.

Why here and not only at the call sites: the secrets reach log text in places the library does not
write itself. ccxt logs every request at DEBUG (`GET https://.../account?timestamp=..&signature=..,
Request: {'X-MBX-APIKEY': '<key>'}`), prints the same with `verbose=True`, and puts the signed URL into
its exception messages, which the engine then logs on `listen_error`. So the text is redacted where
it becomes a log line, by two rules:

- **Known values.** Adapters `register_secret(value)` their API keys, secrets and passwords; every
  occurrence (also URL-encoded) becomes `***`. Values shorter than `MIN_SECRET_LENGTH` are not
  registered: replacing every `a` in a log would destroy it and protect nothing.
- **Sensitive names.** The value of a header / JSON entry or a query / form parameter whose name says
  it is a credential (`X-MBX-APIKEY`, `OK-ACCESS-SIGN`, `signature=`, `apiKey=`, `Authorization`,
  `passphrase`, `token`, `listenKey`, ...) becomes `***`, and so does the credential after `Bearer`.
  This covers signatures (derived per request, never registered) and keys of clients the
  library did not create.

`RedactingFilter` applies both to the records of a stdlib logger (records below the logger's level are
never created, so a silent logger costs nothing); `EngineLogger` redacts what the engine logs itself.
"""

from __future__ import annotations

import logging
import re
import threading
from urllib.parse import quote

__all__ = ["MIN_SECRET_LENGTH", "RedactingFilter", "install_log_redaction", "redact", "register_secret"]

MASK = "***"
MIN_SECRET_LENGTH = 4
"""Shorter values are not registered as secrets (see the module docstring)."""

# A credential's name: an optional prefix ending in `-`, `_` or `.` (`X-MBX-`, `OK-ACCESS-`), then a
# word that means "credential". Whole names only: `signal`, `keys`, `symbol` do not match.
_NAME = (
    r"(?:[\w.-]*[-_.])?"
    r"(?:api[-_]?key|apikey|key|secret(?:[-_]?key)?|sign|signature|passphrase|password|passwd|token"
    r"|authorization|cookie|listen[-_]?key|access[-_]?key(?:[-_]?id)?)"
)
# Every name above contains one of these (`bearer` for _BEARER); text without any skips the regexes.
_NAME_WORDS = ("key", "secret", "sign", "pass", "token", "auth", "cookie", "bearer")
# 'X-MBX-APIKEY': 'value' / "apiKey": "value" (dict reprs, JSON bodies, CIMultiDict reprs)
_QUOTED_ENTRY = re.compile(rf"""(?P<q>['"])(?P<name>{_NAME})(?P=q)(?P<sep>\s*:\s*)(?P<v>'[^']*'|"[^"]*")""",
                           re.IGNORECASE)
# ?signature=value / &apiKey=value / a form body `timestamp=1&signature=value` / api_key='value'
_PARAM = re.compile(rf"""(?<![\w.-])(?P<name>{_NAME})=(?P<v>'[^']*'|"[^"]*"|[^&\s'",;)}}\]]+)""", re.IGNORECASE)
# Authorization: Bearer <token>
_BEARER = re.compile(r"\b(?P<scheme>bearer)\s+(?P<v>[\w.~+/=-]{8,})", re.IGNORECASE)

_lock = threading.Lock()
_known: tuple[str, ...] = ()  # copy-on-write: readers never see a set changing size


def register_secret(value: str | None) -> None:
    """Mask `value` (and its URL-encoded form) in every log line from now on; short values are ignored."""
    global _known
    if not isinstance(value, str) or len(value) < MIN_SECRET_LENGTH:
        return
    forms = {value, quote(value, safe=""), quote(value, safe="/")}
    with _lock:
        # longest first, so a secret that contains another one is masked whole
        _known = tuple(sorted(set(_known) | forms, key=len, reverse=True))


def redact(text: str) -> str:
    """`text` with every registered secret and every credential-named value replaced by `***`."""
    for value in _known:
        if value in text:
            text = text.replace(value, MASK)
    lowered = text.lower()
    if not any(word in lowered for word in _NAME_WORDS):  # a response body full of numbers: done
        return text
    text = _QUOTED_ENTRY.sub(_mask_entry, text)
    text = _PARAM.sub(_mask_param, text)
    return _BEARER.sub(lambda m: f"{m['scheme']} {MASK}", text)


def _masked_value(value: str) -> str:
    """`***`, inside the value's own quotes when it had them."""
    return f"{value[0]}{MASK}{value[0]}" if value[:1] in ("'", '"') else MASK


def _mask_entry(match: re.Match[str]) -> str:
    return f"{match['q']}{match['name']}{match['q']}{match['sep']}{_masked_value(match['v'])}"


def _mask_param(match: re.Match[str]) -> str:
    return f"{match['name']}={_masked_value(match['v'])}"


class RedactingFilter(logging.Filter):
    """Rewrites a record's message (and any traceback text) through `redact`; never drops a record.

    A logger's filters run only for records created on that very logger (not for records propagated
    from its children), so it is installed on the logger that does the logging.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed format string: let the handler report it as usual
            return True
        record.msg, record.args = redact(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


_FILTER = RedactingFilter()


def install_log_redaction(logger: logging.Logger | logging.LoggerAdapter[logging.Logger] | object) -> None:
    """Add the redacting filter to `logger` (a `logging.Logger`, or the logger inside a `LoggerAdapter`)
    once; anything else (a custom object) is left alone."""
    if isinstance(logger, logging.LoggerAdapter):
        logger = logger.logger
    if isinstance(logger, logging.Logger) and _FILTER not in logger.filters:
        logger.addFilter(_FILTER)

"""Notifiers: deliver engine events to people and systems without slowing the engine.

    notifier = bk.TelegramNotifier(token, chat_id)
    bk.add_notifier(notifier)                       # live trades, risk rejections, partials, errors
    bk.add_notifier(bk.LogNotifier(), channels=["error"])
    bk.listen_risk(notifier)                        # a notifier is also a plain listener

See `docs/risk-sizing-notifiers.md`.
"""

from .base import DEFAULT_CHANNELS, Formatter, Notifier, NotifierStats, QueuedAdapter, QueuedNotifier, attach_notifier
from .builtin import ConsoleNotifier, LogNotifier, TelegramNotifier, WebhookNotifier
from .format import default_filter, default_format, event_kind, event_payload, format_number, partial_side
from .http import DeliveryError, HttpClient, HttpResponse, safe_url

__all__ = [
    "DEFAULT_CHANNELS",
    "ConsoleNotifier",
    "DeliveryError",
    "Formatter",
    "HttpClient",
    "HttpResponse",
    "LogNotifier",
    "Notifier",
    "NotifierStats",
    "QueuedAdapter",
    "QueuedNotifier",
    "TelegramNotifier",
    "WebhookNotifier",
    "attach_notifier",
    "default_filter",
    "default_format",
    "event_kind",
    "event_payload",
    "format_number",
    "partial_side",
    "safe_url",
]

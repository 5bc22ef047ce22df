"""Subscriptions to engine events (`listen_*`) and ready notifiers (log, console, webhook, Telegram)."""

from .notifiers import (
    DEFAULT_CHANNELS,
    ConsoleNotifier,
    LogNotifier,
    Notifier,
    NotifierStats,
    QueuedAdapter,
    QueuedNotifier,
    TelegramNotifier,
    WebhookNotifier,
    default_filter,
    default_format,
)
from .subscriptions import ListenMixin

__all__ = [
    "DEFAULT_CHANNELS",
    "ConsoleNotifier",
    "ListenMixin",
    "LogNotifier",
    "Notifier",
    "NotifierStats",
    "QueuedAdapter",
    "QueuedNotifier",
    "TelegramNotifier",
    "WebhookNotifier",
    "default_filter",
    "default_format",
]

"""Subscriptions to engine events (`listen_*`) and, later, ready notifiers."""

from .subscriptions import ListenMixin

__all__ = ["ListenMixin"]

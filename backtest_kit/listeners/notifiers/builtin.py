"""Ready notifiers: log / console (synchronous, local), webhook and Telegram (queued HTTP).

    engine.add_notifier(bk.LogNotifier())
    engine.add_notifier(bk.WebhookNotifier("https://hooks.example.com/abc", headers={"X-Key": key}))
    engine.add_notifier(bk.TelegramNotifier(token, chat_id), filter=critical_only)

Secrets: the Telegram token and the webhook URL/headers are never written to logs or error messages
(the bot URL is shown as `…/bot***/sendMessage`, a webhook only as `scheme://host/…`).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import IO, Any

from .base import Formatter, NotifierStats, QueuedNotifier
from .format import default_format, event_kind, event_payload
from .http import DeliveryError, HttpClient, HttpResponse, safe_url

__all__ = ["ConsoleNotifier", "LogNotifier", "TelegramNotifier", "WebhookNotifier"]

TELEGRAM_MAX_TEXT = 4096


class _LocalNotifier:
    """A notifier that writes synchronously (no queue: writing a line is not network I/O)."""

    name = "local"

    def __init__(self, formatter: Formatter | None = None) -> None:
        self.formatter: Formatter = formatter or default_format
        self.stats = NotifierStats()

    def submit(self, event: Any) -> bool:
        self.stats.submitted += 1
        try:
            text = self.formatter(event)
            if text is None:
                self.stats.skipped += 1
                return True
            self._write(text, event)
        except Exception:
            self.stats.failed += 1
            return False
        self.stats.sent += 1
        return True

    def __call__(self, event: Any) -> None:
        self.submit(event)

    async def notify(self, event: Any) -> None:
        self.submit(event)

    async def aclose(self, timeout: float | None = None) -> None:
        return None

    def _write(self, text: str, event: Any) -> None:
        raise NotImplementedError


class LogNotifier(_LocalNotifier):
    """Writes each event's text to a `logging.Logger` (default `backtest_kit.notify`); errors and risk
    rejections at WARNING, everything else at `level`."""

    name = "log"

    def __init__(self, logger: logging.Logger | None = None, *, level: int = logging.INFO,
                 formatter: Formatter | None = None) -> None:
        super().__init__(formatter)
        self.logger = logger or logging.getLogger("backtest_kit.notify")
        self.level = level

    def _write(self, text: str, event: Any) -> None:
        level = logging.WARNING if event_kind(event) in ("error", "risk") else self.level
        self.logger.log(level, text)


class ConsoleNotifier(_LocalNotifier):
    """Prints each event's text to `stream` (default: the current `sys.stdout`)."""

    name = "console"

    def __init__(self, stream: IO[str] | None = None, *, formatter: Formatter | None = None) -> None:
        super().__init__(formatter)
        self.stream = stream

    def _write(self, text: str, event: Any) -> None:
        stream = self.stream or sys.stdout
        print(text, file=stream, flush=True)


def _check_response(resp: HttpResponse, where: str, redact: Callable[[str], str]) -> None:
    if 200 <= resp.status < 300:
        return
    snippet = redact(resp.body[:200].decode("utf-8", "replace")).replace("\n", " ")
    retryable = resp.status == 429 or resp.status >= 500 or resp.status == 408
    raise DeliveryError(f"POST {where} answered HTTP {resp.status}: {snippet}", retryable=retryable,
                        retry_after=resp.retry_after)


class WebhookNotifier(QueuedNotifier):
    """POSTs each event as JSON to `url`.

    Default body: `{"kind": "closed", "text": "<formatted text>", "event": {...fields...}}`. Pass
    `body=lambda event, text: {...}` for another shape (e.g. `{"content": text}` for Discord,
    `{"text": text}` for Slack). `headers` are sent with every request (e.g. an API key) and never
    logged. Queue, retry and timeout options: see `QueuedNotifier`.
    """

    name = "webhook"

    def __init__(
        self,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        body: Callable[[Any, str], Any] | None = None,
        formatter: Formatter | None = None,
        use_aiohttp: bool | None = None,
        **options: Any,
    ) -> None:
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ValueError("url: expected an http:// or https:// URL")
        super().__init__(formatter=formatter, **options)
        self._url = url
        self._headers = dict(headers or {})
        self._body = body or _default_body
        self._http = HttpClient(use_aiohttp=use_aiohttp)

    @property
    def url(self) -> str:
        """The target, without path and query (they may hold a secret)."""
        return safe_url(self._url)

    def _secrets(self) -> Iterable[str]:
        return (self._url, *self._headers.values())

    async def send(self, text: str, event: Any) -> None:
        resp = await self._http.post_json(self._url, self._body(event, text), headers=self._headers,
                                          timeout=self.timeout)
        _check_response(resp, safe_url(self._url), self.redact)

    async def _close_transport(self) -> None:
        await self._http.aclose()


def _default_body(event: Any, text: str) -> dict[str, Any]:
    return {"kind": event_kind(event), "text": text, "event": event_payload(event)}


class TelegramNotifier(QueuedNotifier):
    """Sends each event's text with the Telegram Bot API `sendMessage` to `chat_id`.

    `base_url` (default `https://api.telegram.org`) can point at a local test server or a proxy.
    `parse_mode` ("HTML" / "MarkdownV2") is off by default, so the plain default texts need no
    escaping; texts longer than 4096 characters are cut. A 429 answer's `retry_after` is honoured
    (capped by `max_backoff`). The token never appears in logs, errors or `repr`.
    """

    name = "telegram"

    def __init__(
        self,
        token: str,
        chat_id: int | str,
        *,
        base_url: str = "https://api.telegram.org",
        parse_mode: str | None = None,
        disable_notification: bool = False,
        formatter: Formatter | None = None,
        use_aiohttp: bool | None = None,
        **options: Any,
    ) -> None:
        if not isinstance(token, str) or not token:
            raise ValueError("token: expected the bot token string")
        if isinstance(chat_id, bool) or not isinstance(chat_id, int | str) or chat_id == "":
            raise ValueError(f"chat_id: expected an int or a string, got {type(chat_id).__name__}")
        super().__init__(formatter=formatter, **options)
        self._token = token
        self.chat_id = chat_id
        self.base_url = base_url.rstrip("/")
        self.parse_mode = parse_mode
        self.disable_notification = disable_notification
        self._http = HttpClient(use_aiohttp=use_aiohttp)

    @property
    def url(self) -> str:
        """The sendMessage URL with the token masked."""
        return f"{self.base_url}/bot***/sendMessage"

    def _secrets(self) -> Iterable[str]:
        return (self._token,)

    async def send(self, text: str, event: Any) -> None:
        payload: dict[str, Any] = {"chat_id": self.chat_id, "text": text[:TELEGRAM_MAX_TEXT]}
        if self.parse_mode:
            payload["parse_mode"] = self.parse_mode
        if self.disable_notification:
            payload["disable_notification"] = True
        resp = await self._http.post_json(f"{self.base_url}/bot{self._token}/sendMessage", payload,
                                          timeout=self.timeout)
        if resp.status == 429:
            data = resp.json()
            params = data.get("parameters") if isinstance(data, dict) else None
            retry_after = params.get("retry_after") if isinstance(params, dict) else None
            if isinstance(retry_after, int | float) and resp.retry_after is None:
                resp = HttpResponse(resp.status, resp.body, float(retry_after))
        _check_response(resp, self.url, self.redact)

    async def _close_transport(self) -> None:
        await self._http.aclose()

"""Secrets never reach a log line: ccxt's DEBUG log and `verbose` output, the engine's own logger.

The integration tests drive the real ccxt client against the local Binance-protocol server's signed
`/api/v3/account` endpoint (which checks the API key header and the HMAC signature, so the keys
provably were used) and read what real logging handlers wrote. The `redact` rules get property tests.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ccxt
import pytest
from binance_server import ACCOUNT, BinanceServer
from hypothesis import given
from hypothesis import strategies as st

import backtest_kit as bk
from backtest_kit.adapters.ccxt import CcxtExchange, add_ccxt_exchange
from backtest_kit.engine import redact as redaction
from backtest_kit.engine.logger import EngineLogger
from backtest_kit.engine.redact import RedactingFilter, redact, register_secret

KEY = "vmPUZE6mv9SD5VNHk4HlWFsOr6aKE2zvsw0MuIgwCIPy6utIco14y7Ju91duEh8A"  # Binance-shaped, 64 chars
SECRET = "NhqPtmdSJYdKjVHjA7PZj4Mge3R5YNiP1e3UZjInClVN65XAbvqqM6A7H5fATj0j"
FAST: dict[str, Any] = {"enableRateLimit": False, "timeout": 2000, "timeout_on_exit": 0}


@pytest.fixture(scope="module")
def source() -> bk.CsvCandles:
    return bk.CsvCandles(bk.bundled_sample_path())


@pytest.fixture
def debug_log(tmp_path: Path) -> Iterator[Path]:
    """Everything logged at DEBUG or above, on any logger, formatted by a real handler into a file."""
    path = tmp_path / "debug.log"
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield path
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
        handler.close()


def signatures(server: BinanceServer) -> list[str]:
    return [query["signature"] for path, query in server.requests if path == ACCOUNT and "signature" in query]


def leaked(text: str, server: BinanceServer) -> list[str]:
    return [s for s in (KEY, SECRET, *signatures(server)) if s in text]


@pytest.mark.parametrize("client_logger", [None, "myapp.exchange"])
async def test_ccxt_debug_log_of_a_private_endpoint_is_redacted(
    tmp_path: Path, binance_server_factory: Any, source: bk.CsvCandles, debug_log: Path, client_logger: str | None
) -> None:
    """Issue item 19: at DEBUG ccxt logged `X-MBX-APIKEY: <key>` and `...&signature=<hmac>`."""
    srv = await binance_server_factory(source, api_keys={KEY: SECRET})
    engine = bk.Engine(persist_dir=tmp_path / "data", dump_dir=tmp_path / "dump")
    config = {**FAST, **({"logger": logging.getLogger(client_logger)} if client_logger else {})}
    exchange = add_ccxt_exchange("binance", "binance", engine=engine, api_urls=srv.api_urls(), config=config,
                                 api_key=KEY, secret=SECRET)
    await exchange.load_markets()
    client = exchange.client
    balance = await client.fetch_balance()
    # the server accepted the key header and the HMAC signature: the real credentials were used
    assert balance["BTC"]["free"] == 0.5 and srv.headers[-1]["X-MBX-APIKEY"] == KEY
    srv.fail("500", path=ACCOUNT)
    with pytest.raises(ccxt.ExchangeNotAvailable) as info:
        await client.fetch_balance()
    assert signatures(srv)[-1] in str(info.value)  # ccxt's own message holds the signed URL ...
    translated = exchange._translate(info.value, "fetch_balance")
    await engine.report_error(info.value)  # ... which the engine logs when a strategy lets it escape
    await engine.close()

    text = debug_log.read_text(encoding="utf-8")
    assert len(signatures(srv)) == 2
    assert leaked(text, srv) == [] and leaked(str(translated), srv) == []
    # the lines are there, with their secrets masked (so this test would see a leak)
    logger_name = client_logger or "ccxt.base.exchange"
    request_lines = [line for line in text.splitlines() if line.startswith(logger_name) and ACCOUNT in line]
    assert len(request_lines) >= 3  # two requests and at least one response
    assert "'X-MBX-APIKEY': '***'" in text and "signature=***" in text
    assert any(line.startswith("backtest_kit WARNING error") and "signature=***" in line
               for line in text.splitlines())
    assert "signature=***" in str(translated)


async def test_ccxt_verbose_output_is_redacted(
    tmp_path: Path, binance_server_factory: Any, source: bk.CsvCandles, capsys: pytest.CaptureFixture[str]
) -> None:
    """`verbose=True` makes ccxt print every request and response; the adapter's client prints them redacted."""
    srv = await binance_server_factory(source, api_keys={KEY: SECRET})
    engine = bk.Engine(persist_dir=tmp_path / "data", dump_dir=tmp_path / "dump")
    exchange = add_ccxt_exchange("binance", "binance", engine=engine, api_urls=srv.api_urls(),
                                 config={**FAST, "verbose": True}, api_key=KEY, secret=SECRET)
    await exchange.load_markets()
    await exchange.client.fetch_balance()
    await engine.close()
    out = capsys.readouterr().out
    assert "fetch Request:" in out and ACCOUNT in out and "X-MBX-APIKEY" in out
    assert leaked(out, srv) == []


def test_a_custom_engine_logger_gets_redacted_text() -> None:
    """The engine logs `repr(error)`; with `set_logger(obj)` the object gets the text already masked."""
    CcxtExchange("redaction-test", "binance", api_key=KEY, secret=SECRET)  # registers the keys
    lines: list[tuple[str, ...]] = []

    class Recorder:
        def _add(self, topic: str, *args: Any) -> None:
            lines.append((topic, *args))

        log = debug = info = warn = _add

    logger = EngineLogger(Recorder())
    error = ccxt.AuthenticationError(f'binance GET /api/v3/account?timestamp=1&signature=abc123 {{"key": "{KEY}"}}')
    marker = object()
    logger.warn(f"exchange failed with {SECRET}", repr(error), marker)
    [(topic, text, passed)] = lines
    assert topic == "exchange failed with ***" and passed is marker
    assert KEY not in text and "abc123" not in text and "signature=***" in text


def test_the_filter_redacts_tracebacks_and_keeps_every_record() -> None:
    logger = logging.getLogger("backtest_kit.test_redaction")
    logger.propagate = False
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger.addHandler(handler)
    logger.addFilter(RedactingFilter())
    logger.setLevel(logging.DEBUG)
    try:
        try:
            raise RuntimeError("GET https://api.x.com/private?apiKey=k3y-value&signature=s1gnature")
        except RuntimeError:
            logger.exception("failed: %s", {"Authorization": "Bearer tok3n-value-123"})
        logger.debug("%d%% plain", 100)  # formatted once; a literal % in the result stays literal
    finally:
        logger.removeHandler(handler)
    out = stream.getvalue()
    assert "k3y-value" not in out and "s1gnature" not in out and "tok3n-value-123" not in out
    assert "Traceback" in out and "apiKey=***" in out and "'Authorization': '***'" in out
    assert out.endswith("100% plain\n")


# ---------------------------------------------------------------------- properties of `redact`
SENSITIVE_NAMES = ["X-MBX-APIKEY", "apiKey", "api_key", "OK-ACCESS-KEY", "OK-ACCESS-SIGN", "OK-ACCESS-PASSPHRASE",
                   "X-BAPI-API-KEY", "X-BAPI-SIGN", "KC-API-KEY", "signature", "sign", "Signature", "secret",
                   "password", "passphrase", "token", "listenKey", "AccessKeyId", "Authorization", "API-Key",
                   "API-Sign", "Cookie"]
PLAIN_NAMES = ["symbol", "signal", "interval", "limit", "startTime", "timestamp", "recvWindow", "X-BAPI-SIGN-TYPE",
               "Content-Type", "keys", "monkey", "position", "note", "strategy_name"]
VALUES = st.text(st.characters(codec="ascii", categories=["L", "N"], include_characters="-_+/="), min_size=1,
                 max_size=40)


@given(st.sampled_from(SENSITIVE_NAMES), VALUES, st.sampled_from(["'", '"']))
def test_a_credential_named_entry_is_masked_exactly(name: str, value: str, q: str) -> None:
    def headers(v: str) -> str:
        return f"GET /x, Request: {{{q}{name}{q}: {q}{v}{q}, {q}Content-Type{q}: {q}application/json{q}}} None"

    assert redact(headers(value)) == headers("***")


@given(st.sampled_from(SENSITIVE_NAMES), VALUES.filter(lambda v: "=" not in v), st.integers(0, 2**42))
def test_a_credential_named_parameter_is_masked_exactly(name: str, value: str, ts: int) -> None:
    url = f"https://api.binance.com/api/v3/account?timestamp={ts}&{name}={value}&recvWindow=5000"
    assert redact(url) == f"https://api.binance.com/api/v3/account?timestamp={ts}&{name}=***&recvWindow=5000"
    assert redact(f"timestamp={ts}&{name}={value}") == f"timestamp={ts}&{name}=***"  # a form body


@given(st.lists(st.sampled_from(PLAIN_NAMES), max_size=6), st.lists(VALUES.filter(lambda v: "=" not in v), max_size=6))
def test_text_without_credentials_is_unchanged(names: list[str], values: list[str]) -> None:
    """No false positives: ordinary parameters, dict entries and prose pass through untouched."""
    query = "&".join(f"{n}={v}" for n, v in zip(names, values, strict=False))
    entries = ", ".join(f"'{n}': '{v}'" for n, v in zip(names, values, strict=False))
    text = f"exchange binance: {query} {{{entries}}} a basic signal for BTCUSDT, keys={len(values)}"
    assert redact(text) == text


@given(st.text(st.characters(codec="ascii", categories=["L", "N"]), min_size=4, max_size=64),
       st.text(max_size=30), st.text(max_size=30))
def test_a_registered_secret_never_survives(secret: str, before: str, after: str) -> None:
    saved = redaction._known
    try:
        register_secret(secret)
        out = redact(before + secret + after + secret)
        assert secret not in out and out.count("***") >= 2
    finally:
        redaction._known = saved  # keep random "secrets" from masking other tests' logs


def test_short_values_are_not_registered() -> None:
    saved = redaction._known
    try:
        register_secret("abc")
        register_secret(None)
        assert redaction._known == saved and redact("abc") == "abc"
    finally:
        redaction._known = saved

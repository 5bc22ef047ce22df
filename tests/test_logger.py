"""Logging: stdlib `backtest_kit` by default (silent), user loggers via `set_logger`, never fatal."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
from typing import Any

import pytest

import backtest_kit as bk

LEVELS = ("log", "debug", "info", "warn")


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def log(self, topic: str, *args: Any) -> None:
        self.calls.append(("log", topic, *args))

    def debug(self, topic: str, *args: Any) -> None:
        self.calls.append(("debug", topic, *args))

    def info(self, topic: str, *args: Any) -> None:
        self.calls.append(("info", topic, *args))

    def warn(self, topic: str, *args: Any) -> None:
        self.calls.append(("warn", topic, *args))


class Exploding:
    def log(self, topic: str, *args: Any) -> None:
        raise RuntimeError("logger down")

    debug = info = warn = log


def test_default_logger_prints_nothing_without_configuration() -> None:
    code = textwrap.dedent(
        """
        import asyncio
        import backtest_kit as bk

        for level in ("log", "debug", "info", "warn"):
            getattr(bk.default_engine.logger, level)("topic", 1, "two")

        async def main():
            def bad(event):
                raise RuntimeError("listener failed")
            bk.listen_signal(bad)
            await bk.default_engine.bus.emit("signal", 1)

        asyncio.run(main())
        print("END")
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "END\n"
    assert done.stderr == ""


def test_default_logger_is_stdlib_backtest_kit(caplog: pytest.LogCaptureFixture) -> None:
    engine = bk.Engine()
    caplog.set_level(logging.DEBUG, logger="backtest_kit")
    engine.logger.warn("something odd", 42)
    engine.logger.info("hello", "world")
    engine.logger.debug("details")
    records = [(r.name, r.levelno, r.getMessage()) for r in caplog.records]
    assert ("backtest_kit", logging.WARNING, "something odd 42") in records
    assert ("backtest_kit", logging.INFO, "hello world") in records
    assert ("backtest_kit", logging.DEBUG, "details") in records


def test_default_logger_respects_level(caplog: pytest.LogCaptureFixture) -> None:
    engine = bk.Engine()
    caplog.set_level(logging.WARNING, logger="backtest_kit")
    engine.logger.info("quiet")
    engine.logger.warn("loud")
    assert [r.getMessage() for r in caplog.records if r.name == "backtest_kit"] == ["loud"]


def test_default_logger_writes_nothing_to_std_streams(capsys: pytest.CaptureFixture[str]) -> None:
    engine = bk.Engine()
    for level in LEVELS:
        getattr(engine.logger, level)("topic", 1)
    out, err = capsys.readouterr()
    assert out == "" and err == ""


def test_set_logger_with_four_method_object_gets_topic_and_args() -> None:
    engine = bk.Engine()
    rec = Recorder()
    engine.set_logger(rec)
    engine.logger.log("a", 1)
    engine.logger.debug("b")
    engine.logger.info("c", "x", {"k": 1})
    engine.logger.warn("d", 2.5)
    assert rec.calls == [("log", "a", 1), ("debug", "b"), ("info", "c", "x", {"k": 1}), ("warn", "d", 2.5)]


async def test_engine_reports_listener_errors_to_the_user_logger() -> None:
    engine = bk.Engine()
    rec = Recorder()
    engine.set_logger(rec)

    def bad(event: int) -> None:
        raise RuntimeError("listener failed")

    engine.listen_signal(bad)
    await engine.bus.emit("signal", 1)
    warns = [c for c in rec.calls if c[0] == "warn" and any("listener failed" in str(p) for p in c[1:])]
    assert len(warns) == 1
    assert not any("listener failed" in str(p) for c in rec.calls if c[0] != "warn" for p in c)


def test_logger_passed_to_engine_constructor() -> None:
    rec = Recorder()
    engine = bk.Engine(logger=rec)
    engine.logger.info("x")
    assert rec.calls == [("info", "x")]


def test_set_logger_with_stdlib_logger(caplog: pytest.LogCaptureFixture) -> None:
    engine = bk.Engine()
    mine = logging.getLogger("tests.my_trading_app")
    engine.set_logger(mine)
    caplog.set_level(logging.DEBUG, logger="tests.my_trading_app")
    engine.logger.warn("tick failed", "BTCUSDT")
    engine.logger.debug("detail")
    records = [(r.name, r.levelno, r.getMessage()) for r in caplog.records]
    assert ("tests.my_trading_app", logging.WARNING, "tick failed BTCUSDT") in records
    assert ("tests.my_trading_app", logging.DEBUG, "detail") in records
    assert not any(r.name == "backtest_kit" for r in caplog.records)


async def test_raising_logger_is_swallowed() -> None:
    engine = bk.Engine()
    engine.set_logger(Exploding())
    for level in LEVELS:
        getattr(engine.logger, level)("topic", 1)  # must not raise
    errors: list[BaseException] = []
    engine.listen_error(errors.append)

    def bad(event: int) -> None:
        raise ValueError("listener failed")

    engine.listen_signal(bad)
    await engine.bus.emit("signal", 1)  # logging the failure raises inside; delivery goes on
    assert [str(e) for e in errors].count("listener failed") == 1


def test_raising_stdlib_handler_is_swallowed() -> None:
    class BadHandler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            raise RuntimeError("handler down")

        def handleError(self, record: logging.LogRecord) -> None:
            raise RuntimeError("handler down")

    mine = logging.getLogger("tests.bad_handler")
    mine.setLevel(logging.DEBUG)
    mine.propagate = False
    handler = BadHandler()
    mine.addHandler(handler)
    try:
        engine = bk.Engine()
        engine.set_logger(mine)
        engine.logger.warn("x")
    finally:
        mine.removeHandler(handler)


class NotCallable:
    log = debug = info = 1
    warn = "nope"


class ThreeMethods:
    def log(self, topic: str, *args: Any) -> None: ...
    def debug(self, topic: str, *args: Any) -> None: ...
    def info(self, topic: str, *args: Any) -> None: ...


@pytest.mark.parametrize("bad", [None, "backtest_kit", 42, object(), ThreeMethods(), NotCallable()],
                         ids=["none", "str", "int", "object", "three-methods", "not-callable"])
def test_set_logger_rejects_bad_objects(bad: Any) -> None:
    engine = bk.Engine()
    rec = Recorder()
    engine.set_logger(rec)
    with pytest.raises(bk.SchemaError) as info:
        engine.set_logger(bad)
    assert "logger" in str(info.value)
    engine.logger.info("still here")
    assert rec.calls == [("info", "still here")]  # the previous logger stays


def test_module_level_set_logger_exists() -> None:
    assert callable(bk.set_logger)
    assert "set_logger" in bk.__all__


def test_engine_constructor_rejects_bad_logger() -> None:
    with pytest.raises(bk.SchemaError, match="logger"):
        bk.Engine(logger=NotCallable())  # type: ignore[arg-type]

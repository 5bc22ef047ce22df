"""The `backtest-kit` command line (`python -m backtest_kit`): see `backtest_kit.cli.app`."""

from __future__ import annotations

from .app import build_parser, main

__all__ = ["build_parser", "main"]

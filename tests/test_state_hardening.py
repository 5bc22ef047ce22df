"""Hardening of live state (issue "Hardening", items 1-6): unique keys, restore counting, the
persist-directory lock, stop before the first tick, restore validation, quarantine then wait.

Everything runs on real files (`FilePersist` under `tmp_path`), a `VirtualClock`, and for the lock a
real second process.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest
from helpers import T0, M, candle, dt, flat_candles, long, make_engine
from hypothesis import given, settings
from hypothesis import strategies as st

import backtest_kit as bk
from backtest_kit.engine.naming import legacy_pair_key, pair_key, split_pair_key
from backtest_kit.engine.risk import position_key
from backtest_kit.engine.signal_store import PersistedSignalStore, encode_signal_row, signal_key

REALISTIC = ("BTC/USDT", "BTC-PERP", "BTC/USDT:USDT", "BTCUSDT", "ETH/USDT", "a%2Db", "x:y-z")


def mk_row(symbol: str, strategy: str, sid: str = "id-1", *, exchange: str = "mem", price: float = 100.0,
           minutes: int = 60, at: int = T0) -> bk.SignalRow:
    return bk.SignalRow(
        id=sid, position="long", price_open=price, price_take_profit=price * 1.1, price_stop_loss=price * 0.9,
        minute_estimated_time=minutes, note="", symbol=symbol, strategy_name=strategy, exchange_name=exchange,
        scheduled_at=at, pending_at=at, is_scheduled=False,
    )


async def _no_error(_: BaseException) -> None:
    raise AssertionError(f"unexpected error report: {_!r}")


# ------------------------------------------------------------------------------------ item 2: keys
names = st.text(st.characters(codec="utf-8"), min_size=1, max_size=12) | st.sampled_from(REALISTIC)


@settings(max_examples=300, deadline=None)
@given(a=names, b=names, c=names, d=names, sep=st.sampled_from(["-", ":"]))
def test_pair_keys_are_injective_and_round_trip(a: str, b: str, c: str, d: str, sep: str) -> None:
    assert split_pair_key(pair_key(a, b, sep), sep) == (a, b)
    assert (pair_key(a, b, sep) == pair_key(c, d, sep)) == ((a, b) == (c, d))


@given(a=st.from_regex(r"[A-Za-z0-9_.]{1,12}", fullmatch=True),
       b=st.from_regex(r"[A-Za-z0-9_.]{1,12}", fullmatch=True))
def test_plain_names_keep_the_seed_layout(a: str, b: str) -> None:
    assert signal_key(a, b) == legacy_pair_key(a, b) == f"{a}-{b}"
    assert position_key(b, a) == f"{b}:{a}"
    assert signal_key(a, f"{b}-1m") == f"{a}-{b}-1m"  # a dash in the strategy name changes nothing


def test_the_seed_collisions_are_gone() -> None:
    assert signal_key("BTC-PERP", "x") != signal_key("BTC", "PERP-x")
    assert position_key("a:b", "c") != position_key("a", "b:c")


async def test_colliding_pairs_keep_separate_files_and_restore_their_own_rows(tmp_path: Path) -> None:
    """("BTC-PERP", "x") and ("BTC", "PERP-x") once shared signals/BTC-PERP-x.json: the second write
    replaced the first position and its restore set it aside as "another instance's"."""
    persist = bk.FilePersist(tmp_path, fsync=False)
    pairs = [("BTC-PERP", "x"), ("BTC", "PERP-x"), ("a%", "b"), *((s, "sma-1m") for s in REALISTIC)]
    stores = [PersistedSignalStore(lambda e: persist, s, n, _no_error, exchange_name="mem") for s, n in pairs]
    for i, store in enumerate(stores):
        await store.save_pending(mk_row(store.symbol, store.strategy_name, f"id-{i}"))
    for i, store in enumerate(stores):
        pending, scheduled = await store.load()
        assert pending is not None and pending.id == f"id-{i}" and scheduled is None
    listed = sorted(split_pair_key(k) for k in await persist.keys("signals"))
    assert listed == sorted(pairs)
    assert (tmp_path / "signals" / "BTCUSDT-sma-1m.json").exists()  # plain names: the seed's file name


async def test_a_file_of_the_old_layout_is_taken_over_by_its_own_pair_only(tmp_path: Path) -> None:
    persist = bk.FilePersist(tmp_path, fsync=False)
    old = legacy_pair_key("BTC-PERP", "x")
    await persist.write("signals", old, encode_signal_row(mk_row("BTC-PERP", "x", "old-1")))
    other = PersistedSignalStore(lambda e: persist, "BTC", "PERP-x", _no_error, exchange_name="mem")
    assert await other.load() == (None, None)  # same old key, another pair's row: left alone
    assert await persist.read("signals", old) is not None
    mine = PersistedSignalStore(lambda e: persist, "BTC-PERP", "x", _no_error, exchange_name="mem")
    pending, _ = await mine.load()
    assert pending is not None and pending.id == "old-1"
    assert await persist.keys("signals") == [signal_key("BTC-PERP", "x")]  # moved to the new key


async def test_risk_positions_of_colliding_names_are_two_positions(tmp_path: Path) -> None:
    engine = make_engine(tmp_path)
    engine.add_risk(risk_name="rk", max_concurrent_positions=2)
    for strategy, symbol in (("a:b", "c"), ("a", "b:c")):
        gate = engine._risk.gate("rk", symbol, strategy, "mem", backtest=False)
        assert await gate.try_open(mk_row(symbol, strategy, f"{strategy}|{symbol}"), 100.0, T0)
    assert len(await engine.risk.get_positions("rk")) == 2
    blocked = engine._risk.gate("rk", "d", "a", "mem", backtest=False)
    assert not await blocked.try_open(mk_row("d", "a", "third"), 100.0, T0)

"""Report file names built from user names are injective and cannot leave their folder
([hardening 18](../docs/design/decisions.md#hardening-18-report-files-named-by-symbol-and-strategy))."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import make_engine
from hypothesis import given
from hypothesis import strategies as st

from backtest_kit.engine.naming import pair_file_stem

names = st.text(min_size=1, max_size=40)


@given(names, names, names, names)
def test_report_stems_of_different_pairs_differ(s1: str, t1: str, s2: str, t2: str) -> None:
    if (s1, t1) != (s2, t2):
        assert pair_file_stem(s1, t1) != pair_file_stem(s2, t2)


@given(names, names)
def test_a_report_stem_is_one_safe_file_name(symbol: str, strategy: str) -> None:
    stem = pair_file_stem(symbol, strategy)
    assert "/" not in stem and "\\" not in stem and "\0" not in stem
    assert not stem.startswith(".") and 0 < len(stem.encode()) <= 200


def test_the_seed_collision_and_readable_names() -> None:
    """("a_b", "c") and ("a", "b_c") shared `a_b_c.md`; plain names keep their readable stem."""
    assert pair_file_stem("a_b", "c") != pair_file_stem("a", "b_c")
    assert pair_file_stem("BTCUSDT", "sma-cross") == "BTCUSDT_sma-cross"
    assert pair_file_stem("BTC/USDT:USDT", "rsi_v2") == "BTC%2FUSDT%3AUSDT_rsi_v2"


async def nothing(symbol: str, when: object) -> None:
    return None


@pytest.mark.parametrize("long", [False, True])
async def test_two_pairs_with_colliding_old_names_keep_two_reports(tmp_path: Path, long: bool) -> None:
    engine = make_engine(tmp_path)
    strategy = "b_c" * (100 if long else 1)
    for name in ("c", strategy):
        engine.add_strategy(strategy_name=name, interval="1m", get_signal=nothing)
    first = await engine.Backtest.dump("a_b" * (100 if long else 1), "c", path=tmp_path / "out")
    second = await engine.Backtest.dump("a", strategy, path=tmp_path / "out")
    assert first is not None and second is not None and first != second
    written = sorted(p.name for p in (tmp_path / "out").iterdir() if p.suffix == ".md")
    assert written == sorted([first.name, second.name])

"""In-memory candles travel to other processes as columns, once per process (adapters/candle_transfer.py).

A pickled `MemoryCandles` must serve exactly what the original serves (every interval, price reads,
drop and gap reports), whatever the data; a process rebuilds a given source once; inside
`spill_candles_to` a source is written to one private file and every job's pickle only names it; the
local pool uses that, so a sweep over in-memory candles ships the data once and each worker reads it
once. Real files, real worker processes.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import stat
import sys
import tempfile
import warnings
from array import array
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backtest_kit import demo
from backtest_kit.adapters import MemoryCandles, bundled_sample_path
from backtest_kit.adapters.candle_transfer import decode_columns, encode_columns, spill_candles_to
from backtest_kit.adapters.candles import CandleDataWarning, CsvCandles
from backtest_kit.engine.errors import CandleError
from backtest_kit.research import LocalExecutor, SequentialExecutor
from backtest_kit.system.jobs import BacktestJob, JobResult
from backtest_kit.testing import comparable_statistics, make_engine

M = 60_000
T0 = 1_747_699_200_000  # 2025-05-20 00:00 UTC
LOG_ENV = "BK_TEST_TRANSFER_LOG"


class CountingMemoryCandles(MemoryCandles):
    """Notes every storage set-up (a construction or a rebuild from a pickle) with the process id."""

    label = "counting"

    def _init_storage(self, anomaly_factor: float | None) -> None:
        path = os.environ.get(LOG_ENV)
        if path:
            with open(path, "a") as f:
                f.write(f"{os.getpid()}\n")
        super()._init_storage(anomaly_factor)


@st.composite
def candle_sets(draw: st.DrawFn) -> dict[str, list[tuple[int, float, float, float, float, float]]]:
    """1-3 symbols of wandering prices with gaps and the odd spike (dropped as an anomaly at load)."""
    out = {}
    for symbol in draw(st.lists(st.sampled_from(["BTCUSDT", "ETHUSDT", "SOL-PERP"]), min_size=1, max_size=3,
                                unique=True)):
        price, rows = draw(st.floats(0.01, 50_000)), []
        for slot in range(draw(st.integers(3, 150))):
            price *= 1 + draw(st.floats(-0.004, 0.004))
            if draw(st.integers(0, 9)) == 0:
                continue  # a gap
            o, c = price, price * (1 + draw(st.floats(-0.002, 0.002)))
            h, lo = max(o, c) * 1.001, min(o, c) * 0.999
            if slot > 2 and draw(st.integers(0, 40)) == 0:
                h = price * 500  # an anomaly
            rows.append((T0 + slot * M, o, h, lo, c, draw(st.floats(0, 1e6))))
        out[symbol] = rows
    return out


def _reads(source: MemoryCandles) -> list[Any]:
    """What a backtest can ask of a source, at every minute of its data and a little beyond."""
    out: list[Any] = [source.symbols, dict(source.dropped), dict(source.gaps), list(source.load_warnings)]
    for symbol in source.symbols:
        first, last = source.first_timestamp(symbol), source.last_timestamp(symbol)
        for when in range(first, last + 3 * M, M):
            for interval, limit in (("1m", 7), ("5m", 3), ("1h", 2)):
                out.append(source.closed_candles(symbol, interval, when, limit))
            out.append(source.next_candles(symbol, "15m", when, 4))
            out.append(source.average_price(symbol, when, 5))
    return out


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(candle_sets())
def test_a_pickled_source_serves_exactly_what_the_original_serves(data: dict[str, Any]) -> None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CandleDataWarning)
            source = MemoryCandles(data)
    except CandleError:
        return  # e.g. every candle an anomaly: nothing to ship
    copy = pickle.loads(pickle.dumps(source))
    assert copy is not source and type(copy) is MemoryCandles
    assert _reads(copy) == _reads(source)
    with tempfile.TemporaryDirectory() as directory, spill_candles_to(directory):
        blob = pickle.dumps(source)
        spilled = pickle.loads(blob)
    assert spilled is copy  # the same token: this process already rebuilt it


def test_columns_cross_byte_orders() -> None:
    columns = [([T0, T0 + M], [1.5, 2.0], [2.5, 3.0], [1.0, 1.5], [2.0, 2.5], [10.0, 0.0])]
    encoded = encode_columns(columns)
    swapped = []
    for ts_bytes, *values in encoded:  # as a machine of the other byte order would have written them
        ts = array("q")
        ts.frombytes(ts_bytes)
        ts.byteswap()
        parts = [ts.tobytes()]
        for raw in values:
            column = array("d")
            column.frombytes(raw)
            column.byteswap()
            parts.append(column.tobytes())
        swapped.append(tuple(parts))
    other = "big" if sys.byteorder == "little" else "little"
    assert decode_columns(swapped, other) == columns
    assert decode_columns(encoded, sys.byteorder) == columns


def test_a_process_rebuilds_a_source_once_and_subclass_state_travels(monkeypatch: pytest.MonkeyPatch,
                                                                      tmp_path: Path) -> None:
    log = tmp_path / "log"
    monkeypatch.setenv(LOG_ENV, str(log))
    source = CountingMemoryCandles({"BTCUSDT": [(T0 + i * M, 1.0, 1.1, 0.9, 1.05, 3.0) for i in range(50)]})
    source.label = "mine"
    blob = pickle.dumps(source)
    first, second = pickle.loads(blob), pickle.loads(blob)
    assert first is second and type(first) is CountingMemoryCandles and first.label == "mine"
    assert len(log.read_text().splitlines()) == 2  # built once here, rebuilt once from the pickle
    other = pickle.loads(pickle.dumps(MemoryCandles({"BTCUSDT": [(T0, 1.0, 1.1, 0.9, 1.05, 3.0)]})))
    assert other is not first  # another source, another token


def test_columns_are_far_cheaper_than_candle_objects() -> None:
    source = CsvCandles(bundled_sample_path()).in_memory()
    candles = source.closed_candles("BTCUSDT", "1m", source.last_timestamp("BTCUSDT") + M, 100_000)
    per_candle = len(pickle.dumps(source)) / len(candles)
    object_per_candle = len(pickle.dumps(candles)) / len(candles)
    assert per_candle <= 6 * 8 + 1  # six 8-byte machine values, plus a little framing
    assert per_candle < object_per_candle


def test_a_spill_writes_one_private_file_per_source_and_jobs_only_name_it(tmp_path: Path) -> None:
    source = CsvCandles(bundled_sample_path()).in_memory()
    with spill_candles_to(tmp_path) as spill:
        blobs = [pickle.dumps(source) for _ in range(5)]
    files = list(tmp_path.iterdir())
    assert len(files) == 1 and files[0].suffix == ".candles" and list(spill.written.values()) == files
    assert stat.S_IMODE(files[0].stat().st_mode) == 0o600
    assert all(len(blob) < 1_000 for blob in blobs)
    assert pickle.dumps(source) != blobs[0] and len(pickle.dumps(source)) > 100_000  # outside: by value


def test_a_missing_or_damaged_spill_file_is_a_clear_error(tmp_path: Path) -> None:
    source = MemoryCandles({"BTCUSDT": [(T0 + i * M, 1.0, 1.1, 0.9, 1.05, 3.0) for i in range(5)]})
    with spill_candles_to(tmp_path):
        blob = pickle.dumps(source)
    (path,) = tmp_path.iterdir()
    path.write_bytes(b"not a pickle")
    with pytest.raises(CandleError, match="damaged"):
        pickle.loads(blob)
    path.unlink()
    with pytest.raises(CandleError, match=r"\.candles written for the workers is gone"):
        pickle.loads(blob)


def _jobs(source: MemoryCandles) -> list[BacktestJob]:
    engine = make_engine()
    exchange = engine.add_exchange(exchange_name="memory", get_candles=source)
    strategy = engine.add_strategy(strategy_name=demo.STRATEGY_NAME, interval="5m", get_signal=demo.get_signal)
    first = datetime.fromtimestamp(source.first_timestamp("BTCUSDT") / 1000, UTC) + timedelta(hours=2)
    jobs = []
    for days in range(1, 7):
        frame = engine.add_frame(frame_name=f"{days}d", interval="1m", start_date=first,
                                 end_date=first + timedelta(days=days))
        jobs.append(BacktestJob(job_id=f"{days}d", symbol="BTCUSDT", strategy=strategy, exchange=exchange,
                                frame=frame, config=engine.get_config()))
    return jobs


async def _collect(executor: Any, jobs: list[BacktestJob]) -> dict[str, JobResult]:
    async with contextlib.aclosing(executor.run(jobs)) as stream:
        return {result.job_id: result async for result in stream}


async def test_a_local_sweep_over_memory_candles_ships_them_once(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    log = tmp_path / "log"
    log.touch()
    monkeypatch.setenv(LOG_ENV, str(log))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where the pool's private folder goes
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CandleDataWarning)
        source = CountingMemoryCandles({"BTCUSDT": CsvCandles(bundled_sample_path()).in_memory().closed_candles(
            "BTCUSDT", "1m", 2**62, 20_000)})
    jobs = _jobs(source)
    expected = await _collect(SequentialExecutor(), jobs)
    executor = LocalExecutor(max_workers=2, start_method="spawn")  # spawn: workers see LOG_ENV
    try:
        results = await _collect(executor, jobs)
    finally:
        await executor.aclose()
    assert results.keys() == expected.keys()
    for job_id, result in results.items():
        assert result.stats is not None and expected[job_id].stats is not None, result.error
        assert comparable_statistics(result.stats) == comparable_statistics(expected[job_id].stats)
    rebuilds = [pid for pid in log.read_text().split() if int(pid) != os.getpid()]
    assert len(rebuilds) == len(set(rebuilds)) <= 2, f"a worker rebuilt the candles twice: {rebuilds}"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("backtest-kit-candles-")]  # removed at the end


def test_inside_a_spill_a_csv_source_travels_as_its_loaded_columns_not_its_files(tmp_path: Path) -> None:
    """The local pool's jobs carry a `CsvCandles` as the columns loaded here: a worker never parses the
    files again (they may even be gone), and gets the same class, paths and reads."""
    data = tmp_path / "data"
    data.mkdir()
    path = data / "BTCUSDT-1m.csv.gz"
    path.write_bytes(bundled_sample_path().read_bytes())
    source = CsvCandles(path)
    spill = tmp_path / "spill"
    spill.mkdir()
    with spill_candles_to(spill):
        blobs = [pickle.dumps(source) for _ in range(3)]
    assert all(len(blob) < 1_000 for blob in blobs) and len(list(spill.iterdir())) == 1
    path.unlink()  # the worker reads the spill file, not the CSV
    rebuilt = pickle.loads(blobs[0])
    assert type(rebuilt) is CsvCandles and rebuilt is not source and pickle.loads(blobs[1]) is rebuilt
    assert rebuilt.paths == source.paths
    assert (rebuilt.dropped, rebuilt.gaps, rebuilt.load_warnings) == (source.dropped, source.gaps, source.load_warnings)
    end = source.last_timestamp("BTCUSDT") + M
    for interval in ("1m", "15m", "1h"):
        expected = source.closed_candles("BTCUSDT", interval, end, 500)
        assert rebuilt.closed_candles("BTCUSDT", interval, end, 500) == expected
    assert rebuilt.average_price("BTCUSDT", end, 5) == source.average_price("BTCUSDT", end, 5)
    outside = pickle.dumps(source)  # outside a spill: its files' paths and fingerprints, as before
    with pytest.raises(CandleError, match="cannot read the candle file"):
        pickle.loads(outside)

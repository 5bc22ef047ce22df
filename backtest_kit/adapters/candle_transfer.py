"""How in-memory candles travel to other processes: as columns, once per process, by content token.

A `MemoryCandles` is immutable once loaded, so it carries a random content token and pickles as six
typed columns per symbol (`array` bytes) instead of one object per candle: 300k candles pickle in a
few milliseconds instead of ~0.4 s, and a quarter smaller. A process that unpickles a token it has
seen before gets the instance it already rebuilt (with the interval aggregates and price prefix sums
it has computed since), so a worker pays the rebuild once however many jobs refer to the data.

While a parallel executor pickles its jobs it can open `spill_candles_to(directory)`: inside it, a
`MemoryCandles` writes its columns to one private file per token (written once, atomically) and
pickles as that file's path, so each job's pickle stays a few hundred bytes and a worker reads the
file on its first job only. Outside the block nothing is written anywhere.

This module holds the transport only (columns, the per-process cache, the spill files); the store
itself (`candles.py`) decides what its columns are.
"""

from __future__ import annotations

import os
import pickle
import sys
import tempfile
from array import array
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Final, TypeVar

from ..engine.errors import CandleError

__all__ = ["CandleSpill", "Columns", "active_spill", "cached_source", "decode_columns", "encode_columns",
           "read_spilled", "remember_source", "spill_candles_to"]

_CACHE_MAX: Final = 16
"""Distinct in-memory sources a process keeps (a sweep uses a handful); the oldest goes first."""

_SOURCES: dict[tuple[type, str], Any] = {}
"""(class, content token) -> the instance this process rebuilt from a pickle."""

_T = TypeVar("_T")

Columns = tuple[list[int], list[float], list[float], list[float], list[float], list[float]]
"""timestamps, opens, highs, lows, closes, volumes of one symbol."""


def cached_source(cls: type[_T], token: str) -> _T | None:
    """The instance of `cls` this process already rebuilt for `token`, if any."""
    found: _T | None = _SOURCES.get((cls, token))  # keyed by the exact class, so of that class
    return found


def remember_source(cls: type[_T], token: str, source: _T) -> _T:
    """Keep `source` as this process's copy of `token` (bounded; the oldest is dropped first)."""
    while len(_SOURCES) >= _CACHE_MAX:
        del _SOURCES[next(iter(_SOURCES))]
    _SOURCES[(cls, token)] = source
    return source


def encode_columns(columns: Sequence[Columns]) -> list[tuple[bytes, ...]]:
    """Columns as native-endian machine arrays: pickling bytes is a copy, not an object walk."""
    return [
        (array("q", ts).tobytes(), *(array("d", values).tobytes() for values in rest))
        for ts, *rest in columns
    ]


def decode_columns(encoded: Sequence[tuple[bytes, ...]], byteorder: str) -> list[Columns]:
    """The inverse of `encode_columns`; `byteorder` is the writer's (`sys.byteorder`)."""
    out: list[Columns] = []
    for ts_bytes, *value_bytes in encoded:
        ts, values = array("q"), [array("d") for _ in value_bytes]
        ts.frombytes(ts_bytes)
        for column, raw in zip(values, value_bytes, strict=True):
            column.frombytes(raw)
        if byteorder != sys.byteorder:
            ts.byteswap()
            for column in values:
                column.byteswap()
        o, h, lo, c, v = (column.tolist() for column in values)
        out.append((ts.tolist(), o, h, lo, c, v))
    return out


class CandleSpill:
    """A directory where sources write their pickled columns once per token, for workers to read."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self.written: dict[str, Path] = {}
        """token -> file written in this block (a token is written at most once)."""

    def path_for(self, token: str, blob: Callable[[], bytes]) -> Path:
        """The file holding `token`'s columns, written now (0600, via `os.replace`) if not yet."""
        path = self.written.get(token)
        if path is not None:
            return path
        if not token.isalnum():  # tokens are uuid hex: the file name is the token itself
            raise CandleError(f"candle source token must be alphanumeric, got {token!r}")
        path = self.directory / f"{token}.candles"
        handle, temporary = tempfile.mkstemp(dir=self.directory, prefix=".", suffix=".tmp")
        try:
            with os.fdopen(handle, "wb") as out:
                out.write(blob())
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        self.written[token] = path
        return path


_ACTIVE: ContextVar[CandleSpill | None] = ContextVar("backtest_kit_candle_spill", default=None)


def active_spill() -> CandleSpill | None:
    """The spill of the innermost `spill_candles_to` block of this context, if any."""
    return _ACTIVE.get()


@contextmanager
def spill_candles_to(directory: str | os.PathLike[str]) -> Iterator[CandleSpill]:
    """Inside this block, in-memory candle sources pickle as a file in `directory` (see the module notes).

    The caller owns `directory` (create it private, e.g. `tempfile.mkdtemp()`, and remove it once
    every worker is done with the jobs pickled here).
    """
    spill = CandleSpill(directory)
    reset = _ACTIVE.set(spill)
    try:
        yield spill
    finally:
        _ACTIVE.reset(reset)


def read_spilled(path: str) -> Any:
    """The pickled columns a spill wrote (a clear error if the file is gone or damaged)."""
    try:
        return pickle.loads(Path(path).read_bytes())
    except FileNotFoundError as exc:
        raise CandleError(f"candle file {path} written for the workers is gone; was the sweep closed?") from exc
    except (pickle.UnpicklingError, EOFError, ValueError) as exc:
        raise CandleError(f"candle file {path} written for the workers is damaged: {exc}") from exc

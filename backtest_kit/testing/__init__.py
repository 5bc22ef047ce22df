"""Helpers for testing your own strategy with backtest-kit: fast, isolated, no sleeping, no disk.

    from backtest_kit.testing import MemoryPersist, VirtualClock, make_engine

- `make_engine()` builds a fresh `bk.Engine` (never `bk.default_engine`, so tests do not leak
  registrations into each other) with `REFERENCE_CONFIG`, the reference test-suite configuration of
  the design notes ([lifecycle §1](../../docs/design/lifecycle.md#1-configuration-used-by-the-lifecycle)):
  slippage 0.1 %, fee 0.1 %, the TP/SL distance rules off (min 0, max SL
  100 %), a lifetime of 999 999 minutes and a single candle-fetch attempt. Unlike the spec's baseline
  the retry delay is 0 ms, so a failing fetch does not make a test wait. Keyword arguments override
  single keys (`make_engine(CC_MIN_TAKEPROFIT_DISTANCE_PERCENT=0.3)`) to re-enable one rule.
- Live state goes to a fresh `MemoryPersist` unless you pass `persist=` or a `directory` (then files
  under `directory/data`, reports under `directory/dump`, as the engine does by default in `.`).
- `VirtualClock` runs live mode in milliseconds: time stands still while an attached task works
  and jumps to the next wake-up once every attached task sleeps. Pass it as `clock=`.
- `MemoryPersist` is an in-memory `PersistBackend` (and quarantine backend) that records every
  operation, so a test can assert what the engine stored (`persist.ops("signals")`).

The engine's own test suite uses these same helpers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

from ..engine.clock import Clock, VirtualClock
from ..engine.persist import PersistBackend
from ..reports.stats import Statistics
from ..system.engine import Engine

__all__ = ["REFERENCE_CONFIG", "MemoryPersist", "VirtualClock", "comparable_statistics", "make_engine"]

REFERENCE_CONFIG: Final[dict[str, Any]] = {
    "CC_PERCENT_SLIPPAGE": 0.1,
    "CC_PERCENT_FEE": 0.1,
    "CC_MIN_TAKEPROFIT_DISTANCE_PERCENT": 0,
    "CC_MIN_STOPLOSS_DISTANCE_PERCENT": 0,
    "CC_MAX_STOPLOSS_DISTANCE_PERCENT": 100,
    "CC_MAX_SIGNAL_LIFETIME_MINUTES": 999_999,
    "CC_GET_CANDLES_RETRY_COUNT": 1,
    "CC_GET_CANDLES_RETRY_DELAY_MS": 0,
}
"""The reference test-suite baseline, with a 0 ms retry delay so no test sleeps
([lifecycle §1](../../docs/design/lifecycle.md#1-configuration-used-by-the-lifecycle)).

Applied with `set_config(..., unsafe=True)`: the distance rules are off, which the engine would
otherwise refuse as unsafe for real trading."""


class MemoryPersist:
    """A `PersistBackend` + `QuarantineBackend` in memory that records every operation.

    `data` maps (entity, key) to the stored bytes; `log` lists (operation, entity, key) in order.
    `record=False` turns the log off (it grows with every operation of a long run).
    """

    def __init__(self, *, record: bool = True) -> None:
        self.data: dict[tuple[str, str], bytes] = {}
        self.log: list[tuple[str, str, str]] = []
        self._record = record

    def _note(self, op: str, entity: str, key: str) -> None:
        if self._record:
            self.log.append((op, entity, key))

    async def read(self, entity: str, key: str) -> bytes | None:
        self._note("read", entity, key)
        return self.data.get((entity, key))

    async def write(self, entity: str, key: str, data: bytes) -> None:
        self._note("write", entity, key)
        self.data[(entity, key)] = bytes(data)

    async def delete(self, entity: str, key: str) -> None:
        self._note("delete", entity, key)
        self.data.pop((entity, key), None)

    async def keys(self, entity: str) -> list[str]:
        return [k for e, k in self.data if e == entity]

    async def quarantine(self, entity: str, key: str) -> str | None:
        """Set a snapshot the engine could not parse aside under `<key>.corrupt`, as a file backend would."""
        data = self.data.pop((entity, key), None)
        if data is None:
            return None
        self.data[(entity, key + ".corrupt")] = data
        return f"{entity}/{key}.corrupt"

    def ops(self, entity: str) -> list[tuple[str, str]]:
        """(operation, key) of every recorded operation on `entity`, in order."""
        return [(op, k) for op, e, k in self.log if e == entity]


def make_engine(
    directory: str | Path | None = None,
    clock: Clock | None = None,
    *,
    persist: PersistBackend | None = None,
    **config: Any,
) -> Engine:
    """A fresh engine with `REFERENCE_CONFIG` plus the `config` overrides (CC_* keys).

    `directory`: persist live state as files under `directory/data` and write reports under
    `directory/dump` (pytest's `tmp_path`); without it live state is kept in a new `MemoryPersist`
    and nothing is written to disk unless a report is dumped. `persist` overrides either.
    `clock`: usually a `VirtualClock`; the system clock by default.
    """
    kwargs: dict[str, Any] = {}
    if directory is not None:
        base = Path(directory)
        kwargs = {"persist_dir": base / "data", "dump_dir": base / "dump"}
    if clock is not None:
        kwargs["clock"] = clock
    engine = Engine(**kwargs)
    engine.set_config({**REFERENCE_CONFIG, **config}, unsafe=True)
    if persist is not None:
        engine.use_persist(persist)
    elif directory is None:
        engine.use_persist(MemoryPersist(record=False))
    return engine


def comparable_statistics(stats: Statistics) -> Any:
    """`stats` as builtins with every signal id blanked, for comparing two runs of the same backtest.

    Signal ids are random UUIDs (as in the reference), so two runs of one strategy on one frame differ
    only there; every figure, trade, price and timestamp must be equal.
    """
    import msgspec

    def scrub(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: ("<id>" if k in ("id", "signal_id") and v is not None else scrub(v)) for k, v in value.items()}
        if isinstance(value, list):
            return [scrub(v) for v in value]
        return value

    return scrub(msgspec.to_builtins(stats))

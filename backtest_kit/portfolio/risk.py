"""Risk profiles ([risk-sizing §1](../../docs/design/risk-sizing-portfolio.md#1-risk-profiles)): shared
position registries, validations and the rejection store (`bk.Risk` and the report: `risk_facade.py`).

One `RiskState` per (risk_name, mode) for the life of the engine
([risk-sizing §1.2](../../docs/design/risk-sizing-portfolio.md#12-one-shared-state-per-profile),
[decision 11](../../docs/design/decisions.md#decision-11-instances-are-keyed-by-mode-symbol-and-strategy)):
every strategy and symbol naming the profile in that mode shares it, and a backtest never sees live
positions. Each strategy instance gets a `RiskGate` bound to its pair; the state machine calls

- `check(row, price, now)` when a limit signal is created (checkpoint A: evaluate, register nothing),
- `try_open(row, price, now)` right before a position opens or a limit signal activates (B1 / B2):
  the built-in limit, the validations and the add run under the profile's `asyncio.Lock`, so a limit
  of N can never be exceeded however many pairs open in the same tick,
- `release(row)` when the position closes.

Validation semantics
([risk-sizing §1.5](../../docs/design/risk-sizing-portfolio.md#15-evaluating-the-validations), plus one
port extension):

- `max_concurrent_positions=N` runs first and rejects when `active_position_count >= N`, with the
  comment `max_concurrent_positions=N reached`;
- the validations then run in list order, each awaited if async, and the first failure stops the
  check. A validation fails when it **raises** (the reference rule) or, port extension, when it
  returns `False` (any falsy value other than `None`) or a string. A validation returning `None` or a
  truthy value passes, so every reference-style validation behaves as in the reference;
- the rejection comment is the failing item's `note`; else the returned string; else `N/A`. A raised
  error's message is never the comment; the error goes to the `validation` channel and the logger.

Rejections publish a `RiskEvent` on the `risk` channel (after the lock is released) and call
`on_rejected(symbol, args)`; an allowed check calls `on_allowed(symbol, args)` and publishes nothing.
Callbacks may be sync or async; an exception inside one is reported through `listen_error` and never
changes the decision.

Persistence
([risk-sizing §1.8](../../docs/design/risk-sizing-portfolio.md#18-persistence-of-the-registry)): in live
mode only, the registry is written through the engine's persistence backend (entity `risk`, key = risk
name) after every add and remove, and read once when the live state is first used. That first use also
counts every stored pending signal of a strategy naming the profile
([hardening item 1](../../docs/design/decisions.md#hardening-1-a-live-risk-profile-counts-stored-positions-first)),
so positions whose own pair has not ticked yet still hold their slots. A document that fails validation
is reported on the error channel, moved aside when the backend can quarantine, and the registry is
rebuilt from the stored signals.
"""

from __future__ import annotations

import asyncio
import inspect
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any, Final

import msgspec
from msgspec import Struct

from ..engine.channels import RISK, VALIDATION
from ..engine.models import RiskEvent, SignalRow
from ..engine.naming import POSITION_SEPARATOR, legacy_pair_key, pair_key
from ..engine.persist import ENTITY_RISK, ENTITY_SIGNALS, read_snapshot
from ..engine.registry import RiskSchema, RiskValidation
from ..engine.signal_store import decode_signal_row, signal_key
from .pair_events import add_pair_event, clear_pair_events

if TYPE_CHECKING:
    from ..engine.ports import Services

__all__ = [
    "MAX_REPORT_EVENTS",
    "NA",
    "ActivePosition",
    "PairRiskGate",
    "RiskCheckArgs",
    "RiskService",
    "RiskState",
]

MAX_REPORT_EVENTS: Final = 250
NA: Final = "N/A"


# ---------------------------------------------------------------------------------------------------------
# Payloads
# ---------------------------------------------------------------------------------------------------------


class ActivePosition(Struct, frozen=True, kw_only=True):
    """One open position of a profile
    ([risk-sizing §1.3](../../docs/design/risk-sizing-portfolio.md#13-the-active-position-registry): the
    real row, exchange and open time)."""

    signal: SignalRow
    symbol: str
    strategy_name: str
    exchange_name: str
    open_timestamp: int


class RiskCheckArgs(Struct, frozen=True, kw_only=True):
    """What a validation (and `on_allowed` / `on_rejected`) receives
    ([risk-sizing §1.4](../../docs/design/risk-sizing-portfolio.md#14-when-the-check-runs)).

    `pending_signal` is always a `SignalRow`: at the creation checkpoint of a market signal its
    `price_open` is already the current price, never `None`
    ([risk-sizing §1.4](../../docs/design/risk-sizing-portfolio.md#14-when-the-check-runs)).
    `active_position_count` and `active_positions` do not include the checking pair's own new position.
    Fields can be read as attributes (`args.symbol`) or as keys (`args["symbol"]`).
    """

    symbol: str
    pending_signal: SignalRow
    strategy_name: str
    exchange_name: str
    current_price: float
    timestamp: int
    active_position_count: int
    active_positions: tuple[ActivePosition, ...]
    risk_name: str
    backtest: bool

    def __getitem__(self, key: str) -> Any:
        if key not in self.__struct_fields__:
            raise KeyError(key)
        return getattr(self, key)

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key, default) if key in self.__struct_fields__ else default


_Document = list[tuple[str, ActivePosition]]


def position_key(strategy_name: str, symbol: str) -> str:
    """The registry key of a pair: `"<strategy_name>:<symbol>"`, each name escaped so that no two
    pairs share a key (`naming.pair_key`); the exchange is not part of it."""
    return pair_key(strategy_name, symbol, POSITION_SEPARATOR)


# ---------------------------------------------------------------------------------------------------------
# One profile in one mode
# ---------------------------------------------------------------------------------------------------------


class RiskState:
    """The shared registry of one (profile, mode): positions, lock, lazy live restore."""

    def __init__(self, service: RiskService, schema: RiskSchema, backtest: bool) -> None:
        self.service = service
        self.schema = schema
        self.name = schema.risk_name
        self.backtest = backtest
        self.positions: dict[str, ActivePosition] = {}
        self.loaded = backtest  # backtest state starts empty and never touches persistence
        # set by a `SharedRiskGate`: the positions are counted in the store, read afresh on each use
        self.shared_refresh: Callable[[], Awaitable[None]] | None = None
        self._lock: asyncio.Lock | None = None
        self._lock_loop: asyncio.AbstractEventLoop | None = None

    @property
    def lock(self) -> asyncio.Lock:
        """The profile's lock, re-created if the engine is reused on another event loop."""
        loop = asyncio.get_running_loop()
        if self._lock is None or self._lock_loop is not loop:
            self._lock = asyncio.Lock()
            self._lock_loop = loop
        return self._lock

    @property
    def active_position_count(self) -> int:
        return len(self.positions)

    def purge_finished_backtests(self) -> None:
        """Drop backtest positions whose run has ended (e.g. a consumer that stopped iterating while
        a position was open): a finished backtest must not hold a slot of the profile (rule 12)."""
        ended = self.service.backtest_ended
        stale = [key for key, p in self.positions.items() if ended(p.symbol, p.strategy_name)]
        for key in stale:
            del self.positions[key]

    # ------------------------------------------------------------------ persistence (live only)
    def _backend(self) -> Any:
        return self.service.engine.persist_for(ENTITY_RISK)

    async def ensure_loaded(self) -> None:
        """Load the live registry once; must be called with the lock held.

        The registry is rebuilt from the stored signals as well as read
        ([hardening 1](../../docs/design/decisions.md#hardening-1-a-live-risk-profile-counts-stored-positions-first)):
        a crash between the risk write and the signal delete, or a quarantined risk document, must not
        let other pairs open past the limit before every stored position's own pair has ticked. When the
        stored signals cannot be listed, nothing is assumed: the error propagates (the open that asked
        fails and is retried on a later tick).
        """
        if self.shared_refresh is not None:
            await self.shared_refresh()
            return
        if self.loaded:
            return
        engine = self.service.engine
        document = await self._read_document()
        counted = await self._with_stored_signals(await self._without_orphans(document))
        self.positions = counted
        self.loaded = True
        engine.logger.info(f"risk {self.name}: restored {len(self.positions)} live position(s)")
        if counted != document:
            await self.save()  # rebuilt (e.g. after a quarantine): the document says what the signals say

    async def _read_document(self) -> dict[str, ActivePosition]:
        """The stored registry, or {} when absent or set aside as invalid (reported)."""
        engine = self.service.engine

        def parse(data: bytes) -> dict[str, ActivePosition]:
            restored: dict[str, ActivePosition] = {}
            for key, pos in msgspec.json.decode(data, type=_Document):
                expected = position_key(pos.strategy_name, pos.symbol)
                legacy = legacy_pair_key(pos.strategy_name, pos.symbol, POSITION_SEPARATOR)
                if key != expected and key != legacy:  # older versions joined the names unescaped
                    raise ValueError(f"key {key!r} does not match its position ({expected!r})")
                restored[key] = pos
            return restored

        restored = await read_snapshot(self._backend(), ENTITY_RISK, self.name, parse,
                                       f"risk {self.name} positions", engine.report_error)
        return restored if restored is not None else {}

    async def _with_stored_signals(self, positions: dict[str, ActivePosition]) -> dict[str, ActivePosition]:
        """`positions` plus every stored pending signal of a strategy that names this profile.

        Rows their own instance would refuse to restore (item 5 checks) are not counted: that
        instance sets them aside. A strategy this engine does not know cannot be attributed to a
        profile, so only the risk document speaks for it.
        """
        engine = self.service.engine
        strategies = engine.registry.strategies
        backend = engine.persist_for(ENTITY_SIGNALS)
        counted = dict(positions)
        for key in await backend.keys(ENTITY_SIGNALS):
            data = await backend.read(ENTITY_SIGNALS, key)
            if data is None:
                continue
            try:
                row = decode_signal_row(bytes(data), scheduled=False)
            except ValueError:
                continue
            if key not in (signal_key(row.symbol, row.strategy_name), legacy_pair_key(row.symbol, row.strategy_name)):
                continue
            if row.strategy_name not in strategies or strategies.get(row.strategy_name).risk_name != self.name:
                continue
            if engine.restored_row_problems(row):
                continue
            pkey = position_key(row.strategy_name, row.symbol)
            current = counted.get(pkey)
            if current is None or current.signal.id != row.id:
                counted[pkey] = ActivePosition(
                    signal=row, symbol=row.symbol, strategy_name=row.strategy_name,
                    exchange_name=row.exchange_name, open_timestamp=row.pending_at,
                )
        return counted

    async def _without_orphans(self, positions: dict[str, ActivePosition]) -> dict[str, ActivePosition]:
        """Drop positions whose signal was never saved (a crash between the risk write and the
        signal write): nothing will ever close them, so they would block other pairs for good."""
        engine = self.service.engine
        signals = engine.persist_for(ENTITY_SIGNALS)
        kept: dict[str, ActivePosition] = {}
        for key, pos in positions.items():
            try:
                stored = await signals.read(ENTITY_SIGNALS, signal_key(pos.symbol, pos.strategy_name))
            except Exception:
                stored = b"?"  # cannot tell: keep the position, the safe side for limits
            if stored is None:
                engine.logger.warn(f"risk {self.name}: dropped position {key} (its signal was never saved)")
                continue
            kept[key] = pos
        return kept

    async def save(self) -> None:
        """Write the registry (live only); a failure is reported, the memory state stays."""
        if self.backtest:
            return
        backend = self._backend()
        try:
            if self.positions:
                await backend.write(ENTITY_RISK, self.name, msgspec.json.encode(list(self.positions.items())))
            else:
                await backend.delete(ENTITY_RISK, self.name)
        except Exception as exc:
            await self.service.engine.report_error(exc)


# ---------------------------------------------------------------------------------------------------------
# The gate one strategy instance uses
# ---------------------------------------------------------------------------------------------------------


class _Verdict:
    __slots__ = ("args", "comment", "errors", "ok")

    def __init__(self, ok: bool, args: RiskCheckArgs, comment: str, errors: list[BaseException]) -> None:
        self.ok = ok
        self.args = args
        self.comment = comment
        self.errors = errors


class PairRiskGate:
    """The `RiskGate` of one (mode, symbol, strategy) instance over its profile's shared state."""

    def __init__(self, state: RiskState, symbol: str, strategy_name: str, exchange_name: str) -> None:
        self.state = state
        self.symbol = symbol
        self.strategy_name = strategy_name
        self.exchange_name = exchange_name
        self.key = position_key(strategy_name, symbol)

    async def check(self, row: SignalRow, current_price: float, now_ms: int) -> bool:
        """Checkpoint A for a limit signal: evaluate, register nothing."""
        state = self.state
        if not state.loaded:
            async with state.lock:
                await state.ensure_loaded()
        verdict = await self._evaluate(row, current_price, now_ms)
        await self._conclude(verdict)
        return verdict.ok

    async def try_open(self, row: SignalRow, current_price: float, now_ms: int) -> bool:
        """Checkpoints B1/B2: evaluate and add atomically under the profile lock."""
        state = self.state
        async with state.lock:
            await state.ensure_loaded()
            verdict = await self._evaluate(row, current_price, now_ms)
            if verdict.ok:
                state.positions.pop(self.key, None)  # re-insert: insertion order = open order
                state.positions[self.key] = ActivePosition(
                    signal=row, symbol=self.symbol, strategy_name=self.strategy_name,
                    exchange_name=self.exchange_name, open_timestamp=now_ms,
                )
                await state.save()
        await self._conclude(verdict)
        return verdict.ok

    async def release(self, row: SignalRow) -> None:
        """The pair's position closed: remove it (a missing key is a no-op)."""
        state = self.state
        async with state.lock:
            await state.ensure_loaded()
            if state.positions.pop(self.key, None) is not None:
                await state.save()

    async def restore(self, row: SignalRow) -> None:
        """A restarted live instance holds this open position: register it if the registry lacks it
        (a crash between the signal write and the risk write); no validation, it is already open."""
        state = self.state
        async with state.lock:
            await state.ensure_loaded()
            current = state.positions.get(self.key)
            if current is None or current.signal.id != row.id:
                state.positions[self.key] = ActivePosition(
                    signal=row, symbol=self.symbol, strategy_name=self.strategy_name,
                    exchange_name=self.exchange_name, open_timestamp=row.pending_at,
                )
                await state.save()

    # ------------------------------------------------------------------ evaluation
    def _others(self) -> tuple[ActivePosition, ...]:
        """Every registered position except the pair's own key.

        A pair asking to open holds no position by definition, so an entry under its own key is stale
        (left by a crash between the risk write and the signal write): it must not count against it.
        """
        positions = self.state.positions
        if self.state.backtest and positions:
            self.state.purge_finished_backtests()
        if self.key in positions:
            return tuple(p for k, p in positions.items() if k != self.key)
        return tuple(positions.values())

    async def _evaluate(self, row: SignalRow, current_price: float, now_ms: int) -> _Verdict:
        state = self.state
        schema = state.schema
        others = self._others()
        args = RiskCheckArgs(
            symbol=self.symbol, pending_signal=row, strategy_name=self.strategy_name,
            exchange_name=self.exchange_name, current_price=current_price, timestamp=now_ms,
            active_position_count=len(others), active_positions=others, risk_name=state.name,
            backtest=state.backtest,
        )
        limit = schema.max_concurrent_positions
        if limit is not None and len(others) >= limit:
            return _Verdict(False, args, f"max_concurrent_positions={limit} reached", [])
        for item in schema.validations:
            failed, comment, error = await _run_validation(item, args)
            if failed:
                return _Verdict(False, args, comment, [error] if error is not None else [])
        return _Verdict(True, args, "", [])

    async def _conclude(self, verdict: _Verdict) -> None:
        """Events and callbacks, outside the lock (a listener may itself use the profile)."""
        service = self.state.service
        engine = service.engine
        callbacks = self.state.schema.callbacks
        args = verdict.args
        if verdict.ok:
            await service.callback(callbacks.get("on_allowed"), args)
            return
        for error in verdict.errors:
            engine.logger.warn(f"risk {self.state.name}: validation raised for {args.symbol}", repr(error))
            await engine.bus.emit(VALIDATION, error)
        await engine.bus.emit(RISK, RiskEvent(
            symbol=args.symbol, strategy_name=args.strategy_name, exchange_name=args.exchange_name,
            pending_signal=args.pending_signal, current_price=args.current_price,
            active_position_count=args.active_position_count, comment=verdict.comment,
            timestamp=args.timestamp, backtest=args.backtest,
        ))
        await service.callback(callbacks.get("on_rejected"), args)


async def _run_validation(item: RiskValidation, args: RiskCheckArgs) -> tuple[bool, str, BaseException | None]:
    """(failed, comment, raised error) of one validation item."""
    note = item.note if item.note else None
    try:
        result = item.validate(args)
        if inspect.isawaitable(result):
            result = await result
    except Exception as exc:
        return True, note or NA, exc
    if result is None:
        return False, "", None
    if isinstance(result, str):
        return True, note or result.strip() or NA, None
    if not result:
        return True, note or NA, None
    return False, "", None


# ---------------------------------------------------------------------------------------------------------
# Engine-level service (risk states and the rejection store)
# ---------------------------------------------------------------------------------------------------------


class RiskService:
    """The engine's risk states and the rejection report store (subscribed at engine creation)."""

    def __init__(self, engine: Services, *, backtest_ended: Callable[[str, str], bool] | None = None) -> None:
        self.engine = engine
        # (symbol, strategy_name) -> whether that pair's backtest run has ended (the backtest runner's)
        self.backtest_ended: Callable[[str, str], bool] = backtest_ended or (lambda symbol, strategy_name: False)
        self._states: dict[tuple[str, bool], RiskState] = {}
        self._events: dict[tuple[str, str], deque[RiskEvent]] = {}
        engine.bus.subscribe(RISK, self._record)

    def state(self, risk_name: str, *, backtest: bool, source: str = "") -> RiskState:
        key = (risk_name, backtest)
        state = self._states.get(key)
        if state is None:
            schema = self.engine.registry.risks.get(risk_name, source)
            state = self._states[key] = RiskState(self, schema, backtest)
        return state

    def gate(
        self, risk_name: str, symbol: str, strategy_name: str, exchange_name: str, *, backtest: bool,
        source: str = "",
    ) -> PairRiskGate:
        return PairRiskGate(self.state(risk_name, backtest=backtest, source=source), symbol, strategy_name,
                            exchange_name)

    async def callback(self, fn: Callable[..., Any] | None, args: RiskCheckArgs) -> None:
        if fn is None:
            return
        try:
            result = fn(args.symbol, args)
            if inspect.isawaitable(result):
                await result
        except Exception as exc:
            await self.engine.report_error(exc)

    def _record(self, event: RiskEvent) -> None:
        add_pair_event(self._events, event.symbol, event.strategy_name, event, MAX_REPORT_EVENTS)

    def events(self, symbol: str, strategy_name: str) -> list[RiskEvent]:
        return list(self._events.get((symbol, strategy_name), ()))

    def clear_events(self, symbol: str | None = None, strategy_name: str | None = None) -> None:
        clear_pair_events(self._events, symbol, strategy_name)

    def forget_live(self) -> None:
        """Drop the cached live registries: the next live use reads (and recounts) the stored state."""
        for state in self._states.values():
            if not state.backtest:
                state.positions = {}
                state.loaded = False
                state.shared_refresh = None

    def iter_states(self) -> Iterator[RiskState]:
        return iter(self._states.values())

"""The cyclic garbage collector's policy while live pairs run: freeze the settled heap.

Why: thousands of live pairs keep a large, long-lived heap (candles, the sources' caches, every pair's
state, task and coroutine chain), and CPython's cyclic GC walks all of it on every full collection
and part of it on the younger ones. At 10,000 pairs those passes stalled the event loop for hundreds
of ms, long enough that ticks were late by seconds and whole ticks were lost. Nearly nothing in that
heap ever becomes cyclic garbage: it lives as long as the run, and what a tick allocates is freed by
reference counting the moment the tick is done.

So once the pairs started together have each run their first tick (the tick that builds their lazily
made state: candle stores, the source's caches), the live runner calls `gc.freeze()`: everything
alive then moves to the permanent generation, which no collection walks. First ticks can take long
(10,000 crash-safe restores go through a thread pool, a `get_signal` may take minutes), so while
pairs are still settling the heap is also frozen at most once every `FREEZE_EVERY_S` as their first
ticks end: the settled part stops being walked without waiting for the slowest pair. Objects allocated later are
collected as usual, so a cycle made by a later tick (an exception's traceback, say) is still found.
`gc.freeze()` is constant time (it splices the generation lists), so it runs again whenever pairs
start later. When the last live run of the process ends, `gc.unfreeze()` hands the frozen objects
back to the oldest generation, so an application that goes on without live pairs does not keep
garbage it made while they ran.

Young collections are made rarer too: while live runs go, the generation-0 threshold is at least
`LIVE_GEN0_THRESHOLD` (CPython's default is 700). Every tick allocates a few container objects that
live until the pair's next tick (the inter-tick future, the task's context), so a young pass walks
about six objects per pair whenever it runs (~15 ms of CPU at 5,000 pairs), and with 700 such passes
came every second or two; at 10,000 net allocations they come an order of magnitude less often, and
cyclic garbage made meanwhile (at most that many objects) still gets collected.

The state is process-wide (the collector is), so it is counted across engines: the first live run
anywhere begins the policy, the last one to end stops it and puts the threshold back (unless the
application changed it meanwhile). Opt out with ``CC_LIVE_GC_TUNING=False`` (e.g. an application
that manages `gc.freeze()` or the thresholds itself: the final `gc.unfreeze()` also releases objects
that application froze).
"""

from __future__ import annotations

import gc
import time

__all__ = ["FREEZE_EVERY_S", "LIVE_GEN0_THRESHOLD", "LiveGcPolicy", "RunSettling", "live_gc"]

FREEZE_EVERY_S = 1.0
LIVE_GEN0_THRESHOLD = 10_000


class RunSettling:
    """One live run under the policy: `settled()` after its first tick, `ended()` when it is over.

    Both are idempotent, so the live loop can call them from every exit path without bookkeeping.
    """

    __slots__ = ("_ended", "_policy", "_settled")

    def __init__(self, policy: LiveGcPolicy) -> None:
        self._policy = policy
        self._settled = False
        self._ended = False

    def settled(self) -> None:
        if not self._settled:
            self._settled = True
            self._policy.first_tick_done()

    def ended(self) -> None:
        if not self._ended:
            self.settled()
            self._ended = True
            self._policy.run_ended()


class LiveGcPolicy:
    """Counts live runs and the ones still before their first tick; freezes when the latter reach 0."""

    __slots__ = ("every_s", "freezes", "last_freeze", "runs", "saved_threshold", "set_threshold", "settling")

    def __init__(self, every_s: float = FREEZE_EVERY_S) -> None:
        self.every_s = every_s
        self.runs = 0  # live runs (of every engine) under the policy
        self.settling = 0  # of those, the ones whose first tick has not ended yet
        self.freezes = 0  # how many times the heap was frozen (a figure for tests and benchmarks)
        self.last_freeze = 0.0  # time.monotonic() of the last freeze
        self.saved_threshold: tuple[int, ...] | None = None  # gc thresholds before the policy began
        self.set_threshold: tuple[int, ...] | None = None  # the ones the policy set

    def run_started(self) -> RunSettling:
        """A live run under the policy started; its first tick is still ahead."""
        if self.runs == 0:  # the policy begins: the first freeze is due in every_s
            self.last_freeze = time.monotonic()
            saved = gc.get_threshold()
            if saved[0] and saved[0] < LIVE_GEN0_THRESHOLD:  # 0 = automatic collection off: leave it
                self.saved_threshold = saved
                self.set_threshold = (LIVE_GEN0_THRESHOLD, *saved[1:])
                gc.set_threshold(*self.set_threshold)
        self.runs += 1
        self.settling += 1
        return RunSettling(self)

    def first_tick_done(self) -> None:
        """A run's first tick ended (however it ended): freeze once no started run is still settling,
        or if the last freeze is `every_s` old while others still are."""
        self.settling -= 1
        now = time.monotonic()
        if self.settling == 0 or now - self.last_freeze >= self.every_s:
            gc.freeze()
            self.freezes += 1
            self.last_freeze = now

    def run_ended(self) -> None:
        """A run ended (after `first_tick_done`); the last one hands the frozen heap back."""
        self.runs -= 1
        if self.runs == 0:
            gc.unfreeze()
            if self.saved_threshold is not None and gc.get_threshold() == self.set_threshold:
                gc.set_threshold(*self.saved_threshold)
            self.saved_threshold = self.set_threshold = None


live_gc = LiveGcPolicy()

"""The report stores' per-pair event logs: the newest events of each (symbol, strategy) pair, bounded.

Shared by the partial profit/loss store (`partial.PartialService`) and the risk rejection store
(`risk.RiskManager`), which keep a `dict[(symbol, strategy_name), deque]` each.
"""

from __future__ import annotations

from collections import deque
from typing import TypeVar

__all__ = ["add_pair_event", "clear_pair_events"]

T = TypeVar("T")


def add_pair_event(
    table: dict[tuple[str, str], deque[T]], symbol: str, strategy_name: str, event: T, maxlen: int
) -> None:
    """Put `event` first in the pair's log (created on first use, keeping the newest `maxlen`)."""
    key = (symbol, strategy_name)
    events = table.get(key)
    if events is None:
        events = table[key] = deque(maxlen=maxlen)
    events.appendleft(event)


def clear_pair_events(
    table: dict[tuple[str, str], deque[T]], symbol: str | None = None, strategy_name: str | None = None
) -> None:
    """Forget the logs of the pairs matching `symbol` and `strategy_name` (None matches any)."""
    for key in list(table):
        if (symbol is None or key[0] == symbol) and (strategy_name is None or key[1] == strategy_name):
            del table[key]

"""Kill -9 around the order journal: a paper-trading process SIGKILLed at random moments and restarted must
never send two entry orders for one signal, nor an exit for a signal whose entry it never sent."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

CHILD = Path(__file__).with_name("orders_child.py")
ROOT = Path(__file__).resolve().parents[1]


def _placed(workdir: Path) -> int:
    log = workdir / "venue.jsonl"
    return len(log.read_text().splitlines()) if log.exists() else 0


def _start(workdir: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, str(CHILD), str(workdir)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def test_kill_9_never_doubles_an_entry_nor_exits_without_one(tmp_path: Path) -> None:
    rng = random.Random(16)
    kills = 0
    for _ in range(6):  # killed runs: each is SIGKILLed after a random number of venue placements
        before = _placed(tmp_path)
        child = _start(tmp_path)
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        target = before + rng.randint(1, 6)
        while child.poll() is None:
            if _placed(tmp_path) >= target:
                child.send_signal(signal.SIGKILL)
                kills += 1
                break
        child.wait(timeout=120)
    final = _start(tmp_path)
    out, err = final.communicate(timeout=300)
    assert final.returncode == 0, err
    assert "done" in out
    assert kills >= 3

    placed = [json.loads(line) for line in (tmp_path / "venue.jsonl").read_text().splitlines()]
    ids = [p["client_order_id"] for p in placed]
    assert len(ids) == len(set(ids))  # the venue never got one client order id twice as a new order
    by_signal: dict[str, list[dict[str, object]]] = defaultdict(list)
    for order in placed:
        by_signal[str(order["signal_id"])].append(order)
    assert sum(1 for orders in by_signal.values() if any(o["role"] == "exit" for o in orders)) >= 5
    for signal_id, orders in by_signal.items():
        roles = [o["role"] for o in orders]
        assert roles.count("entry") == 1, (signal_id, roles)  # never two entries per signal
        assert roles.count("exit") <= 1, (signal_id, roles)
        if "exit" in roles:
            assert roles.index("entry") < roles.index("exit"), (signal_id, roles)  # never an exit first
            entry, exit_ = orders[roles.index("entry")], orders[roles.index("exit")]
            assert float(str(exit_["amount"])) <= float(str(entry["amount"]))

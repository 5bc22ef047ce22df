"""examples/live_cluster.py runs as the README says: two worker processes (live on a VirtualClock,
state in Redis, events over NATS) and an engine-less subscriber, ending by itself."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from nats_server import NATS_URL
from servers import REDIS_URL

ROOT = Path(__file__).resolve().parents[1]


def test_the_cluster_example_prints_both_workers_events_and_ends() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "live_cluster.py"), "--nats", NATS_URL, "--redis", REDIS_URL,
         "--timeout", "60"],
        capture_output=True, text=True, cwd=ROOT, env={"PYTHONPATH": str(ROOT)}, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    for symbol in ("BTCUSDT", "ETHUSDT"):
        mine = [line for line in lines if line.startswith(f"[worker-{symbol}")]
        assert any("OPEN" in line for line in mine) and any("CLOSE" in line for line in mine)
        assert mine[-1].endswith("DONE   live run ended")  # the run's end comes after all of its events
        seqs = [int(m.group(1)) for line in mine if (m := re.search(r"#\s*(\d+)\]", line))]
        assert seqs == sorted(seqs)  # each worker's events in its order
    assert lines[-1].startswith("events received:") and lines[-1].endswith("workers exited [0, 0]")

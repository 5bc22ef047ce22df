"""Kill -9 harness: SIGKILL a live paper-trading process at random moments, restart it, compare.

    pytest -m killtest -s                     # this test alone (30 kills), with its figures printed
    pytest -m killtest -s --trials 500        # more kills (or BK_KILLTEST_TRIALS=500)
    BK_KILLTEST_SEED=1234 pytest -m killtest  # replay one random schedule
    BK_KILLTEST_MINUTES=1440                  # length of the traded slice (default 2880 = 2 days)

The child (`tests/killtest_child.py`, see its docstring for the rules that make runs comparable) runs
live mode over a replay of real BTCUSDT 1m candles with the default `FilePersist`, journaling every
opened / scheduled / closed / cancelled result to an fsync-ed append-only file. The parent first runs
it once without interruption (the reference), then runs it again in a fresh directory, killing it
with SIGKILL after a random delay (``random.Random(seed)``, the seed is printed) and restarting it
until its data ends, as many times as needed for `--trials` kills (starting another pass when one
ends first). Each interrupted pass must match the reference.

The check, and why journal lines may repeat or be missing:

* A kill after a close was delivered but before its deferred delete (or before the checkpoint) makes
  the restarted child close the same restored position again at the same tick: the journal then holds
  the same (id, action) twice. Lines are deduplicated by (id, action); every repeat must be identical
  to the first, field for field (so a position closed twice with different outcomes fails).
* A kill after the pending/scheduled row was written but before the listener journaled ``opened`` /
  ``scheduled`` loses that line: the restarted child restores the position (``on_active``) without
  re-announcing it. Such lines may be missing; every one that is present must equal the reference's.
* Everything else must be exact: after dedup, the interrupted journal equals the reference journal
  minus those missing open/schedule lines, in the same order; so every closed and cancelled result
  (ids, prices, timestamps, PnL) is identical, each id is closed at most once, no id opens twice, and
  every opened id is closed exactly once unless it is still open at the end of the reference too.
* No errors were reported, no ``.corrupt-*`` file was ever produced (atomic writes never leave a torn
  snapshot), orphan temp files were swept, and the final stored state equals the reference's.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import pytest

pytestmark = pytest.mark.killtest

CHILD = Path(__file__).with_name("killtest_child.py")
CSV_NAME = "BTCUSDT-1m-7d.csv"
MAX_PASSES = 100
KILLS_PER_PASS = 30  # more trials run more passes, so kill delays stay spread over a whole pass


@dataclass
class PassStats:
    kills: int = 0
    lives: int = 0
    duplicates: int = 0
    lost_announcements: int = 0
    kill_delays: list[float] = field(default_factory=list)


def _child_cmd(csv: Path, workdir: Path, minutes: int) -> list[str]:
    return [sys.executable, str(CHILD), "--csv", str(csv), "--workdir", str(workdir), "--minutes", str(minutes)]


def _start(cmd: list[str], workdir: Path) -> subprocess.Popen[bytes]:
    workdir.mkdir(parents=True, exist_ok=True)
    stderr = open(workdir / "stderr.log", "ab")  # noqa: SIM115 (kept open by the child)
    try:
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=stderr, cwd=workdir)
    finally:
        stderr.close()


def _wait_ready(proc: subprocess.Popen[bytes]) -> str:
    assert proc.stdout is not None
    return proc.stdout.readline().decode().strip()


def run_uninterrupted(csv: Path, workdir: Path, minutes: int) -> float:
    """The reference run; returns its duration from "ready" to exit (seconds)."""
    proc = _start(_child_cmd(csv, workdir, minutes), workdir)
    assert _wait_ready(proc) == "ready"
    started = time.perf_counter()
    assert proc.wait(timeout=300) == 0, (workdir / "stderr.log").read_text()
    return time.perf_counter() - started


def run_with_kills(csv: Path, workdir: Path, minutes: int, rng: random.Random, kills_wanted: int,
                   mean_delay: float) -> PassStats:
    """Run the child to the end of its data, SIGKILLing it up to `kills_wanted` times."""
    stats = PassStats()
    cmd = _child_cmd(csv, workdir, minutes)
    while True:
        stats.lives += 1
        assert stats.lives <= kills_wanted + 2, "the child never finishes"
        proc = _start(cmd, workdir)
        first = _wait_ready(proc)
        if first == "done":
            assert proc.wait(timeout=60) == 0
            return stats
        assert first == "ready", (workdir / "stderr.log").read_text()
        if stats.kills >= kills_wanted:
            assert proc.wait(timeout=300) == 0, (workdir / "stderr.log").read_text()
            return stats
        delay = rng.uniform(0, 2 * mean_delay)
        try:
            code = proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            assert proc.wait(timeout=60) == -signal.SIGKILL
            stats.kills += 1
            stats.kill_delays.append(delay)
            continue
        assert code == 0, (workdir / "stderr.log").read_text()
        return stats


def read_journal(workdir: Path) -> list[dict[str, Any]]:
    lines = (workdir / "journal.jsonl").read_bytes().split(b"\n")
    return [msgspec.json.decode(line) for line in lines[:-1] if line]  # a torn last line would be dropped


def stored_state(workdir: Path) -> dict[str, bytes]:
    data = workdir / "data"
    return {str(p.relative_to(data)): p.read_bytes() for p in sorted(data.rglob("*")) if p.is_file()}


def check_pass(reference: list[dict[str, Any]], journal: list[dict[str, Any]], stats: PassStats) -> None:
    errors = [r for r in journal if r["action"] == "error"]
    assert errors == [], errors
    first: dict[tuple[str, str], dict[str, Any]] = {}
    order: list[tuple[str, str]] = []
    for record in journal:
        key = (record["id"], record["action"])
        if key in first:
            assert record == first[key], f"{key} journaled twice with different content"
            stats.duplicates += 1
        else:
            first[key] = record
            order.append(key)
    deduped = [first[k] for k in order]

    ref_keys = [(r["id"], r["action"]) for r in reference]
    assert len(set(ref_keys)) == len(ref_keys), "the reference run journaled an event twice"
    present = set(order)
    lost = [k for k in ref_keys if k not in present]
    assert all(action in ("opened", "scheduled") for _, action in lost), f"finished trades missing: {lost}"
    stats.lost_announcements += len(lost)
    expected = [r for r in reference if (r["id"], r["action"]) in present]
    assert deduped == expected  # same events, same content, same order

    closed_ids = [r["id"] for r in deduped if r["action"] in ("closed", "cancelled")]
    assert len(closed_ids) == len(set(closed_ids)), "a signal was closed twice"
    opened_ids = {r["id"] for r in reference if r["action"] == "opened"}
    still_open = {i for i in opened_ids if (i, "closed") not in set(ref_keys)}
    assert len(still_open) <= 1
    assert {i for i in opened_ids if (i, "closed") in present} == opened_ids - still_open


def test_kill9_harness(tmp_path: Path, shared_data: Path, kill_trials: int) -> None:
    csv = shared_data / CSV_NAME
    if not csv.exists():
        pytest.skip(f"{csv} not found")
    minutes = int(os.environ.get("BK_KILLTEST_MINUTES", "2880"))
    seed = int(os.environ.get("BK_KILLTEST_SEED", str(random.SystemRandom().randrange(2**32))))
    print(f"\nkilltest: seed={seed} trials={kill_trials} minutes={minutes} (BK_KILLTEST_SEED={seed} to replay)")
    rng = random.Random(seed)
    started = time.perf_counter()

    reference_dir = tmp_path / "reference"
    duration = run_uninterrupted(csv, reference_dir, minutes)
    reference = read_journal(reference_dir)
    actions = [r["action"] for r in reference]
    if minutes == 2880:  # the default slice exercises every path: market and limit entries, cancels
        assert actions.count("closed") >= 10 and "cancelled" in actions and "scheduled" in actions
    reference_state = stored_state(reference_dir)

    totals = PassStats()
    passes = 0
    while totals.kills < kill_trials:
        passes += 1
        assert passes <= MAX_PASSES
        wanted = min(kill_trials - totals.kills, KILLS_PER_PASS)
        workdir = tmp_path / f"pass-{passes}"
        stats = run_with_kills(csv, workdir, minutes, rng, wanted, mean_delay=duration / wanted)
        check_pass(reference, read_journal(workdir), stats)
        state = stored_state(workdir)
        assert not [name for name in state if ".corrupt-" in name or "/.tmp-" in name], sorted(state)
        assert state == reference_state
        totals.kills += stats.kills
        totals.lives += stats.lives
        totals.duplicates += stats.duplicates
        totals.lost_announcements += stats.lost_announcements
    elapsed = time.perf_counter() - started
    print(
        f"killtest: {totals.kills} kills over {passes} pass(es), {totals.lives} process lives; "
        f"reference: {len(reference)} journal lines, {actions.count('closed')} closed, "
        f"{actions.count('cancelled')} cancelled, pass {duration:.2f}s; "
        f"duplicates collapsed {totals.duplicates}, open/schedule lines lost {totals.lost_announcements}; "
        f"total {elapsed:.1f}s"
    )

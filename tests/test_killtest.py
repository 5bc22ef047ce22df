"""Kill -9 harness: SIGKILL a live paper-trading process at random moments, restart it, compare.

    pytest -m killtest -s                     # these tests alone (30 + 20 kills), with their figures
    pytest -m killtest -s --trials 500        # more kills, in each test (or BK_KILLTEST_TRIALS=500)
    BK_KILLTEST_SEED=1234 pytest -m killtest  # replay one random schedule
    BK_KILLTEST_MINUTES=1440                  # length of the traded slice (default 2880, shared: 1440)

Both tests use the candles bundled with the package (`bk.bundled_sample_path()`), so they never skip.

`test_kill9_harness`: the child (`tests/killtest_child.py`, see its docstring for the rules that
make runs comparable) runs live mode over a replay of real BTCUSDT 1m candles with the default
`FilePersist`, journaling every opened / scheduled / closed / cancelled result to an fsync-ed
append-only file. The parent first runs it once without interruption (the reference), then runs it
again in a fresh directory, killing it with SIGKILL after a random delay (``random.Random(seed)``,
the seed is printed) and restarting it until its data ends, as many times as needed for `--trials`
kills (starting another pass when one ends first). Each interrupted pass must match the reference.

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
  snapshot), orphan temp files were swept, and the final stored state equals the reference's (the
  directory's ``.lock`` file aside: it names the process that held it).

`test_kill9_shared_risk_profile`: three symbols (``BTC/USDT``, ``BTC-PERP``, ``ETH/USDT``, copies of
the same series) share one risk profile with ``max_concurrent_positions=2``. A kill in the middle of
an instant makes the restart replay it for pairs that had ticked it, and each process life starts
the pairs in another (rotated) order, so a restarted pair may tick before a stored position's own
pair; so this test checks invariants rather than the reference's exact trades: the profile never
holds more than 2 positions when one opens (the journal's ``open_count`` counts positions a
restarted process has not restored yet too), no error, no corrupt or temp file, a repeated line is
identical to the first, no signal closes twice, and at the end the stored risk registry holds
exactly the stored pending signals.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import pytest

import backtest_kit as bk

pytestmark = pytest.mark.killtest

CHILD = Path(__file__).with_name("killtest_child.py")
MAX_PASSES = 100
KILLS_PER_PASS = 30  # more trials run more passes, so kill delays stay spread over a whole pass
SHARED_SYMBOLS = ("BTC/USDT", "BTC-PERP", "ETH/USDT")
SHARED_LIMIT = 2
SHARED_DEFAULT_TRIALS = 20  # keeps the CI run of both tests well under a minute on two cores


@dataclass
class PassStats:
    kills: int = 0
    lives: int = 0
    duplicates: int = 0
    lost_announcements: int = 0
    max_open: int = 0
    kill_delays: list[float] = field(default_factory=list)

    def add(self, other: PassStats) -> None:
        self.kills += other.kills
        self.lives += other.lives
        self.duplicates += other.duplicates
        self.lost_announcements += other.lost_announcements
        self.max_open = max(self.max_open, other.max_open)


def _child_cmd(csv: Path, workdir: Path, minutes: int, extra: tuple[str, ...] = ()) -> list[str]:
    return [sys.executable, str(CHILD), "--csv", str(csv), "--workdir", str(workdir), "--minutes", str(minutes),
            *extra]


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


def run_uninterrupted(csv: Path, workdir: Path, minutes: int, extra: tuple[str, ...] = ()) -> float:
    """The reference run; returns its duration from "ready" to exit (seconds)."""
    proc = _start(_child_cmd(csv, workdir, minutes, extra), workdir)
    assert _wait_ready(proc) == "ready"
    started = time.perf_counter()
    assert proc.wait(timeout=300) == 0, (workdir / "stderr.log").read_text()
    return time.perf_counter() - started


def run_with_kills(csv: Path, workdir: Path, minutes: int, rng: random.Random, kills_wanted: int,
                   mean_delay: float, extra: tuple[str, ...] = ()) -> PassStats:
    """Run the child to the end of its data, SIGKILLing it up to `kills_wanted` times."""
    stats = PassStats()
    while True:
        stats.lives += 1
        assert stats.lives <= kills_wanted + 2, "the child never finishes"
        rotate = ("--rotate", str(stats.lives - 1)) if "--symbols" in extra else ()
        proc = _start(_child_cmd(csv, workdir, minutes, (*extra, *rotate)), workdir)
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
            code = proc.wait(timeout=60)
            if code == 0:  # it reached the end of its data just before the kill landed
                return stats
            assert code == -signal.SIGKILL, (workdir / "stderr.log").read_text()
            stats.kills += 1
            stats.kill_delays.append(delay)
            continue
        assert code == 0, (workdir / "stderr.log").read_text()
        return stats


def read_journal(workdir: Path) -> list[dict[str, Any]]:
    lines = (workdir / "journal.jsonl").read_bytes().split(b"\n")
    return [msgspec.json.decode(line) for line in lines[:-1] if line]  # a torn last line would be dropped


def stored_state(workdir: Path) -> dict[str, bytes]:
    """Every stored file but the directory lock (its text names the process that last held it)."""
    data = workdir / "data"
    return {str(p.relative_to(data)): p.read_bytes() for p in sorted(data.rglob("*"))
            if p.is_file() and p.name != ".lock"}


def kill_passes(tmp_path: Path, csv: Path, minutes: int, rng: random.Random, trials: int, duration: float,
                check: Callable[[Path, PassStats], None], extra: tuple[str, ...] = ()) -> tuple[PassStats, int]:
    """Passes of `run_with_kills` (each in its own directory, checked by `check`) until `trials` kills
    were made; returns the summed stats and the number of passes."""
    totals = PassStats()
    passes = 0
    while totals.kills < trials:
        passes += 1
        assert passes <= MAX_PASSES
        wanted = min(trials - totals.kills, KILLS_PER_PASS)
        workdir = tmp_path / f"pass-{passes}"
        stats = run_with_kills(csv, workdir, minutes, rng, wanted, duration / wanted, extra)
        check(workdir, stats)
        totals.add(stats)
    return totals, passes


def first_records(journal: list[dict[str, Any]], stats: PassStats) -> dict[tuple[str, str], dict[str, Any]]:
    """The journal without error lines and with each (id, action) once, in journal order; a line written
    again after a kill must repeat the first one exactly (counted in `stats.duplicates`)."""
    errors = [r for r in journal if r["action"] == "error"]
    assert errors == [], errors
    first: dict[tuple[str, str], dict[str, Any]] = {}
    for record in journal:
        key = (record["id"], record["action"])
        if key in first:
            assert record == first[key], f"{key} journaled twice with different content"
            stats.duplicates += 1
        else:
            first[key] = record
    return first


def check_pass(reference: list[dict[str, Any]], journal: list[dict[str, Any]], stats: PassStats) -> None:
    first = first_records(journal, stats)
    order = list(first)
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


def test_kill9_harness(tmp_path: Path, kill_trials: int) -> None:
    csv = bk.bundled_sample_path()
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

    def check(workdir: Path, stats: PassStats) -> None:
        check_pass(reference, read_journal(workdir), stats)
        state = stored_state(workdir)
        assert not [name for name in state if ".corrupt-" in name or "/.tmp-" in name], sorted(state)
        assert state == reference_state

    totals, passes = kill_passes(tmp_path, csv, minutes, rng, kill_trials, duration, check)
    elapsed = time.perf_counter() - started
    print(
        f"killtest: {totals.kills} kills over {passes} pass(es), {totals.lives} process lives; "
        f"reference: {len(reference)} journal lines, {actions.count('closed')} closed, "
        f"{actions.count('cancelled')} cancelled, pass {duration:.2f}s; "
        f"duplicates collapsed {totals.duplicates}, open/schedule lines lost {totals.lost_announcements}; "
        f"total {elapsed:.1f}s"
    )


def check_shared_pass(journal: list[dict[str, Any]], stats: PassStats, limit: int) -> None:
    """The invariants of a pass of several symbols under one profile (module docstring)."""
    first = first_records(journal, stats)
    opened = [r for r in journal if r["action"] == "opened"]
    stats.max_open = max([stats.max_open, *(r["open_count"] for r in opened)])
    over = [(r["tick"], r["result"]["symbol"], r["open_count"]) for r in opened if r["open_count"] > limit]
    assert over == [], f"max_concurrent_positions={limit} exceeded: {over}"
    finished = [i for i, action in first if action in ("closed", "cancelled")]
    assert len(finished) == len(set(finished)), "a signal was closed twice"


def check_shared_state(workdir: Path, limit: int) -> None:
    """No corrupt or temp file; the stored registry holds exactly the stored pending signals."""
    state = stored_state(workdir)
    assert not [name for name in state if ".corrupt-" in name or "/.tmp-" in name], sorted(state)
    pending = sorted(msgspec.json.decode(data)["id"] for name, data in state.items() if name.startswith("signals/"))
    risk = state.get("risk/shared.json")
    registered = sorted(pos["signal"]["id"] for _, pos in msgspec.json.decode(risk)) if risk is not None else []
    assert registered == pending and len(pending) <= limit


def test_kill9_shared_risk_profile(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    option = request.config.getoption("--trials")
    trials = int(option if option is not None else os.environ.get("BK_KILLTEST_TRIALS", SHARED_DEFAULT_TRIALS))
    csv = bk.bundled_sample_path()
    minutes = int(os.environ.get("BK_KILLTEST_MINUTES", "1440"))  # churning: ~560 trades a day
    seed = int(os.environ.get("BK_KILLTEST_SEED", str(random.SystemRandom().randrange(2**32))))
    extra = ("--symbols", ",".join(SHARED_SYMBOLS), "--risk-limit", str(SHARED_LIMIT))
    print(f"\nkilltest shared: seed={seed} trials={trials} minutes={minutes} (BK_KILLTEST_SEED={seed} to replay)")
    rng = random.Random(seed)
    started = time.perf_counter()

    reference_dir = tmp_path / "reference"
    duration = run_uninterrupted(csv, reference_dir, minutes, extra)
    reference = read_journal(reference_dir)
    ref_stats = PassStats()
    check_shared_pass(reference, ref_stats, SHARED_LIMIT)
    check_shared_state(reference_dir, SHARED_LIMIT)
    if minutes >= 60:  # the churn makes the three pairs compete for the two slots at once
        assert ref_stats.max_open == SHARED_LIMIT
        assert {r["result"]["symbol"] for r in reference if r["action"] == "opened"} == set(SHARED_SYMBOLS)

    def check(workdir: Path, stats: PassStats) -> None:
        check_shared_pass(read_journal(workdir), stats, SHARED_LIMIT)
        check_shared_state(workdir, SHARED_LIMIT)

    totals, passes = kill_passes(tmp_path, csv, minutes, rng, trials, duration, check, extra)
    elapsed = time.perf_counter() - started
    actions = [r["action"] for r in reference]
    print(
        f"killtest shared: {totals.kills} kills over {passes} pass(es), {totals.lives} process lives; "
        f"reference: {actions.count('opened')} opened, {actions.count('closed')} closed, "
        f"{actions.count('cancelled')} cancelled, pass {duration:.2f}s; max concurrent positions seen "
        f"{totals.max_open} (reference {ref_stats.max_open}, limit {SHARED_LIMIT}); duplicates collapsed "
        f"{totals.duplicates}; total {elapsed:.1f}s"
    )

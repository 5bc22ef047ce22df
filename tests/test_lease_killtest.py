"""Kill -9 trials on a shared store: processes sharing one risk profile, and a standby taking over.

    pytest -m killtest -s tests/test_lease_killtest.py                 # 10 kills per server (CI)
    BK_LEASE_KILLTEST_TRIALS=200 pytest -m killtest -s tests/test_lease_killtest.py   # or --trials 200
    BK_KILLTEST_SEED=1234 ...                                            # replay one random schedule

`test_kill9_two_processes_share_one_risk_limit` (Redis and PostgreSQL): two child processes
(`tests/lease_child.py`), ``node-1`` trading ``BTC/USDT`` and ``node-2`` trading ``ETH/USDT``, share
the risk profile ``shared`` with ``max_concurrent_positions=1`` in one namespace; every flat pair asks
for a position on every tick, so the single slot is always contended across the processes. The parent
SIGKILLs one of them at random moments and restarts it under the same owner name (so it takes its
pair's lease back at once, with a new fencing token) until the trials are done, then lets both run
to the end of their data. Checked on the shared journal and the final store:

* **never two open positions**: at each open the store held at most one pending signal (a stored
  signal always holds a slot), and replaying the journal's opens and closes in order never has two
  positions open at once;
* **no position lost or duplicated**: each (id, action) repeated after a kill repeats its first line
  exactly, no id is closed twice, every opened id is closed or still stored at the end, no error was
  reported, and the final slots are exactly the stored positions (a slot released once, by the pair's
  owner, after its signal was deleted).

`test_kill9_standby_takes_over_and_restores_once` (both servers): an owner opens a long position, a
standby process with another owner name waits for the lease, the owner is SIGKILLed; the standby takes
over after the lease TTL, restores the position (its first tick is ``active`` on that id) and never
opens it again; it closes exactly once.
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
from servers import POSTGRES_DSN, REDIS_URL, drop_backend, unique_name

import backtest_kit as bk

pytestmark = pytest.mark.killtest

CHILD = Path(__file__).with_name("lease_child.py")
LIMIT = 1
NODES = (("node-1", "BTC/USDT"), ("node-2", "ETH/USDT"))
DEFAULT_TRIALS = 10  # per server: ~20 kills in CI
KILLS_PER_PASS = 25


@dataclass
class Totals:
    kills: int = 0
    lives: int = 0
    passes: int = 0
    opened: int = 0
    closed: int = 0
    duplicates: int = 0
    max_stored: int = 0
    max_concurrent: int = 0
    delays: list[float] = field(default_factory=list)


def trials(request: pytest.FixtureRequest) -> int:
    option = request.config.getoption("--trials")
    return int(option if option is not None else os.environ.get("BK_LEASE_KILLTEST_TRIALS", DEFAULT_TRIALS))


def make_backend(kind: str) -> Any:
    if kind == "redis":
        return bk.RedisPersist(REDIS_URL, namespace=unique_name("k-"))
    return bk.PostgresPersist(POSTGRES_DSN, namespace=unique_name("k-"), schema=unique_name("bkk_"))


class Child:
    """One node: its command line, its current process, and how many lives it had."""

    def __init__(self, kind: str, store: Any, workdir: Path, journal: Path, owner: str, symbol: str,
                 *extra: str) -> None:
        url = REDIS_URL if kind == "redis" else POSTGRES_DSN
        schema = ("--schema", store.schema) if kind == "postgres" else ()
        self.workdir = workdir / owner
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.cmd = [sys.executable, str(CHILD), "--backend", kind, "--url", url, "--namespace", store.namespace,
                    *schema, "--owner", owner, "--symbols", symbol, "--workdir", str(self.workdir),
                    "--journal", str(journal), *extra]
        self.proc: subprocess.Popen[bytes] | None = None
        self.lives = 0
        self.done = False

    def start(self) -> None:
        self.lives += 1
        with open(self.workdir / "stderr.log", "ab") as stderr:
            self.proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, stderr=stderr, cwd=self.workdir,
                                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
        assert self.proc.stdout is not None
        first = self.proc.stdout.readline().decode().strip()
        if first == "done":
            self.finish()
        else:
            assert first == "ready", self.log()

    def finish(self) -> None:
        assert self.proc is not None
        assert self.proc.wait(timeout=300) == 0, self.log()
        self.done = True

    def kill(self) -> bool:
        """SIGKILL the running process; False if it had just exited by itself (its data ended)."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        code = self.proc.wait(timeout=60)
        if code == 0:
            self.done = True
            return False
        assert code == -signal.SIGKILL, self.log()
        return True

    def log(self) -> str:
        return (self.workdir / "stderr.log").read_text(errors="replace")[-4000:]


def read_journal(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    lines = path.read_bytes().split(b"\n")
    return [msgspec.json.decode(line) for line in lines[:-1] if line]


def comparable(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k != "life"}


async def stored_ids(store: Any) -> tuple[list[str], list[str]]:
    """(ids of the stored pending signals, ids of the profile's held slots), each sorted."""
    pending = []
    for key in await store.keys("signals"):
        data = await store.read("signals", key)
        assert data is not None
        pending.append(msgspec.json.decode(data)["id"])
    slots = [msgspec.json.decode(v)["signal"]["id"] for v in (await store.risk_slots("shared")).values()]
    return sorted(pending), sorted(slots)


def check_journal(journal: list[dict[str, Any]], totals: Totals) -> tuple[set[str], set[str]]:
    """The invariants of one pass's shared journal; returns (opened ids, closed ids)."""
    errors = [r for r in journal if r["action"] == "error"]
    assert errors == [], errors[:5]
    first: dict[tuple[str, str], dict[str, Any]] = {}
    open_now: set[str] = set()
    for record in journal:
        if record["action"] == "restored":
            continue
        key = (record["id"], record["action"])
        if key in first:
            assert comparable(record) == comparable(first[key]), f"{key} journaled twice with different content"
            totals.duplicates += 1
            continue
        first[key] = record
        if record["action"] == "opened":
            assert record["stored"] <= LIMIT, f"{record['stored']} positions stored at the open of {record['id']}"
            totals.max_stored = max(totals.max_stored, record["stored"])
            open_now.add(record["id"])
            totals.max_concurrent = max(totals.max_concurrent, len(open_now))
            assert len(open_now) <= LIMIT, f"open at once: {sorted(open_now)}"
        elif record["action"] == "closed":
            open_now.discard(record["id"])
    opened = {i for i, a in first if a == "opened"}
    closed = {i for i, a in first if a == "closed"}
    totals.opened += len(opened)
    totals.closed += len(closed)
    return opened, closed


@pytest.mark.parametrize("kind", ["redis", "postgres"])
async def test_kill9_two_processes_share_one_risk_limit(kind: str, tmp_path: Path,
                                                         request: pytest.FixtureRequest) -> None:
    wanted = trials(request)
    seed = int(os.environ.get("BK_KILLTEST_SEED", str(random.SystemRandom().randrange(2**32))))
    print(f"\nlease killtest {kind}: seed={seed} trials={wanted} (BK_KILLTEST_SEED={seed} to replay)")
    rng = random.Random(seed)
    totals = Totals()
    started = time.perf_counter()
    while totals.kills < wanted:
        totals.passes += 1
        assert totals.passes <= max(50, 2 * wanted)  # a pass may end (its data ran out) before its kills
        store = make_backend(kind)
        workdir = tmp_path / f"pass-{totals.passes}"
        journal_path = workdir / "journal.jsonl"
        try:
            children = [Child(kind, store, workdir, journal_path, owner, symbol, "--minutes", "5760")
                        for owner, symbol in NODES]
            pass_kills = min(KILLS_PER_PASS, wanted - totals.kills)
            for child in children:
                child.start()
            while pass_kills > 0 and not all(c.done for c in children):
                running = [c for c in children if not c.done]
                victim = rng.choice(running)
                delay = rng.uniform(0.0, 0.5)
                assert victim.proc is not None
                try:
                    victim.proc.wait(timeout=delay)
                except subprocess.TimeoutExpired:
                    if victim.kill():
                        totals.kills += 1
                        pass_kills -= 1
                        totals.delays.append(delay)
                        victim.start()
                    continue
                victim.finish()  # its data ended before the kill
            for child in children:
                if not child.done:
                    child.finish()
            totals.lives += sum(c.lives for c in children)

            opened, closed = check_journal(read_journal(journal_path), totals)
            pending, slots = await stored_ids(store)
            assert pending == slots, f"slots {slots} != stored positions {pending}"
            assert len(pending) <= LIMIT
            lost = opened - closed - set(pending)
            assert lost == set(), f"opened, never closed and no longer stored: {sorted(lost)}"
        finally:
            await drop_backend(store)
    elapsed = time.perf_counter() - started
    print(f"lease killtest {kind}: {totals.kills} kills over {totals.passes} pass(es), {totals.lives} process "
          f"lives; {totals.opened} positions opened, {totals.closed} closed; max stored at an open "
          f"{totals.max_stored}, max open at once {totals.max_concurrent} (limit {LIMIT}); duplicates "
          f"collapsed {totals.duplicates}; total {elapsed:.1f}s")
    assert totals.max_concurrent == LIMIT  # the slot really was contended and used


@pytest.mark.parametrize("kind", ["redis", "postgres"])
async def test_kill9_standby_takes_over_and_restores_once(kind: str, tmp_path: Path) -> None:
    store = make_backend(kind)
    journal_path = tmp_path / "journal.jsonl"
    common = ("--minutes", "1200", "--hold", "600", "--lease-ttl", "1")
    try:
        owner = Child(kind, store, tmp_path, journal_path, "owner", "BTC/USDT", *common, "--pace", "0.05")
        standby = Child(kind, store, tmp_path, journal_path, "standby", "BTC/USDT", *common, "--standby",
                        "--follow")
        shared = tmp_path / "shared"  # both processes follow one checkpoint: the standby resumes there
        shared.mkdir()
        for child in (owner, standby):
            child.workdir = shared
            child.cmd[child.cmd.index("--workdir") + 1] = str(shared)
        owner.start()
        deadline = time.monotonic() + 60
        while not [r for r in read_journal(journal_path) if r["action"] == "opened"]:
            assert time.monotonic() < deadline, owner.log()
            time.sleep(0.01)  # polling a file another process writes; no timing is asserted
        standby.start()  # waits for the lease
        assert owner.kill()
        killed_at = time.time()
        standby.finish()
        journal = read_journal(journal_path)
        first_open = next(r for r in journal if r["action"] == "opened")
        position = first_open["id"]
        assert first_open["life"]["owner"] == "owner"
        by_standby = [r for r in journal if r["life"]["owner"] == "standby"]
        owner_lines = [r for r in journal if r["life"]["owner"] == "owner"]
        held_at_kill = [r["id"] for r in owner_lines if r["action"] == "opened"
                        and (r["id"], "closed") not in {(x["id"], x["action"]) for x in owner_lines}]
        assert len(held_at_kill) == 1
        held = held_at_kill[0]
        assert by_standby[0]["action"] == "restored" and by_standby[0]["id"] == held
        assert [r for r in by_standby if r["action"] == "opened" and r["id"] == held] == []  # no duplicate open
        assert len([r for r in journal if r["action"] == "closed" and r["id"] == held]) == 1  # closed once
        assert [r for r in journal if r["action"] == "error"] == []
        takeover = by_standby[0]["life"]["wall"] - killed_at
        print(f"\nstandby {kind}: took over {takeover:.2f} s after the kill (lease TTL 1 s), restored {held} "
              f"(first opened {position}), closed it once")
        pending, slots = await stored_ids(store)
        assert pending == slots
    finally:
        await drop_backend(store)

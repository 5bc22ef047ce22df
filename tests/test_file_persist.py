"""FilePersist: atomic, private, name-safe file storage of live state
([decisions 4](../docs/design/decisions.md#decision-4-restored-state-is-validated) and
[14](../docs/design/decisions.md#decision-14-persistence-layout-follows-the-seed))."""

from __future__ import annotations

import asyncio
import errno
import os
import stat
import tempfile
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backtest_kit.adapters.file_persist import FilePersist
from backtest_kit.engine.errors import PersistError
from backtest_kit.engine.persist import PersistBackend, QuarantineBackend

WEIRD_KEYS = [
    "BTCUSDT-rsi",
    "",
    ".",
    "..",
    "../../etc/x",
    "/abs/path",
    "a\\b",
    "nul\x00byte",
    "NUL",
    "con.json",
    ".tmp-abc-x",
    "x.json.corrupt-20250101T000000Z",
    "k~hash",
    "100%",
    "émoji-🚀",
    "trailing.",
    "space key",
    "\ud800",  # lone surrogate: still a valid str
    "k" * 10_000,
    "é" * 200,
]


def _files_under(root: Path) -> list[Path]:
    return [Path(d) / f for d, _, files in os.walk(root) for f in files]


async def test_implements_protocols(tmp_path: Path) -> None:
    store = FilePersist(tmp_path)
    assert isinstance(store, PersistBackend)
    assert isinstance(store, QuarantineBackend)


async def test_round_trip_overwrite_delete(tmp_path: Path) -> None:
    store = FilePersist(tmp_path)
    assert await store.read("signals", "BTCUSDT-rsi") is None
    await store.write("signals", "BTCUSDT-rsi", b'{"a":1}')
    # the layout of [decision 14](../docs/design/decisions.md#decision-14-persistence-layout-follows-the-seed)
    assert (tmp_path / "signals" / "BTCUSDT-rsi.json").read_bytes() == b'{"a":1}'
    assert await store.read("signals", "BTCUSDT-rsi") == b'{"a":1}'
    await store.write("signals", "BTCUSDT-rsi", b'{"a":2}')
    assert await store.read("signals", "BTCUSDT-rsi") == b'{"a":2}'
    assert await store.keys("signals") == ["BTCUSDT-rsi"]
    await store.delete("signals", "BTCUSDT-rsi")
    assert await store.read("signals", "BTCUSDT-rsi") is None
    assert await store.keys("signals") == []
    assert not (tmp_path / "signals" / "BTCUSDT-rsi.json").exists()


async def test_missing_things_are_not_errors(tmp_path: Path) -> None:
    store = FilePersist(tmp_path / "never-created")
    await store.delete("signals", "nope")
    assert await store.read("signals", "nope") is None
    assert await store.keys("signals") == []
    assert await store.quarantine("signals", "nope") is None
    assert not (tmp_path / "never-created").exists()  # reads create nothing
    await store.write("signals", "other", b"1")
    await store.delete("signals", "nope")
    assert await store.quarantine("signals", "nope") is None


async def test_empty_data_and_bytes_like(tmp_path: Path) -> None:
    store = FilePersist(tmp_path, fsync=False)
    await store.write("e", "k", b"")
    assert await store.read("e", "k") == b""
    await store.write("e", "k", bytearray(b"xy"))  # type: ignore[arg-type]
    assert await store.read("e", "k") == b"xy"
    with pytest.raises(TypeError, match="must be bytes"):
        await store.write("e", "k", "text")  # type: ignore[arg-type]


async def test_weird_keys_round_trip_and_are_listed(tmp_path: Path) -> None:
    base = tmp_path / "base"
    store = FilePersist(base)
    for i, key in enumerate(WEIRD_KEYS):
        await store.write("signals", key, f"v{i}".encode())
    for i, key in enumerate(WEIRD_KEYS):
        assert await store.read("signals", key) == f"v{i}".encode()
    assert sorted(await store.keys("signals")) == sorted(WEIRD_KEYS)
    assert os.listdir(tmp_path) == ["base"]
    for path in _files_under(base):
        assert path.resolve().is_relative_to(base.resolve())
        assert len(path.name.encode()) <= 150
        assert not path.name.startswith(".")
    assert store.path_for("signals", "x").parent == base / "signals"


async def test_weird_entities_stay_inside(tmp_path: Path) -> None:
    base = tmp_path / "base"
    store = FilePersist(base)
    for entity in ["../../escape", "", "..", "/etc", "a/b", "e" * 5000, "\x00"]:
        await store.write(entity, "k", b"1")
        assert await store.keys(entity) == ["k"]
        assert await store.read(entity, "k") == b"1"
    assert os.listdir(tmp_path) == ["base"]
    assert len(os.listdir(base)) == 7
    for path in _files_under(base):
        assert path.resolve().is_relative_to(base.resolve())


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    entity=st.text(max_size=20),
    key=st.one_of(
        st.text(),
        st.text(alphabet=st.sampled_from(["/", "\\", ".", "\x00", "%", "~", "a", "é"]), max_size=300),
        st.text(min_size=140, max_size=3000),
        st.sampled_from(WEIRD_KEYS),
    ),
    data=st.binary(max_size=64),
)
def test_property_any_key_round_trips_inside_base(tmp_path: Path, entity: str, key: str, data: bytes) -> None:
    with tempfile.TemporaryDirectory(dir=tmp_path) as tmp:
        root = Path(tmp)
        base = root / "base"

        async def scenario() -> None:
            store = FilePersist(base, fsync=False)
            await store.write(entity, key, data)
            assert await store.read(entity, key) == data
            assert await store.keys(entity) == [key]
            for path in _files_under(base):
                assert path.resolve().is_relative_to(base.resolve()), path
                assert len(path.name.encode()) <= 150
            assert os.listdir(root) == ["base"]
            await store.delete(entity, key)
            assert await store.read(entity, key) is None
            assert await store.keys(entity) == []

        asyncio.run(scenario())


async def test_distinct_keys_never_collide(tmp_path: Path) -> None:
    store = FilePersist(tmp_path, fsync=False)
    # same long prefix, differing only at the end (hashed form), and escapes vs. literal text
    keys = ["x" * 500 + "a", "x" * 500 + "b", "%2F", "/", "a.b", "a%2Eb", ".a", "%2Ea"]
    for key in keys:
        await store.write("e", key, key.encode())
    for key in keys:
        assert await store.read("e", key) == key.encode()
    assert sorted(await store.keys("e")) == sorted(keys)


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
async def test_permissions_private_whatever_umask(tmp_path: Path) -> None:
    old = os.umask(0o277)  # would strip owner write from new files if modes relied on umask
    try:
        store = FilePersist(tmp_path / "a" / "b")
        await store.write("signals", "k", b"1")
        await store.write("signals", "y" * 400, b"2")  # hashed form: sidecar too
    finally:
        os.umask(old)
    for d in (tmp_path / "a", tmp_path / "a" / "b", tmp_path / "a" / "b" / "signals"):
        assert stat.S_IMODE(d.stat().st_mode) == 0o700, d
    files = _files_under(tmp_path / "a")
    assert len(files) == 3
    for f in files:
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
async def test_existing_base_dir_mode_untouched(tmp_path: Path) -> None:
    base = tmp_path / "shared"
    base.mkdir(mode=0o755)
    os.chmod(base, 0o755)
    await FilePersist(base).write("risk", "r", b"1")
    assert stat.S_IMODE(base.stat().st_mode) == 0o755
    assert stat.S_IMODE((base / "risk").stat().st_mode) == 0o700


async def test_orphan_temp_files_swept_on_first_use(tmp_path: Path) -> None:
    sig = tmp_path / "signals"
    sig.mkdir()
    (sig / "BTC-x.json").write_bytes(b"keep")
    (sig / ".tmp-0123456789ab-BTC-x.json").write_bytes(b"half")
    (sig / ".tmp-ffffffffffff-ETH-x.json").write_bytes(b"")
    orphan_sidecar = "p~" + "0" * 32 + ".key"
    (sig / orphan_sidecar).write_bytes(b"p")
    (sig / "notes.txt").write_bytes(b"foreign")
    other = tmp_path / "risk"
    other.mkdir()
    (other / ".tmp-aaaaaaaaaaaa-r.json").write_bytes(b"x")

    store = FilePersist(tmp_path)
    assert await store.keys("signals") == ["BTC-x"]
    assert sorted(os.listdir(sig)) == ["BTC-x.json", "notes.txt"]
    assert (other / ".tmp-aaaaaaaaaaaa-r.json").exists()  # each entity swept on its own first use
    assert await store.read("risk", "r") is None
    assert os.listdir(other) == []
    assert await store.read("signals", "BTC-x") == b"keep"


async def test_keys_ignores_foreign_and_non_canonical_files(tmp_path: Path) -> None:
    store = FilePersist(tmp_path)
    await store.write("e", "good", b"1")
    d = tmp_path / "e"
    for name in ["BTC USDT.json", "bad%zz.json", "lower%2f.json", "x.txt", "k~" + "1" * 32 + ".json"]:
        (d / name).write_bytes(b"x")
    (d / "sub.json").mkdir()
    assert await store.keys("e") == ["good"]


async def test_quarantine_moves_file_aside_and_keeps_bytes(tmp_path: Path) -> None:
    store = FilePersist(tmp_path)
    await store.write("signals", "BTC-x", b"{not json")
    moved = await store.quarantine("signals", "BTC-x")
    assert moved is not None
    moved_path = Path(moved)
    assert moved_path.parent == tmp_path / "signals"
    assert moved_path.name.startswith("BTC-x.json.corrupt-")
    stamp = moved_path.name.removeprefix("BTC-x.json.corrupt-")
    assert len(stamp) == 16 and stamp[8] == "T" and stamp.endswith("Z") and stamp[:8].isdigit()
    assert moved_path.read_bytes() == b"{not json"
    assert await store.read("signals", "BTC-x") is None
    assert await store.keys("signals") == []

    await store.write("signals", "BTC-x", b"again")  # second quarantine in the same second: counter
    second = await store.quarantine("signals", "BTC-x")
    assert second is not None and second != moved
    assert Path(second).read_bytes() == b"again"
    assert moved_path.read_bytes() == b"{not json"

    # a new instance's start-up sweep never deletes quarantined files
    assert await FilePersist(tmp_path).keys("signals") == []
    assert Path(moved).exists() and Path(second).exists()


async def test_quarantine_of_hashed_key_keeps_original_key(tmp_path: Path) -> None:
    store = FilePersist(tmp_path)
    key = "z" * 1000
    await store.write("e", key, b"bad")
    moved = await store.quarantine("e", key)
    assert moved is not None
    sidecars = [p for p in (tmp_path / "e").iterdir() if ".key.corrupt-" in p.name]
    assert len(sidecars) == 1 and sidecars[0].read_bytes() == key.encode()
    await store.write("e", key, b"good")
    assert await store.keys("e") == [key]
    assert await FilePersist(tmp_path).keys("e") == [key]


async def test_not_a_directory_raises_persist_error(tmp_path: Path) -> None:
    (tmp_path / "afile").write_bytes(b"")
    store = FilePersist(tmp_path / "afile" / "sub")
    with pytest.raises(PersistError, match="signals") as info:
        await store.write("signals", "BTC-x", b"1")
    assert "BTC-x" in str(info.value) and "Not a directory" in str(info.value)
    assert info.value.errno == errno.ENOTDIR
    with pytest.raises(PersistError, match="signals"):
        await store.read("signals", "BTC-x")
    with pytest.raises(PersistError, match="signals"):
        await store.keys("signals")


async def test_permission_denied_raises_persist_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = FilePersist(tmp_path)
    await store.write("risk", "p", b"old")
    real_open = os.open

    def deny(path: str | os.PathLike[str], flags: int, mode: int = 0o777, **kw: object) -> int:
        if ".tmp-" in os.fspath(path):
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))
        return real_open(path, flags, mode)

    monkeypatch.setattr(os, "open", deny)
    with pytest.raises(PersistError, match=r"entity 'risk' key 'p'.*Permission denied") as info:
        await store.write("risk", "p", b"new")
    assert str(tmp_path / "risk" / "p.json") in str(info.value)
    monkeypatch.undo()
    assert await store.read("risk", "p") == b"old"


async def test_failed_replace_keeps_old_content_and_no_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = FilePersist(tmp_path)
    await store.write("signals", "BTC-x", b"old")

    def full(src: object, dst: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(PersistError, match=r"signals.*BTC-x.*No space left") as info:
        await store.write("signals", "BTC-x", b"new-new-new")
    assert info.value.errno == errno.ENOSPC
    assert isinstance(info.value.__cause__, OSError)
    monkeypatch.undo()
    assert await store.read("signals", "BTC-x") == b"old"
    assert os.listdir(tmp_path / "signals") == ["BTC-x.json"]


async def test_failed_fsync_keeps_old_content_and_no_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = FilePersist(tmp_path)
    await store.write("signals", "BTC-x", b"old")

    def broken(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", broken)
    with pytest.raises(PersistError, match="Input/output error"):
        await store.write("signals", "BTC-x", b"new")
    monkeypatch.undo()
    assert await store.read("signals", "BTC-x") == b"old"
    assert os.listdir(tmp_path / "signals") == ["BTC-x.json"]


async def test_io_runs_off_the_event_loop_thread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = FilePersist(tmp_path)
    loop_thread = threading.get_ident()
    seen: list[int] = []
    real_replace = os.replace

    def spy(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        seen.append(threading.get_ident())
        real_replace(src, dst)

    calls = 0
    real_to_thread = asyncio.to_thread

    async def counting(func: object, /, *args: object, **kwargs: object) -> object:
        nonlocal calls
        calls += 1
        return await real_to_thread(func, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "replace", spy)
    monkeypatch.setattr(asyncio, "to_thread", counting)
    await store.write("e", "k" * 300, b"1")  # hashed key: sidecar + data, still one hop
    assert calls == 1
    assert len(seen) == 2 and loop_thread not in seen


async def test_concurrent_writes_of_many_keys(tmp_path: Path) -> None:
    store = FilePersist(tmp_path, fsync=False)
    await asyncio.gather(*(store.write("signals", f"S{i}-x", str(i).encode()) for i in range(50)))
    assert sorted(await store.keys("signals")) == sorted(f"S{i}-x" for i in range(50))
    assert [p for p in os.listdir(tmp_path / "signals") if p.startswith(".tmp-")] == []


async def test_directory_removed_after_first_use_is_recreated(tmp_path: Path) -> None:
    store = FilePersist(tmp_path)
    await store.write("e", "k", b"1")
    (tmp_path / "e" / "k.json").unlink()
    (tmp_path / "e").rmdir()
    await store.write("e", "k", b"2")
    assert await store.read("e", "k") == b"2"

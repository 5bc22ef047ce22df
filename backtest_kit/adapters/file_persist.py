"""Crash-safe file storage for live state: one JSON file per key, written atomically.

Layout ([decision 14](../../docs/design/decisions.md#decision-14-persistence-layout-follows-the-seed)):
``<base_dir>/<entity>/<key>.json``; e.g. the pending signal of BTCUSDT under strategy ``rsi`` is
``<base_dir>/signals/BTCUSDT-rsi.json``. The engine hands us bytes it has already serialized; this
module only decides where they go and makes sure a crash at any instant leaves either the old or the new
document, never a torn one.

Why each piece exists:

* **Atomic write.** Data goes to a unique temp file in the *same* directory (``.tmp-<12 hex>-<name>``,
  same file system, so the rename is atomic), is flushed and ``fsync``-ed, then ``os.replace``-d onto
  the target; the directory is ``fsync``-ed afterwards so the rename itself survives a power loss.
* **Orphan sweep.** A temp file can only outlive its write if the process died mid-write, so the first
  use of each entity directory deletes every ``.tmp-*`` file in it
  ([decision 4](../../docs/design/decisions.md#decision-4-restored-state-is-validated)). This assumes
  one process owns a ``base_dir`` at a time (a second process's in-flight temp file would be swept too),
  which the directory lock below enforces for engines.
* **Private files.** Snapshots reveal positions and strategy names, so files are created ``0o600`` and
  the directories this class creates ``0o700``, set explicitly (``chmod``) rather than trusting umask.
  Directories that already existed are left alone.
* **No blocking the loop.** Each public operation is exactly one ``asyncio.to_thread`` call that runs
  the whole blocking sequence. If the awaiting task is cancelled, the thread still finishes, so a write
  is either fully done or not started; it is never left half-way.
* **Nothing is deleted on corruption.** ``quarantine`` renames a bad file to
  ``<file>.corrupt-<UTC timestamp>`` (plus ``-<n>`` when that name is taken) so it can be inspected.

Naming scheme (entity and key are arbitrary text: ``/``, ``\\``, NUL, ``..``, empty, 10,000 chars):

1. The text is encoded to UTF-8 (``surrogatepass``, so every ``str`` works) and every byte outside
   ``[A-Za-z0-9_.-]`` becomes ``%XX`` (upper-case hex). A leading or trailing ``.`` is escaped too, and
   so is the first letter of a Windows device name (``CON``, ``NUL``, ``COM1``...). The result has no
   path separator, no NUL, never starts with a dot (so it can never be ``.``, ``..`` or look like a temp
   file) and decodes back to the original: the mapping is injective, so two keys never collide and
   ``keys()`` can return the original text. ``BTCUSDT-rsi`` stays ``BTCUSDT-rsi``.
2. When that encoding is empty or longer than the bound (145 characters, so ``<stem>.json`` is at most
   150 bytes and temp/quarantine names stay far below the usual 255-byte limit), the stem becomes
   ``<first ≤112 encoded chars>~<32 hex of sha256(original)>``. ``~`` never appears in form 1 (it is
   escaped), so the two forms cannot collide. The original key is then kept in a sidecar
   ``<stem>.key``, written atomically *before* the data file, so a data file never exists without a
   way to name it. ``delete`` leaves the sidecar (a concurrent re-write could otherwise lose it); the
   start-up sweep removes sidecars whose data file is gone.

One engine per directory
([hardening item 3](../../docs/design/decisions.md#hardening-3-one-engine-per-persist-directory)):
`acquire_lock` takes an exclusive ``flock`` on ``<base_dir>/.lock`` (non-blocking) and writes
``pid=<pid> host=<host>`` into it; a second holder,
in this process or another, gets a `PersistError` naming the first one's pid and host and changes
nothing. A directory where the lock file cannot be made, or without ``flock`` support, runs unlocked
(its operations report their own errors). The engine holds the lock while it has live runs;
`release_lock` (or the OS, when the process dies, even by SIGKILL) frees it, so a restart after a
crash just works. The lock file is not an entity
directory and never listed by `keys()`. Platforms without ``fcntl`` (Windows) run without the lock.

``keys()`` lists only ``*.json`` files whose stem is a canonical encoding produced by this scheme; temp
files, quarantined files, sidecars and foreign files are ignored.

Limits: on a case-insensitive file system (macOS, Windows defaults) keys differing only in letter case
share a file; concurrent writes of the *same* key from several tasks end with whichever rename ran
last, so callers serialize per key (the engine does).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno as errno_mod
import hashlib
import os
import secrets
import socket
import stat
import threading
import weakref
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, ParamSpec, TypeVar

from backtest_kit.engine.errors import PersistError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["FilePersist"]

_T = TypeVar("_T")
_P = ParamSpec("_P")

_SUFFIX: Final = ".json"
_SIDECAR_SUFFIX: Final = ".key"
_TMP_PREFIX: Final = ".tmp-"
_CORRUPT_MARK: Final = ".corrupt-"
_MAX_NAME: Final = 150  # bytes of a full entry name: "<stem>.json", or a directory name
_MAX_KEY_STEM: Final = _MAX_NAME - len(_SUFFIX)
_HASH_HEX: Final = 32  # 128 bits of sha256: collisions are not a practical concern
_HASH_MARK: Final = "~"
_LOCK_NAME: Final = ".lock"
_FILE_MODE: Final = 0o600
_DIR_MODE: Final = 0o700
_SAFE: Final = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-")
_ENCODE_TABLE: Final = tuple(chr(b) if b in _SAFE else f"%{b:02X}" for b in range(256))
_HEX_UPPER: Final = frozenset("0123456789ABCDEF")
_WINDOWS_DEVICES: Final = frozenset(
    {"CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"}
    | {f"COM{i}" for i in range(10)}
    | {f"LPT{i}" for i in range(10)}
)
_POSIX: Final = os.name == "posix"
# O_EXCL: a temp name is never reused; O_BINARY: no newline translation on Windows.
_TMP_FLAGS: Final = (
    os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
)
# Errors some file systems (network, FUSE) return for an fsync of a directory they cannot sync.
_DIR_FSYNC_UNSUPPORTED: Final = frozenset({errno_mod.EINVAL, errno_mod.ENOTSUP, errno_mod.EBADF})


def _percent_encode(text: str) -> str:
    """Form 1 of the naming scheme: reversible, separator-free, never starting or ending with '.'."""
    raw = text.encode("utf-8", "surrogatepass")
    encoded = "".join([_ENCODE_TABLE[b] for b in raw])
    if encoded.startswith("."):
        encoded = "%2E" + encoded[1:]
    if encoded.endswith("."):
        encoded = encoded[:-1] + "%2E"
    if encoded.split(".", 1)[0].upper() in _WINDOWS_DEVICES:
        encoded = f"%{ord(encoded[0]):02X}" + encoded[1:]
    return encoded


def _percent_decode(stem: str) -> str | None:
    """Inverse of `_percent_encode`, or None when `stem` is not exactly what it would produce.

    Requiring the canonical form means every key that `keys()` reports maps back to the same file
    that `read()` opens; hand-made files such as ``BTC USDT.json`` are ignored instead of listed
    under a key that cannot be read.
    """
    out = bytearray()
    i = 0
    n = len(stem)
    while i < n:
        ch = stem[i]
        if ch == "%":
            pair = stem[i + 1 : i + 3]
            if len(pair) != 2 or not set(pair) <= _HEX_UPPER:
                return None
            out.append(int(pair, 16))
            i += 3
        elif ord(ch) < 128 and ord(ch) in _SAFE:
            out.append(ord(ch))
            i += 1
        else:
            return None
    try:
        text = out.decode("utf-8", "surrogatepass")
    except UnicodeDecodeError:
        return None
    return text if _percent_encode(text) == stem else None


def _safe_name(text: str, limit: int) -> tuple[str, bool]:
    """The on-disk name for `text` (at most `limit` bytes) and whether it is the hashed form 2."""
    encoded = _percent_encode(text)
    if encoded and len(encoded) <= limit:
        return encoded, False
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:_HASH_HEX]
    prefix = encoded[: limit - _HASH_HEX - len(_HASH_MARK)]
    cut = prefix.rfind("%", max(0, len(prefix) - 2))
    if cut != -1:  # do not leave half an escape before the hash
        prefix = prefix[:cut]
    return f"{prefix}{_HASH_MARK}{digest}", True


def _short(text: str, limit: int = 80) -> str:
    """`repr` of a possibly 10,000-character name, cut so error messages stay readable."""
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}...({len(text)} chars)"


def _fsync_dir(path: Path) -> None:
    """Make a rename/create/unlink in `path` durable (POSIX only; Windows has no directory fsync)."""
    if not _POSIX:
        return
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in _DIR_FSYNC_UNSUPPORTED:
            raise
    finally:
        os.close(fd)


def _make_dirs(path: Path, *, fsync: bool) -> None:
    """Create `path` and missing parents as 0o700, whatever the umask; existing ones are untouched."""
    missing: list[Path] = []
    current = path
    while True:
        try:
            st = os.stat(current)
        except FileNotFoundError:
            missing.append(current)
            if current.parent == current:
                break
            current = current.parent
            continue
        if not stat.S_ISDIR(st.st_mode):
            raise NotADirectoryError(errno_mod.ENOTDIR, os.strerror(errno_mod.ENOTDIR), str(current))
        break
    for directory in reversed(missing):
        try:
            os.mkdir(directory, _DIR_MODE)
        except FileExistsError:
            if not directory.is_dir():
                raise
            continue  # another thread or process made it first
        if _POSIX:
            os.chmod(directory, _DIR_MODE)
        if fsync:
            _fsync_dir(directory.parent)


class FilePersist:
    """`PersistBackend` and `QuarantineBackend` storing one atomically written file per key.

    See the module docstring for the layout, the naming scheme and the crash-safety reasoning.
    Every failure of the file system (missing permission, read-only or full disk, a path component
    that is a file) raises `PersistError` naming the entity, the key, the path and the OS error.
    """

    def __init__(self, base_dir: str | os.PathLike[str], *, fsync: bool = True) -> None:
        """`fsync=False` trades durability on power loss for speed (tests, throw-away runs).

        Nothing touches the disk here: directories are created, and orphan temp files swept, on the
        first operation for each entity, inside the worker thread.
        """
        self._base_dir = Path(os.fspath(base_dir)).absolute()  # immune to a later chdir
        self._fsync = fsync
        self._prepared: set[str] = set()  # entity directory names already created and swept
        self._lock = threading.Lock()  # guards `_prepared` and the sweep across worker threads
        self._dir_lock: weakref.finalize[Any, Any] | None = None  # closes the lock fd, even on GC

    @property
    def base_dir(self) -> Path:
        """The absolute root directory of every entity."""
        return self._base_dir

    def path_for(self, entity: str, key: str) -> Path:
        """Where `key` of `entity` is (or would be) stored; no I/O. Useful for logs and debugging."""
        return self._entity_dir(entity) / (_safe_name(key, _MAX_KEY_STEM)[0] + _SUFFIX)

    # ------------------------------------------------------------------ one owner per directory
    @property
    def lock_path(self) -> Path:
        """The file whose ``flock`` says which process owns this directory."""
        return self._base_dir / _LOCK_NAME

    @property
    def locked(self) -> bool:
        """True while this instance holds the directory lock."""
        return self._dir_lock is not None and self._dir_lock.alive

    def acquire_lock(self) -> None:
        """Take the directory lock (idempotent; one short blocking call, no waiting).

        Raises `PersistError` naming the holder's pid and host when another `FilePersist` (another
        engine, here or in another process) holds it; nothing in the directory is changed then.
        """
        if fcntl is None or self.locked:
            return
        path = self.lock_path
        try:
            _make_dirs(self._base_dir, fsync=self._fsync)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), _FILE_MODE)
        except OSError:
            return  # an unusable directory: every operation reports its own PersistError, as before
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "an unknown process"
            os.close(fd)
            if exc.errno not in (errno_mod.EWOULDBLOCK, errno_mod.EAGAIN):
                return  # no flock support here (e.g. some network file systems): run unlocked
            raise PersistError(
                f"persist directory {self._base_dir} is in use by another engine ({holder}; lock file "
                f"{path}); two engines on one directory would overwrite each other's positions: stop "
                "that one first or give this engine another persist_dir"
            ) from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid={os.getpid()} host={socket.gethostname()}\n".encode(), 0)
        except OSError:
            pass  # the flock is what counts; the text only names the holder in the error
        self._dir_lock = weakref.finalize(self, os.close, fd)

    def release_lock(self) -> None:
        """Give the directory lock back (closing the descriptor drops the flock); idempotent."""
        finalizer, self._dir_lock = self._dir_lock, None
        if finalizer is not None:
            finalizer()

    # ------------------------------------------------------------------ public async API

    async def read(self, entity: str, key: str) -> bytes | None:
        """The stored bytes, or None when nothing is stored under `key`."""
        return await self._run(self._read_sync, entity, key)

    async def write(self, entity: str, key: str, data: bytes) -> None:
        """Store `data` atomically: a reader sees the old bytes or the new bytes, never a mix."""
        if not isinstance(data, bytes | bytearray | memoryview):
            raise TypeError(f"data for {entity!r}/{_short(key)} must be bytes, got {type(data).__name__}")
        await self._run(self._write_sync, entity, key, bytes(data))

    async def delete(self, entity: str, key: str) -> None:
        """Remove `key`; deleting a missing key is not an error."""
        await self._run(self._delete_sync, entity, key)

    async def keys(self, entity: str) -> list[str]:
        """Every key stored for `entity` (original text), sorted by file name for a stable order."""
        return await self._run(self._keys_sync, entity)

    async def quarantine(self, entity: str, key: str) -> str | None:
        """Rename the stored file to `<file>.corrupt-<UTC timestamp>`; returns its new path.

        None when nothing is stored under `key`. The bytes are kept as they were, for inspection.
        """
        return await self._run(self._quarantine_sync, entity, key)

    # ------------------------------------------------------------------ plumbing

    async def _run(self, func: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
        """One worker-thread hop per operation: the whole blocking sequence runs off the loop."""
        return await asyncio.to_thread(func, *args, **kwargs)

    def _entity_dir(self, entity: str) -> Path:
        return self._base_dir / _safe_name(entity, _MAX_NAME)[0]

    def _error(self, action: str, entity: str, key: str | None, path: Path, exc: OSError) -> PersistError:
        """A `PersistError` a user can act on: what, which entity/key, where, and the OS reason."""
        reason = exc.strerror or str(exc) or type(exc).__name__
        code = errno_mod.errorcode.get(exc.errno, "") if exc.errno is not None else ""
        what = f"entity {entity!r}" if key is None else f"entity {entity!r} key {_short(key)}"
        message = f"cannot {action} {what} at {path}: {reason}" + (f" [{code}]" if code else "")
        err = PersistError(message)
        err.errno = exc.errno  # keep the cause machine-readable without changing str(err)
        return err

    def _prepare(self, entity: str, key: str | None, *, create: bool) -> Path | None:
        """The entity directory, created (when `create`) and swept once per process.

        Returns None when the directory does not exist and `create` is false: a read of an entity
        that was never written needs no directory, and creating one would fail on read-only media.
        """
        directory = self._entity_dir(entity)
        name = directory.name
        with self._lock:
            if name in self._prepared:
                return directory
            try:
                if create:
                    _make_dirs(directory, fsync=self._fsync)
                else:
                    try:
                        st = os.stat(directory)
                    except FileNotFoundError:
                        return None
                    if not stat.S_ISDIR(st.st_mode):
                        raise NotADirectoryError(
                            errno_mod.ENOTDIR, os.strerror(errno_mod.ENOTDIR), str(directory)
                        )
                if self._sweep(directory):
                    self._prepared.add(name)
            except OSError as exc:
                raise self._error("open directory of", entity, key, directory, exc) from exc
        return directory

    def _sweep(self, directory: Path) -> bool:
        """Delete orphan temp files and sidecars left by a crash; True when everything went.

        A failed unlink is not fatal (orphans are invisible to `keys`), but the sweep is then
        retried on the next operation instead of being marked done.
        """
        names = os.listdir(directory)
        present = set(names)
        complete = True
        removed = False
        for name in names:
            orphan = name.startswith(_TMP_PREFIX) or (
                name.endswith(_SIDECAR_SUFFIX)
                and _HASH_MARK in name
                and name[: -len(_SIDECAR_SUFFIX)] + _SUFFIX not in present
            )
            if not orphan:
                continue
            path = directory / name
            try:
                if stat.S_ISREG(os.lstat(path).st_mode):
                    os.unlink(path)
                    removed = True
            except FileNotFoundError:
                pass
            except OSError:
                complete = False
        if removed and self._fsync:
            with contextlib.suppress(OSError):
                _fsync_dir(directory)
        return complete

    def _atomic_write(self, directory: Path, name: str, data: bytes) -> None:
        """Temp file in `directory`, write, fsync, `os.replace`, fsync directory; temp removed on error."""
        tmp = directory / f"{_TMP_PREFIX}{secrets.token_hex(6)}-{name}"
        fd = os.open(tmp, _TMP_FLAGS, _FILE_MODE)
        try:
            try:
                if _POSIX:
                    os.fchmod(fd, _FILE_MODE)  # O_CREAT's mode is filtered by umask
                view = memoryview(data)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
                if self._fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, directory / name)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        if self._fsync:
            _fsync_dir(directory)

    # ------------------------------------------------------------------ blocking bodies

    def _read_sync(self, entity: str, key: str) -> bytes | None:
        directory = self._prepare(entity, key, create=False)
        if directory is None:
            return None
        path = directory / (_safe_name(key, _MAX_KEY_STEM)[0] + _SUFFIX)
        try:
            with open(path, "rb") as fh:
                return fh.read()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise self._error("read", entity, key, path, exc) from exc

    def _write_sync(self, entity: str, key: str, data: bytes) -> None:
        directory = self._prepare(entity, key, create=True)
        assert directory is not None
        stem, hashed = _safe_name(key, _MAX_KEY_STEM)
        path = directory / (stem + _SUFFIX)
        try:
            try:
                self._write_entry(directory, stem, hashed, key, data)
            except FileNotFoundError:
                # The directory vanished after it was prepared (removed by hand): recreate, retry once.
                _make_dirs(directory, fsync=self._fsync)
                self._write_entry(directory, stem, hashed, key, data)
        except OSError as exc:
            raise self._error("write", entity, key, path, exc) from exc

    def _write_entry(self, directory: Path, stem: str, hashed: bool, key: str, data: bytes) -> None:
        if hashed and not os.path.exists(directory / (stem + _SIDECAR_SUFFIX)):
            # Sidecar first: a data file must never exist without its original key.
            self._atomic_write(directory, stem + _SIDECAR_SUFFIX, key.encode("utf-8", "surrogatepass"))
        self._atomic_write(directory, stem + _SUFFIX, data)

    def _delete_sync(self, entity: str, key: str) -> None:
        directory = self._prepare(entity, key, create=False)
        if directory is None:
            return
        path = directory / (_safe_name(key, _MAX_KEY_STEM)[0] + _SUFFIX)
        try:
            os.unlink(path)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise self._error("delete", entity, key, path, exc) from exc
        if self._fsync:
            try:
                _fsync_dir(directory)
            except OSError as exc:
                raise self._error("delete", entity, key, path, exc) from exc

    def _keys_sync(self, entity: str) -> list[str]:
        directory = self._prepare(entity, None, create=False)
        if directory is None:
            return []
        try:
            with os.scandir(directory) as it:
                names = sorted(e.name for e in it if e.is_file(follow_symlinks=False))
        except OSError as exc:
            raise self._error("list", entity, None, directory, exc) from exc
        result: list[str] = []
        for name in names:
            if name.startswith(".") or not name.endswith(_SUFFIX):
                continue  # temp files, quarantined files ("...json.corrupt-..."), sidecars, others
            stem = name[: -len(_SUFFIX)]
            key = self._read_sidecar(directory, stem) if _HASH_MARK in stem else _percent_decode(stem)
            if key is not None:
                result.append(key)
        return result

    def _read_sidecar(self, directory: Path, stem: str) -> str | None:
        """The original key of a hashed stem, or None when the sidecar is missing or does not match."""
        try:
            with open(directory / (stem + _SIDECAR_SUFFIX), "rb") as fh:
                key = fh.read().decode("utf-8", "surrogatepass")
        except (OSError, UnicodeDecodeError):
            return None
        return key if _safe_name(key, _MAX_KEY_STEM) == (stem, True) else None

    def _quarantine_sync(self, entity: str, key: str) -> str | None:
        directory = self._prepare(entity, key, create=False)
        if directory is None:
            return None
        stem, hashed = _safe_name(key, _MAX_KEY_STEM)
        path = directory / (stem + _SUFFIX)
        if not os.path.lexists(path):
            return None
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        counter = 0
        while True:
            tail = f"{_CORRUPT_MARK}{stamp}" + (f"-{counter}" if counter else "")
            target = directory / (path.name + tail)
            if not os.path.lexists(target):
                break
            counter += 1
        try:
            os.rename(path, target)
        except FileNotFoundError:
            return None  # deleted or quarantined concurrently
        except OSError as exc:
            raise self._error("quarantine", entity, key, path, exc) from exc
        if hashed:
            # Keep the original key next to the quarantined bytes; a later write makes a new sidecar.
            sidecar = directory / (stem + _SIDECAR_SUFFIX)
            with contextlib.suppress(OSError):
                os.rename(sidecar, directory / (sidecar.name + tail))
        if self._fsync:
            try:
                _fsync_dir(directory)
            except OSError as exc:
                raise self._error("quarantine", entity, key, path, exc) from exc
        return str(target)

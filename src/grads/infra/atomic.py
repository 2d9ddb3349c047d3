"""Atomic outputs, and which run an output folder belongs to.

Every file is written under a temporary name in its folder, then renamed; a folder (a saved model, a token
cache) is built as a temporary sibling, then renamed into place. A reader (or a rerun after a crash) therefore
sees either the old output or the whole new one, never half. `owned_by` is the one check that a folder's record
was written by a run with the same settings (its fingerprint) before that folder is reused or resumed.
`folder_lock` keeps a second grads process out of an output folder that one is writing.

Permissions: outputs get the mode a plain `open(path, "w")` / `mkdir` would give them (0666 / 0777 less the
umask), so a teammate on a shared machine can read them when the user's umask allows it. tempfile.mkstemp and
mkdtemp create 0600 / 0700 and the rename keeps that mode, so the temporary names are created here instead, with
O_CREAT|O_EXCL and mode 0666 (os.mkdir with 0777): the kernel applies the umask itself. The umask is never read:
reading it means os.umask(0) then os.umask(old), a process-wide change another thread can race with (a file it
creates meanwhile gets 0666), and a value cached at import would miss a later umask change; /proc/self/status is
Linux-only. Letting the kernel apply it is race-free, portable, and also honours a folder's default ACL exactly
as open() does, which a computed chmod would not.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import secrets
import shutil
import socket
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from grads.errors import GradsError

TEMP_GLOB = ".*.tmp"  # the names atomic_path gives its temporary files
LOCK_NAME = ".grads.lock"  # folder_lock's file: hidden, and not matched by TEMP_GLOB (remove_stale_temps keeps it)
_ATTEMPTS = 1000  # fresh random names to try before giving up (tempfile tries 10000; a clash needs 2^32 luck)


def disk_full(err: BaseException) -> bool:
    """A full disk or quota: an OSError with that errno, or any error whose text says so (some pyarrow versions
    give no errno; safetensors raises its own error type with the OS message)."""
    return isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT) or \
        "No space left on device" in str(err)


def _full_error(path: Path) -> GradsError:
    return GradsError("the disk is full: this file was not written (files finished before it are complete)",
                      path=path, hint="free some space (or use an --out on another disk) and rerun the same "
                                      "command: finished stages are reused")


def _temp_name(path: Path, suffix: str = "") -> Path:
    """A fresh hidden name beside `path`: .NAME.XXXXXXXX[suffix] (the pattern mkstemp/mkdtemp gave)."""
    return path.parent / f".{path.name}.{secrets.token_hex(4)}{suffix}"


def _new_temp_file(path: Path) -> Path:
    """Create an empty temporary file beside `path`, mode 0666 less the umask (what open(path, "w") gives)."""
    for _ in range(_ATTEMPTS):
        tmp = _temp_name(path, ".tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(errno.EEXIST, "no unused temporary name", str(path.parent))


def _new_temp_folder(path: Path) -> Path:
    """Create an empty temporary folder beside `path`, mode 0777 less the umask (what mkdir gives)."""
    for _ in range(_ATTEMPTS):
        tmp = _temp_name(path)
        try:
            os.mkdir(tmp, 0o777)
        except FileExistsError:
            continue
        return tmp
    raise FileExistsError(errno.EEXIST, "no unused temporary name", str(path.parent))


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success rename it over `path`, on failure remove it.

    The file gets the mode open(path, "w") would give (0666 less the umask). A full disk becomes a GradsError
    naming `path`; the old `path`, if any, is left as it was.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp_path = _new_temp_file(path)
    except OSError as err:
        if disk_full(err):
            raise _full_error(path) from err
        raise
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException as err:
        tmp_path.unlink(missing_ok=True)
        if disk_full(err):
            raise _full_error(path) from err
        raise


@contextmanager
def atomic_folder(path: str | Path, keep_existing: bool = False) -> Iterator[Path]:
    """Yield a new temporary folder beside `path`; on success it replaces `path`, on failure it is deleted.

    The folder gets the mode mkdir would give (0777 less the umask); what is saved into it keeps its own modes.
    keep_existing: when `path` appeared meanwhile (another process built the same thing first), keep that one
    and drop ours, instead of replacing it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _new_temp_folder(path)
    try:
        yield tmp
        if path.exists() and keep_existing:
            shutil.rmtree(tmp, ignore_errors=True)
            return
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if disk_full(err):
            raise _full_error(path) from err
        raise


def owned_by(record: str | Path, fingerprint: str, refusal: str, *, key: str = "fingerprint",
             path: str | Path | None = None, hint: str = "use another --out, or delete the folder") -> bool:
    """The fingerprint guard: True when the JSON `record` exists and names this fingerprint (its output can be
    reused or resumed), False when there is no record; a record of another run stops with `refusal`."""
    record = Path(record)
    if not record.exists():
        return False
    if json.loads(record.read_text()).get(key) != fingerprint:
        raise GradsError(refusal, path=path or record.parent, hint=hint)
    return True


def remove_stale_temps(folder: str | Path) -> list[Path]:
    """Delete temporary files a killed run left in `folder` (not recursive); return what was removed.

    Only for folders that one grads process writes at a time (a run's own output folder)."""
    removed = []
    for stale in Path(folder).glob(TEMP_GLOB) if Path(folder).is_dir() else []:
        if stale.is_file():
            stale.unlink(missing_ok=True)
            removed.append(stale)
    return removed


# ------------------------------------------------------------------------------------- one writer per folder

_held: dict[Path, int] = {}  # folders this process holds through folder_lock, with how deep it is nested
_held_guard = threading.Lock()
_NO_LOCKS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS}  # a file system without flock


def _shares_the_lock_of_rank_zero() -> bool:
    """Under a launcher (WORLD_SIZE > 1) the ranks of one job write one folder together: only rank 0 takes the
    lock; the others never try (they would find rank 0's lock and stop) and meet rank 0 at the stages' barriers.
    Read from the launcher's environment (the values grads.distributed uses) so this module needs no torch."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and int(os.environ.get("RANK", "0")) != 0


def _holder(fd: int) -> dict:
    """What the lock's holder wrote into it ({"pid", "host"}), or {} when it has not written it yet."""
    for _ in range(20):  # the holder writes right after taking the lock: give it a moment
        try:
            return json.loads(os.pread(fd, 4096, 0))
        except (ValueError, OSError):
            time.sleep(0.05)
    return {}


def _in_use(folder: Path, holder: dict) -> GradsError:
    pid = holder.get("pid", "unknown")
    host = holder.get("host")
    where = f" on {host}" if host and host != socket.gethostname() else ""
    return GradsError(f"output folder is in use by another grads process (pid {pid}{where})", path=folder,
                      hint="wait for that process to finish, or use another --out")


def _lock(folder: Path) -> int | None:
    """Take the folder's lock: the open lock file's descriptor, or None on a file system without locks."""
    lock = folder / LOCK_NAME
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
            writable = True
        except PermissionError:  # another user's lock file, left by a killed run: a read-only descriptor locks too
            fd = os.open(lock, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
            writable = False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise _in_use(folder, holder) from None
        except OSError as err:
            os.close(fd)
            if err.errno in _NO_LOCKS:
                warnings.warn(f"{folder}: this file system does not support file locks, so grads cannot keep a "
                              "second process from writing this folder at the same time", stacklevel=4)
                return None
            raise
        # A holder that finished unlinks the file before letting go: if that happened between our open and our
        # flock, we hold a lock on a file no one else will open. Then try again with the file now at that name.
        try:
            current = os.path.samestat(os.fstat(fd), os.stat(lock))
        except FileNotFoundError:
            current = False
        if current:
            break
        os.close(fd)
    if writable:
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode() + b"\n", 0)
    return fd


@contextmanager
def folder_lock(folder: str | Path) -> Iterator[Path]:
    """Hold `folder` (created if needed) as this process's output folder: a second grads process that tries
    the same folder meanwhile gets a GradsError at once ("output folder is in use by another grads process (pid
    N)"), instead of both writing it.

    The lock is fcntl.flock on `folder/.grads.lock`, which also records the holder's pid and host. The kernel
    releases it when the process ends, so a killed run never leaves the folder stuck (its file stays, unlocked,
    and is simply taken by the next run; it starts with '.' but is not a `.*.tmp`, so remove_stale_temps and the
    readers' globs leave it alone). A clean exit removes the file. Nested use on one folder in one process is
    allowed (the inner one is a no-op). Under a launcher only rank 0 takes the lock (see
    _shares_the_lock_of_rank_zero); a second job's rank 0 fails, and its launcher stops its other ranks.
    On a file system without flock support (some Lustre mounts, NFS without lockd) it warns and carries on.
    """
    folder = Path(folder)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    if _shares_the_lock_of_rank_zero():
        yield folder
        return
    key = folder.resolve()
    with _held_guard:
        nested = key in _held
        if nested:
            _held[key] += 1
    if nested:
        try:
            yield folder
        finally:
            with _held_guard:
                _held[key] -= 1
        return
    fd = _lock(folder)
    with _held_guard:
        _held[key] = 1
    try:
        yield folder
    finally:
        with _held_guard:
            del _held[key]
        if fd is not None:
            try:
                (folder / LOCK_NAME).unlink(missing_ok=True)  # while still locked: see the inode check in _lock
            except OSError:
                pass
            os.close(fd)  # releases the lock
        if created and not any(folder.iterdir()):
            folder.rmdir()  # a command that stopped before writing anything leaves no empty output folder


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def write_text(path: str | Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def write_parquet(path: str | Path, table: pa.Table) -> None:
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def write_with(path: str | Path, writer: Callable[[Path], None]) -> None:
    """Atomically produce `path` with a writer that takes the temporary path (e.g. matplotlib savefig)."""
    with atomic_path(path) as tmp:
        writer(tmp)

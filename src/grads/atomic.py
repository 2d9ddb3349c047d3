"""Atomic outputs, and which run an output folder belongs to.

Every file is written under a temporary name in its folder, then renamed; a folder (a saved model, a token
cache) is built as a temporary sibling, then renamed into place. A reader (or a rerun after a crash) therefore
sees either the old output or the whole new one, never half. `owned_by` is the one check that a folder's record
was written by a run with the same settings (its fingerprint) before that folder is reused or resumed.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from grads.errors import GradsError

TEMP_GLOB = ".*.tmp"  # the names atomic_path gives its temporary files


def disk_full(err: BaseException) -> bool:
    """A full disk or quota: an OSError with that errno, or any error whose text says so (some pyarrow versions
    give no errno; safetensors raises its own error type with the OS message)."""
    return isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT) or \
        "No space left on device" in str(err)


def _full_error(path: Path) -> GradsError:
    return GradsError("the disk is full: this file was not written (files finished before it are complete)",
                      path=path, hint="free some space (or use an --out on another disk) and rerun the same "
                                      "command: finished stages are reused")


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success rename it over `path`, on failure remove it.

    A full disk becomes a GradsError naming `path`; the old `path`, if any, is left as it was.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        if disk_full(err):
            raise _full_error(path) from err
        raise
    os.close(fd)
    tmp_path = Path(tmp)
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

    keep_existing: when `path` appeared meanwhile (another process built the same thing first), keep that one
    and drop ours, instead of replacing it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
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

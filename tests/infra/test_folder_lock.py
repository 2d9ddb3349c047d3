"""One writer per output folder (issue 16): a second grads process on a folder another one holds stops at once,
a killed holder frees it, and only rank 0 of a launched job takes the lock. The holder is a child process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from helpers import ROOT, write_jsonl

from grads.cli import main
from grads.errors import GradsError
from grads.infra import atomic

ENV = {**{k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")},
       "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


HOLD = """
import sys, time
from grads.infra import atomic
with atomic.folder_lock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(120)
"""


@pytest.fixture
def holder(tmp_path):
    """A child process that holds tmp_path/'out' with folder_lock and sleeps; killed at the end."""
    folder = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], env=ENV, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        yield proc, folder
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stdout.close()


@pytest.mark.e2e
def test_a_second_process_is_refused_and_a_killed_holder_frees_the_folder(holder):
    proc, folder = holder
    lock = folder / atomic.LOCK_NAME
    assert json.loads(lock.read_text())["pid"] == proc.pid
    with pytest.raises(GradsError) as err:
        with atomic.folder_lock(folder):
            pytest.fail("entered a folder another process holds")
    text = str(err.value)
    assert f"output folder is in use by another grads process (pid {proc.pid})" in text
    assert err.value.path == str(folder) and "use another --out" in err.value.hint

    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert lock.exists()  # a killed holder leaves its file behind, unlocked
    assert atomic.remove_stale_temps(folder) == [] and lock.exists()  # not a temporary file
    started = time.monotonic()
    with atomic.folder_lock(folder):  # taken at once: the kernel released the dead process's lock
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert time.monotonic() - started < 1
    assert not lock.exists()  # a clean exit removes it


def test_lock_file_is_left_alone_by_stale_temp_cleanup_and_readers(tmp_path):
    folder = tmp_path / "new" / "out"
    with atomic.folder_lock(folder) as held:
        assert held == folder and folder.is_dir()  # created when needed
        (folder / ".scores.parquet.abc.tmp").write_bytes(b"half")
        atomic.write_json(folder / "selection.json", {})
        assert atomic.remove_stale_temps(folder) == [folder / ".scores.parquet.abc.tmp"]
        assert (folder / atomic.LOCK_NAME).exists()
        assert not (folder / atomic.LOCK_NAME).match(atomic.TEMP_GLOB)
        for pattern in ["*.jsonl", "*.json", "*.parquet", "checkpoint-*", ".model.*", "*/results.json"]:
            assert atomic.LOCK_NAME not in [p.name for p in folder.glob(pattern)], pattern  # globs in src/
        with atomic.folder_lock(folder):  # nested in one process: allowed, a no-op
            pass
        assert (folder / atomic.LOCK_NAME).exists()  # still held by the outer one
    assert sorted(p.name for p in folder.iterdir()) == ["selection.json"]


@pytest.mark.e2e
def test_only_rank_zero_of_a_launched_job_takes_the_lock(holder, monkeypatch):
    _, folder = holder
    before = (folder / atomic.LOCK_NAME).read_bytes()
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    with atomic.folder_lock(folder):  # rank 1 shares its job's folder: it does not try
        pass
    assert (folder / atomic.LOCK_NAME).read_bytes() == before  # and does not touch rank 0's lock file
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(GradsError, match="in use by another grads process"):
        with atomic.folder_lock(folder):
            pass


@pytest.mark.e2e
def test_a_second_command_on_a_folder_in_use_stops_at_once_with_exit_2(holder, tiny_model_dir, capsys):
    """The stages take the lock: `grads select`, `grads score`, `grads train` and `grads experiment` on a folder
    another grads process holds stop before doing anything, naming the folder and the holder's pid."""
    proc, folder = holder
    pool = write_jsonl(folder.parent / "pool.jsonl", [{"prompt": "What is 2 + 2?", "completion": "4"}] * 3)
    config = folder.parent / "exp.yaml"
    config.write_text(f"model: {tiny_model_dir}\ndata: {pool}\nmethods: []\nseeds: [0]\n")
    for command in (["select", "--model", str(tiny_model_dir), "--data", str(pool)],
                    ["score", "--model", str(tiny_model_dir), "--data", str(pool)],
                    ["train", "--model", str(tiny_model_dir), "--data", str(pool)],
                    ["experiment", str(config)]):
        with pytest.raises(SystemExit) as exit_info:  # it does not wait for the holder (which sleeps 120 s)
            main([*command, "--out", str(folder)])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2, command
        assert f"{folder}: output folder is in use by another grads process (pid {proc.pid})" in err, command
    assert sorted(p.name for p in folder.iterdir()) == [atomic.LOCK_NAME]  # nothing written beside the lock

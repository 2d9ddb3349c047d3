"""A full disk (docs/reliability.md, "Faults"): a clear error that keeps the outputs written before it, whether
grads' own write fails or a library's; other OS errors are not disguised as one."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pyarrow as pa
import pytest
from helpers import PC, assert_one_message, run_main, temp_files, visible_files, write_jsonl

from grads.cli import main
from grads.errors import GradsError
from grads.infra import atomic


class _FullDisk:
    """A file whose write puts part of the data down and then fails as a full disk does."""

    def __init__(self, f) -> None:
        self.f = f

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.f.close()

    def write(self, data):
        self.f.write(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name):
        return getattr(self.f, name)


def fill_disk_at(monkeypatch, victim: str) -> None:
    def fake_open(file, mode="r", *args, **kwargs):
        f = open(file, mode, *args, **kwargs)
        return _FullDisk(f) if "w" in mode and Path(file).name.startswith(f".{victim}.") else f

    monkeypatch.setattr(atomic, "open", fake_open, raising=False)


def test_full_disk_is_a_clear_error_and_keeps_earlier_outputs(tmp_path, capsys, monkeypatch, tiny_model_dir):
    records = [{"id": f"q{i}", "prompt": f"Question {i}?", "completion": f"Answer {i}." * (1 + i % 3)}
               for i in range(12)]
    pool = write_jsonl(tmp_path / "pool.jsonl", records)
    out = tmp_path / "out"
    args = ["select", "--model", tiny_model_dir, "--data", pool, "--out", out, "--warmup-epochs", "0",
            "--max-length", "64", "--method", "grads", "--method", "random", "--ratio", "0.5", "--quiet"]

    # 1. the disk fills while selection.json is written: what came before is complete, it is not there at all
    with monkeypatch.context() as patch:
        fill_disk_at(patch, "selection.json")
        code, err, _ = run_main(args, capsys)
    assert code == 2
    assert_one_message(err, f"{out / 'selection.json'}: ", "the disk is full: this file was not written",
                       "free some space", after_progress=True)
    assert not (out / "selection.json").exists() and temp_files(out) == []
    first = visible_files(out)
    assert {"scores.parquet", "selected/grads-0.5.jsonl", "selected/random-0.5.jsonl"} <= set(first)
    code, err, _ = run_main(args, capsys)  # space freed: the same command finishes
    assert code == 0, err
    done = visible_files(out)
    assert all(done[name] == data for name, data in first.items())  # the files written before were whole

    # 2. the disk fills while a rerun replaces report.html: the old report and everything else stay as they were
    with monkeypatch.context() as patch:
        fill_disk_at(patch, "report.html")
        code, err, _ = run_main(args, capsys)
    assert code == 2 and f"error: {out / 'report.html'}: the disk is full" in err
    after = visible_files(out)
    after.pop("timings.json"), done.pop("timings.json")
    assert after == done and temp_files(out) == []


def test_full_disk_errors_without_errno_and_from_libraries(tmp_path, capsys, monkeypatch):
    # pyarrow reports a full disk as an OSError carrying only the text
    def failing_write_table(table, where, **kwargs):
        Path(where).write_bytes(b"PAR1 half")
        raise OSError("IOError: [Errno 28] No space left on device. Detail: [errno 28] No space left on device")

    monkeypatch.setattr(atomic.pq, "write_table", failing_write_table)
    target = tmp_path / "score" / "chunk-00000.parquet"
    with pytest.raises(GradsError, match="the disk is full") as err:
        atomic.write_parquet(target, pa.table({"x": [1]}))
    assert err.value.path == str(target) and not target.exists() and temp_files(tmp_path) == []

    # a full disk hit inside a library (a Trainer checkpoint, a tokenizer save) still ends as one message
    import grads.pipeline

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", "/runs/x/warmup/checkpoints/checkpoint-50/x.json")

    monkeypatch.setattr(grads.pipeline, "run_select", full)
    pool = write_jsonl(tmp_path / "pool.jsonl", [PC])
    code, err, _ = run_main(["select", "--model", "m", "--data", pool, "--out", tmp_path / "o"], capsys)
    assert code == 2
    assert_one_message(err, "/runs/x/warmup/checkpoints/checkpoint-50/x.json: the disk is full", "",
                       "free some space")

    def full_in_safetensors(*args, **kwargs):  # safetensors' own error type, carrying the OS message
        raise type("SafetensorError", (Exception,), {})(
            "Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(grads.pipeline, "run_select", full_in_safetensors)
    code, err, _ = run_main(["select", "--model", "m", "--data", pool, "--out", tmp_path / "o"], capsys)
    assert code == 2
    assert_one_message(err, "an output file: the disk is full (Error while serializing", "", "free some space")

    def denied(*args, **kwargs):  # any other OSError is not dressed up as a full disk
        raise PermissionError(errno.EACCES, "Permission denied", "/runs/x")

    monkeypatch.setattr(grads.pipeline, "run_select", denied)
    with pytest.raises(PermissionError):
        main(["select", "--model", "m", "--data", str(pool), "--out", str(tmp_path / "o")])

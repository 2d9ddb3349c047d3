"""A warm-up folder deleted after its scores were made (it is the large part of a selection folder) is not
trained again: the finished scores are reused and the selection is the same; only a score column the rules
still need brings the warm-up back. So does a fresh checkout of a grid, which holds only what git keeps."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from helpers import write_jsonl
from typer.testing import CliRunner

from grads.cli import app

pytestmark = pytest.mark.e2e  # it warms up


def test_scores_finished_without_their_warm_up_are_reused(tmp_path, monkeypatch, tiny_model_dir, medmcqa_dir):
    records = [json.loads(line) for line in (medmcqa_dir / "pool.jsonl").read_text().splitlines()[:12]]
    (tmp_path / "first").mkdir()
    monkeypatch.chdir(tmp_path / "first")  # paths relative to a checkout's root, as a grid's are
    pool, out = write_jsonl(Path("pool.jsonl"), records), Path("sel")

    def select(*methods: str) -> str:
        args = ["select", "--model", str(tiny_model_dir), "--data", str(pool), "--out", str(out), "--max-length",
                "64", "--batch-size", "4", "--ratio", "0.5", "--warmup-epochs", "1", "--quiet",
                *[x for m in methods for x in ("--method", m)]]
        result = CliRunner().invoke(app, args, catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.output

    select("grads", "ifd")
    chosen = (out / "selected" / "grads-0.5.jsonl").read_bytes()
    shutil.rmtree(out / "warmup")
    output = select("grads", "ifd")
    assert "reusing finished scores" in output and "warm-up:" not in output
    assert not (out / "warmup").exists()
    assert (out / "selected" / "grads-0.5.jsonl").read_bytes() == chosen
    assert json.loads((out / "timings.json").read_text())["reused"] == ["warmup", "scoring"]
    # ifd's column deleted too: it needs the warm-up model, so the warm-up is trained again (the same one)
    (out / "score" / "answer_only_loss.parquet").unlink()
    output = select("grads", "ifd")
    assert "warm-up:" in output and (out / "warmup" / "model" / "done.json").exists()
    assert (out / "selected" / "grads-0.5.jsonl").read_bytes() == chosen
    # a fresh checkout of the grid: git keeps the scores (not the warm-up nor the selected files) and the pool is
    # prepared again at the same relative path, so nothing is trained or scored again there either
    shutil.copytree(out, tmp_path / "fresh" / out, ignore=shutil.ignore_patterns("selected", "warmup", ".grads.lock"))
    monkeypatch.chdir(tmp_path / "fresh")
    write_jsonl(pool, records)
    output = select("grads", "ifd")
    assert "reusing finished scores" in output and "warm-up:" not in output
    assert (out / "selected" / "grads-0.5.jsonl").read_bytes() == chosen

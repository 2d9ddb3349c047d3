"""scripts/restore_scores.py rebuilds a selection's scoring stage from its merged scores.parquet, so that a rerun
reuses the very scores (and needs neither a warm-up nor scoring)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
from helpers import ROOT, write_jsonl
from typer.testing import CliRunner

from grads.cli import app


@pytest.mark.e2e  # runs the script in a child process
def test_a_restored_scoring_stage_is_the_original_and_is_reused(tmp_path, tiny_model_dir, medmcqa_dir):
    records = [json.loads(line) for line in (medmcqa_dir / "pool.jsonl").read_text().splitlines()[:10]]
    pool = write_jsonl(tmp_path / "pool.jsonl", records)
    out = tmp_path / "sel"
    args = ["select", "--model", str(tiny_model_dir), "--data", str(pool), "--out", str(out), "--max-length", "64",
            "--ratio", "0.5", "--warmup-epochs", "0", "--quiet", "--method", "grads", "--method", "ifd"]
    assert CliRunner().invoke(app, args, catch_exceptions=False).exit_code == 0
    original = {p.name: pq.read_table(p) for p in (out / "score").glob("*.parquet")}
    chosen = {p.name: p.read_bytes() for p in (out / "selected").iterdir()}
    shutil.rmtree(out / "score")

    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "restore_scores.py"), str(out)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    restored = {p.name: pq.read_table(p) for p in (out / "score").glob("*.parquet")}
    assert sorted(restored) == sorted(original) == ["answer_only_loss.parquet", "scores.parquet"]
    assert all(restored[name].equals(original[name]) for name in original)

    result = CliRunner().invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 0 and "reusing finished scores" in result.output
    assert {p.name: p.read_bytes() for p in (out / "selected").iterdir()} == chosen
    again = subprocess.run([sys.executable, str(ROOT / "scripts" / "restore_scores.py"), str(out)],
                           capture_output=True, text=True, timeout=120)
    assert again.returncode != 0 and "already holds a finished scoring stage" in again.stderr

"""`grads eval --heldout` end to end: a fine-tune on one GSM8K split lowers the bpb of the other."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from grads.cli import app


@pytest.mark.e2e
def test_fine_tuning_on_gsm8k_lowers_the_held_out_bpb_and_grads_eval_shows_it(tmp_path, tiny_model_dir):
    """A second domain (GSM8K worked solutions): `grads train` on the pool, `grads eval --heldout` on the held-out
    split before and after; the per-example records land beside the JSON."""
    from grads.data.bundled import prepare_gsm8k

    data = tmp_path / "gsm8k"
    prepare_gsm8k(data)
    runner = CliRunner()
    result = runner.invoke(app, ["train", "--model", str(tiny_model_dir), "--data", str(data / "pool.jsonl"),
                                 "--limit", "32", "--max-length", "128", "--epochs", "2", "--full", "--lr", "1e-2",
                                 "--out", str(tmp_path / "ft"), "--quiet"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert len((data / "heldout.jsonl").read_text().splitlines()) == 314  # the split; its first 80 are read
    bpb = {}
    for name, model in [("base", tiny_model_dir), ("tuned", tmp_path / "ft" / "model")]:
        out = tmp_path / f"{name}.json"
        result = runner.invoke(app, ["eval", "--model", str(model), "--heldout", str(data / "heldout.jsonl"),
                                     "--heldout-limit", "80", "--max-length", "128", "--out", str(out)],
                               catch_exceptions=False)
        assert result.exit_code == 0, result.output
        held = json.loads(out.read_text())["heldout"]["heldout"]
        per_example = pd.read_parquet(tmp_path / f"{name}.heldout.parquet")
        assert held["n_examples"] == len(per_example) == 80 and held["n_bytes"] == per_example["n_bytes"].sum()
        bpb[name] = held["bpb"]
    assert bpb["tuned"] < bpb["base"] - 0.5, bpb

"""`grads eval --heldout` end to end: a fine-tune on one GSM8K split lowers the bpb of the other."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from helpers import lora_adapter, write_jsonl
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


@pytest.mark.e2e
def test_a_lora_adapter_is_evaluated_merged_and_scores_as_it_does_unmerged(tmp_path, tiny_model_dir, monkeypatch):
    """`grads eval` folds a LoRA adapter into its base before scoring (each forward then runs the base's matmuls
    alone): the evaluator is handed a plain model, and every task and held-out figure is the one the adapter
    scores unmerged, as PEFT loads it."""
    import numpy as np

    from grads.eval.heldout import read_heldout, score_heldout
    from grads.eval.loglik import evaluate
    from grads.infra.models import load_model, load_tokenizer
    from grads.stages import evaluate as stage

    adapter = lora_adapter(tiny_model_dir, tmp_path / "adapter")
    held = write_jsonl(tmp_path / "held.jsonl", [
        {"prompt": f"What is {i} times 3?", "completion": f"{i} times 3 is {3 * i}." + " Check." * (i % 3)}
        for i in range(12)])
    task = write_jsonl(tmp_path / "mine.jsonl", [
        {"question": f"Which number follows {i}?", "choices": [str(i + 1), str(i + 2), str(i - 1), "none"],
         "answer": 0} for i in range(6)])
    handed = []

    def recording(model, *args, **kwargs):
        handed.append(type(model).__name__)
        return evaluate(model, *args, **kwargs)

    monkeypatch.setattr(stage, "_backend", lambda name: recording)
    out = tmp_path / "eval.json"
    result = CliRunner().invoke(app, ["eval", "--model", str(adapter), "--tasks", str(task), "--heldout", str(held),
                                      "--batch-size", "4", "--max-length", "128", "--out", str(out)],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert handed and "Peft" not in handed[0], handed
    merged = json.loads(out.read_text())

    tokenizer = load_tokenizer(str(adapter))
    peft = load_model(str(adapter), dtype="float32", device="cpu")
    assert hasattr(peft, "merge_and_unload")  # loaded unmerged: the adapter beside the base weights
    plain = evaluate(peft, tokenizer, [str(task)], batch_size=4)["mine"]
    summary, _ = score_heldout(peft, read_heldout(held, tokenizer, 128), 4, tokenizer)
    base, _ = score_heldout(load_model(str(tiny_model_dir), dtype="float32", device="cpu"),
                            read_heldout(held, tokenizer, 128), 4, tokenizer)
    assert abs(summary["bpb"] - base["bpb"]) > 1e-3  # the adapter changes the model
    np.testing.assert_allclose(merged["heldout"]["held"]["bpb"], summary["bpb"], rtol=1e-5)
    items = pd.read_parquet(tmp_path / "eval.items.parquet").sort_values(["id", "rotation"])
    expected = sorted(plain["items"], key=lambda r: (r["id"], r["rotation"]))
    assert len(items) == len(expected) == 6 * 4  # every rotation of every question
    np.testing.assert_allclose(items["gold_nll"], [r["gold_nll"] for r in expected], rtol=1e-5)

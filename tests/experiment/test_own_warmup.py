"""`grads@own-warmup` in an experiment: each seed's arm selects from the scores after a warm-up of its own seed,
so two seeds give two warm-ups and two selections; seed 0's is the shared one, and an arm identical to a
finished one is not trained twice (nor the full arm, which a warm-up on the whole pool already is). The summary
reports how stable the selection is between the warm-ups."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

pytestmark = pytest.mark.e2e


def test_two_seeds_give_two_warm_ups_and_two_selections(tmp_path, tiny_model_dir):
    import yaml
    from typer.testing import CliRunner

    from grads.cli import app

    config = tmp_path / "exp.yaml"
    config.write_text(yaml.safe_dump({
        "model": str(tiny_model_dir), "pool_limit": 16, "max_length": 64, "ratios": [0.5], "seeds": [0, 1],
        "methods": ["random-matched", "grads@own-warmup", "random-matched@own-warmup"], "include_full": True,
        "train": {"batch_size": 4}, "eval": {"domain_tasks": [], "general_tasks": ["arc_easy"], "limit": 2}}))
    out = tmp_path / "exp"
    result = CliRunner().invoke(app, ["experiment", str(config), "--out", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output

    # two warm-ups: the shared one (seed 0) and seed 1's, each trained with its own seed, giving other scores
    records = {name: json.loads((out / name / "warmup" / "model" / "done.json").read_text())
               for name in ("select", "select-seed-1")}
    assert records["select"]["config"]["seed"] == 0 and records["select-seed-1"]["config"]["seed"] == 1
    scores = {name: pd.read_parquet(out / name / "scores.parquet") for name in records}
    assert (scores["select"]["id"] == scores["select-seed-1"]["id"]).all()
    assert not (scores["select"]["combined"] == scores["select-seed-1"]["combined"]).all()

    runs = {p.parent.name: json.loads(p.read_text()) for p in (out / "runs").glob("*/results.json")}
    assert sorted(runs) == sorted(["base", "full-s0", "full-s1", "random-matched-0.5-s0", "random-matched-0.5-s1",
                                   "grads@own-warmup-0.5-s0",
                                   "random-matched@own-warmup-0.5-s0", "grads@own-warmup-0.5-s1",
                                   "random-matched@own-warmup-0.5-s1"])
    # seed 1's grads run trained on seed 1's selection, written by that selection stage
    seed1 = json.loads((out / "select-seed-1" / "selection.json").read_text())["outputs"]["grads-0.5.jsonl"]["ids"]
    trained = [json.loads(line)["id"] for line in
               (out / "runs" / "grads@own-warmup-0.5-s1" / "train.jsonl").read_text().splitlines()]
    assert sorted(trained) == sorted(seed1)
    # the matched control of each seed has that seed's grads count (and so its optimizer steps)
    for seed in (0, 1):
        mine, control = runs[f"grads@own-warmup-0.5-s{seed}"], runs[f"random-matched@own-warmup-0.5-s{seed}"]
        assert control["n_train"] == mine["n_train"] and control["train_steps"] == mine["train_steps"]
    # seed 0's matched control scores from the shared warm-up: the finished twin's results, not a second fine-tune
    assert runs["random-matched@own-warmup-0.5-s0"]["same_as"] == "random-matched-0.5-s0"
    assert not (out / "runs" / "random-matched@own-warmup-0.5-s0" / "model").exists()
    assert runs["random-matched@own-warmup-0.5-s1"].get("same_as") is None

    # the full arm of each seed is that seed's warm-up (all 16 examples, pool order, the recipe, the seed): adopted,
    # not trained again
    for seed, select in ((0, "select"), (1, "select-seed-1")):
        run, warm = runs[f"full-s{seed}"], records[select]
        assert run["model_from"] == f"{select}/warmup/model" and not (out / "runs" / f"full-s{seed}" / "model").exists()
        assert run["n_train"] == warm["examples"] == 16 and run["train_loss"] == warm["train_loss"]
        assert run["train_steps"] == warm["steps"] == 4
    # ... which a fine-tune of seed 1's full arm trained apart, as any other run is, confirms: the same adapter
    from safetensors.torch import load_file

    from grads.experiment.config import load_config
    from grads.stages.train import run_train, training_record

    job = load_config(config).train_job(out / "runs" / "full-s1", 1).model_copy(update={"out": tmp_path / "apart"})
    apart, warm_dir = run_train(job, progress=False), out / "select-seed-1" / "warmup" / "model"
    assert training_record(apart)["train_loss"] == pytest.approx(records["select-seed-1"]["train_loss"], rel=1e-5)
    mine, theirs = load_file(apart / "adapter_model.safetensors"), load_file(warm_dir / "adapter_model.safetensors")
    assert mine.keys() == theirs.keys() and len(mine) > 0
    for key in mine:
        torch.testing.assert_close(mine[key], theirs[key], rtol=1e-4, atol=1e-6)

    stability = json.loads((out / "stability.json").read_text())
    assert [(r["a"], r["b"]) for r in stability] == [("warm-up seed 0", "warm-up seed 1")]
    assert -1 <= stability[0]["spearman_combined"] <= 1 and 0 <= stability[0]["jaccard"]["0.5"] <= 1
    assert "Selection stability" in (out / "summary.md").read_text()


def test_theta0_and_own_warmup_together_are_refused(tmp_path):
    from grads.errors import GradsError
    from grads.experiment.config import ExperimentConfig

    with pytest.raises(GradsError, match="no warm-up of its own"):
        ExperimentConfig(methods=("grads@theta0@own-warmup",))


"""`grads experiment` end to end on a tiny model: it fine-tunes and evaluates every run, resumes without redoing
finished runs, and a variant reuses another experiment's warm-up and scores."""

from __future__ import annotations

import csv
import json

import pytest

pytestmark = pytest.mark.e2e


def test_experiment_runs_end_to_end_and_resumes_without_redoing_runs(tmp_path, tiny_model_dir, capsys):
    import yaml
    from typer.testing import CliRunner

    from grads.cli import app

    config = tmp_path / "exp.yaml"
    config.write_text(yaml.safe_dump({
        "model": str(tiny_model_dir), "pool_limit": 16, "max_length": 64, "methods": ["random", "grads"],
        "ratios": [0.5], "seeds": [0], "train": {"batch_size": 8},
        "eval": {"domain_tasks": ["medmcqa"], "general_tasks": ["arc_easy", "winogrande"], "limit": 3,
                 "validation_tasks": ["medmcqa_val"], "limits": {"winogrande": 2},
                 "heldout": ["{out}/data/heldout_explanations.jsonl"], "heldout_limit": 6}}))
    out = tmp_path / "exp"
    result = CliRunner().invoke(app, ["experiment", str(config), "--out", str(out), "--max-runs", "2"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    finished = sorted(p.parent.name for p in (out / "runs").glob("*/results.json"))
    assert finished == ["base", "full-s0", "random-0.5-s0"]  # stopped after two new runs, in plan order
    stamps = {name: (out / "runs" / name / "results.json").stat().st_mtime_ns for name in finished}
    result = CliRunner().invoke(app, ["experiment", str(config), "--out", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert all((out / "runs" / n / "results.json").stat().st_mtime_ns == t for n, t in stamps.items())
    grads_run = json.loads((out / "runs" / "grads-0.5-s0" / "results.json").read_text())
    assert grads_run["n_train"] == 8 and set(grads_run["tasks"]) == {"medmcqa", "medmcqa_val", "arc_easy",
                                                                                  "winogrande"}
    assert grads_run["tasks"]["winogrande"]["n"] == 2 and grads_run["tasks"]["arc_easy"]["n"] == 3
    # held-out answers with question use, and the figure from it (grads.experiment.stats.run_figures)
    base = json.loads((out / "runs" / "base" / "results.json").read_text())
    held, base_held = grads_run["heldout"]["heldout_explanations"], base["heldout"]["heldout_explanations"]
    assert held["n_examples"] == 6 and held["question_use_bpb"] == held["bpb_mismatched"] - held["bpb"]
    row = next(r for r in csv.DictReader((out / "summary.csv").open()) if r["method"] == "grads")
    assert float(row["Q_bpb_mean"]) == pytest.approx(held["question_use_bpb"] - base_held["question_use_bpb"])
    summary = (out / "summary.md").read_text()
    assert "G_val" in summary and "| grads | 0.5 | 1 |" in summary and "| full | 1 (full) | 1 |" in summary
    assert (out / "g_vs_f.png").read_bytes()[:4] == b"\x89PNG" and (out / "summary.csv").exists()
    # the grid's shape may change between sittings (an arm cut, a seed added), and a runtime setting: finished
    # runs stay
    grid = yaml.safe_load(config.read_text())
    config.write_text(yaml.safe_dump({**grid, "methods": ["random"], "seeds": [0, 1], "arm_seeds": {"random": [1]},
                                      "train": {"batch_size": 8, "activation_checkpointing": False}}))
    result = CliRunner().invoke(app, ["experiment", str(config), "--out", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert all((out / "runs" / n / "results.json").stat().st_mtime_ns == t for n, t in stamps.items())
    assert sorted(p.parent.name for p in (out / "runs").glob("*/results.json")) == [
        "base", "full-s0", "full-s1", "grads-0.5-s0", "random-0.5-s0", "random-0.5-s1"]
    # what a run computes may not: a changed recipe is refused, naming the setting
    config.write_text(yaml.safe_dump({**grid, "train": {"batch_size": 4}}))
    from grads.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["experiment", str(config), "--out", str(out)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "(train differ)" in err and "another --out" in err


def test_a_variant_reuses_the_warm_up_and_scores_of_another_experiment(tmp_path, tiny_model_dir, capsys):
    """warmup_from copies a finished warm-up + scores (checked by fingerprint, no second warm-up), a fixed step
    count applies to the final fine-tunes only, and a G_val-only experiment reports G_val alone."""
    import yaml
    from typer.testing import CliRunner

    from grads.cli import app, main

    common = {"model": str(tiny_model_dir), "pool_limit": 16, "max_length": 64, "seeds": [0],
              "include_full": False, "train": {"batch_size": 8}, "warmup_epochs": 1,
              "eval": {"domain_tasks": [], "general_tasks": [], "validation_tasks": ["medmcqa_val"], "limit": 3}}
    first, variant, wrong = tmp_path / "first.yaml", tmp_path / "variant.yaml", tmp_path / "wrong.yaml"
    first.write_text(yaml.safe_dump({**common, "methods": ["grads"], "ratios": [0.5]}))
    result = CliRunner().invoke(app, ["experiment", str(first), "--out", str(tmp_path / "a")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    pool = str(tmp_path / "a" / "data" / "pool.jsonl")
    variant.write_text(yaml.safe_dump({**common, "data": pool, "methods": ["grads-low", "grads-auto"], "ratios": [0.5],
                                       "warmup_from": str(tmp_path / "a"),
                                       "train": {"batch_size": 8, "max_steps": 3}}))
    result = CliRunner().invoke(app, ["experiment", str(variant), "--out", str(tmp_path / "b")],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "reusing the warm-up" in result.output and "scores: reusing finished scores" in result.output
    for part in ["select/score/scores.parquet", "select/warmup/model/done.json"]:
        assert (tmp_path / "b" / part).read_bytes() == (tmp_path / "a" / part).read_bytes()
    done = json.loads((tmp_path / "b" / "runs" / "grads-low-0.5-s0" / "model" / "done.json").read_text())
    assert done["steps"] == 3 and done["examples"] == 8  # 8 examples = 1 step an epoch; 3 steps asked
    run = json.loads((tmp_path / "b" / "runs" / "grads-low-0.5-s0" / "results.json").read_text())
    assert run["train_seconds"] == done["seconds"] > 0  # from the training record, so a resumed grid keeps it
    summary = (tmp_path / "b" / "summary.md").read_text()
    header = next(line for line in summary.splitlines() if line.startswith("| method | ratio | seeds"))
    assert "3 optimizer steps" in summary and "G_val" in header and "G_acc" not in header and "F_bpb" not in header
    low = json.loads((tmp_path / "b" / "runs" / "grads-low-0.5-s0" / "results.json").read_text())
    assert f"| grads-low | 0.5 | 1 | {low['train_answer_tokens']} | " in summary
    # grads-auto trains on exactly the rows `grads select` wrote for it (its own budget), once per seed
    auto = json.loads((tmp_path / "b" / "runs" / "grads-auto-s0" / "results.json").read_text())
    chosen = (tmp_path / "b" / "select" / "selected" / "grads-auto.jsonl").read_text()
    assert auto["ratio"] is None and auto["n_train"] == len(chosen.splitlines()) < 16
    assert (tmp_path / "b" / "runs" / "grads-auto-s0" / "train.jsonl").read_text() == chosen
    assert "| grads-auto | auto | 1 | " in summary
    # another warm-up setting cannot borrow that warm-up
    wrong.write_text(yaml.safe_dump({**common, "data": pool, "methods": ["grads"], "ratios": [0.5],
                                     "warmup_fraction": 0.5, "warmup_from": str(tmp_path / "a")}))
    with pytest.raises(SystemExit) as exit_info:
        main(["experiment", str(wrong), "--out", str(tmp_path / "c")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "warmup_from" in err and "other model, data" in err


def test_a_planted_experiment_trains_full_on_the_noisy_pool_and_clean_on_its_clean_part(tmp_path, tiny_model_dir):
    """`plant`: noise planted in the first pool_limit records (DIR/data-planted), `full` on all of them, the
    `clean` oracle on exactly the records labelled clean, with no warm-up or scoring for these two arms."""
    import yaml
    from typer.testing import CliRunner

    from grads.cli import app

    config = tmp_path / "exp.yaml"
    config.write_text(yaml.safe_dump({
        "model": str(tiny_model_dir), "pool_limit": 16, "max_length": 64, "methods": ["clean"], "seeds": [0],
        "plant": {"share": 0.25, "kinds": ["swap", "duplicate"], "seed": 3}, "train": {"batch_size": 8},
        "eval": {"domain_tasks": [], "general_tasks": [], "validation_tasks": [],
                 "heldout": ["{out}/data/heldout_explanations.jsonl"], "heldout_limit": 4}}))
    out = tmp_path / "exp"
    result = CliRunner().invoke(app, ["experiment", str(config), "--out", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    labels = json.loads((out / "data-planted" / "labels.json").read_text())
    assert len(labels) == 18 and sorted(labels.values()).count("clean") == 14  # 16 + 2 duplicates; 4 planted
    assert len((out / "data-planted" / "clean.jsonl").read_text().splitlines()) == 16
    full = json.loads((out / "runs" / "full-s0" / "results.json").read_text())
    clean = json.loads((out / "runs" / "clean-s0" / "results.json").read_text())
    assert full["n_train"] == 18 and clean["n_train"] == 14
    trained = [json.loads(line)["id"] for line in (out / "runs" / "clean-s0" / "train.jsonl").read_text().splitlines()]
    assert sorted(trained) == sorted(i for i, kind in labels.items() if kind == "clean")
    assert not (out / "select").exists()  # neither arm needs scores


def test_a_clean_arm_without_planting_is_refused(tmp_path):
    from grads.errors import GradsError
    from grads.experiment.config import config_from

    with pytest.raises(GradsError, match="needs `plant`"):
        config_from({"methods": ["clean"]}, tmp_path / "exp.yaml")

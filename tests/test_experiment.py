"""Summary math on fixed inputs (G, F, mean ± std over seeds) and the experiment runner end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from grads.config import EvalConfig
from grads.experiment.config import ExperimentConfig
from grads.experiment.grid import planned_runs
from grads.experiment.stats import aggregate, confidence_interval, paired_differences, run_figures


def tasks(**acc):
    return {name: {"accuracy": value} for name, value in acc.items()}


BASE = {"tasks": tasks(med=0.30, qa=0.20, arc=0.50, piqa=0.60)}
EV = EvalConfig(domain_tasks=("med", "qa"), general_tasks=("arc", "piqa"))


def test_figures_by_definition():
    run = {"tasks": tasks(med=0.40, qa=0.26, arc=0.45, piqa=0.61)}
    figures = run_figures(run, BASE, EV)
    assert figures["G"] == pytest.approx(((0.40 - 0.30) + (0.26 - 0.20)) / 2)
    assert figures["F"] == pytest.approx(((0.50 - 0.45) + (0.60 - 0.61)) / 2)
    assert math.isnan(figures["G_bpb"]) and math.isnan(figures["F_bpb"]) and math.isnan(figures["G_val"])
    # likelihood: G_bpb = base - run on the held-out files, F_bpb = run - base on general tasks with a bpb
    base = {"tasks": {"med": {"accuracy": 0.3}, "arc": {"accuracy": 0.5, "bpb": 1.10}, "gsm8k": {"bpb": 0.90}},
            "heldout": {"exp": {"bpb": 1.50}, "other": {"bpb": 1.30}}}
    run = {"tasks": {"med": {"accuracy": 0.3}, "arc": {"accuracy": 0.5, "bpb": 1.12}, "gsm8k": {"bpb": 0.96}},
           "heldout": {"exp": {"bpb": 1.40}, "other": {"bpb": 1.26}}}
    ev = EvalConfig(domain_tasks=("med",), general_tasks=("arc", "gsm8k"))
    figures = run_figures(run, base, ev)
    assert figures["G_bpb"] == pytest.approx((0.10 + 0.04) / 2) and figures["F_bpb"] == pytest.approx(0.04)
    assert figures["F"] == pytest.approx(0.0)  # gsm8k has no accuracy: F averages arc alone


def test_confidence_interval_is_the_t_interval_over_seeds():
    values = [0.01, 0.03, 0.08]
    mean, sd = sum(values) / 3, (sum((v - 0.04) ** 2 for v in values) / 2) ** 0.5
    half = 4.302652729911275 * sd / 3 ** 0.5  # t(0.975, 2 degrees of freedom), from a t table
    assert confidence_interval(values) == pytest.approx((mean - half, mean + half))
    assert all(math.isnan(x) for x in confidence_interval([0.1]))


def test_aggregate_means_and_sample_std_over_seeds():
    runs = [{"method": "grads", "ratio": 0.05, "seed": s, "tasks": tasks(med=m, qa=0.2, arc=a, piqa=0.6)}
            for s, (m, a) in enumerate([(0.32, 0.50), (0.36, 0.48), (0.40, 0.46)])]
    runs.append({"method": "full", "ratio": None, "seed": 0, "tasks": tasks(med=0.5, qa=0.2, arc=0.4, piqa=0.6)})
    rows = {(r["method"], r["ratio"]): r for r in aggregate(runs, BASE, EV)}
    grads = rows[("grads", 0.05)]
    # G per seed: 0.01, 0.03, 0.05 -> mean 0.03, sample std 0.02; F per seed: 0, 0.01, 0.02 -> 0.01 ± 0.01
    assert grads["G_mean"] == pytest.approx(0.03) and grads["G_std"] == pytest.approx(0.02)
    assert grads["F_mean"] == pytest.approx(0.01) and grads["F_std"] == pytest.approx(0.01)
    assert grads["seeds"] == [0, 1, 2] and grads["med"] == pytest.approx(0.36)
    full = rows[("full", None)]
    assert full["G_mean"] == pytest.approx(0.10) and full["G_std"] == 0.0 and full["F_mean"] == pytest.approx(0.05)
    # a validation task is reported on its own (G_val) and changes neither G nor F
    ev = EvalConfig(domain_tasks=("qa",), general_tasks=("arc", "piqa"), validation_tasks=("med",))
    with_val = {(r["method"], r["ratio"]): r for r in aggregate(runs, BASE, ev)}
    assert with_val[("grads", 0.05)]["G_val_mean"] == pytest.approx(0.06)  # med 0.32/0.36/0.40 vs base 0.30
    assert with_val[("grads", 0.05)]["G_val_std"] == pytest.approx(0.04)
    assert with_val[("grads", 0.05)]["G_mean"] == pytest.approx(0.0)


def test_paired_differences_subtract_the_reference_run_of_the_same_seed():
    def run(method, ratio, seed, med, arc):
        return {"method": method, "ratio": ratio, "seed": seed, "tasks": tasks(med=med, qa=0.2, arc=arc, piqa=0.6)}

    runs = [run("grads", 0.05, 0, 0.34, 0.50), run("grads", 0.05, 1, 0.40, 0.48), run("grads", 0.05, 2, 0.40, 0.50),
            run("random", 0.05, 0, 0.30, 0.50), run("random", 0.05, 1, 0.32, 0.50),  # no random seed 2
            run("random", 0.5, 0, 0.9, 0.1), run("full", None, 0, 0.50, 0.40), run("full", None, 1, 0.30, 0.50)]
    rows = paired_differences(runs, BASE, EV, reference="random")
    assert [(r["method"], r["ratio"], r["n_pairs"]) for r in rows] == [("grads", 0.05, 2)]
    # ΔG per seed: (0.34-0.30)/2 = 0.02, (0.40-0.32)/2 = 0.04 -> 0.03 ± 0.01414; ΔF: (0-0)/2, (0.02-0)/2 -> 0.005
    assert rows[0]["dG_mean"] == pytest.approx(0.03) and rows[0]["dG_std"] == pytest.approx(0.02 ** 0.5 / 10)
    assert rows[0]["dF_mean"] == pytest.approx(0.005) and math.isnan(rows[0]["dG_val_mean"])
    assert list(rows[0]["per_seed"]) == [0, 1]
    assert (rows[0]["per_seed"][1]["G"], rows[0]["per_seed"][1]["F"]) == pytest.approx((0.04, 0.01))
    # two pairs: the interval is mean ± t(0.975, 1)·sd/√2 with t = 12.706 (a t table)
    half = 12.706204736174698 * (0.02 ** 0.5 / 10) / 2 ** 0.5
    assert rows[0]["dG_ci95"] == pytest.approx((0.03 - half, 0.03 + half))
    against_full = {(r["method"], r["ratio"]): r for r in paired_differences(runs, BASE, EV, reference="full")}
    # grads 0.05 vs full: seed 0 ΔG (0.34-0.50)/2 = -0.08, seed 1 (0.40-0.30)/2 = +0.05; random 0.5 only seed 0
    assert against_full[("grads", 0.05)]["n_pairs"] == 2
    assert against_full[("grads", 0.05)]["dG_mean"] == pytest.approx(-0.015)
    assert against_full[("random", 0.5)]["dF_mean"] == pytest.approx((0.3 - 0.0) / 2)


def test_the_grid_has_every_method_ratio_seed_and_full_per_seed():
    cfg = ExperimentConfig(methods=("random", "grads"), ratios=(0.05, 0.5), seeds=(0, 1))
    runs = planned_runs(cfg)
    assert len(runs) == 2 * (1 + 2 * 2) and ("full", None, 1) in runs and ("grads", 0.5, 0) in runs
    # a method that chooses its own budget runs once per seed, whatever the ratios
    auto = planned_runs(ExperimentConfig(methods=("grads", "grads-auto"), ratios=(0.05, 0.5), seeds=(0,)))
    assert auto == [("full", None, 0), ("grads-auto", None, 0), ("grads", 0.05, 0), ("grads", 0.5, 0)]


def test_experiment_runs_end_to_end_and_resumes_without_redoing_runs(tmp_path, tiny_model_dir, capsys):
    import yaml
    from typer.testing import CliRunner

    from grads.cli import app

    config = tmp_path / "exp.yaml"
    config.write_text(yaml.safe_dump({
        "model": str(tiny_model_dir), "pool_limit": 16, "max_length": 64, "methods": ["random", "grads"],
        "ratios": [0.5], "seeds": [0], "train": {"batch_size": 8},
        "eval": {"domain_tasks": ["medmcqa"], "general_tasks": ["arc_easy", "winogrande"], "limit": 3,
                 "validation_tasks": ["medmcqa_val"], "limits": {"winogrande": 2}}}))
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


def test_arms_carry_their_modifiers_through_the_plan():
    cfg = ExperimentConfig(methods=("random", "grads", "grads@theta0", "random@full-steps"), ratios=(0.05,),
                           seeds=(0,), warmup_epochs=1)
    assert planned_runs(cfg) == [("full", None, 0), ("random", 0.05, 0), ("grads", 0.05, 0),
                                 ("grads@theta0", 0.05, 0), ("random@full-steps", 0.05, 0)]
    assert cfg.selected_methods() == ("random", "grads") and cfg.selected_methods(theta0=True) == ("grads",)
    only = ExperimentConfig(methods=("random", "random@full-steps"), ratios=(0.05, 0.5), seeds=(0,),
                            arm_ratios={"random@full-steps": (0.05,)}, include_full=False)
    assert planned_runs(only) == [("random", 0.05, 0), ("random@full-steps", 0.05, 0), ("random", 0.5, 0)]
    some = ExperimentConfig(methods=("random", "grads@full-steps"), ratios=(0.05,), seeds=(0, 1),
                            arm_seeds={"grads@full-steps": (1, 2)})
    assert planned_runs(some) == [("full", None, 0), ("random", 0.05, 0), ("full", None, 1), ("random", 0.05, 1),
                                  ("grads@full-steps", 0.05, 1), ("grads@full-steps", 0.05, 2)]
    assert cfg.select_job(Path("p.jsonl"), Path("o"), theta0=True).select.warmup_epochs == 0
    from grads.errors import GradsError

    with pytest.raises(GradsError, match="unknown arm modifier"):
        ExperimentConfig(methods=("grads@theta1",))
    with pytest.raises(GradsError, match="unknown method"):
        ExperimentConfig(methods=("best@theta0",))


def test_full_steps_are_one_full_pool_run_of_the_recipe():
    from types import SimpleNamespace

    import numpy as np

    from grads.experiment.grid import full_pool_steps

    pool = SimpleNamespace(n_target_tokens=np.array([3] * 1199 + [0]))  # one example has no answer token
    assert full_pool_steps(ExperimentConfig(train={"batch_size": 8}), pool) == 150  # ceil(1199 / 8)
    assert full_pool_steps(ExperimentConfig(train={"batch_size": 8, "epochs": 2, "grad_accum": 2}), pool) == 150
    assert full_pool_steps(ExperimentConfig(train={"batch_size": 8, "max_steps": 38}), pool) == 38


def test_detectable_difference_is_the_paired_t_formula():
    from grads.experiment.stats import detectable_difference

    # t(0.975, 4) = 2.7764, t(0.80, 4) = 0.9410 (t tables): (2.7764 + 0.9410) · 0.01 / √5
    assert detectable_difference(0.01, 5) == pytest.approx((2.776445 + 0.940965) * 0.01 / 5 ** 0.5, rel=1e-5)
    assert detectable_difference(0.01, 10) < detectable_difference(0.01, 5)

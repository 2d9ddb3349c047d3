"""The experiment's plan: every method, ratio and seed, arms with their modifiers, and the step count of a
full-pool run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from grads.experiment.config import ExperimentConfig
from grads.experiment.grid import planned_runs

ROOT = Path(__file__).resolve().parents[2]


def test_the_grid_has_every_method_ratio_seed_and_full_per_seed():
    cfg = ExperimentConfig(methods=("random", "grads"), ratios=(0.05, 0.5), seeds=(0, 1))
    runs = planned_runs(cfg)
    assert len(runs) == 2 * (1 + 2 * 2) and ("full", None, 1) in runs and ("grads", 0.5, 0) in runs
    # a method that chooses its own budget runs once per seed, whatever the ratios
    auto = planned_runs(ExperimentConfig(methods=("grads", "grads-auto"), ratios=(0.05, 0.5), seeds=(0,)))
    assert auto == [("full", None, 0), ("grads-auto", None, 0), ("grads", 0.05, 0), ("grads", 0.5, 0)]


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


def test_a_bundled_pool_and_another_domains_files_are_prepared(tmp_path):
    """`data: gsm8k` prepares GSM8K into DIR/data and `also_prepare: [medmcqa]` MedMCQA into DIR/data-medmcqa, so
    the committed GSM8K grid reads its pool, its held-out solutions and MedMCQA's held-out explanations."""
    from grads.experiment.config import load_config
    from grads.experiment.grid import _pool_path

    cfg = load_config(ROOT / "results" / "claim-gsm8k" / "config.yaml")
    pool = _pool_path(cfg, tmp_path)
    assert pool == tmp_path / "data" / "pool.jsonl"
    assert sum(1 for _ in pool.open()) == cfg.pool_limit == 1005  # the whole pool
    job = cfg.eval_job("m", tmp_path / "eval.json", tmp_path)
    assert [p.name for p in job.heldout] == ["heldout.jsonl", "heldout_explanations.jsonl"]
    assert all(p.exists() for p in job.heldout)
    assert cfg.eval.general_heldout_names() == ("heldout_explanations",)
    held_out = {json.loads(line)["id"] for line in job.heldout[0].open()}
    assert len(held_out) == 314 and not held_out & {json.loads(line)["id"] for line in pool.open()}

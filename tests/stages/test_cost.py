"""selection.json's cost object: its arithmetic against hand computations, and the estimated full epoch of a
warm-up on part of the pool, end to end."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from grads.cli import app
from grads.stages.cost import StageWork, selection_cost, steady_pace, trained_tokens


def test_trained_tokens_count_only_examples_with_an_answer_token():
    n_tokens, n_target = np.array([10, 20, 30, 40]), np.array([3, 0, 5, 1])
    assert trained_tokens(n_tokens, n_target) == (3, 80)
    assert trained_tokens(n_tokens, n_target, np.array([1, 2])) == (1, 30)


def test_a_whole_pool_warmup_of_one_epoch_is_the_measured_full_epoch():
    cost = selection_cost(StageWork(100.0, 50, 5000), StageWork(60.0, 50, 5000), StageWork(0, 50, 5000), 1.0, 1.0,
                          pace=(13, 7.0))
    assert cost["full_epoch_seconds"] == 100.0 and cost["ratio_estimated"] is False
    assert cost["full_epoch_from"] == "measured"
    assert cost["ratio_to_full_epoch"] == pytest.approx(1.6)
    assert (cost["warmup_examples"], cost["scoring_tokens"]) == (50, 5000)


def test_a_warmup_recorded_without_its_steps_estimates_the_epoch_from_its_seconds_per_token():
    # 20 s for 1,000 tokens (two epochs of 500): 0.02 s a token, 8,000 tokens in the pool: 160 s an epoch
    cost = selection_cost(StageWork(20.0, 5, 1000), StageWork(40.0, 80, 8000), StageWork(0, 80, 8000), 2.0, 0.0625)
    assert cost["full_epoch_seconds"] == pytest.approx(160.0) and cost["ratio_estimated"] is True
    assert cost["ratio_to_full_epoch"] == pytest.approx(60 / 160) and cost["full_epoch_from"] == "seconds per token"


def test_the_steady_pace_is_the_seconds_per_step_after_the_first():
    # step 1 ends at 12 s (loading the model and the first step), then 3 s a step up to step 5
    assert steady_pace({"1": 12.0, "2": 15.0, "3": 18.0, "5": 24.0}) == (5, pytest.approx(3.0))
    assert steady_pace({"10": 40.0, "9": 37.5}) == (10, pytest.approx(2.5))  # keys read as numbers, any order
    assert steady_pace({"1": 12.0}) is None and steady_pace(None) is None and steady_pace({}) is None


def test_a_partial_warmup_estimates_the_epoch_at_its_steady_pace():
    # 10 examples in batches of 4 for 2 epochs: 6 steps, 30 s in all, 4 s a step after the first; the pool's 78
    # examples take 20 steps (the last one of 2): 30 s + 14 more steps at 4 s = 86 s (per token it would be 240 s)
    cost = selection_cost(StageWork(30.0, 10, 1000), StageWork(40.0, 78, 8000), StageWork(0, 78, 8000), 2.0, 0.125,
                          pace=(6, 4.0), examples_per_step=4)
    assert cost["full_epoch_seconds"] == pytest.approx(86.0) and cost["ratio_estimated"] is True
    assert cost["ratio_to_full_epoch"] == pytest.approx(70 / 86, abs=1e-4)
    assert cost["full_epoch_from"] == "steady pace"


def test_without_a_warmup_no_ratio_is_given():
    cost = selection_cost(None, StageWork(40.0, 80, 8000), StageWork(0, 80, 8000), 0.0, 1.0)
    assert cost["ratio_to_full_epoch"] is None and cost["full_epoch_seconds"] is None
    assert cost["full_epoch_from"] is None
    assert cost["warmup_seconds"] == 0.0 and cost["scoring_seconds"] == 40.0


@pytest.mark.e2e  # warms up a tiny model
def test_a_warmup_on_half_the_pool_reports_its_own_work_and_an_estimated_ratio(tiny_model_dir, medmcqa_dir,
                                                                                 tmp_path):
    out = tmp_path / "run"
    args = ["select", "--model", str(tiny_model_dir), "--data", str(medmcqa_dir / "pool.jsonl"), "--limit", "24",
            "--out", str(out), "--max-length", "64", "--batch-size", "4", "--ratio", "0.25", "--quiet",
            "--warmup-epochs", "1", "--warmup-fraction", "0.5"]
    result = CliRunner().invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    cost = json.loads((out / "selection.json").read_text())["cost"]
    n_tokens = pq.read_table(out / "score" / "scores.parquet").column("n_tokens").to_numpy()
    warm = json.loads((out / "warmup" / "model" / "done.json").read_text())
    assert cost["warmup_examples"] == warm["examples"] == 12 and cost["scoring_examples"] == 24
    # the warm-up's rows: the seeded half of the pool (seed 0), as the warm-up stage draws them
    rows = np.sort(np.random.default_rng(0).permutation(24)[:12])
    assert cost["warmup_tokens"] == int(n_tokens[rows].sum()) and cost["scoring_tokens"] == int(n_tokens.sum())
    # 12 examples at batch 4: 3 steps; the pool's 24 take 6, the 3 more at the pace after the first step
    by_step = {int(k): v for k, v in warm["seconds_by_step"].items()}
    assert sorted(by_step) == [1, 2, 3]
    epoch = warm["seconds"] + (by_step[3] - by_step[1]) / 2 * 3
    assert cost["ratio_estimated"] is True and cost["full_epoch_from"] == "steady pace"
    assert cost["full_epoch_seconds"] == pytest.approx(epoch, abs=0.06)
    assert cost["ratio_to_full_epoch"] == pytest.approx((warm["seconds"] + cost["scoring_seconds"]) / epoch, rel=1e-2)

"""The summaries' extra readings: forgetting weighted by gold bytes, each task's forgetting, the paired t test's
p-value and Holm's correction, each against a hand computation."""

from __future__ import annotations

import math

import pytest
from scipy.stats import ttest_1samp

from grads.config import EvalConfig
from grads.experiment.stats import aggregate, holm, paired_p_value, run_figures, task_changes

BASE = {"tasks": {"arc": {"accuracy": 0.5, "bpb": 1.0, "gold_bytes": 1000},
                  "gsm8k": {"bpb": 0.8, "gold_bytes": 3000},
                  "piqa": {"accuracy": 0.6}}}
RUN = {"tasks": {"arc": {"accuracy": 0.4, "bpb": 1.1, "gold_bytes": 1000},
                 "gsm8k": {"bpb": 0.78, "gold_bytes": 3000},
                 "piqa": {"accuracy": 0.62}}}
EV = EvalConfig(domain_tasks=(), general_tasks=("arc", "gsm8k", "piqa"))


def test_forgetting_weighted_by_gold_bytes_by_hand():
    figures = run_figures(RUN, BASE, EV)
    assert figures["F_bpb"] == pytest.approx((0.1 + (-0.02)) / 2)  # unweighted: each task one vote
    assert figures["F_bpb_bytes"] == pytest.approx((1000 * 0.1 + 3000 * (-0.02)) / 4000)  # = +0.01
    # the pooled bits per byte: Σ NLL over all gold bytes, before and after (NLL = bpb · ln2 · bytes)
    nll = {k: v["bpb"] * math.log(2) * v["gold_bytes"] for k, v in RUN["tasks"].items() if "bpb" in v}
    nll0 = {k: v["bpb"] * math.log(2) * v["gold_bytes"] for k, v in BASE["tasks"].items() if "bpb" in v}
    pooled = (sum(nll.values()) - sum(nll0.values())) / (math.log(2) * 4000)
    assert figures["F_bpb_bytes"] == pytest.approx(pooled)


def test_each_tasks_forgetting_uses_bpb_where_it_has_one_else_accuracy():
    assert task_changes(RUN["tasks"], BASE["tasks"], EV.general_tasks) == pytest.approx(
        {"arc": 0.1, "gsm8k": -0.02, "piqa": -0.02})
    runs = [{"method": "grads", "ratio": 0.5, "seed": s, "tasks": RUN["tasks"]} for s in (0, 1)]
    row = aggregate(runs, BASE, EV)[0]
    assert row["F:arc"] == pytest.approx(0.1) and row["F:piqa"] == pytest.approx(-0.02)


def test_paired_p_value_is_the_one_sample_t_test():
    values = [0.012, 0.004, 0.02, 0.009, 0.015]
    mean = sum(values) / 5
    sd = (sum((v - mean) ** 2 for v in values) / 4) ** 0.5
    assert paired_p_value(mean, sd, 5) == pytest.approx(ttest_1samp(values, 0.0).pvalue)
    assert math.isnan(paired_p_value(0.1, 0.0, 1))
    # pairs that all differ by the same amount carry no spread to test against: untestable (NaN, out of Holm's
    # family), never p = 0
    assert math.isnan(paired_p_value(0.1, 0.0, 3)) and math.isnan(paired_p_value(0.0, 0.0, 3))


def test_holm_by_hand():
    # m = 4: sorted p 0.001 ≤ 0.05/4, 0.01 ≤ 0.05/3, 0.03 > 0.05/2 stops: the last two are kept
    assert holm([0.03, 0.001, 0.04, 0.01]) == [False, True, False, True]
    # the step-down stops at the first failure even if a later p would pass its own threshold
    assert holm([0.02, 0.02]) == [True, True] and holm([0.026, 0.03]) == [False, False]
    # NaN never rejects and does not count in m
    assert holm([0.02, math.nan, 0.03]) == [True, False, True]
    # against Bonferroni: Holm rejects at least as much
    ps = [0.004, 0.011, 0.013, 0.2]
    assert holm(ps) == [True, True, True, False] and [p <= 0.05 / 4 for p in ps] == [True, True, False, False]


def test_a_held_out_file_of_another_domain_counts_as_forgetting():
    """general_heldout: a held-out file of another domain (e.g. MedMCQA explanations in a GSM8K experiment) leaves
    G_bpb and joins F_bpb as one more task, weighted by its answer bytes in F_bpb_bytes."""
    ev = EvalConfig(domain_tasks=(), general_tasks=("arc",), general_heldout=("{out}/data/med_expl.jsonl",))
    base = {"tasks": {"arc": {"bpb": 1.0, "gold_bytes": 1000}},
            "heldout": {"gsm": {"bpb": 0.70, "n_bytes": 5000}, "med_expl": {"bpb": 1.20, "n_bytes": 3000}}}
    run = {"tasks": {"arc": {"bpb": 1.02, "gold_bytes": 1000}},
           "heldout": {"gsm": {"bpb": 0.60, "n_bytes": 5000}, "med_expl": {"bpb": 1.26, "n_bytes": 3000}}}
    figures = run_figures(run, base, ev)
    assert figures["G_bpb"] == pytest.approx(0.10)  # the domain's own held-out file only
    assert figures["F_bpb"] == pytest.approx((0.02 + 0.06) / 2)
    assert figures["F_bpb_bytes"] == pytest.approx((1000 * 0.02 + 3000 * 0.06) / 4000)
    row = aggregate([{"method": "grads", "ratio": 0.5, "seed": 0, **run}], base, ev)[0]
    assert row["F:med_expl"] == pytest.approx(0.06) and row["F:arc"] == pytest.approx(0.02)

"""Summary math on fixed inputs: G and F by definition, mean ± std over seeds, paired differences and their
intervals, the detectable difference."""

from __future__ import annotations

import math

import pytest

from grads.config import EvalConfig
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
    assert all(math.isnan(x) for x in confidence_interval([0.0125, 0.0125]))  # no spread: no interval
    rounding = [0.71 - 0.66, 0.17 - 0.12, 0.30 - 0.25]  # 0.05 three ways, apart by rounding alone
    assert len(set(rounding)) > 1 and all(math.isnan(x) for x in confidence_interval(rounding))


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


def test_detectable_difference_is_the_paired_t_formula():
    from grads.experiment.stats import detectable_difference

    # t(0.975, 4) = 2.7764, t(0.80, 4) = 0.9410 (t tables): (2.7764 + 0.9410) · 0.01 / √5
    assert detectable_difference(0.01, 5) == pytest.approx((2.776445 + 0.940965) * 0.01 / 5 ** 0.5, rel=1e-5)
    assert detectable_difference(0.01, 10) < detectable_difference(0.01, 5)


def test_a_figure_measured_at_fewer_seeds_counts_its_own_pairs():
    """Held-out bpb measured at seed 0 only (seed 1's runs lack the file): its difference has one pair, so the
    table says 'one seed' rather than 'no spread', while G has both pairs."""
    from grads.experiment.tables import with_interval

    def run(method, seed, med, heldout=None):
        r = {"method": method, "ratio": 0.05, "seed": seed, "tasks": tasks(med=med, qa=0.2, arc=0.5, piqa=0.6)}
        return r | ({"heldout": {"exp": {"bpb": heldout}}} if heldout is not None else {})

    base = BASE | {"heldout": {"exp": {"bpb": 1.5}}}
    runs = [run("grads", 0, 0.34, 1.40), run("grads", 1, 0.40), run("random", 0, 0.30, 1.45), run("random", 1, 0.32)]
    row = paired_differences(runs, base, EV, reference="random")[0]
    assert row["n_pairs"] == 2 and row["dG_n"] == 2 and row["dG_bpb_n"] == 1
    assert row["dG_bpb_mean"] == pytest.approx(0.05)  # (1.5 - 1.40) - (1.5 - 1.45)
    assert with_interval(row, "G_bpb") == "+0.050 (one seed)"
    assert with_interval(row, "G").startswith("+0.030 [")


def test_question_use_gained_by_hand():
    """Q_bpb = mean over the domain held-out files (G_bpb's: a general held-out file is left out) of run − base
    question_use_bpb, from two results dicts as `grads eval` writes them; NaN where either lacks the figure (runs
    evaluated before it), the other figures untouched."""
    base = {"tasks": tasks(med=0.30), "heldout": {
        "exp": {"bpb": 1.50, "bpb_mismatched": 1.62, "question_use_bpb": 0.12},
        "other": {"bpb": 1.30, "bpb_mismatched": 1.50, "question_use_bpb": 0.20},
        "gsm": {"bpb": 0.90, "bpb_mismatched": 1.90, "question_use_bpb": 1.00}}}
    run = {"tasks": tasks(med=0.30), "heldout": {
        "exp": {"bpb": 1.40, "bpb_mismatched": 1.57, "question_use_bpb": 0.17},
        "other": {"bpb": 1.26, "bpb_mismatched": 1.44, "question_use_bpb": 0.18},
        "gsm": {"bpb": 0.95, "bpb_mismatched": 0.95, "question_use_bpb": 0.00}}}
    ev = EvalConfig(domain_tasks=("med",), general_tasks=(), general_heldout=("data/gsm.jsonl",))
    figures = run_figures(run, base, ev)
    assert figures["Q_bpb"] == pytest.approx(((0.17 - 0.12) + (0.18 - 0.20)) / 2)  # +0.015: gsm not counted
    assert figures["G_bpb"] == pytest.approx((0.10 + 0.04) / 2)

    def without_question_use(result):
        return {**result, "heldout": {n: {"bpb": v["bpb"]} for n, v in result["heldout"].items()}}

    for old_run, old_base in [(without_question_use(run), base), (run, without_question_use(base)),
                              (without_question_use(run), without_question_use(base))]:
        old = run_figures(old_run, old_base, ev)
        assert math.isnan(old["Q_bpb"])
        assert {k: v for k, v in old.items() if k != "Q_bpb"} == {k: v for k, v in figures.items() if k != "Q_bpb"}
    # a file whose figure was not measured (NaN: a template that renders answers by their question) is skipped
    run["heldout"]["other"]["question_use_bpb"] = math.nan
    assert run_figures(run, base, ev)["Q_bpb"] == pytest.approx(0.05)

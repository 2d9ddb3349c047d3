"""`grads compare` on hand-made experiment folders (figures computed by hand)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from grads.errors import GradsError
from grads.experiment.compare import compare, compare_command, compare_validation, eval_tasks
from grads.experiment.config import ExperimentConfig

CONFIG = """model: smollm2-135m-instruct
eval:
  domain_tasks: [med]
  general_tasks: [gen]
  validation_tasks: [val]
"""
BASE = {"med": 0.30, "gen": 0.60, "val": 0.20}


def result(accuracies: dict[str, float], n: int = 100) -> dict:
    return {name: {"accuracy": acc, "correct": round(acc * n), "n": n} for name, acc in accuracies.items()}


def experiment(folder: Path, runs: dict[str, dict[str, float]], base=BASE, config: str | None = CONFIG) -> Path:
    """An experiment folder as `grads experiment` writes it; RUNS: {"method-ratio-sSEED" or "full-sSEED": accs}."""
    for run, accuracies in {"base": base, **runs}.items():
        (folder / "runs" / run).mkdir(parents=True)
        record = {"tasks": result(accuracies)}
        if run != "base":
            head, seed = run.rsplit("-s", 1)
            method, _, ratio = head.rpartition("-")
            method, ratio = (method, float(ratio)) if method and ratio[0].isdigit() else (head, None)
            record.update(run=run, method=method, ratio=ratio, seed=int(seed),
                          n_train=100 if ratio is None else round(100 * ratio), train_loss=1.0)
        (folder / "runs" / run / "results.json").write_text(json.dumps(record))
    if config is not None:
        (folder / "config.yaml").write_text(config)
    return folder


def grid(folder: Path, **kwargs) -> Path:
    # G = med − 0.30, F = 0.60 − gen per run
    return experiment(folder, {
        "random-0.5-s0": {"med": 0.35, "gen": 0.58, "val": 0.25},  # G 0.05, F 0.02, G_val 0.05
        "random-0.5-s1": {"med": 0.33, "gen": 0.60, "val": 0.23},  # G 0.03, F 0.00, G_val 0.03
        "grads-0.5-s0": {"med": 0.38, "gen": 0.56, "val": 0.24},   # G 0.08, F 0.04 (no seed 1)
        "full-s0": {"med": 0.50, "gen": 0.50, "val": 0.40},        # G 0.20, F 0.10
        "full-s1": {"med": 0.46, "gen": 0.52, "val": 0.36},        # G 0.16, F 0.08
        "gradnorm-0.5-s0": {"med": 0.10, "gen": 0.10, "val": 0.10},  # not a reference: left out
    }, **kwargs)


def new(folder: Path, **kwargs) -> Path:
    return experiment(folder, {
        "grads-0.5-s0": {"med": 0.40, "gen": 0.55, "val": 0.30},   # G 0.10, F 0.05, G_val 0.10
        "grads-0.5-s1": {"med": 0.36, "gen": 0.59, "val": 0.26},   # G 0.06, F 0.01, G_val 0.06
        "grads-0.05-s0": {"med": 0.31, "gen": 0.60, "val": 0.21},  # G 0.01, F 0.00, G_val 0.01
    }, **kwargs)


def test_compare_figures_by_hand(tmp_path):
    table = compare(new(tmp_path / "new"), grid(tmp_path / "grid"), "tag").splitlines()
    assert table[0] == ("| method | ratio | seeds | n_train | G | F | G_val | ΔG, ΔF vs random (per seed) "
                        "| ΔG, ΔF vs grads (per seed) | ΔG, ΔF vs full (per seed) |")
    assert table[1] == "|---|---|---|---|---|---|---|---|---|---|"
    # 5%: one seed (std 0); no random or grads run at 5% in the grid ('–'); vs full s0: 0.01 − 0.20, 0.00 − 0.10
    assert table[2] == ("| grads [tag] | 0.05 | 1 | 5 | +0.010 ± 0.000 | +0.000 ± 0.000 | +0.010 ± 0.000 | – | – "
                        "| -0.190 ± 0.000, -0.100 ± 0.000 (-0.190, -0.100) |")
    # 50%: G 0.10, 0.06 -> +0.080 ± 0.028 (sample std 0.04/√2); F 0.05, 0.01 -> +0.030 ± 0.028; G_val the same as G
    # vs random: ΔG 0.05, 0.03 -> +0.040 ± 0.014; ΔF 0.03, 0.01 -> +0.020 ± 0.014
    # vs grads: seed 0 only: ΔG 0.10 − 0.08, ΔF 0.05 − 0.04
    # vs full: ΔG −0.10, −0.10; ΔF −0.05, −0.07 -> −0.060 ± 0.014
    assert table[3] == ("| grads [tag] | 0.5 | 2 | 50 | +0.080 ± 0.028 | +0.030 ± 0.028 | +0.080 ± 0.028 "
                        "| +0.040 ± 0.014, +0.020 ± 0.014 (+0.050, +0.030; +0.030, +0.010) "
                        "| +0.020 ± 0.000, +0.010 ± 0.000 (+0.020, +0.010) "
                        "| -0.100 ± 0.000, -0.060 ± 0.014 (-0.100, -0.050; -0.100, -0.070) |")
    assert len(table) == 4


def test_compare_takes_the_tasks_from_the_reference_config_json(tmp_path):
    """No config.yaml: the tasks come from config.json (as `grads experiment` saves it); here G is on `val`."""
    reference = grid(tmp_path / "grid", config=None)
    settings = ExperimentConfig(eval={"domain_tasks": ["val"], "general_tasks": ["gen"]}).settings()
    (reference / "config.json").write_text(json.dumps(settings))
    assert eval_tasks(reference) == (("val",), ("gen",), ())
    table = compare(new(tmp_path / "new", config=None), reference, "x", references=("random",)).splitlines()
    # G = val − 0.20: 0.10, 0.06; no validation tasks, so no G_val ('–'); vs random ΔG 0.05, 0.03
    assert table[3] == ("| grads [x] | 0.5 | 2 | 50 | +0.080 ± 0.028 | +0.030 ± 0.028 | – "
                        "| +0.040 ± 0.014, +0.020 ± 0.014 (+0.050, +0.030; +0.030, +0.010) |")


def test_compare_refuses_different_base_evaluations(tmp_path):
    reference = grid(tmp_path / "grid")
    other = new(tmp_path / "new", base={**BASE, "gen": 0.61})
    with pytest.raises(GradsError, match=r"base-model evaluations of .*new and .*grid differ \(gen\)"):
        compare(other, reference, "tag")
    with pytest.raises(GradsError, match="no base-model evaluation"):
        compare(tmp_path / "new", tmp_path / "missing", "tag")
    bare = tmp_path / "bare"
    (bare / "runs" / "base").mkdir(parents=True)
    (bare / "runs" / "base" / "results.json").write_text(json.dumps({"tasks": result(BASE)}))
    with pytest.raises(GradsError, match="no config.yaml or config.json"):
        compare(new(tmp_path / "new2"), bare, "tag")


def test_compare_validation_by_hand(tmp_path):
    reference = experiment(tmp_path / "grid", {
        "random-0.25-s0": {"val": 0.25}, "random-0.25-s1": {"val": 0.27},  # G_val 0.05, 0.07
        "grads-0.25-s0": {"val": 0.22}, "grads-0.25-s1": {"val": 0.22},    # G_val 0.02, 0.02
    })
    # no `random` of its own: labelled [a], paired with the grid's runs at 25%
    a = experiment(tmp_path / "variant-a", {"grads-0.25-s0": {"val": 0.30}, "grads-0.25-s1": {"val": 0.26}},
                   base={"val": 0.20})
    # its own `random` and `grads` (a different recipe): paired with each other
    b = experiment(tmp_path / "variant-b", {"random-0.05-s0": {"val": 0.40}, "grads-0.05-s0": {"val": 0.31}},
                   base={"val": 0.20})
    table = compare_validation(reference, [a, b]).splitlines()
    assert table[:2] == ["| source | method | ratio | seeds | G_val (mean ± std) | ΔG_val vs random (per seed) "
                         "| ΔG_val vs grads (per seed) |", "|---|---|---|---|---|---|---|"]
    assert table[2:] == [
        "| grid | grads | 0.25 | 2 | +0.020 ± 0.000 | -0.040 ± 0.014 (-0.030, -0.050) | – |",
        "| grid | random | 0.25 | 2 | +0.060 ± 0.014 | – | +0.040 ± 0.014 (+0.030, +0.050) |",
        # G_val 0.10, 0.06; vs random 0.10 − 0.05, 0.06 − 0.07 -> +0.020 ± 0.06/√2; vs grads 0.08, 0.04
        "| variant-a | grads [a] | 0.25 | 2 | +0.080 ± 0.028 | +0.020 ± 0.042 (+0.050, -0.010) "
        "| +0.060 ± 0.028 (+0.080, +0.040) |",
        "| variant-b | grads | 0.05 | 1 | +0.110 ± 0.000 | -0.090 ± 0.000 (-0.090) | – |",
        "| variant-b | random | 0.05 | 1 | +0.200 ± 0.000 | – | +0.090 ± 0.000 (+0.090) |",
    ]
    c = experiment(tmp_path / "variant-c", {"grads-0.25-s0": {"val": 0.30}}, base={"val": 0.21})
    with pytest.raises(GradsError, match=r"variant-c and .*grid differ \(val\)"):
        compare_validation(reference, [a, c])


def test_compare_command_forms(tmp_path):
    reference, folder = grid(tmp_path / "grid"), new(tmp_path / "new")
    assert compare_command([folder], against=reference, tag="t") == compare(folder, reference, "t")
    assert "| grads [new] | 0.5 |" in compare_command([folder], against=reference)  # TAG defaults to the name
    variant = experiment(tmp_path / "variant-v", {"grads-0.5-s0": {"val": 0.3}})
    assert compare_command([variant], validation=reference) == compare_validation(reference, [variant])
    for kwargs in ({}, {"against": reference, "validation": reference}):
        with pytest.raises(GradsError, match="either --against"):
            compare_command([folder], **kwargs)
    with pytest.raises(GradsError, match="one folder, got 2"):
        compare_command([folder, variant], against=reference)
    with pytest.raises(GradsError, match="no experiment folder"):
        compare_command([], validation=reference)

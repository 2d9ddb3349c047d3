"""Smoke tests of the scripts under scripts/ on hand-made inputs (the numbers checked by hand); each runs the
script as a child process."""

from __future__ import annotations

import json
import math
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from helpers import ROOT
from scipy.stats import ttest_1samp

from grads.experiment.stats import detectable_difference

pytestmark = pytest.mark.e2e


def script_module(name: str):
    """scripts/NAME.py imported as a module (its functions, without a child process)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"script_{name}", ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_pilot(folder: Path, held: list[float]) -> None:
    (folder / "runs" / "base").mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump({
        "methods": [], "ratios": [], "seeds": [0, 1, 2],
        "eval": {"domain_tasks": ["medmcqa"], "general_tasks": ["gsm8k"], "heldout": ["h.jsonl"]}}))
    base = {"tasks": {"medmcqa": {"accuracy": 0.25}, "gsm8k": {"bpb": 0.70}}, "heldout": {"h": {"bpb": 1.30}}}
    (folder / "runs" / "base" / "results.json").write_text(json.dumps(base))
    for seed, value in enumerate(held):
        run = {"run": f"full-s{seed}", "method": "full", "ratio": None, "seed": seed, "n_train": 10,
               "train_loss": 1.0, "tasks": {"medmcqa": {"accuracy": 0.25 + 0.01 * seed},
                                            "gsm8k": {"bpb": 0.71 + 0.001 * seed}},
               "heldout": {"h": {"bpb": value}}}
        (folder / "runs" / f"full-s{seed}").mkdir()
        (folder / "runs" / f"full-s{seed}" / "results.json").write_text(json.dumps(run))


def test_power_script_reports_the_seed_spread_and_the_seeds_needed(tmp_path):
    held = [1.20, 1.21, 1.22]  # G_bpb 0.10, 0.09, 0.08: mean 0.09, seed SD 0.01
    write_pilot(tmp_path / "pilot", held)
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "power.py"), str(tmp_path / "pilot")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    rows = {line.split("|")[1].strip(): line for line in done.stdout.splitlines() if line.startswith("| G")}
    assert "+0.0900 | 0.0100 | 0.0141" in rows["G_bpb"]
    needed = min(n for n in range(3, 11) if detectable_difference(math.sqrt(2) * 0.01, n) <= 0.2 * 0.09)
    assert f"seeds needed for G_bpb at 20% of the full pool's gain: {needed}" in done.stdout


def test_claims_script_reads_each_claim_from_the_paired_intervals(tmp_path):
    write_pilot(tmp_path / "grid", [1.20, 1.21, 1.22])  # full, held-out bpb per seed; base 1.30
    runs = tmp_path / "grid" / "runs"
    for seed, (g5, g50, r5) in enumerate([(1.25, 1.10, 1.27), (1.24, 1.12, 1.22), (1.26, 1.13, 1.27)]):
        for method, ratio, held in [("grads", 0.05, g5), ("grads", 0.5, g50), ("random", 0.05, r5)]:
            # grads-0.5's accuracy is full's + 0.05 at every seed: pairs without spread
            accuracy = 0.30 + 0.01 * seed if (method, ratio) == ("grads", 0.5) else 0.25
            run = {"run": f"{method}-{ratio:g}-s{seed}", "method": method, "ratio": ratio, "seed": seed,
                   "tasks": {"medmcqa": {"accuracy": accuracy}, "gsm8k": {"bpb": 0.71}},
                   "heldout": {"h": {"bpb": held}}}
            (runs / run["run"]).mkdir()
            (runs / run["run"] / "results.json").write_text(json.dumps(run))
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "claims.py"), str(tmp_path / "grid")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    table = [line.split(" | ") for line in done.stdout.splitlines()[2:]]
    cells = {(c[1], c[3]): (c[4], c[6]) for c in table}
    p_value = {(c[1], c[3]): c[5] for c in table}
    holm = {(c[1], c[3]): c[7] for c in table}
    resolution = {(c[1], c[3]): c[8] for c in table}
    # grads-0.05 − full, G_bpb per seed: −0.05, −0.03, −0.04: mean −0.04, sd 0.01; t(0.975, 2) = 4.3027 (a t table)
    half = 4.302652729911275 * 0.01 / 3 ** 0.5
    assert cells[("grads-0.05 − full", "G_bpb")] == (f"-0.0400 [{-0.04 - half:+.4f}, {-0.04 + half:+.4f}]",
                                                    "contradicts")
    # resolution at power 0.8: (t(0.975, 2) + t(0.8, 2)) · sd / √3; for 2 degrees of freedom
    # t(p) = (2p − 1) / √(2p(1 − p)), so t(0.8, 2) = 0.6 / √0.32
    detectable = (4.302652729911275 + 0.6 / 0.32 ** 0.5) * 0.01 / 3 ** 0.5
    assert resolution[("grads-0.05 − full", "G_bpb")] == f"{detectable:.4f} |"
    assert cells[("grads-0.5 − full", "G_bpb")][1] == "supports"  # +0.10, +0.09, +0.09
    assert cells[("grads-0.5 − grads-0.05", "G_bpb")][1] == "supports"
    assert cells[("grads-0.05 − random-0.05", "G_bpb")][1] == "cannot tell"  # +0.02, −0.02, +0.01
    # forgetting: grads' general bpb 0.71 against full's 0.710, 0.711, 0.712: −0.001 ± 0.001, holds 0
    assert cells[("grads-0.05 − full", "F_bpb")][1] == "cannot tell"
    # the control, random-0.05 − full: −0.07, −0.01, −0.05 (sd 0.0306): holds 0
    assert cells[("random-0.05 − full", "G_bpb")] == ("-0.0433 [-0.1192, +0.0326] not distinguishable", "cannot tell")
    assert ("grads@full-steps-0.05 − full", "G_bpb") not in cells  # an arm the folder lacks is left out
    # three pairs that differ by the same +0.05 (a discrete measure can): no spread, so no interval, no test and
    # no resolution; never "supports"
    assert cells[("grads-0.5 − full", "G_acc")] == ("+0.050 (no spread: all 3 pairs the same; no interval)",
                                                   "cannot tell")
    assert p_value[("grads-0.5 − full", "G_acc")] == "—" and holm[("grads-0.5 − full", "G_acc")] == "—"
    assert resolution[("grads-0.5 − full", "G_acc")] == "— |"
    # the paired t test of −0.05, −0.03, −0.04 (p = 0.020), and Holm over the family (every row but the
    # controls, '—' there): the k-th smallest p of m is rejected while each so far is ≤ α/(m − k + 1)
    p = ttest_1samp([-0.05, -0.03, -0.04], 0.0).pvalue
    assert float(p_value[("grads-0.05 − full", "G_bpb")]) == pytest.approx(p, rel=1e-2)
    assert p_value[("random-0.05 − full", "G_bpb")] == "—" and holm[("random-0.05 − full", "G_bpb")] == "—"
    family = sorted(float(v) for v in p_value.values() if v != "—")
    passing = 0
    while passing < len(family) and family[passing] <= 0.05 / (len(family) - passing):
        passing += 1
    rejected = p <= family[passing - 1] if passing else False
    assert holm[("grads-0.05 − full", "G_bpb")] == ("contradicts" if rejected else "cannot tell")
    assert holm[("grads-0.05 − random-0.05", "G_bpb")] == "cannot tell"

    # --verdict: each rule against matched random data and the whole pool, on G_bpb and F_bpb only, with the same
    # intervals and Holm verdicts as the full table (the family is the full table's)
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "claims.py"), str(tmp_path / "grid"), "--verdict"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    table = [line.split(" | ") for line in done.stdout.splitlines()[2:]]
    verdicts = {(c[1], c[2], c[3], c[5]): (c[6], c[7]) for c in table}
    tested = {(c[1], c[2], c[3], c[5]): c[0].strip("| ") for c in table}
    assert tested[("grads", "0.05", "full", "G_bpb")] == "1. 5% beats the whole pool"
    assert tested[("grads", "0.5", "full", "F_bpb")] == "3. less forgetting than the whole pool"
    assert set(verdicts) == {("grads", "0.05", "full", "G_bpb"), ("grads", "0.5", "full", "G_bpb"),
                             ("grads", "0.05", "full", "F_bpb"), ("grads", "0.5", "full", "F_bpb")}
    assert verdicts[("grads", "0.05", "full", "G_bpb")] == (cells[("grads-0.05 − full", "G_bpb")][0],
                                                           holm[("grads-0.05 − full", "G_bpb")])

    # `length` has no length-matched control (the longest examples are their own stratum): its verdict rows are
    # against random data of its count and the whole pool, and GrADS is read against it
    for seed, (length, random) in enumerate([(1.15, 1.20), (1.16, 1.20), (1.15, 1.21)]):
        for method, held in [("length", length), ("random", random)]:
            run = {"run": f"{method}-0.5-s{seed}", "method": method, "ratio": 0.5, "seed": seed,
                   "tasks": {"medmcqa": {"accuracy": 0.25}, "gsm8k": {"bpb": 0.71}}, "heldout": {"h": {"bpb": held}}}
            (runs / run["run"]).mkdir()
            (runs / run["run"] / "results.json").write_text(json.dumps(run))
    claims_script = script_module("claims")  # in this process: the command line was run above
    verdicts = {(c[1], c[2], c[3], c[5]): c[6] for c in
                (line.split(" | ") for line in claims_script.verdict_rows(tmp_path / "grid")[2:])}
    assert {key for key in verdicts if key[0] == "length"} == {
        ("length", "0.5", "random-0.5", "G_bpb"), ("length", "0.5", "random-0.5", "F_bpb"),
        ("length", "0.5", "full", "G_bpb"), ("length", "0.5", "full", "F_bpb")}
    # length − random, G_bpb per seed: +0.05, +0.04, +0.06: mean +0.05, sd 0.01 (t(0.975, 2) = 4.3027)
    half = 4.302652729911275 * 0.01 / 3 ** 0.5
    assert verdicts[("length", "0.5", "random-0.5", "G_bpb")] == f"+0.0500 [{0.05 - half:+.4f}, {0.05 + half:+.4f}]"
    claims = {(c[1], c[3]): c[0].strip("| ") for c in
              (line.split(" | ") for line in claims_script.rows(tmp_path / "grid")[2:])}
    assert claims[("grads-0.5 − length-0.5", "G_bpb")] == "grads against length"



def test_claims_script_reads_question_use_where_the_runs_measure_it(tmp_path):
    """Q_bpb (question use gained) is read like learning (> 0 supports a claim) in the claims and verdict tables,
    with its own interval, when the runs carry question_use_bpb; runs without it (the test above) have no Q_bpb
    rows."""
    write_pilot(tmp_path / "grid", [1.20, 1.21, 1.22])
    runs = tmp_path / "grid" / "runs"
    base_file = runs / "base" / "results.json"
    base = json.loads(base_file.read_text())
    base["heldout"]["h"]["question_use_bpb"] = 0.20
    base_file.write_text(json.dumps(base))
    for seed, (full, grads) in enumerate([(0.15, 0.21), (0.16, 0.23), (0.14, 0.20)]):
        path = runs / f"full-s{seed}" / "results.json"
        run = json.loads(path.read_text())
        run["heldout"]["h"]["question_use_bpb"] = full
        path.write_text(json.dumps(run))
        run = {"run": f"grads-0.05-s{seed}", "method": "grads", "ratio": 0.05, "seed": seed,
               "tasks": run["tasks"], "heldout": {"h": {"bpb": 1.25, "question_use_bpb": grads}}}
        (runs / run["run"]).mkdir()
        (runs / run["run"] / "results.json").write_text(json.dumps(run))
    claims_script = script_module("claims")
    claims = {(c[1], c[3]): (c[4], c[6]) for c in
              (line.split(" | ") for line in claims_script.rows(tmp_path / "grid")[2:])}
    # grads − full, Q_bpb per seed: +0.06, +0.07, +0.06: mean +0.0633, sd 0.00577 (t(0.975, 2) = 4.3027)
    sd = statistics.stdev([0.06, 0.07, 0.06])
    half = 4.302652729911275 * sd / 3 ** 0.5
    mean = (0.06 + 0.07 + 0.06) / 3
    assert claims[("grads-0.05 − full", "Q_bpb")] == (f"{mean:+.4f} [{mean - half:+.4f}, {mean + half:+.4f}]",
                                                     "supports")
    verdicts = {(c[1], c[2], c[3], c[5]) for c in
                (line.split(" | ") for line in claims_script.verdict_rows(tmp_path / "grid")[2:])}
    assert verdicts == {("grads", "0.05", "full", figure) for figure in ("G_bpb", "F_bpb", "Q_bpb")}

def scores(folder: Path, n: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    answer = rng.integers(1, 200, n)
    pd.DataFrame({
        "id": [f"ex{i}" for i in range(n)], "row": np.arange(n), "n_tokens": answer + 50,
        "n_target_tokens": answer, "truncated_tokens": np.zeros(n, dtype=int), "loss": rng.uniform(0.5, 3.0, n),
        "emb_grad_norm": rng.lognormal(0.0, 0.5, n), "head_grad_norm": rng.lognormal(1.0, 0.5, n),
        "tied_grad_norm": np.full(n, np.nan), "status": ["ok"] * n,
    }).to_parquet(folder / "scores.parquet")
    return folder


def test_subset_profile_script_smoke(tmp_path):
    theta1, theta0 = scores(tmp_path / "theta1", 40, 0), scores(tmp_path / "theta0", 40, 1)
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "subset_profile.py"), "--theta1", str(theta1),
                           "--theta0", str(theta0)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("pool: 40 examples, answer tokens mean ")
    rows = [line for line in lines[3:] if line.startswith("| θ")]
    assert len(lines) == 3 + 24 and len(rows) == 24  # 8 rules × 3 ratios
    # ⌈ρ·40⌉ examples per rule; the default `grads` subset shares all of its own
    assert [row.split(" | ")[4] for row in rows] == ["2"] * 8 + ["10"] * 8 + ["20"] * 8
    assert rows[0].startswith("| θ1 | zsum | grads | 0.05 | 2 |") and rows[0].endswith("| 2 |")


def test_subset_profile_script_refuses_different_pools(tmp_path):
    theta1, theta0 = scores(tmp_path / "theta1", 40, 0), scores(tmp_path / "theta0", 30, 1)
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "subset_profile.py"), "--theta1", str(theta1),
                           "--theta0", str(theta0)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "rows differ" in done.stderr


def test_grid_cost_script_sums_the_seconds_each_run_and_selection_left(tmp_path):
    grid = tmp_path / "grid"
    runs = {  # name: (train_seconds, eval seconds, model_from)
        "grads-0.05-s0": (360.0, 180.0, None), "grads-0.05-s1": (720.0, 360.0, None),
        "random-0.05-s0": (1800.0, 0.0, None), "full-s0": (9000.0, 3600.0, "select-seed-0/warmup/model"),
    }
    for name, (train, evaluation, model_from) in runs.items():
        (grid / "runs" / name).mkdir(parents=True)
        result = {"run": name, "train_seconds": train} | ({"model_from": model_from} if model_from else {})
        (grid / "runs" / name / "results.json").write_text(json.dumps(result))
        (grid / "runs" / name / "eval.json").write_text(json.dumps({"seconds": evaluation}))
    (grid / "runs" / "base").mkdir()
    (grid / "runs" / "base" / "results.json").write_text(json.dumps({"run": "base"}))
    (grid / "runs" / "grads-0.5-s0").mkdir()  # unfinished: no results.json
    for name, warmup, scoring in (("select", 3600.0, 1800.0), ("select-seed-1", 7200.0, 3600.0)):
        (grid / name).mkdir()
        (grid / name / "timings.json").write_text(json.dumps({"warmup_s": warmup, "scoring_s": scoring,
                                                              "reused": ["warmup", "scoring"]}))
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "grid_cost.py"), str(grid), "--runs", "grads*",
                           "full*", "--select", "select-seed-*"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ") and not line.startswith("| arm")]
    # full-s0 adopted its warm-up's model: it trained nothing, its evaluation counts
    assert rows == ["| full | 1 | 0.00 | 1.00 | 1.00 |", "| grads-0.05 | 2 | 0.30 | 0.15 | 0.45 |",
                    "| select-seed-1 | 1 | 2.00 | 1.00 | 3.00 |"]
    assert done.stdout.rstrip().endswith("total: 4.5 CPU h over 3 runs and 1 selections")


def test_matched_overlap_script_counts_what_each_matched_draw_shares_with_its_target(tmp_path):
    overlap = script_module("matched_overlap")
    # the strata draw: one per target, of its exact length; a stratum that runs short takes the nearest length
    lengths = np.array([4, 4, 12, 11, 6])
    assert overlap.strata_draw(lengths, np.arange(5), np.array([2, 3]), 0).tolist() == [2, 3]
    assert sorted(lengths[overlap.strata_draw(lengths, np.array([0, 1, 2, 4]), np.array([2, 3]), 0)]) == [6, 12]
    # a pool of 10, one ineligible (N = 9); grads keeps e6 and e7, the only answers of 11 and 12 tokens, at 0.2,
    # and e0 and e4 besides at 0.4: a draw at those lengths must take e6 and e7, and may take e0 and e4
    grid = tmp_path / "grid"
    (grid / "select").mkdir(parents=True)
    ids = [f"e{i}" for i in range(10)]
    n_target = np.array([4, 4, 4, 4, 6, 6, 11, 12, 4, 6])
    status = ["ok"] * 9 + ["too_long"]
    pd.DataFrame({"id": ids, "n_target_tokens": n_target, "status": status}).to_parquet(
        grid / "select" / "scores.parquet")
    grads = {0.2: [6, 7], 0.4: [0, 4, 6, 7]}
    eligible = np.arange(9)
    outputs = {f"grads-{r:g}.jsonl": {"ids": [ids[i] for i in rows]} for r, rows in grads.items()}
    stored = {r: overlap.strata_draw(n_target, eligible, np.array(rows), 0) for r, rows in grads.items()}
    outputs |= {f"random-matched-{r:g}.jsonl": {"ids": [ids[i] for i in rows]} for r, rows in stored.items()}
    selection = {"outputs": outputs, "settings": {"select": {"seed": 0}}}
    (grid / "select" / "selection.json").write_text(json.dumps(selection))
    (grid / "runs" / "base").mkdir(parents=True)
    (grid / "runs" / "base" / "results.json").write_text(json.dumps({"run": "base"}))
    for method, ratio, seed in [("grads", 0.2, 0), ("random-matched", 0.2, 0), ("random-matched", 0.4, 0),
                                ("random-matched", 0.4, 1)]:
        name = f"{method}-{ratio:g}-s{seed}"
        (grid / "runs" / name).mkdir()
        run = {"run": name, "method": method, "ratio": ratio, "seed": seed, "n_train": len(grads[ratio]),
               "train_answer_tokens": int(n_target[grads[ratio]].sum())}
        (grid / "runs" / name / "results.json").write_text(json.dumps(run))
    command = [sys.executable, str(ROOT / "scripts" / "matched_overlap.py"), str(grid)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    rows = {line.split(" | ")[0][2:]: line.split(" | ") for line in done.stdout.splitlines()
            if line.startswith("| random-matched-")}
    assert rows["random-matched-0.2-s0"] == ["| random-matched-0.2-s0", "select", "stored", "2 (grads)", "2", "0.4",
                                             "9 |"]  # k²/N = 4/9
    for run in ("random-matched-0.4-s0", "random-matched-0.4-s1"):
        assert rows[run][4:] == ["4", "1.8", "9 |"]  # 16/9
        assert 2 <= int(rows[run][3].split()[0]) <= 4
    assert rows["random-matched-0.4-s0"][2] == "stored" and rows["random-matched-0.4-s1"][2] == "re-drawn"
    assert "| random-matched | 0.2 | 1 | 2–2 | 2 | 100%–100% | 0.4 |" in done.stdout
    # a stored draw the strata draw does not reproduce, or a run that trained on other answer tokens, stops it
    outputs["random-matched-0.2.jsonl"]["ids"] = ["e6", "e8"]
    (grid / "select" / "selection.json").write_text(json.dumps(selection))
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "not the strata draw" in done.stderr
    outputs["random-matched-0.2.jsonl"]["ids"] = [ids[i] for i in stored[0.2]]
    (grid / "select" / "selection.json").write_text(json.dumps(selection))
    run = json.loads((grid / "runs" / "random-matched-0.4-s1" / "results.json").read_text())
    (grid / "runs" / "random-matched-0.4-s1" / "results.json").write_text(
        json.dumps(run | {"train_answer_tokens": 34}))
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "answer tokens" in done.stderr


def test_canary_check_script_sets_planted_kept_beside_canaries_kept(tmp_path):
    """Two outputs × two kinds by hand: the table's shares, and Spearman over the four pairs (ranks 1..4 against
    1, 2, 4, 3: 0.8)."""
    summary = {
        "noise": {"outputs": {
            "loss-0.5.jsonl": {"kept": {"clean": 0.6, "swap": 0.1, "shuffle": 0.3}},
            "random-0.5.jsonl": {"kept": {"clean": 0.5, "swap": 0.45, "shuffle": 0.55}},
            "full.jsonl": {"kept": {"clean": 1.0, "swap": 1.0, "shuffle": 1.0}}}},
        "canaries": {"eligible": {"swap": 4, "shuffle": 4}, "outputs": {
            "loss-0.5.jsonl": {"kept_share": {"swap": 0.0, "shuffle": 0.25}},
            "random-0.5.jsonl": {"kept_share": {"swap": 0.75, "shuffle": 0.5}},
            "full.jsonl": {"kept_share": {"swap": 1.0, "shuffle": 1.0}}}}}
    (tmp_path / "selection.json").write_text(json.dumps(summary))
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "canary_check.py"), str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "| loss-0.5.jsonl | swap | 0.10 | 0.00 (4) | 0.60 |" in done.stdout
    assert "over 4 output × kind pairs: 0.800; largest gap +0.30 (random-0.5.jsonl, swap)" in done.stdout
    (tmp_path / "selection.json").write_text(json.dumps({"noise": summary["noise"]}))
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "canary_check.py"), str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "--canaries" in done.stderr


def test_noise_pilot_script_sets_clean_minus_full_against_the_threshold(tmp_path):
    """A pilot by hand: held-out bpb 1.30 (base), 1.20 (full), 1.10 (clean): G_bpb clean − full +0.1000 against
    2·√2·0.01 = 0.0283 (separates); the general task's bpb moves 0.001 (F_bpb −0.0010 against 0.0283: does not).
    The bootstrap of G_bpb over the examples holds the point value (every example is 0.1 bpb apart by
    construction: nll per example scaled to its bytes)."""
    folder, reference = tmp_path / "pilot", tmp_path / "ref"
    (folder / "runs" / "base").mkdir(parents=True)
    reference.mkdir()
    (folder / "config.yaml").write_text(yaml.safe_dump({
        "methods": ["clean"], "seeds": [0], "plant": {"share": 0.25, "kinds": ["swap"]},
        "eval": {"domain_tasks": [], "general_tasks": ["gsm8k"], "validation_tasks": [], "heldout": ["h.jsonl"]}}))
    n_bytes = np.array([100, 250, 80, 400])

    def run(arm: str, bpb: float, q: float, general: float) -> None:
        nll = bpb * math.log(2) * n_bytes
        held = pd.DataFrame({"file": "h", "row": range(4), "n_bytes": n_bytes, "n_tokens": 10, "nll": nll,
                             "nll_mismatched": nll + q * math.log(2) * n_bytes})
        result = {"tasks": {"gsm8k": {"bpb": general}},
                  "heldout": {"h": {"bpb": bpb, "question_use_bpb": q}}}
        where = folder / "runs" / (arm if arm == "base" else f"{arm}-s0")
        where.mkdir(exist_ok=True)
        (where / "results.json").write_text(json.dumps(result))
        held.to_parquet(where / ("results.heldout.parquet" if arm == "base" else "eval.heldout.parquet"))

    run("base", 1.30, 0.10, 0.700)
    run("full", 1.20, 0.05, 0.702)
    run("clean", 1.10, 0.12, 0.701)
    pd.DataFrame([{"method": "full", "G_bpb_std": 0.01, "F_bpb_std": 0.01}]).to_csv(reference / "summary.csv",
                                                                                   index=False)
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "noise_pilot.py"), str(folder), "--reference",
                           str(reference)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = {line.split(" | ")[1]: line for line in done.stdout.splitlines() if line.startswith("| 0 |")}
    assert "| +0.1000 | 0.0283 | yes | [+0.1000, +0.1000] |" in lines["G_bpb"]
    assert "| -0.0010 | 0.0283 | no |" in lines["F_bpb"]
    assert "| +0.0700 | nan | n/a (no seed sd) | [+0.0700, +0.0700] |" in lines["Q_bpb"]


def test_noise_figures_script_prints_the_detection_tables(tmp_path):
    summary = {"noise": {"counts": {"clean": 6, "swap": 2}, "detection": {
        "loss": {"auroc": 0.75, "direction": "high", "by_kind": {"swap": 0.75}},
        "density": {"auroc": 0.9, "direction": "low", "by_kind": {"swap": 0.9}}},
        "outputs": {"loss-0.5.jsonl": {"share": {"clean": 0.75, "swap": 0.25}, "kept": {"clean": 0.5, "swap": 0.5}}}}}
    (tmp_path / "selection.json").write_text(json.dumps(summary))
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "noise_figures.py"), str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[2] == "| density | low | 0.900 | 0.90 |" and lines[3] == "| loss | high | 0.750 | 0.75 |"
    assert "| loss-0.5.jsonl | 25.0% | 0.50 | 0.50 |" in lines


def test_noise_figures_script_redraws_the_random_rules_at_other_seeds(tmp_path):
    """--seeds: `random`'s kept shares are the mean over those seeds of its draws from scores.parquet, recounted
    here with grads' own rule; a rule that does not draw (loss) keeps the selection's own figures."""
    from helpers import score_table

    from grads.core.rules import select

    rng = np.random.default_rng(0)
    table = score_table(rng.random(40) + 0.5, rng.random(40) + 0.5, loss=rng.random(40))
    table["label"] = ["swap" if i % 4 == 0 else "clean" for i in range(40)]
    table.to_parquet(tmp_path / "scores.parquet")
    loss_entry = {"share": {"clean": 0.5, "swap": 0.5}, "kept": {"clean": 0.3, "swap": 0.9}}
    summary = {"settings": {"select": {"signal": "zsum", "bandwidth": "scott", "bandwidth_scale": 1.0,
                                       "kde": "auto"}},
               "outputs": {"random-0.5.jsonl": {"method": "random", "ratio": 0.5},
                           "loss-0.5.jsonl": {"method": "loss", "ratio": 0.5}},
               "noise": {"counts": {"clean": 30, "swap": 10}, "detection": {},
                         "outputs": {"random-0.5.jsonl": loss_entry, "loss-0.5.jsonl": loss_entry}}}
    (tmp_path / "selection.json").write_text(json.dumps(summary))
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "noise_figures.py"), str(tmp_path), "--seeds",
                           "1", "2", "3"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    swap_kept = np.mean([(table["label"].iloc[select(table, "random", 0.5, s)] == "swap").sum() / 10
                         for s in (1, 2, 3)])
    random_row = next(line for line in done.stdout.splitlines() if line.startswith("| random-0.5.jsonl"))
    assert random_row.endswith(f"| {swap_kept:.2f} |")
    assert "| loss-0.5.jsonl | 50.0% | 0.30 | 0.90 |" in done.stdout

"""Smoke tests of the scripts under scripts/ and benchmarks/ on hand-made inputs (the numbers checked by hand)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import yaml

from grads.experiment.stats import detectable_difference

ROOT = Path(__file__).resolve().parent.parent


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
            run = {"run": f"{method}-{ratio:g}-s{seed}", "method": method, "ratio": ratio, "seed": seed,
                   "tasks": {"medmcqa": {"accuracy": 0.25}, "gsm8k": {"bpb": 0.71}}, "heldout": {"h": {"bpb": held}}}
            (runs / run["run"]).mkdir()
            (runs / run["run"] / "results.json").write_text(json.dumps(run))
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "claims.py"), str(tmp_path / "grid")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    table = [line.split(" | ") for line in done.stdout.splitlines()[2:]]
    cells = {(c[1], c[3]): (c[4], c[5]) for c in table}
    resolution = {(c[1], c[3]): c[6] for c in table}
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


def test_gradnorms_benchmark_runs_and_the_torch_func_peer_agrees_with_the_kernel(tmp_path):
    """benchmarks/gradnorms.py end to end on a small random model (no extra dependency: the naive loop and the
    torch.func peer, per-example autograd by two other routes), both batch shapes; their norms equal ours."""
    out = tmp_path / "bench.json"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gradnorms.py"), "--model", "tiny",
                           "--data", "synthetic", "--methods", "grads_kernel", "naive_loop", "torch_func",
                           "--batches", "2", "--batch-size", "3", "--max-tokens", "24", "--answer-tokens", "6",
                           "--threads", "1", "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(out.read_text())
    for shape, targets in [("answer-only", 6), ("all-target", 23)]:
        results = report["shapes"][shape]
        assert results["grads_kernel"]["targets_per_example"] == targets
        ours = results["grads_kernel"]["norms"]
        assert len(ours["tied_total"]) == 6
        for peer, keys in [("torch_func", ["embedding", "head", "tied_total"]), ("naive_loop", ["tied_total"])]:
            assert results[peer]["s_per_example"] > 0
            for key in keys:
                for a, b in zip(ours[key], results[peer]["norms"][key]):
                    assert math.isclose(a, b, rel_tol=1e-4), (shape, peer, key)
    assert "torch_func" in done.stdout and "÷ train" in done.stdout


def test_the_gpu_benchmark_script_parses_and_names_what_it_runs():
    """benchmarks/gpu.sh runs only where a GPU is lent; here: bash accepts it, and each benchmark it starts
    passes options the benchmark's own parser accepts."""
    script = ROOT / "benchmarks" / "gpu.sh"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    text = script.read_text()
    for option in ["--device cuda", "--in-process", "--data synthetic", "--dtype bf16", "--dtype fp32",
                   "--model random:smollm2-135m", "--model random:llama-1b", "--untie"]:
        assert option in text, option
    helptext = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gradnorms.py"), "--help"],
                              capture_output=True, text=True, timeout=120).stdout
    for option in ["--device", "--in-process", "--data", "--dtype", "--untie", "--methods", "--answer-tokens"]:
        assert option in helptext, option

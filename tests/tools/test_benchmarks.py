"""Smoke tests of the benchmarks: benchmarks/gradnorms.py end to end on a small random model, and what
benchmarks/gpu.sh would run on a GPU machine."""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import subprocess
import sys

import pytest
from helpers import ROOT

pytestmark = pytest.mark.e2e


def test_gradnorms_benchmark_runs_and_the_torch_func_peer_agrees_with_the_kernel(tmp_path):
    """benchmarks/gradnorms.py end to end on a small random model (no extra dependency: the naive loop and the
    torch.func peer, per-example autograd by two other routes), both batch shapes, in one process; their norms
    equal ours. Then the default way, each method in a child process of its own, for the kernel on one shape."""
    def bench(out, *flags):
        done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gradnorms.py"), "--model", "tiny",
                               "--data", "synthetic", "--batches", "2", "--batch-size", "3", "--max-tokens", "24",
                               "--answer-tokens", "6", "--threads", "1", "--out", str(out), *flags],
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
        return json.loads(out.read_text()), done.stdout

    report, stdout = bench(tmp_path / "bench.json", "--methods", "grads_kernel", "naive_loop", "torch_func",
                           "--in-process")
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
    assert "torch_func" in stdout and "÷ train" in stdout

    child, _ = bench(tmp_path / "child.json", "--methods", "grads_kernel", "--shape", "answer-only")
    for key, values in child["shapes"]["answer-only"]["grads_kernel"]["norms"].items():
        for a, b in zip(values, report["shapes"]["answer-only"]["grads_kernel"]["norms"][key]):
            assert math.isclose(a, b, rel_tol=1e-5), key


RECORDER = """#!{python}
import json, sys
with open({log!r}, "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\\n")
"""


def test_every_benchmark_the_gpu_script_starts_is_one_the_benchmark_accepts(tmp_path, monkeypatch):
    """benchmarks/gpu.sh runs only where a GPU is lent. Here it runs with PYTHON set to a stand-in that records the
    command it is given instead of running it; each `benchmarks/gradnorms.py` command the script starts is then
    parsed by the benchmark's own parser (an option it does not take, or a value outside its choices, fails the
    test), and names a model the benchmark can build, on the GPU, in one process."""
    script = ROOT / "benchmarks" / "gpu.sh"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    log, python = tmp_path / "commands.jsonl", tmp_path / "python"
    python.write_text(RECORDER.format(python=sys.executable, log=str(log)))
    python.chmod(0o755)
    out = tmp_path / "out"
    done = subprocess.run(["bash", str(script), str(out)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHON": str(python), "GPU_WHEELS": str(tmp_path / "no-wheels")})
    assert done.returncode == 0, done.stderr[-2000:]
    commands = [json.loads(line) for line in log.read_text().splitlines()]
    benchmarks = [argv[1:] for argv in commands if argv[0] == "benchmarks/gradnorms.py"]
    assert len(benchmarks) == 4, commands  # smollm2 bf16, fp32, untied bf16; llama-1b bf16

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from bench_models import CONFIGS
    from gradnorms import build_parser

    seen = []
    for argv in benchmarks:
        with contextlib.redirect_stderr(io.StringIO()) as err:
            try:
                args = build_parser().parse_args(argv)
            except SystemExit:
                pytest.fail(f"benchmarks/gradnorms.py refuses what gpu.sh passes: {argv}\n{err.getvalue()}")
        kind, _, name = args.model.partition(":")
        assert kind == "random" and name in CONFIGS, args.model  # random weights of a real shape: no download
        assert (args.device, args.in_process, args.data) == ("cuda", True, "synthetic"), argv
        assert args.out.parent == out and not args.only, argv
        seen.append((name, args.dtype, args.untie, args.out.name))
    assert seen == [("smollm2-135m", "bf16", False, "smollm2-bf16.json"),
                    ("smollm2-135m", "fp32", False, "smollm2-fp32.json"),
                    ("smollm2-135m", "bf16", True, "smollm2-untied-bf16.json"),
                    ("llama-1b", "bf16", False, "llama1b-bf16.json")]


def test_pipeline_cost_measures_each_setting_and_its_agreement(tmp_path, monkeypatch, capsys, tiny_model_dir,
                                                              medmcqa_dir, smol_tokenizer):
    """benchmarks/pipeline_cost.py end to end on tiny models: each setting's seconds over the default's warm-up
    (the full-pool epoch) as selection.json recorded them, Jaccard and Spearman against the default computed here
    from the selections themselves, the proxy read against the target's own selection, and a goal verdict that
    follows from the figures."""
    import pyarrow.parquet as pq
    from helpers import tiny_llama
    from scipy.stats import spearmanr

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from pipeline_cost import main

    target = tmp_path / "target"
    tiny_llama(vocab_size=len(smol_tokenizer), tied=True, hidden=32, seed=3).save_pretrained(target)
    smol_tokenizer.save_pretrained(target)
    out = tmp_path / "cost"
    report = main(["--model", str(tiny_model_dir), "--target", str(target), "--data", str(medmcqa_dir / "pool.jsonl"),
                   "--limit", "24", "--max-length", "64", "--batch-size", "4", "--out", str(out),
                   "--json", str(tmp_path / "cost.json"), "--settings", "theta0", "warmup-0.5+len-32", "len-32",
                   "seed-1", "proxy"])
    assert json.loads((tmp_path / "cost.json").read_text()) == json.loads(json.dumps(report))

    def selection(name):
        return json.loads((out / name / "selection.json").read_text())

    epoch = selection("default")["cost"]["warmup_seconds"]
    assert report["full_epoch"]["seconds"] == epoch > 0
    assert set(report["settings"]) == {"default", "theta0", "warmup-0.5+len-32", "len-32", "seed-1"}
    # len-32 shares the default's warm-up: trained once, its seconds count for both
    assert selection("len-32")["cost"]["warmup_seconds"] == epoch
    assert json.loads((out / "len-32" / "warmup" / "model" / "done.json").read_text())["fingerprint"] == \
        json.loads((out / "default" / "warmup" / "model" / "done.json").read_text())["fingerprint"]
    for name, row in report["settings"].items():
        cost = selection(name)["cost"]
        assert row["ratio_to_full_epoch"] == pytest.approx((cost["warmup_seconds"] + cost["scoring_seconds"]) / epoch,
                                                           abs=1e-4)
    assert report["settings"]["theta0"]["warmup_seconds"] == 0
    cheaper = selection("warmup-0.5+len-32")
    assert cheaper["settings"]["select"]["score_max_length"] == 32 and cheaper["cost"]["warmup_examples"] == 12
    # a fractional warm-up's own estimate of the epoch is kept beside the measured ratio (the default's: none)
    assert report["settings"]["warmup-0.5+len-32"]["own_estimate"] == {
        k: cheaper["cost"][k] for k in ("full_epoch_seconds", "ratio_to_full_epoch", "full_epoch_from")}
    assert cheaper["cost"]["full_epoch_from"] == "steady pace"
    assert report["settings"]["default"]["own_estimate"] is None

    def ids(name, ratio, folder=out):
        return set(json.loads((folder / name / "selection.json").read_text())["outputs"][f"grads-{ratio}.jsonl"]["ids"])

    for ratio in ("0.05", "0.5"):
        a, b = ids("default", ratio), ids("seed-1", ratio)
        assert report["noise"]["seed-1"][f"jaccard_{ratio}"] == pytest.approx(len(a & b) / len(a | b), abs=1e-4)
        a, b = ids("default", ratio), ids("target-default", ratio)
        assert report["proxy"]["as_proxy"]["default"][f"jaccard_{ratio}"] == pytest.approx(len(a & b) / len(a | b),
                                                                                           abs=1e-4)
    x, y = (pq.read_table(out / n / "scores.parquet").to_pandas().set_index("id") for n in ("default", "theta0"))
    rho = spearmanr(x["combined"], y.loc[x.index, "combined"])[0]
    assert report["settings"]["theta0"]["spearman"] == pytest.approx(rho, abs=1e-4)
    assert report["noise_mean"] == report["noise"]["seed-1"]
    verdict = report["goal"]
    within = [n for n, r in report["settings"].items() if n not in ("default", "seed-1")
              and all(r[k] >= report["noise_mean"][k] for k in report["noise_mean"])]
    assert verdict["within_noise"] == within
    chance = {r: (k * k / n) / (2 * k - k * k / n) for r, k, n in [
        (r, selection("default")["outputs"][f"grads-{r}.jsonl"]["n_selected"], selection("default")["n_eligible"])
        for r in ("0.05", "0.5")]}
    assert report["chance_jaccard"] == pytest.approx(chance, abs=1e-4)
    if any(report["noise"]["seed-1"][f"jaccard_{r}"] <= chance[r] for r in chance):
        assert verdict["reached"] is None and "chance" in verdict["why"]  # the noise says nothing
    else:
        assert verdict["reached"] == any(report["settings"][n]["ratio_to_full_epoch"] <= 0.25 for n in within)

    # the docs' table and plot, drawn from the JSON alone: a row per setting with its ratio and agreement
    capsys.readouterr()
    assert main(["--from-json", str(tmp_path / "cost.json"), "--markdown", "--plot", str(tmp_path / "cost.png")]) \
        == json.loads((tmp_path / "cost.json").read_text())
    first = capsys.readouterr().out.split("\n\n")[0]  # the settings' table (the proxy's follows)
    table = {cells[0]: cells[1:] for cells in ([c.strip() for c in line.strip("|").split("|")]
                                               for line in first.splitlines() if line.startswith("| "))}
    for name, row in report["settings"].items():
        cells = table[name]
        assert float(cells[2]) == pytest.approx(row["ratio_to_full_epoch"], abs=0.006)
        if name != "default":
            assert float(cells[3]) == pytest.approx(row["jaccard_0.05"], abs=6e-4)
    assert float(table["faithful pair: default vs seed-1"][5]) == \
        pytest.approx(report["noise"]["seed-1"]["spearman"], abs=6e-4)
    assert float(table["theta0"][5]) == pytest.approx(report["settings"]["theta0"]["spearman"], abs=6e-4)
    assert (tmp_path / "cost.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_warmup_pace_estimates_the_full_epoch_both_ways_from_the_recorded_steps(tmp_path, monkeypatch,
                                                                                tiny_model_dir, medmcqa_dir):
    """benchmarks/warmup_pace.py on the tiny model: a warm-up on half the pool and a full epoch trained beside it;
    each estimate recomputed here from the warm-up's done.json, and its error against the full epoch."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from warmup_pace import main

    report = main(["--model", str(tiny_model_dir), "--data", str(medmcqa_dir / "pool.jsonl"), "--limit", "24",
                   "--max-length", "64", "--batch-size", "4", "--fractions", "0.5", "--measure-full-epoch",
                   "--out", str(tmp_path / "pace"), "--json", str(tmp_path / "pace.json")])
    assert json.loads((tmp_path / "pace.json").read_text()) == json.loads(json.dumps(report))
    row, full = report["warmups"][0], report["full_epoch_seconds"]
    done = json.loads((tmp_path / "pace" / "pace-0.5" / "warmup" / "model" / "done.json").read_text())
    by_step = {int(k): v for k, v in done["seconds_by_step"].items()}
    assert (row["examples"], row["steps"], sorted(by_step)) == (12, 3, [1, 2, 3])  # 12 examples at batch 4
    # the pool's 24 take 6 steps: 3 more at the pace after the first
    assert row["estimate_steady_pace"] == pytest.approx(done["seconds"] + (by_step[3] - by_step[1]) / 2 * 3, abs=0.06)
    # per token: its seconds over its tokens, times the pool's (every example here has an answer token)
    from grads.data.formats import scan_pool
    from grads.data.pool import tokenized
    from grads.infra.models import load_tokenizer

    pool = tokenized(scan_pool(medmcqa_dir / "pool.jsonl", None, 24), load_tokenizer(str(tiny_model_dir)), 24, 64)
    assert (pool.n_target_tokens > 0).all()
    assert row["estimate_per_token"] == pytest.approx(done["seconds"] / row["tokens"] * int(pool.n_tokens.sum()),
                                                      abs=0.06)
    full_done = json.loads((tmp_path / "pace" / "pace-1" / "warmup" / "model" / "done.json").read_text())
    assert full == full_done["seconds"] > 0 and full_done["steps"] == 6
    assert row["error_steady_pace"] == pytest.approx(row["estimate_steady_pace"] / full - 1, abs=1e-3)
    assert row["error_per_token"] == pytest.approx(row["estimate_per_token"] / full - 1, abs=1e-3)


def test_eval_head_benchmark_times_both_ways_and_they_agree(tmp_path, monkeypatch, tiny_model_dir):
    """benchmarks/eval_head.py on the tiny model: the evaluation with the head where a token is scored and with it
    everywhere, each timed; the ratio is that of the best times, and every per-item value agrees."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from eval_head import main

    report = main(["--model", str(tiny_model_dir), "--tasks", "arc_easy", "piqa", "gsm8k", "--limit", "3",
                   "--heldout-limit", "4", "--repeats", "1", "--json", str(tmp_path / "eval.json")])
    assert json.loads((tmp_path / "eval.json").read_text()) == json.loads(json.dumps(report))
    best = {name: min(s) for name, s in report["seconds"].items()}
    assert report["ratio"] == pytest.approx(best["scored positions"] / best["every position"], abs=1e-3)
    assert report["n_values"] >= 13 and report["max_relative_difference"] < 1e-4


def test_eval_merge_benchmark_times_the_merged_and_the_loaded_adapter_and_they_agree(tmp_path, monkeypatch,
                                                                                      tiny_model_dir):
    """benchmarks/eval_merge.py on the tiny model with an adapter it makes: the evaluation of the adapter folded
    into the weights and as PEFT loads it, each timed; the ratio is that of the best times, and every per-item
    value agrees."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from eval_merge import main

    report = main(["--model", str(tiny_model_dir), "--tasks", "arc_easy", "piqa", "--limit", "3", "--heldout-limit",
                   "4", "--repeats", "1", "--json", str(tmp_path / "merge.json")])
    assert json.loads((tmp_path / "merge.json").read_text()) == json.loads(json.dumps(report))
    best = {name: min(s) for name, s in report["seconds"].items()}
    assert report["ratio"] == pytest.approx(best["merged"] / best["as loaded"], abs=1e-3)
    assert report["n_values"] >= 10 and report["max_relative_difference"] < 1e-4

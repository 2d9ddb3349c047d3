"""Peak resident memory of `grads score` against pool size, and the time to select from a 1M-row score table.

    .venv/bin/python benchmarks/memory.py                      # pools of 20k and 200k examples
    .venv/bin/python benchmarks/memory.py --sizes 2000 20000   # quicker

Each pool is synthetic (short prompt/completion pairs), scored by a tiny random Llama (vocabulary 96, d=16)
with a word-level tokenizer, in a child process whose peak RSS is read from the kernel (wait4). Memory flat in
pool size means the 200k run's peak is within 1.5x of the 20k run's: the pool streams through the Arrow token
cache and the scores are merged as Arrow tables, so no step keeps every example in Python objects.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORDS = [f"w{i}" for i in range(80)]


def build_model(folder: Path) -> None:
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(["<pad>", "<eos>", "<unk>", *WORDS, "?", ":", "answer"])}
    raw = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw, pad_token="<pad>", eos_token="<eos>",
                                        unk_token="<unk>")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=96, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128,
                         pad_token_id=0, eos_token_id=1, tie_word_embeddings=False)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def build_pool(path: Path, n: int) -> None:
    rng = random.Random(n)
    with open(path, "w") as f:
        for _ in range(n):
            prompt = " ".join(rng.choices(WORDS, k=rng.randint(4, 20))) + " ?"
            completion = " " + " ".join(rng.choices(WORDS, k=rng.randint(1, 8)))
            f.write(json.dumps({"prompt": prompt, "completion": completion}) + "\n")


def peak_rss_mb(cmd: list[str], env: dict) -> tuple[float, float]:
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{proc.stderr.read().decode()[-2000:]}")
    return usage.ru_maxrss / 1024, time.perf_counter() - started


def selection_time(n: int) -> dict:
    import numpy as np
    import pandas as pd

    from grads.core.rules import auto_ratio, select
    from grads.core.signals import DensitySpec, density

    rng = np.random.default_rng(0)
    frame = pd.DataFrame({
        "id": [f"ex{i}" for i in range(n)], "row": np.arange(n), "status": "ok",
        "n_tokens": rng.integers(20, 500, n), "n_target_tokens": rng.integers(1, 300, n),
        "loss": rng.gamma(2.0, 1.0, n), "emb_grad_norm": rng.lognormal(0, 1, n),
        "head_grad_norm": rng.lognormal(1, 0.5, n), "tied_grad_norm": np.nan})
    cfg = DensitySpec()
    started = time.perf_counter()
    frame["combined"], frame["density"], _ = density(frame, cfg)
    t_density = time.perf_counter() - started
    picked = {r: len(select(frame, "grads", r, 0, cfg)) for r in (0.05, 0.5)}
    auto = auto_ratio(frame, cfg)
    total = time.perf_counter() - started
    return {"rows": n, "density_s": round(t_density, 2), "density_and_select_s": round(total, 2), "picked": picked,
            "auto_ratio": auto[0]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[20_000, 200_000])
    parser.add_argument("--select-rows", type=int, default=1_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        build_model(tmp / "model")
        env = {**os.environ, "GRADS_HOME": str(tmp / "home")}
        results = []
        for n in args.sizes:
            build_pool(tmp / f"pool{n}.jsonl", n)
            cmd = [sys.executable, "-m", "grads.cli", "score", "--model", str(tmp / "model"), "--data",
                   str(tmp / f"pool{n}.jsonl"), "--out", str(tmp / f"out{n}"), "--batch-size", "64",
                   "--max-length", "64", "--quiet"]
            mb, seconds = peak_rss_mb(cmd, env)
            results.append((n, mb, seconds))
            print(f"pool {n:>8,}: peak RSS {mb:7.0f} MB, {seconds:6.1f} s ({n / seconds:,.0f} examples/s)", flush=True)
        for (n0, m0, _), (n1, m1, _) in zip(results, results[1:]):
            print(f"peak RSS ratio {n1:,} / {n0:,} examples: {m1 / m0:.2f}x (goal <= 1.5x)")
    sel = selection_time(args.select_rows)
    print(f"selection from {sel['rows']:,} scores: density {sel['density_s']} s, density + grads at 0.05 and 0.5 + "
          f"auto ratio {sel['density_and_select_s']} s (goal < 60 s); picked {sel['picked']}, "
          f"auto {sel['auto_ratio']:.3f}")


if __name__ == "__main__":
    main()

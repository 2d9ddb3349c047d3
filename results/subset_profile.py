"""What each rule keeps from the MedMCQA grid's pool: answer length and warm-up loss of the subsets, and their
overlap with the default `grads` subset. Reads results/medmcqa-smollm2/select/scores.parquet (the grid's
scores at θ1); seed 0 for `random`. Run from the repository root:

    .venv/bin/python results/subset_profile.py
"""

from __future__ import annotations

import numpy as np

from grads.pipeline import load_scores
from grads.selection import SignalConfig, density, select

RULES = [("zsum", "grads"), ("zsum", "grads-tails"), ("zsum", "grads-low"), ("zsum", "grads-high"),
         ("zsum", "gradnorm"), ("zsum", "random"), ("zsum-length-residual", "grads")]


def main() -> None:
    scores = load_scores("results/medmcqa-smollm2/select")
    answer = scores["n_target_tokens"].to_numpy()
    loss = scores["loss"].to_numpy()
    print(f"pool: {len(scores)} examples, answer tokens mean {answer.mean():.0f} (median {np.median(answer):.0f}), "
          f"warm-up loss mean {loss.mean():.2f}")
    print("| signal | rule | ratio | n | answer tokens mean (median) | warm-up loss mean | shared with zsum grads |")
    print("|---|---|---|---|---|---|---|")
    for ratio in (0.05, 0.25, 0.5):
        picked = {}
        for signal, rule in RULES:
            cfg = SignalConfig(signal)
            frame = scores.copy()
            frame["combined"], frame["density"], _ = density(frame, cfg)
            picked[signal, rule] = idx = np.asarray(select(frame, rule, ratio, 0, cfg))
        base = set(picked["zsum", "grads"])
        for (signal, rule), idx in picked.items():
            length = f"{answer[idx].mean():.0f} ({np.median(answer[idx]):.0f})"
            print(f"| {signal} | {rule} | {ratio:g} | {len(idx)} | {length} | {loss[idx].mean():.2f} "
                  f"| {len(base & set(idx))} |")


if __name__ == "__main__":
    main()

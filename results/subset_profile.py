"""What each rule keeps from the MedMCQA grid's pool: answer length and warm-up loss of the subsets, and their
overlap with the default `grads` subset. Reads results/medmcqa-smollm2/select/scores.parquet (the grid's
scores at θ1) and, for the `θ0` rows, results/variant-no-warmup/select/scores.parquet (the same pool scored
without a warm-up); the loss column is always the warm-up loss at θ1; seed 0 for `random`. Run from the repository root:

    .venv/bin/python results/subset_profile.py
"""

from __future__ import annotations

import numpy as np

from grads.pipeline import load_scores
from grads.selection import SignalConfig, density, select

SCORES = {"θ1": "results/medmcqa-smollm2/select", "θ0": "results/variant-no-warmup/select"}
RULES = [("θ1", "zsum", "grads"), ("θ1", "zsum", "grads-tails"), ("θ1", "zsum", "grads-low"),
         ("θ1", "zsum", "grads-high"), ("θ1", "zsum", "gradnorm"), ("θ1", "zsum", "random"),
         ("θ1", "zsum-length-residual", "grads"), ("θ0", "zsum", "grads")]


def main() -> None:
    tables = {at: load_scores(folder) for at, folder in SCORES.items()}
    scores = tables["θ1"]
    assert (tables["θ0"]["id"].to_numpy() == scores["id"].to_numpy()).all(), "the two score tables' rows differ"
    answer = scores["n_target_tokens"].to_numpy()
    loss = scores["loss"].to_numpy()
    print(f"pool: {len(scores)} examples, answer tokens mean {answer.mean():.0f} (median {np.median(answer):.0f}), "
          f"warm-up loss mean {loss.mean():.2f}")
    print("| scores at | signal | rule | ratio | n | answer tokens mean (median) | warm-up loss mean "
          "| shared with zsum grads |")
    print("|---|---|---|---|---|---|---|---|")
    for ratio in (0.05, 0.25, 0.5):
        picked = {}
        for at, signal, rule in RULES:
            cfg = SignalConfig(signal)
            frame = tables[at].copy()
            frame["combined"], frame["density"], _ = density(frame, cfg)
            picked[at, signal, rule] = idx = np.asarray(select(frame, rule, ratio, 0, cfg))
        base = set(picked["θ1", "zsum", "grads"])
        for (at, signal, rule), idx in picked.items():
            length = f"{answer[idx].mean():.0f} ({np.median(answer[idx]):.0f})"
            print(f"| {at} | {signal} | {rule} | {ratio:g} | {len(idx)} | {length} | {loss[idx].mean():.2f} "
                  f"| {len(base & set(idx))} |")


if __name__ == "__main__":
    main()

"""What each rule keeps from the MedMCQA grid's pool: answer length and warm-up loss of the subsets, and their
overlap with the default `grads` subset. Reads THETA1/scores.parquet (default results/medmcqa-smollm2/select:
the grid's scores at θ1) and, for the `θ0` rows, THETA0/scores.parquet (default results/variant-no-warmup/select:
the same pool scored without a warm-up); the loss column is always the warm-up loss at θ1; seed 0 for `random`.
Prints a markdown table (quoted in docs/results.md, "What each rule keeps"). Run from anywhere:

    .venv/bin/python scripts/subset_profile.py
    .venv/bin/python scripts/subset_profile.py --theta1 OTHER/select --theta0 OTHER-θ0/select
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from grads.core.rules import select
from grads.core.signals import DensitySpec, density
from grads.stages.select import load_scores

ROOT = Path(__file__).resolve().parent.parent
SCORES = {"θ1": ROOT / "results/medmcqa-smollm2/select", "θ0": ROOT / "results/variant-no-warmup/select"}
RULES = [("θ1", "zsum", "grads"), ("θ1", "zsum", "grads-tails"), ("θ1", "zsum", "grads-low"),
         ("θ1", "zsum", "grads-high"), ("θ1", "zsum", "gradnorm"), ("θ1", "zsum", "random"),
         ("θ1", "zsum-length-residual", "grads"), ("θ0", "zsum", "grads")]


def main(folders: dict[str, Path]) -> None:
    tables = {at: load_scores(folder) for at, folder in folders.items()}
    scores = tables["θ1"]
    ids, ids_0 = scores["id"].to_numpy(), tables["θ0"]["id"].to_numpy()
    if len(ids) != len(ids_0) or not (ids == ids_0).all():
        sys.exit(f"error: the two score tables' rows differ ({folders['θ1']}, {folders['θ0']}): score the same pool")
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
            cfg = DensitySpec(signal=signal)
            frame = tables[at].copy()
            frame["combined"], frame["density"], _ = density(frame, cfg)
            picked[at, signal, rule] = idx = np.asarray(select(frame, rule, ratio, 0, cfg))
        base = set(picked["θ1", "zsum", "grads"])
        for (at, signal, rule), idx in picked.items():
            length = f"{answer[idx].mean():.0f} ({np.median(answer[idx]):.0f})"
            print(f"| {at} | {signal} | {rule} | {ratio:g} | {len(idx)} | {length} | {loss[idx].mean():.2f} "
                  f"| {len(base & set(idx))} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--theta1", type=Path, default=SCORES["θ1"], metavar="DIR",
                        help="folder of the scores at θ1 (after the warm-up) (default: %(default)s)")
    parser.add_argument("--theta0", type=Path, default=SCORES["θ0"], metavar="DIR",
                        help="folder of the same pool's scores at θ0 (no warm-up) (default: %(default)s)")
    args = parser.parse_args()
    main({"θ1": args.theta1, "θ0": args.theta0})

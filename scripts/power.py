"""How many seeds a grid needs, from a pilot: the seed SD of each figure of the `full` runs, the SD of a paired
difference between two arms (√2 · SD, two independent runs per seed), and the smallest paired difference a grid
of n seeds detects (α = 0.05 two-sided, power 0.8; grads.experiment.stats.detectable_difference), against a target of
`--share` (default 20%) of the full pool's mean G_bpb. Run from the repository root:

    .venv/bin/python scripts/power.py results/claim-medmcqa-pilot
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from grads.experiment.config import load_config
from grads.experiment.stats import detectable_difference, load_runs, mean_std, run_figures


def main(pilot: Path, share: float, seeds: range) -> None:
    cfg = load_config(pilot / "config.yaml")
    base = json.loads((pilot / "runs" / "base" / "results.json").read_text())
    full = [run_figures(r, base, cfg.eval) for r in load_runs(pilot) if r["method"] == "full"]
    print(f"pilot: {len(full)} full-pool runs")
    g_bpb = mean_std([f["G_bpb"] for f in full])[0]
    target = share * g_bpb
    print(f"full pool: G_bpb {g_bpb:+.4f}; target resolution {share:.0%} of it = {target:.4f}")
    print("| figure | mean | seed SD | paired SD (√2·SD) | " + " | ".join(f"detectable, {n} seeds" for n in seeds)
          + " |")
    print("|---|---|---|---|" + "---|" * len(seeds))
    for name in ("G_bpb", "F_bpb", "G", "F", "Q_bpb"):
        mean, sd = mean_std([f[name] for f in full])
        if math.isnan(mean):
            continue
        paired = math.sqrt(2) * sd
        cells = [f"{detectable_difference(paired, n):.4f}" for n in seeds]
        print(f"| {name} | {mean:+.4f} | {sd:.4f} | {paired:.4f} | " + " | ".join(cells) + " |")
    sd = mean_std([f["G_bpb"] for f in full])[1]
    enough = [n for n in seeds if detectable_difference(math.sqrt(2) * sd, n) <= target]
    needed = str(enough[0]) if enough else f"more than {seeds[-1]}"
    print(f"seeds needed for G_bpb at {share:.0%} of the full pool's gain: {needed}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pilot", type=Path)
    parser.add_argument("--share", type=float, default=0.2)
    args = parser.parse_args()
    main(args.pilot, args.share, range(3, 11))

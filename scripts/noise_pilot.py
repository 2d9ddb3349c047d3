"""Does planted noise cost the fine-tune anything a figure resolves? For a noisy pilot (an experiment with `plant`,
arms `full`, the noisy pool, and `clean`, its clean records), print clean − full on every figure of
grads.experiment.stats at each seed both have, beside the rule's threshold: 2·√2 times the whole pool's seed sd of
that figure in a reference grid's summary.csv (one seed per arm: the difference of two runs); and, for the held-out
figures (G_bpb, Q_bpb), a 95% paired bootstrap interval over the held-out answers (evaluation sampling only, not
seeds). Run from the repository:

    .venv/bin/python scripts/noise_pilot.py results/noisy-pilot-medmcqa-25 --reference results/claim-medmcqa

G_bpb and Q_bpb: clean − full of (base − run) bpb and of (run − base) question use, so > 0 says the clean part
learned more, or uses the question more, than the noisy pool.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from grads.experiment.config import load_config
from grads.experiment.stats import FIGURES, LABELS, run_figures

BOOTSTRAP = 2000


def heldout_totals(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per held-out example of the domain file: nll, nll under another question, bytes (file order by row)."""
    frame = frame.sort_values(["file", "row"])
    return frame["nll"].to_numpy(), frame["nll_mismatched"].to_numpy(), frame["n_bytes"].to_numpy()


def heldout_differences(folder: Path, seed: int, rng: np.random.Generator) -> dict[str, tuple[float, float]]:
    """Bootstrap 95% intervals of clean − full G_bpb and Q_bpb over the held-out examples (one resample for both
    runs; the base model's figures cancel in the difference)."""
    (nll_c, mis_c, n_bytes), (nll_f, mis_f, _) = (
        heldout_totals(pd.read_parquet(folder / "runs" / f"{arm}-s{seed}" / "eval.heldout.parquet"))
        for arm in ("clean", "full"))
    index = rng.integers(0, len(n_bytes), size=(BOOTSTRAP, len(n_bytes)))
    per_byte = math.log(2) * n_bytes[index].sum(1)
    g = (nll_f - nll_c)[index].sum(1) / per_byte  # (base − clean bpb) − (base − full bpb)
    q = ((mis_c - nll_c) - (mis_f - nll_f))[index].sum(1) / per_byte
    return {name: (float(np.quantile(v, 0.025)), float(np.quantile(v, 0.975))) for name, v in
            (("G_bpb", g), ("Q_bpb", q))}


def seed_sd(reference: Path) -> dict[str, float]:
    """The whole pool's seed sd of each figure in the reference grid's summary.csv (NaN where it has none)."""
    rows = list(csv.DictReader((reference / "summary.csv").open()))
    full = next((r for r in rows if r["method"] == "full"), None)
    if full is None:
        sys.exit(f"error: {reference / 'summary.csv'} has no full row")
    return {f: float(full.get(f"{LABELS[f]}_std", "nan") or "nan") for f in FIGURES}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pilot", type=Path, help="a noisy pilot's folder (runs/base, runs/full-sN, runs/clean-sN)")
    parser.add_argument("--reference", type=Path, required=True, help="a grid whose summary.csv has full's seed sd")
    args = parser.parse_args(argv)
    cfg = load_config(args.pilot / "config.yaml")
    base = json.loads((args.pilot / "runs" / "base" / "results.json").read_text())
    sd = seed_sd(args.reference)
    seeds = sorted(int(p.parent.name.rsplit("-s", 1)[1]) for p in (args.pilot / "runs").glob("clean-s*/results.json")
                   if (args.pilot / "runs" / f"full-s{p.parent.name.rsplit('-s', 1)[1]}" / "results.json").exists())
    if not seeds:
        sys.exit(f"error: no seed of {args.pilot} has both a clean and a full run")
    rng = np.random.default_rng(0)
    print("| seed | figure | clean | full (noisy) | clean − full | threshold 2·√2·sd | separates | "
          "bootstrap 95% (held-out answers) |")
    print("|---|---|---|---|---|---|---|---|")
    for seed in seeds:
        figures = {arm: run_figures(json.loads((args.pilot / "runs" / f"{arm}-s{seed}" / "results.json").read_text()),
                                    base, cfg.eval) for arm in ("clean", "full")}
        boot = heldout_differences(args.pilot, seed, rng)
        for f in FIGURES:
            clean, full = figures["clean"][f], figures["full"][f]
            if math.isnan(clean) or math.isnan(full):
                continue
            threshold = 2 * math.sqrt(2) * sd[f]
            # F is forgetting: the clean part "does better" when it forgets less, so separation is by size either way
            separates = "n/a (no seed sd)" if math.isnan(threshold) else ("yes" if abs(clean - full) > threshold
                                                                          else "no")
            interval = f"[{boot[f][0]:+.4f}, {boot[f][1]:+.4f}]" if f in boot else ""
            print(f"| {seed} | {LABELS[f]} | {clean:+.4f} | {full:+.4f} | {clean - full:+.4f} | "
                  f"{threshold:.4f} | {separates} | {interval} |")


if __name__ == "__main__":
    main()

"""The paper's three claims read from an experiment folder: for each, the seed-paired differences that test it with
their 95% intervals (grads.experiment.stats.paired) and a verdict per figure: "supports" when the interval lies on the
claim's side of 0, "contradicts" when it lies on the other side, "cannot tell" when it holds 0; and the
resolution of each comparison: the smallest true difference its pairs would detect with power 0.8 (α = 0.05,
from the observed spread of the paired differences); beside the raw verdict, the paired t test's p-value and the
verdict after Holm's correction over every claim and selection row of the table. Run from the repository root:

    .venv/bin/python scripts/claims.py results/claim-medmcqa

Claims (Liu et al., 2025): (1) 5% of GrADS data beats the whole pool; (2) 50% does better still; (3) GrADS
forgets less (than the whole pool and than random data). Also: does a GrADS subset beat random examples, and
random examples carrying the same answer tokens (`random-tokens`)? Learning figures (G_bpb, G_acc) should be > 0
for a claim to hold; forgetting figures (F_bpb, F_acc) < 0. And controls: a random subset of the same size
against the whole pool, read with the same signs, so that a claim's verdict can be told apart from what any
subset that size does (a claim GrADS "supports" only as much as random data does is not evidence for selection).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from grads.experiment.config import load_config
from grads.experiment.stats import detectable_difference, figures_by_run, holm, load_runs, paired, paired_p_value
from grads.experiment.tables import with_interval

LEARNING, FORGETTING = ("G_bpb", "G"), ("F_bpb", "F_bpb_bytes", "F")
LABELS = {"G_bpb": "G_bpb", "G": "G_acc", "F_bpb": "F_bpb", "F_bpb_bytes": "F_bpb_bytes", "F": "F_acc"}
# (claim, arm, reference, figures whose sign the claim predicts); an arm is (method, ratio)
COMPARISONS = [
    ("1. 5% beats the whole pool", ("grads", 0.05), ("full", None), LEARNING),
    ("1. 5% beats the whole pool (equal compute)", ("grads@full-steps", 0.05), ("full", None), LEARNING),
    ("2. 50% better still", ("grads", 0.5), ("full", None), LEARNING),
    ("2. 50% better still", ("grads", 0.5), ("grads", 0.05), LEARNING),
    ("3. less forgetting than the whole pool", ("grads", 0.05), ("full", None), FORGETTING),
    ("3. less forgetting than the whole pool", ("grads", 0.5), ("full", None), FORGETTING),
    ("3. less forgetting than random", ("grads", 0.05), ("random", 0.05), FORGETTING),
    ("3. less forgetting than random", ("grads", 0.5), ("random", 0.5), FORGETTING),
    ("control: any 5% against the whole pool", ("random", 0.05), ("full", None), LEARNING + FORGETTING),
    ("control: any 50% against the whole pool", ("random", 0.5), ("full", None), LEARNING + FORGETTING),
    ("selection beats random", ("grads", 0.05), ("random", 0.05), LEARNING),
    ("selection beats random", ("grads", 0.5), ("random", 0.5), LEARNING),
    ("selection beats random (equal compute)", ("grads@full-steps", 0.05), ("random@full-steps", 0.05), LEARNING),
    ("the examples, not their length", ("grads", 0.05), ("random-tokens", 0.05), LEARNING),
    ("the examples, not their length", ("grads", 0.5), ("random-tokens", 0.5), LEARNING),
    ("the warm-up helps", ("grads", 0.05), ("grads@theta0", 0.05), LEARNING),
    ("the warm-up helps", ("grads", 0.5), ("grads@theta0", 0.5), LEARNING),
    ("the examples, at equal count, length and steps", ("grads", 0.05), ("random-matched", 0.05), LEARNING),
    ("the examples, at equal count, length and steps", ("grads", 0.5), ("random-matched", 0.5), LEARNING),
    ("3. less forgetting than matched random", ("grads", 0.05), ("random-matched", 0.05), FORGETTING),
    ("3. less forgetting than matched random", ("grads", 0.5), ("random-matched", 0.5), FORGETTING),
    ("own warm-up per seed: the examples", ("grads@own-warmup", 0.05), ("random-matched@own-warmup", 0.05),
     LEARNING),
    ("own warm-up per seed: the examples", ("grads@own-warmup", 0.5), ("random-matched@own-warmup", 0.5), LEARNING),
    ("own warm-up per seed: 1. 5% beats the whole pool", ("grads@own-warmup", 0.05), ("full", None), LEARNING),
    ("the examples at equal compute", ("grads@full-steps", 0.05), ("random-matched@full-steps", 0.05), LEARNING),
    ("length", ("length", 0.5), ("random-matched:length", 0.5), LEARNING),
    ("ifd", ("ifd", 0.5), ("random-matched:ifd", 0.5), LEARNING),
]
ALPHA = 0.05


def verdict(interval: tuple[float, float], sign: int) -> str:
    """'supports' when the interval lies on the claim's side of 0 (sign +1: above, −1: below), 'contradicts' when
    on the other side, 'cannot tell' when it holds 0 (or is undefined: fewer than two pairs)."""
    low, high = interval
    if not low <= high:  # NaN
        return "cannot tell"
    if sign * low > 0 and sign * high > 0:
        return "supports"
    if sign * low < 0 and sign * high < 0:
        return "contradicts"
    return "cannot tell"


def resolution(row: dict, figure: str, digits: int) -> str:
    """The smallest true difference these pairs would find with power 0.8 (α = 0.05 two-sided), from the spread
    of the observed paired differences: what a 'cannot tell' rules out. '—' with fewer than two pairs."""
    if row["n_pairs"] < 2:
        return "—"
    return f"{detectable_difference(row[f'd{figure}_std'], row['n_pairs']):.{digits}f}"


def name(arm: tuple[str, float | None]) -> str:
    return arm[0] if arm[1] is None else f"{arm[0]}-{arm[1]:g}"


def holm_verdict(rejected: bool, mean: float, sign: int) -> str:
    """The verdict after Holm's correction: the raw direction where the family-wise test rejects 0."""
    if not rejected:
        return "cannot tell"
    return "supports" if sign * mean > 0 else "contradicts"


def rows(out: Path) -> list[str]:
    """The claims table. Holm's correction (α = 0.05, family-wise) runs over every row that tests a claim or the
    selection (the `control:` rows describe random data and are left out of the family)."""
    cfg = load_config(out / "config.yaml")
    base = json.loads((out / "runs" / "base" / "results.json").read_text())
    by_run = figures_by_run(load_runs(out), base, cfg.eval)
    entries = []
    for claim, arm, reference, figures in COMPARISONS:
        row = paired(by_run, arm, reference)
        for figure in figures if row["n_pairs"] else ():
            p = paired_p_value(row[f"d{figure}_mean"], row[f"d{figure}_std"], row["n_pairs"])
            entries.append((claim, arm, reference, figure, row, math.nan if claim.startswith("control") else p))
    rejected = holm([e[5] for e in entries], ALPHA)
    lines = ["| claim | arm − reference | pairs | figure | mean difference [95% interval] | p | verdict | "
             "verdict (Holm) | resolution |", "|---|---|---|---|---|---|---|---|---|"]
    for (claim, arm, reference, figure, row, p), holm_rejects in zip(entries, rejected):
        digits = 4 if "bpb" in figure else 3
        sign = +1 if figure in LEARNING else -1
        holm_cell = "—" if math.isnan(p) else holm_verdict(holm_rejects, row[f"d{figure}_mean"], sign)
        lines.append(f"| {claim} | {name(arm)} − {name(reference)} | {row['n_pairs']} | {LABELS[figure]} | "
                     f"{with_interval(row, figure, digits)} | {'—' if math.isnan(p) else f'{p:.3g}'} | "
                     f"{verdict(row[f'd{figure}_ci95'], sign)} | {holm_cell} | {resolution(row, figure, digits)} |")
    return lines


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="an experiment folder (its config.yaml and runs/)")
    print("\n".join(rows(parser.parse_args().out)))

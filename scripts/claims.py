"""The paper's three claims read from an experiment folder: for each, the seed-paired differences that test it with
their 95% intervals (grads.experiment.stats.paired) and a verdict per figure: "supports" when the interval lies on the
claim's side of 0, "contradicts" when it lies on the other side, "cannot tell" when it holds 0; and the
resolution of each comparison: the smallest true difference its pairs would detect with power 0.8 (α = 0.05,
from the observed spread of the paired differences); beside the raw verdict, the paired t test's p-value and the
verdict after Holm's correction over every claim and selection row of the table. Run from the repository root:

    .venv/bin/python scripts/claims.py results/claim-medmcqa

Claims (Liu et al., 2025): (1) 5% of GrADS data beats the whole pool; (2) 50% does better still; (3) GrADS
forgets less (than the whole pool and than random data). Also: does a GrADS subset beat random examples, and
random examples carrying the same answer tokens (`random-tokens`)? Learning figures (G_bpb, G_acc, and Q_bpb,
question use gained, where the runs measure it) should be > 0 for a claim to hold; forgetting figures (F_bpb,
F_acc) < 0. And controls: a random subset of the same size
against the whole pool, read with the same signs, so that a claim's verdict can be told apart from what any
subset that size does (a claim GrADS "supports" only as much as random data does is not evidence for selection).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from grads.experiment.config import load_config
from grads.experiment.stats import (
    ADDED_FIGURES,
    LABELS,
    detectable_difference,
    figures_by_run,
    has_spread,
    holm,
    load_runs,
    paired,
    paired_p_value,
)
from grads.experiment.tables import with_interval

# Q_bpb (question use gained) is read like learning: a subset that keeps the model using the question is better
LEARNING, FORGETTING = ("G_bpb", "G", "Q_bpb"), ("F_bpb", "F_bpb_bytes", "F")
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
    ("own warm-up per seed: 2. 50% better still", ("grads@own-warmup", 0.5), ("full", None), LEARNING),
    ("own warm-up per seed: 3. less forgetting than the whole pool", ("grads@own-warmup", 0.05), ("full", None),
     FORGETTING),
    ("own warm-up per seed: 3. less forgetting than the whole pool", ("grads@own-warmup", 0.5), ("full", None),
     FORGETTING),
    ("own warm-up per seed: 3. less forgetting than matched random", ("grads@own-warmup", 0.05),
     ("random-matched@own-warmup", 0.05), FORGETTING),
    ("own warm-up per seed: 3. less forgetting than matched random", ("grads@own-warmup", 0.5),
     ("random-matched@own-warmup", 0.5), FORGETTING),
    ("the examples at equal compute", ("grads@full-steps", 0.05), ("random-matched@full-steps", 0.05), LEARNING),
    ("3. less forgetting at equal compute", ("grads@full-steps", 0.05), ("random-matched@full-steps", 0.05),
     FORGETTING),
    # the rules people try instead (issue 26, item 7). `length` has no length-matched control: the longest half
    # is its own length stratum, so random-matched:length draws the same examples (Jaccard 0.997 at 50% on the
    # MedMCQA pool); it is read against random data of its count, and GrADS against it.
    ("length against random data of its count", ("length", 0.5), ("random", 0.5), LEARNING + FORGETTING),
    ("length against the whole pool", ("length", 0.5), ("full", None), LEARNING + FORGETTING),
    ("grads against length", ("grads", 0.5), ("length", 0.5), LEARNING + FORGETTING),
    ("ifd", ("ifd", 0.5), ("random-matched:ifd", 0.5), LEARNING + FORGETTING),
    ("ifd against the whole pool", ("ifd", 0.5), ("full", None), LEARNING + FORGETTING),
    ("grads against ifd", ("grads", 0.5), ("ifd", 0.5), LEARNING + FORGETTING),
]
# The verdict table (--verdict): each rule against its matched random data and against the whole pool, on the
# primary figures (held-out likelihood gained, general likelihood lost, and question use gained where the runs
# measure it); its Holm verdicts are the full table's.
# A rule without a matched control (UNMATCHED) is read against plain random data of its count instead.
PRIMARY = ("G_bpb", "F_bpb", "Q_bpb")
UNMATCHED = {"length": "random"}
ALPHA = 0.05


def verdict(interval: tuple[float, float], sign: int) -> str:
    """'supports' when the interval lies on the claim's side of 0 (sign +1: above, −1: below), 'contradicts' when
    on the other side, 'cannot tell' when it holds 0 (or is undefined: fewer than two pairs, or no spread)."""
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
    of the observed paired differences: what a 'cannot tell' rules out. '—' with fewer than two pairs or no spread
    (every pair the same: nothing to size the noise by)."""
    n = row[f"d{figure}_n"]
    if n < 2 or not has_spread(row[f"d{figure}_std"]):
        return "—"
    return f"{detectable_difference(row[f'd{figure}_std'], n):.{digits}f}"


def name(arm: tuple[str, float | None]) -> str:
    return arm[0] if arm[1] is None else f"{arm[0]}-{arm[1]:g}"


def holm_verdict(rejected: bool, mean: float, sign: int) -> str:
    """The verdict after Holm's correction: the raw direction where the family-wise test rejects 0."""
    if not rejected:
        return "cannot tell"
    return "supports" if sign * mean > 0 else "contradicts"


def entries(out: Path) -> list[dict]:
    """Every comparison the folder's runs allow, each figure with its paired row, p-value and Holm verdict. Holm's
    correction (α = 0.05, family-wise) runs over every row that tests a claim or the selection (the `control:`
    rows describe random data and are left out of the family). A figure added after the runs were evaluated
    (stats.ADDED_FIGURES) is left out where no pair measures it, so earlier experiments read as they did."""
    cfg = load_config(out / "config.yaml")
    base = json.loads((out / "runs" / "base" / "results.json").read_text())
    by_run = figures_by_run(load_runs(out), base, cfg.eval)
    found = []
    for claim, arm, reference, figures in COMPARISONS:
        row = paired(by_run, arm, reference)
        for figure in figures if row["n_pairs"] else ():
            if figure in ADDED_FIGURES and not row[f"d{figure}_n"]:
                continue
            p = paired_p_value(row[f"d{figure}_mean"], row[f"d{figure}_std"], row[f"d{figure}_n"])
            found.append({"claim": claim, "arm": arm, "reference": reference, "figure": figure, "row": row,
                          "p": math.nan if claim.startswith("control") else p})
    for entry, rejects in zip(found, holm([e["p"] for e in found], ALPHA)):
        sign = +1 if entry["figure"] in LEARNING else -1
        entry["verdict"] = verdict(entry["row"][f"d{entry['figure']}_ci95"], sign)
        mean = entry["row"][f"d{entry['figure']}_mean"]
        entry["holm"] = "—" if math.isnan(entry["p"]) else holm_verdict(rejects, mean, sign)
    return found


def _digits(figure: str) -> int:
    return 4 if "bpb" in figure else 3


def rows(out: Path) -> list[str]:
    """The claims table: every comparison, every figure."""
    lines = ["| claim | arm − reference | pairs | figure | mean difference [95% interval] | p | verdict | "
             "verdict (Holm) | resolution |", "|---|---|---|---|---|---|---|---|---|"]
    for e in entries(out):
        row, figure, p = e["row"], e["figure"], e["p"]
        lines.append(f"| {e['claim']} | {name(e['arm'])} − {name(e['reference'])} | {row['n_pairs']} | "
                     f"{LABELS[figure]} | {with_interval(row, figure, _digits(figure))} | "
                     f"{'—' if math.isnan(p) else f'{p:.3g}'} | {e['verdict']} | {e['holm']} | "
                     f"{resolution(row, figure, _digits(figure))} |")
    return lines


def verdict_rows(out: Path) -> list[str]:
    """The verdict table: each rule (and arm of it) against its matched random data and against the whole pool,
    on the primary figures, with the claim each row tests and the Holm verdicts of the whole family."""
    lines = ["| claim | rule | ratio | against | pairs | figure | difference [95% interval] | verdict (Holm) | "
             "resolution |", "|---|---|---|---|---|---|---|---|---|"]
    for e in entries(out):
        reference = e["reference"][0].split("@")[0].split(":")[0]
        matched = UNMATCHED.get(e["arm"][0].split("@")[0], "random-matched")
        if e["figure"] not in PRIMARY or reference not in (matched, "full") or e["claim"].startswith("control"):
            continue
        row, figure = e["row"], e["figure"]
        lines.append(f"| {e['claim']} | {e['arm'][0]} | {e['arm'][1]:g} | {name(e['reference'])} | {row['n_pairs']} | "
                     f"{LABELS[figure]} | {with_interval(row, figure, _digits(figure))} | {e['holm']} | "
                     f"{resolution(row, figure, _digits(figure))} |")
    return lines


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="an experiment folder (its config.yaml and runs/)")
    parser.add_argument("--verdict", action="store_true",
                        help="only the verdict table: each rule against matched random data and the whole pool")
    args = parser.parse_args()
    print("\n".join(verdict_rows(args.out) if args.verdict else rows(args.out)))

"""How many of its own target's examples each `random-matched` run of a grid trained on: for every run
RESULTS_DIR/runs/random-matched[:RULE][@MODS]-RATIO-sSEED, the examples it shares with the subset of the rule it
controls (`grads`, or RULE) at the same ratio and score source, beside the overlap two random subsets of that size
would have (k²/N, N the eligible examples). Prints a markdown table, one row per seed and ratio, then the range
per arm and ratio (quoted in docs/results.md beside each matched verdict row). Run from the repository:

    .venv/bin/python scripts/matched_overlap.py results/claim-medmcqa

Where the ids come from: a selection folder (OUT/select, OUT/select-seed-N, OUT/select-theta0; the same mapping as
grads.experiment.arms) stores in selection.json the ids of each rule's subset drawn with that selection's seed.
A run of another seed on the same scores (e.g. `random-matched-0.05-s3` on the shared warm-up's scores) drew its
subset at run time and left no ids; the script re-draws it from OUT/scores.parquet with the draw that made the
committed rows (exact-answer-length strata, below) and says so in the `ids` column. Every draw that a selection.json
does store is re-drawn too, and the script stops if the two differ, or if a draw's count or answer tokens differ
from what its run's results.json says it trained on: the re-draw is checked on the files.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from grads.core.rules import length_matched

MATCHED = "random-matched"


def strata_draw(lengths: np.ndarray, candidates: np.ndarray, targets: np.ndarray, seed: int) -> np.ndarray:
    """The `random-matched` draw of the committed grids (grads.core.rules.length_matched as of commit 91d3e3a):
    one candidate per target, drawn at random among the candidates of the target's exact answer length, the
    shortfalls from the nearest lengths that still have candidates (longer targets first, the shorter length on a
    tie). Kept here so the overlaps of those rows can be read whatever the package's draw becomes."""
    rng = np.random.default_rng(seed)
    shuffled = candidates[rng.permutation(len(candidates))]
    strata: dict[int, list[int]] = {}
    for row in shuffled.tolist():
        strata.setdefault(int(lengths[row]), []).append(row)
    needed = Counter(int(n) for n in lengths[targets])
    picked: list[int] = []
    for n, count in sorted(needed.items()):
        take = strata.get(n, [])[:count]
        picked += take
        strata[n] = strata.get(n, [])[len(take):]
        needed[n] -= len(take)
    for n in sorted(needed, reverse=True):
        for _ in range(needed[n]):
            nearest = min((m for m, rows in strata.items() if rows), key=lambda m: (abs(m - n), m), default=None)
            if nearest is None:
                sys.exit("error: fewer candidates than targets")
            picked.append(strata[nearest].pop(0))
    return np.sort(np.array(picked, dtype=np.int64))


def selection_folder(out: Path, modifiers: list[str], seed: int) -> Path:
    """grads.experiment.arms.scores_source + selection_folder: theta0, the seed's own warm-up, or the shared one."""
    if "theta0" in modifiers:
        return out / "select-theta0"
    return out / (f"select-seed-{seed}" if "own-warmup" in modifiers and seed != 0 else "select")


def overlaps(out: Path, this_release: bool = False) -> list[dict]:
    rows = []
    cache: dict[Path, tuple[dict, pd.DataFrame]] = {}
    for path in sorted((out / "runs").glob("*/results.json")):
        run = json.loads(path.read_text())
        method, *modifiers = str(run.get("method", "")).split("@")
        name, _, target = method.partition(":")
        if name != MATCHED or run.get("ratio") is None:
            continue
        target = target or "grads"
        ratio, seed = run["ratio"], int(run["seed"])
        folder = selection_folder(out, modifiers, seed)
        if folder not in cache:
            cache[folder] = (json.loads((folder / "selection.json").read_text()),
                             pd.read_parquet(folder / "scores.parquet", columns=["id", "n_target_tokens", "status"]))
        selection, scores = cache[folder]
        outputs = selection["outputs"]
        index = {i: n for n, i in enumerate(scores["id"])}
        chosen = np.array(sorted(index[i] for i in outputs[f"{target}-{ratio:g}.jsonl"]["ids"]))
        if target != "grads" and selection["settings"]["select"]["seed"] != seed:
            sys.exit(f"error: {path.parent.name}: the {target} subset of seed {seed} is not stored in {folder}")
        candidates = np.flatnonzero((scores["status"] == "ok").to_numpy())
        draw = length_matched if this_release else strata_draw
        drawn = draw(scores["n_target_tokens"].to_numpy(), candidates, chosen, seed)
        stored = outputs.get(f"{method}-{ratio:g}.jsonl")
        if this_release:
            ids, source = drawn, "this release"
        elif stored is not None and selection["settings"]["select"]["seed"] == seed:
            ids = np.array(sorted(index[i] for i in stored["ids"]))
            if not np.array_equal(ids, drawn):
                sys.exit(f"error: {path.parent.name}: the stored draw in {folder} is not the strata draw")
            source = "stored"
        else:
            ids, source = drawn, "re-drawn"
        if len(ids) != run.get("n_train", len(ids)):
            sys.exit(f"error: {path.parent.name} trained on {run['n_train']} examples, the draw has {len(ids)}")
        tokens = int(scores["n_target_tokens"].to_numpy()[ids].sum())
        if tokens != run.get("train_answer_tokens", tokens) and not this_release:
            sys.exit(f"error: {path.parent.name} trained on {run['train_answer_tokens']} answer tokens, "
                     f"the draw holds {tokens}")
        k, n = len(ids), len(candidates)
        rows.append({"run": path.parent.name, "arm": run["method"], "ratio": ratio, "seed": seed,
                     "selection": folder.name, "ids": source, "shared": len(set(ids) & set(chosen)),
                     "k": k, "target": target, "chance": k * k / n, "eligible": n})
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path, help="an experiment's folder (runs/, select*/)")
    parser.add_argument("--this-release", action="store_true", help="draw with this release's random-matched")
    args = parser.parse_args(argv)
    out = args.results
    rows = overlaps(out, args.this_release)
    if not rows:
        sys.exit(f"error: no {MATCHED} run under {out / 'runs'}")
    print("| run | selection | ids | shared with its target | subset size k | chance k²/N | eligible N |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['run']} | {r['selection']} | {r['ids']} | {r['shared']} ({r['target']}) | {r['k']} "
              f"| {r['chance']:.1f} | {r['eligible']} |")
    print()
    print("| arm | ratio | seeds | shared (min–max) | of k | share of k | chance k²/N |")
    print("|---|---|---|---|---|---|---|")
    for (arm, ratio) in dict.fromkeys((r["arm"], r["ratio"]) for r in rows):
        group = [r for r in rows if (r["arm"], r["ratio"]) == (arm, ratio)]
        shared = [r["shared"] for r in group]
        k = group[0]["k"]
        print(f"| {arm} | {ratio:g} | {len(group)} | {min(shared)}–{max(shared)} | {k} "
              f"| {min(shared) / k:.0%}–{max(shared) / k:.0%} | {group[0]['chance']:.1f} |")


if __name__ == "__main__":
    main()

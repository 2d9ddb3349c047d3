"""The variants against the grid on G_val (the validation split; the test tasks play no part in choosing).

Reads the grid (results/medmcqa-smollm2) and every results/variant-*/ folder, and prints, per variant method and
ratio: G_val mean ± std over seeds, and ΔG_val against the `random` run of the same seed and ratio. For
variant-steps38 the reference is its own `random` (the same 38-step recipe); for the others, the grid's (the
same one-epoch recipe). Run from the repository root:

    .venv/bin/python results/compare_variants.py
"""

from __future__ import annotations

import json
from pathlib import Path

from grads.experiment import aggregate, format_ratio, load_runs, paired_differences, pm

VALIDATION = ("medmcqa_val",)


def main() -> None:
    grid = Path("results/medmcqa-smollm2")
    base = json.loads((grid / "runs" / "base" / "results.json").read_text())["tasks"]
    grid_runs = load_runs(grid)
    print("| source | method | ratio | seeds | G_val (mean ± std) | ΔG_val vs random, same seed (mean ± std) |")
    print("|---|---|---|---|---|---|")
    sources = [("grid", grid_runs)] + [(f.name, load_runs(f)) for f in sorted(Path("results").glob("variant-*"))]
    for name, own in sources:
        pool = own if any(r["method"] == "random" for r in own) else own + [
            r for r in grid_runs if r["method"] == "random"]
        summary = {(r["method"], r["ratio"]): r for r in aggregate(pool, base, (), (), VALIDATION)}
        deltas = {(r["method"], r["ratio"]): r for r in paired_differences(pool, base, (), (), VALIDATION)}
        shown = {(r["method"], r["ratio"]) for r in own}
        for key in sorted(shown, key=lambda k: (k[1] or 1.0, k[0])):
            row, delta = summary[key], deltas.get(key)
            vs = f"{pm(delta['dG_val_mean'], delta['dG_val_std'])} ({delta['n_pairs']})" if delta else "–"
            print(f"| {name} | {key[0]} | {format_ratio(key[1])} | {len(row['seeds'])} | "
                  f"{pm(row['G_val_mean'], row['G_val_std'])} | {vs} |")


if __name__ == "__main__":
    main()

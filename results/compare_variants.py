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

from grads.experiment import aggregate, paired_differences

VALIDATION = ("medmcqa_val",)


def runs(folder: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(folder.glob("runs/*/results.json")) if p.parent.name != "base"]


def main() -> None:
    grid = Path("results/medmcqa-smollm2")
    base = json.loads((grid / "runs" / "base" / "results.json").read_text())["tasks"]
    grid_runs = runs(grid)
    print("| source | method | ratio | seeds | G_val (mean ± std) | ΔG_val vs random, same seed (mean ± std) |")
    print("|---|---|---|---|---|---|")
    sources = [("grid", grid_runs)] + [(f.name, runs(f)) for f in sorted(Path("results").glob("variant-*"))]
    for name, own in sources:
        pool = own if any(r["method"] == "random" for r in own) else own + [
            r for r in grid_runs if r["method"] == "random"]
        summary = {(r["method"], r["ratio"]): r for r in aggregate(pool, base, (), (), VALIDATION)}
        deltas = {(r["method"], r["ratio"]): r for r in paired_differences(pool, base, (), (), VALIDATION)}
        shown = {(r["method"], r["ratio"]) for r in own}
        for key in sorted(shown, key=lambda k: (k[1] or 1.0, k[0])):
            row, delta = summary[key], deltas.get(key)
            ratio = "1 (full)" if key[1] is None else f"{key[1]:g}"
            vs = f"{delta['dG_val_mean']:+.3f} ± {delta['dG_val_std']:.3f} ({delta['n_pairs']})" if delta else "–"
            print(f"| {name} | {key[0]} | {ratio} | {len(row['seeds'])} | "
                  f"{row['G_val_mean']:+.3f} ± {row['G_val_std']:.3f} | {vs} |")


if __name__ == "__main__":
    main()

"""The variants against the grid on G_val (the validation split; the test tasks play no part in choosing).

Reads the grid (results/medmcqa-smollm2) and every results/variant-*/ folder, and prints, per method and ratio:
G_val mean ± std over seeds, and ΔG_val against the `random` and the default `grads` run of the same seed and
ratio (mean ± std over seeds, then each seed's difference). A variant without its own `random` / `grads` runs
(the 25% variants) is compared with the grid's (the same one-epoch recipe); its methods are labelled with the
folder, since `variant-length-residual` runs a rule also called `grads`. variant-steps38 has its own `random`
and `grads` (the same 38-step recipe). Run from the repository root:

    .venv/bin/python results/compare_variants.py
"""

from __future__ import annotations

import json
from pathlib import Path

from grads.experiment import aggregate, format_ratio, load_runs, paired_differences, pm

VALIDATION = ("medmcqa_val",)
REFERENCES = ("random", "grads")


def main() -> None:
    grid = Path("results/medmcqa-smollm2")
    base = json.loads((grid / "runs" / "base" / "results.json").read_text())["tasks"]
    grid_runs = load_runs(grid)
    print(
        "| source | method | ratio | seeds | G_val (mean ± std) | ΔG_val vs random (per seed) "
        "| ΔG_val vs grads (per seed) |"
    )
    print("|---|---|---|---|---|---|---|")
    sources = [("grid", grid_runs)] + [(f.name, load_runs(f)) for f in sorted(Path("results").glob("variant-*"))]
    for name, own in sources:
        pool = own
        if name != "grid" and not any(r["method"] == "random" for r in own):
            own = [{**r, "method": f"{r['method']} [{name.removeprefix('variant-')}]"} for r in own]
            ratios = {r["ratio"] for r in own}
            pool = own + [r for r in grid_runs if r["method"] in REFERENCES and r["ratio"] in ratios]
        own_keys = {(r["method"], r["ratio"]) for r in own}
        summary = {(r["method"], r["ratio"]): r for r in aggregate(pool, base, (), (), VALIDATION)}
        columns = [
            {(r["method"], r["ratio"]): r for r in paired_differences(pool, base, (), (), VALIDATION, reference)}
            for reference in REFERENCES
        ]
        for key in sorted(own_keys, key=lambda k: (k[1] or 1.0, k[0])):
            row = summary[key]
            cells = []
            for deltas in columns:
                delta = deltas.get(key)
                if delta is None:
                    cells.append("–")
                    continue
                per_seed = ", ".join(f"{d_g_val:+.3f}" for _, _, d_g_val in delta["per_seed"].values())
                cells.append(f"{pm(delta['dG_val_mean'], delta['dG_val_std'])} ({per_seed})")
            print(
                f"| {name} | {key[0]} | {format_ratio(key[1], key[0])} | {len(row['seeds'])} | "
                f"{pm(row['G_val_mean'], row['G_val_std'])} | {' | '.join(cells)} |"
            )


if __name__ == "__main__":
    main()

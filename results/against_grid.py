"""An experiment measured on the test tasks, against the grid, seed by seed.

Reads FOLDER (an experiment with the grid's protocol and evaluation, e.g. results/confirm-no-warmup: the
default `grads` rule at θ0, chosen on G_val beforehand; results/auto-budget: `grads-auto`) and the grid
(results/medmcqa-smollm2: `random`, `grads` after the one-epoch warm-up, and `full`), and prints per method and
ratio G, F and G_val (mean ± std over seeds) and ΔG, ΔF against each reference run of the same seed (and ratio;
`full` has none) as mean ± std, then each seed's pair. G and F exactly as in summary.md, from the grid's
base-model evaluation (FOLDER's own base evaluation must match it; checked). Run from the repository root:

    .venv/bin/python results/against_grid.py results/confirm-no-warmup "no warm-up"
    .venv/bin/python results/against_grid.py results/auto-budget "no warm-up"
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from grads.experiment import aggregate, format_ratio, load_config, load_runs, paired_differences, pm

GRID = Path("results/medmcqa-smollm2")
REFERENCES = ("random", "grads", "full")


def main(folder: Path, tag: str) -> None:
    base = json.loads((GRID / "runs" / "base" / "results.json").read_text())["tasks"]
    own_base = json.loads((folder / "runs" / "base" / "results.json").read_text())["tasks"]
    assert {t: v["correct"] for t, v in own_base.items()} == {t: v["correct"] for t, v in base.items()}, \
        "the two folders' base-model evaluations differ"
    ev = load_config(GRID / "config.yaml").eval
    tasks = (ev.domain_tasks, ev.general_tasks, ev.validation_tasks)
    own = [{**r, "method": f"{r['method']} [{tag}]"} for r in load_runs(folder)]
    pool = own + [r for r in load_runs(GRID) if r["method"] in REFERENCES]
    summary = {(r["method"], r["ratio"]): r for r in aggregate(pool, base, *tasks)}
    deltas = {reference: {(d["method"], d["ratio"]): d for d in
                          paired_differences(pool, base, *tasks, reference=reference)} for reference in REFERENCES}
    print("| method | ratio | seeds | n_train | G | F | G_val | "
          + " | ".join(f"ΔG, ΔF vs {ref} (per seed)" for ref in REFERENCES) + " |")
    print("|---|---|---|---|---|---|---|" + "---|" * len(REFERENCES))
    for key in sorted({(r["method"], r["ratio"]) for r in own}, key=lambda k: (k[1] or 1.0, k[0])):
        row, cells = summary[key], []
        for reference in REFERENCES:
            delta = deltas[reference].get(key)
            if delta is None:
                cells.append("–")
                continue
            per_seed = "; ".join(f"{dg:+.3f}, {df:+.3f}" for dg, df, _ in delta["per_seed"].values())
            cells.append(f"{pm(delta['dG_mean'], delta['dG_std'])}, {pm(delta['dF_mean'], delta['dF_std'])} "
                         f"({per_seed})")
        n_train = sorted({r["n_train"] for r in own if (r["method"], r["ratio"]) == key})
        print(f"| {key[0]} | {format_ratio(key[1], key[0])} | {len(row['seeds'])} | "
              f"{', '.join(map(str, n_train))} | {pm(row['G_mean'], row['G_std'])} | "
              f"{pm(row['F_mean'], row['F_std'])} | {pm(row['G_val_mean'], row['G_val_std'])} | "
              + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])

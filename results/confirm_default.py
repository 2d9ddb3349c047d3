"""The chosen default (no warm-up) on the test tasks, against the grid, seed by seed.

Reads results/confirm-no-warmup (the default `grads` rule at θ0, chosen on G_val beforehand) and the grid
(results/medmcqa-smollm2: `random`, `grads` after the one-epoch warm-up, and `full`, the same recipe and
evaluation), and prints per ratio G, F and G_val (mean ± std over seeds) and ΔG, ΔF against each reference
run of the same seed (mean ± std, then each seed's value). G and F exactly as in summary.md, from the grid's
base-model evaluation (the confirmation folder's own base evaluation must match it; checked). Run from the
repository root:

    .venv/bin/python results/confirm_default.py
"""

from __future__ import annotations

import json
from pathlib import Path

from grads.experiment import aggregate, format_ratio, load_config, load_runs, paired_differences, pm

GRID, CONFIRM = Path("results/medmcqa-smollm2"), Path("results/confirm-no-warmup")
LABEL = "grads [no warm-up]"
REFERENCES = ("random", "grads", "full")


def main() -> None:
    base = json.loads((GRID / "runs" / "base" / "results.json").read_text())["tasks"]
    own_base = json.loads((CONFIRM / "runs" / "base" / "results.json").read_text())["tasks"]
    assert {t: v["correct"] for t, v in own_base.items()} == {t: v["correct"] for t, v in base.items()}, \
        "the two folders' base-model evaluations differ"
    ev = load_config(GRID / "config.yaml").eval
    tasks = (ev.domain_tasks, ev.general_tasks, ev.validation_tasks)
    own = [{**r, "method": LABEL} for r in load_runs(CONFIRM)]
    pool = own + [r for r in load_runs(GRID) if r["method"] in REFERENCES]
    summary = {(r["method"], r["ratio"]): r for r in aggregate(pool, base, *tasks)}
    print("| ratio | seeds | G | F | G_val | " + " | ".join(f"ΔG, ΔF vs {ref} (per seed)" for ref in REFERENCES) + " |")
    print("|---|---|---|---|---|" + "---|" * len(REFERENCES))
    for ratio in sorted({r["ratio"] for r in own}):
        row = summary[(LABEL, ratio)]
        cells = []
        for reference in REFERENCES:
            delta = next(d for d in paired_differences(pool, base, *tasks, reference=reference)
                         if (d["method"], d["ratio"]) == (LABEL, ratio))
            per_seed = "; ".join(f"{dg:+.3f}, {df:+.3f}" for dg, df, _ in delta["per_seed"].values())
            cells.append(f"{pm(delta['dG_mean'], delta['dG_std'])}, {pm(delta['dF_mean'], delta['dF_std'])} "
                         f"({per_seed})")
        print(f"| {format_ratio(ratio, LABEL)} | {len(row['seeds'])} | {pm(row['G_mean'], row['G_std'])} | "
              f"{pm(row['F_mean'], row['F_std'])} | {pm(row['G_val_mean'], row['G_val_std'])} | "
              + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()

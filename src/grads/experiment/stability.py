"""How stable a selection is: the same rule on the scores of two warm-ups (or of the base model and a warm-up).

For two selection folders A and B (each `grads select`'s OUT: scores.parquet with `combined`, selection.json):
    Spearman ρ of `combined` over the examples eligible in both (how alike the two rankings are)
    Jaccard |S_A ∩ S_B| / |S_A ∪ S_B| of the rule's subsets at each ratio both hold (how alike the choices are)
Two random subsets of k from n overlap by about k/(2n − k) in Jaccard: the figure a chance agreement gives.
"""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import pandas as pd
from scipy.stats import spearmanr


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a | b else math.nan


def chance_jaccard(k: int, n: int) -> float:
    """The expected Jaccard overlap of two independent random k-subsets of n: E|A∩B| = k²/n, |A∪B| = 2k − |A∩B|
    (to first order)."""
    shared = k * k / n
    return shared / (2 * k - shared) if k else math.nan


def _subsets(folder: Path, method: str) -> dict[float, set[str]]:
    outputs = json.loads((folder / "selection.json").read_text())["outputs"].values()
    return {entry["ratio"]: set(entry["ids"]) for entry in outputs if entry["method"] == method}


def agreement(a: Path, b: Path, method: str = "grads") -> dict:
    """Spearman of `combined` and, per ratio both folders selected, Jaccard of `method`'s subsets (with the
    chance level for subsets of that size)."""
    sa = pd.read_parquet(a / "scores.parquet", columns=["id", "combined"]).dropna()
    sb = pd.read_parquet(b / "scores.parquet", columns=["id", "combined"]).dropna()
    both = sa.merge(sb, on="id", suffixes=("_a", "_b"))
    rho = float(spearmanr(both["combined_a"], both["combined_b"]).statistic) if len(both) > 2 else math.nan
    subsets_a, subsets_b = _subsets(a, method), _subsets(b, method)
    n = len(both)
    ratios = sorted(set(subsets_a) & set(subsets_b))
    return {"n_examples": n, "spearman_combined": rho,
            "jaccard": {f"{r:g}": jaccard(subsets_a[r], subsets_b[r]) for r in ratios},
            "chance_jaccard": {f"{r:g}": chance_jaccard(len(subsets_a[r]), n) for r in ratios}}


def stability(folders: dict[str, Path], method: str = "grads") -> list[dict]:
    """`agreement` for every pair of the labelled selection folders that exist, in the order given."""
    present = {label: path for label, path in folders.items() if (path / "selection.json").exists()}
    return [{"a": la, "b": lb, **agreement(pa, pb, method)}
            for (la, pa), (lb, pb) in itertools.combinations(present.items(), 2)]


def experiment_selections(out: Path) -> dict[str, Path]:
    """An experiment's selection folders by label: the shared warm-up's (seed 0), each seed's own warm-up's and
    the base model's (θ0)."""
    seeds = sorted(out.glob("select-seed-*"), key=lambda p: int(p.name.rsplit("-", 1)[1]))
    return {"warm-up seed 0": out / "select", **{f"warm-up seed {p.name.rsplit('-', 1)[1]}": p for p in seeds},
            "θ0 (no warm-up)": out / "select-theta0"}


def stability_lines(rows: list[dict]) -> list[str]:
    """The markdown section of summary.md (nothing when fewer than two selections exist)."""
    if not rows:
        return []
    ratios = sorted({r for row in rows for r in row["jaccard"]}, key=float)
    lines = ["", "Selection stability (`grads` on the scores of two selections; chance: the Jaccard of two random "
             "subsets of that size):", "",
             "| A | B | Spearman of combined | " + " | ".join(f"Jaccard {r} (chance)" for r in ratios) + " |",
             "|---|---|---|" + "---|" * len(ratios)]
    for row in rows:
        cells = [f"{row['jaccard'][r]:.3f} ({row['chance_jaccard'][r]:.3f})" if r in row["jaccard"] else "–"
                 for r in ratios]
        lines.append(f"| {row['a']} | {row['b']} | {row['spearman_combined']:.3f} | " + " | ".join(cells) + " |")
    return lines

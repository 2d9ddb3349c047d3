r"""Detection figures: how well each score flags planted (noisy) records, and what each selection keeps of them.
Pure functions of the score table and the labels (`grads data plant` writes labels.json: id -> "clean" or a kind).

AUROC of a score for "planted" (the Mann–Whitney statistic, ties counted one half):

    AUROC = P(score of a planted record > score of a clean one) + ½ P(equal)

in the direction that flags planted records: a score whose AUROC is below ½ flags them by its *low* values, and
is reported as 1 − AUROC with direction "low". Per kind, the AUROC of that kind against the clean records in the
same direction as the whole (a kind below ½ hides where the others stand out: off-domain answers have a lower
loss than clean ones, for instance). Only eligible rows (status "ok") are read.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
from scipy.stats import rankdata

if TYPE_CHECKING:  # tables are pandas DataFrames
    import pandas as pd

from grads.core.rules import ifd_scores
from grads.core.signals import DensitySpec, combined_signal, density, eligible

CLEAN = "clean"
DEFAULT_SPEC = DensitySpec()


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """P(score of a positive > score of a negative) + ½ P(equal); NaN without both classes."""
    scores, positive = np.asarray(scores, dtype=float), np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(scores)  # average ranks: ties count one half
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _column(name: str) -> Callable[[pd.DataFrame, DensitySpec], np.ndarray]:
    return lambda table, cfg: table[name].to_numpy(float)


# Every score a user could filter on: name -> (values, the columns it needs)
DETECTORS: dict[str, tuple[Callable[[pd.DataFrame, DensitySpec], np.ndarray], tuple[str, ...]]] = {
    "loss": (_column("loss"), ("loss",)),
    "answer_only_loss": (_column("answer_only_loss"), ("answer_only_loss",)),
    "emb_grad_norm": (_column("emb_grad_norm"), ("emb_grad_norm",)),
    "head_grad_norm": (_column("head_grad_norm"), ("head_grad_norm",)),
    "tied_grad_norm": (_column("tied_grad_norm"), ("tied_grad_norm",)),
    "combined": (lambda table, cfg: combined_signal(table, cfg.signal), ("emb_grad_norm", "head_grad_norm")),
    "combined_length_residual": (lambda table, cfg: combined_signal(table, "zsum-length-residual"),
                                 ("emb_grad_norm", "head_grad_norm", "n_target_tokens")),
    "density": (lambda table, cfg: density(table, cfg)[1], ("emb_grad_norm", "head_grad_norm")),
    "ifd": (lambda table, cfg: ifd_scores(table), ("loss", "answer_only_loss")),
    "n_target_tokens": (_column("n_target_tokens"), ("n_target_tokens",)),
}


def detection(table: pd.DataFrame, labels: np.ndarray, cfg: DensitySpec = DEFAULT_SPEC) -> dict[str, dict]:
    """{score: {"auroc", "direction", "by_kind": {kind: auroc}}} for every detector the table has columns for
    (and whose values are finite on every eligible row)."""
    ok = eligible(table)
    planted = labels != CLEAN
    kinds = sorted(set(labels[ok & planted]))
    out = {}
    for name, (values_of, needs) in DETECTORS.items():
        if not all(c in table for c in needs):
            continue
        values = np.asarray(values_of(table, cfg), dtype=float)
        if not np.isfinite(values[ok]).all():
            continue
        a = auroc(values[ok], planted[ok])
        if np.isnan(a):
            continue
        sign = 1.0 if a >= 0.5 else -1.0
        by_kind = {}
        for kind in kinds:
            rows = ok & ((labels == kind) | ~planted)
            by_kind[kind] = auroc(sign * values[rows], planted[rows])
        out[name] = {"auroc": max(a, 1 - a), "direction": "high" if sign > 0 else "low", "by_kind": by_kind}
    return out


def kept_shares(labels: np.ndarray, picked: np.ndarray, pool_rows: np.ndarray) -> dict[str, dict]:
    """What a subset holds of each label against the pool: {"share": {label: share of the subset},
    "pool_share": {label: share of the pool's rows}, "kept": {label: fraction of the pool's records of that
    label the subset keeps}}. The pool is `pool_rows` (the eligible rows a rule chooses from)."""
    names = sorted(set(labels[pool_rows]) | set(labels[picked]))
    pool_counts = {k: int((labels[pool_rows] == k).sum()) for k in names}
    counts = {k: int((labels[picked] == k).sum()) for k in names}
    n_pool, n = len(pool_rows), len(picked)
    return {"share": {k: counts[k] / n if n else float("nan") for k in names},
            "pool_share": {k: pool_counts[k] / n_pool if n_pool else float("nan") for k in names},
            "kept": {k: counts[k] / pool_counts[k] if pool_counts[k] else float("nan") for k in names}}

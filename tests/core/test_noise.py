"""Detection figures (grads.core.noise): AUROC against a brute-force pair count, the direction that flags,
per-kind figures, and what a subset keeps of each label."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import score_table

from grads.core.noise import auroc, detection, kept_shares


def pair_count(scores, positive) -> float:
    pos, neg = scores[positive], scores[~positive]
    return float(np.mean([(p > n) + 0.5 * (p == n) for p in pos for n in neg]))


def test_auroc_is_the_share_of_ordered_pairs_ties_counted_half():
    rng = np.random.default_rng(0)
    for _ in range(50):
        n = int(rng.integers(2, 40))
        scores = rng.integers(0, 6, n).astype(float)  # many ties
        positive = rng.random(n) < 0.4
        if positive.all() or not positive.any():
            continue
        assert auroc(scores, positive) == pytest.approx(pair_count(scores, positive), abs=1e-12)
    assert np.isnan(auroc(np.arange(3.0), np.zeros(3, bool)))


def test_detection_flags_in_the_right_direction_per_kind():
    """Loss: shuffled records high (AUROC 1 for that kind), off-domain low (0 in the overall direction)."""
    n = 40
    labels = np.array(["clean"] * 30 + ["shuffle"] * 6 + ["offdomain"] * 4, dtype=object)
    loss = np.r_[np.linspace(1.0, 2.0, 30), np.linspace(5.0, 6.0, 6), np.linspace(0.1, 0.2, 4)]
    rng = np.random.default_rng(1)
    table = score_table(np.exp(rng.normal(size=n)), np.exp(rng.normal(size=n)), loss=loss,
                        n_target=rng.integers(5, 50, n), answer_only=np.full(n, 2.0))
    figures = detection(table, labels)
    planted = labels != "clean"
    expected = pair_count(loss, planted)  # 6 of 10 planted above every clean one: 0.6
    assert expected == pytest.approx(0.6)
    assert figures["loss"] == {"auroc": pytest.approx(0.6), "direction": "high",
                               "by_kind": {"offdomain": 0.0, "shuffle": 1.0}}
    assert figures["ifd"]["direction"] == "high"  # loss / 2
    assert figures["n_target_tokens"]["auroc"] >= 0.5
    assert {"combined", "combined_length_residual", "density", "emb_grad_norm"} <= set(figures)
    assert "tied_grad_norm" not in figures  # NaN for untied weights: not a score to read


def test_kept_shares_count_each_label():
    labels = np.array(["clean", "swap", "clean", "swap", "shuffle", "clean"], dtype=object)
    pool = np.arange(6)
    kept = kept_shares(labels, np.array([0, 1, 4]), pool)
    assert kept["share"] == {"clean": 1 / 3, "shuffle": 1 / 3, "swap": 1 / 3}
    assert kept["pool_share"] == {"clean": 0.5, "shuffle": 1 / 6, "swap": 1 / 3}
    assert kept["kept"] == {"clean": 1 / 3, "shuffle": 1.0, "swap": 0.5}

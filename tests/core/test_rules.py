"""Each selection rule on hand-made score tables, with the exact ids it must return."""

from __future__ import annotations

import math

import numpy as np
import pytest
from helpers import score_table

from grads.core.rules import auto_ratio, knee_index, n_keep, select
from grads.core.signals import combined_signal


def ids(frame, picked):
    return list(frame["id"].iloc[picked])


# a cluster of five similar examples around norm 1, two outliers above, one far below
EMB = [1.0, 1.05, 0.95, 1.02, 0.98, 3.0, 4.0, 0.1]
HEAD = [2.0, 2.1, 1.9, 2.05, 1.95, 6.0, 9.0, 0.2]



def test_grads_keeps_the_dense_cluster_and_auto_ratio_reports_its_rule():
    from scipy.stats import gaussian_kde

    frame = score_table(EMB, HEAD)
    s = combined_signal(frame)
    dens = gaussian_kde(s)(s)  # independent density: scipy on the same signal
    for ratio, k in [(0.25, 2), (0.5, 4)]:
        want = sorted(f"e{i}" for i in np.argsort(-dens)[:k])
        got = ids(frame, select(frame, "grads", ratio))
        assert got == want and set(got) <= {"e0", "e1", "e2", "e3", "e4"}
    assert ids(frame, select(frame, "grads-high", 0.25)) == ["e5", "e6"]
    assert ids(frame, select(frame, "grads-low", 0.125)) == ["e7"]
    # the other density direction: the least dense examples, which here are the three outliers on both ends
    assert ids(frame, select(frame, "grads-tails", 0.375)) == sorted(f"e{i}" for i in np.argsort(dens)[:3])
    assert ids(frame, select(frame, "grads-tails", 0.375)) == ["e5", "e6", "e7"]
    ratio, rule = auto_ratio(frame)
    assert 0 < ratio <= 1 and "knee" in rule
    assert len(select(frame, "grads-auto", None)) == round(ratio * 8)


def test_emb_only_and_head_only_use_one_norm():
    emb = [1.0, 1.0, 1.0, 5.0, 9.0]
    head = [7.0, 1.0, 3.0, 3.0, 3.0]
    frame = score_table(emb, head)
    assert ids(frame, select(frame, "emb-only", 0.6)) == ["e0", "e1", "e2"]
    assert ids(frame, select(frame, "head-only", 0.6)) == ["e2", "e3", "e4"]


def test_baselines_pick_exactly_what_they_promise():
    frame = score_table([1, 2, 3, 4, 5.0], [5, 4, 3, 2, 1.0], loss=[0.5, 2.0, 1.0, 3.0, 0.1], n_target=[9, 3, 7, 1, 2],
                  tied=[math.nan] * 5, answer_only=[1.0, 1.0, 2.0, 2.0, 0.05])
    assert ids(frame, select(frame, "length", 0.4)) == ["e0", "e2"]
    assert ids(frame, select(frame, "loss", 0.4)) == ["e1", "e3"]
    # ifd = loss / answer_only = [0.5, 2, 0.5, 1.5, 2]: only e0 and e2 are below 1, tied at 0.5
    assert ids(frame, select(frame, "ifd", 0.6)) == ["e0", "e2"]
    # total norm sqrt(a²+b²): equal for e0/e4 (26) and e1/e3 (20); ties broken by the id hash, stably
    top2 = ids(frame, select(frame, "gradnorm", 0.4))
    assert set(top2) == {"e0", "e4"}
    assert ids(frame, select(frame, "full", None)) == ["e0", "e1", "e2", "e3", "e4"]


def test_gradnorm_uses_the_tied_total_when_present():
    frame = score_table([1, 1, 1.0], [1, 1, 1.0], tied=[0.5, 3.0, 1.0])
    assert ids(frame, select(frame, "gradnorm", 0.33)) == ["e1"]


def test_random_is_seeded_nested_and_reproducible():
    frame = score_table(list(np.linspace(1, 2, 40)), list(np.linspace(1, 2, 40)))
    small, large = select(frame, "random", 0.1, seed=3), select(frame, "random", 0.5, seed=3)
    assert set(small) <= set(large) and len(small) == 4 and len(large) == 20
    np.testing.assert_array_equal(select(frame, "random", 0.5, seed=3), large)
    assert not np.array_equal(select(frame, "random", 0.5, seed=4), large)


def test_excluded_rows_are_never_selected_except_by_full():
    frame = score_table([1.0, 1.0, 2.0, 9.0], [1.0, 1.0, 2.0, 9.0], status=["ok", "no_target", "ok", "nonfinite"],
                  loss=[1.0, math.nan, 2.0, math.nan])
    for method in ["grads", "grads-high", "grads-low", "grads-tails", "random", "loss", "length", "gradnorm"]:
        picked = ids(frame, select(frame, method, 1.0))
        assert set(picked) == {"e0", "e2"}, method
    assert len(select(frame, "full", None)) == 4
    assert np.isnan(combined_signal(frame)[[1, 3]]).all()


def test_ratio_rounds_up_and_is_checked():
    assert n_keep(100, 0.05) == 5 and n_keep(101, 0.05) == 6 and n_keep(3, 1.0) == 3 and n_keep(10, 0.3) == 3
    with pytest.raises(ValueError):
        n_keep(10, 0)
    with pytest.raises(ValueError):
        n_keep(10, 1.5)


def test_ties_are_broken_by_id_hash_not_row_order():
    frame = score_table([1.0] * 6, [1.0] * 6)
    picked = ids(frame, select(frame, "grads", 0.5))
    shuffled = frame.iloc[[5, 3, 1, 0, 2, 4]].reset_index(drop=True)
    assert sorted(picked) == sorted(ids(shuffled, select(shuffled, "grads", 0.5)))



def test_knee_of_a_normal_density_curve():
    x = np.random.default_rng(0).normal(size=20000)
    dens = np.sort(np.exp(-x * x / 2))[::-1]
    # for normal data the chord distance peaks at |z| = 2/sqrt(2π), i.e. keeping P(|Z| < 0.798) = 57.5%
    assert knee_index(dens) / len(dens) == pytest.approx(0.575, abs=0.01)



def test_random_tokens_matches_the_answer_tokens_of_the_grads_subset():
    rng = np.random.default_rng(3)
    n = 200
    emb = rng.lognormal(size=n)
    lengths = rng.integers(1, 120, n)
    frame = score_table(list(emb), list(emb * rng.lognormal(0, 0.3, n)), n_target=list(lengths))
    for ratio in (0.05, 0.25, 0.5):
        target = lengths[select(frame, "grads", ratio)].sum()
        picked = select(frame, "random-tokens", ratio, seed=7)
        order = np.random.default_rng(7).permutation(n)  # all rows eligible: `random`'s seeded order
        k = len(picked)
        assert sorted(picked) == sorted(order[:k])  # a prefix of that order
        totals = np.cumsum(lengths[order])
        # the prefix whose total is closest to the grads subset's (ties: the shorter)
        best = min(range(1, n + 1), key=lambda j: (abs(totals[j - 1] - target), j))
        assert k == best and abs(totals[k - 1] - target) <= lengths.max()
    assert list(select(frame, "random-tokens", 0.25, seed=7)) == list(select(frame, "random-tokens", 0.25, seed=7))

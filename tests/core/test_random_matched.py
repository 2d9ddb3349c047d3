"""`random-matched`: random examples of the grads subset's count and answer lengths (each drawn from a window of
the nearest lengths, then balanced to the subset's answer tokens), the `random-matched:RULE` form matched to
another rule's subset, and the overlap record that says what a control shares with its target."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from helpers import score_table

from grads.core.rules import (
    MATCH_TOKEN_RTOL,
    control_overlap,
    length_matched,
    length_window,
    output_name,
    overlap_record,
    select,
)
from grads.errors import GradsError


def pool(n: int = 1000, seed: int = 0) -> pd.DataFrame:
    """A pool whose answer lengths follow a known long-tailed distribution, norms loosely tied to length."""
    rng = np.random.default_rng(seed)
    lengths = np.minimum(rng.geometric(1 / 40, n), 400)
    return pd.DataFrame({"id": [f"ex{i}" for i in range(n)], "row": np.arange(n), "n_target_tokens": lengths,
                         "loss": rng.random(n), "emb_grad_norm": np.exp(rng.normal(size=n) + lengths / 80),
                         "head_grad_norm": np.exp(rng.normal(size=n)), "status": "ok"})


def distinct_pool(n: int = 60, seed: int = 0) -> pd.DataFrame:
    """Every answer length different (the case where exact-length strata leave each target only itself)."""
    rng = np.random.default_rng(seed)
    lengths = rng.permutation(np.arange(10, 10 + 7 * n, 7))
    return score_table(np.exp(rng.normal(size=n)), np.exp(rng.normal(size=n)), n_target=lengths)


def matched_draws(table: pd.DataFrame, ratio: float, n_seeds: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """The grads subset and `random-matched` at seeds 0..n_seeds-1, each checked: the subset's count, distinct
    sorted rows, answer tokens within MATCH_TOKEN_RTOL; every seed another draw."""
    lengths = table["n_target_tokens"].to_numpy()
    grads = select(table, "grads", ratio, 0)
    draws = [select(table, "random-matched", ratio, seed) for seed in range(n_seeds)]
    for matched in draws:
        assert len(matched) == len(grads) and len(set(matched)) == len(matched)
        assert abs(lengths[matched].sum() - lengths[grads].sum()) <= MATCH_TOKEN_RTOL * lengths[grads].sum()
        assert list(matched) == sorted(matched)
    assert len({tuple(m) for m in draws}) == n_seeds  # another seed, another draw
    return grads, draws


@pytest.mark.parametrize("ratio", [0.05, 0.5])
def test_the_matched_subset_has_the_grads_count_and_answer_tokens(ratio):
    table = pool()
    grads, draws = matched_draws(table, ratio, 3)
    if ratio == 0.05:  # a random draw, not the grads subset itself
        assert len(set(draws[0]) & set(grads)) < len(grads) / 4


@pytest.mark.parametrize("ratio", [0.25, 0.5])
def test_on_a_pool_of_distinct_lengths_the_control_is_not_its_target(ratio):
    grads, draws = matched_draws(distinct_pool(), ratio, 4)
    assert all(len(set(matched) & set(grads)) < len(grads) for matched in draws)
    # over seeds it shares about what the windows allow, far from the whole subset
    mean_shared = np.mean([len(set(m) & set(grads)) for m in draws])
    assert mean_shared < 0.8 * len(grads)


def test_a_long_tail_is_matched_within_its_windows():
    """The longest answers have few neighbours: the draw still keeps count and tokens, and each drawn length is
    near a target length (no farther than the widest window a target of the subset had)."""
    table = pool(2000, seed=3)
    lengths = table["n_target_tokens"].to_numpy()
    longest = select(table, "length", 0.05, 0)
    matched = select(table, "random-matched:length", 0.05, 1)
    assert len(matched) == len(longest)
    assert abs(lengths[matched].sum() - lengths[longest].sum()) <= MATCH_TOKEN_RTOL * lengths[longest].sum()
    sorted_all = np.sort(lengths)
    reach = max(max(t - sorted_all[lo], sorted_all[hi - 1] - t)
                for t in lengths[longest] for lo, hi in [length_window(sorted_all, int(t), 2 * 10)])
    gaps = [np.min(np.abs(lengths[longest] - m)) for m in lengths[matched]]
    assert max(gaps) <= reach


def test_the_window_is_the_nearest_lengths_with_their_ties():
    """length_window against brute force: the positions whose distance is at most the size-th smallest."""
    rng = np.random.default_rng(0)
    for _ in range(300):
        values = np.sort(rng.integers(0, 30, rng.integers(1, 25)))
        length, size = int(rng.integers(-5, 35)), int(rng.integers(1, 12))
        lo, hi = length_window(values, length, size)
        distance = np.abs(values - length)
        cutoff = np.sort(distance)[min(size, len(values)) - 1]
        assert list(range(lo, hi)) == list(np.flatnonzero(distance <= cutoff)), (values, length, size)


def test_large_strata_keep_every_target_at_its_own_length():
    lengths = np.array([3] * 20 + [5] * 20 + [9] * 20 + [100] * 20)
    targets = np.array([0, 20, 40, 41])  # lengths 3, 5, 9, 9
    for seed in range(5):
        picked = length_matched(lengths, np.arange(80), targets, seed=seed)
        assert sorted(lengths[picked]) == [3, 5, 9, 9]


def test_an_exhausted_window_widens_to_the_nearest_free_length():
    lengths = np.array([10, 20, 21, 30, 40])
    # window 1: two targets of length 20, one candidate of that length: the other comes from 21 (nearest)
    picked = length_matched(lengths, np.arange(5), np.array([1, 1]), seed=0, window=1, token_rtol=1.0)
    assert sorted(lengths[picked]) == [20, 21]
    with pytest.raises(ValueError, match="fewer candidates"):
        length_matched(lengths, np.arange(2), np.arange(5), seed=0)


def test_the_draw_within_a_window_is_uniform():
    """Over many seeds, each of the four candidates of the target's window is drawn about a quarter of the
    time (binomial 800 × 1/4: mean 200, sd 12; 150–250 is four sd)."""
    lengths = np.array([7, 7, 7, 7, 2, 2])
    counts = np.bincount([int(length_matched(lengths, np.arange(6), np.array([0]), s, window=4)[0])
                          for s in range(800)], minlength=6)
    assert counts[4:].sum() == 0
    assert all(150 < c < 250 for c in counts[:4]), counts


def test_the_balance_brings_the_tokens_within_tolerance():
    """Lengths 1..200 once each, targets the ten longest: their windows lean shorter at the top end, so the raw
    draw falls short; the balance swaps within the windows until within 0.5%."""
    lengths = np.arange(1, 201)
    targets = np.arange(190, 200)
    for seed in range(10):
        picked = length_matched(lengths, np.arange(200), targets, seed)
        assert abs(lengths[picked].sum() - lengths[targets].sum()) <= MATCH_TOKEN_RTOL * lengths[targets].sum()


def test_matched_to_another_rule():
    table = pool()
    lengths = table["n_target_tokens"].to_numpy()
    longest = select(table, "length", 0.1, 0)
    matched = select(table, "random-matched:length", 0.1, 4)
    assert len(matched) == len(longest)
    assert abs(lengths[matched].sum() - lengths[longest].sum()) <= MATCH_TOKEN_RTOL * lengths[longest].sum()
    assert output_name("random-matched:length", 0.1) == "random-matched:length-0.1.jsonl"


def test_the_overlap_record_against_hand_counts():
    """chance = k_a·k_b/N; p = P(shared ≥ s) for a hypergeometric draw, here summed from binomial coefficients."""
    lengths = np.arange(1, 41)
    target, control = np.arange(0, 10), np.array([0, 1, 2, 3, 20, 21, 22, 23, 24, 25])
    record = overlap_record(control, target, 40, lengths)
    p = sum(math.comb(10, s) * math.comb(30, 10 - s) for s in range(4, 11)) / math.comb(40, 10)
    assert record["shared"] == 4 and record["chance"] == 2.5
    assert math.isclose(record["p_value"], p, rel_tol=1e-9)
    assert record["answer_tokens"] == 10 + 141 and record["target_answer_tokens"] == 55
    assert "warning" not in record  # 4 shared against 2.5 by chance: p ≈ 0.24
    copy = overlap_record(target, target, 40, lengths)
    assert copy["shared"] == 10 and "shares 10 of its 10 examples" in copy["warning"]


def test_the_select_stage_records_the_control_overlap():
    table = distinct_pool()
    picked = select(table, "random-matched", 0.25, 2)
    record = control_overlap(table, "random-matched", picked, 0.25, 2)
    grads = select(table, "grads", 0.25, 2)
    assert record["of"] == "grads" and record["shared"] == len(set(picked) & set(grads))
    assert record["chance"] == round(len(grads) ** 2 / 60, 3)
    assert control_overlap(table, "random", picked, 0.25, 2) is None


@pytest.mark.parametrize("method", ["random-matched:random-matched", "random-matched:grads-auto",
                                    "random-matched:nothing", "grads:length"])
def test_matching_what_has_no_subset_of_a_ratio_is_refused(method):
    with pytest.raises(GradsError, match="unknown method"):
        select(pool(50), method, 0.5, 0)

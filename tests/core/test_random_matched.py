"""`random-matched`: random examples of the grads subset's count and answer lengths (a seeded draw per length
stratum), and the `random-matched:RULE` form matched to another rule's subset."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from grads.core.rules import length_matched, output_name, select
from grads.errors import GradsError


def pool(n: int = 1000, seed: int = 0) -> pd.DataFrame:
    """A pool whose answer lengths follow a known long-tailed distribution, norms loosely tied to length."""
    rng = np.random.default_rng(seed)
    lengths = np.minimum(rng.geometric(1 / 40, n), 400)
    return pd.DataFrame({"id": [f"ex{i}" for i in range(n)], "row": np.arange(n), "n_target_tokens": lengths,
                         "loss": rng.random(n), "emb_grad_norm": np.exp(rng.normal(size=n) + lengths / 80),
                         "head_grad_norm": np.exp(rng.normal(size=n)), "status": "ok"})


@pytest.mark.parametrize("ratio", [0.05, 0.5])
def test_the_matched_subset_has_the_grads_count_and_answer_tokens(ratio):
    table = pool()
    lengths = table["n_target_tokens"].to_numpy()
    grads = select(table, "grads", ratio, 0)
    draws = [select(table, "random-matched", ratio, seed) for seed in range(3)]
    for matched in draws:
        assert len(matched) == len(grads) and len(set(matched)) == len(matched)
        assert abs(lengths[matched].sum() - lengths[grads].sum()) <= 0.01 * lengths[grads].sum()
        assert list(matched) == sorted(matched)
    assert len({tuple(m) for m in draws}) == 3  # another seed, another draw
    # random: a seed's draw is not the grads subset itself (at 5% the overlap is small)
    if ratio == 0.05:
        assert len(set(draws[0]) & set(grads)) < len(grads) / 2


def test_each_target_gets_an_example_of_its_own_length_when_the_stratum_has_one():
    lengths = np.array([3, 3, 3, 5, 5, 9, 9, 9, 9, 12])
    targets = np.array([0, 3, 5, 6])  # lengths 3, 5, 9, 9
    picked = length_matched(lengths, np.arange(10), targets, seed=1)
    assert sorted(lengths[picked]) == [3, 5, 9, 9]


def test_a_short_stratum_borrows_from_the_nearest_length():
    lengths = np.array([10, 20, 21, 30, 40])
    # two targets of length 20, one candidate of that length: the other comes from 21 (nearest), never from 10
    picked = length_matched(lengths, np.arange(5), np.array([1, 1]), seed=0)
    assert sorted(lengths[picked]) == [20, 21]
    # equally near (15 is 5 from 10 and from 20): the shorter is taken first
    assert lengths[length_matched(np.array([10, 20]), np.arange(2), np.array([0]), 0)].tolist() == [10]
    with pytest.raises(ValueError, match="fewer candidates"):
        length_matched(lengths, np.arange(2), np.arange(5), seed=0)


def test_the_draw_within_a_stratum_is_uniform():
    """Over many seeds, each of the four candidates of the target's length is drawn about a quarter of the time."""
    lengths = np.array([7, 7, 7, 7, 2, 2])
    counts = np.bincount([int(length_matched(lengths, np.arange(6), np.array([0]), s)[0]) for s in range(800)],
                         minlength=6)
    assert counts[4:].sum() == 0
    assert all(150 < c < 250 for c in counts[:4]), counts


def test_matched_to_another_rule():
    table = pool()
    lengths = table["n_target_tokens"].to_numpy()
    longest = select(table, "length", 0.1, 0)
    matched = select(table, "random-matched:length", 0.1, 4)
    assert len(matched) == len(longest)
    assert abs(lengths[matched].sum() - lengths[longest].sum()) <= 0.01 * lengths[longest].sum()
    assert output_name("random-matched:length", 0.1) == "random-matched:length-0.1.jsonl"


@pytest.mark.parametrize("method", ["random-matched:random-matched", "random-matched:grads-auto",
                                    "random-matched:nothing", "grads:length"])
def test_matching_what_has_no_subset_of_a_ratio_is_refused(method):
    with pytest.raises(GradsError, match="unknown method"):
        select(pool(50), method, 0.5, 0)

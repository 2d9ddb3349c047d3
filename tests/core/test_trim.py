"""`trim:SIGNAL[:q]`: drop what a signal flags, then draw at random from the rest; its matched control."""

from __future__ import annotations

import math

import numpy as np
import pytest
from helpers import score_table

from grads.core.rules import DEFAULT_TRIM_SHARE, columns_of, select, trim_flags
from grads.core.signals import density
from grads.errors import GradsError


def table(n: int = 50, seed: int = 0):
    rng = np.random.default_rng(seed)
    return score_table(np.exp(rng.normal(size=n)), np.exp(rng.normal(size=n)), loss=rng.random(n) * 4,
                       n_target=rng.integers(3, 80, n), answer_only=rng.random(n) * 4 + 0.5)


@pytest.mark.parametrize("signal,values,q", [
    ("loss", lambda t: t["loss"].to_numpy(), 0.2),
    ("answer-only-loss", lambda t: t["answer_only_loss"].to_numpy(), 0.3),
    ("ifd", lambda t: (t["loss"] / t["answer_only_loss"]).to_numpy(), 0.1),
    ("density", lambda t: -density(t)[1], 0.4),
])
def test_the_flagged_rows_are_the_share_with_the_highest_suspicion(signal, values, q):
    t = table()
    flags = trim_flags(t, f"{signal}:{q}")
    k = math.ceil(q * 50 - 1e-9)
    assert flags.sum() == k
    suspicion = values(t)
    assert suspicion[flags].min() > suspicion[~flags].max()  # continuous values: no ties at the cut


def test_ifd_without_a_share_drops_ifd_at_least_one_and_others_take_the_default_share():
    t = table()
    ifd = (t["loss"] / t["answer_only_loss"]).to_numpy()
    assert list(np.flatnonzero(trim_flags(t, "ifd"))) == list(np.flatnonzero(ifd >= 1))
    assert trim_flags(t, "loss").sum() == math.ceil(DEFAULT_TRIM_SHARE * 50)


@pytest.mark.parametrize("ratio", [0.1, 0.5, 0.9])
def test_the_draw_is_random_among_the_rest(ratio):
    t = table()
    flags = trim_flags(t, "loss:0.3")
    draws = [select(t, "trim:loss:0.3", ratio, seed) for seed in range(4)]
    for picked in draws:
        assert not flags[picked].any()
        assert len(picked) == min(math.ceil(ratio * 50 - 1e-9), int((~flags).sum()))
    if ratio < 0.7:
        assert len({tuple(p) for p in draws}) == 4
    # a smaller ratio is a prefix of a larger one for the same seed (random's order)
    assert set(select(t, "trim:loss:0.3", 0.1, 2)) <= set(select(t, "trim:loss:0.3", 0.5, 2))


def test_the_matched_control_of_a_trim_rule_matches_its_lengths():
    t = table(400, seed=2)
    lengths = t["n_target_tokens"].to_numpy()
    trimmed = select(t, "trim:loss:0.3", 0.25, 1)
    matched = select(t, "random-matched:trim:loss:0.3", 0.25, 1)
    assert len(matched) == len(trimmed)
    assert abs(lengths[matched].sum() - lengths[trimmed].sum()) <= 0.005 * lengths[trimmed].sum()
    assert columns_of("random-matched:trim:ifd:0.2") == ("answer_only_loss",)
    assert columns_of("random-matched:ifd") == ("answer_only_loss",)


@pytest.mark.parametrize("method", ["trim", "trim:nothing", "trim:loss:1.5", "trim:loss:0", "trim:loss:x",
                                    "random-matched:trim"])
def test_a_bad_trim_is_refused(method):
    with pytest.raises(GradsError, match="unknown method"):
        select(table(), method, 0.5, 0)

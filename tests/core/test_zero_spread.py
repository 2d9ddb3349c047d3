"""A pool whose norms have no spread (issue 16): equal norms, norms scored in float32, norms 1 ulp apart give a
zero signal, a flat density and the id-hash tie-break subset, while a small real spread is still standardised."""

from __future__ import annotations

import math

import numpy as np
import pytest
from helpers import score_table

from grads.core.rules import id_hash, select
from grads.core.signals import SIGNALS, combined_signal, density

N = 50


ULP = float(np.nextafter(0.1, 1.0))


F32 = float(np.float32(0.1))  # a norm scored in float32, read back as float64


FLAT = {"0.1": ([0.1] * N, [0.1] * N), "0.7": ([0.7] * N, [0.7] * N), "float32 0.1": ([F32] * N, [F32] * N),
        "1 ulp apart": ([0.1, ULP] * (N // 2), [ULP, 0.1] * (N // 2))}


def test_equal_norms_do_give_a_rounding_noise_spread():
    """Why the fix is needed: the std of 50 equal log-norms is not always 0, and (x - mean) / std is then ±1."""
    for value in (0.7, F32):
        x = np.log(np.full(N, value))
        assert 0 < x.std() < 1e-15 and np.all(np.abs((x - x.mean()) / x.std()) == 1.0)


@pytest.mark.parametrize("case", FLAT)
def test_norms_without_spread_give_a_zero_signal_and_a_flat_density(case):
    emb, head = FLAT[case]
    frame = score_table(emb, head, n_target=list(range(3, 3 + N)))  # lengths vary: the residual signal too
    for name in SIGNALS:
        s = combined_signal(frame, name)
        assert np.all(s == 0.0), (name, s[:3])
    s, dens, h = density(frame)
    assert np.all(s == 0.0) and np.all(dens == dens[0]) and np.isfinite(dens[0]) and h > 0


@pytest.mark.parametrize("case", FLAT)
def test_grads_on_a_flat_pool_keeps_the_id_hash_tie_break_subset(case):
    emb, head = FLAT[case]
    frame = score_table(emb, head)
    picked = select(frame, "grads", 0.1)
    assert len(picked) == math.ceil(0.1 * N) == 5
    want = sorted(frame["id"].iloc[np.argsort(id_hash(frame["id"]))[:5]])  # ties go to the smallest id hash
    assert sorted(frame["id"].iloc[picked]) == want
    shuffled = frame.sample(frac=1, random_state=0).reset_index(drop=True)
    assert sorted(shuffled["id"].iloc[select(shuffled, "grads", 0.1)]) == want  # input order does not matter


def test_a_small_real_spread_is_still_standardised():
    emb = 0.1 * (1 + 1e-6 * np.arange(N))  # tiny but far above rounding
    frame = score_table(emb, [0.2] * N)
    la = np.log(emb)
    np.testing.assert_allclose(combined_signal(frame, "emb"), (la - la.mean()) / la.std(), rtol=1e-6)
    np.testing.assert_allclose(combined_signal(frame), (la - la.mean()) / la.std(), rtol=1e-6)  # head: 0
    assert combined_signal(frame, "robust-zsum").std() > 0.5

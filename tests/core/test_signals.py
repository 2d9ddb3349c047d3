"""The combined signal and its density on hand-made score tables: standardised log-norms, the length residual,
the bandwidth scale."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import score_table

from grads.core.signals import DensitySpec, combined_signal, density

# a cluster of five similar examples around norm 1, two outliers above, one far below
EMB = [1.0, 1.05, 0.95, 1.02, 0.98, 3.0, 4.0, 0.1]
HEAD = [2.0, 2.1, 1.9, 2.05, 1.95, 6.0, 9.0, 0.2]


def test_signal_is_the_sum_of_standardised_log_norms():
    frame = score_table(EMB, HEAD)
    la, lb = np.log(EMB), np.log(HEAD)
    want = (la - la.mean()) / la.std() + (lb - lb.mean()) / lb.std()
    np.testing.assert_allclose(combined_signal(frame), want)


def test_length_residual_signal_removes_the_length_trend():
    n = np.array([2, 4, 8, 16, 32, 64.0])
    emb = 1 / np.sqrt(n) * np.array([1, 1.1, 0.9, 1.0, 1.05, 0.95])
    frame = score_table(list(emb), list(emb * 2), n_target=list(n.astype(int)))
    plain = combined_signal(frame)
    residual = combined_signal(frame, "zsum-length-residual")
    assert abs(np.corrcoef(np.log(n), plain)[0, 1]) > 0.95
    assert abs(np.corrcoef(np.log(n), residual)[0, 1]) < 1e-6


def test_density_config_changes_bandwidth():
    frame = score_table(EMB, HEAD)
    _, _, h1 = density(frame, DensitySpec())
    _, _, h2 = density(frame, DensitySpec(bandwidth_scale=2.0))
    assert h2 == pytest.approx(2 * h1)

"""KDE against scipy.stats.gaussian_kde, and the binned (FFT) estimate against the exact one."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import gaussian_kde as scipy_kde

from grads.core.kde import bandwidth, gaussian_kde


def sample(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.normal(0, 1, n), rng.normal(4, 0.5, n // 3), rng.standard_t(3, n // 5)])


@pytest.mark.parametrize("rule", ["scott", "silverman", 0.3])
def test_exact_kde_equals_scipy(rule):
    x = sample(400)
    ours, h = gaussian_kde(x, rule=rule, method="exact")
    ref = scipy_kde(x, bw_method=rule)
    np.testing.assert_allclose(ours, ref(x), rtol=1e-10)
    assert h == pytest.approx(np.sqrt(ref.covariance[0, 0]), rel=1e-12)


def test_binned_kde_agrees_with_exact_to_1e_3():
    x = sample(4000, seed=1)
    exact, _ = gaussian_kde(x, method="exact")
    binned, _ = gaussian_kde(x, method="binned")
    assert np.max(np.abs(binned / exact - 1)) < 1e-3
    at = np.linspace(-3, 6, 50)
    np.testing.assert_allclose(gaussian_kde(x, method="binned", at=at)[0], scipy_kde(x)(at), rtol=1e-3)


def test_auto_switches_to_binned_for_large_pools_and_scale_widens():
    x = sample(9000, seed=2)
    auto, _ = gaussian_kde(x)
    binned, _ = gaussian_kde(x, method="binned")
    np.testing.assert_array_equal(auto, binned)
    assert bandwidth(x, "scott", 2.0) == pytest.approx(2 * bandwidth(x, "scott"))


def test_constant_signal_gives_equal_densities():
    dens, h = gaussian_kde(np.full(10, 3.0))
    assert h > 0 and np.allclose(dens, dens[0])

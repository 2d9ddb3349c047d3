"""The combined signal s of the two gradient norms, and its density: pure functions of the score table.

SIGNALS is the one list of signal names. Only rows whose status is "ok" are eligible.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # tables are pandas DataFrames; pandas itself is not needed to read them
    import pandas as pd

from grads.core.kde import DEFAULT_BANDWIDTH, DEFAULT_KDE, gaussian_kde
from grads.errors import GradsError

# The combined signal s of the density rules (docs/method.md §3; the measured choice, docs/results.md "Variants").
DEFAULT_SIGNAL = "zsum"


@dataclass(frozen=True)
class DensitySpec:
    """How the two norms become one signal s and its density (grads.config.SignalConfig is its typed, validated
    form): the signal's name, the bandwidth rule (scott, silverman, or a factor times the std), a multiplier of
    the bandwidth, and the KDE method (auto, exact, binned)."""

    signal: str = DEFAULT_SIGNAL
    bandwidth: str | float = DEFAULT_BANDWIDTH
    bandwidth_scale: float = 1.0
    kde: str = DEFAULT_KDE


def eligible(table: pd.DataFrame) -> np.ndarray:
    return (table["status"] == "ok").to_numpy()


SPREAD_RTOL = 1e-12  # a spread this small relative to the values' magnitude is floating-point rounding, not data


def negligible(spread: float, x: np.ndarray) -> bool:
    """True when `spread` of the values `x` is zero up to their rounding (or is NaN): equal values give a std of
    ~1e-17 rather than 0, and dividing by it would turn rounding noise into z-scores of ±1."""
    scale = max(float(np.max(np.abs(x))) if len(x) else 0.0, np.finfo(np.float64).tiny)
    return not spread > SPREAD_RTOL * scale


def no_spread(x: np.ndarray) -> bool:
    """True when the values are all equal up to floating-point rounding (a flat signal: no density to speak of)."""
    x = np.asarray(x, dtype=np.float64)
    return len(x) == 0 or negligible(float(np.ptp(x)), x)


def _z(x: np.ndarray, robust: bool = False) -> np.ndarray:
    """Standardised x; all zeros when x has no spread (up to rounding), in either branch."""
    if robust:
        center = np.median(x)
        spread = 1.4826 * np.median(np.abs(x - center))  # MAD scaled to σ for normal data
    else:
        center, spread = x.mean(), x.std()
    return np.zeros_like(x) if negligible(spread, x) else (x - center) / spread


def _residual(y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """y with its least-squares linear dependence on x removed."""
    if no_spread(y):
        return np.zeros_like(y)  # the fit's residual would be rounding noise, which _z would blow up
    if np.ptp(x) == 0:
        return y - y.mean()
    slope, intercept = np.polyfit(x, y, 1)
    return y - (slope * x + intercept)


@dataclass(frozen=True)
class Signal:
    """s from the log-norms (log a = embedding, log b = head) and the log answer length, eligible rows only."""

    compute: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]
    description: str


SIGNALS: dict[str, Signal] = {
    "zsum": Signal(lambda a, b, n: _z(a) + _z(b), "z(log ‖∂L/∂E‖) + z(log ‖∂L/∂W‖): the paper's joint signal"),
    "robust-zsum": Signal(lambda a, b, n: _z(a, robust=True) + _z(b, robust=True),
                          "the same with median/MAD instead of mean/std"),
    "emb": Signal(lambda a, b, n: _z(a), "the embedding norm alone"),
    "head": Signal(lambda a, b, n: _z(b), "the LM-head norm alone"),
    "zsum-length-residual": Signal(lambda a, b, n: _z(_residual(a, n)) + _z(_residual(b, n)),
                                   "zsum with the answer-length trend taken out of each log-norm first"),
}


def check_signal(name: str) -> None:
    if name not in SIGNALS:
        raise GradsError(f"unknown signal {name!r}", hint=f"use: {', '.join(SIGNALS)}")


def combined_signal(table: pd.DataFrame, signal: str = DEFAULT_SIGNAL) -> np.ndarray:
    """s_i for every row (NaN where not eligible): s = z(log a) + z(log b) by default."""
    check_signal(signal)
    ok = eligible(table)
    out = np.full(len(table), np.nan)
    if not ok.any():
        return out
    log_a = np.log(table["emb_grad_norm"].to_numpy()[ok])
    log_b = np.log(table["head_grad_norm"].to_numpy()[ok])
    log_n = np.log(table["n_target_tokens"].to_numpy()[ok].astype(float)) if "n_target_tokens" in table \
        else np.full(int(ok.sum()), np.nan)
    out[ok] = SIGNALS[signal].compute(log_a, log_b, log_n)
    return out


def density(table: pd.DataFrame, cfg: DensitySpec = DensitySpec()) -> tuple[np.ndarray, np.ndarray, float]:
    """(signal, KDE density of the signal at each row, bandwidth); NaN where not eligible."""
    s = combined_signal(table, cfg.signal)
    ok = ~np.isnan(s)
    dens = np.full(len(table), np.nan)
    h = float("nan")
    if ok.any():
        dens[ok], h = gaussian_kde(s[ok], cfg.bandwidth, cfg.bandwidth_scale, cfg.kde)
    return s, dens, h

"""Selection rules: pure functions of the score table (`table, ratio, seed -> row indices`), no I/O, no model.

The table is a pandas DataFrame with the columns of `grads score` (id, row, n_target_tokens, loss,
emb_grad_norm, head_grad_norm, tied_grad_norm, status) and, for `ifd`, `answer_only_loss`. Only rows whose
status is "ok" are eligible (except for `full`, the whole pool). A ratio ρ keeps ⌈ρ·N⌉ of the N eligible rows.
Ties are broken by a stable hash of the example id, so results never depend on input order or chance.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from grads.config import DEFAULT_SIGNAL
from grads.kde import gaussian_kde

SIGNALS = ("zsum", "robust-zsum", "emb", "head", "zsum-length-residual")


@dataclass(frozen=True)
class SignalConfig:
    """How the two norms become one signal s and its density (the DECIDED choices of docs/method.md)."""

    signal: str = DEFAULT_SIGNAL
    bandwidth: str | float = "scott"
    bandwidth_scale: float = 1.0
    kde_method: str = "auto"


def eligible(table: pd.DataFrame) -> np.ndarray:
    return (table["status"] == "ok").to_numpy()


def _z(x: np.ndarray, robust: bool = False) -> np.ndarray:
    if robust:
        center = np.median(x)
        spread = 1.4826 * np.median(np.abs(x - center))  # MAD scaled to σ for normal data
    else:
        center, spread = x.mean(), x.std()
    return (x - center) / spread if spread > 0 else np.zeros_like(x)


def _residual(y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """y with its least-squares linear dependence on x removed."""
    if np.ptp(x) == 0:
        return y - y.mean()
    slope, intercept = np.polyfit(x, y, 1)
    return y - (slope * x + intercept)


def combined_signal(table: pd.DataFrame, signal: str = DEFAULT_SIGNAL) -> np.ndarray:
    """s_i for every row (NaN where not eligible): s = z(log a) + z(log b) by default."""
    ok = eligible(table)
    out = np.full(len(table), np.nan)
    if not ok.any():
        return out
    log_a = np.log(table["emb_grad_norm"].to_numpy()[ok])
    log_b = np.log(table["head_grad_norm"].to_numpy()[ok])
    if signal == "zsum":
        s = _z(log_a) + _z(log_b)
    elif signal == "robust-zsum":
        s = _z(log_a, robust=True) + _z(log_b, robust=True)
    elif signal == "emb":
        s = _z(log_a)
    elif signal == "head":
        s = _z(log_b)
    elif signal == "zsum-length-residual":  # the answer-length trend taken out of each log-norm first
        log_n = np.log(table["n_target_tokens"].to_numpy()[ok].astype(float))
        s = _z(_residual(log_a, log_n)) + _z(_residual(log_b, log_n))
    else:
        raise ValueError(f"unknown signal {signal!r}: use one of {', '.join(SIGNALS)}")
    out[ok] = s
    return out


def density(table: pd.DataFrame, cfg: SignalConfig = SignalConfig()) -> tuple[np.ndarray, np.ndarray, float]:
    """(signal, KDE density of the signal at each row, bandwidth); NaN where not eligible."""
    s = combined_signal(table, cfg.signal)
    ok = ~np.isnan(s)
    dens = np.full(len(table), np.nan)
    h = float("nan")
    if ok.any():
        dens[ok], h = gaussian_kde(s[ok], cfg.bandwidth, cfg.bandwidth_scale, cfg.kde_method)
    return s, dens, h


def n_keep(n_eligible: int, ratio: float) -> int:
    if not 0 < ratio <= 1:
        raise ValueError(f"ratio must be in (0, 1], got {ratio}")
    return min(n_eligible, math.ceil(ratio * n_eligible - 1e-9))


def id_hash(ids: pd.Series) -> np.ndarray:
    return np.array([int.from_bytes(hashlib.sha1(str(i).encode()).digest()[:8], "big") >> 1 for i in ids],
                    dtype=np.int64)


def top_k(values: np.ndarray, k: int, table: pd.DataFrame, mask: np.ndarray | None = None) -> np.ndarray:
    """Row indices of the k largest values among `mask` (default: eligible rows), ties by id hash."""
    mask = eligible(table) if mask is None else mask
    candidates = np.flatnonzero(mask & ~np.isnan(values))
    order = np.lexsort((id_hash(table["id"].iloc[candidates]), -values[candidates]))
    return np.sort(candidates[order[:k]])


# ----------------------------------------------------------------------------------------------- rules

Rule = Callable[[pd.DataFrame, "float | None", int], np.ndarray]


def _k(table: pd.DataFrame, ratio: float | None) -> int:
    if ratio is None:
        raise ValueError("this method needs a ratio")
    return n_keep(int(eligible(table).sum()), ratio)


def select_grads(table, ratio, seed, cfg: SignalConfig = SignalConfig()):
    """GrADS default: the ⌈ρN⌉ examples of highest density of the combined signal (most representative)."""
    _, dens, _ = density(table, cfg)
    return top_k(dens, _k(table, ratio), table)


def select_grads_high(table, ratio, seed, cfg: SignalConfig = SignalConfig()):
    """Ablation: largest combined signal."""
    return top_k(combined_signal(table, cfg.signal), _k(table, ratio), table)


def select_grads_low(table, ratio, seed, cfg: SignalConfig = SignalConfig()):
    """Ablation: smallest combined signal."""
    return top_k(-combined_signal(table, cfg.signal), _k(table, ratio), table)


def select_grads_tails(table, ratio, seed, cfg: SignalConfig = SignalConfig()):
    """Variant (the other density direction): the ⌈ρN⌉ examples of *lowest* density, the rare ends of s."""
    _, dens, _ = density(table, cfg)
    return top_k(-dens, _k(table, ratio), table)


def select_emb_only(table, ratio, seed, cfg: SignalConfig = SignalConfig()):
    """Ablation: density of the embedding norm alone."""
    return select_grads(table, ratio, seed, SignalConfig("emb", cfg.bandwidth, cfg.bandwidth_scale, cfg.kde_method))


def select_head_only(table, ratio, seed, cfg: SignalConfig = SignalConfig()):
    """Ablation: density of the LM-head norm alone."""
    return select_grads(table, ratio, seed, SignalConfig("head", cfg.bandwidth, cfg.bandwidth_scale,
                                                         cfg.kde_method))


def knee_index(sorted_desc: np.ndarray) -> int:
    """Kneedle: the point of the descending curve farthest from the chord joining its first and last points."""
    n = len(sorted_desc)
    if n < 3 or sorted_desc[0] == sorted_desc[-1]:
        return n
    x = np.linspace(0, 1, n)
    y = (sorted_desc - sorted_desc[-1]) / (sorted_desc[0] - sorted_desc[-1])
    return int(np.argmax(np.abs(y - (1 - x)))) + 1


def auto_ratio(table: pd.DataFrame, cfg: SignalConfig = SignalConfig()) -> tuple[float, str]:
    """The self-adaptive budget: keep the examples above the knee of the sorted density curve."""
    _, dens, _ = density(table, cfg)
    ok = dens[~np.isnan(dens)]
    if len(ok) == 0:
        return 1.0, "no eligible example"
    curve = np.sort(ok)[::-1]
    k = max(1, knee_index(curve))
    level = float(curve[k - 1])
    return k / len(ok), (f"knee of the sorted density curve: density >= {level:.4g} "
                         f"keeps {k} of {len(ok)} eligible examples")


def select_grads_auto(table, ratio, seed, cfg: SignalConfig = SignalConfig()):
    """GrADS with a self-chosen budget (the ratio argument is ignored; see auto_ratio)."""
    chosen, _ = auto_ratio(table, cfg)
    return select_grads(table, chosen, seed, cfg)


def select_random(table, ratio, seed, cfg: SignalConfig | None = None):
    """Baseline: a seeded random subset (a smaller ratio is a prefix of a larger one for the same seed)."""
    candidates = np.flatnonzero(eligible(table))
    order = np.random.default_rng(seed).permutation(len(candidates))
    return np.sort(candidates[order[:_k(table, ratio)]])


def select_full(table, ratio, seed, cfg: SignalConfig | None = None):
    """Baseline: the whole pool, every row."""
    return np.arange(len(table))


def select_length(table, ratio, seed, cfg: SignalConfig | None = None):
    """Baseline: the longest answers (most target tokens)."""
    return top_k(table["n_target_tokens"].to_numpy().astype(float), _k(table, ratio), table)


def select_loss(table, ratio, seed, cfg: SignalConfig | None = None):
    """Baseline: the highest answer loss at the scoring model (θ0, or θ1 after a warm-up)."""
    return top_k(table["loss"].to_numpy(), _k(table, ratio), table)


def ifd_scores(table: pd.DataFrame) -> np.ndarray:
    """Instruction-following difficulty: loss(answer | prompt) / loss(answer alone)."""
    return table["loss"].to_numpy() / table["answer_only_loss"].to_numpy()


def select_ifd(table, ratio, seed, cfg: SignalConfig | None = None):
    """Baseline (Cherry LLM): highest IFD among examples with IFD < 1 (the prompt helps); may keep fewer."""
    if "answer_only_loss" not in table:
        raise ValueError("ifd needs the answer_only_loss column (grads select computes it when ifd is asked)")
    ifd = ifd_scores(table)
    return top_k(ifd, _k(table, ratio), table, eligible(table) & (ifd < 1))


def total_grad_norm(table: pd.DataFrame) -> np.ndarray:
    """Norm of the gradient of E and W together (the shared tensor's total for tied weights)."""
    a, b = table["emb_grad_norm"].to_numpy(), table["head_grad_norm"].to_numpy()
    tied = table["tied_grad_norm"].to_numpy() if "tied_grad_norm" in table else np.full(len(table), np.nan)
    return np.where(np.isnan(tied), np.sqrt(a * a + b * b), tied)


def select_gradnorm(table, ratio, seed, cfg: SignalConfig | None = None):
    """Baseline: the largest total per-example gradient norm (embedding + head)."""
    return top_k(total_grad_norm(table), _k(table, ratio), table)


RULES: dict[str, Callable[..., np.ndarray]] = {
    "grads": select_grads,
    "grads-auto": select_grads_auto,
    "grads-high": select_grads_high,
    "grads-low": select_grads_low,
    "grads-tails": select_grads_tails,
    "emb-only": select_emb_only,
    "head-only": select_head_only,
    "random": select_random,
    "full": select_full,
    "length": select_length,
    "loss": select_loss,
    "ifd": select_ifd,
    "gradnorm": select_gradnorm,
}
RATIO_FREE = {"full", "grads-auto"}  # methods whose output does not depend on --ratio
SIGNAL_AWARE = {"grads", "grads-auto", "grads-high", "grads-low", "grads-tails", "emb-only", "head-only"}


def select(table: pd.DataFrame, method: str, ratio: float | None, seed: int = 0,
           cfg: SignalConfig = SignalConfig()) -> np.ndarray:
    if method not in RULES:
        raise ValueError(f"unknown method {method!r}: use one of {', '.join(RULES)}")
    if method in SIGNAL_AWARE:
        return RULES[method](table, ratio, seed, cfg)
    return RULES[method](table, ratio, seed)

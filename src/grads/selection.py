"""Selection rules and combined signals: pure functions of the score table, and the one registry of each.

The table is a pandas DataFrame with the columns of `grads score` (id, row, n_target_tokens, loss,
emb_grad_norm, head_grad_norm, tied_grad_norm, status) and any extra column a rule declares (`ifd` needs
`answer_only_loss`). Only rows whose status is "ok" are eligible (except for `full`, the whole pool). A ratio ρ
keeps ⌈ρ·N⌉ of the N eligible rows. Ties are broken by a stable hash of the example id, so results never depend
on input order or chance.

RULES and SIGNALS are the only lists of method and signal names: the select stage, the report, the CLI's help,
the experiment runner and config validation all read them. Adding a rule is one function and one entry.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

from grads.config import DEFAULT_SIGNAL, SignalConfig
from grads.errors import GradsError
from grads.kde import gaussian_kde


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


DEFAULTS = SignalConfig()

# --------------------------------------------------------------------------------------------- signals


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
    if signal not in SIGNALS:
        raise ValueError(f"unknown signal {signal!r}: use one of {', '.join(SIGNALS)}")
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


def density(table: pd.DataFrame, cfg: SignalConfig = DEFAULTS) -> tuple[np.ndarray, np.ndarray, float]:
    """(signal, KDE density of the signal at each row, bandwidth); NaN where not eligible."""
    s = combined_signal(table, cfg.signal)
    ok = ~np.isnan(s)
    dens = np.full(len(table), np.nan)
    h = float("nan")
    if ok.any():
        dens[ok], h = gaussian_kde(s[ok], cfg.bandwidth_rule, cfg.bandwidth_scale, cfg.kde)
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
# Every rule has the signature (table, ratio, seed, cfg) -> sorted row indices.


def _k(table: pd.DataFrame, ratio: float | None) -> int:
    if ratio is None:
        raise ValueError("this method needs a ratio")
    return n_keep(int(eligible(table).sum()), ratio)


def select_grads(table, ratio, seed, cfg: SignalConfig = DEFAULTS):
    """GrADS default: the ⌈ρN⌉ examples of highest density of the combined signal (most representative)."""
    _, dens, _ = density(table, cfg)
    return top_k(dens, _k(table, ratio), table)


def select_grads_high(table, ratio, seed, cfg: SignalConfig = DEFAULTS):
    """Ablation: largest combined signal."""
    return top_k(combined_signal(table, cfg.signal), _k(table, ratio), table)


def select_grads_low(table, ratio, seed, cfg: SignalConfig = DEFAULTS):
    """Ablation: smallest combined signal."""
    return top_k(-combined_signal(table, cfg.signal), _k(table, ratio), table)


def select_grads_tails(table, ratio, seed, cfg: SignalConfig = DEFAULTS):
    """Variant (the other density direction): the ⌈ρN⌉ examples of *lowest* density, the rare ends of s."""
    _, dens, _ = density(table, cfg)
    return top_k(-dens, _k(table, ratio), table)


def knee_index(sorted_desc: np.ndarray) -> int:
    """Kneedle: the point of the descending curve farthest from the chord joining its first and last points."""
    # Written here rather than taken from `kneed`: kneed 0.9 keeps the first thresholded local maximum of the same
    # difference curve, which on these step-like density curves lands at k = 1 (convex) or k ≈ n − 30 (concave);
    # the global maximum is the knee (measured on the committed score tables, docs/method.md §4).
    n = len(sorted_desc)
    if n < 3 or sorted_desc[0] == sorted_desc[-1]:
        return n
    x = np.linspace(0, 1, n)
    y = (sorted_desc - sorted_desc[-1]) / (sorted_desc[0] - sorted_desc[-1])
    return int(np.argmax(np.abs(y - (1 - x)))) + 1


def auto_ratio(table: pd.DataFrame, cfg: SignalConfig = DEFAULTS) -> tuple[float, str]:
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


def select_grads_auto(table, ratio, seed, cfg: SignalConfig = DEFAULTS):
    """GrADS with a self-chosen budget (the ratio argument is ignored; see auto_ratio)."""
    chosen, _ = auto_ratio(table, cfg)
    return select_grads(table, chosen, seed, cfg)


def select_random(table, ratio, seed, cfg=None):
    """Baseline: a seeded random subset (a smaller ratio is a prefix of a larger one for the same seed)."""
    candidates = np.flatnonzero(eligible(table))
    order = np.random.default_rng(seed).permutation(len(candidates))
    return np.sort(candidates[order[:_k(table, ratio)]])


def select_random_tokens(table, ratio, seed, cfg: SignalConfig = DEFAULTS):
    """Baseline (token-matched): random examples, in the seeded order of `random`, until they carry as many answer
    tokens as the `grads` subset of this ratio (the prefix whose total is closest): a gain over it comes from which
    examples were chosen, not from how much answer text they hold."""
    n_target = table["n_target_tokens"].to_numpy()
    target = int(n_target[select_grads(table, ratio, seed, cfg)].sum())
    candidates = np.flatnonzero(eligible(table))
    order = candidates[np.random.default_rng(seed).permutation(len(candidates))]
    totals = np.cumsum(n_target[order])
    k = int(np.searchsorted(totals, target)) + 1  # the shortest prefix reaching the target
    if k > 1 and (k > len(order) or target - totals[k - 2] <= totals[k - 1] - target):
        k -= 1  # one example fewer is as close or closer
    return np.sort(order[:k])


def select_full(table, ratio, seed, cfg=None):
    """Baseline: the whole pool, every row."""
    return np.arange(len(table))


def select_length(table, ratio, seed, cfg=None):
    """Baseline: the longest answers (most target tokens)."""
    return top_k(table["n_target_tokens"].to_numpy().astype(float), _k(table, ratio), table)


def select_loss(table, ratio, seed, cfg=None):
    """Baseline: the highest answer loss at the scoring model (θ0, or θ1 after a warm-up)."""
    return top_k(table["loss"].to_numpy(), _k(table, ratio), table)


def ifd_scores(table: pd.DataFrame) -> np.ndarray:
    """Instruction-following difficulty: loss(answer | prompt) / loss(answer alone)."""
    return table["loss"].to_numpy() / table["answer_only_loss"].to_numpy()


def select_ifd(table, ratio, seed, cfg=None):
    """Baseline (Cherry LLM): highest IFD among examples with IFD < 1 (the prompt helps); may keep fewer."""
    ifd = ifd_scores(table)
    return top_k(ifd, _k(table, ratio), table, eligible(table) & (ifd < 1))


def total_grad_norm(table: pd.DataFrame) -> np.ndarray:
    """Norm of the gradient of E and W together (the shared tensor's total for tied weights)."""
    a, b = table["emb_grad_norm"].to_numpy(), table["head_grad_norm"].to_numpy()
    tied = table["tied_grad_norm"].to_numpy() if "tied_grad_norm" in table else np.full(len(table), np.nan)
    return np.where(np.isnan(tied), np.sqrt(a * a + b * b), tied)


def select_gradnorm(table, ratio, seed, cfg=None):
    """Baseline: the largest total per-example gradient norm (embedding + head)."""
    return top_k(total_grad_norm(table), _k(table, ratio), table)


# ---------------------------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class Rule:
    """One selection method: its function and what it reads."""

    select: Callable[..., np.ndarray]
    description: str
    reads: Literal["density", "signal", None] = None  # which view of the combined signal it ranks by
    keeps: Literal["high", "low", None] = None  # which end of `reads` it keeps (the report shades that region)
    takes_ratio: bool = True  # False: the rule chooses its own budget (one output per run, no ratio)
    signal: str | None = None  # a fixed signal instead of the configured one
    columns: tuple[str, ...] = ()  # score columns it needs beyond grads score's (computed by the select stage)


RULES: dict[str, Rule] = {
    "grads": Rule(select_grads, "highest density of the combined signal: the most representative (GrADS)",
                  "density", "high"),
    "grads-auto": Rule(select_grads_auto, "grads with the budget at the knee of the sorted density curve",
                       "density", "high", takes_ratio=False),
    "grads-high": Rule(select_grads_high, "largest combined signal (ablation)", "signal", "high"),
    "grads-low": Rule(select_grads_low, "smallest combined signal (ablation)", "signal", "low"),
    "grads-tails": Rule(select_grads_tails, "lowest density: the rare ends of the signal (variant)", "density",
                        "low"),
    "emb-only": Rule(select_grads, "density of the embedding norm alone (ablation)", "density", "high",
                     signal="emb"),
    "head-only": Rule(select_grads, "density of the LM-head norm alone (ablation)", "density", "high",
                      signal="head"),
    "random": Rule(select_random, "a seeded random subset (baseline)"),
    "random-tokens": Rule(select_random_tokens, "random examples carrying as many answer tokens as the grads subset "
                          "(token-matched baseline)"),
    "full": Rule(select_full, "the whole pool, every row (baseline)", takes_ratio=False),
    "length": Rule(select_length, "the longest answers (baseline)"),
    "loss": Rule(select_loss, "the highest answer loss at the scoring model (baseline)"),
    "ifd": Rule(select_ifd, "highest instruction-following difficulty below 1 (Cherry LLM baseline)",
                columns=("answer_only_loss",)),
    "gradnorm": Rule(select_gradnorm, "the largest total gradient norm, embedding + head (baseline)"),
}


def check_methods(names) -> None:
    unknown = [m for m in names if m not in RULES]
    if unknown:
        raise GradsError(f"unknown method(s) {', '.join(unknown)}", hint=f"use: {', '.join(RULES)}")


def check_ratios(ratios) -> None:
    bad = [r for r in ratios if not 0 < r <= 1]
    if bad:
        raise GradsError(f"--ratio must be in (0, 1], got {bad[0]}", hint="e.g. --ratio 0.05 --ratio 0.5")


def output_name(method: str, ratio: float | None) -> str:
    """The file a selection is written to: '<method>-<ratio>.jsonl', or '<method>.jsonl' without a ratio."""
    return f"{method}.jsonl" if not RULES[method].takes_ratio else f"{method}-{ratio:g}.jsonl"


def select(table: pd.DataFrame, method: str, ratio: float | None, seed: int = 0,
           cfg: SignalConfig = DEFAULTS) -> np.ndarray:
    if method not in RULES:
        raise ValueError(f"unknown method {method!r}: use one of {', '.join(RULES)}")
    rule = RULES[method]
    missing = [c for c in rule.columns if c not in table]
    if missing:
        raise ValueError(f"{method} needs the column(s) {', '.join(missing)} (grads select computes them when "
                         f"{method} is asked)")
    if rule.signal:
        cfg = cfg.model_copy(update={"signal": rule.signal})
    return rule.select(table, ratio, seed, cfg)

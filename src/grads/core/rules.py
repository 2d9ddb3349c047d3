"""Selection rules: pure functions of the score table, `(table, ratio, seed, spec) -> sorted row indices`.

The table is a pandas DataFrame with the columns of `grads score` (id, row, n_target_tokens, loss,
emb_grad_norm, head_grad_norm, tied_grad_norm, status) and any extra column a rule declares (`ifd` needs
`answer_only_loss`). Only rows whose status is "ok" are eligible (except for `full`, the whole pool). A ratio ρ
keeps ⌈ρ·N⌉ of the N eligible rows. Ties are broken by a stable hash of the example id, so results never depend
on input order or chance.

RULES (here) and SIGNALS (grads.core.signals) are the only lists of method and signal names: the select stage,
the report, the CLI's help, the experiment runner and config validation all read them. Adding a rule is one
function and one entry.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

if TYPE_CHECKING:  # tables are pandas DataFrames; pandas itself is not needed to read them
    import pandas as pd

from grads.core.signals import DensitySpec, combined_signal, density, eligible
from grads.errors import GradsError

DEFAULTS = DensitySpec()


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


def _k(table: pd.DataFrame, ratio: float | None) -> int:
    if ratio is None:
        raise ValueError("this method needs a ratio")
    return n_keep(int(eligible(table).sum()), ratio)


def select_grads(table, ratio, seed, cfg: DensitySpec = DEFAULTS):
    """GrADS default: the ⌈ρN⌉ examples of highest density of the combined signal (most representative)."""
    _, dens, _ = density(table, cfg)
    return top_k(dens, _k(table, ratio), table)


def select_grads_high(table, ratio, seed, cfg: DensitySpec = DEFAULTS):
    """Ablation: largest combined signal."""
    return top_k(combined_signal(table, cfg.signal), _k(table, ratio), table)


def select_grads_low(table, ratio, seed, cfg: DensitySpec = DEFAULTS):
    """Ablation: smallest combined signal."""
    return top_k(-combined_signal(table, cfg.signal), _k(table, ratio), table)


def select_grads_tails(table, ratio, seed, cfg: DensitySpec = DEFAULTS):
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


def auto_ratio(table: pd.DataFrame, cfg: DensitySpec = DEFAULTS) -> tuple[float, str]:
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


def select_grads_auto(table, ratio, seed, cfg: DensitySpec = DEFAULTS):
    """GrADS with a self-chosen budget (the ratio argument is ignored; see auto_ratio)."""
    chosen, _ = auto_ratio(table, cfg)
    return select_grads(table, chosen, seed, cfg)


def select_random(table, ratio, seed, cfg=None):
    """Baseline: a seeded random subset (a smaller ratio is a prefix of a larger one for the same seed)."""
    candidates = np.flatnonzero(eligible(table))
    order = np.random.default_rng(seed).permutation(len(candidates))
    return np.sort(candidates[order[:_k(table, ratio)]])


def select_random_tokens(table, ratio, seed, cfg: DensitySpec = DEFAULTS):
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


MATCH_WINDOW = 10  # a matched example is drawn among the candidates of the 10 answer lengths nearest its target's
MATCH_TOKEN_RTOL = 0.005  # the matched subset's answer tokens are balanced to within 0.5% of its target's


def length_window(sorted_lengths: np.ndarray, length: int, size: int) -> tuple[int, int]:
    """[lo, hi): the positions of the `size` candidates whose lengths are nearest `length` in the sorted lengths,
    widened to every candidate as near as the farthest of them (equally near candidates are equally eligible)."""
    n = len(sorted_lengths)
    size = min(size, n)
    start = int(np.searchsorted(sorted_lengths, length))
    lo = hi = start
    while hi - lo < size:  # two pointers: take the nearer neighbour, the shorter on a tie
        if hi >= n or (lo > 0 and length - sorted_lengths[lo - 1] <= sorted_lengths[hi] - length):
            lo -= 1
        else:
            hi += 1
    reach = max(length - sorted_lengths[lo], sorted_lengths[hi - 1] - length)
    return (int(np.searchsorted(sorted_lengths, length - reach, "left")),
            int(np.searchsorted(sorted_lengths, length + reach, "right")))


def length_matched(lengths: np.ndarray, candidates: np.ndarray, targets: np.ndarray, seed: int,
                   window: int = MATCH_WINDOW, token_rtol: float = MATCH_TOKEN_RTOL) -> np.ndarray:
    """Distinct candidates, one per target, each drawn at random from the target's length window: the `window`
    candidates of the nearest answer lengths (`length_window`; widened while all are taken). Then balanced: while
    the drawn answer tokens differ from the targets' by more than `token_rtol`, a drawn example is swapped for
    another of its own window that brings the totals closer (seeded order and choice). A window, not an exact
    length, so that a target whose length is unique does not leave itself as its own only match.
    Returns sorted row indices."""
    if len(targets) > len(candidates):
        raise ValueError("fewer candidates than targets: a matched draw needs at least as many")
    rng = np.random.default_rng(seed)
    order = candidates[np.lexsort((rng.random(len(candidates)), lengths[candidates]))]
    sorted_lengths = lengths[order].astype(np.int64)
    taken = np.zeros(len(order), dtype=bool)
    picks = np.empty(len(targets), dtype=np.int64)
    windows = np.empty((len(targets), 2), dtype=np.int64)
    for t in rng.permutation(len(targets)):
        size = window
        while True:
            lo, hi = length_window(sorted_lengths, int(lengths[targets[t]]), size)
            free = lo + np.flatnonzero(~taken[lo:hi])
            if len(free):
                break
            size *= 2
        picks[t] = rng.choice(free)
        taken[picks[t]] = True
        windows[t] = lo, hi
    excess = int(sorted_lengths[picks].sum()) - int(lengths[targets].sum())
    allowed = token_rtol * float(lengths[targets].sum())
    improved = True
    while abs(excess) > allowed and improved:
        improved = False
        for t in rng.permutation(len(targets)):
            lo, hi = windows[t]
            free = lo + np.flatnonzero(~taken[lo:hi])
            change = sorted_lengths[free] - sorted_lengths[picks[t]]
            better = free[np.abs(excess + change) < abs(excess)]
            if len(better):
                new = rng.choice(better)
                excess += int(sorted_lengths[new] - sorted_lengths[picks[t]])
                taken[picks[t]], taken[new], picks[t] = False, True, new
                improved = True
                if abs(excess) <= allowed:
                    break
    return np.sort(order[picks])


def chance_overlap(k_a: int, k_b: int, n: int) -> float:
    """How many examples two independent uniform random subsets of sizes k_a and k_b of n share, on average."""
    return k_a * k_b / n if n else 0.0


def overlap_record(control: np.ndarray, target: np.ndarray, n_eligible: int, lengths: np.ndarray) -> dict:
    """What a matched control shares with the subset it controls, beside chance (selection.json's `control`):
    the hypergeometric p-value of sharing that many by chance, and a warning when the control sits more than a
    quarter of the way from chance to its target (its comparison then concerns only the examples not shared)."""
    from scipy.stats import hypergeom  # here, not at import: scipy.stats takes ~1 s to load

    shared = len(np.intersect1d(control, target))
    chance = chance_overlap(len(control), len(target), n_eligible)
    p_value = float(hypergeom.sf(shared - 1, n_eligible, len(target), len(control))) if n_eligible else 1.0
    closeness = (shared - chance) / (len(target) - chance) if len(target) > chance else 0.0
    record = {"shared": shared, "n_selected": int(len(control)), "n_target": int(len(target)),
              "chance": round(chance, 3), "p_value": p_value,
              "answer_tokens": int(lengths[control].sum()), "target_answer_tokens": int(lengths[target].sum())}
    if closeness > 0.25 and p_value < 1e-3:
        record["warning"] = (f"shares {shared} of its {len(target)} examples with the subset it controls (chance: "
                             f"{chance:.1f}, p = {p_value:.2g}): the comparison concerns only the "
                             f"{len(target) - shared} it does not share")
    return record


def select_random_matched(table, ratio, seed, cfg: DensitySpec = DEFAULTS, target: str = "grads"):
    """Baseline (length-matched): as many random examples as the `target` rule's subset of this ratio, each drawn
    from the examples of the answer lengths nearest one of the subset's (`length_matched`), so the count, the
    answer tokens (within 0.5%) and the optimizer steps are the subset's: a gain over it comes from which examples
    were chosen, not how many or how long."""
    chosen = select(table, target, ratio, seed, cfg)
    return length_matched(table["n_target_tokens"].to_numpy(), np.flatnonzero(eligible(table)), chosen, seed)


def control_overlap(table: pd.DataFrame, method: str, picked: np.ndarray, ratio: float | None, seed: int = 0,
                    cfg: DensitySpec = DEFAULTS) -> dict | None:
    """For a matched control (`random-matched`, `random-matched:RULE`), its `overlap_record` with the subset it
    controls; None for any other method."""
    name, target = split_method(method)
    if not RULES[name].matches:
        return None
    chosen = select(table, target or "grads", ratio, seed, cfg)
    record = overlap_record(picked, chosen, int(eligible(table).sum()), table["n_target_tokens"].to_numpy())
    return {"of": target or "grads", **record}


LABEL = "label"  # the column a --labels run adds to the table: "clean" or the planted kind (grads.core.noise)


def select_clean(table, ratio, seed, cfg=None):
    """Oracle (planted pools only): every eligible row labelled clean, the pool minus what was planted."""
    if LABEL not in table:
        raise ValueError("clean needs the labels of a planted pool (grads select --labels labels.json)")
    return np.flatnonzero(eligible(table) & (table[LABEL] == "clean").to_numpy())


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


DEFAULT_TRIM_SHARE = 0.3  # trim:SIGNAL drops this share unless told (the pilot's share, docs/noise.md)


@dataclass(frozen=True)
class TrimSignal:
    """What a `trim:` rule drops: the rows whose `suspicion` is highest (a share of the eligible rows), or, with no
    share given and a `threshold`, every row at or above it."""

    suspicion: Callable[[pd.DataFrame, DensitySpec], np.ndarray]
    description: str
    columns: tuple[str, ...] = ()
    threshold: float | None = None


TRIM_SIGNALS: dict[str, TrimSignal] = {
    "loss": TrimSignal(lambda t, cfg: t["loss"].to_numpy(float), "the highest loss of the answer given its question"),
    "answer-only-loss": TrimSignal(lambda t, cfg: t["answer_only_loss"].to_numpy(float),
                                   "the highest loss of the answer alone, without its question",
                                   columns=("answer_only_loss",)),
    "ifd": TrimSignal(lambda t, cfg: ifd_scores(t), "IFD ≥ 1, where the question does not help (Cherry, "
                      "Superfiltering); with a share, the highest IFD", columns=("answer_only_loss",), threshold=1.0),
    "density": TrimSignal(lambda t, cfg: -density(t, cfg)[1], "the lowest density of the combined signal"),
}


def parse_trim(argument: str | None) -> tuple[str, float | None]:
    """'loss:0.3' -> ('loss', 0.3); 'ifd' -> ('ifd', None). Raises ValueError on an unknown signal or a share
    outside (0, 1)."""
    signal, _, share = (argument or "").partition(MATCH)
    if signal not in TRIM_SIGNALS:
        raise ValueError(f"unknown trim signal {signal!r}: use {', '.join(TRIM_SIGNALS)}")
    if not share:
        return signal, None
    q = float(share)
    if not 0 < q < 1:
        raise ValueError(f"a trim share must be in (0, 1), got {share}")
    return signal, q


def trim_flags(table: pd.DataFrame, argument: str, cfg: DensitySpec = DEFAULTS) -> np.ndarray:
    """The eligible rows `trim:argument` drops (a boolean mask): the share q with the highest suspicion (ties by
    id hash), or every row at or above the signal's threshold when no share is given and it has one (else the
    default share)."""
    signal, share = parse_trim(argument)
    spec = TRIM_SIGNALS[signal]
    suspicion = spec.suspicion(table, cfg)
    ok = eligible(table)
    flags = np.zeros(len(table), dtype=bool)
    if share is None and spec.threshold is not None:
        flags[ok & (suspicion >= spec.threshold)] = True
        return flags
    q = DEFAULT_TRIM_SHARE if share is None else share
    flags[top_k(suspicion, n_keep(int(ok.sum()), q), table)] = True
    return flags


def select_trim(table, ratio, seed, cfg: DensitySpec = DEFAULTS, argument: str = "loss"):
    """Filter, then draw: drop what `trim_flags` flags, then ⌈ρN⌉ of the rest at random (N: the eligible rows;
    fewer when fewer are left), in the seeded order of `random`."""
    candidates = np.flatnonzero(eligible(table) & ~trim_flags(table, argument, cfg))
    order = np.random.default_rng(seed).permutation(len(candidates))
    return np.sort(candidates[order[:_k(table, ratio)]])


@dataclass(frozen=True)
class Rule:
    """One selection method: its function and what it reads."""

    select: Callable[..., np.ndarray]
    description: str
    reads: Literal["density", "signal", None] = None  # which view of the combined signal it ranks by
    keeps: Literal["high", "low", None] = None  # which end of `reads` it keeps (the report shades that region)
    takes_ratio: bool = True  # False: the rule chooses its own budget (one output per run, no ratio)
    signal: str | None = None  # a fixed signal instead of the configured one
    # a rule that chooses its own budget: (table, spec) -> (the ratio it keeps, how it chose), for selection.json
    budget: Callable[[pd.DataFrame, DensitySpec], tuple[float, str]] | None = None
    columns: tuple[str, ...] = ()  # score columns it needs beyond grads score's (computed by the select stage)
    # what follows NAME: in a method name: "rule" for a control matched to another rule's subset (`NAME:RULE`;
    # NAME alone: RULE is grads), "trim" for a trim signal and share (`trim:SIGNAL[:q]`), None: nothing
    argument: Literal["rule", "trim", None] = None

    @property
    def matches(self) -> bool:
        return self.argument == "rule"


RULES: dict[str, Rule] = {
    "grads": Rule(select_grads, "highest density of the combined signal: the most representative (GrADS)",
                  "density", "high"),
    "grads-auto": Rule(select_grads_auto, "grads with the budget at the knee of the sorted density curve",
                       "density", "high", takes_ratio=False, budget=auto_ratio),
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
    "random-matched": Rule(select_random_matched, "random examples of the grads subset's count and answer lengths, "
                           "or of RULE's with random-matched:RULE (length-matched baseline)", argument="rule"),
    "full": Rule(select_full, "the whole pool, every row (baseline)", takes_ratio=False),
    "clean": Rule(select_clean, "every record labelled clean: the pool minus the planted ones (oracle; needs "
                  "--labels)", takes_ratio=False),
    "length": Rule(select_length, "the longest answers (baseline)"),
    "loss": Rule(select_loss, "the highest answer loss at the scoring model (baseline)"),
    "ifd": Rule(select_ifd, "highest instruction-following difficulty below 1 (Cherry LLM baseline)",
                columns=("answer_only_loss",)),
    "gradnorm": Rule(select_gradnorm, "the largest total gradient norm, embedding + head (baseline)"),
    "trim": Rule(select_trim, "trim:SIGNAL[:q]: drop the share q a signal flags (SIGNAL: "
                 f"{', '.join(TRIM_SIGNALS)}; q default {DEFAULT_TRIM_SHARE}, ifd without q: IFD ≥ 1), then a random "
                 "draw from the rest (noise filter)", argument="trim"),
}


MATCH = ":"  # random-matched:length is random-matched matched to the `length` rule's subset


def split_method(method: str) -> tuple[str, str | None]:
    """'random-matched:length' -> ('random-matched', 'length'); 'grads' -> ('grads', None)."""
    name, _, target = method.partition(MATCH)
    return name, target or None


def rule_of(method: str) -> Rule:
    """The rule of a method name (a matched control's own rule, whatever it is matched to)."""
    return RULES[split_method(method)[0]]


def _known(method: str) -> bool:
    name, argument = split_method(method)
    if name not in RULES:
        return False
    rule = RULES[name]
    if rule.argument == "trim":
        try:
            parse_trim(argument)
        except ValueError:
            return False
        return True
    if argument is None:
        return True
    if not rule.matches:
        return False
    return _known(argument) and RULES[split_method(argument)[0]].takes_ratio and not rule_of(argument).matches


def columns_of(method: str) -> tuple[str, ...]:
    """The score columns beyond grads score's that a method needs (its own, its trim signal's, its target's)."""
    name, argument = split_method(method)
    rule = RULES[name]
    extra = TRIM_SIGNALS[parse_trim(argument)[0]].columns if rule.argument == "trim" else \
        columns_of(argument) if rule.matches and argument else ()
    return tuple(dict.fromkeys(rule.columns + extra))


def check_methods(names) -> None:
    unknown = [m for m in names if not _known(m)]
    if unknown:
        raise GradsError(f"unknown method(s) {', '.join(unknown)}",
                         hint=f"use: {', '.join(RULES)}; a matched control as NAME{MATCH}RULE, e.g. "
                              f"random-matched{MATCH}length; a filter as trim{MATCH}SIGNAL[{MATCH}q] with SIGNAL one "
                              f"of {', '.join(TRIM_SIGNALS)} and q in (0, 1), e.g. trim{MATCH}loss{MATCH}0.3")


def check_ratios(ratios) -> None:
    bad = [r for r in ratios if not 0 < r <= 1]
    if bad:
        raise GradsError(f"a ratio must be in (0, 1], got {bad[0]}", hint="e.g. 0.05 keeps 5% of the eligible examples")


def output_name(method: str, ratio: float | None) -> str:
    """The file a selection is written to: '<method>-<ratio>.jsonl', or '<method>.jsonl' without a ratio."""
    return f"{method}.jsonl" if not rule_of(method).takes_ratio else f"{method}-{ratio:g}.jsonl"


def select(table: pd.DataFrame, method: str, ratio: float | None, seed: int = 0,
           cfg: DensitySpec = DEFAULTS) -> np.ndarray:
    check_methods([method])
    name, argument = split_method(method)
    rule = RULES[name]
    missing = [c for c in columns_of(method) if c not in table]
    if missing:
        raise ValueError(f"{method} needs the column(s) {', '.join(missing)} (grads select computes them when "
                         f"{method} is asked)")
    if rule.signal:
        cfg = dataclasses.replace(cfg, signal=rule.signal)
    return rule.select(table, ratio, seed, cfg, argument) if argument else rule.select(table, ratio, seed, cfg)

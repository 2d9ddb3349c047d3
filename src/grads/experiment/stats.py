"""What an experiment's runs say: each run's figures against the base model, their mean ± std over seeds, and
seed-paired differences between methods with a 95% confidence interval (docs/method.md "Measuring").

Figures of a run (base = the base model's evaluation, same items):
    G_bpb = mean over the held-out answer files of (base bpb − run bpb)       > 0: learned the domain
    F_bpb = mean over general tasks with a bpb of (run bpb − base bpb)        > 0: forgot (primary, as registered);
            held-out files of other domains (`general_heldout`) count as general tasks here, not in G_bpb
    F_bpb_bytes = the same weighted by each task's gold bytes: the pooled bits per byte of all their gold
            answers, in which a task counts by its text (secondary: a large task outweighs a small one)
    G     = mean over domain tasks of (run accuracy − base accuracy)          (G_acc; rotated letter questions)
    F     = mean over general tasks with an accuracy of (base − run accuracy) (F_acc)
    G_val = G on the validation tasks (the figure variants are chosen on)
    Q_bpb = mean over the held-out answer files of G_bpb of (run − base question_use_bpb)   > 0: uses the question
            more (question_use_bpb = bpb of the answers under other examples' questions − under their own:
            grads.eval.heldout); NaN for runs evaluated before it existed
A paired difference is taken between two runs of the same seed (and ratio; `full` has none); over n seeds its
95% interval is mean ± t(0.975, n−1)·sd/√n, and a difference whose interval holds 0 is "not distinguishable".
Many comparisons read together are corrected by Holm's step-down rule on the paired t tests' p-values (`holm`).
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

from scipy.stats import t as student_t

FIGURES = ("G", "F", "G_val", "G_bpb", "F_bpb", "F_bpb_bytes", "Q_bpb")
LABELS = {"G": "G_acc", "F": "F_acc", "G_val": "G_val", "G_bpb": "G_bpb", "F_bpb": "F_bpb",
          "F_bpb_bytes": "F_bpb_bytes", "Q_bpb": "Q_bpb"}
# figures added after experiments were run: a summary lists one only where some run measures it, so that the
# summaries of runs evaluated before it existed read exactly as they did
ADDED_FIGURES = ("Q_bpb",)


def _mean_change(run: dict, base: dict, names, value: str, sign: int) -> float:
    """Mean over `names` measured in both of sign · (run − base) of `value` (NaN when none is)."""
    deltas = [sign * (run[n][value] - base[n][value]) for n in names
              if value in run.get(n, {}) and value in base.get(n, {})
              and not (math.isnan(run[n][value]) or math.isnan(base[n][value]))]
    return statistics.fmean(deltas) if deltas else math.nan


def _bytes_weighted_change(run: dict, base: dict, names) -> float:
    """Σ_t bytes_t · (run bpb_t − base bpb_t) / Σ_t bytes_t over `names` with a bpb and gold bytes in both (the
    same items, so the same bytes): the change of the pooled bits per byte (NaN when none has them)."""
    pairs = [(base[n]["gold_bytes"], run[n]["bpb"] - base[n]["bpb"]) for n in names
             if "bpb" in run.get(n, {}) and base.get(n, {}).get("gold_bytes")
             and not (math.isnan(run[n]["bpb"]) or math.isnan(base[n]["bpb"]))]
    total = sum(w for w, _ in pairs)
    return sum(w * d for w, d in pairs) / total if total else math.nan


def task_changes(run: dict, base: dict, names) -> dict[str, float]:
    """Each task's forgetting: run − base bits per byte where the task has one, else base − run accuracy."""
    out = {}
    for name in names:
        mine, theirs = run.get(name, {}), base.get(name, {})
        key, sign = ("bpb", +1) if "bpb" in theirs else ("accuracy", -1)
        if key in mine and key in theirs:
            out[name] = sign * (mine[key] - theirs[key])
    return out


def general_names(ev) -> tuple[str, ...]:
    """What forgetting is measured on: the general tasks, then the held-out files of other domains."""
    return (*ev.general_tasks, *ev.general_heldout_names())


def general_measures(result: dict, ev) -> dict[str, dict]:
    """A run's (or the base's) tasks, with each general held-out file as one more task (its bytes as gold
    bytes), so that forgetting reads them alike."""
    names = set(ev.general_heldout_names())
    extra = {n: {**v, "gold_bytes": v.get("n_bytes")} for n, v in result.get("heldout", {}).items() if n in names}
    return {**result["tasks"], **extra}


def run_figures(run: dict, base: dict, ev) -> dict[str, float]:
    """A run's figures (module docstring) from its evaluation and the base model's; `ev`: an EvalConfig."""
    heldout, base_heldout = run.get("heldout", {}), base.get("heldout", {})
    tasks, base_tasks, general_tasks = general_measures(run, ev), general_measures(base, ev), general_names(ev)
    general = set(ev.general_heldout_names())
    domain_heldout = [n for n in base_heldout if n not in general]
    return {"G": _mean_change(tasks, base_tasks, ev.domain_tasks, "accuracy", +1),
            "F": _mean_change(tasks, base_tasks, general_tasks, "accuracy", -1),
            "G_val": _mean_change(tasks, base_tasks, ev.validation_tasks, "accuracy", +1),
            "G_bpb": _mean_change(heldout, base_heldout, domain_heldout, "bpb", -1),
            "F_bpb": _mean_change(tasks, base_tasks, general_tasks, "bpb", +1),
            "F_bpb_bytes": _bytes_weighted_change(tasks, base_tasks, general_tasks),
            "Q_bpb": _mean_change(heldout, base_heldout, domain_heldout, "question_use_bpb", +1)}


def mean_std(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def has_spread(sd: float) -> bool:
    """Whether values vary beyond floating-point rounding (differences of the same fractions can differ by 1e-17)."""
    return sd > 1e-12


def confidence_interval(values: list[float], level: float = 0.95) -> tuple[float, float]:
    """The t interval of the mean of `values`: NaN with fewer than two, and when every value is the same (a t
    interval needs a spread; a discrete measure, such as accuracy on 100 items, gives equal values over a few seeds
    by chance, and an interval of zero width would claim certainty)."""
    values = [v for v in values if not math.isnan(v)]
    if len(values) < 2:
        return math.nan, math.nan
    mean, sd = statistics.fmean(values), statistics.stdev(values)
    if not has_spread(sd):
        return math.nan, math.nan
    half = student_t.ppf(0.5 + level / 2, len(values) - 1) * sd / math.sqrt(len(values))
    return mean - half, mean + half


def detectable_difference(sd_difference: float, n_seeds: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """The smallest true mean paired difference a two-sided paired t test over `n_seeds` finds with probability
    `power` at level `alpha`, when one seed's difference has standard deviation `sd_difference`:
        (t(1 − α/2, n−1) + t(power, n−1)) · sd / √n      (the usual normal-approximation form, with t quantiles)"""
    df = n_seeds - 1
    return (student_t.ppf(1 - alpha / 2, df) + student_t.ppf(power, df)) * sd_difference / math.sqrt(n_seeds)


def paired_p_value(mean: float, sd: float, n: int) -> float:
    """Two-sided p-value of the paired t test of a mean difference over n pairs: NaN with fewer than two, and when
    every pair differs by the same amount (no spread to test against: untestable, not certain; see
    confidence_interval)."""
    if n < 2 or math.isnan(mean) or math.isnan(sd) or not has_spread(sd):
        return math.nan
    return float(2 * student_t.sf(abs(mean) / (sd / math.sqrt(n)), n - 1))


def holm(p_values: list[float], alpha: float = 0.05) -> list[bool]:
    """Holm's step-down rule: which of m hypotheses are rejected at family-wise level alpha. The i-th smallest
    p-value (i = 1..m) is compared with alpha / (m − i + 1), stopping at the first that is larger; NaN never
    rejects and does not count in m."""
    tested = sorted((p, i) for i, p in enumerate(p_values) if not math.isnan(p))
    rejected = [False] * len(p_values)
    for rank, (p, i) in enumerate(tested):
        if p > alpha / (len(tested) - rank):
            break
        rejected[i] = True
    return rejected


def _groups(results: list[dict]) -> list[tuple[tuple[str, float | None], list[dict]]]:
    groups: dict[tuple[str, float | None], list[dict]] = {}
    for r in results:
        groups.setdefault((r["method"], r["ratio"]), []).append(r)
    return sorted(groups.items(), key=lambda kv: (kv[0][1] or 1.0, kv[0][0]))


def task_value(result: dict) -> float:
    return result["accuracy"] if "accuracy" in result else result.get("bpb", math.nan)


def aggregate(results: list[dict], base: dict, ev) -> list[dict]:
    """Per method and ratio: the seeds, mean ± std of every figure, the mean answer tokens trained on, each
    task's mean accuracy (bpb for likelihood-only tasks), each general task's mean forgetting (`F:<task>`,
    task_changes) and each held-out file's mean bpb."""
    rows, base_measures, general = [], general_measures(base, ev), general_names(ev)
    for (method, ratio), runs in _groups(results):
        figures = [run_figures(r, base, ev) for r in runs]
        row = {"method": method, "ratio": ratio, "seeds": sorted(r["seed"] for r in runs),
               "answer_tokens": mean_std([float(r.get("train_answer_tokens", math.nan)) for r in runs])[0]}
        for name in FIGURES:
            row[f"{name}_mean"], row[f"{name}_std"] = mean_std([f[name] for f in figures])
        for task in ev.all_tasks():
            row[task] = mean_std([task_value(r["tasks"][task]) for r in runs if task in r["tasks"]])[0]
        changes = [task_changes(general_measures(r, ev), base_measures, general) for r in runs]
        for task in general:
            row[f"F:{task}"] = mean_std([c[task] for c in changes if task in c])[0]
        for name in base.get("heldout", {}):
            row[f"heldout:{name}"] = mean_std([r["heldout"][name]["bpb"] for r in runs
                                               if name in r.get("heldout", {})])[0]
        rows.append(row)
    return rows


def figures_by_run(results: list[dict], base: dict, ev) -> dict[tuple[str, float | None, int], dict[str, float]]:
    """Each run's figures, keyed by (method, ratio, seed)."""
    return {(r["method"], r["ratio"], r["seed"]): run_figures(r, base, ev) for r in results}


def paired(by_run: dict, arm: tuple[str, float | None], reference: tuple[str, float | None]) -> dict:
    """`arm` minus `reference` (each a (method, ratio)) over the seeds both have: n_pairs, per figure the number of
    pairs that measure it, the mean, std and 95% interval of the difference (d<figure>_n, _mean, _std, _ci95), and
    each seed's differences under "per_seed" (a figure's pairs are fewer than n_pairs where a run lacks its tasks).
    Pairing removes what a seed's two runs share (the evaluation items, the training order)."""
    per_seed = {seed: {k: mine[k] - by_run[(*reference, seed)][k] for k in FIGURES}
                for (method, ratio, seed), mine in sorted(by_run.items(), key=lambda kv: kv[0][2])
                if (method, ratio) == arm and (*reference, seed) in by_run}
    row = {"n_pairs": len(per_seed), "per_seed": per_seed}
    for name in FIGURES:
        values = [d[name] for d in per_seed.values() if not math.isnan(d[name])]
        row[f"d{name}_n"] = len(values)
        row[f"d{name}_mean"], row[f"d{name}_std"] = mean_std(values)
        row[f"d{name}_ci95"] = confidence_interval(values)
    return row


def paired_differences(results: list[dict], base: dict, ev, reference: str = "random") -> list[dict]:
    """Each method against `reference` run with the same seed and ratio (`full` has no ratio): `paired`'s row
    with the method, ratio and reference."""
    by_run = figures_by_run(results, base, ev)
    arms = {(method, ratio) for method, ratio, _ in by_run
            if method != reference and (ratio is not None or reference == "full")}
    rows = []
    for method, ratio in sorted(arms, key=lambda arm: (arm[1] or 1.0, arm[0])):
        row = paired(by_run, (method, ratio), (reference, None if reference == "full" else ratio))
        if row["n_pairs"]:
            rows.append({"method": method, "ratio": ratio, "reference": reference, **row})
    return rows


def load_runs(out: Path) -> list[dict]:
    """Every finished fine-tune's results.json under OUT/runs (the base model's evaluation is not a run)."""
    return [json.loads(p.read_text()) for p in sorted((out / "runs").glob("*/results.json"))
            if p.parent.name != "base"]

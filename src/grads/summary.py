"""What an experiment's runs say: each run's figures against the base model, their mean ± std over seeds, and
seed-paired differences between methods with a 95% confidence interval (docs/method.md "Measuring").

Figures of a run (base = the base model's evaluation, same items):
    G_bpb = mean over the held-out answer files of (base bpb − run bpb)       > 0: learned the domain
    F_bpb = mean over general tasks with a bpb of (run bpb − base bpb)        > 0: forgot
    G     = mean over domain tasks of (run accuracy − base accuracy)          (G_acc; rotated letter questions)
    F     = mean over general tasks with an accuracy of (base − run accuracy) (F_acc)
    G_val = G on the validation tasks (the figure variants are chosen on)
A paired difference is taken between two runs of the same seed (and ratio; `full` has none); over n seeds its
95% interval is mean ± t(0.975, n−1)·sd/√n, and a difference whose interval holds 0 is "not distinguishable".
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from pathlib import Path

from scipy.stats import t as student_t

from grads import atomic

FIGURES = ("G", "F", "G_val", "G_bpb", "F_bpb")
LABELS = {"G": "G_acc", "F": "F_acc", "G_val": "G_val", "G_bpb": "G_bpb", "F_bpb": "F_bpb"}


def _mean_change(run: dict, base: dict, names, value: str, sign: int) -> float:
    """Mean over `names` measured in both of sign · (run − base) of `value` (NaN when none is)."""
    deltas = [sign * (run[n][value] - base[n][value]) for n in names
              if value in run.get(n, {}) and value in base.get(n, {})
              and not (math.isnan(run[n][value]) or math.isnan(base[n][value]))]
    return statistics.fmean(deltas) if deltas else math.nan


def run_figures(run: dict, base: dict, ev) -> dict[str, float]:
    """A run's figures (module docstring) from its evaluation and the base model's; `ev`: an EvalConfig."""
    tasks, base_tasks = run["tasks"], base["tasks"]
    heldout, base_heldout = run.get("heldout", {}), base.get("heldout", {})
    return {"G": _mean_change(tasks, base_tasks, ev.domain_tasks, "accuracy", +1),
            "F": _mean_change(tasks, base_tasks, ev.general_tasks, "accuracy", -1),
            "G_val": _mean_change(tasks, base_tasks, ev.validation_tasks, "accuracy", +1),
            "G_bpb": _mean_change(heldout, base_heldout, list(base_heldout), "bpb", -1),
            "F_bpb": _mean_change(tasks, base_tasks, ev.general_tasks, "bpb", +1)}


def mean_std(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def confidence_interval(values: list[float], level: float = 0.95) -> tuple[float, float]:
    """The t interval of the mean of `values` (NaN with fewer than two)."""
    values = [v for v in values if not math.isnan(v)]
    if len(values) < 2:
        return math.nan, math.nan
    mean, sd = statistics.fmean(values), statistics.stdev(values)
    half = student_t.ppf(0.5 + level / 2, len(values) - 1) * sd / math.sqrt(len(values))
    return mean - half, mean + half


def detectable_difference(sd_difference: float, n_seeds: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """The smallest true mean paired difference a two-sided paired t test over `n_seeds` finds with probability
    `power` at level `alpha`, when one seed's difference has standard deviation `sd_difference`:
        (t(1 − α/2, n−1) + t(power, n−1)) · sd / √n      (the usual normal-approximation form, with t quantiles)"""
    df = n_seeds - 1
    return (student_t.ppf(1 - alpha / 2, df) + student_t.ppf(power, df)) * sd_difference / math.sqrt(n_seeds)


def _groups(results: list[dict]) -> list[tuple[tuple[str, float | None], list[dict]]]:
    groups: dict[tuple[str, float | None], list[dict]] = {}
    for r in results:
        groups.setdefault((r["method"], r["ratio"]), []).append(r)
    return sorted(groups.items(), key=lambda kv: (kv[0][1] or 1.0, kv[0][0]))


def _task_value(result: dict) -> float:
    return result["accuracy"] if "accuracy" in result else result.get("bpb", math.nan)


def aggregate(results: list[dict], base: dict, ev) -> list[dict]:
    """Per method and ratio: the seeds, mean ± std of every figure, the mean answer tokens trained on, and each
    task's mean accuracy (bpb for likelihood-only tasks) and each held-out file's mean bpb."""
    rows = []
    for (method, ratio), runs in _groups(results):
        figures = [run_figures(r, base, ev) for r in runs]
        row = {"method": method, "ratio": ratio, "seeds": sorted(r["seed"] for r in runs),
               "answer_tokens": mean_std([float(r.get("train_answer_tokens", math.nan)) for r in runs])[0]}
        for name in FIGURES:
            row[f"{name}_mean"], row[f"{name}_std"] = mean_std([f[name] for f in figures])
        for task in ev.all_tasks():
            row[task] = mean_std([_task_value(r["tasks"][task]) for r in runs if task in r["tasks"]])[0]
        for name in base.get("heldout", {}):
            row[f"heldout:{name}"] = mean_std([r["heldout"][name]["bpb"] for r in runs
                                               if name in r.get("heldout", {})])[0]
        rows.append(row)
    return rows


def figures_by_run(results: list[dict], base: dict, ev) -> dict[tuple[str, float | None, int], dict[str, float]]:
    """Each run's figures, keyed by (method, ratio, seed)."""
    return {(r["method"], r["ratio"], r["seed"]): run_figures(r, base, ev) for r in results}


def paired(by_run: dict, arm: tuple[str, float | None], reference: tuple[str, float | None]) -> dict:
    """`arm` minus `reference` (each a (method, ratio)) over the seeds both have: n_pairs, per figure the mean,
    std and 95% interval of the difference (d<figure>_mean, _std, _ci95), and each seed's differences under
    "per_seed". Pairing removes what a seed's two runs share (the evaluation items, the training order)."""
    per_seed = {seed: {k: mine[k] - by_run[(*reference, seed)][k] for k in FIGURES}
                for (method, ratio, seed), mine in sorted(by_run.items(), key=lambda kv: kv[0][2])
                if (method, ratio) == arm and (*reference, seed) in by_run}
    row = {"n_pairs": len(per_seed), "per_seed": per_seed}
    for name in FIGURES:
        values = [d[name] for d in per_seed.values()]
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


def format_ratio(ratio: float | None, method: str) -> str:
    """A ratio for a table: '0.05', '1 (full)' for the full pool, 'auto' for a budget the method chose."""
    if ratio is None:
        return "1 (full)" if method == "full" else "auto"
    return f"{ratio:g}"


def pm(mean: float, std: float | None = None, digits: int = 3) -> str:
    """'+0.012 ± 0.004', or '–' for a figure this experiment does not measure (no such tasks)."""
    if math.isnan(mean):
        return "–"
    return f"{mean:+.{digits}f}" if std is None else f"{mean:+.{digits}f} ± {std:.{digits}f}"


def with_interval(row: dict, name: str, digits: int = 3) -> str:
    """'+0.012 [+0.004, +0.020]', marked 'not distinguishable' when the interval holds 0."""
    mean, (lo, hi) = row[f"d{name}_mean"], row[f"d{name}_ci95"]
    if math.isnan(mean):
        return "–"
    if math.isnan(lo):
        return f"{mean:+.{digits}f} (one seed)"
    text = f"{mean:+.{digits}f} [{lo:+.{digits}f}, {hi:+.{digits}f}]"
    return text + (" not distinguishable" if lo <= 0 <= hi else "")


# --------------------------------------------------------------------------------------------- the files


def _measured(rows: list[dict]) -> list[str]:
    """The figures some row measures, in FIGURES order."""
    return [n for n in FIGURES if any(not math.isnan(r[f"{n}_mean"]) for r in rows)]


def _csv(rows: list[dict], columns: list[str]) -> str:
    figures = [f"{LABELS[n]}_{s}" for n in FIGURES for s in ("mean", "std")]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["method", "ratio", "n_seeds", "answer_tokens", *figures, *columns])
    writer.writeheader()
    for row in rows:
        writer.writerow({"method": row["method"], "ratio": "" if row["ratio"] is None else row["ratio"],
                         "n_seeds": len(row["seeds"]), "answer_tokens": row["answer_tokens"],
                         **{f"{LABELS[n]}_{s}": row[f"{n}_{s}"] for n in FIGURES for s in ("mean", "std")},
                         **{c: row.get(c, math.nan) for c in columns}})
    return buffer.getvalue()


def _figures_table(rows: list[dict], measured: list[str], columns: list[str], base: dict) -> list[str]:
    """Per task its mean accuracy, or its bpb (marked) where it has no accuracy; held-out files their bpb."""
    def label(column: str) -> str:
        task = base["tasks"].get(column, {})
        return column if "accuracy" in task else f"{column} (bpb)"

    head = ["method", "ratio", "seeds", "answer tokens", *(f"{LABELS[n]} (mean ± std)" for n in measured),
            *map(label, columns)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [row["method"], format_ratio(row["ratio"], row["method"]), str(len(row["seeds"])),
                 "–" if math.isnan(row["answer_tokens"]) else f"{row['answer_tokens']:.0f}",
                 *(pm(row[f"{n}_mean"], row[f"{n}_std"], 4 if n.endswith("bpb") else 3) for n in measured),
                 *(f"{row.get(c, math.nan):.3f}" for c in columns)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _paired_table(pairs: list[dict], reference: str, measured: list[str]) -> list[str]:
    lines = ["", f"Against `{reference}` with the same seed" + (" and ratio" if reference == "random" else "")
             + ": the mean paired difference [95% interval over seeds]; ΔF > 0 is more forgetting, ΔG > 0 more "
             "learning.", "", "| method | ratio | pairs | " + " | ".join(f"Δ{LABELS[n]}" for n in measured) + " |",
             "|---|---|---|" + "---|" * len(measured)]
    for row in pairs:
        cells = [with_interval(row, n, 4 if n.endswith("bpb") else 3) for n in measured]
        lines.append(f"| {row['method']} | {format_ratio(row['ratio'], row['method'])} | {row['n_pairs']} | "
                     + " | ".join(cells) + " |")
    return lines


def _runs_table(results: list[dict], base: dict, ev, measured: list[str]) -> list[str]:
    lines = ["", "Per run:", "", "| run | n_train | answer tokens | " + " | ".join(LABELS[n] for n in measured)
             + " | train loss |", "|---|---|---|" + "---|" * len(measured) + "---|"]
    for r in results:
        figures = run_figures(r, base, ev)
        tokens = r.get("train_answer_tokens")
        lines.append(f"| {r['run']} | {r['n_train']} | {'–' if tokens is None else tokens} | "
                     + " | ".join(pm(figures[n], None, 4 if n.endswith("bpb") else 3) for n in measured)
                     + f" | {r['train_loss']:.3f} |")
    return lines


def write_summary(out: Path, cfg, base: dict) -> None:
    """OUT/summary.csv, OUT/summary.md and OUT/g_vs_f.png from every finished run; `cfg`: ExperimentConfig."""
    ev, results = cfg.eval, load_runs(out)
    rows = aggregate(results, base, ev)
    columns = [*ev.all_tasks(), *(f"heldout:{n}" for n in base.get("heldout", {}))]
    atomic.write_text(out / "summary.csv", _csv(rows, columns))
    measured = _measured(rows) or ["G", "F"]
    base_line = [f"{t} {_task_value(base['tasks'][t]):.4g}" for t in ev.all_tasks() if t in base["tasks"]]
    base_line += [f"held-out {n} bpb {v['bpb']:.4f}" for n, v in base.get("heldout", {}).items()]
    lines = ["# Experiment summary", "", _preamble(cfg), "", "Base model: " + ", ".join(base_line) + ".", "",
             *_figures_table(rows, measured, columns, base)]
    for reference in ("random", "full"):
        pairs = paired_differences(results, base, ev, reference)
        if pairs:
            lines += _paired_table(pairs, reference, measured)
    lines += _runs_table(results, base, ev, measured)
    atomic.write_text(out / "summary.md", "\n".join(lines) + "\n")
    plot_gain_forgetting(out / "g_vs_f.png", rows, "bpb" if "G_bpb" in measured else "acc")


def _preamble(cfg) -> str:
    ev, train = cfg.eval, cfg.train
    length = f"{train.max_steps} optimizer steps" if train.max_steps else f"{train.epochs:g} epoch(s)"
    recipe = f"{'LoRA' if train.lora else 'full'}, {length} of batch {train.batch_size * train.grad_accum}, " \
             f"lr {train.lr:g}"
    rotations = "all rotations" if ev.mc_rotations is None else f"{ev.mc_rotations} rotation(s)"
    return (f"Model `{cfg.model}`, pool `{cfg.data}` (first {cfg.pool_limit} examples), {ev.limit} questions per "
            "task" + "".join(f", {t} {n}" for t, n in ev.limits.items()) + f"; letter questions in {rotations}. "
            f"Fine-tune per run: {recipe}; " + _scoring(cfg) + ". Figures as in grads.summary: G_bpb = held-out bpb "
            "gained, F_bpb = general bpb lost, "
            "G_acc / F_acc the same with accuracy, G_val on the validation tasks (for choosing variants only). "
            "Mean ± std over seeds.")


def _scoring(cfg) -> str:
    if not cfg.methods:
        return "the full pool only (no selection)"
    at = "at the base model (no warm-up)" if not cfg.warmup_epochs else f"after a {cfg.warmup_epochs:g}-epoch warm-up"
    return f"scores for selection {at}" + ("; @theta0 arms at the base model" if any("@theta0" in m for m in
                                                                                      cfg.methods) else "")


def plot_gain_forgetting(path: Path, rows: list[dict], kind: str = "bpb") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    g, f = ("G_bpb", "F_bpb") if kind == "bpb" else ("G", "F")
    fig, ax = plt.subplots(figsize=(7, 5))
    markers = {0.05: "o", 0.25: "s", 0.5: "^", None: "*"}
    methods = sorted({r["method"] for r in rows})
    colours = dict(zip(methods, plt.rcParams["axes.prop_cycle"].by_key()["color"] * 3))
    for r in rows:
        if math.isnan(r[f"{g}_mean"]) or math.isnan(r[f"{f}_mean"]):
            continue
        ax.errorbar(r[f"{f}_mean"], r[f"{g}_mean"], xerr=r[f"{f}_std"], yerr=r[f"{g}_std"],
                    fmt=markers.get(r["ratio"], "D"), color=colours[r["method"]], capsize=3, ms=8,
                    label=r["method"] if r["ratio"] is None else f"{r['method']} {r['ratio']:g}")
    ax.axhline(0, color="grey", lw=0.5)
    ax.axvline(0, color="grey", lw=0.5)
    unit = "bits per byte" if kind == "bpb" else "accuracy"
    ax.set_xlabel(f"F: forgetting (general {unit} lost) → worse")
    ax.set_ylabel(f"G: domain gain ({'held-out ' if kind == 'bpb' else ''}{unit} gained) → better")
    ax.set_title("Learn more (up), forget less (left): mean ± std over seeds")
    if ax.get_legend_handles_labels()[0]:  # a G_val-only experiment has no points
        ax.legend(fontsize=7, ncol=2)
    atomic.write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))
    plt.close(fig)

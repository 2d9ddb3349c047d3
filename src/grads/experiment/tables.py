"""An experiment's summary files: OUT/summary.csv and OUT/summary.md (the figures of grads.experiment.stats)."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from grads.experiment.figures import plot_gain_forgetting
from grads.experiment.stability import experiment_selections, stability, stability_lines
from grads.experiment.stats import (
    ADDED_FIGURES,
    FIGURES,
    LABELS,
    aggregate,
    general_measures,
    general_names,
    load_runs,
    paired_differences,
    run_figures,
    task_value,
)
from grads.infra import atomic

# the controls every arm is paired with, seed by seed (and ratio by ratio; `full` has none), when the grid has them
REFERENCES = ("random", "random-matched", "full")


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
    """'+0.012 [+0.004, +0.020]', marked 'not distinguishable' when the interval holds 0; without an interval, why:
    one seed, or pairs that all differ by the same amount (no spread)."""
    mean, (lo, hi) = row[f"d{name}_mean"], row[f"d{name}_ci95"]
    if math.isnan(mean):
        return "–"
    if math.isnan(lo):
        n = row[f"d{name}_n"]
        return f"{mean:+.{digits}f} " + ("(one seed)" if n < 2 else f"(no spread: all {n} pairs the same; no interval)")
    text = f"{mean:+.{digits}f} [{lo:+.{digits}f}, {hi:+.{digits}f}]"
    return text + (" not distinguishable" if lo <= 0 <= hi else "")


def _measured(rows: list[dict]) -> list[str]:
    """The figures some row measures, in FIGURES order."""
    return [n for n in FIGURES if any(not math.isnan(r[f"{n}_mean"]) for r in rows)]


def _csv(rows: list[dict], columns: list[str]) -> str:
    """Every figure's mean and std (an ADDED_FIGURES one where some row measures it), then `columns`."""
    measured = set(_measured(rows))
    listed = [n for n in FIGURES if n not in ADDED_FIGURES or n in measured]
    figures = [f"{LABELS[n]}_{s}" for n in listed for s in ("mean", "std")]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["method", "ratio", "n_seeds", "answer_tokens", *figures, *columns])
    writer.writeheader()
    for row in rows:
        writer.writerow({"method": row["method"], "ratio": "" if row["ratio"] is None else row["ratio"],
                         "n_seeds": len(row["seeds"]), "answer_tokens": row["answer_tokens"],
                         **{f"{LABELS[n]}_{s}": row[f"{n}_{s}"] for n in listed for s in ("mean", "std")},
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
                 *(pm(row[f"{n}_mean"], row[f"{n}_std"], 4 if "bpb" in n else 3) for n in measured),
                 *(f"{row.get(c, math.nan):.3f}" for c in columns)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _forgetting_table(rows: list[dict], tasks, base_measures: dict) -> list[str]:
    """Each general task's forgetting, mean over seeds: run − base bpb where the task has one (bpb tasks), else
    base − run accuracy; > 0 forgot. F_bpb is the mean of the bpb columns, F_bpb_bytes their gold-bytes mean."""
    tasks = [t for t in tasks if any(not math.isnan(r.get(f"F:{t}", math.nan)) for r in rows)]
    if not tasks:
        return []
    def label(task: str) -> str:
        info = base_measures.get(task, {})
        return f"{task} (bpb, {info.get('gold_bytes')} B)" if "bpb" in info else f"{task} (acc)"

    lines = ["", "Forgetting per general task (mean over seeds; > 0 forgot):", "",
             "| method | ratio | " + " | ".join(map(label, tasks)) + " |", "|---|---|" + "---|" * len(tasks)]
    for row in rows:
        lines.append(f"| {row['method']} | {format_ratio(row['ratio'], row['method'])} | "
                     + " | ".join(pm(row.get(f"F:{t}", math.nan), None, 4) for t in tasks) + " |")
    return lines


def _paired_table(pairs: list[dict], reference: str, measured: list[str]) -> list[str]:
    lines = ["", f"Against `{reference}` with the same seed" + (" and ratio" if reference != "full" else "")
             + ": the mean paired difference [95% interval over seeds]; ΔF > 0 is more forgetting, ΔG > 0 more "
             "learning.", "", "| method | ratio | pairs | " + " | ".join(f"Δ{LABELS[n]}" for n in measured) + " |",
             "|---|---|---|" + "---|" * len(measured)]
    for row in pairs:
        cells = [with_interval(row, n, 4 if "bpb" in n else 3) for n in measured]
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
                     + " | ".join(pm(figures[n], None, 4 if "bpb" in n else 3) for n in measured)
                     + f" | {r['train_loss']:.3f} |")
    return lines


def write_summary(out: Path, cfg, base: dict) -> None:
    """OUT/summary.csv, OUT/summary.md and OUT/g_vs_f.png from every finished run; `cfg`: ExperimentConfig."""
    ev, results = cfg.eval, load_runs(out)
    rows = aggregate(results, base, ev)
    columns = [*ev.all_tasks(), *(f"heldout:{n}" for n in base.get("heldout", {})),
               *(f"F:{t}" for t in general_names(ev))]
    atomic.write_text(out / "summary.csv", _csv(rows, columns))
    measured = _measured(rows) or ["G", "F"]
    base_line = [f"{t} {task_value(base['tasks'][t]):.4g}" for t in ev.all_tasks() if t in base["tasks"]]
    base_line += [f"held-out {n} bpb {v['bpb']:.4f}" + _question_use(v) for n, v in base.get("heldout", {}).items()]
    lines = ["# Experiment summary", "", _preamble(cfg, "Q_bpb" in measured), "",
             "Base model: " + ", ".join(base_line) + ".", "",
             *_figures_table(rows, measured, [c for c in columns if not c.startswith("F:")], base),
             *_forgetting_table(rows, general_names(ev), general_measures(base, ev))]
    for reference in REFERENCES:
        pairs = paired_differences(results, base, ev, reference)
        if pairs:
            lines += _paired_table(pairs, reference, measured)
    agreement = stability(experiment_selections(out))
    if agreement:
        atomic.write_json(out / "stability.json", agreement)
    lines += stability_lines(agreement)
    lines += _runs_table(results, base, ev, measured)
    atomic.write_text(out / "summary.md", "\n".join(lines) + "\n")
    plot_gain_forgetting(out / "g_vs_f.png", rows, "bpb" if "G_bpb" in measured else "acc")


def _question_use(heldout: dict) -> str:
    """' (question use +0.1234)' for a held-out file's summary that has it (runs evaluated before it: '')."""
    return f" (question use {pm(heldout['question_use_bpb'], None, 4)})" if "question_use_bpb" in heldout else ""


def _preamble(cfg, question_use: bool = False) -> str:
    ev, train = cfg.eval, cfg.train
    length = f"{train.max_steps} optimizer steps" if train.max_steps else f"{train.epochs:g} epoch(s)"
    recipe = f"{'LoRA' if train.lora else 'full'}, {length} of batch {train.batch_size * train.grad_accum}, " \
             f"lr {train.lr:g}"
    rotations = "all rotations" if ev.mc_rotations is None else f"{ev.mc_rotations} rotation(s)"
    return (f"Model `{cfg.model}`, pool `{cfg.data}` (first {cfg.pool_limit} examples), {ev.limit} questions per "
            "task" + "".join(f", {t} {n}" for t, n in ev.limits.items()) + f"; letter questions in {rotations}. "
            f"Fine-tune per run: {recipe}; " + _scoring(cfg) + ". Figures as in grads.experiment.stats: G_bpb = "
            "held-out bpb gained, F_bpb = general bpb lost, "
            "G_acc / F_acc the same with accuracy, G_val on the validation tasks (for choosing variants only)"
            + (", Q_bpb = held-out question use gained (answers' bpb under other examples' questions − under their "
               "own)" if question_use else "") + ". Mean ± std over seeds.")


def _scoring(cfg) -> str:
    if not cfg.methods:
        return "the full pool only (no selection)"
    at = "at the base model (no warm-up)" if not cfg.warmup_epochs else f"after a {cfg.warmup_epochs:g}-epoch warm-up"
    return f"scores for selection {at}" + ("; @theta0 arms at the base model" if any("@theta0" in m for m in
                                                                                      cfg.methods) else "")

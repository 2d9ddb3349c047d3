"""`grads experiment CONFIG.yaml --out DIR`: the whole learn-more/forget-less protocol from one config.

    base evaluation → scoring (after an optional warm-up; shared) → selection per method × ratio × seed
    → fine-tune θ0 on each subset (and on the full pool) per seed → evaluate each → summary.md/.csv + plot

Every finished run is a file (DIR/runs/<run>/results.json); a rerun skips them, so a long grid can be finished
over several sittings. G (domain gain) and F (forgetting) follow docs/method.md:
    G = mean domain accuracy − the base model's;  F = mean over general tasks of (base − fine-tuned accuracy).
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, ValidationError

from grads import atomic
from grads.config import (
    DataConfig,
    EvalConfig,
    EvalJob,
    ModelConfig,
    ScoreConfig,
    SelectConfig,
    SelectJob,
    SignalConfig,
    StageConfig,
    TrainConfig,
    TrainJob,
    added,
    like,
)
from grads.errors import GradsError

__all__ = ["EvalConfig", "ExperimentConfig", "run_experiment"]


class ExperimentConfig(StageConfig):
    """One experiment. Its flat fields are the stage configs' own (`like`: same type, constraints and help), with
    experiment defaults where they differ; `select_job`, `train_job` and `eval_job` build the stage jobs."""

    model: str = like(ModelConfig, "model", default="smollm2-135m-instruct")
    data: str = Field("medmcqa", description="'medmcqa' (bundled: prepared into DIR/data) or a pool file")
    pool_limit: int | None = like(DataConfig, "limit", default=600)
    max_length: int = like(DataConfig, "max_length", default=256)
    methods: tuple[str, ...] = like(SelectConfig, "methods", default=("random", "grads", "grads-high", "gradnorm"))
    ratios: tuple[float, ...] = like(SelectConfig, "ratios", default=(0.05, 0.25, 0.5))
    seeds: tuple[int, ...] = Field((0, 1, 2), description="one fine-tune per method, ratio and seed")
    include_full: bool = Field(True, description="also fine-tune on the whole pool, once per seed")
    selection_signal: str = like(SelectConfig, "signal")
    warmup_epochs: float = like(SelectConfig, "warmup_epochs")
    warmup_fraction: float = like(SelectConfig, "warmup_fraction")
    warmup_from: str | None = added(None, "0.2", description="another experiment folder whose warm-up and scores "
                                    "this one reuses (a selection or recipe variant); its model, data and warm-up "
                                    "settings must be the same")
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    device: str = like(ModelConfig, "device")
    dtype: str = like(ModelConfig, "dtype")
    score_batch_size: int = like(ScoreConfig, "batch_size")
    order: Literal["by-seed", "by-method"] = Field("by-seed", description="run the grid seed by seed, or method "
                                                  "by method")

    def stage_model(self, model: str | None = None) -> ModelConfig:
        return ModelConfig(model=model or self.model, dtype=self.dtype, device=self.device)

    def signal_config(self) -> SignalConfig:
        return SignalConfig(signal=self.selection_signal)

    def select_job(self, pool_path: Path, out: Path) -> SelectJob:
        """The one shared selection (seed 0; the random baseline re-draws per seed in the runs)."""
        return SelectJob(model=self.stage_model(), data=DataConfig(data=pool_path, max_length=self.max_length,
                                                                    limit=self.pool_limit),
                         score=ScoreConfig(batch_size=self.score_batch_size), train=self.train,
                         select=SelectConfig(methods=tuple(dict.fromkeys(self.methods)) or ("grads",),
                                             ratios=self.ratios, seed=0, warmup_epochs=self.warmup_epochs,
                                             warmup_fraction=self.warmup_fraction, signal=self.selection_signal),
                         out=out)

    def train_job(self, run_dir: Path, seed: int) -> TrainJob:
        """A fine-tune of the base model on the run's train.jsonl (the chosen pool rows, verbatim)."""
        return TrainJob(model=self.stage_model(), data=DataConfig(data=run_dir / "train.jsonl",
                                                                   max_length=self.max_length),
                        train=self.train.model_copy(update={"seed": seed}), out=run_dir)

    def eval_job(self, model: str, out: Path) -> EvalJob:
        ev = self.eval
        return EvalJob(model=self.stage_model(model), tasks=tuple(ev.all_tasks()), limit=ev.limit, limits=ev.limits,
                       batch_size=ev.batch_size, out=out)


def load_config(path: str | Path) -> ExperimentConfig:
    path = Path(path)
    if not path.exists():
        raise GradsError("config file not found", path=path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        raise GradsError(f"not valid YAML: {getattr(err, 'problem', err)}", path=path,
                         line=mark.line + 1 if mark else None) from None
    try:
        return ExperimentConfig(**raw)
    except ValidationError as err:
        first = err.errors()[0]
        raise GradsError(f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}", path=path) from None
    except TypeError as err:
        raise GradsError(f"config must be a mapping of settings: {err}", path=path) from None


def run_name(method: str, ratio: float | None, seed: int) -> str:
    return f"{method}-s{seed}" if ratio is None else f"{method}-{ratio:g}-s{seed}"


def planned_runs(cfg: ExperimentConfig) -> list[tuple[str, float | None, int]]:
    """(method, ratio, seed) of every fine-tune; a method that chooses its own budget (grads-auto, and full)
    runs once per seed with ratio None."""
    from grads.selection import RULES

    runs = []
    for seed in cfg.seeds:
        free = (["full"] if cfg.include_full else []) + [m for m in cfg.methods if not RULES[m].takes_ratio]
        runs += [(method, None, seed) for method in dict.fromkeys(free)]
        for ratio in cfg.ratios:
            runs += [(method, ratio, seed) for method in cfg.methods if RULES[method].takes_ratio]
    if cfg.order == "by-method":
        runs.sort(key=lambda r: (r[0], r[1] or 1.0, r[2]))
    return runs


def _evaluate_to(path: Path, model: str, cfg: ExperimentConfig, log) -> dict:
    """The evaluation stage's file for this model, run once (a finished file is reused)."""
    from grads.evaluation import run_eval

    if path.exists():
        return json.loads(path.read_text())
    return run_eval(cfg.eval_job(model, path), log)


def _claim(out: Path, cfg: ExperimentConfig) -> None:
    out.mkdir(parents=True, exist_ok=True)
    saved = out / "config.json"
    if saved.exists() and json.loads(saved.read_text()) != cfg.settings():
        raise GradsError("folder holds an experiment with another config", path=out,
                         hint="use another --out, or the same config")
    atomic.write_json(saved, cfg.settings())


def _pool_path(cfg: ExperimentConfig, out: Path) -> Path:
    from grads import bundled

    if cfg.data != "medmcqa":
        return Path(cfg.data)
    if not (out / "data" / "prepare.json").exists():
        bundled.prepare_medmcqa(out / "data")
    return out / "data" / "pool.jsonl"


def _fine_tune(cfg: ExperimentConfig, run: tuple[str, float | None, int], out: Path, frame, rows, pool, tokenizer,
               log) -> None:
    """One run: its subset (train.jsonl), the fine-tune, the evaluation, and OUT/runs/<run>/results.json."""
    from grads.selection import select
    from grads.training import run_train, training_record

    method, ratio, seed = run
    name = run_name(method, ratio, seed)
    run_dir = out / "runs" / name
    picked = select(frame, method, ratio, seed, cfg.signal_config())
    rows.write(run_dir / "train.jsonl", picked)
    log(f"{name}: fine-tuning on {len(picked)} examples")
    model_dir = run_train(cfg.train_job(run_dir, seed), pool.subset(picked), tokenizer, progress=False)
    done_train = training_record(model_dir)
    log(f"{name}: evaluating")
    result = _evaluate_to(run_dir / "eval.json", str(model_dir), cfg, log)
    atomic.write_json(run_dir / "results.json", {
        "run": name, "method": method, "ratio": ratio, "seed": seed, "n_train": int(len(picked)),
        "train_seconds": done_train.get("seconds"), "tasks": result["tasks"],  # None: trained by an old release
        "train_loss": done_train["train_loss"]})


def run_experiment(config_path: str | Path, out: str | Path, log=print, max_runs: int | None = None) -> Path:
    """Compose the stages: base evaluation, `grads select` (shared), then per run a fine-tune and its evaluation;
    the summary is rewritten after every run, so a long grid can be read while it runs."""
    from grads.data import raw_rows, scan_pool
    from grads.models import load_tokenizer
    from grads.pipeline import adopt_upstream, run_select
    from grads.subsets import load_scores
    from grads.token_cache import tokenized

    cfg = load_config(config_path)
    out = Path(out)
    _claim(out, cfg)
    pool_path = _pool_path(cfg, out)
    select_job = cfg.select_job(pool_path, out / "select")  # checks methods and ratios before any model loads
    log("base model: evaluating")
    base = _evaluate_to(out / "runs" / "base" / "results.json", cfg.model, cfg, log)
    if cfg.warmup_from:
        adopt_upstream(Path(cfg.warmup_from) / "select", select_job, log)
    run_select(select_job, log=log)
    frame = load_scores(out / "select")
    tokenizer = load_tokenizer(cfg.model)
    pool = tokenized(scan_pool(pool_path, None, cfg.pool_limit), tokenizer, cfg.pool_limit, cfg.max_length)
    rows = raw_rows(pool_path, cfg.pool_limit)
    done = 0
    for run in planned_runs(cfg):
        if (out / "runs" / run_name(*run) / "results.json").exists():
            continue
        if max_runs is not None and done >= max_runs:
            break
        _fine_tune(cfg, run, out, frame, rows, pool, tokenizer, log)
        done += 1
        write_summary(out, cfg, base)
    write_summary(out, cfg, base)
    return out / "summary.md"


# --------------------------------------------------------------------------------------------- summary


def gain_and_forgetting(result_tasks: dict, base_tasks: dict, domain: tuple[str, ...],
                        general: tuple[str, ...]) -> tuple[float, float]:
    """G = mean domain accuracy − base; F = mean over general tasks of (base − run)."""
    dom = [t for t in domain if t in result_tasks and t in base_tasks]
    gen = [t for t in general if t in result_tasks and t in base_tasks]
    g = statistics.fmean(result_tasks[t]["accuracy"] - base_tasks[t]["accuracy"] for t in dom) if dom else math.nan
    f = statistics.fmean(base_tasks[t]["accuracy"] - result_tasks[t]["accuracy"] for t in gen) if gen else math.nan
    return g, f


def mean_std(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def aggregate(results: list[dict], base_tasks: dict, domain, general, validation=()) -> list[dict]:
    groups: dict[tuple[str, float | None], list[dict]] = {}
    for r in results:
        groups.setdefault((r["method"], r["ratio"]), []).append(r)
    rows = []
    for (method, ratio), runs in sorted(groups.items(), key=lambda kv: (kv[0][1] or 1.0, kv[0][0])):
        gf = [gain_and_forgetting(r["tasks"], base_tasks, domain, general) for r in runs]
        g_mean, g_std = mean_std([g for g, _ in gf])
        f_mean, f_std = mean_std([f for _, f in gf])
        row = {"method": method, "ratio": ratio, "seeds": sorted(r["seed"] for r in runs), "G_mean": g_mean,
               "G_std": g_std, "F_mean": f_mean, "F_std": f_std}
        if validation:
            row["G_val_mean"], row["G_val_std"] = mean_std(
                [gain_and_forgetting(r["tasks"], base_tasks, validation, ())[0] for r in runs])
        for task in [*domain, *validation, *general]:
            accs = [r["tasks"][task]["accuracy"] for r in runs if task in r["tasks"]]
            row[task] = mean_std(accs)[0]
        rows.append(row)
    return rows


def paired_differences(results: list[dict], base_tasks: dict, domain, general, validation=(),
                       reference: str = "random") -> list[dict]:
    """Each method against `reference` run with the same seed (and the same ratio; `full` has none): the mean ±
    std over seeds of ΔG, ΔF and ΔG_val, and each seed's (ΔG, ΔF, ΔG_val) under "per_seed". Pairing by seed
    removes what the seeds share (evaluation items, the training order of the reference) and leaves the effect of
    the subset."""
    def figures(run: dict) -> tuple[float, float, float]:
        g, f = gain_and_forgetting(run["tasks"], base_tasks, domain, general)
        return g, f, gain_and_forgetting(run["tasks"], base_tasks, validation, ())[0]

    by_key = {(r["method"], r["ratio"], r["seed"]): figures(r) for r in results}
    groups: dict[tuple[str, float | None], dict[int, tuple[float, ...]]] = {}
    for (method, ratio, seed), mine in by_key.items():
        ref_ratio = None if reference == "full" else ratio
        theirs = by_key.get((reference, ref_ratio, seed))
        if method == reference or theirs is None or (ratio is None and reference != "full"):
            continue
        groups.setdefault((method, ratio), {})[seed] = tuple(a - b for a, b in zip(mine, theirs))
    rows = []
    for (method, ratio), per_seed in sorted(groups.items(), key=lambda kv: (kv[0][1] or 1.0, kv[0][0])):
        row = {"method": method, "ratio": ratio, "reference": reference, "n_pairs": len(per_seed),
               "per_seed": dict(sorted(per_seed.items()))}
        for i, name in enumerate(["dG", "dF", "dG_val"]):
            row[f"{name}_mean"], row[f"{name}_std"] = mean_std([d[i] for d in per_seed.values()])
        rows.append(row)
    return rows


def load_runs(out: Path) -> list[dict]:
    """Every finished fine-tune's results.json under OUT/runs (the base model's evaluation is not a run)."""
    return [json.loads(p.read_text()) for p in sorted((out / "runs").glob("*/results.json"))
            if p.parent.name != "base"]


def write_summary(out: Path, cfg: ExperimentConfig, base: dict) -> None:
    domain, general, val = cfg.eval.domain_tasks, cfg.eval.general_tasks, cfg.eval.validation_tasks
    results = load_runs(out)
    rows = aggregate(results, base["tasks"], domain, general, val)
    tasks = [*domain, *val, *general]
    buffer = io.StringIO()
    fields = ["method", "ratio", "n_seeds", "G_mean", "G_std", "F_mean", "F_std",
              *(["G_val_mean", "G_val_std"] if val else []), *tasks]
    writer = csv.DictWriter(buffer, fieldnames=fields)
    writer.writeheader()
    for row in rows:
        writer.writerow({**{k: row[k] for k in fields if k in row}, "n_seeds": len(row["seeds"]),
                         "ratio": "" if row["ratio"] is None else row["ratio"]})
    atomic.write_text(out / "summary.csv", buffer.getvalue())

    lines = ["# Experiment summary", "",
             f"Model `{cfg.model}`, pool `{cfg.data}` (first {cfg.pool_limit} examples), "
             f"{cfg.eval.limit} questions per task"
             + "".join(f", {t} {n}" for t, n in cfg.eval.limits.items())
             + f". Fine-tune per run: {_recipe(cfg.train)}. "
             + (f"G = mean domain accuracy gain over the base model ({', '.join(domain)}). " if domain else "")
             + (f"F = mean general-task accuracy lost ({', '.join(general)}). " if general else "")
             + (f"G_val = the same gain on the validation task(s) ({', '.join(val)}), the only figure used to "
                "choose variants. " if val else "")
             + "Mean ± std over seeds.", "",
             "Base model: " + ", ".join(f"{t} {base['tasks'][t]['accuracy']:.3f} (n={base['tasks'][t]['n']})"
                                        for t in tasks if t in base["tasks"]), "",
             "| method | ratio | seeds | G (mean ± std) | F (mean ± std) | " + ("G_val | " if val else "")
             + " | ".join(tasks) + " |",
             "|---|---|---|---|---|" + ("---|" if val else "") + "---|" * len(tasks)]
    for row in rows:
        ratio = format_ratio(row["ratio"], row["method"])
        accs = " | ".join(f"{row.get(t, math.nan):.3f}" for t in tasks)
        g_val = f"{pm(row['G_val_mean'], row['G_val_std'])} | " if val else ""
        lines.append(f"| {row['method']} | {ratio} | {len(row['seeds'])} | {pm(row['G_mean'], row['G_std'])} "
                     f"| {pm(row['F_mean'], row['F_std'])} | {g_val}{accs} |")
    for reference in ("random", "full"):
        pairs = paired_differences(results, base["tasks"], domain, general, val, reference)
        if not pairs:
            continue
        lines += ["", f"Against `{reference}` with the same seed"
                  + (" and ratio" if reference == "random" else "") + " (difference of the two runs' figures, "
                  "mean ± std over seeds; ΔF < 0 is less forgetting):", "",
                  "| method | ratio | pairs | ΔG | ΔF | " + ("ΔG_val |" if val else ""),
                  "|---|---|---|---|---|" + ("---|" if val else "")]
        for row in pairs:
            ratio = format_ratio(row["ratio"], row["method"])
            g_val = f" {pm(row['dG_val_mean'], row['dG_val_std'])} |" if val else ""
            lines.append(f"| {row['method']} | {ratio} | {row['n_pairs']} | {pm(row['dG_mean'], row['dG_std'])} "
                         f"| {pm(row['dF_mean'], row['dF_std'])} |{g_val}")
    lines += ["", "Per run:", "", "| run | n_train | G | F | " + ("G_val | " if val else "") + "train loss |",
              "|---|---|---|---|" + ("---|" if val else "") + "---|"]
    for r in results:
        g, f = gain_and_forgetting(r["tasks"], base["tasks"], domain, general)
        g_val = f"{pm(gain_and_forgetting(r['tasks'], base['tasks'], val, ())[0])} | " if val else ""
        lines.append(f"| {r['run']} | {r['n_train']} | {pm(g)} | {pm(f)} | {g_val}{r['train_loss']:.3f} |")
    atomic.write_text(out / "summary.md", "\n".join(lines) + "\n")
    _plot(out / "g_vs_f.png", rows)


def _recipe(train: TrainConfig) -> str:
    length = f"{train.max_steps} optimizer steps" if train.max_steps else f"{train.epochs:g} epoch(s)"
    batch = train.batch_size * train.grad_accum
    return f"{'LoRA' if train.lora else 'full'}, {length} of batch {batch}, lr {train.lr:g}"


def format_ratio(ratio: float | None, method: str) -> str:
    """A ratio for a table: '0.05', '1 (full)' for the full pool, 'auto' for a budget the method chose."""
    if ratio is None:
        return "1 (full)" if method == "full" else "auto"
    return f"{ratio:g}"


def pm(mean: float, std: float | None = None) -> str:
    """'+0.012 ± 0.004', or '–' for a figure this experiment does not measure (no such tasks)."""
    if math.isnan(mean):
        return "–"
    return f"{mean:+.3f}" if std is None else f"{mean:+.3f} ± {std:.3f}"


def _plot(path: Path, rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    markers = {0.05: "o", 0.25: "s", 0.5: "^", None: "*"}
    methods = sorted({r["method"] for r in rows})
    colours = dict(zip(methods, plt.rcParams["axes.prop_cycle"].by_key()["color"] * 3))
    for r in rows:
        if math.isnan(r["G_mean"]) or math.isnan(r["F_mean"]):
            continue
        ax.errorbar(r["F_mean"], r["G_mean"], xerr=r["F_std"], yerr=r["G_std"], fmt=markers.get(r["ratio"], "D"),
                    color=colours[r["method"]], capsize=3, ms=8,
                    label=r["method"] if r["ratio"] is None else f"{r['method']} {r['ratio']:g}")
    ax.axhline(0, color="grey", lw=0.5)
    ax.axvline(0, color="grey", lw=0.5)
    ax.set_xlabel("F: forgetting (mean general accuracy lost) → worse")
    ax.set_ylabel("G: domain gain (accuracy over base) → better")
    ax.set_title("Learn more (up), forget less (left): mean ± std over seeds")
    if ax.get_legend_handles_labels()[0]:  # a G_val-only experiment has no points
        ax.legend(fontsize=7, ncol=2)
    atomic.write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))
    plt.close(fig)

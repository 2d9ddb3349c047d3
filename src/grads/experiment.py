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
import os
import statistics
import time
from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, ValidationError

from grads import atomic
from grads.config import (
    DEFAULT_SIGNAL,
    DEFAULT_WARMUP_EPOCHS,
    DataConfig,
    ModelConfig,
    ScoreConfig,
    SelectConfig,
    SelectJob,
    StageConfig,
    TrainConfig,
    added,
)
from grads.errors import GradsError
from grads.tasks import DOMAIN_TASKS, GENERAL_TASKS


class EvalConfig(StageConfig):
    domain_tasks: tuple[str, ...] = DOMAIN_TASKS
    general_tasks: tuple[str, ...] = GENERAL_TASKS
    validation_tasks: tuple[str, ...] = Field(
        (), description="tasks carved from the pool's side (e.g. medmcqa_val): reported as G_val, used to choose "
        "variants; never part of G or F")
    limit: int | None = Field(200, gt=0, description="questions per task (a fixed subset, the same for all runs)")
    limits: dict[str, int] = Field({}, description="per-task overrides of limit")

    def all_tasks(self) -> list[str]:
        return list(dict.fromkeys(self.domain_tasks + self.validation_tasks + self.general_tasks))
    batch_size: int = Field(16, gt=0)


class ExperimentConfig(StageConfig):
    model: str = "smollm2-135m-instruct"
    data: str = Field("medmcqa", description="'medmcqa' (bundled: prepared into DIR/data) or a pool file")
    pool_limit: int | None = Field(600, gt=0)
    max_length: int = 256
    methods: tuple[str, ...] = ("random", "grads", "grads-high", "gradnorm")
    ratios: tuple[float, ...] = (0.05, 0.25, 0.5)
    seeds: tuple[int, ...] = (0, 1, 2)
    include_full: bool = True
    selection_signal: str = DEFAULT_SIGNAL
    warmup_epochs: float = DEFAULT_WARMUP_EPOCHS
    warmup_fraction: float = 1.0
    warmup_from: str | None = added(None, "0.2", description="another experiment folder whose warm-up and scores "
                                    "this one reuses (a selection or recipe variant); its model, data and warm-up "
                                    "settings must be the same")
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    device: str = "auto"
    dtype: str = "auto"
    score_batch_size: int = 8
    order: Literal["by-seed", "by-method"] = "by-seed"


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
    from grads.selection import RATIO_FREE

    runs = []
    for seed in cfg.seeds:
        free = (["full"] if cfg.include_full else []) + [m for m in cfg.methods if m in RATIO_FREE]
        runs += [(method, None, seed) for method in dict.fromkeys(free)]
        for ratio in cfg.ratios:
            runs += [(method, ratio, seed) for method in cfg.methods if method not in RATIO_FREE]
    if cfg.order == "by-method":
        runs.sort(key=lambda r: (r[0], r[1] or 1.0, r[2]))
    return runs


def _evaluate_to(path: Path, model_name: str, cfg: ExperimentConfig, log) -> dict:
    if path.exists():
        return json.loads(path.read_text())
    from grads.evaluation import evaluate
    from grads.models import load_model, load_tokenizer

    model = load_model(model_name, dtype=cfg.dtype, device=cfg.device)
    tokenizer = load_tokenizer(model_name)
    started = time.perf_counter()
    results = evaluate(model, tokenizer, cfg.eval.all_tasks(), cfg.eval.limit, cfg.eval.batch_size, log,
                       limits=cfg.eval.limits)
    payload = {"model": model_name, "tasks": results, "seconds": round(time.perf_counter() - started, 1)}
    atomic.write_json(path, payload)
    return payload


def run_experiment(config_path: str | Path, out: str | Path, log=print, max_runs: int | None = None) -> Path:
    from grads import bundled
    from grads.data import load_pool, raw_rows, tokenize_pool
    from grads.models import load_tokenizer
    from grads.pipeline import load_scores, run_select
    from grads.selection import SignalConfig, select
    from grads.training import train_sft

    cfg = load_config(config_path)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    saved = out / "config.json"
    if saved.exists() and json.loads(saved.read_text()) != cfg.settings():
        raise GradsError("folder holds an experiment with another config", path=out,
                         hint="use another --out, or the same config")
    atomic.write_json(saved, cfg.settings())

    if cfg.data == "medmcqa":
        if not (out / "data" / "prepare.json").exists():
            bundled.prepare_medmcqa(out / "data")
        pool_path = out / "data" / "pool.jsonl"
    else:
        pool_path = Path(cfg.data)
    model_cfg = ModelConfig(model=cfg.model, dtype=cfg.dtype, device=cfg.device)
    data_cfg = DataConfig(data=pool_path, max_length=cfg.max_length, limit=cfg.pool_limit)

    log("base model: evaluating")
    base = _evaluate_to(out / "runs" / "base" / "results.json", cfg.model, cfg, log)

    selection_methods = tuple(dict.fromkeys(m for m in cfg.methods))
    job = SelectJob(model=model_cfg, data=data_cfg, score=ScoreConfig(batch_size=cfg.score_batch_size),
                    train=cfg.train,
                    select=SelectConfig(methods=selection_methods or ("grads",), ratios=cfg.ratios, seed=0,
                                        warmup_epochs=cfg.warmup_epochs, warmup_fraction=cfg.warmup_fraction,
                                        signal=cfg.selection_signal),
                    out=out / "select")
    if cfg.warmup_from:
        _reuse_warmup(Path(cfg.warmup_from) / "select", job, log)
    run_select(job, log=log)
    frame = load_scores(out / "select")
    signal_cfg = SignalConfig(cfg.selection_signal)

    pool = load_pool(pool_path, None, cfg.pool_limit)
    rows = raw_rows(pool_path)[: len(pool.examples)]
    tokenizer = load_tokenizer(cfg.model)
    examples, _ = tokenize_pool(tokenizer, pool, cfg.max_length)
    done = 0
    for method, ratio, seed in planned_runs(cfg):
        name = run_name(method, ratio, seed)
        run_dir = out / "runs" / name
        if (run_dir / "results.json").exists():
            continue
        if max_runs is not None and done >= max_runs:
            break
        picked = select(frame, method, ratio, seed, signal_cfg)
        atomic.write_text(run_dir / "train.jsonl", "".join(rows[i] + "\n" for i in picked))
        train_cfg = cfg.train.model_copy(update={"seed": seed})
        fingerprint = train_cfg.fingerprint(model=cfg.model, ids=[examples[i].id for i in picked],
                                            max_length=cfg.max_length)
        log(f"{name}: fine-tuning on {len(picked)} examples")
        model_dir = train_sft(model_cfg, tokenizer, [examples[i] for i in picked], run_dir, train_cfg, fingerprint,
                              progress=False)
        done_train = json.loads((model_dir / "done.json").read_text())
        log(f"{name}: evaluating")
        result = _evaluate_to(run_dir / "eval.json", str(model_dir), cfg, log)
        atomic.write_json(run_dir / "results.json", {
            "run": name, "method": method, "ratio": ratio, "seed": seed, "n_train": int(len(picked)),
            "train_seconds": done_train.get("seconds"), "tasks": result["tasks"],  # None: trained by an old release
            "train_loss": done_train["train_loss"]})
        done += 1
        write_summary(out, cfg, base)  # a long grid can be read while it runs
    write_summary(out, cfg, base)
    return out / "summary.md"


def _reuse_warmup(source: Path, job: SelectJob, log) -> None:
    """Copy another experiment's finished warm-up model and scores into this one's select folder, after checking
    that they were made with exactly the warm-up settings this experiment would use."""
    import shutil

    from grads.data import scan_pool
    from grads.pipeline import warmup_plan

    target = Path(job.out)
    if (target / "score" / "score.json").exists():
        return
    done = source / "selection.json"
    if not done.exists():
        raise GradsError("warmup_from: no finished selection there", path=source.parent,
                         hint="finish that experiment's selection stage first, or remove warmup_from")
    _, _, score_fp = warmup_plan(job, scan_pool(job.data.data, job.data.format, job.data.limit).sha256)
    if json.loads(done.read_text()).get("score_fingerprint") != score_fp:
        raise GradsError("warmup_from: that experiment's warm-up or scores were made with other model, data, "
                         "warm-up or scoring settings", path=source.parent,
                         hint="use the same model, data (the same path), max_length, pool_limit, warm-up and train "
                              "recipe (max_steps aside), or remove warmup_from")
    log(f"reusing the warm-up and scores of {source.parent}")
    for part in ("warmup/model", "score"):
        if (source / part).exists() and not (target / part).exists():
            shutil.copytree(source / part, target / f".{part.replace('/', '-')}.copy", dirs_exist_ok=True)
            (target / part).parent.mkdir(parents=True, exist_ok=True)
            os.replace(target / f".{part.replace('/', '-')}.copy", target / part)


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

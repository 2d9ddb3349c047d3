"""`grads experiment CONFIG.yaml --out DIR`: the whole learn-more/forget-less protocol from one config.

    base evaluation → scoring (after an optional warm-up; shared) → selection per method × ratio × seed
    → fine-tune θ0 on each subset (and on the full pool) per seed → evaluate each → summary.md/.csv + plot

Every finished run is a file (DIR/runs/<run>/results.json); a rerun skips them, so a long grid can be finished
over several sittings. Between sittings the grid's shape (GRID_SHAPE: methods, ratios, seeds...) may change, to
cut arms or add seeds; what a run computes (model, data, recipe, evaluation) may not. A method may carry arm
modifiers: `grads@theta0` selects with the same rule on scores of the base model (a second selection in
DIR/select-theta0, no warm-up) when the experiment warms up; `random@full-steps` trains for the optimizer steps of
one run on the full pool (equal compute) instead of the recipe's epochs; `grads@own-warmup` selects, for seed N,
from the scores after a warm-up of seed N (DIR/select-seed-N; seed 0's is the shared one), so that the seed-paired
interval covers the method's own variance. Arms are compared like methods:
seed-paired, against `random` of the same ratio and `full`. A warm-up of one recipe epoch on the whole pool is the
`full` run of its seed: that run adopts the warm-up's model rather than training the same thing again.
The figures (G_bpb, F_bpb, G_acc, F_acc, G_val, Q_bpb) and their intervals are grads.experiment.stats'.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from grads.core.rules import LABEL
from grads.errors import GradsError
from grads.experiment.arms import run_name, scores_source, selection_folder, split_arm
from grads.experiment.config import GRID_SHAPE, PLANTED, ExperimentConfig, config_from, load_config
from grads.experiment.tables import write_summary
from grads.infra import atomic


def planned_runs(cfg: ExperimentConfig) -> list[tuple[str, float | None, int]]:
    """(method, ratio, seed) of every fine-tune; a method that chooses its own budget (grads-auto, and full)
    runs once per seed with ratio None."""
    from grads.core.rules import rule_of

    def takes_ratio(arm: str) -> bool:
        return rule_of(split_arm(arm)[0]).takes_ratio

    runs = []
    for seed in sorted({s for m in cfg.methods for s in cfg.arm_seeds.get(m, cfg.seeds)} | set(cfg.seeds)):
        here = [m for m in cfg.methods if seed in cfg.arm_seeds.get(m, cfg.seeds)]
        free = (["full"] if cfg.include_full and seed in cfg.seeds else []) + [
            m for m in here if not takes_ratio(m)]
        runs += [(method, None, seed) for method in dict.fromkeys(free)]
        for ratio in sorted({r for m in cfg.methods for r in cfg.arm_ratios.get(m, cfg.ratios)}):
            runs += [(method, ratio, seed) for method in here
                     if takes_ratio(method) and ratio in cfg.arm_ratios.get(method, cfg.ratios)]
    if cfg.order == "by-method":
        runs.sort(key=lambda r: (r[0], r[1] or 1.0, r[2]))
    return runs


def full_pool_steps(cfg: ExperimentConfig, pool) -> int:
    """Optimizer steps of one run on the full pool (the examples with an answer token) with the recipe."""
    import math

    per_epoch = math.ceil(int((pool.n_target_tokens > 0).sum()) / cfg.train.batch_size)
    return cfg.train.max_steps or math.ceil(per_epoch * cfg.train.epochs / cfg.train.grad_accum)

def _evaluate_to(path: Path, model: str, cfg: ExperimentConfig, folder: Path, log) -> dict:
    """The evaluation stage's file for this model, run once (a finished file is reused)."""
    from grads.stages.evaluate import run_eval

    if path.exists():
        return json.loads(path.read_text())
    return run_eval(cfg.eval_job(model, path, folder), log)


def _claim(out: Path, cfg: ExperimentConfig) -> None:
    """Record the config in OUT/config.json; a folder holding an experiment whose runs compute something else (a
    setting outside GRID_SHAPE, other than a runtime one) is refused."""
    out.mkdir(parents=True, exist_ok=True)
    saved = out / "config.json"
    if saved.exists():
        before = config_from(json.loads(saved.read_text()), saved).settings(runtime=False)
        now = cfg.settings(runtime=False)  # runtime settings (activation checkpointing) do not change a result
        changed = sorted(k for k in before.keys() | now.keys()
                         if k not in GRID_SHAPE and before.get(k) != now.get(k))
        if changed:
            raise GradsError(f"folder holds an experiment with another config ({', '.join(changed)} differ)",
                             path=out, hint="use another --out, or the same config (only "
                             f"{', '.join(GRID_SHAPE)} may change between sittings)")
    atomic.write_json(saved, cfg.settings())


def _pool_path(cfg: ExperimentConfig, out: Path) -> Path:
    """The pool file: a bundled data set prepared into DIR/data (and each of `also_prepare` into DIR/data-NAME,
    for held-out files of other domains), or the file the config names."""
    from grads.data.bundled import PREPARERS

    for name in cfg.also_prepare:
        if not (out / f"data-{name}" / "prepare.json").exists():
            PREPARERS[name](out / f"data-{name}")
    if cfg.data not in PREPARERS:
        pool = Path(cfg.data)
    else:
        if not (out / "data" / "prepare.json").exists():
            PREPARERS[cfg.data](out / "data")
        pool = out / "data" / "pool.jsonl"
    return _planted(cfg, out, pool) if cfg.plant else pool


def _planted(cfg: ExperimentConfig, out: Path, pool: Path) -> Path:
    """DIR/data-planted/pool.jsonl: noise planted (cfg.plant) in the pool's first pool_limit records, once."""
    from grads.data.bundled import PREPARERS
    from grads.data.plant import plant_file
    from grads.data.readers import raw_rows
    from grads.infra import atomic

    folder, plant = out / PLANTED, cfg.plant
    if (folder / "plant.json").exists() and (folder / "pool.jsonl").exists():
        return folder / "pool.jsonl"
    offdomain = plant.offdomain
    if offdomain in PREPARERS:
        if not (out / f"data-{offdomain}" / "prepare.json").exists():
            PREPARERS[offdomain](out / f"data-{offdomain}")
        offdomain = out / f"data-{offdomain}" / "pool.jsonl"
    rows = raw_rows(pool, cfg.pool_limit)
    atomic.write_text(folder / "clean.jsonl", "".join(rows[i] + "\n" for i in range(len(rows))))
    plant_file(folder / "clean.jsonl", folder, plant.share, plant.kinds, plant.seed, offdomain)
    return folder / "pool.jsonl"


def _warmup_source(cfg: ExperimentConfig, seed: int) -> str | None:
    """The scores source (arms.scores_source) whose warm-up is seed's full-pool fine-tune, when the experiment
    warms up on the whole pool for the recipe's epochs: seed 0's shared selection, or another seed's own when its
    @own-warmup arms are planned. None when no warm-up of that seed is planned, or it differs from a full run."""
    if not cfg.selected_methods() or cfg.warmup_fraction < 1.0 or cfg.warmup_epochs != cfg.train.epochs \
            or cfg.train.max_steps:
        return None
    if seed == 0:
        return "shared"
    own = any(run[2] == seed and "own-warmup" in split_arm(run[0])[1] for run in planned_runs(cfg))
    return scores_source(("own-warmup",), seed) if own else None


def _adopted_warmup(cfg: ExperimentConfig, seed: int, out: Path, pool, source: str | None) -> Path | None:
    """The full arm of seed N trains exactly what seed N's warm-up trained (every pool example with an answer, in
    pool order, the recipe, seed N): that warm-up's model (`source`: _warmup_source's), when its record says so, is
    the run's model rather than a second fine-tune of the same thing. None when there is no such warm-up."""
    from grads.stages.train import training_record
    from grads.stages.warmup import warmup_folder

    if source is None:
        return None
    model_dir = warmup_folder(selection_folder(out, source)) / "model"
    if not (model_dir / "done.json").exists():
        return None
    done = training_record(model_dir)
    same = (done["config"] == cfg.train_job(out, seed).train.settings() and done["base_model"] == cfg.model
            and done["examples"] == int((pool.n_target_tokens > 0).sum()))
    return model_dir if same else None


def _fine_tune(cfg: ExperimentConfig, run: tuple[str, float | None, int], out: Path, frames: dict, rows, pool,
               tokenizer, log, warmup_source: str | None = None) -> None:
    """One run: its subset (train.jsonl), the fine-tune, the evaluation, and OUT/runs/<run>/results.json.
    frames: the score tables by source (arms.scores_source); warmup_source: for a full run, the source whose
    warm-up may be its fine-tune (_warmup_source)."""
    from grads.core.rules import select
    from grads.stages.train import run_train, training_record

    arm, ratio, seed = run
    method, modifiers = split_arm(arm)
    frame = frames[scores_source(modifiers, seed)]
    name = run_name(arm, ratio, seed)
    run_dir = out / "runs" / name
    picked = select(frame, method, ratio, seed, cfg.signal_config())
    rows.write(run_dir / "train.jsonl", picked)
    adopted = model_dir = _adopted_warmup(cfg, seed, out, pool, warmup_source)
    if adopted is not None:
        log(f"{name}: the fine-tune on all {len(picked)} examples is seed {seed}'s warm-up ({adopted})")
    else:
        log(f"{name}: fine-tuning on {len(picked)} examples")
        steps = full_pool_steps(cfg, pool) if "full-steps" in modifiers else None
        model_dir = run_train(cfg.train_job(run_dir, seed, steps), pool.subset(picked), tokenizer, progress=False)
    done_train = training_record(model_dir)
    log(f"{name}: evaluating")
    result = _evaluate_to(run_dir / "eval.json", str(model_dir), cfg, out, log)
    atomic.write_json(run_dir / "results.json", {
        "run": name, "method": arm, "ratio": ratio, "seed": seed, "n_train": int(len(picked)),
        "train_answer_tokens": int(frame["n_target_tokens"].iloc[picked].sum()), "train_steps": done_train["steps"],
        "train_seconds": done_train.get("seconds"), "tasks": result["tasks"], "heldout": result.get("heldout", {}),
        "train_loss": done_train["train_loss"],
        **({"model_from": str(adopted.relative_to(out))} if adopted is not None else {})})


def _same_as_twin(out: Path, run: tuple[str, float | None, int], source: str) -> bool:
    """An @own-warmup run whose scores are the shared ones (seed 0) is the same computation as the arm without the
    modifier (the same subset, recipe and seed): when that run is finished, its results are this run's (marked
    `same_as`), and nothing is trained twice."""
    arm, ratio, seed = run
    method, modifiers = split_arm(arm)
    if "own-warmup" not in modifiers or source != "shared":
        return False
    twin = "@".join([method, *(m for m in modifiers if m != "own-warmup")])
    twin_file = out / "runs" / run_name(twin, ratio, seed) / "results.json"
    if not twin_file.exists():
        return False
    name = run_name(arm, ratio, seed)
    result = {**json.loads(twin_file.read_text()), "run": name, "method": arm, "same_as": run_name(twin, ratio, seed)}
    atomic.write_json(out / "runs" / name / "results.json", result)
    return True


def run_experiment(config_path: str | Path, out: str | Path, log=print, max_runs: int | None = None) -> Path:
    """Compose the stages: base evaluation, `grads select` (shared), then per run a fine-tune and its evaluation;
    the summary is rewritten after every run, so a long grid can be read while it runs."""
    cfg = load_config(config_path)
    with atomic.folder_lock(out):
        return _run(cfg, Path(out), log, max_runs)


def _run(cfg: ExperimentConfig, out: Path, log, max_runs: int | None) -> Path:
    from grads.data.formats import scan_pool
    from grads.data.pool import tokenized
    from grads.data.readers import raw_rows
    from grads.infra.models import load_tokenizer
    from grads.pipeline import adopt_upstream, run_select
    from grads.stages.select import load_scores

    _claim(out, cfg)
    pool_path = _pool_path(cfg, out)
    select_job = cfg.select_job(pool_path, out / "select")  # checks methods and ratios before any model loads
    log("base model: evaluating")
    base = _evaluate_to(out / "runs" / "base" / "results.json", cfg.model, cfg, out, log)
    tokenizer = load_tokenizer(cfg.model)
    pool = tokenized(scan_pool(pool_path, None, cfg.data_limit), tokenizer, cfg.data_limit, cfg.max_length)
    # only the full pool (a pilot): nothing to select, so no warm-up and no scoring
    frames = {"shared": pd.DataFrame({"id": pool.dataset["id"], "row": pool.rows,
                                      "n_target_tokens": pool.n_target_tokens, "status": "ok"})}
    if cfg.plant:  # the `clean` oracle reads the labels (a selection's scores.parquet carries them too)
        labels = json.loads(cfg.labels_path(out).read_text())
        frames["shared"][LABEL] = frames["shared"]["id"].map(labels)
    if cfg.selected_methods():
        if cfg.warmup_from:
            adopt_upstream(Path(cfg.warmup_from) / "select", select_job, log)
        run_select(select_job, log=log)
        frames["shared"] = load_scores(out / "select")
    if cfg.selected_methods(theta0=True):
        log("the @theta0 arms: selecting at the base model")
        run_select(cfg.select_job(pool_path, out / "select-theta0", theta0=True), log=log)
        frames["theta0"] = load_scores(out / "select-theta0")
    rows = raw_rows(pool_path, cfg.data_limit)
    done = 0
    for run in planned_runs(cfg):
        if (out / "runs" / run_name(*run) / "results.json").exists():
            continue
        if max_runs is not None and done >= max_runs:
            break
        source = scores_source(split_arm(run[0])[1], run[2])
        if _same_as_twin(out, run, source):
            continue
        if run[0] == "full":  # its seed's warm-up may be this very fine-tune: made first, then adopted
            source = _warmup_source(cfg, run[2])
        if source is not None and source not in frames:  # an @own-warmup seed: its warm-up, scores, selection
            log(f"the @own-warmup arms of seed {run[2]}: warming up with that seed")
            run_select(cfg.select_job(pool_path, selection_folder(out, source), seed=run[2]), log=log)
            frames[source] = load_scores(selection_folder(out, source))
        _fine_tune(cfg, run, out, frames, rows, pool, tokenizer, log, source if run[0] == "full" else None)
        done += 1
        write_summary(out, cfg, base)
    write_summary(out, cfg, base)
    return out / "summary.md"

"""The warm-up stage of `grads select`: θ0 → θ1, a short LoRA fine-tune on the pool (or a seeded fraction of it).

    OUT/warmup/model   the warm-up adapter (or model) and its done.json; scoring then runs at θ1

Its fingerprint holds exactly what decides the warm-up (model, data, recipe, length, fraction, seed), and the
scores' fingerprint adds the scoring settings, so a selection variant (another signal, rule or final recipe)
reuses both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from grads.config import SelectJob, TrainConfig
from grads.data.pool import TokenizedPool


@dataclass(frozen=True)
class WarmupPlan:
    recipe: TrainConfig  # the warm-up's fine-tuning recipe
    fingerprint: str  # what decides the warm-up model
    score_fingerprint: str  # what decides the scores (the warm-up's fingerprint plus the scoring settings)


def warmup_plan(job: SelectJob, data_sha256: str) -> WarmupPlan:
    """The warm-up's recipe and the fingerprints of the warm-up and of the scores: what decides them and nothing
    else (so a selection variant, another signal or final recipe, can reuse them)."""
    sel = job.select
    # the warm-up is warmup_epochs of the shared recipe (its seed is the select seed, see SelectJob); a fixed step
    # count is for final fine-tunes only
    recipe = job.train.model_copy(update={"epochs": sel.warmup_epochs or 1.0, "max_steps": None})
    upstream = {"model": job.model.settings(False), "data": job.data.settings(False), "data_sha256": data_sha256,
                "train": recipe.settings(runtime=False), "warmup_epochs": sel.warmup_epochs,
                "warmup_fraction": sel.warmup_fraction, "seed": sel.seed}
    fingerprint = job.model.fingerprint(**upstream)
    # scores cut shorter than the warm-up's examples say so (scores at --max-length keep their older fingerprint)
    short = {"score_max_length": job.score_length} if job.score_length != job.data.max_length else {}
    return WarmupPlan(recipe, fingerprint, job.score.fingerprint(warmup=fingerprint, **short))


def warmup_folder(out: str | Path) -> Path:
    return Path(out) / "warmup"


def warmup_rows(job: SelectJob, n: int) -> np.ndarray:
    """The pool rows the warm-up trains on: all, or a seeded warmup_fraction of them, in pool order."""
    sel = job.select
    n_warm = math.ceil(sel.warmup_fraction * n)
    return np.sort(np.random.default_rng(sel.seed).permutation(n)[:n_warm]) if n_warm < n else np.arange(n)


def run_warmup(job: SelectJob, plan: WarmupPlan, tokenizer, pool: TokenizedPool, progress: bool = True,
               log=print) -> Path:
    """Fine-tune θ0 on the pool (or its seeded warmup_fraction) for warmup_epochs; return the θ1 model folder.
    A finished warm-up with the same fingerprint is reused; an interrupted one resumes."""
    from grads.stages.train import train_sft

    sel = job.select
    chosen = warmup_rows(job, len(pool))
    log(f"warm-up: {len(chosen)} examples, {sel.warmup_epochs:g} epoch(s), {'LoRA' if plan.recipe.lora else 'full'}")
    return train_sft(job.model, tokenizer, pool.subset(chosen), warmup_folder(job.out), plan.recipe,
                     plan.fingerprint, progress)

"""One experiment's config (`grads experiment CONFIG.yaml`): its flat fields are the stage configs' own,
and it builds each stage's job.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

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
from grads.core.signals import DensitySpec
from grads.data.bundled import BUNDLED
from grads.errors import GradsError
from grads.experiment.arms import MODIFIERS, split_arm

# settings that say which runs the grid holds, not what a run computes: a resumed grid may change them
SCORE_FREE = ("clean",)  # arms that read only the planted labels: no warm-up or scoring for them
PLANTED = "data-planted"  # DIR/data-planted: the noisy pool, its labels and plant.json
GRID_SHAPE = ("methods", "ratios", "arm_ratios", "seeds", "arm_seeds", "include_full", "order")


class PlantConfig(StageConfig):
    """Noise planted in the experiment's pool (`grads data plant` on its first `pool_limit` records): the runs
    train on the noisy pool, the selections read its labels (the `clean` oracle, selection.json's `noise`)."""

    share: float = Field(gt=0, lt=1, description="the fraction of the noisy pool that is planted")
    kinds: tuple[str, ...] = Field(description="grads.data.plant.KINDS, split equally")
    offdomain: str | None = Field(None, description="the records `offdomain` puts in: a bundled data set "
                                  "(prepared into DIR/data-NAME) or a file")
    seed: int = Field(0, description="chooses the planted records and their damage")


class ExperimentConfig(StageConfig):
    """One experiment. Its flat fields are the stage configs' own (`like`: same type, constraints and help), with
    experiment defaults where they differ; `select_job`, `train_job` and `eval_job` build the stage jobs."""

    model: str = like(ModelConfig, "model", default="smollm2-135m-instruct")
    data: str = Field("medmcqa", description="a bundled data set (medmcqa, gsm8k: prepared into DIR/data) or a "
                      "pool file")
    also_prepare: tuple[Literal[BUNDLED], ...] = added((), "0.4", description="bundled data sets prepared into "
                                                        "DIR/data-NAME, for held-out files of other domains")
    pool_limit: int | None = like(DataConfig, "limit", default=600)
    max_length: int = like(DataConfig, "max_length", default=256)
    methods: tuple[str, ...] = like(SelectConfig, "methods", default=("random", "grads", "grads-high", "gradnorm"))
    ratios: tuple[float, ...] = like(SelectConfig, "ratios", default=(0.05, 0.25, 0.5))
    arm_ratios: dict[str, tuple[float, ...]] = added({}, "0.3", description="ratios of particular methods (arms), "
                                                     "instead of `ratios`: e.g. {random@full-steps: [0.05]}")
    seeds: tuple[int, ...] = Field((0, 1, 2), description="one fine-tune per method, ratio and seed")
    arm_seeds: dict[str, tuple[int, ...]] = added({}, "0.3", description="seeds of particular methods (arms), "
                                                  "instead of `seeds`: e.g. {grads@full-steps: [0, 1, 2]}")
    include_full: bool = Field(True, description="also fine-tune on the whole pool, once per seed")
    selection_signal: str = like(SelectConfig, "signal")
    warmup_epochs: float = like(SelectConfig, "warmup_epochs")
    warmup_fraction: float = like(SelectConfig, "warmup_fraction")
    warmup_from: str | None = added(None, "0.2", description="another experiment folder whose warm-up and scores "
                                    "this one reuses (a selection or recipe variant); its model, data and warm-up "
                                    "settings must be the same")
    plant: PlantConfig | None = added(None, "0.5", description="plant labelled noise in the pool first (the "
                                      "noisy grids: the `clean` arm is the oracle)")
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    device: str = like(ModelConfig, "device")
    dtype: str = like(ModelConfig, "dtype")
    score_batch_size: int = like(ScoreConfig, "batch_size")
    order: Literal["by-seed", "by-method"] = Field("by-seed", description="run the grid seed by seed, or method "
                                                  "by method")

    @field_validator("methods")
    @classmethod
    def _known_arms(cls, arms: tuple[str, ...]) -> tuple[str, ...]:
        from grads.core.rules import check_methods

        check_methods([split_arm(a)[0] for a in arms])  # GradsError (pydantic passes it through)
        unknown = [m for a in arms for m in split_arm(a)[1] if m not in MODIFIERS]
        if unknown:
            raise GradsError(f"unknown arm modifier(s) {', '.join(unknown)}", hint=f"use: {', '.join(MODIFIERS)}")
        both = [a for a in arms if {"theta0", "own-warmup"} <= set(split_arm(a)[1])]
        if both:
            raise GradsError(f"{both[0]}: @theta0 scores the base model, which has no warm-up of its own",
                             hint="use one of @theta0 and @own-warmup")
        return arms

    def selected_methods(self, theta0: bool = False, own_warmup: bool = False) -> tuple[str, ...]:
        """The rules a selection must apply: the shared one's (arms without @theta0; seed 0's @own-warmup arms
        share it), the base model's (theta0: the @theta0 arms) or a seed's own warm-up's (own_warmup)."""
        def wanted(modifiers: tuple[str, ...]) -> bool:
            if theta0 or own_warmup:
                return ("theta0" if theta0 else "own-warmup") in modifiers
            return "theta0" not in modifiers

        return tuple(dict.fromkeys(split_arm(a)[0] for a in self.methods if wanted(split_arm(a)[1])
                                   and split_arm(a)[0] not in SCORE_FREE))

    @model_validator(mode="after")
    def _clean_needs_plant(self) -> ExperimentConfig:
        if self.plant is None and any(split_arm(a)[0] in SCORE_FREE for a in self.methods):
            raise GradsError("the clean arm is the pool minus its planted records: it needs `plant`",
                             hint="add plant: {share: ..., kinds: [...]} or drop the clean arm")
        return self

    @property
    def data_limit(self) -> int | None:
        """The records read from the pool file: pool_limit, or all of a planted pool (planted from that many)."""
        return None if self.plant else self.pool_limit

    def labels_path(self, out: Path) -> Path | None:
        """A planted pool's labels.json (None without planting)."""
        return out / PLANTED / "labels.json" if self.plant else None

    def stage_model(self, model: str | None = None) -> ModelConfig:
        return ModelConfig(model=model or self.model, dtype=self.dtype, device=self.device)

    def signal_config(self) -> DensitySpec:
        return SignalConfig(signal=self.selection_signal).spec()

    def select_job(self, pool_path: Path, out: Path, theta0: bool = False, seed: int | None = None) -> SelectJob:
        """The one shared selection (seed 0; the random baseline re-draws per seed in the runs); theta0: the
        selection of the @theta0 arms, at the base model; seed: the selection of the @own-warmup arms of that
        seed, after a warm-up whose sample and order that seed draws."""
        return SelectJob(model=self.stage_model(), data=DataConfig(data=pool_path, max_length=self.max_length,
                                                                    limit=self.data_limit),
                         score=ScoreConfig(batch_size=self.score_batch_size), train=self.train,
                         select=SelectConfig(methods=self.selected_methods(theta0, seed is not None) or ("grads",),
                                             ratios=self.ratios, seed=seed or 0,
                                             warmup_epochs=0.0 if theta0 else self.warmup_epochs,
                                             warmup_fraction=self.warmup_fraction, signal=self.selection_signal,
                                             labels=self.labels_path(out.parent)),
                         out=out)

    def train_job(self, run_dir: Path, seed: int, max_steps: int | None = None) -> TrainJob:
        """A fine-tune of the base model on the run's train.jsonl (the chosen pool rows, verbatim); max_steps
        overrides the recipe's length (the @full-steps arms)."""
        recipe = self.train.model_copy(update={"seed": seed, **({"max_steps": max_steps} if max_steps else {})})
        return TrainJob(model=self.stage_model(), data=DataConfig(data=run_dir / "train.jsonl",
                                                                   max_length=self.max_length),
                        train=recipe, out=run_dir)

    def eval_job(self, model: str, out: Path, folder: Path) -> EvalJob:
        """The evaluation of `model` (the experiment in `folder`: '{out}' in held-out paths stands for it)."""
        ev = self.eval
        heldout = tuple(Path(path.replace("{out}", str(folder))) for path in ev.heldout + ev.general_heldout)
        return EvalJob(model=self.stage_model(model), tasks=tuple(ev.all_tasks()), heldout=heldout,
                       heldout_limit=ev.heldout_limit, limit=ev.limit, limits=ev.limits, batch_size=ev.batch_size,
                       mc_rotations=ev.mc_rotations, max_length=self.max_length, out=out)


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
    return config_from(raw, path)


def config_from(raw: object, path: Path) -> ExperimentConfig:
    """An ExperimentConfig from parsed settings (YAML, or a folder's config.json); bad ones name `path`."""
    try:
        return ExperimentConfig(**raw)
    except ValidationError as err:
        first = err.errors()[0]
        raise GradsError(f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}", path=path) from None
    except TypeError as err:
        raise GradsError(f"config must be a mapping of settings: {err}", path=path) from None

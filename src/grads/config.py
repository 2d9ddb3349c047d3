"""One typed config per stage, and one job (its configs plus an output folder) per stage entry point.

Defaults, constraints and help texts live here and nowhere else: the CLI's options are built from these fields
(`grads.cli`), and the experiment config declares its flat fields as copies of them (`like`). Method and signal
names are checked against the registries in `grads.core` (the one list of each).
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from grads.core.kde import BANDWIDTH_RULES, EXACT_MAX_N, KDE_METHODS
from grads.core.rules import check_methods, check_ratios
from grads.core.signals import SIGNALS, DensitySpec, check_signal
from grads.eval.tasks import DOMAIN_TASKS, GENERAL_TASKS, TASK_GROUPS

# Epochs of warm-up before scoring: the paper's one-epoch warm-up (θ1); 0 scores the base model θ0, the documented
# fast mode (docs/method.md §1: an earlier no-warm-up default was chosen on an instrument that could not tell).
DEFAULT_WARMUP_EPOCHS = 1.0

# `grads eval --backend`: the built-in evaluator (grads.eval.loglik) or lm-evaluation-harness (grads.eval.harness)
BACKENDS = ("grads", "lm-eval")


def added(default: object, version: str, **kwargs) -> object:
    """A setting added after the first release: left out of `settings()` while it holds its default, so the
    records and fingerprints of runs made before it existed (a half-finished grid, a warm-up) stay valid."""
    return Field(default, json_schema_extra={"added_in": version}, **kwargs)


def runtime(default: object, **kwargs) -> object:
    """A setting of how a stage runs, not of what it computes (e.g. sharding the model): recorded in `settings()`
    when it is not its default, never part of a fingerprint, so a run may be resumed with another."""
    return Field(default, json_schema_extra={"runtime": True}, **kwargs)


def like(source: type[BaseModel], name: str, **changes: Any) -> Any:
    """A field declared as `source`'s field `name` (type constraints, description, default), with `changes`
    (e.g. another default): how a config that gathers other stages' settings avoids restating them."""
    info = copy.deepcopy(source.model_fields[name])
    for key, value in changes.items():
        setattr(info, key, value)
    return info


def default(source: type[BaseModel], name: str) -> Any:
    """The default of a config field (for the CLI's option defaults)."""
    return source.model_fields[name].default


def describe(source: type[BaseModel], name: str) -> str:
    """The help text of a config field (for the CLI's option help)."""
    return source.model_fields[name].description or ""


class StageConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def settings(self, runtime: bool = True) -> dict:
        """Every setting as JSON, less added and runtime settings that hold their default (see `added`, `runtime`);
        runtime=False: less every runtime setting (what decides the output, for fingerprints)."""
        dump = self.model_dump(mode="json")
        for name, field in type(self).model_fields.items():
            value, extra = getattr(self, name), field.json_schema_extra or {}
            if isinstance(value, StageConfig):
                dump[name] = value.settings(runtime)
            elif (extra.get("added_in") or extra.get("runtime")) and value == field.default or \
                    extra.get("runtime") and not runtime:
                del dump[name]
        return dump

    def fingerprint(self, **extra: object) -> str:
        """A stable hash of every setting (plus extras such as the input's hash) that decides a stage's output."""
        payload = json.dumps({"config": self.settings(runtime=False), **extra}, sort_keys=True, default=str)
        return hashlib.sha256(payload.encode()).hexdigest()[:20]


class ModelConfig(StageConfig):
    model: str = Field(description="model folder, .gguf file, cached hub id, or built-in name")
    dtype: str = Field("auto", description="auto (fp32 on CPU, bf16 on a capable GPU), float32, bfloat16, float16")
    device: str = Field("auto", description="auto, cpu, cuda, cuda:1, ...")
    trust_remote_code: bool = Field(False, description="run code shipped with the model (only for models you trust)")


class DataConfig(StageConfig):
    data: Path = Field(description=".jsonl, .json (also .gz/.zst), .parquet, a datasets save_to_disk folder, or a "
                       "cached hub dataset OWNER/NAME[:SPLIT]")
    format: Literal["chat", "prompt-completion", "alpaca", "sharegpt"] | None = Field(
        None, description="chat | prompt-completion | alpaca | sharegpt (default: detected from the first record)")
    max_length: int = Field(512, gt=8, description="tokens per example; longer prompts are cut from the left")
    limit: int | None = Field(None, gt=0, description="use only the first N records")


class ScoreConfig(StageConfig):
    batch_size: int = Field(8, gt=0, description="examples per batch (batches are formed by length)")
    batches_per_chunk: int = Field(4, gt=0, description="batches per resumable chunk file")
    vocab_chunk: int | None = Field(None, gt=0, description="vocabulary rows per head chunk (None = auto)")
    tied_total: bool = Field(True, description="also report the shared tensor's norm when weights are tied")
    padding_side: Literal["right", "left"] = "right"
    fsdp: bool = runtime(False, description="shard the model's parameters across the ranks of a launched job "
                                            "(PyTorch FSDP2); each rank still scores its own batches")


class ScoreJob(StageConfig):
    """Everything `grads score` needs."""

    model: ModelConfig
    data: DataConfig
    score: ScoreConfig = ScoreConfig()
    out: Path


class TrainConfig(StageConfig):
    """Supervised fine-tuning (warm-up and final runs share it) with TRL's SFTTrainer."""

    lora: bool = Field(True, description="LoRA adapters (default) or full fine-tuning")
    lora_r: int = Field(8, gt=0)
    lora_alpha: int = Field(16, gt=0)
    lora_dropout: float = Field(0.0, ge=0, lt=1)
    lora_target: str = Field("all-linear", description="PEFT target_modules (never the embedding or LM head)")
    epochs: float = Field(1.0, gt=0)
    learning_rate: float | None = Field(None, gt=0, description="None: 2e-4 with LoRA, 2e-5 full")
    batch_size: int = Field(8, gt=0)
    grad_accum: int = Field(1, gt=0)
    warmup_ratio: float = Field(0.0, ge=0, lt=1)
    sampling: Literal["group_by_length", "random"] = Field(
        "group_by_length", description="batches of similar length (seeded; far less padding) or plain shuffling")
    max_steps: int | None = added(None, "0.2", gt=0, description="optimizer steps for every run, whatever the "
                                  "data size (overrides epochs; a small subset is repeated); warm-ups ignore it")
    seed: int = 0
    save_steps: int = Field(25, gt=0, description="checkpoint every N optimizer steps (a rerun resumes there)")
    activation_checkpointing: bool = runtime(True, description="recompute activations in the backward pass: less "
                                             "memory, slower (1.2x the time per step on a CPU); the same model")

    @property
    def lr(self) -> float:
        return self.learning_rate or (2e-4 if self.lora else 2e-5)


class SignalConfig(StageConfig):
    """How the two norms become one signal s and its density (the DECIDED choices of docs/method.md §3); the
    typed, validated form of grads.core.signals.DensitySpec, whose defaults it takes."""

    signal: str = Field(DensitySpec.signal, description="combined signal of the density rules: "
                        f"{' | '.join(SIGNALS)} (grads.core.signals.SIGNALS)")
    bandwidth: str = Field(DensitySpec.bandwidth, description=f"KDE bandwidth rule: {' | '.join(BANDWIDTH_RULES)} "
                           "| a factor times the std")
    bandwidth_scale: float = Field(DensitySpec.bandwidth_scale, gt=0, description="multiplies the bandwidth")
    kde: Literal[KDE_METHODS] = Field(DensitySpec.kde, description="exact O(n²) sum or FFT on a fine grid "
                                      f"(auto: exact up to {EXACT_MAX_N:,} examples)")

    @field_validator("signal")
    @classmethod
    def _known_signal(cls, value: str) -> str:
        check_signal(value)
        return value

    def spec(self) -> DensitySpec:
        """The signal and density settings as the pure functions of grads.core take them (a numeric bandwidth
        string becomes the factor)."""
        try:
            bandwidth: str | float = float(self.bandwidth)
        except ValueError:
            bandwidth = self.bandwidth
        return DensitySpec(self.signal, bandwidth, self.bandwidth_scale, self.kde)


class SelectConfig(SignalConfig):
    """`grads select`: warm-up length, methods and ratios, plus the signal and density choices it inherits."""

    methods: tuple[str, ...] = Field(("grads",), description="selection rules (grads.core.rules.RULES)")
    ratios: tuple[float, ...] = Field((0.05,), description="fractions of the eligible examples to keep, in (0, 1]")
    seed: int = Field(0, description="the one seed of a selection: warm-up (sample, order) and random baselines")
    warmup_epochs: float = Field(DEFAULT_WARMUP_EPOCHS, ge=0, description="0 scores the base model without a "
                                 "warm-up; 1 is the paper's one-epoch warm-up")
    warmup_fraction: float = Field(1.0, gt=0, le=1, description="warm up on a seeded random fraction of the pool")
    score_model: str | None = Field(None, description="a (smaller) model whose warm-up and scores choose the data "
                                    "for --model, a proxy (default: --model itself)")
    score_max_length: int | None = Field(None, gt=1, description="cut examples to this many tokens for scoring "
                                         "only (the warm-up and the fine-tunes keep --max-length)")
    labels: Path | None = added(None, "0.5", description="labels.json of a planted pool (`grads data plant`: id -> "
                                "clean or its kind): selection.json's `noise` and the report say how well each "
                                "score flags the planted records and what each rule keeps of them")
    canaries: int = added(0, "0.5", ge=0, description="make this many noisy copies of the pool's own records "
                          "(swapped, shuffled, truncated, boilerplate answers, duplicates), score them with the pool "
                          "and report how many of each kind every rule would keep; never in a selected file")

    @field_validator("methods")
    @classmethod
    def _known_methods(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        check_methods(value)
        return value

    @field_validator("ratios")
    @classmethod
    def _valid_ratios(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        check_ratios(value)
        return value


class SelectJob(StageConfig):
    """Everything `grads select` needs. `train` is the warm-up's recipe; it takes its seed from `select.seed`."""

    model: ModelConfig
    data: DataConfig
    score: ScoreConfig = ScoreConfig()
    train: TrainConfig = TrainConfig()
    select: SelectConfig = SelectConfig()
    out: Path

    @model_validator(mode="before")
    @classmethod
    def _one_seed(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        select = data.get("select", SelectConfig())
        seed = select.seed if isinstance(select, SelectConfig) else dict(select).get("seed", 0)
        train = data.get("train", TrainConfig())
        train = train.model_copy(update={"seed": seed}) if isinstance(train, TrainConfig) else {**train, "seed": seed}
        return {**data, "train": train}


    @property
    def score_length(self) -> int | None:
        """The length examples are cut to for scoring: --max-length, or the shorter --score-max-length."""
        return min((n for n in (self.data.max_length, self.select.score_max_length) if n), default=None)

    def scoring_side(self) -> SelectJob:
        """This job as its warm-up and scoring see it: the score model (a proxy) in place of the model."""
        if self.select.score_model in (None, self.model.model):
            return self
        return self.model_copy(update={"model": self.model.model_copy(update={"model": self.select.score_model})})


class TrainJob(StageConfig):
    """Everything `grads train` needs."""

    model: ModelConfig
    data: DataConfig
    train: TrainConfig = TrainConfig()
    out: Path

    def fingerprint_for(self, data_sha256: str) -> str:
        """What decides the fine-tuned model: the recipe, the base model, the data settings and the data's hash."""
        return self.train.fingerprint(model=self.model.settings(False), data_sha256=data_sha256,
                                      data=self.data.settings(False))


class EvalConfig(StageConfig):
    """The evaluation of an experiment: which tasks count as domain (G), general (F) and validation, and which
    held-out answer files measure the domain as likelihood (G_bpb)."""

    domain_tasks: tuple[str, ...] = DOMAIN_TASKS
    general_tasks: tuple[str, ...] = Field(GENERAL_TASKS, description="general tasks: F_acc from those with an "
                                           "accuracy, F_bpb from those with bits per byte (NAME:bpb, gsm8k)")
    validation_tasks: tuple[str, ...] = Field(
        (), description="tasks carved from the pool's side (e.g. medmcqa_val): reported as G_val, used to choose "
        "variants; never part of G or F")
    limit: int | None = Field(200, gt=0, description="questions per task (a fixed subset, the same for all runs)")
    limits: dict[str, int] = Field({}, description="per-task overrides of limit")
    batch_size: int = Field(16, gt=0, description="sequences per forward pass")
    heldout: tuple[str, ...] = added((), "0.3", description="held-out answer files of the domain, scored as bits "
                                     "per byte (G_bpb); '{out}' stands for the experiment folder")
    heldout_limit: int | None = added(None, "0.3", gt=0, description="score only the first N examples of each "
                                      "held-out file")
    general_heldout: tuple[str, ...] = added((), "0.4", description="held-out answer files of other domains, "
                                             "scored as bits per byte into the forgetting figures (F_bpb) like a "
                                             "general task; '{out}' stands for the experiment folder")
    mc_rotations: int | None = added(None, "0.3", gt=0, description="ask letter questions in this many cyclic "
                                     "rotations of their options (None: all K), accuracy averaged over them")

    def general_heldout_names(self) -> tuple[str, ...]:
        """The names the general held-out files are reported under (their file stems, as `grads eval` names them)."""
        return tuple(Path(path).stem for path in self.general_heldout)

    def all_tasks(self) -> list[str]:
        return list(dict.fromkeys(self.domain_tasks + self.validation_tasks + self.general_tasks))


class EvalJob(StageConfig):
    """Everything `grads eval` needs: tasks are names, groups (grads.eval.tasks.TASK_GROUPS) or .jsonl files;
    held-out files are SFT data in any format grads reads."""

    model: ModelConfig
    tasks: tuple[str, ...] = Field(("all",), description="task names (NAME:bpb for the gold answer's bits per "
                                   f"byte), groups ({', '.join(TASK_GROUPS)}), or a .jsonl of question/choices/answer")
    heldout: tuple[Path, ...] = Field((), description="held-out SFT files: answer-token NLL and bits per byte, "
                                      "scored as training masks them")
    heldout_limit: int | None = like(EvalConfig, "heldout_limit", json_schema_extra=None)
    question_use: bool = Field(True, description="also score each held-out file's answers under other examples' "
                               "questions (a seeded derangement): bpb_mismatched and question_use_bpb, at one more "
                               "forward pass over the file")
    limit: int | None = like(EvalConfig, "limit", default=None)
    limits: dict[str, int] = like(EvalConfig, "limits")
    batch_size: int = like(EvalConfig, "batch_size")
    mc_rotations: int | None = like(EvalConfig, "mc_rotations", json_schema_extra=None)
    max_length: int = like(DataConfig, "max_length")
    backend: Literal[BACKENDS] = Field(BACKENDS[0], description="grads (built in) or lm-eval (the same "
                                                 "tasks and questions through lm-evaluation-harness)")
    out: Path

"""One typed config per stage. The CLI mirrors these fields; defaults live here and nowhere else."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

# The combined signal s of the density rules (docs/method.md §3; the measured choice, docs/results.md "Variants").
DEFAULT_SIGNAL = "zsum"
# Epochs of warm-up before scoring: 0 scores the base model θ0 (the measured choice, docs/method.md "What the
# measurements say about the defaults"; the paper's warm-up is 1).
DEFAULT_WARMUP_EPOCHS = 0.0


def added(default: object, version: str, **kwargs) -> object:
    """A setting added after the first release: left out of `settings()` while it holds its default, so the
    records and fingerprints of runs made before it existed (a half-finished grid, a warm-up) stay valid."""
    return Field(default, json_schema_extra={"added_in": version}, **kwargs)


class StageConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def settings(self) -> dict:
        """Every setting as JSON, less added settings that hold their default (see `added`)."""
        dump = self.model_dump(mode="json")
        for name, field in type(self).model_fields.items():
            value = getattr(self, name)
            if isinstance(value, StageConfig):
                dump[name] = value.settings()
            elif (field.json_schema_extra or {}).get("added_in") and value == field.default:
                del dump[name]
        return dump

    def fingerprint(self, **extra: object) -> str:
        """A stable hash of every setting (plus extras such as the input's hash) that decides a stage's output."""
        payload = json.dumps({"config": self.settings(), **extra}, sort_keys=True, default=str)
        return hashlib.sha256(payload.encode()).hexdigest()[:20]


class ModelConfig(StageConfig):
    model: str = Field(description="model folder, .gguf file, cached hub id, or built-in name")
    dtype: str = Field("auto", description="auto (fp32 on CPU, bf16 on a capable GPU), float32, bfloat16, float16")
    device: str = Field("auto", description="auto, cpu, cuda, cuda:1, ...")
    trust_remote_code: bool = Field(False, description="run code shipped with the model (only for models you trust)")


class DataConfig(StageConfig):
    data: Path = Field(description=".jsonl, .json, .parquet or a datasets save_to_disk folder")
    format: Literal["chat", "prompt-completion", "alpaca"] | None = Field(None, description="None = auto-detect")
    max_length: int = Field(512, gt=8, description="tokens per example; longer prompts are cut from the left")
    limit: int | None = Field(None, gt=0, description="use only the first N records")


class ScoreConfig(StageConfig):
    batch_size: int = Field(8, gt=0, description="examples per batch (batches are formed by length)")
    batches_per_chunk: int = Field(4, gt=0, description="batches per resumable chunk file")
    vocab_chunk: int | None = Field(None, gt=0, description="vocabulary rows per head chunk (None = auto)")
    tied_total: bool = Field(True, description="also report the shared tensor's norm when weights are tied")
    padding_side: Literal["right", "left"] = "right"


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

    @property
    def lr(self) -> float:
        return self.learning_rate or (2e-4 if self.lora else 2e-5)


class SelectConfig(StageConfig):
    """`grads select`: warm-up length, the signal and density choices, methods and ratios."""

    methods: tuple[str, ...] = ("grads",)
    ratios: tuple[float, ...] = (0.05,)
    seed: int = 0
    warmup_epochs: float = Field(DEFAULT_WARMUP_EPOCHS, ge=0, description="0 scores the base model without a warm-up")
    warmup_fraction: float = Field(1.0, gt=0, le=1, description="warm up on a seeded random fraction of the pool")
    signal: str = Field(DEFAULT_SIGNAL, description="zsum | robust-zsum | emb | head | zsum-length-residual")
    bandwidth: str = Field("scott", description="scott | silverman | a number (factor times the std)")
    bandwidth_scale: float = Field(1.0, gt=0)
    kde: Literal["auto", "exact", "binned"] = "auto"


class SelectJob(StageConfig):
    """Everything `grads select` needs."""

    model: ModelConfig
    data: DataConfig
    score: ScoreConfig = ScoreConfig()
    train: TrainConfig = TrainConfig()
    select: SelectConfig = SelectConfig()
    out: Path

"""Supervised fine-tuning with TRL's SFTTrainer on grads' own tokenised examples (answer-only labels).

Used for the warm-up (θ0 → θ1) and for `grads train`. Checkpoints are saved every `save_steps`; a rerun
resumes from the last complete one (a checkpoint cut short by a kill is deleted), and a finished run
(OUT/model with done.json) is reused as it is. Checkpoints of a run with other settings are refused.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from grads.config import ModelConfig, TrainConfig, TrainJob
from grads.data.pool import TokenizedPool
from grads.errors import GradsError
from grads.infra import atomic, distributed

DONE = "done.json"
OWNER = "fingerprint.json"  # in OUT/checkpoints: which run the checkpoints belong to


def training_record(model_dir: str | Path) -> dict:
    """What a finished fine-tune recorded beside its model (done.json): loss, steps, seconds, recipe."""
    return json.loads((Path(model_dir) / DONE).read_text())


def last_complete_checkpoint(folder: Path) -> str | None:
    """The newest checkpoint-N whose trainer_state.json (the Trainer writes it last) is readable; checkpoints a
    kill cut short are removed, so resuming never starts from half-saved weights or optimizer state."""
    if not folder.is_dir():
        return None
    complete = []
    for path in folder.glob("checkpoint-*"):
        if not (path.is_dir() and path.name.removeprefix("checkpoint-").isdigit()):
            continue
        try:
            json.loads((path / "trainer_state.json").read_text())
            complete.append(path)
        except (OSError, ValueError):
            shutil.rmtree(path, ignore_errors=True)
    return str(max(complete, key=lambda p: int(p.name.removeprefix("checkpoint-")))) if complete else None


SECONDS = "seconds-by-step.json"  # in OUT/checkpoints: training seconds up to each step, over every sitting


def _seconds_callback(folder: Path, by_step: dict[str, float], earlier: float, started: float):
    """Records after each optimizer step the training seconds up to it (earlier sittings' and this one's; a
    step ends before its checkpoint is saved), so a run resumed from checkpoint-N counts all of its time."""
    from transformers import TrainerCallback

    class Seconds(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            by_step[str(state.global_step)] = round(earlier + time.perf_counter() - started, 1)
            if distributed.is_main():
                atomic.write_json(folder / SECONDS, by_step)

    return Seconds()


def _seconds_so_far(checkpoints: Path, last: str | None) -> tuple[dict[str, float], float]:
    """The seconds recorded by step, and those up to the checkpoint a run resumes from (0 for a fresh run)."""
    path = checkpoints / SECONDS
    by_step = json.loads(path.read_text()) if last and path.exists() else {}
    return by_step, by_step.get(Path(last).name.removeprefix("checkpoint-"), 0.0) if last else 0.0


def _sort_target_modules(config_file: Path) -> None:
    """PEFT writes target_modules from a set, in an order that changes with each process's string hashing; sort it
    so the same run always saves the same adapter_config.json (PEFT reads the list back as a set)."""
    if not config_file.exists():
        return
    config = json.loads(config_file.read_text())
    if isinstance(config.get("target_modules"), list):
        config["target_modules"] = sorted(config["target_modules"])
        atomic.write_text(config_file, json.dumps(config, indent=2, sort_keys=True))


def _train_dataset(pool: TokenizedPool):
    """input_ids + labels of the examples that have an answer token (a view; nothing is copied)."""
    keep = np.flatnonzero(pool.n_target_tokens > 0)
    return pool.dataset.select(keep).select_columns(["input_ids", "labels"])


def _sft_args(cfg: TrainConfig, out_dir: Path, device: torch.device, model, progress: bool):
    from trl import SFTConfig

    on_gpu = device.type == "cuda"
    # transformers 5.x renamed gradient_checkpointing (the old name warns); TRL's default turns it on
    checkpointing = "activation_checkpointing" if "activation_checkpointing" in SFTConfig.__dataclass_fields__ \
        else "gradient_checkpointing"
    return SFTConfig(
        output_dir=str(out_dir / "checkpoints"), num_train_epochs=cfg.epochs, max_steps=cfg.max_steps or -1,
        per_device_train_batch_size=cfg.batch_size, gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.lr, lr_scheduler_type="linear", warmup_steps=cfg.warmup_ratio,
        seed=cfg.seed, data_seed=cfg.seed, train_sampling_strategy=cfg.sampling, logging_steps=5,
        save_strategy="steps", save_steps=cfg.save_steps,
        save_total_limit=2, report_to=[], use_cpu=not on_gpu,
        bf16=on_gpu and torch.cuda.is_bf16_supported() and model.dtype == torch.bfloat16, fp16=False,
        max_length=None, packing=False, disable_tqdm=not progress, dataloader_num_workers=0,
        **{checkpointing: cfg.activation_checkpointing},
    )


def _claim(out_dir: Path, fingerprint: str) -> bool:
    """True when out_dir already holds this finished run; refuses a folder holding another run's model or
    checkpoints; clears what a kill cut short (a half-saved final model, a half-written checkpoint)."""
    checkpoints = out_dir / "checkpoints"
    if atomic.owned_by(out_dir / "model" / DONE, fingerprint, "folder holds a finished training run with other "
                       "settings", path=out_dir, hint="use another output folder, or delete this one"):
        shutil.rmtree(checkpoints, ignore_errors=True)  # left if a kill came right after the save
        return True
    atomic.owned_by(checkpoints / OWNER, fingerprint, "folder holds unfinished training checkpoints of a run with "
                    "other settings", path=checkpoints, hint="rerun with that run's settings to resume it, use "
                    "another output folder, or delete this one to start over")
    distributed.init()
    if distributed.is_main():
        for stale in out_dir.glob(".model.*"):  # a final save a kill cut short
            shutil.rmtree(stale, ignore_errors=True)
        last_complete_checkpoint(checkpoints)  # drops a checkpoint a kill cut short
    distributed.barrier()
    return False


def train_sft(model_cfg: ModelConfig, tokenizer, examples: TokenizedPool, out_dir: str | Path, cfg: TrainConfig,
              fingerprint: str, progress: bool = True) -> Path:
    """Fine-tune model_cfg.model on the examples; return the folder of the adapter (LoRA) or full model."""
    from trl import SFTTrainer

    from grads.infra.models import load_model, peft_without_deprecation_noise, pick_device

    out_dir = Path(out_dir)
    started = time.perf_counter()
    final = out_dir / "model"
    if _claim(out_dir, fingerprint):
        return final
    dataset = _train_dataset(examples)
    if not len(dataset):
        raise GradsError("no example has an answer token left to train on", hint="raise --max-length")
    model = load_model(model_cfg.model, dtype=model_cfg.dtype, device=model_cfg.device,
                       trust_remote_code=model_cfg.trust_remote_code)
    peft_config = None
    if cfg.lora:
        from peft import LoraConfig

        peft_config = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                                 target_modules=cfg.lora_target, task_type="CAUSAL_LM")
    args = _sft_args(cfg, out_dir, pick_device(model_cfg.device), model, progress)
    with peft_without_deprecation_noise():
        trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                             peft_config=peft_config)
    last = last_complete_checkpoint(out_dir / "checkpoints")
    by_step, earlier = _seconds_so_far(out_dir / "checkpoints", last)
    trainer.add_callback(_seconds_callback(out_dir / "checkpoints", by_step, earlier, started))
    if distributed.is_main():
        atomic.write_json(out_dir / "checkpoints" / OWNER, {"fingerprint": fingerprint})
    result = trainer.train(resume_from_checkpoint=last)
    sharded = trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled
    if sharded:  # FSDP / DeepSpeed: every rank takes part in gathering the weights, rank 0 writes them
        trainer.save_model(str(out_dir / ".model.gathered"))
    if not distributed.is_main():  # data-parallel replicas: rank 0 writes the one model
        distributed.barrier()
        return final
    record = {"fingerprint": fingerprint, "train_loss": result.training_loss,
              "loss_history": [e["loss"] for e in trainer.state.log_history if "loss" in e],
              "steps": trainer.state.global_step, "seconds": round(earlier + time.perf_counter() - started, 1),
              "seconds_this_sitting": round(time.perf_counter() - started, 1),
              "seconds_by_step": dict(by_step),
              "examples": len(dataset), "resumed_from": last, "config": cfg.settings(),
              "base_model": model_cfg.model}
    with atomic.atomic_folder(final) as tmp:
        if sharded:
            tmp.rmdir()
            os.replace(out_dir / ".model.gathered", tmp)
            (tmp / "training_args.bin").unlink(missing_ok=True)  # a pickle the Trainer adds; never needed
        else:
            trainer.model.save_pretrained(tmp)
        _sort_target_modules(tmp / "adapter_config.json")
        tokenizer.save_pretrained(tmp)
        atomic.write_json(tmp / DONE, record)
    shutil.rmtree(out_dir / "checkpoints", ignore_errors=True)
    distributed.barrier()
    return final


def run_train(job: TrainJob, pool: TokenizedPool | None = None, tokenizer=None, progress: bool = True) -> Path:
    """The fine-tuning stage (`grads train`): tokenise job.data (or take `pool`, the same examples already
    tokenised by the caller), fine-tune, write OUT/model. Returns the model folder."""
    from grads.data.formats import scan_pool
    from grads.data.pool import tokenized
    from grads.infra.models import load_tokenizer

    info = scan_pool(job.data.data, job.data.format, job.data.limit)  # bad input stops before any model loads
    if tokenizer is None:
        tokenizer = load_tokenizer(job.model.model, trust_remote_code=job.model.trust_remote_code)
    if pool is None:
        pool = tokenized(info, tokenizer, job.data.limit, job.data.max_length)
    with atomic.folder_lock(job.out):
        return train_sft(job.model, tokenizer, pool, job.out, job.train, job.fingerprint_for(info.sha256), progress)

"""Fine-tuning with and without activation checkpointing (TRL turns it on): seconds per optimizer step of `grads
train` on the same data and seed, one after the other in one run, and whether the two LoRA adapters are equal.

  python benchmarks/checkpointing.py                      # SmolLM2, 48 MedMCQA examples, 6 steps of 8
  python benchmarks/checkpointing.py --model PATH --steps 4   # any causal LM grads loads
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file

from grads.config import DataConfig, ModelConfig, TrainConfig, TrainJob
from grads.data import bundled
from grads.stages.train import run_train


def train(model: str, pool: Path, steps: int, checkpointing: bool, out: Path) -> tuple[float, dict]:
    job = TrainJob(model=ModelConfig(model=model), data=DataConfig(data=pool, limit=8 * steps, max_length=256),
                   train=TrainConfig(batch_size=8, max_steps=steps, activation_checkpointing=checkpointing), out=out)
    model_dir = run_train(job, progress=False)
    done = json.loads((model_dir / "done.json").read_text())
    return done["seconds"] / done["steps"], load_file(model_dir / "adapter_model.safetensors")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        bundled.prepare_medmcqa(tmp / "data")
        on_s, on = train(args.model, tmp / "data" / "pool.jsonl", args.steps, True, tmp / "on")
        off_s, off = train(args.model, tmp / "data" / "pool.jsonl", args.steps, False, tmp / "off")
    same = on.keys() == off.keys() and all(torch.equal(on[k], off[k]) for k in on)
    print(f"{args.model}, {args.steps} steps of 8, {args.threads} threads: checkpointing on {on_s:.2f} s/step, "
          f"off {off_s:.2f} s/step (off/on = {off_s / on_s:.2f}); adapters bit-identical: {same}")


if __name__ == "__main__":
    main()

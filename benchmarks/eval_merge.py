"""Evaluation of a LoRA fine-tune with the adapter folded into the base weights (what `grads eval` does) against
the adapter as PEFT loads it (its own matmuls beside every targeted layer): seconds of each, side by side in one
run (alternating, best of --repeats), and the largest difference of any per-item value. The tasks and held-out
file are eval_head.py's (the claims grid's).

  python benchmarks/eval_merge.py                     # SmolLM2 with an adapter of the training defaults
  python benchmarks/eval_merge.py --adapter results/claim-medmcqa/runs/grads-0.05-s0/model

Without --adapter, one is made on --model with `grads train`'s LoRA settings (TrainConfig: rank, alpha, every
linear layer) and random weights in both factors, so that it changes the model as a trained one does.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from eval_head import arguments, side_by_side

from grads.config import TrainConfig
from grads.infra.models import load_model, load_tokenizer, peft_without_deprecation_noise


def random_adapter(model_name: str, folder: Path) -> Path:
    """A LoRA adapter of the training defaults on `model_name`, both factors random, saved in `folder`."""
    from peft import LoraConfig, get_peft_model

    cfg = TrainConfig()
    torch.manual_seed(0)
    with peft_without_deprecation_noise():
        model = get_peft_model(load_model(model_name, device="cpu"),
                               LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, target_modules=cfg.lora_target,
                                          init_lora_weights=False, task_type="CAUSAL_LM"))
    model.save_pretrained(folder)
    load_tokenizer(model_name).save_pretrained(folder)
    return folder


def main(argv=None) -> dict:
    parser = arguments(__doc__)
    parser.add_argument("--adapter", type=Path, help="a LoRA adapter folder (a grads train output's model/); "
                        "default: one made on --model")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        adapter = str(args.adapter or random_adapter(args.model, Path(tmp) / "adapter"))
        tokenizer = load_tokenizer(adapter)
        as_loaded = load_model(adapter, device="cpu")
        if not hasattr(as_loaded, "merge_and_unload"):
            raise SystemExit(f"error: {adapter} is not a LoRA adapter (PEFT loaded no adapter)")
        merged = load_model(adapter, device="cpu").merge_and_unload()
    return side_by_side({"merged": merged, "as loaded": as_loaded}, tokenizer, args, model=args.model,
                        adapter=str(args.adapter) if args.adapter else "random (TrainConfig)")


if __name__ == "__main__":
    main()

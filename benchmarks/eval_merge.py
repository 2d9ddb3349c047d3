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

import argparse
import tempfile
from pathlib import Path

import torch
from eval_head import TASKS, heldout_explanations, run

from grads.config import EvalConfig, TrainConfig
from grads.infra import atomic
from grads.infra.models import load_model, load_tokenizer


def random_adapter(model_name: str, folder: Path) -> Path:
    """A LoRA adapter of the training defaults on `model_name`, both factors random, saved in `folder`."""
    from peft import LoraConfig, get_peft_model

    cfg = TrainConfig()
    torch.manual_seed(0)
    model = get_peft_model(load_model(model_name, device="cpu"),
                           LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, target_modules=cfg.lora_target,
                                      init_lora_weights=False, task_type="CAUSAL_LM"))
    model.save_pretrained(folder)
    load_tokenizer(model_name).save_pretrained(folder)
    return folder


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct", help="the base (when no --adapter is given)")
    parser.add_argument("--adapter", type=Path, help="a LoRA adapter folder (a grads train output's model/)")
    parser.add_argument("--tasks", nargs="+", default=TASKS, help="the tasks (default: the claims grid's)")
    parser.add_argument("--limit", type=int, default=20, help="questions per task")
    parser.add_argument("--heldout-limit", type=int, default=40, help="held-out MedMCQA explanations")
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=EvalConfig().batch_size)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        adapter = str(args.adapter or random_adapter(args.model, Path(tmp) / "adapter"))
        tokenizer = load_tokenizer(adapter)
        heldout = heldout_explanations(tokenizer, args.max_length, args.heldout_limit)
        as_loaded = load_model(adapter, device="cpu")
        if not hasattr(as_loaded, "merge_and_unload"):
            raise SystemExit(f"error: {adapter} is not a LoRA adapter (PEFT loaded no adapter)")
        merged = load_model(adapter, device="cpu").merge_and_unload()
    seconds: dict[str, list[float]] = {"merged": [], "as loaded": []}
    values = {}
    for _ in range(args.repeats):
        for name, lm in (("merged", merged), ("as loaded", as_loaded)):
            took, values[name] = run(lm, tokenizer, heldout, args)
            seconds[name].append(round(took, 2))
    a, b = values["merged"], values["as loaded"]
    diff = max(abs(x - y) / max(abs(y), 1e-12) for key in a for x, y in zip(a[key], b[key]))
    best = {name: min(s) for name, s in seconds.items()}
    report = {"model": args.model, "adapter": str(args.adapter) if args.adapter else "random (TrainConfig)",
              "tasks": args.tasks, "limit": args.limit, "heldout_limit": args.heldout_limit,
              "batch_size": args.batch_size, "threads": torch.get_num_threads(), "seconds": seconds,
              "ratio": round(best["merged"] / best["as loaded"], 3),
              "max_relative_difference": diff, "n_values": sum(len(v) for v in a.values())}
    print(f"merged {best['merged']:.1f} s, as loaded {best['as loaded']:.1f} s: {report['ratio']:.3f}x; "
          f"largest relative difference of {report['n_values']} values {diff:.1e}")
    if args.json:
        atomic.write_json(args.json, report)
    return report


if __name__ == "__main__":
    main()

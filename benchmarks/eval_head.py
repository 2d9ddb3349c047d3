"""Evaluation with the LM head computed only where a token is scored (what `grads eval` does) against the same
evaluation computing every position's logits (the model wrapped so that it ignores `logits_to_keep`): seconds of
each, side by side in one run (alternating, best of --repeats), and the largest difference of any per-item value.

  python benchmarks/eval_head.py                      # SmolLM2, the claims grid's tasks, 20 questions each
  python benchmarks/eval_head.py --limit 100 --json benchmarks/results/eval_head.json
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from grads.config import EvalConfig
from grads.data import bundled
from grads.eval.heldout import read_heldout, score_heldout
from grads.eval.loglik import evaluate
from grads.infra import atomic
from grads.infra.models import load_model, load_tokenizer

TASKS = ["medmcqa", "arc_easy", "piqa", "arc_challenge:bpb", "hellaswag:bpb", "sciq:bpb", "gsm8k"]


class EveryPosition(torch.nn.Module):
    """The model, computing the logits of every position whatever it is asked (the evaluation before)."""

    def __init__(self, model) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask=None, **_):
        return self.model(input_ids=input_ids, attention_mask=attention_mask)


def run(model, tokenizer, heldout, args) -> tuple[float, dict[str, list[float]]]:
    """Seconds of one evaluation, and every per-item value it produced (gold NLL per task item, held-out NLL)."""
    started = time.perf_counter()
    results = evaluate(model, tokenizer, args.tasks, args.limit, batch_size=args.batch_size)
    _, frame = score_heldout(model, heldout, args.batch_size, tokenizer)
    seconds = time.perf_counter() - started
    values = {task: [item["gold_nll"] for item in result["items"]] for task, result in results.items()}
    return seconds, values | {"heldout": frame["nll"].tolist()}


def heldout_explanations(tokenizer, max_length: int, limit: int):
    """The bundled held-out MedMCQA explanations (the claims grid's held-out file), tokenised."""
    with tempfile.TemporaryDirectory() as tmp:
        bundled.prepare_medmcqa(Path(tmp))
        return read_heldout(Path(tmp) / "heldout_explanations.jsonl", tokenizer, max_length, limit)


def arguments(doc: str) -> argparse.ArgumentParser:
    """The options every evaluation benchmark takes (--model's default, the tasks, sizes, repeats, --json)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--tasks", nargs="+", default=TASKS, help="the tasks (default: the claims grid's)")
    parser.add_argument("--limit", type=int, default=20, help="questions per task")
    parser.add_argument("--heldout-limit", type=int, default=40, help="held-out MedMCQA explanations")
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=EvalConfig().batch_size)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", type=Path)
    return parser


def side_by_side(ways: dict, tokenizer, args, **about) -> dict:
    """Two ways of evaluating ({name: model}, the first the one measured) timed alternately, best of
    args.repeats: the report (`about` first), printed and written to args.json."""
    heldout = heldout_explanations(tokenizer, args.max_length, args.heldout_limit)
    seconds: dict[str, list[float]] = {name: [] for name in ways}
    values = {}
    for _ in range(args.repeats):
        for name, lm in ways.items():
            took, values[name] = run(lm, tokenizer, heldout, args)
            seconds[name].append(round(took, 2))
    first, second = ways
    a, b = values[first], values[second]
    diff = max(abs(x - y) / max(abs(y), 1e-12) for key in a for x, y in zip(a[key], b[key]))
    best = {name: min(s) for name, s in seconds.items()}
    report = {**about, "tasks": args.tasks, "limit": args.limit, "heldout_limit": args.heldout_limit,
              "batch_size": args.batch_size, "threads": torch.get_num_threads(), "seconds": seconds,
              "ratio": round(best[first] / best[second], 3),
              "max_relative_difference": diff, "n_values": sum(len(v) for v in a.values())}
    print(f"{first} {best[first]:.1f} s, {second} {best[second]:.1f} s: "
          f"{report['ratio']:.3f}x; largest relative difference of {report['n_values']} values {diff:.1e}")
    if args.json:
        atomic.write_json(args.json, report)
    return report


def main(argv=None) -> dict:
    args = arguments(__doc__).parse_args(argv)
    tokenizer, model = load_tokenizer(args.model), load_model(args.model, device="cpu")
    return side_by_side({"scored positions": model, "every position": EveryPosition(model)}, tokenizer, args,
                        model=args.model)


if __name__ == "__main__":
    main()

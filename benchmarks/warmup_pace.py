"""How well a warm-up on part of the pool predicts the seconds of a full-pool epoch (selection.json's
`full_epoch_seconds` when the warm-up is not that epoch), held against a full epoch measured beside it.

For each fraction it trains the warm-up alone (the job `grads select --warmup-fraction F` would train, as
benchmarks/pipeline_cost.py builds it) into OUT/pace-F, then reads its done.json through stages/cost.py's two
estimates: the steady pace (its seconds, plus the steps a full epoch has beyond its own at its seconds per step after
the first) and the seconds per token (its seconds over its tokens, times the pool's). The full epoch: --full-epoch
SECONDS (e.g. pipeline_cost.json's, measured on the same machine), or trained here too with --measure-full-epoch.

  python benchmarks/warmup_pace.py --out benchmarks-cost --fractions 0.05 0.1 0.25 \\
      --full-epoch-from benchmarks/results/pipeline_cost.json --json benchmarks/results/warmup_pace.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--data", type=Path, help="the pool (default: the bundled MedMCQA pool, prepared into OUT/data)")
    p.add_argument("--limit", type=int, default=1200)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--fractions", nargs="+", type=float, default=[0.05, 0.1, 0.25])
    p.add_argument("--full-epoch", type=float, help="the full-pool epoch's measured seconds")
    p.add_argument("--full-epoch-from", type=Path, help="read them from a pipeline_cost.json")
    p.add_argument("--measure-full-epoch", action="store_true", help="train the full-pool epoch here too")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--out", type=Path, default=Path("benchmarks-cost"))
    p.add_argument("--json", type=Path)
    return p


def train_warmup(args, pool: Path, fraction: float) -> dict:
    """The warm-up of `grads select --warmup-fraction fraction` alone; its done.json and the cost estimates."""
    from pipeline_cost import select_job

    from grads.data.formats import scan_pool
    from grads.data.pool import tokenized
    from grads.infra import models
    from grads.stages.cost import StageWork, selection_cost, steady_pace, trained_tokens
    from grads.stages.train import training_record
    from grads.stages.warmup import run_warmup, warmup_plan, warmup_rows

    job = select_job(args, args.model, pool, args.out / f"pace-{fraction:g}", warmup_fraction=fraction)
    info = scan_pool(job.data.data, job.data.format, job.data.limit)
    tokenizer = models.load_tokenizer(job.model.model)
    tokens = tokenized(info, tokenizer, job.data.limit, job.data.max_length)
    done = training_record(run_warmup(job, warmup_plan(job, info.sha256), tokenizer, tokens, progress=False,
                                      log=lambda m: print(f"  pace-{fraction:g}: {m}", file=sys.stderr)))
    counts = tokens.n_tokens, tokens.n_target_tokens
    warm = StageWork(done["seconds"], *trained_tokens(*counts, warmup_rows(job, len(tokens))))
    whole, nothing = StageWork(0.0, *trained_tokens(*counts)), StageWork(0.0, 0, 0)
    pace = steady_pace(done["seconds_by_step"])
    by_pace = selection_cost(warm, nothing, whole, 1.0, fraction, pace=pace,
                             examples_per_step=args.batch_size)["full_epoch_seconds"]
    by_token = selection_cost(warm, nothing, whole, 1.0, fraction)["full_epoch_seconds"]
    return {"fraction": fraction, "examples": warm.examples, "tokens": warm.tokens, "steps": done["steps"],
            "seconds": done["seconds"], "first_step_seconds": done["seconds_by_step"]["1"],
            "seconds_per_step_after_the_first": round(pace[1], 3) if pace else None,
            "estimate_steady_pace": by_pace, "estimate_per_token": by_token}


def main(argv=None) -> dict:
    from pipeline_cost import pool_file

    args = build_parser().parse_args(argv)
    pool = pool_file(args.data, args.out)
    rows = [train_warmup(args, pool, f) for f in args.fractions]
    if args.measure_full_epoch:
        full, how = train_warmup(args, pool, 1.0)["seconds"], "trained here"
    elif args.full_epoch_from:
        full, how = json.loads(args.full_epoch_from.read_text())["full_epoch"]["seconds"], str(args.full_epoch_from)
    else:
        full, how = args.full_epoch, "--full-epoch"
    for row in rows:
        if full:
            row |= {f"error_{k}": round(row[f"estimate_{k}"] / full - 1, 4) for k in ("steady_pace", "per_token")}
        print(f"warm-up {row['fraction']:g}: {row['seconds']:.1f} s, {row['steps']} steps; full epoch estimated "
              f"{row['estimate_steady_pace']:.0f} s at its steady pace, {row['estimate_per_token']:.0f} s per token"
              + (f" (measured {full:.0f} s)" if full else ""))
    report = {"model": args.model, "pool": str(pool), "limit": args.limit, "max_length": args.max_length,
              "batch_size": args.batch_size, "full_epoch_seconds": full, "full_epoch_from": how, "warmups": rows}
    if args.json:
        from grads.infra import atomic

        atomic.write_json(args.json, report)
    return report


if __name__ == "__main__":
    main()

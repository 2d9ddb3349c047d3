"""The inputs benchmarks/gpu-all.sh needs on a GPU machine, prepared here, where the bundled packages are
installed (the GPU machine has neither the bundled data nor the bundled model, and downloads nothing):

  OUT/pool.jsonl    the first --limit records of the bundled MedMCQA pool (grads.data.bundled.prepare_medmcqa)
  OUT/tokenizer/    the SmolLM2 tokenizer (grads.infra.models.load_tokenizer("smollm2-135m-instruct")), for the
                    random-weight model of SmolLM2-135M's shape that benchmarks/pipeline_cost.py builds there

  .venv/bin/python benchmarks/gpu_inputs.py --out .gpu-inputs     # then carry .gpu-inputs (ignored by git)
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path(".gpu-inputs"))
    p.add_argument("--limit", type=int, default=1200, help="records of the pool to keep (pipeline_cost's --limit)")
    return p


def main(argv=None) -> dict:
    from grads.data.bundled import prepare_medmcqa
    from grads.infra import atomic
    from grads.infra.models import load_tokenizer

    args = build_parser().parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        prepare_medmcqa(tmp)
        lines = (Path(tmp) / "pool.jsonl").read_text().splitlines(keepends=True)[:args.limit]
    if len(lines) < args.limit:
        raise SystemExit(f"the MedMCQA pool has only {len(lines)} records")
    atomic.write_text(args.out / "pool.jsonl", "".join(lines))
    load_tokenizer("smollm2-135m-instruct").save_pretrained(args.out / "tokenizer")
    summary = {"pool": "pool.jsonl", "records": len(lines), "source": "grads.data.bundled.prepare_medmcqa",
               "tokenizer": "tokenizer (smollm2-135m-instruct)"}
    atomic.write_json(args.out / "inputs.json", summary)
    print(f"{args.out}: {len(lines)} records, the SmolLM2 tokenizer")
    return summary


if __name__ == "__main__":
    main()

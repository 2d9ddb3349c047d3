"""The detection figures of a `grads select --labels` folder as markdown (what report.html shows, for the docs):
each score's AUROC for planted records (overall and per kind, in the direction that flags them), then, per output,
the share of each label it keeps. Run from the repository:

    .venv/bin/python scripts/noise_figures.py results/noisy-pilot-medmcqa-25/select-theta1 --seeds 1 2 3 4 5

--seeds: the outputs of the rules that draw at random (random, random-matched, trim:…) drawn again from the
folder's scores.parquet (its `label` column) with these selection seeds, their kept shares the mean over them
(the selection's own seed is one draw; a planted pool made before planting had a stream of its own shares its
seed-0 order with `random` at seed 0).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

DRAWS = ("random", "random-matched", "trim")  # rules whose subset depends on the selection seed


def redrawn(folder: Path, summary: dict, seeds: list[int]) -> dict:
    """noise.outputs with every drawing rule's entry replaced by the mean over `seeds` of its kept shares."""
    import pandas as pd

    from grads.config import SignalConfig
    from grads.core.noise import kept_shares
    from grads.core.rules import select, split_method
    from grads.core.signals import eligible

    frame = pd.read_parquet(folder / "scores.parquet")
    extra = sorted(folder.glob("score/*.parquet"))
    for path in extra:
        if path.stem not in frame and path.stem != "scores":
            frame[path.stem] = pd.read_parquet(path)[path.stem].to_numpy()
    spec = SignalConfig(**{k: summary["settings"]["select"][k] for k in SignalConfig.model_fields}).spec()
    labels, pool = frame["label"].to_numpy(dtype=object), np.flatnonzero(eligible(frame))
    out = dict(summary["noise"]["outputs"])
    for name, entry in summary["outputs"].items():
        if split_method(entry["method"])[0] not in DRAWS:
            continue
        draws = [kept_shares(labels, select(frame, entry["method"], entry["ratio"], s, spec), pool) for s in seeds]
        out[name] = {key: {k: float(np.mean([d[key].get(k, 0.0) for d in draws])) for k in draws[0][key]}
                     for key in ("share", "kept")}
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("select", type=Path, help="a `grads select` folder made with --labels")
    parser.add_argument("--seeds", type=int, nargs="*", default=None, help="redraw the random rules at these seeds")
    args = parser.parse_args(argv)
    summary = json.loads((args.select / "selection.json").read_text())
    noise = summary.get("noise")
    if not noise:
        sys.exit("error: selection.json has no `noise`: select with --labels")
    kinds = [k for k in noise["counts"] if k != "clean"]
    print("| score | flags by | AUROC | " + " | ".join(kinds) + " |")
    print("|---|---|---|" + "---|" * len(kinds))
    for name, d in sorted(noise["detection"].items(), key=lambda item: -item[1]["auroc"]):
        print(f"| {name} | {d['direction']} | {d['auroc']:.3f} | "
              + " | ".join(f"{d['by_kind'][k]:.2f}" for k in kinds) + " |")
    labels = ["clean", *kinds]
    print()
    print("| output | planted share | " + " | ".join(f"{k} kept" for k in labels) + " |")
    print("|---|---|" + "---|" * len(labels))
    outputs = redrawn(args.select, summary, args.seeds) if args.seeds else noise["outputs"]
    for name, o in outputs.items():
        planted = sum(v for k, v in o["share"].items() if k != "clean")
        print(f"| {name} | {planted:.1%} | " + " | ".join(f"{o['kept'].get(k, float('nan')):.2f}" for k in labels)
              + " |")


if __name__ == "__main__":
    main()

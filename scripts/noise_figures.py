"""The detection figures of a `grads select --labels` folder as markdown (what report.html shows, for the docs):
each score's AUROC for planted records (overall and per kind, in the direction that flags them), then, per output,
the share of each label it keeps. Run from the repository:

    .venv/bin/python scripts/noise_figures.py results/noisy-pilot-medmcqa-25/select-theta1
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("select", type=Path, help="a `grads select` folder made with --labels")
    summary = json.loads((parser.parse_args(argv).select / "selection.json").read_text())
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
    for name, o in noise["outputs"].items():
        planted = sum(v for k, v in o["share"].items() if k != "clean")
        print(f"| {name} | {planted:.1%} | " + " | ".join(f"{o['kept'].get(k, float('nan')):.2f}" for k in labels)
              + " |")


if __name__ == "__main__":
    main()

"""Do canaries tell a user without labels what a rule does to the noise in their pool? For a selection made with
both --labels (the planted records of a noisy pool) and --canaries N (noisy copies of its own records), print per
output and kind the share of the planted records the rule keeps beside the share of the canaries it keeps, and,
over every output and kind both have, their Spearman correlation and largest gap. Run from the repository:

    .venv/bin/python scripts/canary_check.py results/noisy-pilot-medmcqa-25/select-theta1 \
        --only grads gradnorm ifd length loss

The warm-up saw the planted records and not the canaries, so the two may differ most for rules that read the
warm-up's loss: the planted records were learned, the canaries never were.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from scipy.stats import spearmanr


def pairs(summary: dict) -> list[dict]:
    """One row per output and kind that both the planted labels and the canaries have."""
    noise, canaries = summary.get("noise"), summary.get("canaries")
    if not noise or not canaries:
        sys.exit("error: selection.json has no `noise` or no `canaries`: select with --labels and --canaries")
    rows = []
    for name, canary in canaries["outputs"].items():
        planted = noise["outputs"][name]
        for kind, share in canary["kept_share"].items():
            if kind in planted["kept"]:
                rows.append({"output": name, "kind": kind, "planted_kept": planted["kept"][kind],
                             "canary_kept": share, "clean_kept": planted["kept"].get("clean", float("nan")),
                             "n_canaries": canaries["eligible"][kind]})
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("select", type=Path, help="a `grads select` folder made with --labels and --canaries")
    parser.add_argument("--only", nargs="*", default=None, help="these methods only (e.g. the rules that draw nothing)")
    args = parser.parse_args(argv)
    summary = json.loads((args.select / "selection.json").read_text())
    rows = pairs(summary)
    if args.only:
        rows = [r for r in rows if summary["outputs"][r["output"]]["method"] in args.only]
    print("| output | kind | planted kept | canaries kept | clean kept |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['output']} | {r['kind']} | {r['planted_kept']:.2f} | {r['canary_kept']:.2f} "
              f"({r['n_canaries']}) | {r['clean_kept']:.2f} |")
    varied = [r for r in rows if r["output"] != "full.jsonl"]
    rho = spearmanr([r["planted_kept"] for r in varied], [r["canary_kept"] for r in varied]).statistic
    worst = max(varied, key=lambda r: abs(r["planted_kept"] - r["canary_kept"]))
    print(f"\nSpearman (planted kept, canaries kept) over {len(varied)} output × kind pairs: {rho:.3f}; largest "
          f"gap {worst['canary_kept'] - worst['planted_kept']:+.2f} ({worst['output']}, {worst['kind']})")


if __name__ == "__main__":
    main()

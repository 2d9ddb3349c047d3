"""What an experiment folder's runs cost, in CPU hours, read from the files they left: each run's fine-tune
(`train_seconds` of runs/*/results.json) and evaluation (`seconds` of runs/*/eval.json), and each selection's
warm-up and scoring (`warmup_s`, `scoring_s` of select*/timings.json: the seconds the stage took when it ran, kept
when a later call reuses it). A run that adopted its warm-up's model (`model_from`) trained nothing. Run from the
repository root:

    .venv/bin/python scripts/grid_cost.py results/claim-medmcqa --runs 'random-matched*' 'grads@own-warmup*' \
        --select 'select-seed-*'

`--runs` and `--select` are shell-style patterns of folder names (default: every run, every selection);
`--exclude` drops run names. Prints one row per arm (the run name less its seed) and the total.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import re
from collections import defaultdict
from pathlib import Path


def read(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def run_seconds(folder: Path) -> tuple[float, float]:
    """(fine-tune, evaluation) seconds of one run folder."""
    result = read(folder / "results.json")
    train = 0.0 if result.get("model_from") else float(result.get("train_seconds") or 0.0)
    return train, float(read(folder / "eval.json").get("seconds") or 0.0)


def selection_seconds(folder: Path) -> tuple[float, float]:
    """(warm-up, scoring) seconds of one selection folder."""
    timings = read(folder / "timings.json")
    return float(timings.get("warmup_s") or 0.0), float(timings.get("scoring_s") or 0.0)


def matches(name: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


def cost_rows(folder: Path, runs: list[str], exclude: list[str],
              select: list[str]) -> list[tuple[str, int, float, float]]:
    """(arm, count, first seconds, second seconds) per arm and per selection folder, in name order."""
    arms: dict[str, list[float]] = defaultdict(lambda: [0, 0.0, 0.0])
    for run in sorted(p for p in (folder / "runs").iterdir() if (p / "results.json").is_file()):
        if run.name == "base" or not matches(run.name, runs) or matches(run.name, exclude):
            continue
        arm = re.sub(r"-s\d+$", "", run.name)
        train, evaluation = run_seconds(run)
        arms[arm][0] += 1
        arms[arm][1] += train
        arms[arm][2] += evaluation
    rows = [(arm, int(n), train, evaluation) for arm, (n, train, evaluation) in sorted(arms.items())]
    for selection in sorted(p for p in folder.iterdir() if p.is_dir() and p.name.startswith("select")):
        if matches(selection.name, select):
            rows.append((selection.name, 1, *selection_seconds(selection)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--runs", nargs="*", default=["*"], help="run folder names to count (patterns)")
    parser.add_argument("--exclude", nargs="*", default=[], help="run folder names to leave out (patterns)")
    parser.add_argument("--select", nargs="*", default=["select*"], help="selection folders to count (patterns)")
    args = parser.parse_args()
    rows = cost_rows(args.folder, args.runs, args.exclude, args.select)
    print("| arm or selection | runs | fine-tune or warm-up, h | evaluation or scoring, h | total, h |")
    print("|---|---|---|---|---|")
    for name, n, first, second in rows:
        print(f"| {name} | {n} | {first / 3600:.2f} | {second / 3600:.2f} | {(first + second) / 3600:.2f} |")
    total = sum(first + second for _, _, first, second in rows)
    n_runs = sum(n for name, n, _, _ in rows if not name.startswith("select"))
    n_select = sum(1 for name, *_ in rows if name.startswith("select"))
    print(f"\ntotal: {total / 3600:.1f} CPU h over {n_runs} runs and {n_select} selections")


if __name__ == "__main__":
    main()

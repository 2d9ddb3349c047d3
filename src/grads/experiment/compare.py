"""`grads compare`: one experiment folder against another, seed by seed, as a markdown table on stdout.

    grads compare FOLDER --against GRID --tag TAG      # test tasks: G, F, G_val; ΔG, ΔF vs random, grads, full
    grads compare --validation GRID VARIANT...         # G_val only: ΔG_val vs random and grads

Both read folders as `grads experiment` writes them (runs/<run>/results.json, runs/base/results.json,
config.yaml or config.json). G, F and G_val follow grads.experiment (docs/method.md), from the reference
folder's base-model evaluation and evaluation tasks; each folder's own base evaluation must agree with it
(checked). A difference pairs two runs of the same seed (and ratio; `full` has none): mean ± std over seeds,
then each seed's. Examples, from the repository root (docs/results.md):

    grads compare results/confirm-no-warmup --against results/medmcqa-smollm2 --tag "no warm-up"
    grads compare --validation results/medmcqa-smollm2 results/variant-*
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path

from grads.config import EvalConfig
from grads.errors import GradsError
from grads.experiment.config import config_from, load_config
from grads.experiment.stats import aggregate, load_runs, paired_differences
from grads.experiment.tables import format_ratio, pm

REFERENCES = ("random", "grads", "full")
VALIDATION_REFERENCES = ("random", "grads")
Tasks = tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]


def eval_tasks(folder: Path) -> Tasks:
    """(domain, general, validation) tasks of the experiment in FOLDER: its config.yaml, else its config.json."""
    if (folder / "config.yaml").exists():
        ev = load_config(folder / "config.yaml").eval
    elif (path := folder / "config.json").exists():
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise GradsError(f"not valid JSON: {err.msg}", path=path, line=err.lineno) from None
        ev = config_from(raw, path).eval
    else:
        raise GradsError("no config.yaml or config.json: not an experiment folder", path=folder,
                         hint="pass a folder written by `grads experiment CONFIG.yaml --out FOLDER`")
    return ev.domain_tasks, ev.general_tasks, ev.validation_tasks


def base_tasks(folder: Path) -> dict:
    """The base model's evaluation in FOLDER (runs/base/results.json), task by task."""
    path = folder / "runs" / "base" / "results.json"
    if not path.exists():
        raise GradsError("no base-model evaluation (runs/base/results.json): not a finished experiment folder",
                         path=folder, hint="run (or finish) `grads experiment` into it first")
    return json.loads(path.read_text(encoding="utf-8"))["tasks"]


def same_base(folder: Path, against: Path, tasks: Iterable[str] | None = None) -> dict:
    """AGAINST's base evaluation, once FOLDER's is checked to score the same (correct answers per task; on
    TASKS only, when given): figures from two folders are comparable only from one base model evaluation."""
    theirs, mine = base_tasks(against), base_tasks(folder)
    names = set(theirs) | set(mine) if tasks is None else set(tasks)
    differ = sorted(t for t in names if (mine.get(t) or {}).get("correct") != (theirs.get(t) or {}).get("correct"))
    if differ:
        raise GradsError(f"the base-model evaluations of {folder} and {against} differ ({', '.join(differ)})",
                         hint="compare only experiments with the same model and evaluation (tasks, limits)")
    return theirs


def _runs(folder: Path) -> list[dict]:
    runs = load_runs(folder)
    if not runs:
        raise GradsError("no finished runs (runs/<run>/results.json)", path=folder)
    return runs


def _ordered(keys: Iterable[tuple[str, float | None]]) -> list[tuple[str, float | None]]:
    """(method, ratio) keys in the summary's order: by ratio (the full pool and `auto` last), then method."""
    return sorted(keys, key=lambda k: (k[1] or 1.0, k[0]))


def compare(folder: Path, against: Path, tag: str, references: Sequence[str] = REFERENCES) -> str:
    """FOLDER's runs (methods labelled `method [TAG]`) against AGAINST's REFERENCES runs of the same seed, on
    AGAINST's evaluation tasks: a markdown table, one row per method and ratio of FOLDER with n_train, G, F and
    G_val (mean ± std over seeds), then per reference ΔG, ΔF (mean ± std, then each seed's pair; '–' where
    AGAINST has no such run)."""
    folder, against = Path(folder), Path(against)
    base = same_base(folder, against)
    domain, general, validation = eval_tasks(against)
    ev = EvalConfig(domain_tasks=domain, general_tasks=general, validation_tasks=validation)
    own = [{**r, "method": f"{r['method']} [{tag}]"} for r in _runs(folder)]
    pool = own + [r for r in load_runs(against) if r["method"] in references]
    summary = {(r["method"], r["ratio"]): r for r in aggregate(pool, {"tasks": base}, ev)}
    deltas = {ref: {(d["method"], d["ratio"]): d for d in paired_differences(pool, {"tasks": base}, ev, ref)}
              for ref in references}
    lines = ["| method | ratio | seeds | n_train | G | F | G_val | "
             + " | ".join(f"ΔG, ΔF vs {ref} (per seed)" for ref in references) + " |",
             "|---|---|---|---|---|---|---|" + "---|" * len(references)]
    for key in _ordered({(r["method"], r["ratio"]) for r in own}):
        row, cells = summary[key], []
        for ref in references:
            delta = deltas[ref].get(key)
            if delta is None:
                cells.append("–")
                continue
            per_seed = "; ".join(f"{d['G']:+.3f}, {d['F']:+.3f}" for d in delta["per_seed"].values())
            cells.append(f"{pm(delta['dG_mean'], delta['dG_std'])}, {pm(delta['dF_mean'], delta['dF_std'])} "
                         f"({per_seed})")
        n_train = sorted({r["n_train"] for r in own if (r["method"], r["ratio"]) == key})
        g_val = pm(row.get("G_val_mean", math.nan), row.get("G_val_std"))
        lines.append(f"| {key[0]} | {format_ratio(key[1], key[0])} | {len(row['seeds'])} | "
                     f"{', '.join(map(str, n_train))} | {pm(row['G_mean'], row['G_std'])} | "
                     f"{pm(row['F_mean'], row['F_std'])} | {g_val} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def compare_validation(grid: Path, variants: Sequence[Path], references: Sequence[str] = VALIDATION_REFERENCES
                       ) -> str:
    """G_val of GRID's runs and of each VARIANT folder's (in the order given), on GRID's validation tasks: a
    markdown table, one row per source, method and ratio with G_val (mean ± std over seeds) and ΔG_val against
    each reference of the same seed and ratio (mean ± std, then each seed's). A variant without its own
    `random` runs is paired with GRID's reference runs of its ratios, its methods labelled with the folder's
    name less `variant-` (a variant may run a rule of the same name); one with them, with its own."""
    grid = Path(grid)
    validation = eval_tasks(grid)[2]
    if not validation:
        raise GradsError("the experiment names no validation tasks (eval.validation_tasks)", path=grid)
    base = base_tasks(grid)
    ev = EvalConfig(domain_tasks=(), general_tasks=(), validation_tasks=validation)
    grid_runs = _runs(grid)
    sources = [("grid", grid_runs)]
    for variant in map(Path, variants):
        same_base(variant, grid, validation)
        sources.append((variant.name, _runs(variant)))
    lines = ["| source | method | ratio | seeds | G_val (mean ± std) | "
             + " | ".join(f"ΔG_val vs {ref} (per seed)" for ref in references) + " |",
             "|---|---|---|---|---|" + "---|" * len(references)]
    for name, own in sources:
        pool = own
        if name != "grid" and not any(r["method"] == references[0] for r in own):
            own = [{**r, "method": f"{r['method']} [{name.removeprefix('variant-')}]"} for r in own]
            ratios = {r["ratio"] for r in own}
            pool = own + [r for r in grid_runs if r["method"] in references and r["ratio"] in ratios]
        summary = {(r["method"], r["ratio"]): r for r in aggregate(pool, {"tasks": base}, ev)}
        columns = [{(d["method"], d["ratio"]): d for d in paired_differences(pool, {"tasks": base}, ev, ref)}
                   for ref in references]
        for key in _ordered({(r["method"], r["ratio"]) for r in own}):
            row, cells = summary[key], []
            for deltas in columns:
                delta = deltas.get(key)
                if delta is None:
                    cells.append("–")
                    continue
                per_seed = ", ".join(f"{d['G_val']:+.3f}" for d in delta["per_seed"].values())
                cells.append(f"{pm(delta['dG_val_mean'], delta['dG_val_std'])} ({per_seed})")
            lines.append(f"| {name} | {key[0]} | {format_ratio(key[1], key[0])} | {len(row['seeds'])} | "
                         f"{pm(row['G_val_mean'], row['G_val_std'])} | {' | '.join(cells)} |")
    return "\n".join(lines) + "\n"


def compare_command(folders: Sequence[Path], against: Path | None = None, tag: str | None = None,
                    validation: Path | None = None) -> str:
    """The table `grads compare` prints: FOLDER --against GRID [--tag TAG] (TAG defaults to FOLDER's name),
    or --validation GRID VARIANT... (at least one variant)."""
    if (against is None) == (validation is None):
        raise GradsError("give either --against GRID (one FOLDER) or --validation GRID (one or more variant "
                         "folders)", hint='grads compare results/auto-budget --against results/medmcqa-smollm2 '
                         '--tag "no warm-up"')
    if not folders:
        raise GradsError("no experiment folder given", hint="grads compare FOLDER --against GRID")
    if validation is not None:
        if tag is not None:
            raise GradsError("--tag labels FOLDER's methods with --against; --validation labels each variant by "
                             "its folder's name")
        return compare_validation(validation, list(folders))
    if len(folders) != 1:
        raise GradsError(f"--against compares one folder, got {len(folders)}",
                         hint="compare several variants on G_val with --validation GRID VARIANT...")
    folder = Path(folders[0])
    return compare(folder, against, folder.name if tag is None else tag)

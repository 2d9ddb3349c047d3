"""The selection stage of `grads select`: from the score table to the chosen subsets.

Reads OUT/score/scores.parquet (and the extra columns a rule needs, OUT/score/<column>.parquet), computes the
combined signal and its density, applies every asked rule at every ratio, and writes

    OUT/scores.parquet              the score columns plus `combined` and `density`
    OUT/selected/<file>.jsonl       the chosen input rows verbatim, in input order (file names: output_name)
    OUT/selection.json              settings, seeds, versions, input hash, counts per status, chosen ids per file
                                    (a matched control's entry adds `control`: its overlap with its target, and
                                    chance's)

The same scores and settings give byte-identical files (selection.json's `cost` object aside: it holds the seconds
the warm-up and scoring took, read from their own records, so a rerun that reuses them writes it unchanged).
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from grads._version import __version__
from grads.config import SelectJob
from grads.core.rules import LABEL, control_overlap, output_name, rule_of, select
from grads.core.signals import density
from grads.data.readers import raw_rows
from grads.infra import atomic, models
from grads.stages.score import needed_columns, read_scores


def read_labels(path: str | Path, ids: list[str]) -> dict[str, str]:
    """labels.json (`grads data plant`: {id: "clean" or a kind}) checked against the pool's ids; GradsError
    (exit 2) naming the file when it is not such an object or lacks an id of the pool."""
    import json

    from grads.errors import GradsError

    hint = "pass the labels.json that `grads data plant` wrote beside this pool"
    try:
        labels = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise GradsError(f"cannot read the labels: {err}", path=path, hint=hint) from None
    if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
        raise GradsError('the labels are not a JSON object of id -> "clean" or a kind', path=path, hint=hint)
    missing = [i for i in ids if i not in labels]
    if missing:
        raise GradsError(f"{len(missing)} id(s) of the pool have no label, e.g. {missing[0]!r}", path=path,
                         hint=hint)
    return labels


def noise_summary(frame: pd.DataFrame, chosen: dict, job: SelectJob) -> dict:
    """selection.json's `noise`: the labels' counts, each score's AUROC for planted records (grads.core.noise)
    and, per output, the share of each label it keeps against the eligible pool's."""
    import numpy as np

    from grads.core.noise import detection, kept_shares
    from grads.core.signals import eligible

    rows = frame[LABEL].to_numpy(dtype=object)
    pool_rows = np.flatnonzero(eligible(frame))
    return {"labels": str(job.select.labels),
            "counts": {k: int(v) for k, v in pd.Series(rows[pool_rows]).value_counts().sort_index().items()},
            "detection": detection(frame, rows, job.select.spec()),
            "outputs": {name: kept_shares(rows, picked, pool_rows) for name, (picked, _) in chosen.items()}}


def versions() -> dict[str, str]:
    out = {"grads-llm": __version__}
    for name in ["torch", "transformers", "peft", "trl", "numpy", "scipy"]:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def _choose(frame: pd.DataFrame, job: SelectJob) -> dict[str, tuple[object, dict]]:
    """{file name: (row indices, its selection.json entry)} for every method and ratio asked."""
    sel, signal = job.select, job.select.spec()
    chosen = {}
    for method in sel.methods:
        for ratio in (sel.ratios if rule_of(method).takes_ratio else [None]):
            picked = select(frame, method, ratio, sel.seed, signal)
            entry = {"method": method, "ratio": ratio, "n_selected": int(len(picked)),
                     "ids": frame["id"].iloc[picked].tolist()}
            if rule_of(method).budget:  # grads-auto: the ratio it chose, and how
                entry["ratio"], entry["rule"] = rule_of(method).budget(frame, signal)
            control = control_overlap(frame, method, picked, ratio, sel.seed, signal)
            if control is not None:  # a matched control: what it shares with the subset it controls
                entry["control"] = control
            chosen[output_name(method, ratio)] = (picked, entry)
    return chosen


def run_selection(job: SelectJob, upstream: dict) -> dict:
    """Select and write OUT/scores.parquet, OUT/selected/*.jsonl and OUT/selection.json; return the summary.

    upstream: what the earlier stages record about their inputs: score_fingerprint, input (the pool's record),
    truncation, warmup_model (None at θ0), cost (grads.stages.cost; absent when the caller measured none).
    """
    out, sel = Path(job.out), job.select
    for folder in (out, out / "selected"):  # temporary files a killed earlier run left behind
        atomic.remove_stale_temps(folder)
    frame = read_scores(out / "score", needed_columns(sel.methods))
    frame["combined"], frame["density"], bandwidth = density(frame, sel.spec())
    labels = read_labels(sel.labels, frame["id"].astype(str).tolist()) if sel.labels is not None else None
    if labels is not None:  # the planted kinds travel with the scores (the `clean` oracle and the grids read them)
        frame[LABEL] = [labels[str(i)] for i in frame["id"]]
    atomic.write_parquet(out / "scores.parquet", pa.Table.from_pandas(frame, preserve_index=False))
    rows = raw_rows(job.data.data, job.data.limit)
    chosen = _choose(frame, job)
    for name, (picked, _) in chosen.items():
        rows.write(out / "selected" / name, picked)
    for stale in (out / "selected").glob("*.jsonl"):
        if stale.name not in chosen:
            stale.unlink()
    status_counts = frame["status"].value_counts().sort_index().to_dict()
    summary = {
        "grads_version": __version__, "versions": versions(), "score_fingerprint": upstream["score_fingerprint"],
        **models.revision_entry(job.model.model),
        "settings": job.settings(), "input": upstream["input"], "truncation": upstream["truncation"],
        "status_counts": {str(k): int(v) for k, v in status_counts.items()},
        "n_eligible": int((frame["status"] == "ok").sum()),
        "signal": {"signal": sel.signal, "bandwidth_rule": sel.bandwidth, "bandwidth_scale": sel.bandwidth_scale,
                   "bandwidth": bandwidth, "kde": sel.kde},
        "warmup_model": upstream["warmup_model"], "cost": upstream.get("cost"),
        "outputs": {name: entry for name, (_, entry) in chosen.items()},
    }
    if labels is not None:
        summary["noise"] = noise_summary(frame, chosen, job)
    if sel.canaries:
        from grads.stages.canaries import canary_summary

        summary["canaries"] = canary_summary(frame, summary["outputs"], job)
    atomic.write_json(out / "selection.json", summary)
    return summary


def load_scores(out_dir: str | Path) -> pd.DataFrame:
    """OUT/scores.parquet of a finished `grads select` (score columns, `combined`, `density`)."""
    return pq.read_table(Path(out_dir) / "scores.parquet").to_pandas()

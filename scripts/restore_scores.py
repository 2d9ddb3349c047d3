"""Rebuild a selection folder's scoring stage (OUT/score/) from its merged OUT/scores.parquet.

results/ keeps each selection's merged score table (OUT/scores.parquet: the score columns, the extra columns the
rules needed, `combined`, `density`) but not the scoring stage's own folder, which a rerun of the experiment
looks for before it would warm up and score again. This writes OUT/score/scores.parquet (the score columns,
exactly as they were), one OUT/score/<column>.parquet per extra column, and OUT/score/score.json carrying the
scores' fingerprint recorded in OUT/selection.json, so the rerun reuses the very scores the committed runs were
selected from (and, with them, needs no warm-up). Run from the repository root:

    .venv/bin/python scripts/restore_scores.py results/claim-medmcqa/select
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from grads.infra import atomic
from grads.stages.score import EXTRA_COLUMNS, SCHEMA


def restore(folder: Path) -> Path:
    score_dir = folder / "score"
    if (score_dir / "score.json").exists():
        raise SystemExit(f"{score_dir}: already holds a finished scoring stage")
    summary = json.loads((folder / "selection.json").read_text())
    merged = pq.read_table(folder / "scores.parquet")
    atomic.write_parquet(score_dir / "scores.parquet", merged.select(SCHEMA.names).cast(SCHEMA))
    for column in sorted(set(merged.column_names) & set(EXTRA_COLUMNS)):
        atomic.write_parquet(score_dir / f"{column}.parquet", pa.table({column: merged.column(column)}))
    atomic.write_json(score_dir / "score.json", {
        "fingerprint": summary["score_fingerprint"], "input": summary["input"], "truncation": summary["truncation"],
        "restored_from": str(folder / "scores.parquet")})
    return score_dir


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="a selection folder (its scores.parquet and selection.json)")
    print(restore(parser.parse_args().folder))

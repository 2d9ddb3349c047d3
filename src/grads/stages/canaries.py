"""Canaries (`grads select --canaries N`): does a rule remove bad data from a pool that has no labels?

N noisy copies of the user's own records (grads.data.plant's kinds that need no other file: another record's
answer, the answer's words shuffled, the answer cut short, a boilerplate non-answer, a verbatim duplicate), each
under a new id `canary-<kind>-<k>`, are scored by the same scoring model as the pool (after the warm-up, which
never sees them) and written only under OUT/canaries:

    OUT/canaries/pool.jsonl     the canary records      OUT/canaries/labels.json   id -> kind
    OUT/canaries/score/         their scores (resumable, as OUT/score)

Each rule is then run once more on the pool's scores with the canaries' added, and selection.json's `canaries`
says how many of each kind it would keep, beside the share of the pool's own rows it keeps. The selections written
to OUT/selected are those of the pool alone: a canary is never in a selected file nor in a fine-tune.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd

from grads.config import ScoreJob, SelectJob

CANARY_KINDS = ("swap", "shuffle", "truncate", "boilerplate", "duplicate")  # kinds that need no other file
FOLDER = "canaries"


def make_canaries(job: SelectJob) -> Path:
    """Write OUT/canaries/pool.jsonl and labels.json (deterministic in the pool, N and the seed); the pool file."""
    from grads.data.formats import load_pool
    from grads.data.plant import plant, split_equally
    from grads.data.readers import read_records
    from grads.infra import atomic

    n, folder = job.select.canaries, Path(job.out) / FOLDER
    info = load_pool(job.data.data, job.data.format, job.data.limit)
    records = [record for _, record in read_records(job.data.data)][:info.n_examples]
    planted = plant(records, info.format, [e.id for e in info.examples], split_equally(n, CANARY_KINDS),
                    job.select.seed, pool_path=job.data.data)
    canaries, labels, taken = [], {}, {}
    for row, (_, kind) in zip(planted.rows, planted.labels.items(), strict=True):
        if kind == "clean":
            continue
        taken[kind] = taken.get(kind, 0) + 1
        new_id = f"canary-{kind}-{taken[kind]}"
        canaries.append(json.dumps({**row, "id": new_id}, ensure_ascii=False, default=str))
        labels[new_id] = kind
    atomic.write_text(folder / "pool.jsonl", "\n".join(canaries) + "\n")
    atomic.write_json(folder / "labels.json", labels)
    return folder / "pool.jsonl"


def score_canaries(job: SelectJob, score_fingerprint: str, scoring_model: str, load, tokenizer, columns: set[str],
                   progress: bool, log) -> None:
    """Score the canaries with the pool's scoring model into OUT/canaries/score (reused when finished)."""
    from grads.data.formats import scan_pool
    from grads.data.pool import tokenized
    from grads.stages.score import add_columns, finished, run_score

    path = make_canaries(job)
    info = scan_pool(path)
    fingerprint = hashlib.sha256(f"{score_fingerprint}:{info.sha256}".encode()).hexdigest()[:20]
    score_job = ScoreJob(model=job.model.model_copy(update={"model": scoring_model}), score=job.score,
                         data=job.data.model_copy(update={"data": path, "limit": None,
                                                          "max_length": job.score_length}),
                         out=Path(job.out) / FOLDER / "score")
    pool = tokenized(info, tokenizer, None, job.score_length)
    if not finished(score_job.out, fingerprint):
        log(f"scoring {len(pool)} canaries")
        run_score(score_job, fingerprint, load(), tokenizer, pool, progress, info)
    add_columns(score_job.out, columns, load, pool, job.score.batch_size, tokenizer.pad_token_id, log)


def canary_summary(frame: pd.DataFrame, outputs: dict, job: SelectJob) -> dict:
    """selection.json's `canaries`: per output, how many canaries of each kind its rule keeps when run on the pool
    with the canaries added, and the share of the pool's own eligible rows it keeps then."""
    from grads.core.rules import rule_of, select
    from grads.core.signals import eligible
    from grads.stages.score import needed_columns, read_scores

    folder = Path(job.out) / FOLDER
    labels = json.loads((folder / "labels.json").read_text())
    sel = job.select
    canaries = read_scores(folder / "score", needed_columns(sel.methods))
    base = [c for c in canaries.columns if c in frame.columns]
    both = pd.concat([frame[base], canaries[base]], ignore_index=True)
    both["row"] = np.arange(len(both))
    is_canary = np.r_[np.zeros(len(frame), bool), np.ones(len(canaries), bool)]
    kinds = np.r_[np.full(len(frame), ""), canaries["id"].map(labels).to_numpy(dtype=str)]
    ok = eligible(both)
    counts = {k: int(((kinds == k) & ok).sum()) for k in CANARY_KINDS if ((kinds == k) & ok).any()}
    out = {}
    for name, entry in outputs.items():
        if entry["method"] == "clean":  # the oracle reads the planted labels, which canaries do not have
            continue
        ratio = entry["ratio"] if rule_of(entry["method"]).takes_ratio else None  # grads-auto chooses its own
        picked = select(both, entry["method"], ratio, sel.seed, sel.spec())
        mask = np.zeros(len(both), bool)
        mask[picked] = True
        out[name] = {"kept": {k: int((mask & (kinds == k)).sum()) for k in counts},
                     "kept_share": {k: float((mask & (kinds == k)).sum() / n) for k, n in counts.items()},
                     "pool_kept_share": float((mask & ~is_canary).sum() / max(1, (ok & ~is_canary).sum()))}
    return {"n": int(len(canaries)), "eligible": counts, "kinds": list(CANARY_KINDS), "outputs": out}

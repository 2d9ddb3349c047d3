"""The evaluation stage (`grads eval`): tasks and held-out files on one model -> a JSON file and its
per-item records beside it (OUT.items.parquet, OUT.heldout.parquet).
"""

from __future__ import annotations

import time
from pathlib import Path

from grads.config import BACKENDS
from grads.eval.loglik import evaluate
from grads.eval.tasks import resolve_task


def _backend(name: str):
    """The evaluator behind --backend (grads.config.BACKENDS): each takes evaluate()'s arguments and returns its
    results."""
    grads_backend, lm_eval_backend = BACKENDS
    if name == lm_eval_backend:
        from grads.eval.harness import evaluate_lm_eval, require_lm_eval

        require_lm_eval()
        return evaluate_lm_eval
    assert name == grads_backend, name  # EvalJob admits only BACKENDS
    return evaluate


def items_file(out: str | Path) -> Path:
    """Where run_eval keeps the per-item records of the results file `out`."""
    out = Path(out)
    return out.with_name(out.stem + ".items.parquet")


def heldout_file(out: str | Path) -> Path:
    """Where run_eval keeps the per-example held-out records of the results file `out`."""
    out = Path(out)
    return out.with_name(out.stem + ".heldout.parquet")


def run_eval(job, log=None) -> dict:
    """The evaluation stage (`grads eval`): every task of job.tasks and every held-out file of job.heldout on
    job.model -> job.out (JSON) and its per-item records beside it (items_file, heldout_file); returns what went
    into the JSON. Each held-out file's summary carries question use (grads.eval.heldout) unless
    job.question_use is off. Unknown tasks, unreadable held-out files and a missing backend fail before the model
    loads."""
    from grads.eval.heldout import read_heldout, read_mismatched, score_heldout
    from grads.eval.tasks import expand
    from grads.infra import atomic
    from grads.infra.models import load_model, load_tokenizer

    names = expand(list(job.tasks)) if job.tasks else []
    for name in names:
        resolve_task(name)
    evaluator = _backend(job.backend) if names else None
    m = job.model
    tokenizer = load_tokenizer(m.model, trust_remote_code=m.trust_remote_code)
    heldout = {path: read_heldout(path, tokenizer, job.max_length, job.heldout_limit) for path in job.heldout}
    mismatched = {path: read_mismatched(path, tokenizer, job.max_length, job.heldout_limit) for path in heldout
                  } if job.question_use else {}
    model = load_model(m.model, dtype=m.dtype, device=m.device, trust_remote_code=m.trust_remote_code)
    if hasattr(model, "merge_and_unload"):  # a LoRA adapter folded into its base once: evaluation only runs
        model = model.merge_and_unload()    # forwards, and the adapter's own matmuls add a third to each (0.75x)
    started = time.perf_counter()
    results = evaluator(model, tokenizer, names, job.limit, batch_size=job.batch_size, log=log, limits=job.limits,
                        rotations=job.mc_rotations) if names else {}
    records = {key: r.pop("items") for key, r in results.items() if "items" in r}
    held = {name: score_heldout(model, heldout[path], job.batch_size, tokenizer, log, name, mismatched.get(path))
            for path, name in _named(list(heldout)).items()}
    payload = {"model": m.model, "limit": job.limit, "backend": job.backend, "mc_rotations": job.mc_rotations,
               "tasks": results, "heldout": {name: summary for name, (summary, _) in held.items()},
               "seconds": round(time.perf_counter() - started, 1), **({"limits": job.limits} if job.limits else {})}
    _write_records(job.out, records, {name: frame for name, (_, frame) in held.items()})
    atomic.write_json(job.out, payload)
    return payload


def _named(paths: list) -> dict:
    """Each held-out file's short name: its stem (its parent folder's name too when two stems clash)."""
    stems = [Path(p).stem for p in paths]
    return {p: Path(p).stem if stems.count(Path(p).stem) == 1 else f"{Path(p).parent.name}/{Path(p).stem}"
            for p in paths}


def _write_records(out: str | Path, records: dict[str, list[dict]], heldout: dict) -> None:
    import pandas as pd
    import pyarrow as pa

    from grads.infra import atomic

    rows = [{"task": task, **r} for task, items in records.items() for r in items]
    if rows:
        atomic.write_parquet(items_file(out), pa.Table.from_pandas(pd.DataFrame(rows), preserve_index=False))
    if heldout:
        frames = [frame.assign(file=name) for name, frame in heldout.items()]
        table = pa.Table.from_pandas(pd.concat(frames, ignore_index=True), preserve_index=False)
        atomic.write_parquet(heldout_file(out), table)

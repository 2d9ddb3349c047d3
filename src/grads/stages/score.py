"""Score a tokenised pool: per-example loss and gradient norms, batched by length, resumable by chunks.

Output: one row per input example, always, in input order:
  id, row, n_tokens, n_target_tokens, truncated_tokens, loss, emb_grad_norm, head_grad_norm,
  [tied_grad_norm,] status ("ok", "no_target", "nonfinite").
Chunks of finished batches are written as they complete; a rerun with the same settings skips them, and the
merged table is identical to an uninterrupted run's (batches are fixed by the plan, not by timing).

Under a launcher (torchrun, accelerate launch) each rank scores every world_size-th chunk of the same plan into
the same folder; rank 0 merges once all ranks are done, so the table equals a one-process run's.
"""

from __future__ import annotations

import math
import shutil
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from grads.config import ScoreConfig, ScoreJob
from grads.core.gradnorms import IGNORE_INDEX, locate_parts, per_example_grad_norms
from grads.data.batches import collate, plan_batches
from grads.data.pool import TokenizedPool
from grads.data.tokenize import TokenizedExample
from grads.errors import GradsError
from grads.eval.nll import target_nll
from grads.infra import atomic, distributed

if TYPE_CHECKING:  # read_scores returns a pandas DataFrame; pandas loads only where it is called
    import pandas as pd

CHUNK_DIR = "score-chunks"
SECONDS_KEY = b"grads_seconds"  # a chunk's metadata: the wall seconds its rank spent scoring it


STATUS_OK, STATUS_NO_TARGET, STATUS_NONFINITE = "ok", "no_target", "nonfinite"


def _row(ex: TokenizedExample, status: str, values: dict[str, float] | None) -> dict:
    values = values or {}
    return {
        "id": ex.id, "row": ex.row, "n_tokens": ex.n_tokens, "n_target_tokens": ex.n_target_tokens,
        "truncated_tokens": ex.truncated_prompt_tokens + ex.truncated_answer_tokens,
        "loss": values.get("loss", math.nan), "emb_grad_norm": values.get("embedding", math.nan),
        "head_grad_norm": values.get("head", math.nan), "tied_grad_norm": values.get("tied_total", math.nan),
        "status": status,
    }


SCHEMA = pa.schema([
    ("id", pa.string()), ("row", pa.int64()), ("n_tokens", pa.int64()), ("n_target_tokens", pa.int64()),
    ("truncated_tokens", pa.int64()), ("loss", pa.float64()), ("emb_grad_norm", pa.float64()),
    ("head_grad_norm", pa.float64()), ("tied_grad_norm", pa.float64()), ("status", pa.string()),
])


def _score_batch(model, examples: Sequence[TokenizedExample], pad_id: int, cfg: ScoreConfig) -> list[dict]:
    device = next(model.parameters()).device
    batch = collate(examples, pad_id, cfg.padding_side, device)
    with distributed.gathered(model):  # a sharded model's embedding and head, whole for the kernel
        norms = per_example_grad_norms(model, batch, tied_total=cfg.tied_total, vocab_chunk=cfg.vocab_chunk)
    rows = []
    for i, ex in enumerate(examples):
        values = {key: float(value[i]) for key, value in norms.items()}
        finite = all(math.isfinite(values[k]) for k in ("loss", "embedding", "head"))
        rows.append(_row(ex, STATUS_OK if finite else STATUS_NONFINITE, values))
    return rows


class _Progress:
    """A progress bar with examples/s on stderr (rich), quiet when disabled."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.bar = None
        if enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn("scoring"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("{task.fields[rate]} ex/s"), TimeRemainingColumn(),
                                console=Console(stderr=True), transient=False)
            self.task = self.bar.add_task("scoring", total=total, rate="-")
            self.bar.start()
        self.start, self.done = time.perf_counter(), 0

    def advance(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            rate = self.done / max(time.perf_counter() - self.start, 1e-9)
            self.bar.update(self.task, advance=n, rate=f"{rate:.2f}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def score_examples(model, examples: TokenizedPool, out_dir: str | Path, cfg: ScoreConfig,
                   fingerprint: str, pad_id: int, progress: bool = True) -> pa.Table | None:
    """Score every example, writing resumable chunks under out_dir, and return the merged table.

    Under a launcher, this rank scores its share of the chunks; rank 0 returns the merged table once every rank
    is done, the other ranks return None.
    """
    locate_parts(model)  # fail early on a model the kernel cannot handle
    chunk_dir = Path(out_dir) / CHUNK_DIR
    plan_file = chunk_dir / "plan.json"
    atomic.owned_by(plan_file, fingerprint, "this folder holds unfinished scoring chunks of a different run",
                    path=chunk_dir, hint="use another --out, or delete that folder to start over")
    distributed.barrier()  # every rank has checked the old plan before rank 0 writes the new one
    if distributed.is_main():
        atomic.write_json(plan_file, {"fingerprint": fingerprint, "world_size": distributed.world_size()})

    batches = plan_batches(examples, cfg.batch_size)
    chunks = [batches[lo:lo + cfg.batches_per_chunk] for lo in range(0, len(batches), cfg.batches_per_chunk)]
    mine = distributed.shard(len(chunks))
    todo = [k for k in mine if not (chunk_dir / f"chunk-{k:05d}.parquet").exists()]
    bar = _Progress(sum(len(b) for k in todo for b in chunks[k]), progress and distributed.is_main())
    # a sharded model gathers each layer from every rank, so every rank runs the kernel as often as the busiest:
    # the others repeat a batch and drop its rows
    n_mine = sum(len(chunks[k]) for k in todo)
    idle = distributed.most_over_ranks(n_mine) - n_mine if distributed.is_sharded(model) else 0
    was_training = model.training
    model.eval()  # no dropout: scores do not depend on batch order or chance
    try:
        for k in todo:
            rows, started = [], time.perf_counter()
            for batch in chunks[k]:
                rows += _score_batch(model, examples.take(batch), pad_id, cfg)
                bar.advance(len(batch))
            seconds = f"{time.perf_counter() - started:.4f}".encode()
            atomic.write_parquet(chunk_dir / f"chunk-{k:05d}.parquet",
                                 pa.Table.from_pylist(rows, schema=SCHEMA.with_metadata({SECONDS_KEY: seconds})))
        for _ in range(idle):
            _score_batch(model, examples.take(batches[0]), pad_id, cfg)
    finally:
        bar.close()
        model.train(was_training)
    distributed.barrier()
    if not distributed.is_main():
        return None

    missing = [k for k in range(len(chunks)) if not (chunk_dir / f"chunk-{k:05d}.parquet").exists()]
    if missing:
        raise GradsError(f"{len(missing)} scoring chunk(s) missing after every rank finished (first: {missing[0]})",
                         path=chunk_dir, hint="ranks must share this folder; rerun the same command to fill them")
    without_target = np.flatnonzero(examples.n_target_tokens == 0)
    no_target = [_row(ex, STATUS_NO_TARGET, None) for ex in examples.take(without_target)]
    tables = [pa.Table.from_pylist(no_target, schema=SCHEMA)]
    tables += [pq.read_table(chunk_dir / f"chunk-{k:05d}.parquet", schema=SCHEMA) for k in range(len(chunks))]
    return pa.concat_tables(tables).sort_by("row").combine_chunks()


def chunk_seconds(chunk_dir: Path) -> float:
    """The seconds recorded by the chunks already in chunk_dir (scored in earlier sittings; 0 for none)."""
    total = 0.0
    for path in chunk_dir.glob("chunk-*.parquet"):
        total += float((pq.read_schema(path).metadata or {}).get(SECONDS_KEY, b"0"))
    return total


def status_counts(table: pa.Table) -> dict[str, int]:
    return dict(sorted(Counter(table.column("status").to_pylist()).items()))


def finish(out_dir: str | Path, table: pa.Table, meta: dict) -> Path:
    """Write scores.parquet and score.json atomically, then drop the chunks they were merged from (rank 0)."""
    out_dir = Path(out_dir)
    atomic.remove_stale_temps(out_dir)  # a kill during an earlier final write left its temporary file
    atomic.write_parquet(out_dir / "scores.parquet", table)
    atomic.write_json(out_dir / "score.json", {**meta, "status_counts": status_counts(table)})
    shutil.rmtree(out_dir / CHUNK_DIR, ignore_errors=True)
    return out_dir / "scores.parquet"


def finished(out_dir: str | Path, fingerprint: str) -> bool:
    """OUT holds finished scores with this fingerprint (reuse them); scores of another run are refused."""
    out_dir = Path(out_dir)
    return atomic.owned_by(out_dir / "score.json", fingerprint, "output folder already holds scores of a different "
                           "run", path=out_dir) and (out_dir / "scores.parquet").exists()


def run_score(job: ScoreJob, fingerprint: str | None = None, model=None, tokenizer=None,
              pool: TokenizedPool | None = None, progress: bool = True, info=None) -> Path:
    """The scoring stage (`grads score`): validate the data (before any model loads), tokenise it into the token
    cache, score, write OUT/scores.parquet and OUT/score.json. A finished folder with the same settings is reused
    as it is; one holding another run is refused. Runs unchanged under torchrun / accelerate launch.

    fingerprint: what decides the scores, when a caller knows more than the job (`grads select` scores a warm-up
    model: its fingerprint names the warm-up's settings). model, tokenizer, pool, info (the pool's PoolInfo):
    already loaded (validated) by the caller.
    """
    from grads.data.formats import scan_pool

    distributed.init()
    info = info or scan_pool(job.data.data, job.data.format, job.data.limit)
    with atomic.folder_lock(job.out):  # inside `grads select` this is OUT/score, which no other process holds
        return _score(job, info, fingerprint, model, tokenizer, pool, progress)


def _score(job: ScoreJob, info, fingerprint: str | None, model, tokenizer, pool: TokenizedPool | None,
           progress: bool) -> Path:
    from grads._version import __version__
    from grads.data.pool import tokenized
    from grads.infra import models

    out_dir = Path(job.out)
    fingerprint = fingerprint or job.model_copy(update={"out": Path(".")}).fingerprint(data_sha256=info.sha256)
    if finished(out_dir, fingerprint):
        return out_dir / "scores.parquet"
    if tokenizer is None:
        tokenizer = models.load_tokenizer(job.model.model, trust_remote_code=job.model.trust_remote_code)
    pool = pool if pool is not None else tokenized(info, tokenizer, job.data.limit, job.data.max_length)
    fsdp = distributed.fsdp_requested(job.score.fsdp)
    if model is None:  # sharded: loaded on the CPU, each rank's shards then go to its device
        model = models.load_model(job.model.model, dtype=job.model.dtype, device="cpu" if fsdp else job.model.device,
                                  trust_remote_code=job.model.trust_remote_code)
    sharding = {}
    if fsdp:  # score.json records the parameter memory of a whole model and of rank 0's shards
        sharding = {"fsdp": True, "parameter_bytes": distributed.parameter_bytes(model)}
        model = distributed.shard_model(model)
        sharding["parameter_bytes_rank0"] = distributed.parameter_bytes(model)
    # a resumed scoring counts its earlier sittings too: the seconds of the chunks they left, over the ranks
    earlier, started = chunk_seconds(out_dir / CHUNK_DIR) / distributed.world_size(), time.perf_counter()
    table = score_examples(model, pool, out_dir, job.score, fingerprint, tokenizer.pad_token_id, progress)
    if table is None:  # not rank 0: wait until rank 0 has written the merged table
        distributed.barrier()
        return out_dir / "scores.parquet"
    meta = {
        "fingerprint": fingerprint, "grads_version": __version__, "job": job.settings(),
        "input": info.record(), **models.revision_entry(job.model.model), "truncation": pool.stats.truncation(),
        "token_cache": str(pool.folder), "world_size": distributed.world_size(), **sharding,
    }
    path = finish(out_dir, table, meta)  # score.json holds no wall-clock time: the same inputs, the same file
    this_sitting = time.perf_counter() - started
    atomic.write_json(out_dir / "timings.json", {"scoring_s": round(earlier + this_sitting, 2),
                                                 "scoring_s_this_sitting": round(this_sitting, 2)})
    distributed.barrier()
    return path


@torch.no_grad()
def answer_only_losses(model, examples: TokenizedPool, batch_size: int, pad_id: int) -> list[float]:
    """Mean CE of each answer given no prompt (the denominator of IFD): the target tokens alone, forward only.
    Batched by answer length; only one batch of examples is in memory at a time."""
    n_target = examples.n_target_tokens
    order = np.flatnonzero(n_target > 0)
    order = order[np.argsort(n_target[order], kind="stable")].tolist()
    device = next(model.parameters()).device
    out = [math.nan] * len(n_target)
    was_training = model.training
    model.eval()
    try:
        for lo in range(0, len(order), batch_size):
            batch_idx, alone = [], []
            for i, ex in zip(order[lo:lo + batch_size], examples.take(order[lo:lo + batch_size])):
                answer = [t for t, label in zip(ex.input_ids, ex.labels) if label != IGNORE_INDEX]
                if len(answer) > 1:  # the first answer token has nothing before it to be predicted from
                    batch_idx.append(i)
                    alone.append(TokenizedExample(ex.id, ex.row, answer, list(answer)))
            if not alone:
                continue
            nll, n = target_nll(model, collate(alone, pad_id, "right", device))
            for j, i in enumerate(batch_idx):
                out[i] = float(nll[j] / n[j])
    finally:
        model.train(was_training)
    return out


# Columns a selection rule may need beyond the score table's own (grads.core.rules.Rule.columns), each computed from
# the scoring model, the tokenised pool, the batch size and the pad id, and kept as OUT/<column>.parquet.
EXTRA_COLUMNS = {"answer_only_loss": answer_only_losses}


_PURPOSE = {"answer_only_loss": "ifd: answer-only losses (forward only)"}


def add_columns(out_dir: str | Path, names: set[str], load_model, pool: TokenizedPool, batch_size: int,
                pad_id: int, log=print) -> None:
    """Compute each extra column not already beside the scores (load_model() gives the scoring model)."""
    out_dir = Path(out_dir)
    atomic.remove_stale_temps(out_dir)
    for name in sorted(names):
        if not (out_dir / f"{name}.parquet").exists():
            log(_PURPOSE.get(name, f"computing {name}"))
            values = EXTRA_COLUMNS[name](load_model(), pool, batch_size, pad_id)
            atomic.write_parquet(out_dir / f"{name}.parquet", pa.table({name: values}))


def read_scores(score_dir: str | Path, columns: set[str] = frozenset()) -> pd.DataFrame:
    """The score table, with the extra columns asked (each from its own file beside it)."""
    score_dir = Path(score_dir)
    frame = pq.read_table(score_dir / "scores.parquet").to_pandas()
    for name in sorted(columns):
        frame[name] = pq.read_table(score_dir / f"{name}.parquet").column(name).to_numpy()
    return frame


def needed_columns(methods) -> set[str]:
    """The extra score columns (beside scores.parquet) that these selection methods read."""
    from grads.core.rules import columns_of

    return {column for method in methods for column in columns_of(method)}

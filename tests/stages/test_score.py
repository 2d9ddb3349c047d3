"""Scoring a pool: values equal the kernel on a batch of one, one row per example, resumable chunks."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest
import torch
from helpers import tiny_llama

from grads.config import ScoreConfig
from grads.core.gradnorms import IGNORE_INDEX, per_example_grad_norms
from grads.data.batches import collate, plan_batches
from grads.data.pool import TokenizedPool
from grads.data.tokenize import TokenizedExample
from grads.stages.score import CHUNK_DIR, score_examples


def pool(n: int = 13, vocab: int = 97) -> TokenizedPool:
    g = torch.Generator().manual_seed(0)
    out = []
    for row in range(n):
        n_prompt, n_answer = int(torch.randint(2, 12, (1,), generator=g)), int(torch.randint(0, 6, (1,), generator=g))
        ids = torch.randint(1, vocab, (n_prompt + n_answer,), generator=g).tolist()
        out.append(TokenizedExample(f"ex{row}", row, ids, [IGNORE_INDEX] * n_prompt + ids[n_prompt:]))
    return TokenizedPool.from_examples(out)


def test_batches_group_by_length_and_skip_examples_without_targets():
    examples = pool()
    batches = plan_batches(examples, 4)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == [i for i, ex in enumerate(examples) if ex.n_target_tokens > 0]
    lengths = [examples[i].n_tokens for i in flat]
    assert lengths == sorted(lengths) and all(len(b) <= 4 for b in batches)


def test_scores_match_the_kernel_run_one_example_at_a_time(tmp_path):
    model, examples = tiny_llama(), pool()
    table = score_examples(model, examples, tmp_path, ScoreConfig(batch_size=4, batches_per_chunk=1), "f", 0,
                           progress=False)
    rows = table.to_pylist()
    assert [r["row"] for r in rows] == list(range(len(examples)))
    assert [r["id"] for r in rows] == [ex.id for ex in examples]
    for ex, r in zip(examples, rows):
        assert r["n_tokens"] == ex.n_tokens and r["n_target_tokens"] == ex.n_target_tokens
        if ex.n_target_tokens == 0:
            assert r["status"] == "no_target" and r["loss"] != r["loss"]  # NaN
            continue
        alone = per_example_grad_norms(model, collate([ex], 0))
        assert r["status"] == "ok"
        assert r["loss"] == pytest.approx(alone["loss"].item(), rel=1e-4)
        assert r["emb_grad_norm"] == pytest.approx(alone["embedding"].item(), rel=1e-4)
        assert r["head_grad_norm"] == pytest.approx(alone["head"].item(), rel=1e-4)


def test_rerun_computes_only_missing_chunks_and_gives_the_same_table(tmp_path):
    model, examples = tiny_llama(), pool(20)
    cfg = ScoreConfig(batch_size=2, batches_per_chunk=1)
    clean = score_examples(model, examples, tmp_path / "clean", cfg, "f", 0, progress=False)
    chunk_dir = tmp_path / "clean" / CHUNK_DIR
    chunks = sorted(chunk_dir.glob("chunk-*.parquet"))
    # simulate a crash after some chunks: drop the others, poison a kept one to prove it is reused, not redone
    for path in chunks[3:]:
        path.unlink()
    kept = pq.read_table(chunks[0])
    poisoned = kept.set_column(kept.schema.get_field_index("loss"), "loss",
                               [[123.0] * kept.num_rows])
    pq.write_table(poisoned, chunks[0])
    resumed = score_examples(model, examples, tmp_path / "clean", cfg, "f", 0, progress=False)
    assert sorted(r["loss"] for r in resumed.to_pylist()).count(123.0) == kept.num_rows
    pq.write_table(kept, chunks[0])
    again = score_examples(model, examples, tmp_path / "clean", cfg, "f", 0, progress=False)
    assert again.to_pandas().equals(clean.to_pandas())  # NaN in the same places counts as equal


def test_chunks_of_another_run_are_refused(tmp_path):
    from grads.errors import GradsError

    model, examples = tiny_llama(), pool(6)
    score_examples(model, examples, tmp_path, ScoreConfig(batch_size=2), "first", 0, progress=False)
    with pytest.raises(GradsError, match="different run"):
        score_examples(model, examples, tmp_path, ScoreConfig(batch_size=2), "second", 0, progress=False)


def test_a_resumed_scoring_counts_the_seconds_of_its_earlier_sittings(tmp_path):
    """Each chunk records the seconds spent on it; what the chunks left by a killed sitting recorded is what
    timings.json adds to the resumed sitting's own seconds."""
    from grads.stages.score import SECONDS_KEY, chunk_seconds

    model, examples = tiny_llama(), pool(20)
    cfg = ScoreConfig(batch_size=2, batches_per_chunk=1)
    score_examples(model, examples, tmp_path, cfg, "f", 0, progress=False)
    chunks = sorted((tmp_path / CHUNK_DIR).glob("chunk-*.parquet"))
    recorded = [float(pq.read_schema(p).metadata[SECONDS_KEY]) for p in chunks]
    assert len(recorded) == len(plan_batches(examples, 2)) > 4 and all(s > 0 for s in recorded)
    assert chunk_seconds(tmp_path / CHUNK_DIR) == pytest.approx(sum(recorded), rel=1e-9)
    for path in chunks[4:]:
        path.unlink()
    assert chunk_seconds(tmp_path / CHUNK_DIR) == pytest.approx(sum(recorded[:4]), rel=1e-9)
    assert chunk_seconds(tmp_path / "absent") == 0.0

"""Held-out answer likelihood: how well a model predicts the answers of a held-out SFT file, scored exactly as
training masks them (the same reading, chat rendering, truncation and answer-only labels as `grads train`).

Per example: the summed negative log-likelihood (nats) of its answer tokens, their count, and the UTF-8 bytes of
the text those tokens spell (closing template tokens such as `<|im_end|>` included, as they are trained on).
Per file:
    nll = Σ NLL / Σ answer tokens          (nats per answer token)
    bpb = Σ NLL / (ln 2 · Σ answer bytes)  (bits per byte: comparable across tokenizers)
A fine-tune that learned the domain lowers both on a held-out file of that domain.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from grads.core.gradnorms import IGNORE_INDEX
from grads.data.pool import TokenizedPool


def read_heldout(path: str | Path, tokenizer, max_length: int | None, limit: int | None = None) -> TokenizedPool:
    """Validate and tokenise a held-out file (any format grads reads; its first `limit` examples) through the
    token cache."""
    from grads.data.formats import scan_pool
    from grads.data.pool import tokenized

    return tokenized(scan_pool(path, limit=limit), tokenizer, limit, max_length)


def answer_bytes(tokenizer, input_ids: list[int], labels: list[int]) -> int:
    """UTF-8 bytes of the text spelled by the scored answer tokens (every target but the first position)."""
    targets = [t for t, label in zip(input_ids[1:], labels[1:]) if label != IGNORE_INDEX]
    text = tokenizer.decode(targets, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    return len(text.encode("utf-8"))


@torch.inference_mode()
def answer_nll(model, pool: TokenizedPool, batch_size: int, pad_id: int) -> np.ndarray:
    """Σ NLL (nats) of each example's answer tokens, batched by length; NaN for an example with none."""
    from grads.data.batches import collate, plan_batches
    from grads.eval.nll import target_nll

    device = next(model.parameters()).device
    out = np.full(len(pool), np.nan)
    for batch_idx in plan_batches(pool, batch_size):
        nll, _ = target_nll(model, collate(pool.take(batch_idx), pad_id, "right", device), where_scored=True)
        out[batch_idx] = nll.double().cpu().numpy()
    return out


def score_heldout(model, pool: TokenizedPool, batch_size: int, tokenizer, log=None,
                  name: str = "") -> tuple[dict, pd.DataFrame]:
    """(the file's summary, one row per example: id, row, n_tokens, n_bytes, nll)."""
    was_training = model.training
    model.eval()
    try:
        nll = answer_nll(model, pool, batch_size, tokenizer.pad_token_id)
    finally:
        model.train(was_training)
    examples = pool.take(range(len(pool)))
    frame = pd.DataFrame({"id": [ex.id for ex in examples], "row": pool.rows, "n_tokens": pool.n_target_tokens,
                          "n_bytes": [answer_bytes(tokenizer, ex.input_ids, ex.labels) for ex in examples],
                          "nll": nll})
    scored = frame[frame["n_tokens"] > 0]
    total, tokens, n_bytes = float(scored["nll"].sum()), int(scored["n_tokens"].sum()), int(scored["n_bytes"].sum())
    summary = {"nll": total / tokens if tokens else math.nan,
               "bpb": total / (math.log(2) * n_bytes) if n_bytes else math.nan,
               "n_examples": len(scored), "n_tokens": tokens, "n_bytes": n_bytes,
               "n_without_answer": int(len(frame) - len(scored))}
    if log:
        log(f"held-out {name}: bpb {summary['bpb']:.4f}, nll {summary['nll']:.4f} "
            f"nats/token ({summary['n_examples']} examples, {tokens} answer tokens)")
    return summary, frame

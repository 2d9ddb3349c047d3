"""Batches of a tokenised pool: planned by length (little padding) and collated into padded tensors."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from grads.core.gradnorms import IGNORE_INDEX
from grads.data.pool import TokenizedPool
from grads.data.tokenize import TokenizedExample


def plan_batches(pool: TokenizedPool, batch_size: int) -> list[list[int]]:
    """Indices of scorable examples grouped by length (little padding); order fixed by (length, row)."""
    scorable = np.flatnonzero(pool.n_target_tokens > 0)
    scorable = scorable[np.lexsort((pool.rows[scorable], pool.n_tokens[scorable]))].tolist()
    return [scorable[lo:lo + batch_size] for lo in range(0, len(scorable), batch_size)]


def collate(examples: Sequence[TokenizedExample], pad_id: int, padding_side: str = "right",
            device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    width = max(ex.n_tokens for ex in examples)
    ids, mask, labels = [], [], []
    for ex in examples:
        pad = width - ex.n_tokens
        parts = [(ex.input_ids, [pad_id] * pad), ([1] * ex.n_tokens, [0] * pad), (ex.labels, [IGNORE_INDEX] * pad)]
        seqs = [real + fill if padding_side == "right" else fill + real for real, fill in parts]
        ids.append(seqs[0])
        mask.append(seqs[1])
        labels.append(seqs[2])
    return {"input_ids": torch.tensor(ids, device=device), "attention_mask": torch.tensor(mask, device=device),
            "labels": torch.tensor(labels, device=device)}

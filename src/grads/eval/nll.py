"""The negative log-likelihood of each sequence's target tokens: training's loss per example, summed; and the
logits of chosen positions only (an evaluation needs the LM head where a token is scored, not everywhere)."""

from __future__ import annotations

import torch

from grads.core.gradnorms import IGNORE_INDEX


def logits_where(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """The logits at the True positions of `keep` (B×T bool), in row-major order: N × V, fp16/bf16 in fp32.

    The LM head runs only at those positions (transformers' `logits_to_keep`); a model that does not take it
    computes every position, and they are picked here: the same values either way."""
    try:
        logits = model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=keep).logits
    except TypeError:  # a forward without logits_to_keep (and without **kwargs)
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    if logits.dim() == 3:  # every position was computed
        logits = logits[keep]
    return _in_fp32(logits)


def _in_fp32(logits: torch.Tensor) -> torch.Tensor:
    """fp16/bf16 logits in fp32 (a softmax over the vocabulary needs it); others as they are."""
    return logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits


def per_row_sum(values: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Σ per row of `values` (one per True position of `keep`, in row-major order)."""
    rows = keep.nonzero()[:, 0]
    return torch.zeros(keep.shape[0], dtype=values.dtype, device=values.device).index_add_(0, rows, values)


def target_nll(model, batch: dict[str, torch.Tensor], where_scored: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(Σ NLL in nats, count) of each sequence's target tokens (labels other than IGNORE_INDEX, each predicted from
    the token before; padding is IGNORE_INDEX): training's loss per example, summed.

    where_scored: the LM head runs only at the positions that predict a target (evaluation). Scoring keeps every
    position's logits: IFD ranks examples by these losses, and identical answers must keep exactly equal losses
    for their ties to be broken by the rule, not by the last bits of a differently shaped product."""
    labels = batch["labels"][:, 1:]
    is_target = labels != IGNORE_INDEX  # position t predicts token t+1
    if not where_scored:
        logits = _in_fp32(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits)
        nll = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), labels, ignore_index=IGNORE_INDEX,
                                                reduction="none").sum(1)
        return nll, is_target.sum(1)
    keep = torch.nn.functional.pad(is_target, (0, 1), value=False)
    logits = logits_where(model, batch["input_ids"], batch["attention_mask"], keep)
    nll = torch.nn.functional.cross_entropy(logits, labels[is_target], reduction="none")
    return per_row_sum(nll, keep), is_target.sum(1)

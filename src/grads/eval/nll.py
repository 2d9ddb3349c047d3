"""The negative log-likelihood of each sequence's target tokens: training's loss per example, summed."""

from __future__ import annotations

import torch

from grads.core.gradnorms import IGNORE_INDEX


def target_nll(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(Σ NLL in nats, count) of each sequence's target tokens (labels other than IGNORE_INDEX, each predicted from
    the token before; padding is IGNORE_INDEX): training's loss per example, summed. fp16/bf16 logits in fp32."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logits = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    labels = batch["labels"][:, 1:]
    nll = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), labels, ignore_index=IGNORE_INDEX,
                                            reduction="none").sum(1)
    return nll, (labels != IGNORE_INDEX).sum(1)

r"""Exact per-example gradient norms of the input embedding E and the LM head W, for a whole batch at once.

Example i has tokens x_1..x_T, final hidden states a_t (rows of A), and target positions S (the positions
whose next token y_t is labelled). Its loss is the mean cross-entropy over its own targets:

    L = (1/|S|) Σ_{t∈S} CE(z_t, y_t),     z_t = W a_t (+ bias)

LM head. The gradient of L wrt the logits is b_t = (softmax(z_t) − onehot(y_t)) / |S| on S, 0 elsewhere, and
G_head = Σ_t b_t a_tᵀ, so without ever forming the V×d matrix:

    ‖G_head‖²_F = Σ_{s,t∈S} (a_s·a_t)(b_s·b_t) = ⟨A Aᵀ, B Bᵀ⟩

B Bᵀ is summed over vocabulary chunks in ONE pass with a running maximum (online softmax), so the |S|×V logits
of a long answer never sit in memory at once and are never computed twice; each target's own entry of the
softmax is left out of the sweep and put back in closed form from the |S|×|S| logits a_s·W[y_t], so
1 − p_y is a sum of the other probabilities, never a difference of numbers near 1. When |S| > d the Gram form
costs more (|S|²V) than the chunked dense product ‖Bᵀ_c A‖² (|S|Vd, a second pass once the normaliser is
known), so the cheaper of the two exact forms is used ("mixed" ghost norm, as in DP ghost clipping).

Input embedding. With g_t = ∂L/∂e_t, the gradient at the embedding *output* e_t = E[x_t] (one backward pass
to activations; no weight gradient anywhere), row v of G_emb collects the positions holding token v:

    ‖G_emb‖²_F = Σ_v ‖Σ_{t: x_t=v} g_t‖²

Tied weights (E = W): the shared tensor's total gradient adds a cross term,

    ‖G_emb + G_head‖²_F = ‖G_emb‖² + ‖G_head‖² + 2 Σ_{s∈S,t} b_s[x_t] (a_s·g_t)

A batch is the SUM of per-example mean losses (never the batch-mean loss), so examples do not interact and
padding contributes nothing. Under LoRA the norms are still those of the base E and W matrices.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.profiler import record_function

LOGITS_BUDGET = 1 << 26  # floats of (batch × targets × vocab-chunk) logits held at once (256 MB in fp32)


IGNORE_INDEX = -100  # the label of a token that is not a target (PyTorch's and Hugging Face's convention)


@dataclass
class ModelParts:
    """The pieces of a causal LM the kernel needs, found through the HF interfaces every model implements."""

    embedding: nn.Module  # input embedding module (output e_t)
    backbone: nn.Module  # everything from input embeddings to final hidden states
    head_weight: Tensor  # W, V×d
    head_bias: Tensor | None
    embed_scale: float | Tensor  # e_t = embed_scale · E[x_t] (Gemma3-style scaled embeddings), else 1
    logit_softcap: float | None  # Gemma2-style z = c·tanh(z_raw / c)
    tied: bool
    padding_idx: int | None  # the embedding row nn.Embedding never updates


def locate_parts(model: nn.Module) -> ModelParts:
    """Find the embedding, backbone and head of an HF causal LM, plain or wrapped by PEFT."""
    hf = model.get_base_model() if hasattr(model, "get_base_model") else model  # unwrap PeftModel
    embedding = hf.get_input_embeddings()
    head = hf.get_output_embeddings()
    backbone = getattr(hf, hf.base_model_prefix, None)
    if head is None or backbone is None or backbone is hf:
        raise ValueError(f"{type(hf).__name__} has no separate output projection or backbone: "
                         "not a causal LM with an LM head")
    head_weight = head.weight if hasattr(head, "weight") else None
    if not isinstance(head_weight, Tensor) or not isinstance(getattr(embedding, "weight", None), Tensor) \
            or hasattr(head, "lora_A") or hasattr(embedding, "lora_embedding_A"):
        raise ValueError("embedding or LM head is not a plain weight matrix (LoRA on them is not supported); "
                         "target the attention/MLP layers with LoRA instead")
    return ModelParts(
        embedding=embedding,
        backbone=backbone,
        head_weight=head_weight,
        head_bias=getattr(head, "bias", None),
        embed_scale=getattr(embedding, "embed_scale", 1.0),
        logit_softcap=getattr(hf.config, "final_logit_softcapping", None),
        tied=head_weight is embedding.weight,
        padding_idx=getattr(embedding, "padding_idx", None),
    )


@contextmanager
def frozen_parameters(model: nn.Module) -> Iterator[None]:
    """No parameter requires grad inside (so no weight gradient is built); restored on exit."""
    params = list(model.parameters())
    saved = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in zip(params, saved):
            p.requires_grad_(flag)


def target_positions(labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Pack each row's target positions to the left: (positions B×K, valid B×K, next tokens B×K).

    Position t is a target when labels[t+1] is not IGNORE_INDEX (its logits predict token t+1).
    """
    is_target = labels[:, 1:] != IGNORE_INDEX
    k = max(int(is_target.sum(1).max()), 1)
    # stable sort puts target positions first, in order; the rest are padding (valid=False, weight 0)
    order = torch.sort((~is_target).to(torch.int8), dim=1, stable=True).indices[:, :k]
    valid = is_target.gather(1, order)
    next_tokens = labels[:, 1:].gather(1, order).masked_fill(~valid, 0)
    return order, valid, next_tokens


def _capped(z: Tensor, softcap: float | None) -> tuple[Tensor, Tensor]:
    """Soft-capped logits c·tanh(z/c) and their derivative (z itself and 1 without soft-capping)."""
    if softcap is None:
        return z, torch.ones((), dtype=z.dtype, device=z.device)
    capped = torch.tanh(z / softcap)
    return capped * softcap, 1 - capped.square()


def _logits(hidden: Tensor, weight: Tensor, bias: Tensor | None, softcap: float | None) -> tuple[Tensor, Tensor]:
    """Logits z = hidden Wᵀ (+ bias) over some vocabulary rows, and dz/dz_raw."""
    z = hidden @ weight.T
    return _capped(z if bias is None else z + bias, softcap)


def _chunk_logits(hidden: Tensor, weight: Tensor, bias: Tensor | None, softcap: float | None, lo: int,
                  hi: int) -> tuple[Tensor, Tensor, Tensor]:
    """Vocabulary rows [lo, hi) of W in the hidden states' dtype, and their logits z and dz/dz_raw."""
    w_chunk = weight[lo:hi].to(hidden.dtype)
    return (w_chunk, *_logits(hidden, w_chunk, None if bias is None else bias[lo:hi].to(hidden.dtype), softcap))


def _set_target_entry(x: Tensor, next_tokens: Tensor, lo: int, hi: int, value: Tensor | float) -> Tensor:
    """x[..., y − lo] = value for the slots whose target y lies in vocabulary rows [lo, hi) (in place)."""
    index = (next_tokens - lo).clamp(0, hi - lo - 1).unsqueeze(-1)
    in_chunk = ((next_tokens >= lo) & (next_tokens < hi)).unsqueeze(-1)
    return x.scatter_(-1, index, torch.where(in_chunk, value, x.gather(-1, index)))


@dataclass
class HeadPass:
    loss: Tensor  # B: mean CE over targets
    sq_norm: Tensor  # B: ‖G_head‖²
    grad_hidden: Tensor  # B×K×d: ∂L/∂a at the target positions
    logsumexp: Tensor  # B×K


@dataclass
class _Sweep:
    """One pass over the vocabulary with a running maximum m (online softmax). With p' the softmax with the
    target's own entry left out (so b = p'⊙dz + c·onehot(y), and 1 − p_y = Σp' is never a difference):
    rest = Σ_{v≠y} e^{z_v−m}, and for the Gram form gram = Σ_v e'_s[v] e'_t[v] and to_hidden = e' W, where
    e' = e^{z−m}⊙dz with the target entry 0. All three are rescaled whenever m grows."""

    m: Tensor  # B×K
    rest: Tensor  # B×K
    gram: Tensor | None = None  # B×K×K
    to_hidden: Tensor | None = None  # B×K×d


def _vocab_sweep(hidden: Tensor, weight: Tensor, bias: Tensor | None, next_tokens: Tensor, softcap: float | None,
                 bounds: list[tuple[int, int]], gram: bool) -> _Sweep:
    batch, k, _ = hidden.shape
    sweep = _Sweep(m=hidden.new_full((batch, k), float("-inf")), rest=hidden.new_zeros(batch, k))
    if gram:
        sweep.gram, sweep.to_hidden = hidden.new_zeros(batch, k, k), torch.zeros_like(hidden)
    for lo, hi in bounds:
        w_chunk, z, dz = _chunk_logits(hidden, weight, bias, softcap, lo, hi)
        m = torch.maximum(sweep.m, z.amax(-1))
        rescale = torch.exp(sweep.m - m)  # 0 on the first chunk
        e = _set_target_entry(z.sub_(m.unsqueeze(-1)).exp_(), next_tokens, lo, hi, 0.0)
        sweep.m, sweep.rest = m, sweep.rest * rescale + e.sum(-1)
        if gram:
            e = e * dz if softcap is not None else e
            sweep.gram = sweep.gram * (rescale.unsqueeze(-1) * rescale.unsqueeze(-2)) + e @ e.transpose(1, 2)
            sweep.to_hidden = sweep.to_hidden * rescale.unsqueeze(-1) + e @ w_chunk
    return sweep


def head_pass(hidden: Tensor, weight: Tensor, bias: Tensor | None, next_tokens: Tensor, token_weight: Tensor,
              softcap: float | None = None, vocab_chunk: int | None = None, head_rule: str = "auto") -> HeadPass:
    """Loss, ‖G_head‖² and ∂L/∂hidden from the target hidden states (B×K×d, fp32), chunked over the vocabulary.

    token_weight is 1/|S| on valid target slots and 0 on padding slots. head_rule: "gram" (⟨AAᵀ, BBᵀ⟩, one
    pass over the vocabulary), "dense" (Σ_chunks ‖B_cᵀ A‖², two passes) or "auto" (gram when K ≤ d).

    With b_s = p'_s⊙dz_s + c_s·onehot(y_s), c_s = (p_s[y_s] − 1)·dz_s[y_s] (see _Sweep), the Gram entries are

        b_s·b_t = p'_s·p'_t (⊙dz) + c_t q_st + c_s q_ts + c_s c_t [y_s = y_t],   q_st = p_s[y_t] dz_s[y_t] [y_t ≠ y_s]

    where p_s[y_t] needs only the K×K logits a_s·W[y_t], so no logit is ever kept or computed twice.
    """
    batch, k, dim = hidden.shape
    use_gram = head_rule == "gram" or (head_rule == "auto" and k <= dim)
    vocab = weight.shape[0]
    chunk = vocab_chunk or max(1024, LOGITS_BUDGET // max(batch * k, 1))
    bounds = [(lo, min(lo + chunk, vocab)) for lo in range(0, vocab, chunk)]
    sweep = _vocab_sweep(hidden, weight, bias, next_tokens, softcap, bounds, use_gram)

    # the logits of every target token at every slot, a_s·W[y_t]: B×K×K
    w_targets = weight[next_tokens].to(hidden.dtype)  # B×K×d
    pair = hidden @ w_targets.transpose(1, 2)
    pair, pair_dz = _capped(pair if bias is None else pair + bias[next_tokens].to(hidden.dtype).unsqueeze(-2),
                            softcap)
    target_logit = pair.diagonal(dim1=1, dim2=2)
    total = sweep.rest + torch.exp(target_logit - sweep.m)
    lse = sweep.m + total.log()
    loss = ((lse - target_logit) * token_weight).sum(1)
    target_dz = pair_dz.diagonal(dim1=1, dim2=2) if softcap is not None else 1.0
    c = -(sweep.rest / total) * target_dz  # (p_y − 1)·dz_y, B×K

    if use_gram:
        same = next_tokens.unsqueeze(-1) == next_tokens.unsqueeze(-2)
        q = torch.exp(pair - lse.unsqueeze(-1)).masked_fill_(same, 0)
        if softcap is not None:
            q = q * pair_dz
        cross = q * c.unsqueeze(-2)
        bbt = sweep.gram / (total.unsqueeze(-1) * total.unsqueeze(-2)) + cross + cross.transpose(1, 2) \
            + (c.unsqueeze(-1) * c.unsqueeze(-2)) * same
        bbt = bbt * (token_weight.unsqueeze(-1) * token_weight.unsqueeze(-2))
        sq_norm = (hidden @ hidden.transpose(1, 2) * bbt).sum((1, 2))
        grad_hidden = (sweep.to_hidden / total.unsqueeze(-1) + c.unsqueeze(-1) * w_targets) \
            * token_weight.unsqueeze(-1)
        return HeadPass(loss=loss, sq_norm=sq_norm, grad_hidden=grad_hidden, logsumexp=lse)

    sq_norm, grad_hidden = _dense_pass(hidden, weight, bias, next_tokens, token_weight, softcap, bounds, lse, c)
    return HeadPass(loss=loss, sq_norm=sq_norm, grad_hidden=grad_hidden, logsumexp=lse)


def _dense_pass(hidden: Tensor, weight: Tensor, bias: Tensor | None, next_tokens: Tensor, token_weight: Tensor,
                softcap: float | None, bounds: list[tuple[int, int]], lse: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    """‖G_head‖² = Σ_chunks ‖B_cᵀ A‖² and ∂L/∂a = Σ_chunks B_c W_c, with each chunk's b = w (p'⊙dz + c·onehot)
    (a second pass over the vocabulary, once the log-normaliser is known)."""
    sq_norm = hidden.new_zeros(hidden.shape[0])
    grad_hidden = torch.zeros_like(hidden)
    for lo, hi in bounds:
        w_chunk, z, dz = _chunk_logits(hidden, weight, bias, softcap, lo, hi)
        b = z.sub_(lse.unsqueeze(-1)).exp_()
        if softcap is not None:
            b = b * dz
        b = _set_target_entry(b, next_tokens, lo, hi, c.unsqueeze(-1)) * token_weight.unsqueeze(-1)
        sq_norm += (b.transpose(1, 2) @ hidden).square().sum((1, 2))
        grad_hidden += b @ w_chunk
    return sq_norm, grad_hidden


def embedding_sq_norms(input_ids: Tensor, grad_embeds: Tensor, mask: Tensor) -> Tensor:
    """‖G_emb‖² per example: Σ_v ‖Σ_{t: x_t=v} g_t‖², summing the g_t of each (example, token) pair."""
    batch = input_ids.shape[0]
    keys = torch.arange(batch, device=input_ids.device).unsqueeze(1) * (int(input_ids.max()) + 1) + input_ids
    keys, grads = keys[mask], grad_embeds[mask]
    unique_keys, slot = torch.unique(keys, return_inverse=True)
    row_sums = grads.new_zeros(len(unique_keys), grads.shape[-1]).index_add_(0, slot, grads)
    example_of_row = unique_keys // (int(input_ids.max()) + 1)
    return grads.new_zeros(batch).index_add_(0, example_of_row, row_sums.square().sum(-1))


def tied_cross_term(parts: ModelParts, hidden: Tensor, next_tokens: Tensor, token_weight: Tensor, lse: Tensor,
                    input_ids: Tensor, grad_embeds: Tensor) -> Tensor:
    """Σ_{s∈S,t} b_s[x_t] (a_s·g_t): only the logits of the tokens present in the input are needed."""
    w_rows = parts.head_weight[input_ids].to(hidden.dtype)  # B×T×d
    bias = None if parts.head_bias is None else parts.head_bias[input_ids].to(hidden.dtype).unsqueeze(1)
    z = hidden @ w_rows.transpose(1, 2)  # B×K×T: z_s[x_t]
    z, dz = _capped(z if bias is None else z + bias, parts.logit_softcap)
    b = torch.exp(z - lse.unsqueeze(-1)) - (next_tokens.unsqueeze(-1) == input_ids.unsqueeze(1)).to(z.dtype)
    b = b * dz * token_weight.unsqueeze(-1)
    return (b * (hidden @ grad_embeds.transpose(1, 2))).sum((1, 2))


def per_example_grad_norms(model: nn.Module, batch: dict[str, Tensor], *, tied_total: bool = False,
                           vocab_chunk: int | None = None, head_rule: str = "auto") -> dict[str, Tensor]:
    """Exact per-example ‖∂L_i/∂E‖_F ("embedding"), ‖∂L_i/∂W‖_F ("head") and L_i ("loss") for a batch.

    batch: input_ids, attention_mask, labels (B×T, labels -100 where not a target; left or right padding).
    Examples with no target token get NaN. With tied_total=True and tied weights, "tied_total" is the norm
    of the shared tensor's total gradient. The model should be in eval mode (no dropout).
    """
    parts = locate_parts(model)
    input_ids, mask, labels = batch["input_ids"], batch["attention_mask"].bool(), batch["labels"]
    labels = labels.masked_fill(~mask, IGNORE_INDEX)
    position_ids = (mask.long().cumsum(-1) - 1).clamp(min=0)  # positions count real tokens, as for left padding

    # each stage is a named range for torch.profiler (benchmarks/gradnorms.py --profile); free when not profiling
    with frozen_parameters(model), torch.enable_grad():
        with record_function("grads.forward"):
            embeds = parts.embedding(input_ids).detach().requires_grad_(True)
            hidden_all = parts.backbone(inputs_embeds=embeds, attention_mask=mask.long(), position_ids=position_ids,
                                        use_cache=False).last_hidden_state
        with record_function("grads.head"):
            positions, valid, next_tokens = target_positions(labels)
            n_target = valid.sum(1)
            token_weight = valid.to(torch.float32) / n_target.clamp(min=1).unsqueeze(1)
            index = positions.unsqueeze(-1).expand(-1, -1, hidden_all.shape[-1])
            hidden = hidden_all.detach().gather(1, index).float()
            head = head_pass(hidden, parts.head_weight, parts.head_bias, next_tokens, token_weight,
                             parts.logit_softcap, vocab_chunk, head_rule)
        with record_function("grads.backward"):
            # padding slots carry zero gradient, so adding them at their placeholder index changes nothing
            grad_hidden_all = torch.zeros_like(hidden_all, dtype=torch.float32).scatter_add_(1, index,
                                                                                             head.grad_hidden)
            (grad_embeds,) = torch.autograd.grad(hidden_all, embeds, grad_outputs=grad_hidden_all.to(hidden_all.dtype))
    # nn.Embedding never gives its padding_idx row a gradient, even where that token is real text
    # (SmolLM2 pads with <|im_end|>), so those positions do not count towards G_emb.
    counted = mask if parts.padding_idx is None else mask & (input_ids != parts.padding_idx)
    grad_embeds = grad_embeds.float() * parts.embed_scale * counted.unsqueeze(-1)

    with record_function("grads.embedding_norm"):
        emb_sq = embedding_sq_norms(input_ids, grad_embeds, counted)
    nan = torch.full_like(head.loss, float("nan"))
    has_target = n_target > 0
    out = {
        "loss": torch.where(has_target, head.loss, nan),
        "embedding": torch.where(has_target, emb_sq.clamp(min=0).sqrt(), nan),
        "head": torch.where(has_target, head.sq_norm.clamp(min=0).sqrt(), nan),
    }
    if tied_total and parts.tied:
        cross = tied_cross_term(parts, hidden, next_tokens, token_weight, head.logsumexp, input_ids, grad_embeds)
        total_sq = emb_sq + head.sq_norm + 2 * cross
        out["tied_total"] = torch.where(has_target, total_sq.clamp(min=0).sqrt(), nan)
    return {name: value.detach() for name, value in out.items()}

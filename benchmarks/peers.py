"""Per-example gradient norms of a causal LM's input embedding E and LM head W, computed with the tools a user
would reach for instead of `grads.core.gradnorms.per_example_grad_norms`, so benchmarks can time them side by side.

Same definitions as grads' kernel: example i's loss L_i is the mean cross-entropy over its own target tokens
(position t's logits predict labels[t+1]); "embedding" = ‖∂L_i/∂E‖_F through the input-embedding lookup only,
"head" = ‖∂L_i/∂W‖_F through the LM head only, "tied_total" = ‖∂L_i/∂E + ∂L_i/∂W‖_F when E is W. Every peer
backpropagates the SUM of the per-example mean losses, so the per-sample gradients are exactly ∂L_i.

Each peer is `name(model, batch) -> {key: length-B tensor}` (NaN for an example without targets, as grads does);
`PEERS` lists them and `PEER_NOTES` says what each computes. Losses and norms are taken in fp32; gradients are
in the model's dtype. Per-model preparation is cached (`prepared`), so a warm-up call keeps it out of timings.
On the tiny model all four agree with grads to ~1e-7 (embedding) and ~2e-6 (head; against an fp64 computation
the materialising peers are within 1e-7 and grads' fp32 Gram form, like opacus' ghost norm, within 2.4e-6),
except where a tool computes something else: see PEER_NOTES and the docstrings.

  python benchmarks/peers.py     # agreement with grads' kernel on the tiny model, tied, untied and with padding_idx
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from grads.core.gradnorms import IGNORE_INDEX

Norms = dict[str, Tensor]

PEER_NOTES: dict[str, str] = {
    "torch_func": "exact; torch.func vmap(grad) of each example's loss wrt E and W passed as two separate tensors "
                  "(functional_call, tie_weights=False), per-example dense V×d gradients materialised; keys "
                  "embedding, head (+ tied_total from their sum when tied). Runs the model with eager attention "
                  "(vmap cannot go through SDPA's mask construction).",
    "opacus": "exact; opacus GradSampleModule, materialised per-sample grad_sample (B×V×d) on E and W only. Keys "
              "embedding, head when untied; when tied only tied_total (opacus sums both uses of the shared "
              "parameter into one grad_sample). Its nn.Embedding grad sampler ignores padding_idx.",
    "opacus_ghost": "exact; opacus GradSampleModuleFastGradientClipping (ghost clipping): per-sample norms without "
                    "materialising (Gram form for the head, unique-token sums for the embedding). Keys embedding, "
                    "head; untied models only (tied: NotImplementedError 'Parameter tying is not supported with "
                    "Ghost Clipping'). Its embedding norm sampler ignores padding_idx.",
    "bergson": "exact (no projection); bergson TraceCollector hooked on the LM head only, per-example gradient "
               "g_iᵀa_i materialised (B×V·d), key head. bergson hooks nn.Linear/Conv only: no embedding role, "
               "hence no tied_total.",
}


# ---------------------------------------------------------------------------------------------------- shared helpers


@dataclass
class Roles:
    """The embedding and LM head of an HF causal LM, with their qualified module names."""

    embedding: nn.Module
    head: nn.Module
    backbone: nn.Module  # input ids to final hidden states
    embedding_name: str
    head_name: str

    @property
    def tied(self) -> bool:
        return self.embedding.weight is self.head.weight


def roles(model: nn.Module) -> Roles:
    embedding, head = model.get_input_embeddings(), model.get_output_embeddings()
    names = {id(module): name for name, module in model.named_modules()}
    return Roles(embedding=embedding, head=head, backbone=getattr(model, model.base_model_prefix),
                 embedding_name=names[id(embedding)], head_name=names[id(head)])


def unpack(batch: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """input_ids, attention_mask, position_ids (counting real tokens, as grads does) and labels (-100 on padding)."""
    ids, mask = batch["input_ids"], batch["attention_mask"]
    labels = batch["labels"].masked_fill(~mask.bool(), IGNORE_INDEX)
    position_ids = (mask.long().cumsum(-1) - 1).clamp(min=0)
    return ids, mask, position_ids, labels


def example_losses(logits: Tensor, labels: Tensor) -> Tensor:
    """Per-example mean cross-entropy (fp32) over the target tokens; 0 (not NaN) for an example without targets,
    so it cannot spoil the other examples' gradients."""
    targets = labels[:, 1:]
    valid = targets != IGNORE_INDEX
    ce = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), targets.clamp(min=0), reduction="none")
    return (ce * valid).sum(1) / valid.sum(1).clamp(min=1)


def without_targets_as_nan(norms: Norms, labels: Tensor) -> Norms:
    has_target = (labels[:, 1:] != IGNORE_INDEX).any(1)
    return {key: torch.where(has_target, value.detach().float(), float("nan")) for key, value in norms.items()}


def row_norms(per_example: Tensor) -> Tensor:
    """Frobenius norm of each example's gradient. Not Tensor.norm: on CPU its fp32 reduction over millions of
    entries is off by up to ~1e-4 relative (3e-5 on the tiny model's 3M-entry head), where sum() sums pairwise
    (~1e-7). One example at a time, so the squares cost one example's V×d of extra memory, not the batch's."""
    return torch.stack([row.float().square().sum() for row in per_example.flatten(1)]).sqrt()


@contextmanager
def only_trainable(model: nn.Module, params: list[Tensor]) -> Iterator[None]:
    """Exactly `params` require grad inside; every flag is restored on exit."""
    saved = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in saved:
            p.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)
        yield
    finally:
        for p, flag in saved:
            p.requires_grad_(flag)


@contextmanager
def training_mode(model: nn.Module) -> Iterator[None]:
    """model.train() inside (opacus captures activations only in training mode), the previous mode restored."""
    was_training = model.training
    model.train()
    try:
        yield
    finally:
        model.train(was_training)


@contextmanager
def attention_implementation(model: nn.Module, name: str) -> Iterator[None]:
    previous = model.config._attn_implementation
    if previous == name:
        yield
        return
    model.set_attn_implementation(name)
    try:
        yield
    finally:
        model.set_attn_implementation(previous)


_PREPARED: dict[tuple[str, int], tuple[weakref.ref, Any]] = {}


def prepared(peer: str, model: nn.Module, build: Callable[[], Any]) -> Any:
    """Per-model preparation, built on the first call and reused, so timed calls measure per-batch work only."""
    key = (peer, id(model))
    entry = _PREPARED.get(key)
    if entry is None or entry[0]() is not model:
        entry = (weakref.ref(model), build())
        _PREPARED[key] = entry
    return entry[1]


# ------------------------------------------------------------------------------------------------------ torch.func


def _torch_func_build(model: nn.Module) -> Callable[..., tuple[Tensor, Tensor]]:
    from torch.func import functional_call, grad, vmap

    r = roles(model)
    emb_name, head_name = f"{r.embedding_name}.weight", f"{r.head_name}.weight"

    def loss(emb: Tensor, head: Tensor, ids: Tensor, mask: Tensor, position_ids: Tensor, labels: Tensor) -> Tensor:
        # E and W enter as two tensors even when the model ties them (tie_weights=False), so the embedding and
        # head roles get separate gradients; every other weight is the module's own tensor, not differentiated.
        kwargs = {"input_ids": ids[None], "attention_mask": mask[None], "position_ids": position_ids[None],
                  "use_cache": False}
        logits = functional_call(model, {emb_name: emb, head_name: head}, (), kwargs, tie_weights=False).logits
        return example_losses(logits, labels[None])[0]

    return vmap(grad(loss, argnums=(0, 1)), in_dims=(None, None, 0, 0, 0, 0))


def torch_func(model: nn.Module, batch: dict[str, Tensor]) -> Norms:
    """torch.func: vmap over the batch of grad of each example's own loss wrt (E, W); dense per-example gradients.

    Attention runs eagerly. With SDPA (the default) vmap fails in transformers' mask construction,
    masking_utils._ignore_causal_mask_sdpa (`fast_all(padding_mask)`):
      RuntimeError: vmap: It looks like you're either (1) calling .item() on a Tensor or (2) attempting to use a
      Tensor in some data-dependent control flow or (3) encountering this error in PyTorch internals. ...
    A prebuilt 4-D boolean mask gets past that but SDPA then has no vmap batching rule on CPU
    (aten::_scaled_dot_product_flash_attention_for_cpu and its backward fall back to a per-example loop, with a
    "performance drop" warning), so eager attention with the 2-D mask is the vectorised route.
    """
    fn = prepared("torch_func", model, lambda: _torch_func_build(model))
    r = roles(model)
    ids, mask, position_ids, labels = unpack(batch)
    with torch.no_grad(), attention_implementation(model, "eager"):  # no_grad: no outer graph on the weights
        grad_emb, grad_head = fn(r.embedding.weight.detach(), r.head.weight.detach(), ids, mask, position_ids,
                                 labels)
    norms = {"embedding": row_norms(grad_emb), "head": row_norms(grad_head)}
    if r.tied:
        norms["tied_total"] = row_norms(grad_emb.add_(grad_head))
    return without_targets_as_nan(norms, labels)


# ---------------------------------------------------------------------------------------------------------- opacus


def _opacus(model: nn.Module, batch: dict[str, Tensor], ghost: bool) -> Norms:
    from opacus import GradSampleModule
    from opacus.grad_sample import GradSampleModuleFastGradientClipping

    r = roles(model)
    ids, mask, position_ids, labels = unpack(batch)
    params = [r.embedding.weight] if r.tied else [r.embedding.weight, r.head.weight]
    # Wrapping only registers hooks on the two trainable modules (well under a millisecond); it is done per call
    # and undone after, so the model is left as it was (two opacus wrappers cannot share a model anyway).
    with only_trainable(model, params), training_mode(model):
        if ghost:
            wrapper = GradSampleModuleFastGradientClipping(model, batch_first=True, loss_reduction="sum",
                                                           use_ghost_clipping=True)
        else:
            wrapper = GradSampleModule(model, batch_first=True, loss_reduction="sum")
        try:
            logits = wrapper(input_ids=ids, attention_mask=mask, position_ids=position_ids, use_cache=False).logits
            torch.autograd.grad(example_losses(logits, labels).sum(), params)  # the hooks fill grad_sample
            per_param = [p._norm_sample if ghost else row_norms(p.grad_sample) for p in params]
        finally:
            wrapper.cleanup()  # hooks and grad_sample/_norm_sample attributes removed
            for module in (r.embedding, r.head):  # left behind when a forward hook raised (ghost + tied)
                for attr in ("activations", "max_batch_len"):
                    if hasattr(module, attr):
                        delattr(module, attr)
    if r.tied:  # one parameter, both uses summed into its grad_sample
        return without_targets_as_nan({"tied_total": per_param[0]}, labels)
    return without_targets_as_nan({"embedding": per_param[0], "head": per_param[1]}, labels)


def opacus(model: nn.Module, batch: dict[str, Tensor]) -> Norms:
    """opacus GradSampleModule: materialised per-sample gradients of E and W (all other parameters frozen).

    With tied weights opacus sees one parameter used by two modules; its forward counter makes the two
    backward hooks accumulate into one grad_sample, so the result is the shared tensor's total per-sample
    gradient, i.e. grads' "tied_total" (the roles cannot be told apart). Opacus's nn.Embedding grad sampler
    scatters every position's gradient, including positions holding padding_idx, which nn.Embedding itself (and
    grads) leaves out: on a model whose padding_idx token occurs in real text (SmolLM2 pads with <|im_end|>)
    its embedding norm differs.
    """
    return _opacus(model, batch, ghost=False)


def opacus_ghost(model: nn.Module, batch: dict[str, Tensor]) -> Norms:
    """opacus GradSampleModuleFastGradientClipping with ghost clipping: per-sample norms of E and W computed from
    activations and output gradients, never materialising a V×d per-example matrix.

    Untied models only. With tied weights the forward hook of the second module using the shared parameter raises
      NotImplementedError: Parameter tying is not supported with Ghost Clipping
    The embedding norm sampler ignores padding_idx, as opacus' materialising sampler does.
    """
    return _opacus(model, batch, ghost=True)


# --------------------------------------------------------------------------------------------------------- bergson


def _bergson_build(model: nn.Module) -> Any:
    from bergson.collector.gradient_collectors import TraceCollector
    from bergson.gradients import GradientProcessor

    r = roles(model)
    # bergson's own entry points (collect_gradients, the HF callback, the scorers) hook model.base_model, which for
    # an HF causal LM is the backbone without lm_head; so the collector is built on the whole model, targeting
    # the head. Its discovery needs a trainable parameter, hence only_trainable.
    with only_trainable(model, [r.head.weight]):
        return TraceCollector(model=model, processor=GradientProcessor(projection_dim=None),
                              target_modules={r.head_name}, device=r.head.weight.device, dtype=torch.float32)


def bergson(model: nn.Module, batch: dict[str, Tensor]) -> Norms:
    """bergson: exact (projection_dim=None) per-example gradient of the LM head, from its TraceCollector hooks.

    bergson hooks only nn.Linear, HF Conv1D, nn.Conv1d/2d/3d and its MoE ExpertLinear
    (bergson.gradients.LayerAdapter.supported_modules): naming the nn.Embedding in target_modules silently
    collects nothing (discover_targets skips it), so there is no "embedding" and no "tied_total".

    Only the head's gradient is wanted, so the backbone runs without autograd and the backward pass stops at the
    head (for a tied model a full backward would otherwise run down to the embedding lookup).
    """
    collector = prepared("bergson", model, lambda: _bergson_build(model))
    r = roles(model)
    ids, mask, position_ids, labels = unpack(batch)
    # with_batch(...) as a context registers the hooks and removes them after, as bergson does for every batch
    with only_trainable(model, [r.head.weight]), collector.with_batch(mask.bool()):
        with torch.no_grad():
            hidden = r.backbone(input_ids=ids, attention_mask=mask, position_ids=position_ids,
                                use_cache=False).last_hidden_state
        torch.autograd.grad(example_losses(r.head(hidden), labels).sum(), [r.head.weight])
    (grads,) = collector.mod_grads.pop(r.head_name)  # B × (V·d)
    collector.mod_grads.clear()
    return without_targets_as_nan({"head": row_norms(grads)}, labels)


PEERS: dict[str, Callable[[nn.Module, dict[str, Tensor]], Norms]] = {
    "torch_func": torch_func,
    "opacus": opacus,
    "opacus_ghost": opacus_ghost,
    "bergson": bergson,
}


# ----------------------------------------------------------------------------------------------------------- check


def _check_batch(tokenizer) -> dict[str, Tensor]:
    """Four chat examples of different lengths, right padded; the pad token <|im_end|> also occurs as real text."""
    from grads.data.batches import collate
    from grads.data.formats import Example
    from grads.data.tokenize import tokenize_example

    pairs = [("What is 2+2?", "4"),
             ("Name the largest organ of the human body and say briefly why.", "The skin, which covers the body."),
             ("Hi", "Hello there, how can I help you today?"),
             ("Which vitamin is made in the skin under sunlight?", "Vitamin D")]
    examples = [tokenize_example(tokenizer, Example(str(i), i, ({"role": "user", "content": q},
                                                                {"role": "assistant", "content": a})))
                for i, (q, a) in enumerate(pairs)]
    return collate(examples, tokenizer.pad_token_id)


def _variants(tied_model: nn.Module) -> dict[str, nn.Module]:
    """The tiny model as benchmarks/gradnorms.py loads it, an untied copy, and both with padding_idx=2: SmolLM2's
    pad token <|im_end|>, which also occurs in real text, so nn.Embedding leaves some real positions out."""
    import copy

    untied = copy.deepcopy(tied_model)
    untied.config.tie_word_embeddings = False
    untied.get_output_embeddings().weight = nn.Parameter(untied.get_input_embeddings().weight.detach().clone())
    models = [tied_model, untied]
    for model in list(models):
        padded = copy.deepcopy(model)
        padded.get_input_embeddings().padding_idx = 2
        models.append(padded)
    return {f"{'tied' if roles(m).tied else 'untied'}, padding_idx {m.get_input_embeddings().padding_idx}": m
            for m in models}


def main() -> None:
    import copy
    import sys
    import time
    import warnings
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_models import load

    from grads.core.gradnorms import per_example_grad_norms
    from grads.infra.models import load_tokenizer

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", message="Full backward hook is firing")
    model = load("tiny", "cpu", "fp32")
    batch = _check_batch(load_tokenizer("smollm2-135m-instruct"))
    print(f"batch: {batch['input_ids'].shape[0]} examples, lengths {batch['attention_mask'].sum(1).tolist()}, "
          f"targets {(batch['labels'][:, 1:] != IGNORE_INDEX).sum(1).tolist()}")
    for variant, base in _variants(model).items():
        ours = per_example_grad_norms(base, batch, tied_total=True)
        print(f"\ntiny {variant}: grads kernel " + ", ".join(
            f"{k} {[round(v, 4) for v in ours[k].tolist()]}" for k in ("embedding", "head", "tied_total") if k in ours))
        for name, peer in PEERS.items():
            subject = copy.deepcopy(base)  # each peer on its own copy: no hooks or flags leak between them
            try:
                peer(subject, batch)  # first call builds the per-model preparation
                start = time.perf_counter()
                got = peer(subject, batch)
                seconds = time.perf_counter() - start
            except Exception as err:  # report and go on: the point is to see what each tool can do
                print(f"  {name:13s} FAILED {type(err).__name__}: {err}")
                continue
            diffs = []
            for key, value in got.items():
                rel = ((value - ours[key]).abs() / ours[key].abs()).max().item() if key in ours else float("nan")
                diffs.append(f"{key} {rel:.1e}")
            print(f"  {name:13s} max rel diff: {', '.join(diffs):52s} ({seconds:.3f} s)")


if __name__ == "__main__":
    main()

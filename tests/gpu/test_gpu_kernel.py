"""The gradient-norm kernel on CUDA, in fp32 and bf16, against brute-force per-example autograd in fp64 on the
same weights (a copy of the model's own weights in fp64, so only the kernel's arithmetic is under test, not the
rounding of the weights). Tiny models of three families, and a random-weight model of SmolLM2-135M's real shape
(vocabulary 49,152, 30 layers): the vocabulary sweep then runs over many chunks and the Gram and dense head forms
over long answers, as they do in a real run. Skipped without CUDA (`pytest -m gpu` on a GPU machine)."""

from __future__ import annotations

import pytest
import torch
from helpers import ROOT, make_batch, tiny_gpt2, tiny_llama, tiny_qwen2, untied_copy

from grads.core.gradnorms import IGNORE_INDEX, per_example_grad_norms

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

# fp32: the kernel's own arithmetic is fp32 throughout; the CPU tests hold it to the same bound.
# bf16: the backbone runs in bf16 (8 significant bits, a rounding of ~4e-3 at every matmul, norm and activation
# output, accumulated over the layers, forward and backward to the embeddings), while the head's sweep is fp32 on
# the bf16 weights. A bf16 computation agrees with fp64 to about 1e-2, not better; 2e-2 holds that with a margin
# (measured on the CPU's bf16 for the same models and examples: at most 2e-3 on the tiny models, 4e-3 on the real
# shape; fp32 was within 2e-7).
RTOL = {torch.float32: 1e-4, torch.bfloat16: 2e-2}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def example(seed: int, n_prompt: int, n_answer: int, vocab: int, repeat: bool = False):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (n_prompt + n_answer,), generator=g).tolist()
    if repeat:  # the same token in prompt and answer: its embedding row sums their gradients
        for i in range(0, len(ids), 3):
            ids[i] = 7
    return ids, [IGNORE_INDEX] * n_prompt + ids[n_prompt:]


def examples(vocab: int, long: int = 14):
    return [example(1, 5, 4, vocab), example(2, 12, 9, vocab, repeat=True), example(3, 30, 2, vocab),
            example(4, 3, long, vocab),
            ([0, 5, 9, 0, 11, 0, 3], [IGNORE_INDEX] * 3 + [0, 11, 0, 3])]  # the pad token as real text


def fp64_reference(model, examples) -> list[dict[str, float]]:
    """Each example alone, no padding, in fp64 on the model's device: mean CE over its targets, backward, the dense
    gradients of E and W (kept apart: the tied total is their sum)."""
    ref = untied_copy(model).double()
    for p in ref.parameters():
        p.requires_grad_(False)
    emb, head = ref.get_input_embeddings().weight, ref.get_output_embeddings().weight
    emb.requires_grad_(True)
    head.requires_grad_(True)
    device = emb.device
    out = []
    for ids, labels in examples:
        emb.grad = head.grad = None
        logits = ref(input_ids=torch.tensor([ids], device=device)).logits[0]
        assert logits.dtype == torch.float64
        loss = torch.nn.functional.cross_entropy(logits[:-1], torch.tensor(labels[1:], device=device),
                                                 ignore_index=IGNORE_INDEX)
        loss.backward()
        out.append({"loss": loss.item(), "embedding": emb.grad.norm().item(), "head": head.grad.norm().item(),
                    "tied_total": (emb.grad + head.grad).norm().item()})
    return out


def assert_close_to_fp64(model, batch_examples, dtype, padding_side="right", **kernel):
    model = model.to(device="cuda", dtype=dtype).eval()
    tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    got = per_example_grad_norms(model, make_batch(batch_examples, padding_side, "cuda"), tied_total=tied, **kernel)
    want = fp64_reference(model, batch_examples)
    keys = ["loss", "embedding", "head"] + (["tied_total"] if tied else [])
    assert set(got) == set(keys)
    for i, reference in enumerate(want):
        for key in keys:
            value = got[key][i].item()
            assert value == pytest.approx(reference[key], rel=RTOL[dtype]), (key, i, value, reference[key])


def smollm2_shape():
    """Random weights of SmolLM2-135M's shape (benchmarks/bench_models.py), pad token 0 as in the benchmarks."""
    import sys

    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from bench_models import CONFIGS
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(**CONFIGS["smollm2-135m"], pad_token_id=0)).eval()


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("padding_side", ["right", "left"])
@pytest.mark.parametrize("build", [lambda: tiny_llama(tied=True), tiny_gpt2, lambda: tiny_qwen2(tied=True)],
                         ids=["llama-tied", "gpt2-untied", "qwen2-tied"])
def test_tiny_models_on_cuda_match_fp64_brute_force(build, padding_side, dtype):
    assert_close_to_fp64(build(), examples(97), dtype, padding_side)


@pytest.fixture(scope="module")
def real_shape():
    return smollm2_shape()


@pytest.mark.parametrize("head_rule", ["gram", "dense"])
@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
def test_a_real_shape_on_cuda_matches_fp64_brute_force(real_shape, dtype, head_rule):
    """49,152 vocabulary rows swept in chunks (the default chunking and a small one), an answer of 700 tokens (more
    targets than the hidden size, where "auto" takes the dense form), both head forms."""
    import copy

    batch_examples = examples(real_shape.config.vocab_size, long=700)
    assert_close_to_fp64(copy.deepcopy(real_shape), batch_examples, dtype, head_rule=head_rule)
    assert_close_to_fp64(copy.deepcopy(real_shape), batch_examples[:3], dtype, head_rule=head_rule,
                         vocab_chunk=5000)


def test_vocabulary_chunking_on_cuda_gives_the_same_norms():
    model = tiny_llama(tied=True).cuda()
    batch = make_batch(examples(97), "right", "cuda")
    whole = per_example_grad_norms(model, batch, tied_total=True)
    chunked = per_example_grad_norms(model, batch, tied_total=True, vocab_chunk=10)
    for key in whole:
        torch.testing.assert_close(chunked[key], whole[key], rtol=1e-5, atol=0)


def test_cuda_and_cpu_give_the_same_fp32_norms():
    model = tiny_llama(tied=True)
    batch = make_batch(examples(97), "left", "cpu")
    on_cpu = per_example_grad_norms(model, batch, tied_total=True)
    on_cuda = per_example_grad_norms(model.cuda(), {k: v.cuda() for k, v in batch.items()}, tied_total=True)
    for key in on_cpu:
        assert on_cuda[key].device.type == "cuda"
        torch.testing.assert_close(on_cuda[key].cpu(), on_cpu[key], rtol=1e-4, atol=0)

"""The real bundled SmolLM2-135M-Instruct (tied weights, 49k vocabulary) on real MedMCQA examples."""

from __future__ import annotations

import copy

import pytest
from helpers import brute_force

from grads.core.gradnorms import per_example_grad_norms
from grads.data.batches import collate
from grads.data.formats import load_pool
from grads.data.tokenize import tokenize_example
from grads.infra.models import load_model

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture(scope="module")
def smollm2():
    return load_model("smollm2-135m-instruct", device="cpu")


def test_bundled_model_loads_as_fp32_llama_with_tied_weights(smollm2):
    import torch

    assert type(smollm2).__name__ == "LlamaForCausalLM" and smollm2.dtype == torch.float32
    assert smollm2.get_output_embeddings().weight is smollm2.get_input_embeddings().weight
    assert not smollm2.training


def test_norms_on_real_medmcqa_examples_match_brute_force(smollm2, smol_tokenizer, medmcqa_dir):
    pool = load_pool(medmcqa_dir / "pool.jsonl", limit=2)
    examples = [tokenize_example(smol_tokenizer, ex, max_length=96) for ex in pool.examples]
    got = per_example_grad_norms(smollm2, collate(examples, smol_tokenizer.pad_token_id, "left"), tied_total=True)
    reference = copy.deepcopy(smollm2).double()  # fp64 brute force: fp32 autograd itself errs by ~1e-4 here
    for i, ex in enumerate(examples):
        want = brute_force(reference, ex.input_ids, ex.labels)
        for key in ["loss", "embedding", "head", "tied_total"]:
            assert got[key][i].item() == pytest.approx(want[key], rel=1e-4), key

"""Every norm against brute-force per-example autograd: a batch of one, dense .grad, roles kept separate."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import brute_force, make_batch, tiny_gpt2, tiny_llama, tiny_qwen2, untied_copy

from grads.core.gradnorms import IGNORE_INDEX, per_example_grad_norms

RTOL = 1e-4


def example(seed: int, n_prompt: int, n_answer: int, vocab: int = 97, repeat: bool = False):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (n_prompt + n_answer,), generator=g).tolist()
    if repeat:  # the same token several times, in prompt and answer: its embedding row sums their gradients
        for i in range(0, len(ids), 3):
            ids[i] = 7
    return ids, [IGNORE_INDEX] * n_prompt + ids[n_prompt:]


EXAMPLES = [
    example(1, 5, 4),
    example(2, 12, 9, repeat=True),
    example(3, 30, 2),  # long prompt, short answer
    example(4, 3, 14),
    ([0, 5, 9, 0, 11, 0, 3], [IGNORE_INDEX] * 3 + [0, 11, 0, 3]),  # the pad token as real text (SmolLM2 style)
]


def assert_matches(model, examples, padding_side, tied_total=False):
    batch = make_batch(examples, padding_side)
    got = per_example_grad_norms(model, batch, tied_total=tied_total)
    for i, (ids, labels) in enumerate(examples):
        want = brute_force(model, ids, labels)
        for key in ["loss", "embedding", "head"] + (["tied_total"] if tied_total else []):
            assert got[key][i].item() == pytest.approx(want[key], rel=RTOL), (key, i, padding_side)


@pytest.mark.parametrize("padding_side", ["right", "left"])
@pytest.mark.parametrize("build", [tiny_llama, tiny_gpt2], ids=["llama", "gpt2"])
def test_untied_models_match_brute_force(build, padding_side):
    assert_matches(build(), EXAMPLES, padding_side)


@pytest.mark.parametrize("padding_side", ["right", "left"])
@pytest.mark.parametrize("build", [lambda: tiny_llama(tied=True), lambda: tiny_qwen2(tied=True)],
                         ids=["llama-tied", "qwen2-tied"])
def test_tied_models_report_both_roles_and_the_total(build, padding_side):
    model = build()
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    assert_matches(model, EXAMPLES, padding_side, tied_total=True)


def test_vocabulary_chunking_gives_the_same_norms():
    model = tiny_llama()
    batch = make_batch(EXAMPLES, "right")
    whole = per_example_grad_norms(model, batch)
    chunked = per_example_grad_norms(model, batch, vocab_chunk=10)  # 10 chunks, the last one short
    for key in whole:
        torch.testing.assert_close(chunked[key], whole[key], rtol=1e-5, atol=0)


def test_lora_wrapped_model_scores_the_base_matrices():
    from peft import LoraConfig, get_peft_model

    base = tiny_llama(seed=3)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                            lora_dropout=0.0))
    torch.manual_seed(5)
    for name, p in model.named_parameters():
        if "lora_B" in name:  # LoRA starts as a no-op; make it change the function
            p.data.normal_(0, 0.5)
    model.eval()
    batch = make_batch(EXAMPLES, "left")
    got = per_example_grad_norms(model, batch)
    merged = copy.deepcopy(model).merge_and_unload()  # the same function as a plain model
    for i, (ids, labels) in enumerate(EXAMPLES):
        want = brute_force(merged, ids, labels)
        assert got["embedding"][i].item() == pytest.approx(want["embedding"], rel=RTOL)
        assert got["head"][i].item() == pytest.approx(want["head"], rel=RTOL)
    # LoRA really changed the function: the unwrapped base model gives other norms
    plain = per_example_grad_norms(tiny_llama(seed=3), batch)
    assert not torch.allclose(plain["head"], got["head"], rtol=1e-3)
    # trainable flags are restored after scoring
    assert any(p.requires_grad for p in model.parameters())


def test_example_without_target_gets_nan_and_does_not_disturb_others():
    model = tiny_llama()
    no_target = ([5, 6, 7, 8], [IGNORE_INDEX] * 4)
    batch = make_batch([EXAMPLES[0], no_target, EXAMPLES[1]], "right")
    got = per_example_grad_norms(model, batch)
    assert torch.isnan(got["loss"][1]) and torch.isnan(got["head"][1]) and torch.isnan(got["embedding"][1])
    want = brute_force(model, *EXAMPLES[1])
    assert got["head"][2].item() == pytest.approx(want["head"], rel=RTOL)
    assert got["embedding"][2].item() == pytest.approx(want["embedding"], rel=RTOL)


@pytest.mark.parametrize("head_rule", ["gram", "dense"])
def test_both_exact_head_forms_match_brute_force(head_rule):
    model = tiny_llama(tied=True)
    batch = make_batch(EXAMPLES, "right")
    got = per_example_grad_norms(model, batch, tied_total=True, head_rule=head_rule, vocab_chunk=25)
    for i, (ids, labels) in enumerate(EXAMPLES):
        want = brute_force(model, ids, labels)
        for key in ["head", "tied_total"]:
            assert got[key][i].item() == pytest.approx(want[key], rel=RTOL), (key, i)


def tiny_gemma2(vocab_size: int = 97, seed: int = 0):
    """Soft-capped logits (z = c·tanh(z_raw/c)) and a scaled embedding inside the backbone."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    torch.manual_seed(seed)
    config = Gemma2Config(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, head_dim=8, final_logit_softcapping=3.0,
                          pad_token_id=0, tie_word_embeddings=True)
    return Gemma2ForCausalLM(config).eval()


def with_head_bias(model, seed: int = 1):
    """The same model with an LM head that has a bias (as GPT-J and some classifiers' heads do)."""
    model = untied_copy(model)
    head = model.get_output_embeddings()
    biased = torch.nn.Linear(head.in_features, head.out_features, bias=True)
    biased.weight = head.weight
    torch.manual_seed(seed)
    biased.bias.data.normal_(0, 1.0)
    model.set_output_embeddings(biased)
    return model


@pytest.mark.parametrize("head_rule", ["gram", "dense"])
@pytest.mark.parametrize("build", [tiny_gemma2, lambda: with_head_bias(tiny_llama())], ids=["softcap", "bias"])
def test_soft_capped_and_biased_heads_match_brute_force(build, head_rule):
    model = build()
    batch = make_batch(EXAMPLES, "right")
    got = per_example_grad_norms(model, batch, tied_total=True, head_rule=head_rule, vocab_chunk=25)
    for i, (ids, labels) in enumerate(EXAMPLES):
        want = brute_force(model, ids, labels)
        keys = ["loss", "embedding", "head"] + (["tied_total"] if "tied_total" in got else [])
        for key in keys:
            assert got[key][i].item() == pytest.approx(want[key], rel=RTOL), (key, i)


@pytest.mark.parametrize("head_rule", ["gram", "dense"])
def test_a_confident_model_keeps_its_small_head_norms_exact(head_rule):
    """Targets the model predicts with p ≈ 1 − 1e-6: the head gradient is tiny and 1 − p must not be computed
    as a difference of numbers near 1 (in fp32 that loses most digits). Reference: brute force in fp64."""
    model = untied_copy(tiny_llama())
    ids = example(7, 6, 0)[0]
    with torch.no_grad():
        for _ in range(10):  # the answer is the model's own greedy continuation
            ids.append(int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax()))
        top2 = model(input_ids=torch.tensor([ids])).logits[0, 5:-1].topk(2).values
        # a sharper head (every logit times a), so each answer token's margin over the runner-up is ≥ 12 nats
        model.get_output_embeddings().weight.mul_(12 / float((top2[:, 0] - top2[:, 1]).min()))
    labels = [IGNORE_INDEX] * 6 + ids[6:]
    batch = make_batch([(ids, labels)], "right")
    got = per_example_grad_norms(model, batch, head_rule=head_rule)
    want = brute_force(copy.deepcopy(model).double(), ids, labels)
    assert want["loss"] < 1e-5  # really confident
    assert got["loss"][0].item() == pytest.approx(want["loss"], abs=1e-6)  # fp32 logits: no more is possible
    for key in ["embedding", "head"]:  # the difference form p − onehot was 18–30% off here
        assert got[key][0].item() == pytest.approx(want[key], rel=1e-2), key  # fp32 logits of ~10^3: ~4e-3


def tiny_gemma3(tied: bool, softcap: float | None = None, seed: int = 0):
    """Gemma 3's text model (gemma3-270m's architecture): the embedding module itself scales its output by
    √hidden (Gemma3TextScaledWordEmbedding), sliding-window layers between full-attention ones (a window shorter
    than the examples), pad token 0 as the embedding's padding_idx."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(seed)
    config = Gemma3TextConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                              num_attention_heads=4, num_key_value_heads=1, head_dim=8, query_pre_attn_scalar=8,
                              sliding_window=4, max_position_embeddings=256,
                              layer_types=["sliding_attention", "full_attention", "sliding_attention"],
                              final_logit_softcapping=softcap, pad_token_id=0, tie_word_embeddings=tied)
    model = Gemma3ForCausalLM(config).eval()
    with torch.no_grad():  # Gemma's RMSNorm weights start at 0 (scale 1 + w): make them matter
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(0, 0.5)
    return model


@pytest.mark.parametrize("padding_side", ["right", "left"])
@pytest.mark.parametrize(("tied", "softcap"), [(True, None), (False, None), (True, 3.0)],
                         ids=["tied", "untied", "tied-softcap"])
def test_gemma3_scaled_embedding_matches_brute_force(tied, softcap, padding_side):
    """∂L/∂E is the embedding's scale times the gradient at its (scaled) output, scattered by token id."""
    model = tiny_gemma3(tied, softcap)
    emb = model.get_input_embeddings()
    assert type(emb).__name__ == "Gemma3TextScaledWordEmbedding" and float(emb.embed_scale) == pytest.approx(32 ** 0.5)
    assert (model.get_output_embeddings().weight is emb.weight) == tied
    assert_matches(model, EXAMPLES, padding_side, tied_total=tied)


def test_gemma3_in_fp64_matches_brute_force_closely():
    model = tiny_gemma3(tied=True).double()
    batch = make_batch(EXAMPLES, "left")
    got = per_example_grad_norms(model, batch, tied_total=True)
    for i, (ids, labels) in enumerate(EXAMPLES):
        want = brute_force(model, ids, labels)
        for key in ["loss", "embedding", "head", "tied_total"]:
            assert got[key][i].item() == pytest.approx(want[key], rel=1e-5), (key, i)  # the head pass is fp32

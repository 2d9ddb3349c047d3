"""Shared fixtures: tiny randomly initialised models built in the test, and the real bundled tokenizer."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(2)


def tiny_llama(vocab_size: int = 97, tied: bool = False, seed: int = 0, hidden: int = 32):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=256, tie_word_embeddings=tied, pad_token_id=0)
    return LlamaForCausalLM(config).eval()


def tiny_gpt2(vocab_size: int = 97, seed: int = 0):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=vocab_size, n_embd=32, n_layer=2, n_head=4, n_positions=256,
                        tie_word_embeddings=False)
    return GPT2LMHeadModel(config).eval()


def tiny_qwen2(vocab_size: int = 97, seed: int = 0, tied: bool = True):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    config = Qwen2Config(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=tied)
    return Qwen2ForCausalLM(config).eval()


@pytest.fixture(scope="session")
def smol_tokenizer():
    from grads.infra.models import load_tokenizer

    return load_tokenizer("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, smol_tokenizer):
    """A tiny random Llama with SmolLM2's real tokenizer and chat template, saved as a plain HF folder."""
    path = tmp_path_factory.mktemp("tiny-model")
    model = tiny_llama(vocab_size=len(smol_tokenizer), tied=True, hidden=32)
    model.save_pretrained(path)
    smol_tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def medmcqa_dir(tmp_path_factory):
    from grads.data.bundled import prepare_medmcqa

    path = tmp_path_factory.mktemp("medmcqa")
    prepare_medmcqa(path)
    return path


def write_jsonl(path, records):
    import json

    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path

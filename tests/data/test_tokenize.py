"""Tokenising an example: the chat template's own tokens, only the answer a target, and truncation that cuts the
prompt from the left before the answer."""

from __future__ import annotations

import json

import pytest
from helpers import PC, write_jsonl

from grads.core.gradnorms import IGNORE_INDEX
from grads.data.formats import load_pool
from grads.data.tokenize import TokenizedExample, tokenize_example, truncate

CHAT = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
                     {"role": "assistant", "content": "4"}]}


ALPACA = {"instruction": "Translate to French", "input": "cat", "output": "chat"}


def target_text(tokenizer, tok: TokenizedExample) -> str:
    return tokenizer.decode([t for t, label in zip(tok.input_ids, tok.labels) if label != IGNORE_INDEX])


@pytest.mark.parametrize("record,fmt,answer", [(CHAT, "chat", "4"), (PC, "prompt-completion", "Paris."),
                                               (ALPACA, "alpaca", "chat")])
def test_formats_are_detected_and_only_the_answer_is_a_target(tmp_path, smol_tokenizer, record, fmt, answer):
    pool = load_pool(write_jsonl(tmp_path / "p.jsonl", [record]))
    assert pool.format == fmt
    tok = tokenize_example(smol_tokenizer, pool.examples[0])
    # ChatML: the answer and its closing template tokens are learned, nothing else
    assert target_text(smol_tokenizer, tok) == f"{answer}<|im_end|>\n"
    prompt_text = smol_tokenizer.decode([t for t, lab in zip(tok.input_ids, tok.labels) if lab == IGNORE_INDEX])
    assert prompt_text.endswith("<|im_start|>assistant\n")
    assert answer not in prompt_text.split("<|im_start|>assistant\n")[-1]
    # the rendered ids are exactly the template's own tokenisation of the whole chat
    assert tok.input_ids == smol_tokenizer.apply_chat_template(list(pool.examples[0].messages), tokenize=True,
                                                               return_dict=True)["input_ids"]


def test_multi_turn_chat_learns_every_assistant_turn(tmp_path, smol_tokenizer):
    record = {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "first"},
                           {"role": "user", "content": "b"}, {"role": "assistant", "content": "second"}]}
    tok = tokenize_example(smol_tokenizer, load_pool(write_jsonl(tmp_path / "c.jsonl", [record])).examples[0])
    assert target_text(smol_tokenizer, tok) == "first<|im_end|>\nsecond<|im_end|>\n"


def test_without_chat_template_prompt_and_completion_are_concatenated(tmp_path, smol_tokenizer):
    import copy

    plain = copy.deepcopy(smol_tokenizer)
    plain.chat_template = None
    tok = tokenize_example(plain, load_pool(write_jsonl(tmp_path / "p.jsonl", [PC])).examples[0])
    assert plain.decode(tok.input_ids) == "Capital of France?Paris." + plain.eos_token
    assert target_text(plain, tok) == "Paris." + plain.eos_token


def word_tokenizer(post_processor=None):
    """A word-level tokenizer without a chat template; `post_processor` adds special tokens as BOS or EOS."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<bos>", "<eos>", "Capital", "of", "France?", "Paris.", "a"]
    raw = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="a"))
    raw.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if post_processor:
        raw.post_processor = post_processor
    return PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<bos>", eos_token="<eos>")


def test_a_base_tokenizer_s_bos_leads_every_example_and_is_no_target(tmp_path):
    """Without a chat template, the tokens the tokenizer puts before a text (BOS) lead the example, masked; a
    tokenizer that adds nothing, or adds only after the text (EOS), gets nothing before it."""
    from tokenizers.processors import TemplateProcessing

    example = load_pool(write_jsonl(tmp_path / "p.jsonl", [{"prompt": "Capital of France?",
                                                             "completion": " Paris."}])).examples[0]
    bos = word_tokenizer(TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 0)]))
    tok = tokenize_example(bos, example)
    assert tok.input_ids == [0, 2, 3, 4, 5, 1] and tok.labels[:4] == [IGNORE_INDEX] * 4
    assert tok.labels[4:] == [5, 1]
    cut = tokenize_example(bos, example, max_length=4)  # the prompt is cut after the BOS, not before it
    assert cut.input_ids == [0, 4, 5, 1] and cut.truncated_prompt_tokens == 2
    for other in (word_tokenizer(), word_tokenizer(TemplateProcessing(single="$A <eos>",
                                                                       special_tokens=[("<eos>", 1)]))):
        assert tokenize_example(other, example).input_ids == [2, 3, 4, 5, 1]


def test_real_medmcqa_example_with_bundled_smollm2_template(medmcqa_dir, smol_tokenizer):
    pool = load_pool(medmcqa_dir / "pool.jsonl", limit=3)
    record = json.loads((medmcqa_dir / "pool.jsonl").read_text().splitlines()[0])
    tok = tokenize_example(smol_tokenizer, pool.examples[0])
    assert pool.examples[0].id == record["id"]
    n_prompt = tok.labels.index(next(label for label in tok.labels if label != IGNORE_INDEX))
    prompt = smol_tokenizer.decode(tok.input_ids[:n_prompt])
    # SmolLM2's template adds its default system prompt; all of it, and the question, is masked
    assert prompt.startswith("<|im_start|>system\n") and record["prompt"] in prompt
    assert prompt.endswith("<|im_start|>user\n" + record["prompt"] + "<|im_end|>\n<|im_start|>assistant\n")
    assert all(label == IGNORE_INDEX for label in tok.labels[:n_prompt])
    assert tok.labels[n_prompt:] == tok.input_ids[n_prompt:]
    assert smol_tokenizer.decode(tok.input_ids[n_prompt:]) == record["completion"] + "<|im_end|>\n"


def test_truncation_cuts_the_prompt_from_the_left_before_the_answer():
    tok = TokenizedExample("x", 0, list(range(10)), [IGNORE_INDEX] * 6 + [6, 7, 8, 9])
    cut = truncate(tok, 7)
    assert cut.input_ids == [3, 4, 5, 6, 7, 8, 9] and cut.labels[3:] == [6, 7, 8, 9]
    assert (cut.truncated_prompt_tokens, cut.truncated_answer_tokens) == (3, 0)
    cut = truncate(tok, 3)  # the prompt keeps one token, then the answer's tail goes
    assert cut.input_ids == [5, 6, 7] and cut.labels == [IGNORE_INDEX, 6, 7]
    assert (cut.truncated_prompt_tokens, cut.truncated_answer_tokens) == (5, 2)
    assert truncate(tok, 20) is tok

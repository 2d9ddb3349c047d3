"""Reading, format detection, ids, the answer-only label mask, truncation, and errors naming file and line."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import write_jsonl

from grads.core.gradnorms import IGNORE_INDEX
from grads.data.formats import Example, load_pool
from grads.data.tokenize import TokenizedExample, tokenize_example, truncate
from grads.errors import GradsError

CHAT = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
                     {"role": "assistant", "content": "4"}]}
PC = {"prompt": "Capital of France?", "completion": "Paris."}
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


def test_alpaca_input_joins_the_instruction(tmp_path):
    pool = load_pool(write_jsonl(tmp_path / "a.jsonl", [ALPACA, {"instruction": "Say hi", "output": "hi"}]))
    assert pool.examples[0].messages[0]["content"] == "Translate to French\n\ncat"
    assert pool.examples[1].messages[0]["content"] == "Say hi"


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


def test_ids_come_from_the_file_or_from_content(tmp_path):
    with_ids = load_pool(write_jsonl(tmp_path / "i.jsonl", [{**PC, "id": 7}, {**PC, "id": "b"}]))
    assert [e.id for e in with_ids.examples] == ["7", "b"] and with_ids.id_source == "field"
    hashed = load_pool(write_jsonl(tmp_path / "h.jsonl", [PC, {"prompt": "x", "completion": "y"}, PC]))
    ids = [e.id for e in hashed.examples]
    assert ids[2] == ids[0] + "-1" and len(set(ids)) == 3 and hashed.id_source == "content-hash"
    assert [e.row for e in hashed.examples] == [0, 1, 2]
    again = load_pool(write_jsonl(tmp_path / "h2.jsonl", [PC, {"prompt": "x", "completion": "y"}, PC]))
    assert [e.id for e in again.examples] == ids  # stable across runs


def test_every_reader_gives_the_same_examples(tmp_path):
    import datasets

    records = [PC, {"prompt": "Q2", "completion": "A2"}]
    from_jsonl = load_pool(write_jsonl(tmp_path / "p.jsonl", records)).examples
    (tmp_path / "p.json").write_text(json.dumps(records))
    pq.write_table(pa.Table.from_pylist(records), tmp_path / "p.parquet")
    datasets.Dataset.from_list(records).save_to_disk(str(tmp_path / "saved"))
    for path in ["p.json", "p.parquet", "saved"]:
        assert load_pool(tmp_path / path).examples == from_jsonl


@pytest.mark.parametrize("content,line,message", [
    ('{"prompt": "a", "completion": "b"}\n{"prompt": "a", \n', 2, "not valid JSON"),
    ('{"prompt": "a", "completion": "b"}\n[1, 2]\n', 2, "expected a JSON object"),
    ('{"prompt": "a", "completion": "b"}\n{"prompt": "a"}\n', 2, "'completion'"),
    ('{"prompt": "a", "completion": "  "}\n', 1, "field 'completion' is empty"),
    ('{"text": "a"}\n', 1, "cannot tell the format"),
    ('{"messages": [{"role": "user", "content": "hi"}]}\n', 1, "no non-empty assistant turn"),
    ('{"id": 1, "prompt": "a", "completion": "b"}\n{"id": 1, "prompt": "c", "completion": "d"}\n', 2,
     "duplicate id '1'"),
])
def test_bad_input_names_file_line_and_problem(tmp_path, content, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(GradsError) as err:
        load_pool(path)
    assert err.value.path == str(path) and err.value.line == line
    assert message in str(err.value) and str(err.value).startswith(f"{path}:{line}: ")


def test_empty_and_non_utf8_files(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(GradsError, match="no records found"):
        load_pool(empty)
    binary = tmp_path / "latin1.jsonl"
    binary.write_bytes(b'{"prompt": "a", "completion": "b"}\n{"prompt": "caf\xe9", "completion": "b"}\n')
    with pytest.raises(GradsError, match="not valid UTF-8") as err:
        load_pool(binary)
    assert err.value.line == 2


def test_forced_format_must_exist(tmp_path):
    with pytest.raises(GradsError, match="unknown format"):
        load_pool(write_jsonl(tmp_path / "p.jsonl", [PC]), fmt="vicuna")


def test_example_equality_is_by_value():
    assert Example("a", 0, ({"role": "user", "content": "x"},)) == Example("a", 0, ({"role": "user", "content": "x"},))

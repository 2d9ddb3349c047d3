"""Records from a file: every reader gives the same examples, alpaca's input joined, ids from the file or from
content, and errors naming the file and the line."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import PC, write_jsonl

from grads.data.formats import load_pool
from grads.errors import GradsError

ALPACA = {"instruction": "Translate to French", "input": "cat", "output": "chat"}


def test_alpaca_input_joins_the_instruction(tmp_path):
    pool = load_pool(write_jsonl(tmp_path / "a.jsonl", [ALPACA, {"instruction": "Say hi", "output": "hi"}]))
    assert pool.examples[0].messages[0]["content"] == "Translate to French\n\ncat"
    assert pool.examples[1].messages[0]["content"] == "Say hi"


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

"""The record formats people have (issue 16): OpenAI content parts and ShareGPT records, each read as the
equivalent chat."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import PC, write_jsonl

from grads.config import DataConfig
from grads.data.formats import load_pool
from grads.errors import GradsError


def parts(*texts: str) -> list[dict]:
    return [{"type": "text", "text": t} for t in texts]


def test_content_parts_are_joined_text(tmp_path):
    chat = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of "
                         "France?"}, {"role": "assistant", "content": "Paris."}]}
    with_parts = {"messages": [{"role": "system", "content": parts("Be brief.")},
                               {"role": "user", "content": parts("Capital of ", "France?")},
                               {"role": "assistant", "content": parts("Paris.")}]}
    assert load_pool(write_jsonl(tmp_path / "p.jsonl", [with_parts])).examples[0].messages == \
        load_pool(write_jsonl(tmp_path / "c.jsonl", [chat])).examples[0].messages  # joined with no separator
    as_lists = {"prompt": [{"role": "user", "content": parts("Capital of ", "France?")}],
                "completion": [{"role": "assistant", "content": parts("Paris.")}]}
    assert load_pool(write_jsonl(tmp_path / "l.jsonl", [as_lists])).examples[0].messages == \
        load_pool(write_jsonl(tmp_path / "pc.jsonl", [PC])).examples[0].messages
    # parquet stores parts as structs: a text part gets the other parts' keys as None
    pq.write_table(pa.Table.from_pylist([with_parts]), tmp_path / "p.parquet")
    assert load_pool(tmp_path / "p.parquet").examples[0].messages == \
        load_pool(tmp_path / "c.jsonl").examples[0].messages
    image = {"messages": [{"role": "user", "content": [{"type": "text", "text": "What is this?"},
                                                       {"type": "image_url", "image_url": {"url": "x.png"}}]},
                          {"role": "assistant", "content": "A cat."}]}
    path = write_jsonl(tmp_path / "img.jsonl", [chat, image])
    with pytest.raises(GradsError) as err:
        load_pool(path)
    assert err.value.line == 2 and str(err.value).startswith(f"{path}:2: messages[0].content[1] is a part of type "
                                                            "'image_url': only text can be trained on")
    assert "remove the non-text parts" in str(err.value)
    with pytest.raises(GradsError, match=r"completion\[0\].content\[0\] is not a text part") as err:
        load_pool(write_jsonl(tmp_path / "t.jsonl", [{"prompt": "q", "completion": [
            {"role": "assistant", "content": [{"type": "text", "text": 5}]}]}]))
    assert err.value.line == 1


def sharegpt(*turns: tuple[str, str], **extra) -> dict:
    return {"conversations": [{"from": who, "value": text} for who, text in turns], **extra}


def test_sharegpt_records_read_as_chats(tmp_path, capsys):
    from grads.cli import main

    record = sharegpt(("system", "Be brief."), ("human", "Capital of France?"), ("gpt", "Paris."))
    chat = {"messages": [{"role": "system", "content": "Be brief."},
                         {"role": "user", "content": "Capital of France?"}, {"role": "assistant", "content": "Paris."}]}
    pool = load_pool(write_jsonl(tmp_path / "s.jsonl", [record]))
    assert pool.format == "sharegpt"
    assert pool.examples[0].messages == load_pool(write_jsonl(tmp_path / "c.jsonl", [chat])).examples[0].messages
    # user/assistant roles and a top-level system field (LLaMA-Factory) mean the same
    same = sharegpt(("user", "Capital of France?"), ("assistant", "Paris."), system="Be brief.")
    assert load_pool(write_jsonl(tmp_path / "u.jsonl", [same])).examples[0].messages == pool.examples[0].messages
    plain = sharegpt(("human", PC["prompt"]), ("gpt", PC["completion"]))
    assert load_pool(write_jsonl(tmp_path / "p.jsonl", [plain])).examples[0].messages == \
        load_pool(write_jsonl(tmp_path / "pc.jsonl", [PC])).examples[0].messages
    # --format sharegpt forces it where detection would say chat
    both = {**record, "messages": [{"role": "user", "content": "other"}, {"role": "assistant", "content": "x"}]}
    forced = write_jsonl(tmp_path / "both.jsonl", [both])
    assert load_pool(forced).format == "chat"
    assert load_pool(forced, fmt="sharegpt").examples[0].messages == pool.examples[0].messages
    assert DataConfig(data=forced, format="sharegpt").format == "sharegpt"
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "inspect", str(forced), "--format", "sharegpt"])
    assert exit_info.value.code in (0, None)
    assert f"{forced}: 1 examples, format sharegpt" in capsys.readouterr().out


@pytest.mark.parametrize("records,line,message", [
    ([sharegpt(("human", "q"), ("gpt", "a")), sharegpt(("human", "q"), ("bot", "a"))], 2,
     "conversations[1] has an unknown 'from': 'bot'"),
    ([sharegpt(("human", "q"), ("gpt", "a")), {"conversations": [{"from": "human", "text": "q"}]}], 2,
     "conversations[0] is not a turn with a known 'from' and a string 'value'"),
    ([{"conversations": [{"from": ["human"], "value": "q"}]}], 1,
     "conversations[0] is not a turn with a known 'from' and a string 'value'"),
    ([sharegpt(("human", "q"))], 1, "chat has no non-empty assistant turn"),
    ([sharegpt(("human", "q"), ("gpt", "a"), system=3)], 1, "field 'system' must be a string, got int"),
    ([sharegpt(("human", "q"), ("gpt", "a")), {"conversations": []}], 2,
     "field 'conversations' is missing or not a non-empty list"),
])
def test_sharegpt_errors_name_the_line_and_the_shape(tmp_path, records, line, message):
    path = write_jsonl(tmp_path / "s.jsonl", records)
    with pytest.raises(GradsError) as err:
        load_pool(path)
    assert err.value.line == line and str(err.value).startswith(f"{path}:{line}: {message}")
    assert '{"from": "system"|"human"|"gpt", "value": "..."}' in err.value.hint \
        or '"from": "gpt"' in err.value.hint
    with pytest.raises(GradsError, match="field 'conversations' is missing") as err:  # forced on other records
        load_pool(write_jsonl(tmp_path / "pc.jsonl", [PC]), fmt="sharegpt")
    assert err.value.line == 1 and "sharegpt records need" in err.value.hint

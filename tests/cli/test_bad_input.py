"""Bad input at the command line: every problem the user can fix stops the command with exit code 2 and one
message naming the file, the line or record, and what to do, before any model is looked at and with nothing
written (docs/reliability.md, "Bad input", lists every case); truncation and tokenizers without a chat template
or pad token are not errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import PC, assert_one_message, run_main, write_jsonl

PC_LINE = json.dumps(PC).encode() + b"\n"
LONG = b"x" * 1_000_000
JSONL_CASES = {
    "empty file": (b"", None, "no records found (the input is empty)", "give a file with at least one example"),
    "only blank lines": (b"\n  \n\n", None, "no records found (the input is empty)",
                         "give a file with at least one example"),
    "a line that is not JSON": (PC_LINE + b'{"prompt": "a", \n', 2,
                                "not valid JSON: Expecting property name enclosed in double quotes at column 17",
                                "each line must be one JSON object"),
    "a record that is a list": (PC_LINE + b"[1, 2]\n", 2, "expected a JSON object, got list",
                                "each line must be one JSON object"),
    "a record that is a string": (b'"hello"\n', 1, "expected a JSON object, got str", "each line must be one JSON"),
    "a prompt of the wrong type": (PC_LINE + b'{"prompt": 5, "completion": "b"}\n', 2,
                                   "field 'prompt' must be a string or a list of messages, got int",
                                   "prompt-completion records need"),
    "a missing completion": (PC_LINE + b'{"prompt": "a"}\n', 2, "field 'prompt' or 'completion' is missing or null",
                             "prompt-completion records need"),
    "an empty completion": (b'{"prompt": "a", "completion": " \\n "}\n', 1, "field 'completion' is empty",
                            "remove the record or fill the field"),
    "an empty alpaca output": (b'{"instruction": "a", "output": ""}\n', 1, "field 'output' is empty",
                               "remove the record or fill the field"),
    "a missing alpaca instruction": (b'{"instruction": "a", "output": "b"}\n{"output": "c"}\n', 2,
                                     "field 'instruction' is missing or not a string", "alpaca records need"),
    "a chat with no assistant turn": (b'{"messages": [{"role": "system", "content": "Be brief."}, '
                                      b'{"role": "user", "content": "hi"}]}\n', 1,
                                      "chat has no non-empty assistant turn", "every chat needs at least one"),
    "a chat whose assistant turn is empty": (b'{"messages": [{"role": "user", "content": "hi"}, '
                                             b'{"role": "assistant", "content": " "}]}\n', 1,
                                             "chat has no non-empty assistant turn", "every chat needs at least one"),
    "a ShareGPT-style chat": (b'{"messages": [{"from": "human", "value": "hi"}]}\n', 1,
                              "messages[0] is not a message with a known role and string content",
                              'each message is {"role"'),
    "duplicate ids": (b'{"id": "q1", "prompt": "a", "completion": "b"}\n{"id": "q2", "prompt": "c", '
                      b'"completion": "d"}\n{"id": "q1", "prompt": "e", "completion": "f"}\n', 3,
                      "duplicate id 'q1' (lines [1, 3])", "ids must be unique"),
    "an id on some records only": (b'{"id": "q1", "prompt": "a", "completion": "b"}\n' + PC_LINE, 2,
                                   "some records have an 'id' field and this one does not",
                                   "give every record an id"),
    "non-UTF-8 bytes": (PC_LINE + b'{"prompt": "caf\xe9", "completion": "b"}\n', 2,
                        "line is not valid UTF-8 (byte 15)", "re-encode the file as UTF-8"),
    "a raw control character": (PC_LINE + b'{"prompt": "a\x1bb", "completion": "c"}\n', 2,
                                "not valid JSON: Invalid control character at column 14 ('\\x1b')",
                                "control characters inside strings must be escaped"),
    "a 1 MB line cut short": (PC_LINE + b'{"prompt": "' + LONG + b'", "completion": ', 2,
                              "not valid JSON: Expecting value at column 1000030", "each line must be one JSON"),
}


@pytest.mark.parametrize("case", list(JSONL_CASES))
def test_bad_jsonl_stops_with_one_message_and_writes_nothing(tmp_path, capsys, case):
    content, line, message, hint = JSONL_CASES[case]
    path = tmp_path / "pool.jsonl"
    path.write_bytes(content)
    # the model does not exist: the data must be checked (and refused) before any model is looked at
    code, err, _ = run_main(["select", "--model", tmp_path / "no-such-model", "--data", path, "--out",
                             tmp_path / "out", "--quiet"], capsys)
    assert code == 2
    assert_one_message(err, f"{path}: " if line is None else f"{path}:{line}: ", message, hint)
    assert len(err) < 1000  # never echoes the (possibly huge) line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", [["score"], ["train"], ["select"], ["data", "inspect"]])
def test_every_command_checks_the_data_before_the_model(tmp_path, capsys, command):
    path = tmp_path / "pool.jsonl"
    path.write_bytes(PC_LINE + b'{"prompt": "a"}\n')
    args = [path] if command == ["data", "inspect"] else ["--data", path, "--out", tmp_path / "out"]
    code, err, _ = run_main([*command, "--model", tmp_path / "no-such-model", *args], capsys)
    assert code == 2
    assert_one_message(err, f"{path}:2: ", "field 'prompt' or 'completion' is missing or null",
                       "prompt-completion records need")
    assert not (tmp_path / "out").exists()


def test_bad_data_fails_before_the_model_is_loaded(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "completion": "b"}\n{oops\n')
    # the model does not exist: if the data were not checked first, the error would be about the model
    code, err, _ = run_main(["score", "--model", "./no-such-model", "--data", str(bad), "--out", str(tmp_path / "o")],
                         capsys)
    assert code == 2 and f"{bad}:2: not valid JSON" in err
    assert not (tmp_path / "o").exists()


def test_unknown_model_and_bad_values_exit_2(tmp_path, capsys):
    data = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "a", "completion": "b"}])
    code, err, _ = run_main(["score", "--model", "./no-such-model", "--data", str(data), "--out", str(tmp_path / "o")],
                         capsys)
    assert code == 2 and "model './no-such-model' not found" in err
    code, err, _ = run_main(["score", "--model", "x", "--data", str(data), "--out", str(tmp_path / "o"),
                          "--batch-size", "0"], capsys)
    assert code == 2 and "batch_size" in err


def write_parquet(path: Path, records: list[dict]) -> Path:
    pq.write_table(pa.Table.from_pylist(records), path)
    return path


FILE_CASES = {  # .parquet and .json inputs count records, not lines
    "parquet without known columns": ("pool.parquet", [{"text": "a"}], "record 1: ",
                                      "cannot tell the format from the fields ['text']", "(or pass --format)"),
    "parquet with ShareGPT messages": ("pool.parquet", [{"messages": [{"from": "human", "value": "hi"}]}],
                                       "record 1: ", "messages[0] is not a message with a known role",
                                       'each message is {"role"'),
    "parquet with a number column as prompt": ("pool.parquet", [{"prompt": 1, "completion": "a"}], "record 1: ",
                                               "field 'prompt' must be a string or a list of messages, got int",
                                               "prompt-completion records need"),
    "parquet with a null answer": ("pool.parquet", [PC, PC, {"prompt": "q", "completion": None}], "record 3: ",
                                   "field 'prompt' or 'completion' is missing or null",
                                   "prompt-completion records need"),
    "a damaged parquet file": ("pool.parquet", b"PAR1 not really parquet", "", "cannot read parquet",
                               "the file is damaged or not parquet"),
    "json list with a non-object": ("pool.json", json.dumps([PC, 7]).encode(), "record 2: ",
                                    "expected an object, got int", "every record must be a JSON object"),
    "json that is not a list": ("pool.json", json.dumps(PC).encode(), "", "expected a JSON list of records, got dict",
                                "a .json file must hold a list of objects"),
    "json with a syntax error": ("pool.json", b'[\n {"prompt": "a",\n  "completion": }\n]', "",
                                 "not valid JSON at line 3, column 17: Expecting value",
                                 "a .json file must hold a list of objects"),
    "json chat without an assistant turn": ("pool.json", json.dumps(
        [{"messages": [{"role": "user", "content": "hi"}]}]).encode(), "record 1: ",
        "chat has no non-empty assistant turn", "every chat needs at least one"),
}


@pytest.mark.parametrize("case", list(FILE_CASES))
def test_bad_parquet_and_json_files_name_the_record(tmp_path, capsys, case):
    name, content, where, message, hint = FILE_CASES[case]
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        write_parquet(path, content)
    code, err, _ = run_main(["select", "--model", tmp_path / "no-such-model", "--data", path, "--out",
                             tmp_path / "out", "--quiet"], capsys)
    assert code == 2
    assert_one_message(err, f"{path}: {where}", message, hint)
    assert not (tmp_path / "out").exists()


def test_a_one_megabyte_line_scores_and_truncation_keeps_the_answer(tmp_path, capsys, tiny_model_dir):
    records = [{"id": "long-prompt", "prompt": "word " * 200_000, "completion": "Answer: A."},
               {"id": "long-answer", "prompt": "Why?", "completion": "because " * 2_000},
               {"id": "control", "prompt": "esc \x1b bell \x07 nul \x00", "completion": "ok"}, {"id": "plain", **PC}]
    pool = write_jsonl(tmp_path / "pool.jsonl", records)
    assert len(pool.read_text().splitlines()[0]) > 1_000_000
    code, err, _ = run_main(["score", "--model", tiny_model_dir, "--data", pool, "--out", tmp_path / "out",
                             "--max-length", "64", "--batch-size", "2", "--quiet"], capsys)
    assert code == 0, err
    scores = pq.read_table(tmp_path / "out" / "scores.parquet").to_pandas().set_index("id")
    assert (scores["status"] == "ok").all() and (scores["n_tokens"] <= 64).all()
    # the prompt is cut from the left down to one token; the answer is kept whole, or its tail is cut, but at
    # least --max-length - 1 answer tokens always stay (and --max-length must exceed 8)
    assert scores.loc["long-prompt", "n_tokens"] == 64 and scores.loc["long-prompt", "truncated_tokens"] > 199_000
    assert scores.loc["long-answer", "n_target_tokens"] == 63
    meta = json.loads((tmp_path / "out" / "score.json").read_text())
    assert meta["truncation"]["n_truncated"] == 2 and meta["truncation"]["answer_tokens_cut"] > 1_900
    code, err, _ = run_main(["score", "--model", tiny_model_dir, "--data", pool, "--out", tmp_path / "o2",
                             "--max-length", "8"], capsys)
    assert code == 2 and "invalid value for max_length: Input should be greater than 8" in err


@pytest.fixture(scope="module")
def tokenizer_variants(tmp_path_factory, tiny_model_dir):
    """The tiny model with its tokenizer stripped of the chat template, the pad token, or pad and eos."""
    base = tmp_path_factory.mktemp("tokenizers")
    out = {}
    for name, drop in [("no-chat-template", ["chat_template"]), ("no-pad", ["pad_token"]),
                       ("no-pad-no-eos", ["pad_token", "eos_token"])]:
        folder = base / name
        shutil.copytree(tiny_model_dir, folder)
        config = json.loads((folder / "tokenizer_config.json").read_text())
        for key in drop:
            config.pop(key, None)
        (folder / "tokenizer_config.json").write_text(json.dumps(config))
        if "chat_template" in drop:
            (folder / "chat_template.jinja").unlink(missing_ok=True)
        out[name] = folder
    return out


@pytest.mark.parametrize("variant", ["no-chat-template", "no-pad"])
def test_model_without_chat_template_or_pad_token_scores(tmp_path, capsys, tokenizer_variants, variant):
    from transformers import AutoTokenizer

    folder = tokenizer_variants[variant]
    raw = AutoTokenizer.from_pretrained(folder)
    assert (raw.chat_template is None) if variant == "no-chat-template" else (raw.pad_token is None)
    pool = write_jsonl(tmp_path / "pool.jsonl", [PC, {"prompt": "2+2?", "completion": "4"}])
    code, err, _ = run_main(["score", "--model", folder, "--data", pool, "--out", tmp_path / "out", "--quiet"],
                            capsys)
    assert code == 0, err
    scores = pq.read_table(tmp_path / "out" / "scores.parquet").to_pandas()
    assert (scores["status"] == "ok").all() and (scores["n_target_tokens"] > 0).all()


def test_tokenizer_without_pad_or_eos_token_is_refused(tmp_path, capsys, tokenizer_variants):
    folder = tokenizer_variants["no-pad-no-eos"]
    pool = write_jsonl(tmp_path / "pool.jsonl", [PC])
    code, err, _ = run_main(["score", "--model", folder, "--data", pool, "--out", tmp_path / "out"], capsys)
    assert code == 2
    assert_one_message(err, f"tokenizer of '{folder}' has neither a pad nor an eos token", "",
                       "use a tokenizer that defines pad_token or eos_token")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("value", ["0", "-0.5", "1.0001", "nan"])
def test_ratio_outside_0_1_is_refused(tmp_path, capsys, value):
    pool = write_jsonl(tmp_path / "pool.jsonl", [PC])
    code, err, _ = run_main(["select", "--model", tmp_path / "no-such-model", "--data", pool, "--out",
                             tmp_path / "out", "--ratio", "0.5", f"--ratio={value}"], capsys)
    assert code == 2
    assert_one_message(err, "", f"a ratio must be in (0, 1], got {float(value)}",
                       "e.g. 0.05 keeps 5% of the eligible examples")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("case", ["clean without labels", "labels missing an id", "labels not an object"])
def test_bad_labels_stop_before_the_warm_up(tmp_path, capsys, tiny_model_dir, case):
    """--labels and the `clean` oracle: a missing or bad labels file stops with exit 2, naming it, before any
    warm-up or scoring writes a file."""
    pool = write_jsonl(tmp_path / "pool.jsonl", [{"id": f"q{i}", "prompt": f"q {i}?", "completion": "an answer"}
                                                 for i in range(6)])
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps({"q0": "clean", "q1": "swap"}) if case == "labels missing an id" else "[1, 2]")
    extra = ["--method", "clean"] if case == "clean without labels" else ["--labels", str(labels)]
    code, err, _ = run_main(["select", "--model", str(tiny_model_dir), "--data", str(pool), "--out",
                             str(tmp_path / "out"), "--quiet", *extra], capsys)
    assert code == 2
    where, message, hint = {
        "clean without labels": ("", "the clean oracle keeps the records a planted pool labels clean",
                                 "pass --labels labels.json"),
        "labels missing an id": (f"{labels}: ", "4 id(s) of the pool have no label, e.g. 'q2'",
                                 "pass the labels.json that `grads data plant` wrote"),
        "labels not an object": (f"{labels}: ", 'the labels are not a JSON object of id -> "clean" or a kind',
                                 "pass the labels.json")}[case]
    assert_one_message(err, where, message, hint)
    assert not (tmp_path / "out" / "warmup").exists() and not (tmp_path / "out" / "score").exists()

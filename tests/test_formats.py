"""The SFT inputs people have (issue 16): compressed JSONL/JSON, a UTF-8 byte-order mark, OpenAI content parts,
ShareGPT records, and datasets in the local Hugging Face cache by hub id; each read as its plain equivalent."""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import write_jsonl

from grads.config import DataConfig
from grads.data.formats import iter_examples, load_pool
from grads.data.readers import file_sha256, raw_rows
from grads.errors import GradsError

PC = {"prompt": "Capital of France?", "completion": "Paris."}
# valid JSON lines that a careless splitter would break: U+2028/U+0085 inside strings, a \r\n line end
RECORDS = [PC, {"prompt": "a\u2028b\u0085c", "completion": "d"}, {"prompt": "Q3", "completion": "A3 \u00e9"}]
LINES = [json.dumps(RECORDS[0]), json.dumps(RECORDS[1], ensure_ascii=False) + "\r",
         json.dumps(RECORDS[2], ensure_ascii=False)]
JSONL = ("\n".join(LINES[:2]) + "\n\n" + LINES[2] + "\n").encode()  # with a blank line: rows are not lines


def compress(data: bytes, compression: str) -> bytes:
    if compression == "gz":
        return gzip.compress(data)
    sink = pa.BufferOutputStream()
    with pa.CompressedOutputStream(sink, "zstd") as out:
        out.write(data)
    return sink.getvalue().to_pybytes()


@pytest.mark.parametrize("name", ["pool.jsonl.gz", "pool.jsonl.zst", "pool.json.gz", "pool.json.zst"])
def test_compressed_jsonl_and_json_read_like_the_plain_file(tmp_path, name):
    plain = tmp_path / "plain.jsonl"
    plain.write_bytes(JSONL)
    data = JSONL if ".jsonl" in name else json.dumps(RECORDS, ensure_ascii=False).encode()
    path = tmp_path / name
    path.write_bytes(compress(data, name.rsplit(".", 1)[1]))
    pool = load_pool(path)
    assert pool.examples == load_pool(plain).examples and len(pool.examples) == 3
    assert pool.format == "prompt-completion"
    assert pool.sha256 == file_sha256(path) == hashlib.sha256(path.read_bytes()).hexdigest()  # bytes on disk
    rows = raw_rows(path)
    if ".jsonl" in name:  # the decompressed lines, verbatim (line end dropped), in every access pattern
        assert list(rows) == [LINES[0], LINES[1].removesuffix("\r"), LINES[2]] == list(raw_rows(plain))
        assert rows[2] == LINES[2] and rows[0] == LINES[0] and rows[-2] == rows[1] and rows[::2] == [LINES[0], LINES[2]]
        for order in ([0, 2], [2, 0, 2], [1, 1]):
            rows.write(tmp_path / "out.jsonl", order)
            raw_rows(plain).write(tmp_path / "plain-out.jsonl", order)
            assert (tmp_path / "out.jsonl").read_bytes() == (tmp_path / "plain-out.jsonl").read_bytes()
        assert (tmp_path / "out.jsonl").read_bytes() == (LINES[1].removesuffix("\r") + "\n").encode() * 2
        assert list(raw_rows(path, limit=2)) == list(rows)[:2]
        rows.write(tmp_path / "none.jsonl", [])
        assert (tmp_path / "none.jsonl").read_bytes() == b""
        with pytest.raises(IndexError):
            rows[3]
    else:  # .json inputs are re-serialised, as before
        assert [json.loads(r) for r in rows] == RECORDS


def test_compressed_input_errors_name_the_file_and_the_line(tmp_path):
    bad = tmp_path / "bad.jsonl.gz"
    bad.write_bytes(gzip.compress(JSONL + b'{"prompt": "a", \n'))
    with pytest.raises(GradsError, match="not valid JSON") as err:
        load_pool(bad)
    assert (err.value.path, err.value.line) == (str(bad), 5) and str(err.value).startswith(f"{bad}:5: ")
    cut = tmp_path / "cut.jsonl.zst"
    big = b"".join(json.dumps({"prompt": "".join(hashlib.sha256(b"%d %d" % (i, j)).hexdigest() for j in range(8)),
                               "completion": "a"}).encode() + b"\n" for i in range(2000))  # hard to compress
    data = compress(big, "zst")
    cut.write_bytes(data[:len(data) // 2])  # cut short: the lines before the cut are read, then it stops
    with pytest.raises(GradsError, match="cannot decompress the zstd data: Truncated compressed stream") as err:
        load_pool(cut)
    assert 100 < err.value.line < 2000 and str(err.value).startswith(f"{cut}:{err.value.line}: ")
    assert "the file is damaged, cut short or not zstd: compress it again" in str(err.value)
    for name in ("not-gzip.jsonl.gz", "not-gzip.json.gz"):
        (tmp_path / name).write_bytes(JSONL)
        with pytest.raises(GradsError, match="cannot decompress the gzip data") as err:
            load_pool(tmp_path / name)
        assert err.value.path == str(tmp_path / name) and err.value.line == (1 if ".jsonl" in name else None)
    (tmp_path / "pool.parquet.gz").write_bytes(b"x")
    with pytest.raises(GradsError, match="unsupported file type '.parquet.gz'"):
        load_pool(tmp_path / "pool.parquet.gz")


def test_a_utf8_byte_order_mark_is_ignored(tmp_path):
    bom = b"\xef\xbb\xbf"
    plain = tmp_path / "plain.jsonl"
    plain.write_bytes(JSONL)
    for name, data in [("bom.jsonl", bom + JSONL), ("bom.jsonl.gz", gzip.compress(bom + JSONL))]:
        path = tmp_path / name
        path.write_bytes(data)
        assert load_pool(path).examples == load_pool(plain).examples
        rows = raw_rows(path)
        assert rows[0] == LINES[0] and not rows[0].startswith("\ufeff")  # the first row carries no BOM
        rows.write(tmp_path / "out.jsonl", range(len(rows)))
        raw_rows(plain).write(tmp_path / "plain-out.jsonl", range(3))
        assert (tmp_path / "out.jsonl").read_bytes() == (tmp_path / "plain-out.jsonl").read_bytes()
        assert (tmp_path / "out.jsonl").read_bytes().startswith(b'{"prompt"')
    bad = tmp_path / "bad.jsonl"  # line numbers are unchanged by the BOM
    bad.write_bytes(bom + JSONL + b"[1]\n")
    with pytest.raises(GradsError, match="expected a JSON object") as err:
        load_pool(bad)
    assert err.value.line == 5
    (tmp_path / "bom.json").write_bytes(bom + json.dumps(RECORDS).encode())
    assert load_pool(tmp_path / "bom.json").examples == load_pool(plain).examples
    (tmp_path / "utf16.jsonl").write_bytes(JSONL.decode().encode("utf-16"))  # PowerShell 5's default
    with pytest.raises(GradsError, match="file is UTF-16") as err:
        load_pool(tmp_path / "utf16.jsonl")
    assert "re-encode the file as UTF-8" in str(err.value)


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


@pytest.fixture
def hf_caches(tmp_path, monkeypatch):
    """Empty datasets and hub caches under tmp_path (the libraries read their cache paths at import)."""
    import datasets
    import huggingface_hub

    home = tmp_path / "hf"
    caches = {"datasets": home / "datasets", "hub": home / "hub"}
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(caches["datasets"]))
    monkeypatch.setenv("HF_HUB_CACHE", str(caches["hub"]))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", caches["datasets"])
    monkeypatch.setattr(datasets.config, "DOWNLOADED_DATASETS_PATH", caches["datasets"] / "downloads")
    monkeypatch.setattr(datasets.config, "EXTRACTED_DATASETS_PATH", caches["datasets"] / "downloads" / "extracted")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(caches["hub"]))
    return caches


def cache_prepared(cache: Path, hub_id: str, splits: dict[str, Path]) -> Path:
    """The folder `datasets.load_dataset(hub_id)` leaves in HF_DATASETS_CACHE when it runs online
    (OWNER___NAME/CONFIG/VERSION/HASH/ with dataset_info.json and NAME-SPLIT.arrow), built offline here with the
    same Arrow builder from local files; the test checks datasets itself reads it back."""
    from datasets.packaged_modules.json.json import Json

    owner, name = hub_id.split("/")
    builder = Json(cache_dir=str(cache), dataset_name=name, hash="0123abcd",
                   data_files={split: str(path) for split, path in splits.items()})
    builder.download_and_prepare()
    (cache / f"{owner}___{name}").mkdir()
    shutil.move(cache / name / builder.config_id, cache / f"{owner}___{name}" / "default")
    return cache / f"{owner}___{name}" / "default" / "0.0.0" / "0123abcd"


def test_a_dataset_in_the_local_hugging_face_cache_by_hub_id(tmp_path, hf_caches, monkeypatch):
    import datasets

    monkeypatch.chdir(tmp_path)  # no local folder named like the hub owner
    train = write_jsonl(tmp_path / "train.jsonl", [PC, {"prompt": "Q2", "completion": "A2"}])
    test = write_jsonl(tmp_path / "test.jsonl", [{"prompt": "Q3", "completion": "A3"}])
    folder = cache_prepared(hf_caches["datasets"], "acme/tiny_sft", {"train": train, "test": test})
    pool = load_pool("acme/tiny_sft")  # split train by default
    assert pool.examples == load_pool(train).examples and pool.format == "prompt-completion"
    assert [e.messages for e in load_pool("acme/tiny_sft:test").examples] == \
        [e.messages for e in load_pool(test).examples]
    assert list(datasets.load_dataset("acme/tiny_sft", split="train")) == [PC, {"prompt": "Q2", "completion": "A2"}]
    # the hash is of the cached Arrow file of the split that was read
    arrow = folder / "tiny_sft-train.arrow"
    assert pool.sha256 == file_sha256(Path("acme/tiny_sft")) == hashlib.sha256(arrow.read_bytes()).hexdigest()
    assert load_pool("acme/tiny_sft:test").sha256 != pool.sha256
    assert [json.loads(r) for r in raw_rows("acme/tiny_sft")] == [PC, {"prompt": "Q2", "completion": "A2"}]
    with pytest.raises(GradsError, match=r"has no split 'validation' \(it has test, train\)"):
        load_pool("acme/tiny_sft:validation")
    # a snapshot in the hub cache (what `hf download --repo-type dataset` leaves) is read as a local folder
    snapshot = hf_caches["hub"] / "datasets--acme--raw_sft" / "snapshots" / ("a" * 40)
    (snapshot / "data").mkdir(parents=True)
    shutil.copy(train, snapshot / "data" / "train.jsonl")
    (hf_caches["hub"] / "datasets--acme--raw_sft" / "refs").mkdir()
    (hf_caches["hub"] / "datasets--acme--raw_sft" / "refs" / "main").write_text("a" * 40)
    raw = load_pool("acme/raw_sft:train")
    assert raw.examples == load_pool(train).examples
    assert raw.sha256 == hashlib.sha256(train.read_bytes()).hexdigest()  # the snapshot's file, as on disk


def test_a_hub_id_that_is_not_cached_is_one_clear_error(tmp_path, hf_caches, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(GradsError) as err:
        list(iter_examples("HuggingFaceH4/no_robots"))
    assert str(err.value).startswith("HuggingFaceH4/no_robots:train: HuggingFaceH4/no_robots is not a local file "
                                     "or folder, and not a dataset in the local Hugging Face cache")
    assert err.value.hint.startswith("nothing is downloaded")
    assert not any(hf_caches["hub"].rglob("*")) and not any(hf_caches["datasets"].rglob("*"))  # nothing fetched
    # a missing local path stays "input not found": it has a data suffix, or its folder exists
    (tmp_path / "data").mkdir()
    for missing in ("data/pool", "runs/pool.jsonl", "pool.jsonl.gz"):
        with pytest.raises(GradsError, match="input not found"):
            load_pool(missing)

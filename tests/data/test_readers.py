"""Reading files (issue 16): compressed JSONL/JSON, a UTF-8 byte-order mark, JSON line separators kept verbatim,
and datasets in the local Hugging Face cache by hub id; each read as its plain equivalent."""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
from pathlib import Path

import pyarrow as pa
import pytest
from helpers import PC, write_jsonl

from grads.data.formats import iter_examples, load_pool
from grads.data.readers import file_sha256, hub_revision, raw_rows
from grads.errors import GradsError

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


def test_control_characters_and_line_separators_stay_verbatim(tmp_path):
    """JSON allows U+2028, U+2029 and U+0085 unescaped inside strings: they must not split a record in two
    (they did: raw_rows used str.splitlines, so the selected files shifted to other rows)."""
    records = [PC, {"prompt": "a\u2028b\u2029c\x85d\x0ce", "completion": "f"},
               {"prompt": "escaped: \x00 \x1b \x07 \t", "completion": "g"}, {"prompt": "q", "completion": "last"}]
    path = tmp_path / "pool.jsonl"
    path.write_bytes("".join(json.dumps(r, ensure_ascii=False) + "\r\n" for r in records).encode())
    pool = load_pool(path)
    assert [e.messages[0]["content"] for e in pool.examples] == [r["prompt"] for r in records]
    rows = raw_rows(path)
    assert list(rows) == [json.dumps(r, ensure_ascii=False) for r in records]  # the file's own lines, no \r\n
    assert [json.loads(r) for r in rows] == records


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
    assert raw.revision == hub_revision("acme/raw_sft:train") == "a" * 40  # the snapshot's commit
    assert pool.revision is None  # a prepared folder named by no commit (the hub's are: tests/infra/test_hub.py)


def test_a_hub_id_that_is_not_cached_is_one_clear_error(tmp_path, hf_caches, monkeypatch):
    """Offline (the suite sets HF_HUB_OFFLINE=1), a dataset that is not in the cache stops with how to fetch it;
    tests/infra/test_hub.py downloads from a hub server on 127.0.0.1."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(GradsError) as err:
        list(iter_examples("HuggingFaceH4/no_robots"))
    assert str(err.value).startswith("HuggingFaceH4/no_robots:train: HuggingFaceH4/no_robots is not a local file "
                                     "or folder, and not a dataset in the local Hugging Face cache "
                                     "(HF_HUB_OFFLINE=1: nothing is downloaded)")
    assert err.value.hint == ("fetch it once where the hub is reachable (`hf download HuggingFaceH4/no_robots "
                              "--repo-type dataset`), or unset HF_HUB_OFFLINE and HF_DATASETS_OFFLINE so that it "
                              "downloads on demand")
    assert not any(hf_caches["hub"].rglob("*")) and not any(hf_caches["datasets"].rglob("*"))  # nothing fetched
    # a missing local path stays "input not found": it has a data suffix, or its folder exists
    (tmp_path / "data").mkdir()
    for missing in ("data/pool", "runs/pool.jsonl", "pool.jsonl.gz"):
        with pytest.raises(GradsError, match="input not found"):
            load_pool(missing)

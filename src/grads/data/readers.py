"""Reading SFT files: one record at a time, with the file and line (or record) of every problem.

Inputs: .jsonl, .json (a list of records), either one gzip- (.gz) or zstd-compressed (.zst), .parquet, a
`datasets.save_to_disk` folder, or a dataset on the Hugging Face Hub by its id (OWNER/NAME[:SPLIT]): downloaded on
demand into the Hugging Face cache, or read from that cache alone when HF_HUB_OFFLINE=1 (grads.infra.hub).
A UTF-8 byte-order mark at the start of a .jsonl or .json file is ignored. `RawRows` gives each record back as
the text it was read from (a JSONL file's own lines, verbatim), for writing the selected rows.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import itertools
import json
import logging
import re
import zlib
from array import array
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

from grads.errors import GradsError
from grads.infra import hub

COMPRESSIONS = {".gz": "gzip", ".zst": "zstd"}
_BOM = b"\xef\xbb\xbf"  # the UTF-8 byte-order mark Excel and PowerShell write first


def file_sha256(path: Path) -> str:
    """SHA-256 of the input as it is stored: a file's bytes on disk (compressed ones too), every file of a folder,
    and for a hub id the files it is read from (the cached Arrow files of the split, or the hub snapshot's files)."""
    hub_spec = hub_dataset_id(path)
    files = _hub_source(*hub_spec).files if hub_spec is not None else \
        sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    digest = hashlib.sha256()
    for file in files:
        with open(file, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def read_records(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line or record number, record). JSONL numbers lines from 1; other inputs number records from 1."""
    path = Path(path)
    if not path.exists():
        hub_spec = hub_dataset_id(path)
        if hub_spec is None:
            raise GradsError("input not found", path=path,
                             hint="check the --data path (a dataset on the Hugging Face Hub is named "
                                  "OWNER/NAME or OWNER/NAME:SPLIT)")
        yield from enumerate(_hub_source(*hub_spec).rows, start=1)
        return
    kind, _ = file_kind(path)
    if path.is_dir():
        yield from _read_saved_dataset(path)
    elif kind == ".jsonl":
        yield from _read_jsonl(path)
    elif kind == ".json":
        yield from _read_json(path)
    elif path.suffix == ".parquet":
        yield from _read_parquet(path)
    else:
        raise GradsError(f"unsupported file type {''.join(path.suffixes[-2:]) or '(none)'!r}", path=path,
                         hint="use .jsonl or .json (either may be compressed: .gz, .zst), .parquet, "
                              "or a datasets save_to_disk folder")


def file_kind(path: Path) -> tuple[str, str | None]:
    """The data suffix and the compression of a file name: pool.jsonl.zst -> (".jsonl", "zstd")."""
    compression = COMPRESSIONS.get(path.suffix)
    return (Path(path.stem).suffix if compression else path.suffix), compression


def _open_bytes(path: Path) -> io.BufferedIOBase:
    """The file's bytes, decompressed as they are read (zstd through pyarrow, already a dependency)."""
    compression = file_kind(path)[1]
    if compression == "gzip":
        return gzip.open(path, "rb")
    if compression == "zstd":
        import pyarrow as pa

        # pyarrow's read(n) fails whole on a cut-short stream, so a small buffer keeps the lines before the damage
        return io.BufferedReader(pa.input_stream(str(path), compression="zstd"), 1 << 16)
    return open(path, "rb")


def _damaged(path: Path, err: Exception, line: int | None) -> GradsError:
    """A decompression error, at the line being read when it happened (JSONL) or for the whole file (JSON)."""
    compression = file_kind(path)[1]
    return GradsError(f"cannot decompress the {compression} data: {err}", path=path, line=line,
                      hint=f"the file is damaged, cut short or not {compression}: compress it again")


def _lines(path: Path) -> Iterator[tuple[int, int, bytes]]:
    """(line number from 1, byte offset in the decompressed data, the line's bytes) of a JSONL file, decompressed
    as it streams. Lines end at b"\\n" only (str.splitlines() would also break at U+2028, U+0085 and other separators
    that JSON allows unescaped inside strings). A UTF-8 byte-order mark before line 1 is dropped, so line 1 then
    starts at offset 3."""
    compressed = file_kind(path)[1] is not None
    line_no, pos = 0, 0
    with _open_bytes(path) as f:
        while True:
            try:
                raw = f.readline()
            except (OSError, EOFError, ValueError, zlib.error) as err:
                if not compressed:
                    raise
                raise _damaged(path, err, line_no + 1) from None
            if not raw:
                return
            line_no += 1
            if line_no == 1 and raw.startswith(_BOM):
                raw, pos = raw[len(_BOM):], len(_BOM)
            yield line_no, pos, raw
            pos += len(raw)


def _not_utf16(data: bytes, path: Path) -> None:
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise GradsError("file is UTF-16 (it starts with a UTF-16 byte-order mark), not UTF-8", path=path,
                         hint="re-encode the file as UTF-8 (PowerShell: Out-File -Encoding utf8)")


def _read_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    for line_no, _, raw in _lines(path):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            if line_no == 1:
                _not_utf16(raw, path)
            raise GradsError(f"line is not valid UTF-8 (byte {err.start})", path=path, line=line_no,
                             hint="re-encode the file as UTF-8") from None
        if not text.strip():
            continue
        try:
            record = json.loads(text)
        except json.JSONDecodeError as err:
            control = err.msg.startswith("Invalid control character")
            column = min(err.pos, len(text.rstrip("\r\n"))) + 1  # past the end: just after the last character
            raise GradsError(f"not valid JSON: {err.msg.removesuffix(' at')} at column {column}"
                             + (f" ({text[err.pos]!r})" if control and err.pos < len(text) else ""),
                             path=path, line=line_no,
                             hint="control characters inside strings must be escaped (\\n, \\t, \\u0001); "
                                  "write the file with a JSON library" if control else
                                  "each line must be one JSON object") from None
        if not isinstance(record, dict):
            raise GradsError(f"expected a JSON object, got {type(record).__name__}", path=path,
                             line=line_no, hint="each line must be one JSON object")
        yield line_no, record


class RawRows(Sequence[str]):
    """Each record as JSON text, in input order, read on demand: a JSONL file's own lines verbatim (a compressed
    one's decompressed lines; a byte-order mark before the first is dropped), found by their byte offsets in the
    (decompressed) data, 8 bytes per record in memory; other inputs re-serialised (their readers load them whole
    anyway).

    A compressed file cannot seek, so its rows are found by decompressing it again rather than by keeping its text
    in memory: the pool is never held in memory at once (a compressed pool is usually a large one), and the
    callers need few passes: `write` (one per selected file) streams once, and indexing resumes from the last
    row read, so ascending access (iteration, slices, a selection's rows) is one pass in all; only out-of-order
    single rows (the report's ten previews) restart from the top."""

    def __init__(self, path: str | Path, limit: int | None = None) -> None:
        self.path = Path(path)
        self.offsets: array | None = None
        self.texts: list[str] | None = None
        self.compressed = False
        self._cursor: tuple[Iterator[tuple[int, str]], int] | None = None  # (the open pass, its next row)
        kind, compression = file_kind(self.path)
        if self.path.is_file() and kind == ".jsonl":
            offsets = array("q")
            for _, pos, raw in _lines(self.path):
                if limit is not None and len(offsets) >= limit:
                    break
                if raw.decode("utf-8", "replace").strip():
                    offsets.append(pos)
            self.offsets, self.compressed = offsets, compression is not None
        else:
            self.texts = [json.dumps(record, ensure_ascii=False, default=str)
                          for _, record in itertools.islice(read_records(self.path), limit)]

    def __len__(self) -> int:
        return len(self.offsets if self.offsets is not None else self.texts)

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if self.texts is not None:
            return self.texts[index]
        if self.compressed:
            return self._streamed(range(len(self))[index])
        with open(self.path, "rb") as f:
            return self._line_at(f, index)

    def _line_at(self, f, index: int) -> str:
        f.seek(self.offsets[index])
        return f.readline().decode("utf-8").rstrip("\r\n")

    def _pass(self) -> Iterator[tuple[int, str]]:
        """(row, text) of every row in order, from a fresh decompression of the file."""
        row, n = 0, len(self.offsets)
        for _, pos, raw in _lines(self.path):
            if row == n:
                return
            if pos == self.offsets[row]:
                yield row, raw.decode("utf-8").rstrip("\r\n")
                row += 1
        if row < n:
            raise GradsError(f"the file ended before row {row + 1} of {n}: it changed while it was being read",
                             path=self.path, hint="rerun once the file is complete")

    def _streamed(self, index: int) -> str:
        if self._cursor is None or self._cursor[1] > index:
            self._cursor = (self._pass(), 0)
        rows = self._cursor[0]
        for row, text in rows:
            self._cursor = (rows, row + 1)
            if row == index:
                return text
        raise IndexError(index)  # not reached: _pass yields every row below len(self)

    def write(self, path: str | Path, indices: Sequence[int]) -> None:
        """Write the rows at `indices` (one per line, in the order given) atomically to `path`, streaming."""
        from grads.infra import atomic

        with atomic.atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as out:
            if self.texts is not None:
                out.writelines(self.texts[i] + "\n" for i in indices)
                return
            if not self.compressed:
                with open(self.path, "rb") as f:
                    out.writelines(self._line_at(f, i) + "\n" for i in indices)
                return
            order = [range(len(self))[i] for i in indices]
            wanted, last = Counter(order), max(order, default=-1)
            rows = itertools.takewhile(lambda item: item[0] <= last, self._pass())  # stop after the last wanted
            if all(a <= b for a, b in itertools.pairwise(order)):  # input order (every caller's): written as read
                out.writelines((text + "\n") * wanted[row] for row, text in rows if row in wanted)
            else:  # any other order: kept until all are read (only the rows asked for)
                texts = {row: text for row, text in rows if row in wanted}
                out.writelines(texts[i] + "\n" for i in order)


def raw_rows(path: str | Path, limit: int | None = None) -> RawRows:
    return RawRows(path, limit)


def _read_json(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    with _open_bytes(path) as f:
        try:
            data = f.read()
        except (OSError, EOFError, ValueError, zlib.error) as err:
            if file_kind(path)[1] is None:
                raise
            raise _damaged(path, err, None) from None
    data = data.removeprefix(_BOM)
    try:
        data = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as err:
        _not_utf16(data, path)
        raise GradsError(f"file is not valid UTF-8 (byte {err.start})", path=path,
                         hint="re-encode the file as UTF-8") from None
    except json.JSONDecodeError as err:  # errors of .json inputs count records, so the line goes in the text
        raise GradsError(f"not valid JSON at line {err.lineno}, column {err.colno}: {err.msg}", path=path,
                         hint="a .json file must hold a list of objects (use .jsonl for one per line)") from None
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise GradsError(f"expected a JSON list of records, got {type(data).__name__}", path=path,
                         hint="a .json file must hold a list of objects (use .jsonl for one per line)")
    for i, record in enumerate(data, start=1):
        if not isinstance(record, dict):
            raise GradsError(f"expected an object, got {type(record).__name__}", path=path, line=i,
                             hint="every record must be a JSON object")
        yield i, record


def _read_parquet(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as err:  # pyarrow raises several types for a corrupt file
        raise GradsError(f"cannot read parquet: {err}", path=path,
                         hint="the file is damaged or not parquet: write it again (e.g. pandas.DataFrame.to_parquet)"
                         ) from None
    yield from enumerate(table.to_pylist(), start=1)


def _read_saved_dataset(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as err:
        raise GradsError(f"not a datasets save_to_disk folder: {err}", path=path,
                         hint="pass a folder written by Dataset.save_to_disk, or a .jsonl/.json/.parquet file"
                         ) from None
    if isinstance(ds, datasets.DatasetDict):
        if "train" not in ds:
            raise GradsError(f"folder holds splits {list(ds)} and none is 'train'", path=path,
                             hint="point at the split folder itself")
        ds = ds["train"]
    yield from enumerate(ds, start=1)


_HUB_ID = re.compile(r"(?P<id>[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*)(?::(?P<split>[\w.-]+))?")


def hub_dataset_id(path: str | Path) -> tuple[str, str] | None:
    """(hub id, split) when `path` names a dataset by its hub id, OWNER/NAME or OWNER/NAME:SPLIT (split `train` by
    default), rather than a local file: nothing exists at that path, OWNER is not a local folder, and NAME has no
    data file suffix (so a mistyped data/pool.jsonl stays "input not found")."""
    text = str(path)
    match = _HUB_ID.fullmatch(text)
    if match is None or Path(text).exists() or Path(match["id"].split("/")[0]).is_dir() \
            or match["id"].endswith((".jsonl", ".json", ".parquet", *COMPRESSIONS)):
        return None
    return match["id"], match["split"] or "train"


class HubData(NamedTuple):
    """A split of a hub dataset as read: its rows, the files they are read from (what the input hash covers), and
    the dataset repo's commit those files are of (None when the cache does not say)."""

    rows: Any  # datasets.Dataset
    files: list[Path]
    revision: str | None


_HUB_READS: dict[tuple, HubData] = {}
_COMMIT = re.compile(r"[0-9a-f]{40}")


def hub_revision(path: str | Path) -> str | None:
    """The commit of the hub dataset `path` names whose files were read (recorded with the input hash), or None for
    a local input."""
    hub_spec = hub_dataset_id(path)
    return _hub_source(*hub_spec).revision if hub_spec is not None else None


def _hub_source(hub_id: str, split: str) -> HubData:
    """The split of a hub dataset, read once per process for each id, split and cache, so every pass over the input
    (validation, hashing, the selected rows) reads the same files and an online run asks the hub once: downloaded
    on demand as `datasets.load_dataset` does, or from the local cache alone when HF_HUB_OFFLINE=1 (or
    HF_DATASETS_OFFLINE=1, which datasets also honours)."""
    import datasets
    from huggingface_hub import constants

    offline = hub.datasets_offline()
    key = (hub_id, split, str(datasets.config.HF_DATASETS_CACHE), str(constants.HF_HUB_CACHE), offline)
    if key not in _HUB_READS:
        _HUB_READS[key] = _hub_cached(hub_id, split) if offline else _hub_downloaded(hub_id, split)
    return _HUB_READS[key]


@contextmanager
def _datasets_quietly():
    """datasets' own progress bars and notes ("Generating train split", "Found the latest cached dataset
    configuration …", a dataset card without metadata) off while it reads: they would interleave with grads' own
    output, and say nothing a user of grads can act on."""
    import datasets

    logging.getLogger("datasets.packaged_modules.cache.cache").setLevel(logging.ERROR)
    logging.getLogger("huggingface_hub.repocard").setLevel(logging.ERROR)  # "Repo card metadata block was not found"
    progress = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if progress:
            datasets.enable_progress_bars()


def _arrow_data(ds) -> HubData:
    """A split that datasets prepared in HF_DATASETS_CACHE: its Arrow files, in a folder named by the commit."""
    files = [Path(f["filename"]) for f in ds.cache_files]
    commit = files[0].parent.name if files else ""
    return HubData(ds, files, commit if _COMMIT.fullmatch(commit) else None)


def _hub_downloaded(hub_id: str, split: str) -> HubData:
    """`datasets.load_dataset(hub_id, split=split)`, as a user calls it: the files of the hub's newest commit are
    downloaded into the hub cache and prepared once into HF_DATASETS_CACHE (a commit already prepared is read back
    from there). When the hub cannot be reached, the local cache is read as offline."""
    import datasets
    from datasets.exceptions import DatasetNotFoundError

    spec = f"{hub_id}:{split}"
    try:
        with _datasets_quietly():
            ds = datasets.load_dataset(hub_id, split=split)
    except DatasetNotFoundError as err:  # no such dataset, or a gated or private one without access
        raise GradsError(f"{hub_id} is not a local file or folder, and the Hugging Face Hub refused it: {err}",
                         path=spec, hint="check the id; a gated or private dataset needs HF_TOKEN (or `hf auth "
                                         "login`) with access granted") from None
    except ConnectionError:
        return _hub_cached(hub_id, split)
    except ValueError as err:  # an unknown split, or several configurations to choose from
        said = " ".join(str(err).split())
        if "split" in said.lower():
            raise GradsError(f"the dataset {hub_id} has no split {split!r}: {said}", path=spec,
                             hint=f"name one as {hub_id}:SPLIT") from None
        raise GradsError(f"cannot read {hub_id} from the Hugging Face Hub: {said}", path=spec,
                         hint="save the configuration you want with Dataset.save_to_disk and pass that folder"
                         ) from None
    except Exception as err:  # e.g. a repo with no data files datasets can read
        raise GradsError(f"cannot read {hub_id} from the Hugging Face Hub: {err}", path=spec,
                         hint="pass a local file, or a dataset whose files datasets.load_dataset reads") from None
    return _arrow_data(ds)


def _hub_cached(hub_id: str, split: str) -> HubData:
    """The split of a dataset in the local Hugging Face cache, read without a connection, and the files it is read
    from.

    First the datasets cache (HF_DATASETS_CACHE: what `datasets.load_dataset(hub_id)` prepared when it last ran
    online, and what it reads back offline, through the same `Cache` builder); then the hub cache (HF_HUB_CACHE: a
    snapshot that `hf download --repo-type dataset` or `snapshot_download` fetched), loaded as a local folder."""
    import datasets

    spec = f"{hub_id}:{split}"
    why = "HF_HUB_OFFLINE=1: nothing is downloaded" if hub.datasets_offline() else "the hub could not be reached"
    hint = hub.fetch_hint(hub_id, "dataset")
    try:
        from datasets.packaged_modules.cache.cache import Cache

        with _datasets_quietly():
            builder = Cache(repo_id=hub_id, dataset_name=hub_id.split("/")[-1], version="auto", hash="auto")
    except (ValueError, OSError) as err:  # not in the datasets cache, or several of its configurations are
        if "multiple" in str(err):
            raise GradsError(f"the local Hugging Face cache holds several configurations of {hub_id}: "
                             f"{str(err).splitlines()[0]}", path=spec,
                             hint="save the one you want with Dataset.save_to_disk and pass that folder") from None
    else:
        splits = sorted(builder.info.splits or {})
        if split not in splits:
            raise GradsError(f"the cached dataset {hub_id} has no split {split!r} (it has {', '.join(splits)})",
                             path=spec, hint=f"name one as {hub_id}:SPLIT")
        return _arrow_data(builder.as_dataset(split=split))
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        folder = Path(snapshot_download(hub_id, repo_type="dataset", local_files_only=True))
    except LocalEntryNotFoundError:
        raise GradsError(f"{hub_id} is not a local file or folder, and not a dataset in the local Hugging Face "
                         f"cache ({why})", path=spec, hint=hint) from None
    except Exception as err:  # e.g. IncompleteSnapshotError: an interrupted download
        raise GradsError(f"the local Hugging Face cache holds {hub_id} only in part: {err}", path=spec,
                         hint=hint) from None
    try:
        with _datasets_quietly():
            ds = datasets.load_dataset(str(folder), split=split)
    except Exception as err:
        raise GradsError(f"cannot read split {split!r} of the cached snapshot of {hub_id}: {err}", path=spec,
                         hint=f"name an existing split as {hub_id}:SPLIT") from None
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    return HubData(ds, files, folder.name if _COMMIT.fullmatch(folder.name) else None)

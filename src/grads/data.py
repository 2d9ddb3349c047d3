"""Read an SFT pool, normalise every record to a chat, and tokenise it with an answer-only label mask.

Formats (auto-detected from the first record, or forced):
  chat               {"messages": [{"role": ..., "content": ...}, ...]}
  prompt-completion  {"prompt": str | [messages], "completion": str | [messages]}
  alpaca             {"instruction": str, "input": str (optional), "output": str}
  sharegpt           {"conversations": [{"from": "system"|"human"|"gpt", "value": str}, ...], "system": str (optional)}
A message's content is a string or a list of OpenAI content parts [{"type": "text", "text": ...}, ...], whose texts
are joined with no separator (as chat templates that take part lists render them); any other part is refused.
Inputs: .jsonl, .json (a list of records), either one gzip- (.gz) or zstd-compressed (.zst), .parquet, a
`datasets.save_to_disk` folder, or a dataset in the local Hugging Face cache by its hub id (OWNER/NAME[:SPLIT]).
A UTF-8 byte-order mark at the start of a .jsonl or .json file is ignored.

Labels are -100 on every token that is not part of an assistant answer (system text, the prompt, template
tokens before the answer), so only answers are learned and scored. The answer's own closing template tokens
(e.g. `<|im_end|>`) are targets: they teach the model to stop.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from grads.errors import GradsError

FORMATS = ("chat", "prompt-completion", "alpaca", "sharegpt")
ROLES = ("system", "user", "assistant", "tool")
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}
COMPRESSIONS = {".gz": "gzip", ".zst": "zstd"}
_BOM = b"\xef\xbb\xbf"  # the UTF-8 byte-order mark Excel and PowerShell write first
IGNORE_INDEX = -100


@dataclass(frozen=True)
class Example:
    """One record of the pool, normalised to a chat; `row` is its 0-based position in the input."""

    id: str
    row: int
    messages: tuple[dict[str, str], ...]
    plain: tuple[str, str] | None = None  # (prompt, completion) for string prompt-completion records


@dataclass
class TokenizedExample:
    id: str
    row: int
    input_ids: list[int]
    labels: list[int]
    truncated_prompt_tokens: int = 0
    truncated_answer_tokens: int = 0

    @property
    def n_tokens(self) -> int:
        return len(self.input_ids)

    @property
    def n_target_tokens(self) -> int:
        # The first token is never predicted (nothing precedes it), matching the causal shift in the loss.
        return sum(1 for label in self.labels[1:] if label != IGNORE_INDEX)


@dataclass
class TokenizeStats:
    n_examples: int = 0
    n_truncated: int = 0
    prompt_tokens_cut: int = 0
    answer_tokens_cut: int = 0
    n_no_target: int = 0
    notes: list[str] = field(default_factory=list)

    def add(self, tok: TokenizedExample) -> None:
        """Count one tokenised example's truncation and whether it kept an answer token."""
        if tok.truncated_prompt_tokens or tok.truncated_answer_tokens:
            self.n_truncated += 1
            self.prompt_tokens_cut += tok.truncated_prompt_tokens
            self.answer_tokens_cut += tok.truncated_answer_tokens
        if tok.n_target_tokens == 0:
            self.n_no_target += 1

    def truncation(self) -> dict[str, int]:
        """The truncation counts as written to score.json, selection.json and the token cache's meta.json."""
        return {"n_truncated": self.n_truncated, "prompt_tokens_cut": self.prompt_tokens_cut,
                "answer_tokens_cut": self.answer_tokens_cut}


# ----------------------------------------------------------------------------------------------- reading


def file_sha256(path: Path) -> str:
    """SHA-256 of the input as it is stored: a file's bytes on disk (compressed ones too), every file of a folder,
    and for a hub id the files it is read from (the cached Arrow files of the split, or the hub snapshot's files)."""
    hub = hub_dataset_id(path)
    files = _hub_source(*hub)[1] if hub is not None else \
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
        hub = hub_dataset_id(path)
        if hub is None:
            raise GradsError("input not found", path=path,
                             hint="check the --data path (a dataset in the local Hugging Face cache is named "
                                  "OWNER/NAME or OWNER/NAME:SPLIT)")
        yield from enumerate(_hub_source(*hub)[0], start=1)
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
        from grads import atomic

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


def _hub_source(hub_id: str, split: str):
    """The split of a dataset in the local Hugging Face cache, read offline, and the files it is read from.

    First the datasets cache (HF_DATASETS_CACHE: what `datasets.load_dataset(hub_id)` prepared when it last ran
    online, and what it reads back offline, through the same `Cache` builder); then the hub cache (HF_HUB_CACHE: a
    snapshot that `hf download --repo-type dataset` or `snapshot_download` fetched), loaded as a local folder.
    Neither path opens a connection, whatever HF_HUB_OFFLINE says: nothing is downloaded."""
    import datasets

    spec = f"{hub_id}:{split}"
    hint = (f"nothing is downloaded: load it once where the hub is reachable (datasets.load_dataset({hub_id!r}) "
            f"or `hf download {hub_id} --repo-type dataset`), or pass a local file")
    # its warnings ("Found the latest cached dataset configuration …") would interleave with grads' own output
    logging.getLogger("datasets.packaged_modules.cache.cache").setLevel(logging.ERROR)
    try:
        from datasets.packaged_modules.cache.cache import Cache

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
        ds = builder.as_dataset(split=split)
        return ds, [Path(f["filename"]) for f in ds.cache_files]
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        folder = Path(snapshot_download(hub_id, repo_type="dataset", local_files_only=True))
    except LocalEntryNotFoundError:
        raise GradsError(f"{hub_id} is not a local file or folder, and not a dataset in the local Hugging Face "
                         "cache", path=spec, hint=hint) from None
    except Exception as err:  # e.g. IncompleteSnapshotError: an interrupted download
        raise GradsError(f"the local Hugging Face cache holds {hub_id} only in part: {err}", path=spec,
                         hint=hint) from None
    progress = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        ds = datasets.load_dataset(str(folder), split=split)
    except Exception as err:
        raise GradsError(f"cannot read split {split!r} of the cached snapshot of {hub_id}: {err}", path=spec,
                         hint=f"name an existing split as {hub_id}:SPLIT") from None
    finally:
        if progress:
            datasets.enable_progress_bars()
    return ds, sorted(p for p in folder.rglob("*") if p.is_file())


# ------------------------------------------------------------------------------------------ normalising


def detect_format(record: dict[str, Any]) -> str | None:
    if "messages" in record:
        return "chat"
    if "conversations" in record:
        return "sharegpt"
    if "prompt" in record and "completion" in record:
        return "prompt-completion"
    if "instruction" in record and "output" in record:
        return "alpaca"
    return None


_EXPECTED = {
    "chat": 'a "messages" list of {"role", "content"} objects',
    "prompt-completion": '"prompt" and "completion" (strings or message lists)',
    "alpaca": '"instruction", optional "input", and "output" strings',
    "sharegpt": '"conversations": a list of {"from": "system"|"human"|"gpt", "value": "..."} turns '
                '(and an optional "system" string)',
}
_MESSAGE_HINT = ('each message is {"role": "user"|"assistant"|"system", "content": "..."} (content may also be '
                 'a list of {"type": "text", "text": "..."} parts)')


def _content_text(content: Any, where: str, path: Path, line: int) -> str | None:
    """A message's text: the string itself, or the texts of a list of OpenAI content parts joined with no
    separator (as chat templates that take part lists render them); None when it is neither."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return None
    texts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind is not None and kind != "text":
            raise GradsError(f"{where}.content[{j}] is a part of type {kind!r}: only text can be trained on",
                             path=path, line=line,
                             hint="remove the non-text parts (images, audio, files) from the record, or the record")
        else:
            raise GradsError(f"{where}.content[{j}] is not a text part", path=path, line=line,
                             hint='a content part is {"type": "text", "text": "..."}')
    return "".join(texts)


def _check_messages(value: Any, where: str, path: Path, line: int) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise GradsError(f"{where} must be a non-empty list of messages", path=path, line=line, hint=_MESSAGE_HINT)
    out = []
    for i, msg in enumerate(value):
        content = _content_text(msg.get("content"), f"{where}[{i}]", path, line) if isinstance(msg, dict) else None
        if content is None or msg.get("role") not in ROLES:
            sharegpt = isinstance(msg, dict) and "from" in msg and "value" in msg
            raise GradsError(f"{where}[{i}] is not a message with a known role and string content",
                             path=path, line=line,
                             hint=_MESSAGE_HINT + ('; ShareGPT turns ({"from", "value"}) go in a "conversations" '
                                                   'list' if sharegpt else ""))
        out.append({"role": msg["role"], "content": content})
    return out


def _sharegpt(record: dict[str, Any], path: Path, line: int) -> list[dict[str, str]]:
    hint = f"sharegpt records need {_EXPECTED['sharegpt']}"
    turns = record.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise GradsError("field 'conversations' is missing or not a non-empty list", path=path, line=line, hint=hint)
    messages = []
    system = record.get("system")
    if system is not None and not isinstance(system, str):
        raise GradsError(f"field 'system' must be a string, got {type(system).__name__}", path=path, line=line,
                         hint=hint)
    if system and system.strip():
        messages.append({"role": "system", "content": system})
    for i, turn in enumerate(turns):
        speaker = turn.get("from") if isinstance(turn, dict) else None
        known = isinstance(speaker, str) and speaker in SHAREGPT_ROLES
        if not known or not isinstance(turn.get("value"), str):
            problem = f"has an unknown 'from': {speaker!r}" if isinstance(speaker, str) and not known \
                else "is not a turn with a known 'from' and a string 'value'"
            raise GradsError(f"conversations[{i}] {problem}", path=path, line=line,
                             hint=f"{hint}; 'from' may also be user or assistant")
        messages.append({"role": SHAREGPT_ROLES[speaker], "content": turn["value"]})
    return messages


def _nonempty_str(record: dict[str, Any], key: str, path: Path, line: int, fmt: str) -> str:
    value = record.get(key)
    if not isinstance(value, str):
        raise GradsError(f"field {key!r} is missing or not a string", path=path, line=line,
                         hint=f"{fmt} records need {_EXPECTED[fmt]}")
    if not value.strip():
        raise GradsError(f"field {key!r} is empty", path=path, line=line,
                         hint="remove the record or fill the field")
    return value


def normalise(record: dict[str, Any], fmt: str, path: Path, line: int
              ) -> tuple[tuple[dict[str, str], ...], tuple[str, str] | None]:
    """Turn one record into a chat (and keep the plain strings of a string prompt-completion record)."""
    if fmt in ("chat", "sharegpt"):
        messages = _check_messages(record.get("messages"), "messages", path, line) if fmt == "chat" \
            else _sharegpt(record, path, line)
        if not any(m["role"] == "assistant" and m["content"].strip() for m in messages):
            raise GradsError("chat has no non-empty assistant turn: nothing to learn", path=path, line=line,
                             hint="every chat needs at least one assistant answer"
                                  + (' ({"from": "gpt", "value": "..."})' if fmt == "sharegpt" else ""))
        return tuple(messages), None
    if fmt == "prompt-completion":
        prompt, completion = record.get("prompt"), record.get("completion")
        if isinstance(prompt, str) and isinstance(completion, str):
            prompt = _nonempty_str(record, "prompt", path, line, fmt)
            completion = _nonempty_str(record, "completion", path, line, fmt)
            msgs = ({"role": "user", "content": prompt}, {"role": "assistant", "content": completion})
            return msgs, (prompt, completion)
        if prompt is None or completion is None:
            raise GradsError("field 'prompt' or 'completion' is missing or null", path=path, line=line,
                             hint=f"prompt-completion records need {_EXPECTED[fmt]}")
        for key, value in (("prompt", prompt), ("completion", completion)):
            if not isinstance(value, str | list):
                raise GradsError(f"field {key!r} must be a string or a list of messages, got {type(value).__name__}",
                                 path=path, line=line, hint=f"prompt-completion records need {_EXPECTED[fmt]}")
        p = [{"role": "user", "content": _nonempty_str(record, "prompt", path, line, fmt)}] \
            if isinstance(prompt, str) else _check_messages(prompt, "prompt", path, line)
        c = [{"role": "assistant", "content": _nonempty_str(record, "completion", path, line, fmt)}] \
            if isinstance(completion, str) else _check_messages(completion, "completion", path, line)
        if not any(m["role"] == "assistant" and m["content"].strip() for m in c):
            raise GradsError("completion holds no non-empty assistant message", path=path, line=line,
                             hint='the completion needs {"role": "assistant", "content": "..."} with text')
        return tuple(p + c), None
    if fmt == "alpaca":
        instruction = _nonempty_str(record, "instruction", path, line, fmt)
        output = _nonempty_str(record, "output", path, line, fmt)
        extra = record.get("input") or ""
        if not isinstance(extra, str):
            raise GradsError("field 'input' is not a string", path=path, line=line,
                             hint=f"alpaca records need {_EXPECTED[fmt]}")
        user = f"{instruction}\n\n{extra}" if extra.strip() else instruction
        return ({"role": "user", "content": user}, {"role": "assistant", "content": output}), None
    raise GradsError(f"unknown format {fmt!r}", hint=f"use one of: {', '.join(FORMATS)}")


def content_id(record: dict[str, Any]) -> str:
    canonical = json.dumps(record, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha1(canonical.encode("utf-8")).hexdigest()[:16]


def iter_examples(path: str | Path, fmt: str | None = None, limit: int | None = None) -> Iterator[Example]:
    """Read, validate and normalise records one at a time (the pool is never held in memory at once).

    The first record decides the format (unless forced) and where ids come from; an error names the file, the
    line and what was expected. `load_pool` is this, collected.
    """
    path = Path(path)
    if fmt is not None and fmt not in FORMATS:
        raise GradsError(f"unknown format {fmt!r}", hint=f"use one of: {', '.join(FORMATS)}")
    ids = _IdAssigner(path)
    row = -1
    for row, (line, record) in enumerate(read_records(path)):
        if limit is not None and row >= limit:
            break
        if fmt is None:
            fmt = detect_format(record)
            if fmt is None:
                raise GradsError(f"cannot tell the format from the fields {sorted(record)[:8]}", path=path,
                                 line=line, hint="records need 'messages', 'conversations' (ShareGPT), "
                                                 "'prompt'+'completion', or 'instruction'+'output' "
                                                 "(or pass --format)")
        messages, plain = normalise(record, fmt, path, line)
        yield Example(id=ids(line, record), row=row, messages=messages, plain=plain)
    if row < 0:
        raise GradsError("no records found (the input is empty)", path=path,
                         hint="give a file with at least one example")


@dataclass
class PoolInfo:
    """What a full validating pass over a pool learns, without keeping its examples."""

    path: Path
    format: str
    sha256: str
    n_examples: int
    id_source: str  # "field" (the file's own ids) or "content-hash"

    def record(self) -> dict:
        """The `input` entry of score.json and selection.json: which file, exactly, was read."""
        return {"path": str(self.path), "sha256": self.sha256, "format": self.format, "ids": self.id_source,
                "n_examples": self.n_examples}


@dataclass
class Pool(PoolInfo):
    """A pool read into memory: its PoolInfo and its normalised examples (small pools, `grads data inspect`)."""

    examples: list[Example] = field(default_factory=list)


def scan_pool(path: str | Path, fmt: str | None = None, limit: int | None = None) -> PoolInfo:
    """Validate every record (so bad input fails before any model loads), streaming; keep only counts."""
    path = Path(path)
    return _describe(path, fmt, sum(1 for _ in iter_examples(path, fmt, limit)))


def load_pool(path: str | Path, fmt: str | None = None, limit: int | None = None) -> Pool:
    """Read and validate every record into memory (no model is needed, so bad input fails first)."""
    path = Path(path)
    examples = list(iter_examples(path, fmt, limit))
    info = _describe(path, fmt, len(examples))
    return Pool(**vars(info), examples=examples)


def _describe(path: Path, fmt: str | None, n_examples: int) -> PoolInfo:
    """Format, content hash and id source of a pool that iter_examples has already validated."""
    first = next(read_records(path))[1]
    return PoolInfo(path=path, format=fmt or detect_format(first), sha256=file_sha256(path), n_examples=n_examples,
                    id_source="field" if first.get("id") is not None else "content-hash")


class _IdAssigner:
    """Stable ids, streaming: the file's own `id` field when the records have one (unique, on every record),
    else a content hash, with -1, -2… on identical records so they stay distinct."""

    def __init__(self, path: Path) -> None:
        self.path, self.from_field = path, None
        self.first_line: dict[str, int] = {}
        self.seen: Counter[str] = Counter()

    def __call__(self, line: int, record: dict[str, Any]) -> str:
        has_id = record.get("id") is not None
        if self.from_field is None:
            self.from_field = has_id
        if has_id != self.from_field:
            raise GradsError("some records have an 'id' field and this one does not" if self.from_field else
                             "this record has an 'id' field and the records before it do not", path=self.path,
                             line=line, hint="give every record an id, or remove the field from all of them")
        if self.from_field:
            value = str(record["id"])
            if value in self.first_line:
                raise GradsError(f"duplicate id {value!r} (lines {[self.first_line[value], line]})",
                                 path=self.path, line=line,
                                 hint="ids must be unique: fix them or drop the 'id' field to use content hashes")
            self.first_line[value] = line
            return value
        base = content_id(record)
        self.seen[base] += 1
        return base if self.seen[base] == 1 else f"{base}-{self.seen[base] - 1}"


# ------------------------------------------------------------------------------------------ tokenising


def _render_segments(tokenizer, example: Example) -> list[tuple[str, bool]]:
    """Split the rendered text into (text, is_target) segments; targets are the assistant answers."""
    messages = list(example.messages)
    if getattr(tokenizer, "chat_template", None):
        segments: list[tuple[str, bool]] = []
        done = ""
        for i, msg in enumerate(messages):
            if msg["role"] != "assistant":
                continue
            prefix = tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True)
            through = tokenizer.apply_chat_template(messages[: i + 1], tokenize=False)
            if not (prefix.startswith(done) and through.startswith(prefix)):
                raise GradsError("the tokenizer's chat template does not render conversations as growing "
                                 "prefixes, so answer tokens cannot be located",
                                 hint="use single-turn data, or a model whose template keeps earlier turns")
            segments += [(prefix[len(done):], False), (through[len(prefix):], True)]
            done = through
        full = tokenizer.apply_chat_template(messages, tokenize=False)
        if full.startswith(done) and len(full) > len(done):
            segments.append((full[len(done):], False))
        return segments
    eos = tokenizer.eos_token or ""
    if example.plain is not None:  # plain LM, string prompt and completion: concatenated as they are
        return [(example.plain[0], False), (example.plain[1] + eos, True)]
    segments = []
    for msg in messages:
        if msg["role"] == "assistant":
            segments += [("Assistant: ", False), (msg["content"] + eos, True), ("\n", False)]
        else:
            segments.append((f"{msg['role'].capitalize()}: {msg['content']}\n", False))
    return segments


def tokenize_example(tokenizer, example: Example, max_length: int | None = None) -> TokenizedExample:
    input_ids: list[int] = []
    labels: list[int] = []
    for text, is_target in _render_segments(tokenizer, example):
        if not text:
            continue
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        input_ids += ids
        labels += ids if is_target else [IGNORE_INDEX] * len(ids)
    return truncate(TokenizedExample(example.id, example.row, input_ids, labels), max_length)


def truncate(tok: TokenizedExample, max_length: int | None) -> TokenizedExample:
    """Fit into max_length keeping the answer where possible: drop prompt tokens from the left first
    (the text nearest the answer stays), then answer tokens from the right."""
    excess = len(tok.input_ids) - max_length if max_length else 0
    if excess <= 0:
        return tok
    first_target = next((i for i, label in enumerate(tok.labels) if label != IGNORE_INDEX), len(tok.labels))
    # keep one prompt token so the first answer token is still predicted from something
    cut_left = min(excess, max(first_target - 1, 0))
    ids, labels = tok.input_ids[cut_left:], tok.labels[cut_left:]
    cut_right = len(ids) - max_length if len(ids) > max_length else 0
    if cut_right:
        answer_cut = sum(1 for label in labels[-cut_right:] if label != IGNORE_INDEX)
        ids, labels = ids[:max_length], labels[:max_length]
    else:
        answer_cut = 0
    return TokenizedExample(tok.id, tok.row, ids, labels, truncated_prompt_tokens=cut_left + cut_right - answer_cut,
                            truncated_answer_tokens=answer_cut)

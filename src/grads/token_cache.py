"""Tokenise a pool once into a memory-mapped Arrow file (read back with HF `datasets`), then stream from it.

    GRADS_HOME/tokens/<key>/tokens.arrow   id, row, input_ids, labels, n_tokens, n_target_tokens, truncation counts
    GRADS_HOME/tokens/<key>/meta.json      key parts and truncation totals

The key hashes the input file's bytes, the tokenizer (vocabulary, chat template, special tokens), the format,
the record limit and --max-length, so a changed input or tokenizer never reuses stale tokens. Records are read,
tokenised and written a block at a time and the file is memory-mapped afterwards: no step holds every
example's text or tokens in Python objects, so a pool far larger than memory scores in flat memory.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa

from grads import atomic, distributed
from grads.data import PoolInfo, TokenizedExample, TokenizeStats, iter_examples, tokenize_example

CACHE_VERSION = 1  # bump when tokenisation changes what it produces
BLOCK = 1000  # examples per Arrow record batch while writing

SCHEMA = pa.schema([
    ("id", pa.string()), ("row", pa.int64()), ("input_ids", pa.list_(pa.int32())), ("labels", pa.list_(pa.int32())),
    ("n_tokens", pa.int32()), ("n_target_tokens", pa.int32()), ("truncated_prompt_tokens", pa.int32()),
    ("truncated_answer_tokens", pa.int32()),
])


def tokenizer_fingerprint(tokenizer) -> str:
    from datasets.fingerprint import Hasher

    return Hasher.hash(tokenizer)


def cache_key(info: PoolInfo, tokenizer, limit: int | None, max_length: int | None) -> str:
    parts = {"version": CACHE_VERSION, "input_sha256": info.sha256, "format": info.format, "limit": limit,
             "max_length": max_length, "tokenizer": tokenizer_fingerprint(tokenizer)}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]


class TokenCache(Sequence[TokenizedExample]):
    """A tokenised pool on disk, memory-mapped; indexing builds TokenizedExamples only for what is asked."""

    def __init__(self, folder: str | Path) -> None:
        import datasets

        self.folder = Path(folder)
        self.meta = json.loads((self.folder / "meta.json").read_text())
        self.dataset = datasets.Dataset.from_file(str(self.folder / "tokens.arrow"))
        table = self.dataset.data
        self.n_tokens = table.column("n_tokens").to_numpy()
        self.n_target_tokens = table.column("n_target_tokens").to_numpy()
        self.rows = table.column("row").to_numpy()

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return self.take(range(*index.indices(len(self))))
        return self.take([int(index)])[0]

    def take(self, indices: Iterable[int]) -> list[TokenizedExample]:
        indices = [int(i) for i in indices]
        if not indices:
            return []
        cols = self.dataset[indices]
        return [TokenizedExample(cols["id"][j], cols["row"][j], cols["input_ids"][j], cols["labels"][j],
                                 cols["truncated_prompt_tokens"][j], cols["truncated_answer_tokens"][j])
                for j in range(len(indices))]

    def subset(self, indices: Sequence[int]) -> TokenCache:
        """A view of some examples (in the order given); nothing is copied."""
        view = object.__new__(TokenCache)
        idx = np.asarray(indices, dtype=np.int64)
        view.folder, view.meta, view.dataset = self.folder, self.meta, self.dataset.select(idx)
        view.n_tokens, view.n_target_tokens, view.rows = self.n_tokens[idx], self.n_target_tokens[idx], self.rows[idx]
        return view

    @property
    def stats(self) -> TokenizeStats:
        t = self.meta["truncation"]
        return TokenizeStats(n_examples=len(self), n_truncated=t["n_truncated"],
                             prompt_tokens_cut=t["prompt_tokens_cut"], answer_tokens_cut=t["answer_tokens_cut"],
                             n_no_target=int((self.n_target_tokens == 0).sum()))


def _block(examples: list[TokenizedExample]) -> pa.RecordBatch:
    return pa.record_batch([
        pa.array([e.id for e in examples], pa.string()), pa.array([e.row for e in examples], pa.int64()),
        pa.array([e.input_ids for e in examples], pa.list_(pa.int32())),
        pa.array([e.labels for e in examples], pa.list_(pa.int32())),
        pa.array([e.n_tokens for e in examples], pa.int32()),
        pa.array([e.n_target_tokens for e in examples], pa.int32()),
        pa.array([e.truncated_prompt_tokens for e in examples], pa.int32()),
        pa.array([e.truncated_answer_tokens for e in examples], pa.int32()),
    ], schema=SCHEMA)


def _write(folder: Path, info: PoolInfo, tokenizer, limit: int | None, max_length: int | None, key: str) -> None:
    root = folder.parent
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=root))
    stats = TokenizeStats()
    try:
        with pa.OSFile(str(tmp / "tokens.arrow"), "wb") as sink, pa.ipc.new_stream(sink, SCHEMA) as writer:
            block: list[TokenizedExample] = []
            for example in iter_examples(info.path, info.format, limit):
                tok = tokenize_example(tokenizer, example, max_length)
                stats.add(tok)
                block.append(tok)
                if len(block) == BLOCK:
                    writer.write_batch(_block(block))
                    block = []
            if block:
                writer.write_batch(_block(block))
        atomic.write_json(tmp / "meta.json", {"key": key, "input": str(info.path), "input_sha256": info.sha256,
                                              "format": info.format, "limit": limit, "max_length": max_length,
                                              "tokenizer": tokenizer_fingerprint(tokenizer),
                                              "truncation": stats.truncation()})
        try:
            os.replace(tmp, folder)
        except OSError:  # another process finished the same cache first: keep theirs
            if not (folder / "meta.json").exists():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def tokenized(info: PoolInfo, tokenizer, limit: int | None, max_length: int | None,
              root: str | Path | None = None) -> TokenCache:
    """The pool's token cache, built once (by one process per node under a launcher, the others wait)."""
    from grads.models import grads_home

    key = cache_key(info, tokenizer, limit, max_length)
    folder = Path(root or grads_home() / "tokens") / key
    builder = int(os.environ.get("LOCAL_RANK", "0")) == 0
    if builder and not (folder / "meta.json").exists():
        _write(folder, info, tokenizer, limit, max_length, key)
    distributed.barrier()
    return TokenCache(folder)

"""The tokenised pool: one interface (`TokenizedPool`) for scoring, training, IFD and the selected-row writer.

A pool is tokenised once into a memory-mapped Arrow file (read back with HF `datasets`), then streamed from it:

    GRADS_HOME/tokens/<key>/tokens.arrow   id, row, input_ids, labels, n_tokens, n_target_tokens, truncation counts
    GRADS_HOME/tokens/<key>/meta.json      key parts and truncation totals

The key hashes the input file's bytes, the tokenizer (vocabulary, chat template, special tokens), the format,
the record limit and --max-length, so a changed input or tokenizer never reuses stale tokens. Records are read,
tokenised and written a block at a time and the file is memory-mapped afterwards: no step holds every
example's text or tokens in Python objects, so a pool far larger than memory scores in flat memory.
`TokenizedPool.from_examples` holds the same columns in memory (small pools, tests, examples made in code).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa

from grads.data.formats import PoolInfo, iter_examples
from grads.data.tokenize import TokenizedExample, TokenizeStats, tokenize_example
from grads.infra import atomic, distributed

CACHE_VERSION = 2  # bump when tokenisation changes what it produces (2: a template-less tokenizer's BOS)
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


class TokenizedPool(Sequence[TokenizedExample]):
    """Tokenised examples as Arrow columns (memory-mapped from a token cache, or in memory); indexing builds
    TokenizedExamples only for what is asked, and the length columns are numpy arrays."""

    COUNTS = ("n_tokens", "n_target_tokens", "row", "truncated_prompt_tokens", "truncated_answer_tokens")

    def __init__(self, dataset, folder: Path | None = None, counts: dict[str, np.ndarray] | None = None) -> None:
        """`dataset`: a datasets.Dataset with SCHEMA's columns; `counts`: its count columns as arrays (given by
        `subset`, read from the Arrow table otherwise)."""
        self.dataset, self.folder = dataset, folder
        self.counts = counts or {name: dataset.data.column(name).to_numpy() for name in self.COUNTS}
        self.n_tokens, self.n_target_tokens = self.counts["n_tokens"], self.counts["n_target_tokens"]
        self.rows = self.counts["row"]

    @classmethod
    def open(cls, folder: str | Path) -> TokenizedPool:
        """A token cache folder, memory-mapped."""
        import datasets

        return cls(datasets.Dataset.from_file(str(Path(folder) / "tokens.arrow")), Path(folder))

    @classmethod
    def from_examples(cls, examples: Iterable[TokenizedExample]) -> TokenizedPool:
        """The same columns in memory."""
        import datasets

        table = pa.Table.from_batches([_block(list(examples))], schema=SCHEMA)
        return cls(datasets.Dataset(table))

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return self.take(range(*index.indices(len(self))))
        return self.take([int(index)])[0]

    def __iter__(self):
        for lo in range(0, len(self), BLOCK):
            yield from self.take(range(lo, min(lo + BLOCK, len(self))))

    def take(self, indices: Iterable[int]) -> list[TokenizedExample]:
        indices = [int(i) for i in indices]
        if not indices:
            return []
        cols = self.dataset[indices]
        return [TokenizedExample(cols["id"][j], cols["row"][j], cols["input_ids"][j], cols["labels"][j],
                                 cols["truncated_prompt_tokens"][j], cols["truncated_answer_tokens"][j])
                for j in range(len(indices))]

    def subset(self, indices: Sequence[int]) -> TokenizedPool:
        """A view of some examples (in the order given); nothing is copied."""
        idx = np.asarray(indices, dtype=np.int64)
        return TokenizedPool(self.dataset.select(idx), self.folder, {k: v[idx] for k, v in self.counts.items()})

    @property
    def stats(self) -> TokenizeStats:
        cut_prompt, cut_answer = self.counts["truncated_prompt_tokens"], self.counts["truncated_answer_tokens"]
        return TokenizeStats(n_examples=len(self), n_truncated=int(((cut_prompt + cut_answer) > 0).sum()),
                             prompt_tokens_cut=int(cut_prompt.sum()), answer_tokens_cut=int(cut_answer.sum()),
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
    stats = TokenizeStats()
    # another process may finish the same cache first: theirs is kept
    with atomic.atomic_folder(folder, keep_existing=True) as tmp:
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


def tokenized(info: PoolInfo, tokenizer, limit: int | None, max_length: int | None,
              root: str | Path | None = None) -> TokenizedPool:
    """The pool's token cache, built once (by one process per node under a launcher, the others wait)."""
    from grads.infra.models import grads_home

    key = cache_key(info, tokenizer, limit, max_length)
    folder = Path(root or grads_home() / "tokens") / key
    builder = int(os.environ.get("LOCAL_RANK", "0")) == 0
    if builder and not (folder / "meta.json").exists():
        _write(folder, info, tokenizer, limit, max_length, key)
    distributed.barrier()
    return TokenizedPool.open(folder)


def tokenize_in_memory(tokenizer, examples: Iterable, max_length: int | None = None) -> TokenizedPool:
    """Tokenise normalised examples (grads.data.formats.Example) without a cache: small pools and tests."""
    return TokenizedPool.from_examples(tokenize_example(tokenizer, ex, max_length) for ex in examples)

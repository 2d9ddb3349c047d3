"""Read an SFT pool, normalise every record to a chat, and tokenise it with an answer-only label mask.

Formats (auto-detected from the first record, or forced):
  chat               {"messages": [{"role": ..., "content": ...}, ...]}
  prompt-completion  {"prompt": str | [messages], "completion": str | [messages]}
  alpaca             {"instruction": str, "input": str (optional), "output": str}
  sharegpt           {"conversations": [{"from": "system"|"human"|"gpt", "value": str}, ...], "system": str (optional)}
A message's content is a string or a list of OpenAI content parts [{"type": "text", "text": ...}, ...], whose texts
are joined with no separator (as chat templates that take part lists render them); any other part is refused.
The files themselves (kinds, compression, hub ids, verbatim rows) are read by grads.readers.

Labels are -100 on every token that is not part of an assistant answer (system text, the prompt, template
tokens before the answer), so only answers are learned and scored. The answer's own closing template tokens
(e.g. `<|im_end|>`) are targets: they teach the model to stop.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from grads.data.readers import file_sha256, hub_revision, read_records
from grads.errors import GradsError

FORMATS = ("chat", "prompt-completion", "alpaca", "sharegpt")


ROLES = ("system", "user", "assistant", "tool")


SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}




@dataclass(frozen=True)
class Example:
    """One record of the pool, normalised to a chat; `row` is its 0-based position in the input."""

    id: str
    row: int
    messages: tuple[dict[str, str], ...]
    plain: tuple[str, str] | None = None  # (prompt, completion) for string prompt-completion records


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
    revision: str | None = None  # a hub dataset's commit, whose files were read

    def record(self) -> dict:
        """The `input` entry of score.json and selection.json: which file, exactly, was read (and for a hub
        dataset, at which commit)."""
        record = {"path": str(self.path), "sha256": self.sha256, "format": self.format, "ids": self.id_source,
                  "n_examples": self.n_examples}
        return record | ({"revision": self.revision} if self.revision is not None else {})


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
                    id_source="field" if first.get("id") is not None else "content-hash", revision=hub_revision(path))


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

"""Planted noise with labels: a copy of a pool in which a known share of the records is damaged on purpose, and
which records they are, so that a rule's detection and its cost to the fine-tune can be measured.

Kinds (each damages the record's answer, its last assistant turn, or adds a record):
  swap         the answer of another swapped record (a seeded derangement among them: none keeps its own; a lone
               swapped record takes another pool record's answer)
  shuffle      the answer's words in a seeded new order, joined by single spaces (records with >= 2 distinct words)
  truncate     the answer cut after its first TRUNCATE_WORDS words (records with more words than that)
  offdomain    a record of another file, converted to the pool's format, in the replaced record's place and id
  duplicate    a verbatim copy of a clean record under the id `<id>-dup1` (-dup2… if taken), appended at the end
  boilerplate  one of BOILERPLATE (seeded), a fixed non-answer, in place of the answer

The share S is of the output pool: P planted records out of T = n_pool + n_duplicate, with P/T the nearest to S;
the kinds split P equally, the remainder going to the first kinds named. Every other field of a record is kept,
clean records are the input's lines verbatim, and the input's rows keep their positions. A pool without an `id`
field gets one on every record (the content-hash id grads gives it), so a replaced record can keep its id.

`kind_counts` and `plant` are pure (records in, records out); `plant_file` reads the files and writes
OUT/pool.jsonl, OUT/labels.json and OUT/plant.json (docs/noise.md).
"""

from __future__ import annotations

import copy
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from grads.data.formats import SHAREGPT_ROLES, normalise
from grads.errors import GradsError

KINDS = ("swap", "shuffle", "truncate", "offdomain", "duplicate", "boilerplate")
TRUNCATE_WORDS = 4  # a truncated answer keeps this many words: a fragment that still opens like the real answer
BOILERPLATE = (  # the non-answers of real pools (Alpaca's "N/A" outputs, refusals, empty hedges)
    "I'm sorry, but I can't help with that.",
    "N/A",
    "I don't know.",
    "As an AI language model, I cannot answer this question.",
)
CLEAN = "clean"
# The planted records' own random stream: numpy seeded with `seed` alone is the stream every selection rule draws
# from (grads.core.rules), so `random` at the same seed would keep exactly the records planted first
PLANT_STREAM = 0x706C616E74
_SWAP_TRIES = 100  # derangements tried for one where no swapped record gets a text equal to its own answer
_TO_SHAREGPT = {"system": "system", "user": "human", "assistant": "gpt", "tool": "human"}


@dataclass(frozen=True)
class Planted:
    """The noisy pool: `rows` in output order, each an input row kept verbatim (int) or a new record (dict);
    `labels` maps every output id to "clean" or its kind, in output order; `counts` per label."""

    rows: list[int | dict[str, Any]]
    labels: dict[str, str]
    counts: dict[str, int]


def parse_kinds(text: str) -> tuple[str, ...]:
    """`swap,shuffle` -> ("swap", "shuffle"); an empty list, an unknown kind or a repeated one stops."""
    kinds = tuple(k.strip() for k in text.split(",") if k.strip())
    known = ", ".join(KINDS)
    if not kinds:
        raise GradsError("no kinds given", where="--kinds", hint=f"name one or more, comma-separated: {known}")
    for kind in kinds:
        if kind not in KINDS:
            raise GradsError(f"unknown kind {kind!r}", where="--kinds", hint=f"the kinds are: {known}")
    repeated = sorted({k for k in kinds if kinds.count(k) > 1})
    if repeated:
        raise GradsError(f"kind {repeated[0]!r} is named twice", where="--kinds", hint="name each kind once")
    return kinds


def split_equally(total: int, kinds: Sequence[str]) -> dict[str, int]:
    """`total` records shared equally among `kinds`, the remainder going to the first kinds in the given order."""
    base, extra = divmod(total, len(kinds))
    return {kind: base + (i < extra) for i, kind in enumerate(kinds)}


def check_share(share: float) -> None:
    """The share must lie in (0, 1): the fraction of the output pool that is planted."""
    if not 0 < share < 1:  # also refuses NaN
        raise GradsError(f"must be between 0 and 1 (exclusive), got {share}", where="--share",
                         hint="give the fraction of the output pool to plant, e.g. --share 0.25")


def kind_counts(n_pool: int, share: float, kinds: Sequence[str]) -> dict[str, int]:
    """How many records of each kind make `share` of the output pool (duplicates are added, so they count in its
    size): the planted total P whose P / (n_pool + duplicates) is nearest `share` (the smaller P on a tie)."""
    check_share(share)
    if not kinds:
        raise GradsError("no kinds given", where="--kinds", hint=f"name one or more, comma-separated: "
                                                                  f"{', '.join(KINDS)}")
    k = len(kinds)

    def achieved(total: int) -> float:
        return total / (n_pool + split_equally(total, kinds).get("duplicate", 0))

    guess = share * n_pool / (1 - share / k) if "duplicate" in kinds else share * n_pool
    around = range(max(0, math.floor(guess) - k - 2), math.ceil(guess) + k + 3)
    total = min(around, key=lambda p: (abs(achieved(p) - share), p))
    if total > n_pool:  # each planted record replaces a pool record or copies a distinct clean one
        largest = n_pool / (n_pool + split_equally(n_pool, kinds)["duplicate"])
        raise GradsError(f"{share} with kinds {','.join(kinds)} plants {total} records, more than the pool of "
                         f"{n_pool} allows (at most {n_pool}: each replaces a record or copies a distinct clean "
                         f"one)", where="--share", hint=f"lower --share to at most {math.floor(largest * 1000) / 1000}")
    counts = split_equally(total, kinds)
    if min(counts.values()) == 0:
        raise GradsError(f"{share} of a pool of {n_pool} plants {total} records, fewer than one per kind "
                         f"({k} kinds)", where="--share", hint="raise --share, or name fewer kinds")
    return counts


# ------------------------------------------------------------------------------------------------ the answer


def _answer_slot(record: dict[str, Any], fmt: str) -> tuple[dict[str, Any], str]:
    """Where the record keeps its answer (the last assistant turn): the object holding it and its key."""
    if fmt == "alpaca":
        return record, "output"
    if fmt == "prompt-completion" and isinstance(record["completion"], str):
        return record, "completion"
    turns, key, is_answer = {
        "chat": (record.get("messages"), "content", lambda t: t.get("role") == "assistant"),
        "prompt-completion": (record.get("completion"), "content", lambda t: t.get("role") == "assistant"),
        "sharegpt": (record.get("conversations"), "value", lambda t: SHAREGPT_ROLES.get(t.get("from")) == "assistant"),
    }[fmt]
    return next(t for t in reversed(turns) if is_answer(t)), key


def answer_of(record: dict[str, Any], fmt: str) -> str:
    """The record's answer: the text of its last assistant turn, read as grads reads it (content parts joined)."""
    messages, _ = normalise(record, fmt, Path("record"), 0)
    return next(m["content"] for m in reversed(messages) if m["role"] == "assistant")


def with_answer(record: dict[str, Any], fmt: str, answer: str) -> dict[str, Any]:
    """A copy of `record` whose answer is `answer`, every other field as it was (a content-parts answer stays a
    list: one text part)."""
    out = copy.deepcopy(record)
    holder, key = _answer_slot(out, fmt)
    holder[key] = [{"type": "text", "text": answer}] if isinstance(holder[key], list) else answer
    return out


def convert_record(messages: Sequence[dict[str, str]], fmt: str, strings: bool = True) -> dict[str, Any]:
    """A normalised chat (grads.data.formats.normalise) written as a record of `fmt`, up to its last assistant turn.
    The formats with one prompt string (prompt-completion with `strings`, alpaca) join the turns before the answer
    with blank lines."""
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    before, answer = [dict(m) for m in messages[:last]], messages[last]["content"]
    prompt = "\n\n".join(m["content"] for m in before)
    if fmt == "chat":
        return {"messages": [*before, {"role": "assistant", "content": answer}]}
    if fmt == "prompt-completion":
        return {"prompt": prompt, "completion": answer} if strings else \
            {"prompt": before, "completion": [{"role": "assistant", "content": answer}]}
    if fmt == "alpaca":
        return {"instruction": prompt, "output": answer}
    if fmt == "sharegpt":
        return {"conversations": [{"from": _TO_SHAREGPT[m["role"]], "value": m["content"]} for m in before]
                + [{"from": "gpt", "value": answer}]}
    raise ValueError(f"unknown format {fmt!r}")


# ------------------------------------------------------------------------------------------------ the kinds


def shuffled(answer: str, rng: np.random.Generator) -> str:
    """The answer's words in a new order, joined by single spaces (a different order whenever it has two distinct
    words)."""
    words = answer.split()
    if len(set(words)) < 2:
        return " ".join(words)
    while True:
        order = [words[i] for i in rng.permutation(len(words))]
        if order != words:
            return " ".join(order)


def truncated(answer: str, n_words: int = TRUNCATE_WORDS) -> str:
    """The answer up to the end of its n-th word, its own spacing kept."""
    ends = [m.end() for m in re.finditer(r"\S+", answer)]
    return answer[:ends[n_words - 1]] if len(ends) > n_words else answer


def derangement(n: int, rng: np.random.Generator) -> np.ndarray:
    """A random permutation with no fixed point (Sattolo's algorithm: one cycle through all n), for n >= 2."""
    perm = np.arange(n)
    for i in range(n - 1, 0, -1):
        j = int(rng.integers(i))
        perm[i], perm[j] = perm[j], perm[i]
    return perm


_ELIGIBLE = {  # what a record's answer needs for a kind to change it, and the words of the error that says so
    "shuffle": (lambda words: len(set(words)) >= 2, "has at least 2 distinct words"),
    "truncate": (lambda words: len(words) > TRUNCATE_WORDS, f"has more than {TRUNCATE_WORDS} words"),
}


def _swapped_answers(rows: list[int], answers: list[str], rng: np.random.Generator) -> list[str]:
    """The answers the swapped rows receive: each another swapped row's, none its own (nor, where the pool allows,
    a text equal to its own); a lone swapped row takes another row's of the pool."""
    if len(rows) == 1:
        others = [i for i in range(len(answers)) if answers[i] != answers[rows[0]]] or \
            [i for i in range(len(answers)) if i != rows[0]]
        return [answers[others[int(rng.integers(len(others)))]]]
    for _ in range(_SWAP_TRIES):
        perm = derangement(len(rows), rng)
        given = [answers[rows[j]] for j in perm]
        if all(g != answers[r] for g, r in zip(given, rows, strict=True)):
            break
    return given


def plant(records: Sequence[dict[str, Any]], fmt: str, ids: Sequence[str], counts: dict[str, int], seed: int,
          offdomain: Sequence[Sequence[dict[str, str]]] = (), *, pool_path: str | Path | None = None,
          offdomain_path: str | Path | None = None) -> Planted:
    """Plant counts[kind] records of each kind among `records` (a validated pool of format `fmt`, with the ids grads
    gives them), chosen at random with `seed`. `offdomain` holds the normalised chats that `offdomain` records are
    drawn from. The paths only name the files in errors."""
    n = len(records)
    rng = np.random.default_rng([PLANT_STREAM, seed])
    order = rng.permutation(n)
    answers = [answer_of(r, fmt) for r in records]
    words = [a.split() for a in answers]
    kinds = [k for k in KINDS if counts.get(k, 0) > 0]
    if counts.get("offdomain", 0) > len(offdomain):
        raise GradsError(f"offdomain needs {counts['offdomain']} records and the file has {len(offdomain)}",
                         path=offdomain_path, where=None if offdomain_path else "--offdomain",
                         hint="give a larger --offdomain file, or lower --share")

    # Choose the rows: the kinds that need a particular answer first (the fewest eligible first), then the rest,
    # then the duplicates' sources among the rows left clean.
    eligible = {k: [i for i in order if _ELIGIBLE[k][0](words[i])] if k in _ELIGIBLE else list(order)
                for k in kinds if k != "duplicate"}
    label = [CLEAN] * n
    chosen: dict[str, list[int]] = {}
    for kind in sorted(eligible, key=lambda k: (len(eligible[k]), KINDS.index(k))):
        free = [i for i in eligible[kind] if label[i] == CLEAN]
        if len(free) < counts[kind]:
            need = f"records whose answer {_ELIGIBLE[kind][1]}" if kind in _ELIGIBLE else "records"
            raise GradsError(f"{kind} needs {counts[kind]} {need}; the pool allows {len(free)} (of {n} records, "
                             f"after the other kinds took theirs)", path=pool_path,
                             where=None if pool_path else "the pool",
                             hint=f"lower --share, or drop {kind} from --kinds")
        chosen[kind] = sorted(int(i) for i in free[:counts[kind]])
        for i in chosen[kind]:
            label[i] = kind
    if counts.get("duplicate", 0):
        free = [int(i) for i in order if label[i] == CLEAN]
        if len(free) < counts["duplicate"]:
            raise GradsError(f"duplicate needs {counts['duplicate']} distinct clean records to copy; the pool "
                             f"allows {len(free)}", path=pool_path, where=None if pool_path else "the pool",
                             hint="lower --share, or drop duplicate from --kinds")
        chosen["duplicate"] = sorted(free[:counts["duplicate"]])

    # Damage them, kind by kind in KINDS order (the seeded draws come in that order).
    # A pool without ids gets the ids grads gave it, as a field of every record, so a replaced record keeps its id.
    has_ids = records[0].get("id") is not None
    if not has_ids:
        records = [{"id": id_, **record} for id_, record in zip(ids, records, strict=True)]
    out: list[int | dict[str, Any]] = list(range(n)) if has_ids else list(records)
    for kind in kinds:
        rows = chosen[kind]
        if kind == "swap":
            for i, answer in zip(rows, _swapped_answers(rows, answers, rng), strict=True):
                out[i] = with_answer(records[i], fmt, answer)
        elif kind == "shuffle":
            for i in rows:
                out[i] = with_answer(records[i], fmt, shuffled(answers[i], rng))
        elif kind == "truncate":
            for i in rows:
                out[i] = with_answer(records[i], fmt, truncated(answers[i]))
        elif kind == "boilerplate":
            for i in rows:
                options = [b for b in BOILERPLATE if b != answers[i]]
                out[i] = with_answer(records[i], fmt, options[int(rng.integers(len(options)))])
        elif kind == "offdomain":
            picks = rng.choice(len(offdomain), size=len(rows), replace=False)
            for i, pick in zip(rows, picks, strict=True):
                strings = fmt != "prompt-completion" or isinstance(records[i]["completion"], str)
                converted = _checked(convert_record(offdomain[pick], fmt, strings), fmt, int(pick), offdomain_path)
                out[i] = {"id": records[i]["id"], **converted}
    labels = dict(zip(ids, label, strict=True))
    taken = set(ids)
    for i in chosen.get("duplicate", []):
        k = 1
        while f"{ids[i]}-dup{k}" in taken:
            k += 1
        new_id = f"{ids[i]}-dup{k}"
        taken.add(new_id)
        out.append({**records[i], "id": new_id})
        labels[new_id] = "duplicate"
    total = {CLEAN: 0} | {k: 0 for k in counts}
    for value in labels.values():
        total[value] += 1
    return Planted(rows=out, labels=labels, counts=total)


def _checked(record: dict[str, Any], fmt: str, pick: int, path: str | Path | None) -> dict[str, Any]:
    """An off-domain record converted to the pool's format, refused here (naming its record) if grads could not
    read it back."""
    try:
        normalise(record, fmt, Path("converted"), 0)
    except GradsError as err:
        raise GradsError(f"record {pick + 1} cannot be written as a {fmt} record: {err.message}", path=path,
                         where=None if path else "--offdomain",
                         hint="remove that record from the --offdomain file (or give a file whose records have a "
                              "prompt before the answer)") from None
    return record


# ------------------------------------------------------------------------------------------------ the writer


def plant_file(pool: str | Path, out: str | Path, share: float, kinds: str | Sequence[str], seed: int,
               offdomain: str | Path | None = None) -> dict[str, Any]:
    """Read `pool` (any input grads reads), plant noise, and write OUT/pool.jsonl (the noisy pool), OUT/labels.json
    (id -> "clean" or its kind) and OUT/plant.json (the settings and counts, returned), each atomically. Every
    problem stops with a GradsError before anything is written."""
    from grads._version import __version__
    from grads.data.formats import load_pool
    from grads.data.readers import raw_rows, read_records
    from grads.infra import atomic

    pool, out = Path(pool), Path(out)
    check_share(share)
    kinds = parse_kinds(kinds if isinstance(kinds, str) else ",".join(kinds))
    if "offdomain" in kinds and offdomain is None:
        raise GradsError("kind offdomain needs a file of off-domain records", where="--offdomain",
                         hint="pass --offdomain FILE (any format grads reads), or drop offdomain from --kinds")
    for source in (pool, offdomain):
        if source is not None and (out / "pool.jsonl").resolve() == Path(source).resolve():
            raise GradsError(f"would overwrite the input {source}", where="--out", hint="use another --out folder")
    info = load_pool(pool)
    counts = kind_counts(info.n_examples, share, kinds)
    extra = load_pool(offdomain) if offdomain is not None and "offdomain" in kinds else None
    records = [record for _, record in read_records(pool)]
    planted = plant(records, info.format, [e.id for e in info.examples], counts, seed,
                    [e.messages for e in extra.examples] if extra else (), pool_path=pool, offdomain_path=offdomain)
    settings = {
        "input": {"path": str(pool), "sha256": info.sha256, "format": info.format, "n_records": info.n_examples},
        "offdomain": None if extra is None else {"path": str(offdomain), "sha256": extra.sha256,
                                                 "format": extra.format, "n_records": extra.n_examples},
        "share": share, "kinds": list(kinds), "seed": seed,
        "counts": planted.counts, "n_records": len(planted.rows),
        "planted_share": (len(planted.rows) - planted.counts[CLEAN]) / len(planted.rows),
        "truncate_words": TRUNCATE_WORDS, "boilerplate": list(BOILERPLATE), "grads_version": __version__,
    }
    raw = raw_rows(pool)
    with atomic.folder_lock(out):
        with atomic.atomic_path(out / "pool.jsonl") as tmp, open(tmp, "w", encoding="utf-8") as f:
            for row in planted.rows:
                f.write((raw[row] if isinstance(row, int) else
                         json.dumps(row, ensure_ascii=False, default=str)) + "\n")
        atomic.write_text(out / "labels.json", json.dumps(planted.labels, indent=1, ensure_ascii=False) + "\n")
        atomic.write_json(out / "plant.json", settings)  # last: its presence says the folder is complete
    return settings

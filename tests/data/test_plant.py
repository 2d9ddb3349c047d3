"""`grads data plant` (issue 42, item 1): each kind damages a record exactly as it says, clean records stay the input's
lines, labels.json covers every id, the share is of the output pool, seeds reproduce, every format round-trips,
and every misuse stops with one message and exit code 2. No model."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
from helpers import assert_one_message, run_main, write_jsonl
from typer.testing import CliRunner

from grads.cli import app
from grads.data.formats import detect_format, load_pool, normalise
from grads.data.plant import (
    BOILERPLATE,
    KINDS,
    TRUNCATE_WORDS,
    answer_of,
    convert_record,
    derangement,
    kind_counts,
    plant,
    shuffled,
    split_equally,
    with_answer,
)

ALL = ",".join(KINDS)


def answer(i: int) -> str:
    return f"Answer {i}: the reason is number {i}, as the text explains in full."


def pc_pool(n: int) -> list[dict]:
    return [{"id": f"q{i}", "prompt": f"Question {i}?", "completion": answer(i), "subject": "s", "n": i}
            for i in range(n)]


def chats(n: int, fmt: str = "chat") -> list[dict]:
    """n off-domain records (math questions) in format `fmt`."""
    out = []
    for i in range(n):
        q, a = f"What is {i} + 1?", f"It is {i + 1}, since one more than {i} is {i + 1}."
        out.append({
            "chat": {"messages": [{"role": "system", "content": "Be exact."}, {"role": "user", "content": q},
                                  {"role": "assistant", "content": a}]},
            "prompt-completion": {"prompt": q, "completion": a},
            "alpaca": {"instruction": q, "input": "", "output": a},
            "sharegpt": {"conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}]},
        }[fmt])
    return out


def plant_cli(tmp_path, pool, *args, out="out"):
    result = CliRunner().invoke(app, ["data", "plant", str(pool), "--out", str(tmp_path / out), *map(str, args)],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    folder = tmp_path / out
    lines = (folder / "pool.jsonl").read_text().splitlines()
    return folder, lines, json.loads((folder / "labels.json").read_text()), \
        json.loads((folder / "plant.json").read_text())


@pytest.fixture
def planted_pc(tmp_path):
    """A 40-record prompt-completion pool with every kind planted at share 0.3 (off-domain from a chat file)."""
    pool = write_jsonl(tmp_path / "pool.jsonl", pc_pool(40))
    off = write_jsonl(tmp_path / "off.jsonl", chats(30))
    folder, lines, labels, settings = plant_cli(tmp_path, pool, "--share", 0.3, "--kinds", ALL, "--offdomain", off,
                                                "--seed", 3)
    return pool, off, lines, labels, settings


def test_each_kind_changes_the_record_as_it_says(planted_pc):
    pool, off, lines, labels, _ = planted_pc
    inputs = pc_pool(40)
    by_id = {r["id"]: r for r in inputs}
    originals = [r["completion"] for r in inputs]
    converted = [convert_record(e.messages, "prompt-completion") for e in load_pool(off).examples]
    outputs = [json.loads(line) for line in lines]
    assert [r["id"] for r in outputs[:40]] == [r["id"] for r in inputs]  # replaced records keep id and position
    seen = Counter()
    for record in outputs:
        kind = labels[record["id"]]
        seen[kind] += 1
        if kind in ("clean", "offdomain", "duplicate"):
            continue
        original = by_id[record["id"]]
        assert {k: v for k, v in record.items() if k != "completion"} == \
            {k: v for k, v in original.items() if k != "completion"}  # only the answer changed
        new, old = record["completion"], original["completion"]
        if kind == "swap":
            assert new != old and new in originals
        elif kind == "shuffle":
            assert sorted(new.split()) == sorted(old.split()) and new.split() != old.split()
        elif kind == "truncate":
            assert new.split() == old.split()[:TRUNCATE_WORDS] and old.startswith(new)
        elif kind == "boilerplate":
            assert new in BOILERPLATE
    for record in outputs:
        if labels[record["id"]] == "offdomain":
            rest = {k: v for k, v in record.items() if k != "id"}
            assert rest in converted and record["id"] in by_id
            assert rest == {"prompt": rest["prompt"], "completion": rest["completion"]}  # no field of the replaced
        if labels[record["id"]] == "duplicate":
            source_id = record["id"].removesuffix("-dup1")
            assert labels[source_id] == "clean"
            assert {**record, "id": source_id} == by_id[source_id]
    assert set(seen) == {"clean", *KINDS}


def test_swapped_answers_come_from_the_other_swapped_records(tmp_path):
    pool = write_jsonl(tmp_path / "pool.jsonl", pc_pool(30))
    _, lines, labels, _ = plant_cli(tmp_path, pool, "--share", 0.4, "--kinds", "swap", "--seed", 1)
    swapped = {r["id"]: r["completion"] for r in map(json.loads, lines) if labels[r["id"]] == "swap"}
    own = {r["id"]: r["completion"] for r in pc_pool(30)}
    assert len(swapped) == 12
    assert sorted(swapped.values()) == sorted(own[i] for i in swapped)  # a permutation among them
    assert all(swapped[i] != own[i] for i in swapped)  # with no fixed point


def test_a_lone_swapped_record_takes_another_records_answer(tmp_path):
    pool = write_jsonl(tmp_path / "pool.jsonl", pc_pool(10))
    _, lines, labels, _ = plant_cli(tmp_path, pool, "--share", 0.1, "--kinds", "swap", "--seed", 0)
    (record,) = [r for r in map(json.loads, lines) if labels[r["id"]] == "swap"]
    n = int(record["id"][1:])
    assert record["completion"] != answer(n) and record["completion"] in [answer(i) for i in range(10)]


def test_derangement_and_shuffle_always_move_something():
    rng = np.random.default_rng(0)
    for n in range(2, 12):
        assert all((derangement(n, rng) != np.arange(n)).all() for _ in range(20))
        assert sorted(derangement(n, rng)) == list(range(n))
    assert {shuffled("yes no", np.random.default_rng(seed)) for seed in range(10)} == {"no yes"}
    assert shuffled("a a a", rng) == "a a a"  # nothing to reorder: such answers are never chosen for shuffle


def test_clean_records_are_the_input_lines_byte_for_byte(tmp_path):
    # odd spacing, key order and unescaped unicode: a re-serialised line would differ
    lines = [f'{{"completion":  "Réponse {i}: une explication assez longue ici.", "id": "r{i}",'
             f'"prompt": "Q{i} — ?"}}' for i in range(20)]
    pool = tmp_path / "pool.jsonl"
    pool.write_text("\n".join(lines) + "\n", encoding="utf-8")
    _, out, labels, _ = plant_cli(tmp_path, pool, "--share", 0.25, "--kinds", "shuffle,boilerplate", "--seed", 0)
    assert len(out) == 20
    for i, line in enumerate(out):
        if labels[f"r{i}"] == "clean":
            assert line == lines[i]
        else:
            assert json.loads(line)["id"] == f"r{i}" and line != lines[i]
    assert Counter(labels.values()) == {"clean": 15, "shuffle": 3, "boilerplate": 2}  # remainder to the first


def test_labels_cover_every_id_with_the_counts(planted_pc):
    _, _, lines, labels, settings = planted_pc
    assert list(labels) == [json.loads(line)["id"] for line in lines]  # every output id, in output order
    counts = Counter(labels.values())
    assert counts == settings["counts"]
    planted = sum(n for kind, n in counts.items() if kind != "clean")
    assert len(lines) == 40 + counts["duplicate"] == settings["n_records"]
    assert settings["planted_share"] == planted / len(lines)
    assert list(split_equally(planted, KINDS).values()) == [counts[k] for k in KINDS]
    assert settings["kinds"] == list(KINDS) and settings["seed"] == 3 and settings["share"] == 0.3
    assert settings["input"]["sha256"] and settings["offdomain"]["sha256"] and settings["truncate_words"] == 4


@pytest.mark.parametrize("n_pool", [10, 37, 100, 1000])
@pytest.mark.parametrize("share", [0.05, 0.25, 0.5, 0.7])
@pytest.mark.parametrize("kinds", [("swap",), ("swap", "duplicate"), KINDS])
def test_share_is_of_the_output_pool_within_rounding(n_pool, share, kinds):
    try:
        counts = kind_counts(n_pool, share, kinds)
    except Exception as err:  # too few records for one per kind, or more duplicates than clean records
        assert "fewer than one per kind" in str(err) or "more than the pool" in str(err)
        return
    planted, size = sum(counts.values()), n_pool + counts.get("duplicate", 0)
    assert abs(planted / size - share) <= 1 / size  # the nearest achievable share
    assert max(counts.values()) - min(counts.values()) <= 1


def test_same_seed_same_bytes_and_seeds_differ(tmp_path):
    pool = write_jsonl(tmp_path / "pool.jsonl", pc_pool(30))
    off = write_jsonl(tmp_path / "off.jsonl", chats(20, "alpaca"))
    args = ("--share", 0.5, "--kinds", ALL, "--offdomain", off)
    a, b, c = (plant_cli(tmp_path, pool, *args, "--seed", seed, out=name)[0]
               for name, seed in (("a", 7), ("b", 7), ("c", 8)))
    for name in ("pool.jsonl", "labels.json", "plant.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    assert (a / "pool.jsonl").read_bytes() != (c / "pool.jsonl").read_bytes()
    assert (a / "labels.json").read_bytes() != (c / "labels.json").read_bytes()


def parts(text: str) -> list[dict]:
    return [{"type": "text", "text": text}]


POOLS = {  # record i of each format, with a field grads does not read (it must be kept)
    "chat": lambda i: {"messages": [{"role": "user", "content": f"Q{i}?"},
                                    {"role": "assistant", "content": "First draft."},
                                    {"role": "user", "content": "Again, longer."},
                                    {"role": "assistant", "content": answer(i)}], "source": "x"},
    "chat-parts": lambda i: {"messages": [{"role": "user", "content": parts(f"Q{i}?")},
                                          {"role": "assistant", "content": parts(answer(i))}], "source": "x"},
    "prompt-completion": lambda i: {"prompt": f"Q{i}?", "completion": answer(i), "source": "x"},
    "prompt-completion-lists": lambda i: {"prompt": [{"role": "user", "content": f"Q{i}?"}],
                                          "completion": [{"role": "assistant", "content": answer(i)}], "source": "x"},
    "alpaca": lambda i: {"instruction": f"Q{i}?", "input": "some context", "output": answer(i), "source": "x"},
    "sharegpt": lambda i: {"system": "Be brief.", "conversations": [{"from": "human", "value": f"Q{i}?"},
                                                                    {"from": "gpt", "value": answer(i)}],
                           "source": "x"},
}


@pytest.mark.parametrize("off_fmt", ["chat", "sharegpt"])
@pytest.mark.parametrize("style", list(POOLS))
def test_every_format_round_trips(tmp_path, style, off_fmt):
    inputs = [{"id": f"e{i}", **POOLS[style](i)} for i in range(24)]
    fmt = detect_format(inputs[0])
    pool = write_jsonl(tmp_path / "pool.jsonl", inputs)
    off = write_jsonl(tmp_path / "off.jsonl", chats(10, off_fmt))
    folder, lines, labels, settings = plant_cli(tmp_path, pool, "--share", 0.5, "--kinds", ALL, "--offdomain", off,
                                                "--seed", 0)
    noisy = load_pool(folder / "pool.jsonl")  # grads reads it back, in the pool's format, with the labelled ids
    assert noisy.format == fmt == settings["input"]["format"] and noisy.id_source == "field"
    assert [e.id for e in noisy.examples] == list(labels)
    off_converted = [convert_record(e.messages, fmt, strings=style != "prompt-completion-lists")
                     for e in load_pool(off).examples]
    for original, line in zip(inputs, lines, strict=False):
        record, kind = json.loads(line), labels[original["id"]]
        if kind == "offdomain":
            assert {k: v for k, v in record.items() if k != "id"} in off_converted
        elif kind != "clean":  # the answer is the only change, in the record's own shape
            assert record == with_answer(original, fmt, answer_of(record, fmt)) and record != original
            if kind == "truncate":
                assert answer_of(record, fmt).split() == answer(int(original["id"][1:])).split()[:TRUNCATE_WORDS]
        else:
            assert record == original


@pytest.mark.parametrize("off_fmt", ["chat", "prompt-completion", "alpaca", "sharegpt"])
@pytest.mark.parametrize("pool_fmt", ["chat", "prompt-completion", "alpaca", "sharegpt"])
def test_offdomain_records_are_converted_to_the_pools_format(off_fmt, pool_fmt):
    (source,) = chats(1, off_fmt)
    messages, _ = normalise(source, off_fmt, "off", 1)
    record = convert_record(messages, pool_fmt)
    assert detect_format(record) == pool_fmt
    back, _ = normalise(record, pool_fmt, "out", 1)
    assert back[-1] == {"role": "assistant", "content": "It is 1, since one more than 0 is 1."}
    user = next(m["content"] for m in back if m["role"] == "user")
    assert user.endswith("What is 0 + 1?")  # single-string prompts join the turns before the answer


def test_a_pool_without_ids_gets_the_ids_grads_gives_it(tmp_path):
    inputs = [{"prompt": f"Q{i}?", "completion": answer(i)} for i in range(10)]
    pool = write_jsonl(tmp_path / "pool.jsonl", inputs)
    hashes = [e.id for e in load_pool(pool).examples]
    folder, lines, labels, _ = plant_cli(tmp_path, pool, "--share", 0.3, "--kinds", "truncate,duplicate", "--seed", 0)
    records = [json.loads(line) for line in lines]
    assert [r["id"] for r in records[:10]] == hashes and list(labels) == [r["id"] for r in records]
    for record, original, id_ in zip(records, inputs, hashes, strict=False):
        if labels[id_] == "clean":
            assert record == {"id": id_, **original}
    assert sum(label == "duplicate" for label in labels.values()) == 1


BAD = {  # args after POOL --out OUT -> (where the message starts, its text, its hint)
    "share 0": (["--share", "0", "--kinds", "swap"], "--share: ", "must be between 0 and 1 (exclusive), got 0.0",
                "--share 0.25"),
    "share 1": (["--share", "1", "--kinds", "swap"], "--share: ", "must be between 0 and 1 (exclusive), got 1.0",
                "--share 0.25"),
    "share 1.5": (["--share", "1.5", "--kinds", "swap"], "--share: ", "got 1.5", "fraction of the output pool"),
    "unknown kind": (["--share", "0.2", "--kinds", "swap,garble"], "--kinds: ", "unknown kind 'garble'",
                     "the kinds are: swap, shuffle, truncate, offdomain, duplicate, boilerplate"),
    "no kinds": (["--share", "0.2", "--kinds", " , "], "--kinds: ", "no kinds given", "comma-separated: swap"),
    "a kind twice": (["--share", "0.2", "--kinds", "swap,swap"], "--kinds: ", "kind 'swap' is named twice",
                     "name each kind once"),
    "offdomain without a file": (["--share", "0.2", "--kinds", "swap,offdomain"], "--offdomain: ",
                                 "kind offdomain needs a file of off-domain records", "pass --offdomain FILE"),
    "more duplicates than clean records": (["--share", "0.8", "--kinds", "duplicate"], "--share: ",
                                           "plants 80 records, more than the pool of 20 allows (at most 20",
                                           "lower --share to at most 0.5"),
    "fewer planted than kinds": (["--share", "0.05", "--kinds", "swap,shuffle,truncate"], "--share: ",
                                 "0.05 of a pool of 20 plants 1 records, fewer than one per kind (3 kinds)",
                                 "raise --share"),
    "too few answers long enough": (["--share", "0.6", "--kinds", "truncate", "--format-short"], "{pool}: ",
                                    "truncate needs 12 records whose answer has more than 4 words; the pool allows 10",
                                    "lower --share, or drop truncate from --kinds"),
    "too small an offdomain file": (["--share", "0.5", "--kinds", "offdomain", "--offdomain", "{off}"], "{off}: ",
                                    "offdomain needs 10 records and the file has 3",
                                    "give a larger --offdomain file, or lower --share"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_misuse_stops_with_one_message_and_exit_2(tmp_path, capsys, case):
    args, where, message, hint = BAD[case]
    records = pc_pool(20)
    if "--format-short" in args:  # half the answers have 3 words
        args = [a for a in args if a != "--format-short"]
        records = [r | {"completion": "Too short here."} if i % 2 else r for i, r in enumerate(records)]
    pool = write_jsonl(tmp_path / "pool.jsonl", records)
    off = write_jsonl(tmp_path / "off.jsonl", chats(3))
    args = [a.format(off=off) for a in args]
    code, err, _ = run_main(["data", "plant", pool, "--out", tmp_path / "out", "--seed", "0", *args], capsys)
    assert code == 2
    assert_one_message(err, where.format(pool=pool, off=off), message, hint)
    assert not (tmp_path / "out").exists()


def test_the_input_is_never_overwritten(tmp_path, capsys):
    pool = write_jsonl(tmp_path / "pool.jsonl", pc_pool(10))
    code, err, _ = run_main(["data", "plant", pool, "--out", tmp_path, "--share", "0.2", "--kinds", "swap",
                             "--seed", "0"], capsys)
    assert code == 2
    assert_one_message(err, "--out: ", f"would overwrite the input {pool}", "use another --out folder")
    assert pool.read_text() == "".join(json.dumps(r) + "\n" for r in pc_pool(10))


def test_the_planted_records_do_not_follow_a_random_selections_order():
    """The selection rules draw with numpy's generator seeded by the selection seed: the planted records must come
    from a stream of their own, or `random` (and every rule that draws) at seed S would keep the records planted
    with seed S first. Over ten seeds, a random 5% of a 1,200-record pool with 25% planted holds 25% ± 4 points
    (binomial sd of the mean over 10 × 60 draws: 1.8 points)."""
    from helpers import score_table

    from grads.core.rules import select_random

    records = pc_pool(1200)
    ids = [r["id"] for r in records]
    counts = {"swap": 150, "boilerplate": 150}
    table = score_table(np.ones(1200), np.ones(1200))
    shares = []
    for seed in range(10):
        labels = plant(records, "prompt-completion", ids, counts, seed).labels
        picked = select_random(table, 0.05, seed)
        shares.append(np.mean([labels[ids[i]] != "clean" for i in picked]))
    assert abs(np.mean(shares) - 0.25) < 0.04, shares

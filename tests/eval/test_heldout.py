"""Held-out answer likelihood against an independent per-example computation, in every input format; and question
use (the same answers under other examples' questions) against the same computation on the deranged pairs."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import run_main, tiny_llama, write_jsonl

from grads.data.formats import Example
from grads.eval.heldout import (
    QUESTION_USE_SEED,
    answer_tokens,
    asked_by,
    derangement,
    read_heldout,
    read_mismatched,
    score_heldout,
)

RECORDS = [{"id": f"h{i}", "prompt": f"What is {i} times {i + 2}?",
            "completion": f"It is {i * (i + 2)}. " * (1 + i % 3)} for i in range(9)]


def brute_force(model, tokenizer, record) -> tuple[float, int, int]:
    """(Σ answer NLL in nats, answer tokens, answer bytes) of one prompt-completion record, by hand: the chat
    rendered as a whole, the answer located as the text after the generation prompt, one example, no padding."""
    messages = [{"role": "user", "content": record["prompt"]}, {"role": "assistant", "content": record["completion"]}]
    prefix = tokenizer.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    prompt_ids = tokenizer(prefix, add_special_tokens=False)["input_ids"]
    answer_text = full[len(prefix):]
    answer_ids = tokenizer(answer_text, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([prompt_ids + answer_ids])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(input_ids=ids).logits[0].double(), -1)
    nll = -sum(float(logprobs[len(prompt_ids) + j - 1, t]) for j, t in enumerate(answer_ids))
    return nll, len(answer_ids), len(answer_text.encode("utf-8"))


def test_nll_and_bpb_equal_a_per_example_computation(tmp_path, smol_tokenizer, monkeypatch):
    monkeypatch.setenv("GRADS_HOME", str(tmp_path / "home"))
    model = tiny_llama(vocab_size=len(smol_tokenizer), tied=True, hidden=32).double()
    pool = read_heldout(write_jsonl(tmp_path / "h.jsonl", RECORDS), smol_tokenizer, 256)
    summary, frame = score_heldout(model, pool, 4, smol_tokenizer)
    expected = [brute_force(model, smol_tokenizer, r) for r in RECORDS]
    assert frame["id"].tolist() == [r["id"] for r in RECORDS]
    assert frame["nll"].tolist() == pytest.approx([e[0] for e in expected], rel=1e-9)
    assert frame["n_tokens"].tolist() == [e[1] for e in expected]
    assert frame["n_bytes"].tolist() == [e[2] for e in expected]
    total, tokens, n_bytes = (sum(e[i] for e in expected) for i in range(3))
    assert summary["nll"] == pytest.approx(total / tokens) and summary["bpb"] == pytest.approx(total / (math.log(2)
                                                                                                         * n_bytes))
    assert (summary["n_examples"], summary["n_tokens"], summary["n_bytes"]) == (9, tokens, n_bytes)


def test_every_input_format_gives_the_same_scores(tmp_path, smol_tokenizer, monkeypatch):
    monkeypatch.setenv("GRADS_HOME", str(tmp_path / "home"))
    model = tiny_llama(vocab_size=len(smol_tokenizer), tied=True, hidden=32)
    chat = [{"id": r["id"], "messages": [{"role": "user", "content": r["prompt"]},
                                         {"role": "assistant", "content": r["completion"]}]} for r in RECORDS]
    alpaca = [{"id": r["id"], "instruction": r["prompt"], "output": r["completion"]} for r in RECORDS]
    files = [write_jsonl(tmp_path / "pc.jsonl", RECORDS), write_jsonl(tmp_path / "chat.jsonl", chat),
             write_jsonl(tmp_path / "alpaca.jsonl", alpaca)]
    (tmp_path / "pc.json").write_text(json.dumps(RECORDS))
    pd.DataFrame(RECORDS).to_parquet(tmp_path / "pc.parquet")
    files += [tmp_path / "pc.json", tmp_path / "pc.parquet"]
    results = [score_heldout(model, read_heldout(f, smol_tokenizer, 256), 4, smol_tokenizer)[0] for f in files]
    for other in results[1:]:
        assert other == pytest.approx(results[0], rel=1e-9)


def test_question_use_equals_a_per_example_computation_under_the_deranged_questions(tmp_path, smol_tokenizer,
                                                                                    monkeypatch):
    """Each answer's NLL under the question the seeded derangement gives it, by hand (the chat rendered whole by
    the template, one example, no padding); bpb_mismatched over the answers' own bytes, question use the
    difference."""
    monkeypatch.setenv("GRADS_HOME", str(tmp_path / "home"))
    model = tiny_llama(vocab_size=len(smol_tokenizer), tied=True, hidden=32).double()
    path = write_jsonl(tmp_path / "h.jsonl", RECORDS)
    pool = read_heldout(path, smol_tokenizer, 256)
    summary, frame = score_heldout(model, pool, 4, smol_tokenizer, mismatched=read_mismatched(path, smol_tokenizer,
                                                                                              256))
    donors = derangement(len(RECORDS), QUESTION_USE_SEED)
    asked = [brute_force(model, smol_tokenizer, {"prompt": RECORDS[j]["prompt"], "completion": r["completion"]})
             for r, j in zip(RECORDS, donors)]
    own = [brute_force(model, smol_tokenizer, r) for r in RECORDS]
    assert frame["nll_mismatched"].tolist() == pytest.approx([a[0] for a in asked], rel=1e-9)
    assert [a[1:] for a in asked] == [o[1:] for o in own]  # the same answer tokens and bytes under any question
    n_bytes = sum(o[2] for o in own)
    bpb_mismatched = sum(a[0] for a in asked) / (math.log(2) * n_bytes)
    assert summary["bpb_mismatched"] == pytest.approx(bpb_mismatched, rel=1e-9)
    assert summary["question_use_bpb"] == pytest.approx(bpb_mismatched - sum(o[0] for o in own)
                                                        / (math.log(2) * n_bytes), rel=1e-9, abs=1e-12)
    assert summary["question_use_bpb"] != 0  # another question changes what the model predicts
    # without a mismatched pool: the summary and rows of before, to the bit
    plain_summary, plain_frame = score_heldout(model, pool, 4, smol_tokenizer)
    assert plain_summary == {k: v for k, v in summary.items() if k not in ("bpb_mismatched", "question_use_bpb")}
    pd.testing.assert_frame_equal(plain_frame, frame.drop(columns="nll_mismatched"))


def test_the_derangement_has_no_fixed_point_and_is_seeded():
    for n in range(2, 40):
        perm = derangement(n, QUESTION_USE_SEED)
        assert sorted(perm.tolist()) == list(range(n)) and all(perm != np.arange(n)), n
        assert perm.tolist() == derangement(n, QUESTION_USE_SEED).tolist()  # the same pairs every time
    assert derangement(2, 7).tolist() == [1, 0]
    assert derangement(30, 1).tolist() != derangement(30, 2).tolist()
    # uniform over the 9 derangements of 4 (a seed each): every one drawn, none far from 1/9
    drawn = pd.Series([tuple(derangement(4, seed).tolist()) for seed in range(900)]).value_counts()
    assert len(drawn) == 9 and drawn.min() > 60
    with pytest.raises(ValueError):
        derangement(1)


def test_a_question_is_every_turn_before_the_first_answer():
    """System and user turns before the first answer move with the question; the answer and every turn after it
    stay; a string prompt-completion pair stays one."""
    def chat(*turns):
        return tuple({"role": role, "content": text} for role, text in turns)

    donor = Example("d", 0, chat(("system", "Be brief."), ("user", "Q-d?"), ("assistant", "A-d.")))
    own = Example("o", 1, chat(("user", "Q-o?"), ("assistant", "A-o."), ("user", "More?"), ("assistant", "B-o.")))
    asked = asked_by(own, donor)
    assert (asked.id, asked.row, asked.plain) == ("o", 1, None)
    assert asked.messages == chat(("system", "Be brief."), ("user", "Q-d?"), ("assistant", "A-o."), ("user", "More?"),
                                  ("assistant", "B-o."))
    plain = [Example(str(i), i, chat(("user", f"Q{i}"), ("assistant", f"A{i}")), (f"Q{i}", f"A{i}")) for i in (0, 1)]
    assert asked_by(plain[0], plain[1]).plain == ("Q1", "A0")


def test_answer_tokens_do_not_depend_on_the_question_on_the_bundled_tokenizer(tmp_path, smol_tokenizer, monkeypatch,
                                                                            medmcqa_dir):
    """SmolLM2's template renders the assistant turn after the question's turns, and grads tokenises each turn
    apart: on the bundled held-out explanations, at the grids' length and when truncation cuts prompts and
    answers, every answer keeps its tokens under another question."""
    monkeypatch.setenv("GRADS_HOME", str(tmp_path / "home"))
    path = medmcqa_dir / "heldout_explanations.jsonl"
    for max_length in (256, 48):
        own, asked = read_heldout(path, smol_tokenizer, max_length, 200), read_mismatched(path, smol_tokenizer,
                                                                                          max_length, 200)
        assert [ex.id for ex in own] == [ex.id for ex in asked]
        assert all(answer_tokens(a.input_ids, a.labels) == answer_tokens(b.input_ids, b.labels)
                   for a, b in zip(own, asked))
        assert any(a.input_ids != b.input_ids for a, b in zip(own, asked))  # the questions did change
    assert own.stats.answer_tokens_cut > 0 and asked.stats.answer_tokens_cut == own.stats.answer_tokens_cut


def test_a_template_that_renders_answers_by_their_question_gives_no_figure(tmp_path, smol_tokenizer, monkeypatch):
    """A template whose assistant turn quotes the question: the answers' tokens change with it, so question use is
    NaN (with a line saying why) rather than a figure over other tokens; the bpb is untouched."""
    monkeypatch.setenv("GRADS_HOME", str(tmp_path / "home"))
    tokenizer = copy.deepcopy(smol_tokenizer)
    tokenizer.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['role'] == 'assistant' %}"
        "{{ messages[0]['content'][-3:] }} {% endif %}{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    model = tiny_llama(vocab_size=len(tokenizer), tied=True, hidden=32)
    path = write_jsonl(tmp_path / "h.jsonl", RECORDS)
    lines = []
    summary, frame = score_heldout(model, read_heldout(path, tokenizer, 256), 4, tokenizer, lines.append, "h",
                                   read_mismatched(path, tokenizer, 256))
    assert math.isnan(summary["bpb_mismatched"]) and math.isnan(summary["question_use_bpb"])
    assert frame["nll_mismatched"].isna().all() and not math.isnan(summary["bpb"])
    assert "question use not measured" in lines[-1] and "first: id h0" in lines[-1]


def test_grads_eval_writes_question_use_for_each_held_out_file(tmp_path, tiny_model_dir, monkeypatch, capsys):
    """`grads eval --heldout`: the summary's bpb_mismatched and question_use_bpb and the rows' nll_mismatched, as
    score_heldout gives them; --no-question-use leaves them out; a file of one example cannot be deranged."""
    from grads.infra.models import load_model, load_tokenizer

    monkeypatch.setenv("GRADS_HOME", str(tmp_path / "home"))
    path = write_jsonl(tmp_path / "h.jsonl", RECORDS)
    args = ["eval", "--model", tiny_model_dir, "--heldout", path, "--max-length", "128", "-b", "4"]
    code, err, _ = run_main([*args, "--out", tmp_path / "on.json"], capsys)
    assert code == 0, err
    held = json.loads((tmp_path / "on.json").read_text())["heldout"]["h"]
    tokenizer = load_tokenizer(str(tiny_model_dir))
    model = load_model(str(tiny_model_dir), dtype="float32", device="cpu")
    summary, frame = score_heldout(model, read_heldout(path, tokenizer, 128), 4, tokenizer,
                                   mismatched=read_mismatched(path, tokenizer, 128))
    assert held == pytest.approx(summary, rel=1e-6)
    assert held["question_use_bpb"] == pytest.approx(held["bpb_mismatched"] - held["bpb"], rel=1e-9)
    rows = pd.read_parquet(tmp_path / "on.heldout.parquet")
    np.testing.assert_allclose(rows["nll_mismatched"], frame["nll_mismatched"], rtol=1e-6)
    code, err, _ = run_main([*args, "--no-question-use", "--out", tmp_path / "off.json"], capsys)
    assert code == 0, err
    off = json.loads((tmp_path / "off.json").read_text())["heldout"]["h"]
    assert off == pytest.approx({k: v for k, v in held.items() if k not in ("bpb_mismatched", "question_use_bpb")},
                                rel=1e-9)
    assert "nll_mismatched" not in pd.read_parquet(tmp_path / "off.heldout.parquet").columns
    one = write_jsonl(tmp_path / "one.jsonl", RECORDS[:1])
    code, err, _ = run_main(["eval", "--model", tiny_model_dir, "--heldout", one, "--out", tmp_path / "x.json"],
                            capsys)
    assert code == 2 and "at least two held-out examples" in err and "--no-question-use" in err

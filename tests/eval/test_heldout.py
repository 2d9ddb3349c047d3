"""Held-out answer likelihood against an independent per-example computation, in every input format."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch
from helpers import tiny_llama, write_jsonl

from grads.eval.heldout import read_heldout, score_heldout

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

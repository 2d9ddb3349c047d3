"""The evaluator on hand-made tasks with a rigged model (exact expected accuracy), the shared-context path
against plain scoring, and the Wilson interval."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch
from conftest import tiny_llama, write_jsonl

from grads.evaluation import evaluate, loglikelihoods, wilson_interval
from grads.tasks import TaskSpec, build_items


class AlwaysLetterA(torch.nn.Module):
    """A rigged LM: at every position the token ' A' has logit 5, every other token 0."""

    def __init__(self, vocab: int, favourite: int) -> None:
        super().__init__()
        self.bias = torch.nn.Parameter(torch.zeros(vocab))
        with torch.no_grad():
            self.bias[favourite] = 5.0

    def forward(self, input_ids, attention_mask=None, **_):
        return SimpleNamespace(logits=self.bias.expand(*input_ids.shape, -1).clone())


def test_rigged_model_gets_exactly_the_questions_whose_answer_is_a(tmp_path, smol_tokenizer):
    answers = [0, 1, 0, 2, 3, 0, 1, 0]  # A is right for 4 of 8
    task = write_jsonl(tmp_path / "mine.jsonl", [
        {"question": f"Question {i}?", "choices": ["w", "x", "y", "z"], "answer": a} for i, a in enumerate(answers)])
    favourite = smol_tokenizer(" A", add_special_tokens=False)["input_ids"]
    assert len(favourite) == 1
    model = AlwaysLetterA(len(smol_tokenizer), favourite[0])
    result = evaluate(model, smol_tokenizer, [str(task)])["mine"]
    assert (result["correct"], result["n"], result["accuracy"]) == (4, 8, 0.5)
    assert result["ci95"] == pytest.approx(list(wilson_interval(4, 8)))


def test_wilson_interval_matches_the_formula():
    # p = 0.5, n = 8, z = 1.96: centre 0.5, half-width z*sqrt(p(1-p)/n + z²/4n²)/(1+z²/n)
    z, n = 1.96, 8
    half = z * math.sqrt(0.25 / n + z * z / (4 * n * n)) / (1 + z * z / n)
    assert wilson_interval(4, 8) == pytest.approx((0.5 - half, 0.5 + half))
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == 1.0


def test_shared_context_scoring_equals_plain_scoring(smol_tokenizer):
    model = tiny_llama(vocab_size=len(smol_tokenizer), hidden=32)
    pairs = [("Question: what?\nAnswer:", " A"), ("Question: what?\nAnswer:", " B"), ("The cat", " sat on it"),
             ("The cat", " ran"), ("Alone here", " yes")]
    shared = loglikelihoods(model, smol_tokenizer, pairs, share_context=True)
    plain = loglikelihoods(model, smol_tokenizer, pairs, share_context=False)
    assert shared == pytest.approx(plain, rel=1e-5)
    # an independent check of one pair: the full forward's log-probabilities
    ids = smol_tokenizer("Question: what?\nAnswer: A")["input_ids"]
    lp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0, -2], -1)[ids[-1]]
    assert shared[0] == pytest.approx(lp.item(), rel=1e-5)


def test_declared_tasks_build_items_from_bundled_data():
    from grads.tasks import TASKS

    for name in ["arc_easy", "winogrande", "boolq", "piqa", "sciq"]:
        items = build_items(TASKS[name], None)
        assert items and all(0 <= it.answer < len(it.continuations) for it in items[:50]), name
    wino = build_items(TASKS["winogrande"], None)[0]
    assert wino.continuations[0] == wino.continuations[1] and wino.contexts[0] != wino.contexts[1]


def test_user_task_errors_name_the_line(tmp_path):
    from grads.errors import GradsError

    bad = tmp_path / "t.jsonl"
    bad.write_text(json.dumps({"question": "q", "choices": ["a", "b"], "answer": 0}) + "\n" +
                   json.dumps({"question": "q", "choices": ["a"], "answer": 3}) + "\n")
    with pytest.raises(GradsError) as err:
        build_items(TaskSpec("user", str(bad), "letter"), None)
    assert err.value.line == 2


def test_lm_eval_backend_scores_the_same_questions_the_same_way(tmp_path, smol_tokenizer):
    """Letter-style (chat-rendered) and Winogrande-style tasks through lm-evaluation-harness give exactly the
    accuracy of grads' own evaluator on the same model and the same questions."""
    pytest.importorskip("lm_eval")
    from grads.lm_eval_backend import evaluate_lm_eval

    torch.manual_seed(3)
    model = tiny_llama(vocab_size=len(smol_tokenizer), tied=True, hidden=32)
    task = write_jsonl(tmp_path / "mine.jsonl", [
        {"question": f"Which is number {i}?", "choices": [f"{i}", f"{i + 1}", f"{i + 2}"], "answer": i % 3}
        for i in range(16)])
    names = [str(task), "winogrande"]
    ours = evaluate(model, smol_tokenizer, names, limit=12)
    theirs = evaluate_lm_eval(model, smol_tokenizer, names, limit=12, batch_size=4)
    for key in ("mine", "winogrande"):
        assert theirs[key]["n"] == ours[key]["n"] == 12
        assert theirs[key]["correct"] == ours[key]["correct"], key
        assert theirs[key]["backend"].startswith("lm-eval")

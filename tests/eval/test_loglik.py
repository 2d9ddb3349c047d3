"""The evaluator on hand-made tasks with a rigged model (exact expected accuracy), gold bits per byte against a
direct forward, the shared-context path against plain scoring, and the Wilson interval."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from helpers import tiny_llama, write_jsonl

from grads.eval.loglik import evaluate, loglikelihoods, wilson_interval


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
    result = evaluate(model, smol_tokenizer, [str(task)], batch_size=8, rotations=1)["mine"]  # the options as given
    assert (result["correct"], result["n"], result["accuracy"]) == (4, 8, 0.5)
    assert result["ci95"] == pytest.approx(list(wilson_interval(4, 8)))


def test_a_constant_letter_scores_exactly_chance_under_rotation(tmp_path, smol_tokenizer):
    """Asked in every cyclic rotation of its options, each question has its right answer under each letter once:
    a model that always says A is right once per question, whatever the answers, so it scores 1/K exactly."""
    for k, answers in [(4, [0, 1, 0, 2, 3, 0, 1, 0]), (5, [4, 4, 4])]:
        task = write_jsonl(tmp_path / f"k{k}.jsonl", [{"question": f"Question {i}?", "choices": list("vwxyz")[:k],
                                                       "answer": a} for i, a in enumerate(answers)])
        model = AlwaysLetterA(len(smol_tokenizer), smol_tokenizer(" A", add_special_tokens=False)["input_ids"][0])
        result = evaluate(model, smol_tokenizer, [str(task)], batch_size=8)[f"k{k}"]
        assert result["accuracy"] == 1 / k and (result["n"], result["rotations"]) == (len(answers), k)
        assert result["correct"] == len(answers) and result["n_scored"] == k * len(answers)
        by_question = {}
        for record in result["items"]:
            by_question.setdefault(record["id"], []).append(record["correct"])
        assert all(sum(v) == 1 and len(v) == k for v in by_question.values())
    two = evaluate(model, smol_tokenizer, [str(tmp_path / "k4.jsonl")], batch_size=8, rotations=2)["k4"]
    assert two["rotations"] == 2 and two["n_scored"] == 16


def test_gold_bits_per_byte_equal_a_direct_forward(smol_tokenizer):
    """NAME:bpb and GSM8K: Σ NLL of the gold continuation over ln 2 · its UTF-8 bytes, by hand."""
    from grads.eval.loglik import task_items
    from grads.eval.tasks import resolve_task

    model = tiny_llama(vocab_size=len(smol_tokenizer), hidden=32).double()
    for name in ["arc_easy:bpb", "gsm8k"]:
        key, spec = resolve_task(name)
        result = evaluate(model, smol_tokenizer, [name], batch_size=8, limit=4)[key]
        items, _ = task_items(smol_tokenizer, key, spec, 4)
        nll, n_bytes = 0.0, 0
        for item in items:
            context, continuation = item.gold
            ctx = smol_tokenizer(context)["input_ids"]
            cont = smol_tokenizer(continuation, add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                lp = torch.log_softmax(model(input_ids=torch.tensor([ctx + cont])).logits[0].double(), -1)
            nll -= sum(float(lp[len(ctx) + j - 1, t]) for j, t in enumerate(cont))
            n_bytes += len(continuation.encode("utf-8"))
        assert result["n"] == 4 and "accuracy" not in result
        assert result["bpb"] == pytest.approx(nll / (math.log(2) * n_bytes), rel=1e-6), name
    # a cloze task scored for accuracy reports the gold answers' bpb too
    both = evaluate(model, smol_tokenizer, ["arc_easy"], batch_size=8, limit=4)["arc_easy"]
    alone = evaluate(model, smol_tokenizer, ["arc_easy:bpb"], batch_size=8, limit=4)["arc_easy:bpb"]
    assert both["bpb"] == pytest.approx(alone["bpb"], rel=1e-6)


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
    shared = loglikelihoods(model, smol_tokenizer, pairs, 8, share_context=True)
    plain = loglikelihoods(model, smol_tokenizer, pairs, 8, share_context=False)
    assert shared == pytest.approx(plain, rel=1e-5)
    # an independent check of one pair: the full forward's log-probabilities
    ids = smol_tokenizer("Question: what?\nAnswer: A")["input_ids"]
    lp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0, -2], -1)[ids[-1]]
    assert shared[0] == pytest.approx(lp.item(), rel=1e-5)


class IgnoresLogitsToKeep(torch.nn.Module):
    """The same LM, but its forward computes the logits of every position whatever it is asked."""

    def __init__(self, model) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask=None, **_):
        return self.model(input_ids=input_ids, attention_mask=attention_mask)


def test_the_lm_head_runs_only_where_a_token_is_scored_and_the_values_are_a_full_forwards(smol_tokenizer):
    """Log-likelihoods (plain and shared-context) and the held-out NLL ask for the logits of the scored positions
    only: the head sees those rows alone, and every value equals one example's full forward, alone and unpadded
    (also through a model that ignores logits_to_keep)."""
    from grads.data.batches import collate
    from grads.data.tokenize import TokenizedExample
    from grads.eval.nll import target_nll

    model = tiny_llama(vocab_size=len(smol_tokenizer), hidden=32)
    rows_seen = []
    hook = model.lm_head.register_forward_hook(lambda m, args, out: rows_seen.append(args[0].shape[:-1].numel()))
    pairs = [("Question: what?\nAnswer:", " A"), ("Question: what?\nAnswer:", " B"), ("The cat", " sat on it"),
             ("The cat sat on the mat and then", " ran away quickly"), ("Alone here", " yes")]

    def alone(context, continuation):
        ctx = smol_tokenizer(context)["input_ids"]
        ids = ctx + smol_tokenizer(continuation, add_special_tokens=False)["input_ids"]
        lp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].double(), -1)
        return sum(lp[t - 1, ids[t]].item() for t in range(len(ctx), len(ids)))

    expected = [alone(*pair) for pair in pairs]
    rows_seen.clear()
    for share in (True, False):
        assert loglikelihoods(model, smol_tokenizer, pairs, 8, share_context=share) == pytest.approx(expected, rel=1e-5)
    n_cont = [len(smol_tokenizer(c, add_special_tokens=False)["input_ids"]) for _, c in pairs]
    # shared: one row for the two letters' context, then the other three pairs' continuation tokens; plain: all
    assert rows_seen == [1, sum(n_cont[2:]), sum(n_cont)]
    wrapped = IgnoresLogitsToKeep(model)
    assert loglikelihoods(wrapped, smol_tokenizer, pairs, 2) == pytest.approx(expected, rel=1e-5)

    examples = []
    for row, (context, continuation) in enumerate(pairs):
        ctx = smol_tokenizer(context)["input_ids"]
        ids = ctx + smol_tokenizer(continuation, add_special_tokens=False)["input_ids"]
        examples.append(TokenizedExample(f"e{row}", row, ids, [-100] * len(ctx) + ids[len(ctx):]))
    batch = collate(examples, smol_tokenizer.pad_token_id, "right")
    for lm in (model, wrapped):
        for where_scored in (True, False):
            nll, count = target_nll(lm, batch, where_scored=where_scored)
            assert count.tolist() == n_cont
            assert nll.tolist() == pytest.approx([-e for e in expected], rel=1e-5)
    hook.remove()

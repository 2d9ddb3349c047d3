"""The lm-evaluation-harness backend against grads' own evaluator."""

from __future__ import annotations

import pytest
import torch
from helpers import tiny_llama, write_jsonl

from grads.eval.loglik import evaluate


def test_lm_eval_backend_scores_the_same_questions_the_same_way(tmp_path, smol_tokenizer):
    """Letter-style (chat-rendered) and Winogrande-style tasks through lm-evaluation-harness give exactly the
    accuracy of grads' own evaluator on the same model and the same questions."""
    pytest.importorskip("lm_eval")
    from grads.eval.harness import evaluate_lm_eval

    torch.manual_seed(3)
    model = tiny_llama(vocab_size=len(smol_tokenizer), tied=True, hidden=32)
    task = write_jsonl(tmp_path / "mine.jsonl", [
        {"question": f"Which is number {i}?", "choices": [f"{i}", f"{i + 1}", f"{i + 2}"], "answer": i % 3}
        for i in range(16)])
    names = [str(task), "winogrande"]
    ours = evaluate(model, smol_tokenizer, names, limit=12, batch_size=4)
    theirs = evaluate_lm_eval(model, smol_tokenizer, names, limit=12, batch_size=4)
    for key in ("mine", "winogrande"):
        assert theirs[key]["n"] == ours[key]["n"] == 12
        assert theirs[key]["correct"] == ours[key]["correct"], key
        assert theirs[key]["backend"].startswith("lm-eval")

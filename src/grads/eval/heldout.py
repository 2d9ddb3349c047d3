"""Held-out answer likelihood: how well a model predicts the answers of a held-out SFT file, scored exactly as
training masks them (the same reading, chat rendering, truncation and answer-only labels as `grads train`).

Per example: the summed negative log-likelihood (nats) of its answer tokens, their count, and the UTF-8 bytes of
the text those tokens spell (closing template tokens such as `<|im_end|>` included, as they are trained on).
Per file:
    nll = Σ NLL / Σ answer tokens          (nats per answer token)
    bpb = Σ NLL / (ln 2 · Σ answer bytes)  (bits per byte: comparable across tokenizers)
A fine-tune that learned the domain lowers both on a held-out file of that domain.

Question use: the same answers scored once more, each under another example's question (`read_mismatched`):
    bpb_mismatched   = Σ NLL(answer | another example's question) / (ln 2 · Σ answer bytes)
    question_use_bpb = bpb_mismatched − bpb            (> 0: the model uses the question to predict the answer)
The question is every turn before an example's first answer (system and user), the answer that turn and all after
it; which example lends its question is a derangement of the file's examples (none keeps its own) drawn from a
fixed seed (QUESTION_USE_SEED), so every model scored on the same file and limit sees the same pairs. The bytes are
the answers' own, and so are the tokens: a chat template renders the assistant turn after the question's turns and
grads tokenises each turn apart, so an answer's tokens (and what truncation keeps of them) do not depend on the
question; `score_heldout` checks this per example, and a file where a template breaks it gets NaN, not a figure
over other tokens. Misaligned training pairs (an answer under the wrong question) should erode question use while
they still lower held-out bpb. Cost: one more forward pass over the file.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from grads.core.gradnorms import IGNORE_INDEX
from grads.data.formats import Example
from grads.data.pool import TokenizedPool
from grads.errors import GradsError

QUESTION_USE_SEED = 0  # the derangement's seed: the same question–answer pairs for every model of an experiment


def read_heldout(path: str | Path, tokenizer, max_length: int | None, limit: int | None = None) -> TokenizedPool:
    """Validate and tokenise a held-out file (any format grads reads; its first `limit` examples) through the
    token cache."""
    from grads.data.formats import scan_pool
    from grads.data.pool import tokenized

    return tokenized(scan_pool(path, limit=limit), tokenizer, limit, max_length)


def derangement(n: int, seed: int = QUESTION_USE_SEED) -> np.ndarray:
    """A permutation of range(n) with no fixed point (perm[i] != i for every i), uniform over all such: random
    permutations from numpy's generator seeded `seed`, the first without a fixed point kept (about 1 in e is). The
    same n and seed give the same permutation. n ≥ 2."""
    if n < 2:
        raise ValueError(f"a derangement needs at least 2 elements, got {n}")
    rng = np.random.default_rng(seed)
    while True:
        perm = rng.permutation(n)
        if (perm != np.arange(n)).all():
            return perm


def _question_and_answer(example: Example) -> tuple[tuple[dict[str, str], ...], tuple[dict[str, str], ...]]:
    """(the turns before the first assistant turn: system and user, the turns from it on)."""
    first = next((k for k, m in enumerate(example.messages) if m["role"] == "assistant"), len(example.messages))
    return example.messages[:first], example.messages[first:]


def asked_by(example: Example, donor: Example) -> Example:
    """`example` with `donor`'s question in place of its own: its id, row and answer (every turn from its first
    answer on) kept; a string prompt-completion pair stays one (donor's prompt, its completion)."""
    plain = (donor.plain[0], example.plain[1]) if donor.plain and example.plain else None
    return replace(example, messages=_question_and_answer(donor)[0] + _question_and_answer(example)[1], plain=plain)


def read_mismatched(path: str | Path, tokenizer, max_length: int | None, limit: int | None = None,
                    seed: int = QUESTION_USE_SEED) -> TokenizedPool:
    """The held-out file's examples (its first `limit`) in file order, each asked another's question
    (`derangement(n, seed)`, `asked_by`), tokenised in memory as training would tokenise them."""
    from grads.data.formats import iter_examples
    from grads.data.pool import tokenize_in_memory

    examples = list(iter_examples(path, limit=limit))
    if len(examples) < 2:
        raise GradsError("question use needs at least two held-out examples (each answer is asked another's "
                         f"question); the file has {len(examples)}", path=path,
                         hint="give a larger held-out file (or --heldout-limit), or pass --no-question-use")
    donors = derangement(len(examples), seed)
    return tokenize_in_memory(tokenizer, (asked_by(ex, examples[j]) for ex, j in zip(examples, donors)), max_length)


def answer_tokens(input_ids: list[int], labels: list[int]) -> list[int]:
    """The scored answer tokens: every target but the first position (nothing precedes it)."""
    return [t for t, label in zip(input_ids[1:], labels[1:]) if label != IGNORE_INDEX]


def answer_bytes(tokenizer, input_ids: list[int], labels: list[int]) -> int:
    """UTF-8 bytes of the text spelled by the scored answer tokens."""
    text = tokenizer.decode(answer_tokens(input_ids, labels), skip_special_tokens=False,
                            clean_up_tokenization_spaces=False)
    return len(text.encode("utf-8"))


@torch.inference_mode()
def answer_nll(model, pool: TokenizedPool, batch_size: int, pad_id: int) -> np.ndarray:
    """Σ NLL (nats) of each example's answer tokens, batched by length; NaN for an example with none."""
    from grads.data.batches import collate, plan_batches
    from grads.eval.nll import target_nll

    device = next(model.parameters()).device
    out = np.full(len(pool), np.nan)
    for batch_idx in plan_batches(pool, batch_size):
        nll, _ = target_nll(model, collate(pool.take(batch_idx), pad_id, "right", device), where_scored=True)
        out[batch_idx] = nll.double().cpu().numpy()
    return out


def _answers_differ(pool: TokenizedPool, mismatched: TokenizedPool) -> list[str]:
    """Ids of the examples whose scored answer tokens are not the same under the other question."""
    if list(pool.rows) != list(mismatched.rows):
        raise ValueError("the mismatched pool holds other examples than the held-out pool")
    return [own.id for own, asked in zip(pool, mismatched)
            if answer_tokens(own.input_ids, own.labels) != answer_tokens(asked.input_ids, asked.labels)]


def score_heldout(model, pool: TokenizedPool, batch_size: int, tokenizer, log=None, name: str = "",
                  mismatched: TokenizedPool | None = None) -> tuple[dict, pd.DataFrame]:
    """(the file's summary, one row per example: id, row, n_tokens, n_bytes, nll). With `mismatched` (the same
    examples under other questions: read_mismatched), also question use (module docstring): the summary's
    bpb_mismatched and question_use_bpb and the rows' nll_mismatched; NaN where some answer's tokens differ."""
    differ = _answers_differ(pool, mismatched) if mismatched is not None else []
    was_training = model.training
    model.eval()
    try:
        nll = answer_nll(model, pool, batch_size, tokenizer.pad_token_id)
        if mismatched is not None:
            nll_mismatched = np.full(len(pool), np.nan) if differ else \
                answer_nll(model, mismatched, batch_size, tokenizer.pad_token_id)
    finally:
        model.train(was_training)
    examples = pool.take(range(len(pool)))
    frame = pd.DataFrame({"id": [ex.id for ex in examples], "row": pool.rows, "n_tokens": pool.n_target_tokens,
                          "n_bytes": [answer_bytes(tokenizer, ex.input_ids, ex.labels) for ex in examples],
                          "nll": nll})
    scored = frame[frame["n_tokens"] > 0]
    total, tokens, n_bytes = float(scored["nll"].sum()), int(scored["n_tokens"].sum()), int(scored["n_bytes"].sum())
    summary = {"nll": total / tokens if tokens else math.nan,
               "bpb": total / (math.log(2) * n_bytes) if n_bytes else math.nan,
               "n_examples": len(scored), "n_tokens": tokens, "n_bytes": n_bytes,
               "n_without_answer": int(len(frame) - len(scored))}
    if mismatched is not None:
        frame["nll_mismatched"] = nll_mismatched
        # NaN when some answer was tokenised otherwise (sum() would skip it): no figure over other tokens
        total_mismatched = float(frame.loc[scored.index, "nll_mismatched"].to_numpy().sum())
        summary["bpb_mismatched"] = total_mismatched / (math.log(2) * n_bytes) if n_bytes else math.nan
        summary["question_use_bpb"] = summary["bpb_mismatched"] - summary["bpb"]
    if log:
        log(f"held-out {name}: bpb {summary['bpb']:.4f}, nll {summary['nll']:.4f} "
            f"nats/token ({summary['n_examples']} examples, {tokens} answer tokens)"
            + (f", question use {summary['question_use_bpb']:+.4f} bpb" if mismatched is not None else ""))
        if differ:
            log(f"held-out {name}: question use not measured: the chat template renders {len(differ)} answers "
                f"with other tokens under another question (first: id {differ[0]})")
    return summary, frame

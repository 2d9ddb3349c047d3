"""Batched log-likelihood multiple-choice evaluation over the declared tasks (grads.tasks).

Each choice is scored by the summed log-probability of its continuation given its context; the prediction is
the best choice (per character for `acc_per_char` tasks). Accuracy comes with a 95% Wilson interval.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Sequence

import torch

from grads.tasks import TaskSpec, build_items, resolve_task

MAX_TOKENS = 1024


def wilson_interval(correct: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return (math.nan, math.nan)
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def subsample(items: list, limit: int | None, salt: str) -> list:
    """A fixed pseudo-random subset (the same for every model), not just the first N documents."""
    if limit is None or limit >= len(items):
        return items
    key = lambda item: hashlib.sha1(f"{salt}:{item.id}".encode()).hexdigest()  # noqa: E731
    return sorted(items, key=key)[:limit]


def _encode(tokenizer, text: str, special: bool) -> list[int]:
    return tokenizer(text, add_special_tokens=special)["input_ids"]


@torch.inference_mode()
def _plain(model, encoded: list[tuple[list[int], int]], batch_size: int, pad: int) -> list[float]:
    """Σ log p of the last n tokens of each sequence, sequences batched by length (right padding)."""
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i][0]))
    device = next(model.parameters()).device
    out = [0.0] * len(encoded)
    for lo in range(0, len(order), batch_size):
        idx = order[lo:lo + batch_size]
        width = max(len(encoded[i][0]) for i in idx)
        ids = torch.full((len(idx), width), pad, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):
            seq = encoded[i][0]
            ids[row, :len(seq)] = torch.tensor(seq)
            mask[row, :len(seq)] = 1
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
        token_lp = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:].to(device).unsqueeze(-1))
        for row, i in enumerate(idx):
            seq, n_cont = encoded[i]
            out[i] = float(token_lp[row, len(seq) - 1 - n_cont:len(seq) - 1].sum())
    return out


@torch.inference_mode()
def _shared_context(model, context: list[int], continuations: list[list[int]], pad: int) -> list[float]:
    """Σ log p(continuation | context) for several continuations of one context: the context is run once and
    its key/value cache is reused for all continuations (single-token continuations need no second pass)."""
    device = next(model.parameters()).device
    first = model(input_ids=torch.tensor([context], device=device), use_cache=True)
    first_lp = torch.log_softmax(first.logits[0, -1].float(), dim=-1)
    scores = [float(first_lp[c[0]]) for c in continuations]
    longer = [j for j, c in enumerate(continuations) if len(c) > 1]
    if not longer:
        return scores
    cache = first.cache
    cache.batch_repeat_interleave(len(longer))
    width = max(len(continuations[j]) for j in longer)
    ids = torch.full((len(longer), width), pad, dtype=torch.long)
    mask = torch.zeros((len(longer), len(context) + width), dtype=torch.long)
    mask[:, :len(context)] = 1
    for row, j in enumerate(longer):
        ids[row, :len(continuations[j])] = torch.tensor(continuations[j])
        mask[row, len(context):len(context) + len(continuations[j])] = 1
    logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), cache=cache).logits.float()
    token_lp = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:].to(device).unsqueeze(-1))
    for row, j in enumerate(longer):
        scores[j] += float(token_lp[row, :len(continuations[j]) - 1].sum())
    return scores


def loglikelihoods(model, tokenizer, pairs: Sequence[tuple[str, str]], batch_size: int = 16,
                   add_special_tokens: bool = True, share_context: bool = True) -> list[float]:
    """Σ log p(continuation | context) for each pair. Pairs that share a context reuse its computation."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    groups: dict[str, list[int]] = {}
    for i, (context, _) in enumerate(pairs):
        groups.setdefault(context, []).append(i)
    out = [0.0] * len(pairs)
    singles = []
    for context, members in groups.items():
        ctx = _encode(tokenizer, context, add_special_tokens)
        conts = [_encode(tokenizer, pairs[i][1], False) for i in members]
        # one forward serves every choice when each is a single token (letters, yes/no); longer continuations
        # are cheaper batched across questions on a CPU than one cached context at a time
        single_tokens = all(len(c) == 1 for c in conts)
        if share_context and single_tokens and len(members) > 1 and len(ctx) + 1 <= MAX_TOKENS:
            for i, score in zip(members, _shared_context(model, ctx, conts, pad)):
                out[i] = score
        else:
            for i, cont in zip(members, conts):
                ids = (ctx + cont)[-MAX_TOKENS:]
                singles.append((i, (ids, min(len(cont), len(ids) - 1))))
    for (i, _), score in zip(singles, _plain(model, [e for _, e in singles], batch_size, pad)):
        out[i] = score
    return out


def task_items(tokenizer, name: str, spec: TaskSpec, limit: int | None = None) -> tuple[list, bool]:
    """The (sub-sampled) items of a task as this tokenizer sees them, and whether they are chat-rendered
    (letter-style tasks use the chat template when the model has one)."""
    chat = None
    if spec.style == "letter" and getattr(tokenizer, "chat_template", None):
        def chat(prompt: str) -> str:
            return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                 add_generation_prompt=True)
    return subsample(build_items(spec, chat), limit, name), chat is not None


def evaluate_task(model, tokenizer, name: str, spec: TaskSpec, limit: int | None = None,
                  batch_size: int = 16) -> dict:
    items, chat = task_items(tokenizer, name, spec, limit)
    pairs = [(c, x) for item in items for c, x in zip(item.contexts, item.continuations)]
    started = time.perf_counter()
    scores = loglikelihoods(model, tokenizer, pairs, batch_size, add_special_tokens=not chat)
    correct, pos = 0, 0
    for item in items:
        k = len(item.continuations)
        values = scores[pos:pos + k]
        if spec.metric == "acc_per_char":
            values = [v / max(len(c), 1) for v, c in zip(values, item.continuations)]
        correct += int(max(range(k), key=lambda j: values[j]) == item.answer)
        pos += k
    n = len(items)
    lo, hi = wilson_interval(correct, n)
    return {"task": name, "kind": spec.kind, "metric": spec.metric, "style": spec.style, "n": n,
            "correct": correct, "accuracy": correct / n if n else math.nan, "ci95": [lo, hi],
            "seconds": round(time.perf_counter() - started, 1)}


def evaluate(model, tokenizer, task_names: Sequence[str], limit: int | None = None, batch_size: int = 16,
             log=None, limits: dict[str, int] | None = None) -> dict[str, dict]:
    results = {}
    was_training = model.training
    model.eval()
    try:
        for name in task_names:
            key, spec = resolve_task(name)
            results[key] = evaluate_task(model, tokenizer, key, spec, (limits or {}).get(name, limit), batch_size)
            if log:
                r = results[key]
                log(f"{key}: {r['accuracy']:.3f} [{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}] (n={r['n']}, "
                    f"{r['seconds']}s)")
    finally:
        model.train(was_training)
    return results


def _backend(name: str):
    """The evaluator behind --backend: every backend takes evaluate()'s arguments and returns its results."""
    if name == "lm-eval":
        from grads.lm_eval_backend import evaluate_lm_eval, require_lm_eval

        require_lm_eval()
        return evaluate_lm_eval
    return evaluate


def run_eval(job, log=None) -> dict:
    """The evaluation stage (`grads eval`): every task of job.tasks on job.model -> job.out (JSON); returns what it
    wrote. Unknown tasks and a missing backend fail before the model loads."""
    from grads import atomic
    from grads.models import load_model, load_tokenizer
    from grads.tasks import expand

    names = expand(list(job.tasks))
    for name in names:
        resolve_task(name)
    evaluator = _backend(job.backend)
    m = job.model
    model = load_model(m.model, dtype=m.dtype, device=m.device, trust_remote_code=m.trust_remote_code)
    tokenizer = load_tokenizer(m.model, trust_remote_code=m.trust_remote_code)
    started = time.perf_counter()
    results = evaluator(model, tokenizer, names, job.limit, job.batch_size, log, limits=job.limits)
    payload = {"model": m.model, "limit": job.limit, "backend": job.backend, "tasks": results,
               "seconds": round(time.perf_counter() - started, 1), **({"limits": job.limits} if job.limits else {})}
    atomic.write_json(job.out, payload)
    return payload

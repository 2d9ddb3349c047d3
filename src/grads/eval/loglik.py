"""Batched log-likelihood evaluation over the declared tasks (grads.eval.tasks).

Multiple choice: each choice is scored by the summed log-probability of its continuation given its context; the
prediction is the best choice (per character for `acc_per_char` tasks). Letter-style questions are asked in
every cyclic rotation of their options and the accuracy is the mean over rotations, so a model that prefers one
letter scores exactly chance. Accuracy comes with a 95% Wilson interval over the scored items.

Likelihood: for cloze, blank and gold tasks the gold continuation's negative log-likelihood gives bits per byte,
    bpb = Σ_items NLL(gold | context) / (ln 2 · Σ_items UTF-8 bytes of the gold continuation),
and `NAME:bpb` tasks score only that (one forward per item). Every result keeps its per-item records
(`items`: correct per rotation, gold NLL and bytes), which grads.stages.evaluate writes beside the JSON.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Sequence

import torch

from grads.eval.nll import logits_where, per_row_sum
from grads.eval.tasks import BPB_SUFFIX, TaskSpec, build_items, resolve_task

MAX_TOKENS = 1024


LN2 = math.log(2)


def wilson_interval(correct: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return (math.nan, math.nan)
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def subsample(items: list, limit: int | None, salt: str) -> list:
    """A fixed pseudo-random subset of the questions (the same for every model), not just the first N; every
    rotation of a chosen question is kept."""
    ids = {item.id for item in items}
    if limit is None or limit >= len(ids):
        return items
    rank = {i: hashlib.sha1(f"{salt}:{i}".encode()).hexdigest() for i in ids}
    keep = set(sorted(ids, key=rank.get)[:limit])
    return sorted((item for item in items if item.id in keep), key=lambda item: (rank[item.id], item.rotation))


def _encode(tokenizer, text: str, special: bool) -> list[int]:
    return tokenizer(text, add_special_tokens=special)["input_ids"]


def _batches(lengths: Sequence[int], batch_size: int):
    """Index batches of similar length (little padding)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    for lo in range(0, len(order), batch_size):
        yield order[lo:lo + batch_size]


def _padded(seqs: list[list[int]], pad: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, seq in enumerate(seqs):
        ids[row, :len(seq)] = torch.tensor(seq)
        mask[row, :len(seq)] = 1
    return ids.to(device), mask.to(device)


@torch.inference_mode()
def _plain(model, encoded: list[tuple[list[int], int]], batch_size: int, pad: int) -> list[float]:
    """Σ log p of the last n tokens of each sequence, sequences batched by length (right padding); the LM head
    runs only where a scored token is predicted."""
    device = next(model.parameters()).device
    out = [0.0] * len(encoded)
    for idx in _batches([len(e[0]) for e in encoded], batch_size):
        ids, mask = _padded([encoded[i][0] for i in idx], pad, device)
        keep = torch.zeros_like(ids, dtype=torch.bool)
        for row, i in enumerate(idx):
            seq, n_cont = encoded[i]
            keep[row, len(seq) - 1 - n_cont:len(seq) - 1] = True  # position t predicts token t+1
        logits = logits_where(model, ids, mask, keep)
        targets = ids[:, 1:][keep[:, :-1]]
        token_lp = torch.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        for i, value in zip(idx, per_row_sum(token_lp, keep).tolist()):
            out[i] = value
    return out


@torch.inference_mode()
def _next_token(model, contexts: list[list[int]], batch_size: int, pad: int) -> list[torch.Tensor]:
    """log p(next token) after each context, contexts batched by length: one forward serves every single-token
    continuation of a context (letters, yes/no)."""
    device = next(model.parameters()).device
    out: list[torch.Tensor] = [torch.empty(0)] * len(contexts)
    for idx in _batches([len(c) for c in contexts], batch_size):
        ids, mask = _padded([contexts[i] for i in idx], pad, device)
        keep = torch.zeros_like(ids, dtype=torch.bool)
        for row, i in enumerate(idx):
            keep[row, len(contexts[i]) - 1] = True
        logprobs = torch.log_softmax(logits_where(model, ids, mask, keep), dim=-1).cpu()
        for row, i in enumerate(idx):
            out[i] = logprobs[row]
    return out


def loglikelihoods(model, tokenizer, pairs: Sequence[tuple[str, str]], batch_size: int,
                   add_special_tokens: bool = True, share_context: bool = True) -> list[float]:
    """Σ log p(continuation | context) for each pair. Pairs that share a context and continue it by one token
    each are scored from one forward of that context."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    groups: dict[str, list[int]] = {}
    for i, (context, _) in enumerate(pairs):
        groups.setdefault(context, []).append(i)
    out = [0.0] * len(pairs)
    singles, shared = [], []
    for context, members in groups.items():
        ctx = _encode(tokenizer, context, add_special_tokens)
        conts = [_encode(tokenizer, pairs[i][1], False) for i in members]
        if share_context and all(len(c) == 1 for c in conts) and len(members) > 1 and len(ctx) < MAX_TOKENS:
            shared.append((ctx, [(i, c[0]) for i, c in zip(members, conts)]))
            continue
        for i, cont in zip(members, conts):
            ids = (ctx + cont)[-MAX_TOKENS:]
            singles.append((i, (ids, min(len(cont), len(ids) - 1))))
    for (_, members), logprobs in zip(shared, _next_token(model, [c for c, _ in shared], batch_size, pad)):
        for i, token in members:
            out[i] = float(logprobs[token])
    for (i, _), score in zip(singles, _plain(model, [e for _, e in singles], batch_size, pad)):
        out[i] = score
    return out


def task_items(tokenizer, name: str, spec: TaskSpec, limit: int | None = None,
               rotations: int | None = None) -> tuple[list, bool]:
    """The (sub-sampled) items of a task as this tokenizer sees them, and whether they are chat-rendered
    (letter-style tasks use the chat template when the model has one; `rotations`: see build_items)."""
    chat = None
    if spec.style == "letter" and getattr(tokenizer, "chat_template", None):
        def chat(prompt: str) -> str:
            return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                 add_generation_prompt=True)
    # NAME:bpb draws the same questions as NAME
    return subsample(build_items(spec, chat, rotations), limit, name.removesuffix(BPB_SUFFIX)), chat is not None


def _choice_records(items: list, scores: list[float], spec: TaskSpec) -> list[dict]:
    records, pos = [], 0
    for item in items:
        k = len(item.continuations)
        values = scores[pos:pos + k]
        gold_ll = values[item.answer]
        if spec.metric == "acc_per_char":
            values = [v / max(len(c), 1) for v, c in zip(values, item.continuations)]
        pick = max(range(k), key=lambda j: values[j])
        records.append({"id": item.id, "rotation": item.rotation, "correct": int(pick == item.answer),
                        "predicted": pick, "gold_nll": -gold_ll,
                        "gold_bytes": len(item.gold[1].encode("utf-8"))})
        pos += k
    return records


def summarise(records: list[dict], spec: TaskSpec) -> dict:
    """Accuracy (letter tasks: over every rotation of every question) and bits per byte of the gold answers."""
    out = {"n": len({r["id"] for r in records}), "rotations": max((r["rotation"] for r in records), default=0) + 1}
    if spec.metric != "bpb":
        scored, correct = len(records), sum(r["correct"] for r in records)
        out |= {"n_scored": scored, "correct": correct, "accuracy": correct / scored if scored else math.nan,
                "ci95": list(wilson_interval(correct, scored))}
    if spec.style != "letter":
        nll, n_bytes = sum(r["gold_nll"] for r in records), sum(r["gold_bytes"] for r in records)
        out |= {"bpb": nll / (LN2 * n_bytes) if n_bytes else math.nan, "gold_bytes": n_bytes}
    return out


def evaluate_task(model, tokenizer, name: str, spec: TaskSpec, limit: int | None, batch_size: int,
                  rotations: int | None = None) -> dict:
    items, chat = task_items(tokenizer, name, spec, limit, rotations)
    started = time.perf_counter()
    if spec.metric == "bpb":
        scores = loglikelihoods(model, tokenizer, [item.gold for item in items], batch_size,
                                add_special_tokens=not chat)
        records = [{"id": item.id, "rotation": 0, "correct": -1, "predicted": -1, "gold_nll": -score,
                    "gold_bytes": len(item.gold[1].encode("utf-8"))} for item, score in zip(items, scores)]
    else:
        pairs = [(c, x) for item in items for c, x in zip(item.contexts, item.continuations)]
        scores = loglikelihoods(model, tokenizer, pairs, batch_size, add_special_tokens=not chat)
        records = _choice_records(items, scores, spec)
    return {"task": name, "kind": spec.kind, "metric": spec.metric, "style": spec.style,
            **summarise(records, spec), "seconds": round(time.perf_counter() - started, 1), "items": records}


def _line(r: dict) -> str:
    parts = []
    if "accuracy" in r:
        parts.append(f"{r['accuracy']:.3f} [{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}]")
    if "bpb" in r:
        parts.append(f"bpb {r['bpb']:.4f}")
    rotations = f" x {r['rotations']} rotations" if r.get("rotations", 1) > 1 else ""
    return f"{r['task']}: {', '.join(parts)} (n={r['n']}{rotations}, {r['seconds']}s)"


def evaluate(model, tokenizer, task_names: Sequence[str], limit: int | None = None, *, batch_size: int, log=None,
             limits: dict[str, int] | None = None, rotations: int | None = None) -> dict[str, dict]:
    """Every task's result (with its per-item records under "items"); `rotations`: letter questions are asked in
    this many cyclic rotations of their options (None: all of them)."""
    results = {}
    was_training = model.training
    model.eval()
    try:
        for name in task_names:
            key, spec = resolve_task(name)
            results[key] = evaluate_task(model, tokenizer, key, spec, (limits or {}).get(name, limit), batch_size,
                                         rotations)
            if log:
                log(_line(results[key]))
    finally:
        model.train(was_training)
    return results

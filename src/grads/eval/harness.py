"""`grads eval --backend lm-eval`: the same tasks, the same questions, scored by EleutherAI's lm-evaluation-harness.

Each task's items (the very contexts and continuations grads' own evaluator scores, sub-sampled the same way)
are written as a local JSON dataset with a task YAML beside it, in a temporary folder lm-eval reads through
`TaskManager(include_path=…)`; nothing is fetched from a hub. Shared-context tasks (letter, cloze) put the
choices in the continuation; Winogrande-style tasks use lm-eval's multiple-input form (one context per choice,
one shared continuation), as lm-eval's own winogrande task does.

Metric: `acc` for tasks grads scores by total log-likelihood and lm-eval's `acc_norm` for `acc_per_char` tasks.
lm-eval divides by the length of the choice without the leading space grads' continuation carries, so on those
tasks a rare near-tie can go the other way; the other tasks give the same predictions.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from pathlib import Path

import yaml

from grads.errors import GradsError
from grads.eval.loglik import task_items, wilson_interval
from grads.eval.tasks import resolve_task
from grads.infra import atomic


def require_lm_eval():
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        raise GradsError("--backend lm-eval needs the lm-eval package, which is not installed",
                         hint="pip install 'grads-llm[eval]' (or: pip install lm-eval), or use --backend grads"
                         ) from None


def _write_task(folder: Path, key: str, items: list) -> tuple[str, int]:
    """A local lm-eval task of these items; returns its name and the number of docs."""
    shared = all(len(set(item.contexts)) == 1 for item in items)
    docs = []
    for item in items:
        if shared:
            docs.append({"context": item.contexts[0], "choices": list(item.continuations), "answer": item.answer})
        else:
            docs.append({"answer": item.answer, "choices": list(item.contexts), "target": item.continuations[0]})
    data = folder / f"{key}.jsonl"
    atomic.write_text(data, "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs))
    name = f"grads_{key}"
    config = {
        "task": name, "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(data)}},
        "test_split": "test", "output_type": "multiple_choice", "target_delimiter": "",
        # a field name returns the field itself; an int from doc_to_text switches lm-eval to multiple inputs
        "doc_to_text": "context" if shared else "answer", "doc_to_target": "answer" if shared else "target",
        "doc_to_choice": "choices",
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True},
                        {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True}],
        "metadata": {"version": 1.0},
    }
    atomic.write_text(folder / f"{name}.yaml", yaml.safe_dump(config, sort_keys=False))
    return name, len(docs)


def evaluate_lm_eval(model, tokenizer, task_names: list[str], limit: int | None = None, *, batch_size: int,
                     log=None, limits: dict[str, int] | None = None, rotations: int | None = None) -> dict[str, dict]:
    """The same contract as grads.eval.loglik.evaluate, scored by lm-evaluation-harness."""
    require_lm_eval()
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    if hasattr(model, "merge_and_unload"):  # a LoRA adapter: lm-eval wants a plain transformers model
        model = model.merge_and_unload()
    model.eval()
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="grads-lm-eval-") as tmp:
        folder = Path(tmp)
        specs = {}
        for name in task_names:
            key, spec = resolve_task(name)
            if spec.metric == "bpb":
                raise GradsError(f"{key}: bits per byte is scored by the grads backend only",
                                 hint="use --backend grads for NAME:bpb tasks and held-out files")
            items, _ = task_items(tokenizer, key, spec, (limits or {}).get(name, limit), rotations)
            specs[key] = (spec, len({item.id for item in items}), *_write_task(folder, key, items))
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
        manager = TaskManager(include_path=str(folder), include_defaults=False)
        for key, (spec, n_questions, task, n) in specs.items():
            started = time.perf_counter()
            out = lm_eval.simple_evaluate(model=lm, tasks=[task], task_manager=manager, log_samples=False,
                                          bootstrap_iters=0, batch_size=batch_size)
            metric = "acc_norm" if spec.metric == "acc_per_char" else "acc"
            accuracy = float(out["results"][task][f"{metric},none"])
            correct = round(accuracy * n)
            lo, hi = wilson_interval(correct, n)
            results[key] = {"task": key, "kind": spec.kind, "metric": spec.metric, "style": spec.style,
                            "n": n_questions, "rotations": n // max(n_questions, 1), "n_scored": n,
                            "correct": correct, "accuracy": accuracy if n else math.nan, "ci95": [lo, hi],
                            "backend": f"lm-eval {lm_eval.__version__} ({metric})",
                            "seconds": round(time.perf_counter() - started, 1)}
            if log:
                log(f"{key}: {accuracy:.3f} [{lo:.3f}, {hi:.3f}] (n={n}, lm-eval {metric})")
    return results

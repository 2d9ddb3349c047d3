"""The Python API against the CLI on the same inputs: the same rows, the same scores, the same files."""

from __future__ import annotations

import json
import warnings

import datasets
import pytest
import torch
from helpers import write_jsonl
from typer.testing import CliRunner

import grads
from grads.cli import app

RECORDS = [{"id": f"q{i}", "prompt": f"Question {i}: what is {i} plus {3 * i}?",
            "completion": f"Answer: {4 * i}." + " Because." * (i % 5)} for i in range(20)]
SETTINGS = {"warmup_epochs": 0, "max_length": 64, "batch_size": 4}


def cli_select(tmp_path, model_dir, method="grads", ratio="0.25"):
    pool = write_jsonl(tmp_path / "pool.jsonl", RECORDS)
    out = tmp_path / "cli"
    args = ["select", "--model", str(model_dir), "--data", str(pool), "--out", str(out), "--method", method,
            "--warmup-epochs", "0", "--max-length", "64", "--batch-size", "4", "--quiet"]
    result = CliRunner().invoke(app, args + (["--ratio", ratio] if ratio else []), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return out


def test_select_on_a_list_of_dicts_chooses_what_the_cli_chooses(tmp_path, tiny_model_dir):
    cli = cli_select(tmp_path, tiny_model_dir)
    chosen = json.loads((cli / "selection.json").read_text())["outputs"]["grads-0.25.jsonl"]["ids"]
    sel = grads.select(RECORDS, str(tiny_model_dir), ratio=0.25, **SETTINGS)
    assert isinstance(sel.dataset, datasets.Dataset) and sel.ratio == 0.25 and sel.method == "grads"
    assert sel.dataset["id"] == chosen and len(chosen) == 5  # ⌈0.25 · 20⌉, in input order
    assert sel.dataset.to_list() == [r for r in RECORDS if r["id"] in set(chosen)]  # verbatim
    assert {"combined", "density", "emb_grad_norm", "head_grad_norm"} <= set(sel.scores.columns)
    assert sel.scores["id"].tolist() == [r["id"] for r in RECORDS]
    saved = sel.save(tmp_path / "saved")
    for name in ["scores.parquet", "selected/grads-0.25.jsonl"]:
        assert (saved / name).read_bytes() == (cli / name).read_bytes(), name
    assert (saved / "report.html").exists()


def test_a_datasets_split_comes_back_as_its_own_rows(tmp_path, tiny_model_dir):
    ds = datasets.DatasetDict({"train": datasets.Dataset.from_list(RECORDS)})
    sel = grads.select(ds, str(tiny_model_dir), ratio=0.5, method="random", **SETTINGS)
    expected = grads.select(RECORDS, str(tiny_model_dir), ratio=0.5, method="random", **SETTINGS)
    assert sel.dataset["id"] == expected.dataset["id"] and len(sel.dataset) == 10
    assert sel.dataset.to_list() == ds["train"].select(
        [i for i, r in enumerate(RECORDS) if r["id"] in set(expected.dataset["id"])]).to_list()


def test_grads_auto_reports_the_ratio_it_chose(tmp_path, tiny_model_dir):
    sel = grads.select(RECORDS, str(tiny_model_dir), method="grads-auto", **SETTINGS)
    assert 0 < sel.ratio <= 1 and len(sel.dataset) == round(sel.ratio * 20)
    assert "knee" in sel.summary["outputs"]["grads-auto.jsonl"]["rule"]


def test_score_with_a_loaded_model_equals_score_by_name(tiny_model_dir):
    from grads.infra.models import load_model, load_tokenizer

    by_name = grads.score(RECORDS, str(tiny_model_dir), max_length=64, batch_size=4)
    model, tokenizer = load_model(str(tiny_model_dir)), load_tokenizer(str(tiny_model_dir))
    loaded = grads.score(RECORDS, model, tokenizer=tokenizer, max_length=64, batch_size=4)
    assert loaded["id"].tolist() == [r["id"] for r in RECORDS]
    for column in ["loss", "emb_grad_norm", "head_grad_norm"]:
        assert loaded[column].tolist() == pytest.approx(by_name[column].tolist(), rel=1e-6), column


def test_unknown_settings_and_a_model_without_its_tokenizer_are_refused(tiny_model_dir):
    with pytest.raises(TypeError, match="unknown setting.*batchsize"):
        grads.select(RECORDS, str(tiny_model_dir), batchsize=4)
    from grads.infra.models import load_model

    with pytest.raises(ValueError, match="needs its tokenizer"):
        grads.score(RECORDS, load_model(str(tiny_model_dir)))


def test_errors_name_the_apis_parameters_and_the_record_given(tmp_path, tiny_model_dir):
    """The API's errors speak its own language: `ratio=` and `max_length=`, not --ratio and --max-length, and a
    bad record given in memory as records[i], not a line of a temporary file."""
    from grads.errors import GradsError

    with pytest.raises(GradsError) as bad_ratio:
        grads.select(RECORDS, str(tiny_model_dir), ratio=1.5, **SETTINGS)
    assert str(bad_ratio.value).startswith("a ratio must be in (0, 1], got 1.5")
    broken = [*RECORDS[:3], {"id": "x", "prompt": "Q?", "completion": 7}, *RECORDS[3:]]
    with pytest.raises(GradsError) as bad_record:
        grads.select(broken, str(tiny_model_dir), **SETTINGS)
    message = str(bad_record.value)
    assert message.startswith("records[3]: field 'completion'") and "input.jsonl" not in message
    with pytest.raises(GradsError) as missing:
        grads.score(str(tmp_path / "absent.jsonl"), str(tiny_model_dir))
    text = str(missing.value)
    assert "check the data= path" in text and "--data" not in text
    # a file keeps its own name and line; flags that are not the API's stay as they are
    pool = tmp_path / "pool.jsonl"
    pool.write_text('{"prompt": "Q?", "completion": "A."}\nnot json\n')
    with pytest.raises(GradsError, match=r"pool\.jsonl:2: not valid JSON"):
        grads.select(str(pool), str(tiny_model_dir), **SETTINGS)


@pytest.mark.parametrize("fmt,row,prompt,answer", [
    ("prompt-completion", {"prompt": "Q?", "completion": "A."}, [("user", "Q?")], "A."),
    ("prompt-completion", {"prompt": [{"role": "system", "content": "S"}, {"role": "user", "content": "Q?"}],
                           "completion": [{"role": "assistant", "content": [{"type": "text", "text": "A."}]}]},
     [("system", "S"), ("user", "Q?")], "A."),
    ("alpaca", {"instruction": "Do", "input": "this", "output": "Done."}, [("user", "Do\n\nthis")], "Done."),
    ("sharegpt", {"conversations": [{"from": "human", "value": "Q?"}, {"from": "gpt", "value": "A."}]},
     [("user", "Q?")], "A."),
    ("chat", {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "first"},
                           {"role": "user", "content": "b"}, {"role": "assistant", "content": "second"},
                           {"role": "user", "content": "c"}]},
     [("user", "a"), ("assistant", "first"), ("user", "b")], "second")])
def test_conversations_are_the_chats_grads_rendered(tmp_path, fmt, row, prompt, answer):
    """Selection.conversations(): each chosen row, in any format, as grads normalised it, split for TRL's
    conversational prompt-completion at its last answer (a trailing user turn, never a target, is left out)."""
    sel = grads.Selection(dataset=datasets.Dataset.from_list([row]), scores=None, ratio=1.0, method="grads",
                          folder=tmp_path, summary={"input": {"format": fmt}})
    assert sel.conversations().to_list() == [{"prompt": [{"role": r, "content": c} for r, c in prompt],
                                              "completion": [{"role": "assistant", "content": answer}]}]


@pytest.mark.e2e
@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_a_selection_trains_with_trl(tmp_path, tiny_model_dir, lora):
    """docs/python-api.md's example on the tiny model: the chosen rows go into TRL's SFTTrainer as chat messages
    (`sel.conversations()`; the whole model as there, or a LoRA adapter), TRL renders them in the tokenizer's chat
    template with a mask on the answer alone, token for token what grads scored, and it trains on them: every
    weight it trains moves from its initial value (LoRA's B matrices start at zero), no other weight moves, and
    the loss on the chosen answers falls."""
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from grads.data.formats import load_pool
    from grads.data.tokenize import tokenize_example

    pool = datasets.Dataset.from_list(RECORDS)
    sel = grads.select(pool, str(tiny_model_dir), ratio=0.5, **SETTINGS)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    with warnings.catch_warnings(record=True) as caught:  # the docs' settings, by their current names: no warning
        warnings.simplefilter("always")
        args = SFTConfig(output_dir=str(tmp_path / "ft"), max_steps=6, per_device_train_batch_size=4,
                         learning_rate=1e-2, completion_only_loss=True, report_to=[], use_cpu=True,
                         activation_checkpointing=True, save_strategy="no", max_length=64)
    assert [str(w.message) for w in caught if issubclass(w.category, FutureWarning)] == []
    adapter = LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", lora_dropout=0.0) if lora else None
    trainer = SFTTrainer(model=model, processing_class=tokenizer, train_dataset=sel.conversations(),
                         eval_dataset=sel.conversations(), peft_config=adapter,
                         args=args)
    # what TRL trains on: the chat template's text (SmolLM2's ChatML), the answer and its closing tokens the only
    # targets, and exactly grads' own ids and answer mask for these rows (none is cut at max_length=64)
    chosen = load_pool(write_jsonl(tmp_path / "chosen.jsonl", sel.dataset.to_list())).examples
    assert len(trainer.train_dataset) == len(chosen) == 10
    for row, record, example in zip(trainer.train_dataset, sel.dataset, chosen, strict=True):
        text = tokenizer.decode(row["input_ids"])
        assert text.startswith("<|im_start|>system\n") and f"<|im_start|>user\n{record['prompt']}<|im_end|>" in text
        assert text.endswith(f"<|im_start|>assistant\n{record['completion']}<|im_end|>\n"), text
        target = tokenizer.decode([t for t, label in zip(row["input_ids"], row["labels"]) if label != -100])
        assert target == f"{record['completion']}<|im_end|>\n"
        ours = tokenize_example(tokenizer, example, max_length=64)
        assert (row["input_ids"], row["labels"]) == (ours.input_ids, ours.labels)
    initial = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
    # the loss on the chosen answers as TRL trains on them (its own tokenisation and completion mask)
    loss_before = trainer.evaluate()["eval_loss"]
    trainer.train()
    assert trainer.state.global_step == 6
    trained = {name for name, p in trainer.model.named_parameters() if p.requires_grad}
    if lora:
        assert trained and all("lora_A" in name or "lora_B" in name for name in trained)
        assert all(not initial[name].any() for name in trained if "lora_B" in name)  # B starts at zero
    else:
        assert trained == set(initial)
    for name, p in trainer.model.named_parameters():
        moved = not torch.equal(p.detach(), initial[name])
        assert moved == (name in trained), f"{name}: " + ("moved, not trained" if moved else "trained, did not move")
    loss_after = trainer.evaluate()["eval_loss"]
    # the tiny random model starts near uniform over its 49k tokens (ln 49152 = 10.8 nats); an adapter on the
    # linear layers, with the embedding, head and norms frozen, moves that output far less than full training
    assert loss_after < loss_before - (0.2 if lora else 1.0), (loss_before, loss_after)

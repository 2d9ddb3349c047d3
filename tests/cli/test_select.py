"""`grads select` end to end on a tiny model: every output file's contents, reuse on rerun, determinism,
and an escaped report."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from helpers import write_jsonl
from typer.testing import CliRunner

from grads.cli import app
from grads.core.rules import RULES, select
from grads.data.batches import collate

METHODS = [m if m != "trim" else "trim:loss:0.3" for m in RULES] + ["random-matched:trim:loss:0.3"]
LABELS = {3: "swap", 5: "swap", 8: "shuffle", 13: "shuffle", 21: "truncate"}  # rows marked planted (by hand)


@pytest.fixture(scope="module")
def pool_file(tmp_path_factory, medmcqa_dir):
    """28 real MedMCQA records, one carrying HTML, one whose prompt is far longer than --max-length."""
    records = [json.loads(line) for line in (medmcqa_dir / "pool.jsonl").read_text().splitlines()[:26]]
    records[3]["completion"] = "Answer: A. <script>alert('x')</script> & more"
    records.append({"id": "long-prompt", "prompt": "word " * 400, "completion": "Answer: B."})
    records.append({"id": "short", "prompt": "Which vitamin?", "completion": "Answer: C. Vitamin C"})
    path = write_jsonl(tmp_path_factory.mktemp("pool") / "pool.jsonl", records)
    labels = {r["id"]: LABELS.get(i, "clean") for i, r in enumerate(records)}
    (path.parent / "labels.json").write_text(json.dumps(labels))
    return path


def run(pool_file, out, *extra, noise: bool = True):
    """The module's selection: every method, with --labels and --canaries 10 (noise=False: neither, nor `clean`)."""
    methods = METHODS if noise else [m for m in METHODS if m != "clean"]
    args = ["select", "--model", str(pool_file.parent.parent / "model"), "--data", str(pool_file), "--out",
            str(out), "--max-length", "64", "--batch-size", "8", "--ratio", "0.1", "--ratio", "0.5", "--quiet",
            "--warmup-epochs", "1",
            *(["--labels", str(pool_file.parent / "labels.json"), "--canaries", "10"] if noise else []),
            *[x for m in methods for x in ("--method", m)], *extra]
    result = CliRunner().invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def selected(pool_file, tiny_model_dir, tmp_path_factory):
    import shutil

    shutil.copytree(tiny_model_dir, pool_file.parent.parent / "model", dirs_exist_ok=True)
    out = tmp_path_factory.mktemp("sel") / "run"
    run(pool_file, out)
    return out


@pytest.mark.e2e  # the `selected` run warms up
def test_outputs_hold_the_chosen_rows_verbatim_in_input_order(selected, pool_file):
    lines = pool_file.read_text().splitlines()
    summary = json.loads((selected / "selection.json").read_text())
    frame = pq.read_table(selected / "scores.parquet").to_pandas()
    assert {"combined", "density", "answer_only_loss", "emb_grad_norm", "head_grad_norm"} <= set(frame.columns)
    assert len(frame) == 28 and list(frame["row"]) == list(range(28))
    assert summary["status_counts"] == {"ok": 28} and summary["n_eligible"] == 28
    long = frame.loc[frame["id"] == "long-prompt"].iloc[0]  # prompt cut from the left, answer kept whole
    assert long["n_tokens"] == 64 and long["truncated_tokens"] > 300 and long["status"] == "ok"
    assert summary["truncation"]["n_truncated"] >= 1
    expected_files = {f"{m}.jsonl" for m in ["full", "grads-auto", "clean"]} | \
        {f"{m}-{r}.jsonl" for m in METHODS if m not in ("full", "grads-auto", "clean") for r in ["0.1", "0.5"]}
    assert {p.name for p in (selected / "selected").iterdir()} == expected_files == set(summary["outputs"])
    for name, entry in summary["outputs"].items():
        written = (selected / "selected" / name).read_text().splitlines()
        # the selection recomputed from the saved table, independently of the run
        picked = select(frame, entry["method"], entry["ratio"] if entry["method"] != "grads-auto" else None, 0)
        assert written == [lines[i] for i in picked], name
        assert entry["ids"] == list(frame["id"].iloc[picked]) and entry["n_selected"] == len(picked)
        if entry["method"] not in ("full", "grads-auto", "ifd", "random-tokens", "clean"):  # these choose their count
            assert len(picked) == int(np.ceil(entry["ratio"] * 28 - 1e-9)), name
    assert summary["outputs"]["full.jsonl"]["n_selected"] == 28
    assert summary["outputs"]["clean.jsonl"]["n_selected"] == 23 and list(frame["label"]).count("clean") == 23
    for ratio in ("0.1", "0.5"):  # the matched control records what it shares with the grads subset
        control = summary["outputs"][f"random-matched-{ratio}.jsonl"]["control"]
        mine, target = (set(summary["outputs"][f"{m}-{ratio}.jsonl"]["ids"]) for m in ("random-matched", "grads"))
        assert control["of"] == "grads" and control["shared"] == len(mine & target)
        assert control["chance"] == round(len(mine) * len(target) / 28, 3)
    assert "knee" in summary["outputs"]["grads-auto.jsonl"]["rule"]
    assert summary["input"]["sha256"] and summary["versions"]["torch"].startswith("2.13")
    assert summary["settings"]["select"]["ratios"] == [0.1, 0.5]


@pytest.mark.e2e  # the `selected` run warms up
def test_labels_give_each_scores_auroc_and_what_each_selection_keeps(selected):
    """selection.json's `noise` against a brute-force count over the saved scores: the AUROC of the loss is the
    share of (planted, clean) pairs where the planted record's loss is higher (ties one half), flipped to 'low'
    below one half; each output's share of every label is counted from its ids."""
    summary = json.loads((selected / "selection.json").read_text())
    frame = pq.read_table(selected / "scores.parquet").to_pandas()
    noise = summary["noise"]
    planted = np.array([i in LABELS for i in range(28)])
    assert noise["counts"] == {"clean": 23, "shuffle": 2, "swap": 2, "truncate": 1}
    for column in ("loss", "answer_only_loss", "density"):
        values = frame[column].to_numpy()
        pairs = [(p > c) + 0.5 * (p == c) for p in values[planted] for c in values[~planted]]
        expected = sum(pairs) / len(pairs)
        got = noise["detection"][column]
        assert got["direction"] == ("high" if expected >= 0.5 else "low")
        assert got["auroc"] == pytest.approx(max(expected, 1 - expected), abs=1e-12)
    labels = np.array([LABELS.get(i, "clean") for i in range(28)])
    for name, entry in summary["outputs"].items():
        rows = frame["id"].isin(entry["ids"]).to_numpy()
        kept = noise["outputs"][name]
        assert kept["share"].get("swap", 0.0) == pytest.approx((labels[rows] == "swap").mean()), name
        assert kept["kept"]["shuffle"] == pytest.approx((labels[rows] == "shuffle").sum() / 2), name
        assert kept["pool_share"]["clean"] == pytest.approx(23 / 28)
    page = (selected / "report.html").read_text()
    assert "Planted noise" in page and 'alt="planted kept"' in page


@pytest.mark.e2e  # the `selected` run warms up
def test_scores_are_those_of_the_warm_up_model(selected, pool_file):
    from grads.core.gradnorms import per_example_grad_norms
    from grads.data.formats import load_pool
    from grads.data.tokenize import tokenize_example
    from grads.infra.models import load_model, load_tokenizer

    warm = selected / "warmup" / "model"
    done = json.loads((warm / "done.json").read_text())
    assert done["examples"] == 28 and done["steps"] == 4  # one epoch over 28 examples in batches of 8
    model, tokenizer = load_model(str(warm)), load_tokenizer(str(warm))
    assert type(model).__name__ == "PeftModelForCausalLM"
    example = load_pool(pool_file).examples[0]
    tok = tokenize_example(tokenizer, example, 64)
    want = per_example_grad_norms(model, collate([tok], tokenizer.pad_token_id))
    frame = pq.read_table(selected / "scores.parquet").to_pandas()
    assert frame["head_grad_norm"].iloc[0] == pytest.approx(want["head"].item(), rel=1e-4)
    assert frame["emb_grad_norm"].iloc[0] == pytest.approx(want["embedding"].item(), rel=1e-4)


@pytest.mark.e2e  # the `selected` run warms up
def test_answer_only_losses_are_the_answer_alone_cross_entropy(selected, pool_file):
    """IFD's denominator, recomputed one example at a time with plain autograd-free cross-entropy."""
    import torch

    from grads.core.gradnorms import IGNORE_INDEX
    from grads.data.formats import load_pool
    from grads.data.tokenize import tokenize_example
    from grads.infra.models import load_model, load_tokenizer

    warm = selected / "warmup" / "model"
    model, tokenizer = load_model(str(warm)), load_tokenizer(str(warm))
    model.eval()
    frame = pq.read_table(selected / "scores.parquet").to_pandas()
    for example in load_pool(pool_file).examples[:6] + load_pool(pool_file).examples[-2:]:
        tok = tokenize_example(tokenizer, example, 64)
        answer = torch.tensor([[t for t, lab in zip(tok.input_ids, tok.labels) if lab != IGNORE_INDEX]])
        with torch.no_grad():
            logits = model(input_ids=answer).logits[0, :-1].float()
        want = torch.nn.functional.cross_entropy(logits, answer[0, 1:]).item()
        assert frame["answer_only_loss"].iloc[example.row] == pytest.approx(want, rel=1e-4), example.id


@pytest.mark.e2e  # the `selected` run warms up
def test_rerun_reuses_warm_up_and_scores_and_is_byte_identical(selected, pool_file, tmp_path):
    before = {p.name: p.read_bytes() for p in (selected / "selected").iterdir()}
    warm_mtime = (selected / "warmup" / "model" / "adapter_model.safetensors").stat().st_mtime_ns
    scores_mtime = (selected / "score" / "scores.parquet").stat().st_mtime_ns
    result = run(pool_file, selected)
    assert "reusing finished scores" in result.output
    assert (selected / "warmup" / "model" / "adapter_model.safetensors").stat().st_mtime_ns == warm_mtime
    assert (selected / "score" / "scores.parquet").stat().st_mtime_ns == scores_mtime
    assert {p.name: p.read_bytes() for p in (selected / "selected").iterdir()} == before


@pytest.mark.e2e  # the `selected` run warms up
def test_a_fresh_run_with_the_same_seed_is_byte_identical(selected, pool_file, tmp_path):
    """Without --labels and --canaries too: neither changes what is selected, and no canary is in a selected file."""
    again = tmp_path / "again"
    run(pool_file, again, noise=False)
    canary_ids = set(json.loads((selected / "canaries" / "labels.json").read_text()))
    assert len(canary_ids) == 10
    for path in (selected / "selected").iterdir():
        if path.name != "clean.jsonl":
            assert (again / "selected" / path.name).read_bytes() == path.read_bytes(), path.name
        assert not canary_ids & {json.loads(line)["id"] for line in path.read_text().splitlines()}, path.name


@pytest.mark.e2e  # the `selected` run warms up
def test_canaries_are_counted_as_each_rule_keeps_them(selected):
    """selection.json's `canaries` against a recount: each rule run on the pool's scores plus the canaries'
    (read from their files), the canaries of each kind among what it keeps."""
    summary = json.loads((selected / "selection.json").read_text())
    canaries = summary["canaries"]
    labels = json.loads((selected / "canaries" / "labels.json").read_text())
    assert canaries["n"] == 10 and sorted(canaries["eligible"].values()) == [2, 2, 2, 2, 2]
    assert all(i.startswith(f"canary-{kind}-") for i, kind in labels.items())
    pool = pq.read_table(selected / "score" / "scores.parquet").to_pandas()
    extra = pq.read_table(selected / "canaries" / "score" / "scores.parquet").to_pandas()
    for frame, folder in ((pool, selected / "score"), (extra, selected / "canaries" / "score")):
        frame["answer_only_loss"] = pq.read_table(folder / "answer_only_loss.parquet").column(0).to_numpy()
    both = pd.concat([pool, extra], ignore_index=True).assign(row=lambda f: np.arange(len(f)))
    for name in ("grads-0.1.jsonl", "loss-0.5.jsonl", "trim:loss:0.3-0.5.jsonl", "ifd-0.5.jsonl"):
        entry = summary["outputs"][name]
        picked = both["id"].iloc[select(both, entry["method"], entry["ratio"], 0)].tolist()
        for kind in canaries["eligible"]:
            assert canaries["outputs"][name]["kept"][kind] == sum(labels.get(i) == kind for i in picked), name
    assert "Canaries" in (selected / "report.html").read_text()


@pytest.mark.e2e  # the `selected` run warms up
def test_report_shows_the_plots_and_escapes_example_text(selected):
    page = (selected / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 4  # and the planted records kept (--labels)
    for png in ["signal_kde.png", "emb_vs_head.png", "signal_vs_length.png"]:
        assert (selected / "plots" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<script>" not in page and "&lt;script&gt;" in page and "Jaccard" in page
    assert "Matched controls" in page and "random-matched-0.5.jsonl" in page
    assert "Pearson r" in page


@pytest.mark.e2e  # the `selected` run warms up
def test_selection_json_records_what_the_selection_cost(selected):
    """The warm-up (one epoch on the whole pool: the full epoch itself, measured) and the scoring, with the seconds
    each stage recorded and the tokens the score table counts, and the report says it."""
    cost = json.loads((selected / "selection.json").read_text())["cost"]
    frame = pq.read_table(selected / "score" / "scores.parquet").to_pandas()
    warm = json.loads((selected / "warmup" / "model" / "done.json").read_text())
    scoring = json.loads((selected / "score" / "timings.json").read_text())["scoring_s"]
    assert cost["warmup_seconds"] == warm["seconds"] > 0 and cost["scoring_seconds"] == scoring > 0
    assert cost["warmup_examples"] == cost["scoring_examples"] == warm["examples"] == 28
    assert cost["warmup_tokens"] == cost["scoring_tokens"] == int(frame["n_tokens"].sum())
    assert cost["ratio_estimated"] is False and cost["full_epoch_seconds"] == warm["seconds"]
    assert cost["ratio_to_full_epoch"] == pytest.approx((warm["seconds"] + scoring) / warm["seconds"], rel=1e-3)
    page = (selected / "report.html").read_text()
    assert f"Selection cost {cost['ratio_to_full_epoch']:.2f}× one fine-tuning epoch" in page


@pytest.mark.e2e  # the `selected` run warms up
def test_a_folder_with_another_run_is_refused(selected, pool_file, capsys):
    from grads.cli import main

    before = (selected / "selection.json").read_bytes()
    args = ["select", "--model", str(pool_file.parent.parent / "model"), "--data", str(pool_file), "--out",
            str(selected), "--max-length", "48", "--quiet"]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    assert "already holds a selection made with other model, data, warm-up or scoring settings" in \
        capsys.readouterr().err
    assert (selected / "selection.json").read_bytes() == before


def test_bad_ratio_and_method_exit_2(pool_file, tmp_path, capsys):
    from grads.cli import main

    for extra, message in [(["--ratio", "1.5"], "a ratio must be in (0, 1]"), (["--method", "best"],
                                                                               "unknown method")]:
        with pytest.raises(SystemExit) as exit_info:
            main(["select", "--model", "x", "--data", str(pool_file), "--out", str(tmp_path / "o"), *extra])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err
        assert not (tmp_path / "o").exists()

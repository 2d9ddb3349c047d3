"""An experiment's summary files: the question-use figure (Q_bpb) listed where the runs measure it and left out
where they were evaluated before it existed, and the committed claim summaries rebuilt from their runs byte for
byte."""

from __future__ import annotations

import json
import shutil
import statistics
from pathlib import Path

import pandas as pd
import pytest
import yaml
from helpers import ROOT

from grads.experiment.config import load_config
from grads.experiment.tables import write_summary

# (method, seed) -> (held-out bpb, question_use_bpb); the base model: 1.30, 0.20
RUNS = {("grads", 0): (1.20, 0.25), ("grads", 1): (1.21, 0.27), ("grads", 2): (1.22, 0.24),
        ("random", 0): (1.22, 0.21), ("random", 1): (1.23, 0.22), ("random", 2): (1.21, 0.22)}
# the header summary.csv had before Q_bpb existed (from this config)
OLD_HEADER = ("method,ratio,n_seeds,answer_tokens,G_acc_mean,G_acc_std,F_acc_mean,F_acc_std,G_val_mean,G_val_std,"
              "G_bpb_mean,G_bpb_std,F_bpb_mean,F_bpb_std,F_bpb_bytes_mean,F_bpb_bytes_std,medmcqa,gsm8k:bpb,"
              "heldout:h,F:gsm8k:bpb")


def write_grid(folder: Path, question_use: bool) -> Path:
    """An experiment folder by hand: a config, the base model's evaluation and grads and random at 5% over three
    seeds; held-out summaries with question use or, as runs evaluated before it, without."""
    def heldout(bpb: float, use: float) -> dict:
        return {"h": {"bpb": bpb, "n_bytes": 1000} | ({"bpb_mismatched": bpb + use, "question_use_bpb": use}
                                                       if question_use else {})}

    (folder / "runs" / "base").mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump({
        "methods": ["random", "grads"], "ratios": [0.05], "seeds": [0, 1, 2],
        "eval": {"domain_tasks": ["medmcqa"], "general_tasks": ["gsm8k:bpb"], "heldout": ["h.jsonl"]}}))
    tasks = {"medmcqa": {"accuracy": 0.25}, "gsm8k:bpb": {"bpb": 0.70, "gold_bytes": 500}}
    (folder / "runs" / "base" / "results.json").write_text(json.dumps({"tasks": tasks,
                                                                         "heldout": heldout(1.30, 0.20)}))
    for (method, seed), (bpb, use) in RUNS.items():
        run = {"run": f"{method}-0.05-s{seed}", "method": method, "ratio": 0.05, "seed": seed, "n_train": 30,
               "train_answer_tokens": 900, "train_loss": 1.0, "tasks": tasks, "heldout": heldout(bpb, use)}
        (folder / "runs" / run["run"]).mkdir()
        (folder / "runs" / run["run"] / "results.json").write_text(json.dumps(run))
    return folder


def summarise(folder: Path) -> tuple[pd.DataFrame, str, str]:
    write_summary(folder, load_config(folder / "config.yaml"),
                  json.loads((folder / "runs" / "base" / "results.json").read_text()))
    text = (folder / "summary.csv").read_text()
    return pd.read_csv(folder / "summary.csv").set_index("method"), text, (folder / "summary.md").read_text()


def test_summaries_list_question_use_only_where_the_runs_measure_it(tmp_path):
    table, text, md = summarise(write_grid(tmp_path / "new", question_use=True))
    # Q_bpb per seed: run − base question use; grads 0.05, 0.07, 0.04, random 0.01, 0.02, 0.02
    gains = {m: [RUNS[(m, s)][1] - 0.20 for s in range(3)] for m in ("grads", "random")}
    assert text.splitlines()[0] == OLD_HEADER.replace("F_bpb_bytes_std,", "F_bpb_bytes_std,Q_bpb_mean,Q_bpb_std,")
    assert table.loc["grads", "Q_bpb_mean"] == pytest.approx(statistics.fmean(gains["grads"]))
    assert table.loc["grads", "Q_bpb_std"] == pytest.approx(statistics.stdev(gains["grads"]))
    assert table.loc["random", "Q_bpb_mean"] == pytest.approx(statistics.fmean(gains["random"]))
    header = next(line for line in md.splitlines() if line.startswith("| method | ratio | seeds"))
    assert "| Q_bpb (mean ± std) |" in header and "held-out h bpb 1.3000 (question use +0.2000)" in md
    assert "Q_bpb = held-out question use gained" in md
    # seed-paired against random: 0.04, 0.05, 0.02
    paired = next(line for line in md.splitlines() if line.startswith("| grads | 0.05 | 3 | ") and "[" in line)
    assert f"{statistics.fmean([0.04, 0.05, 0.02]):+.4f} [" in paired.split(" | ")[-1]

    old_table, old_text, old_md = summarise(write_grid(tmp_path / "old", question_use=False))
    assert old_text.splitlines()[0] == OLD_HEADER  # the columns of before: no empty Q_bpb ones
    assert "Q_bpb" not in old_md and "question use" not in old_md
    # every other figure and column reads the same either way
    pd.testing.assert_frame_equal(old_table, table.drop(columns=["Q_bpb_mean", "Q_bpb_std"]))


@pytest.mark.parametrize("name", ["claim-medmcqa", "claim-gsm8k", "claim-medmcqa-harsh"])
def test_the_committed_claim_summaries_are_rebuilt_from_their_runs_byte_for_byte(tmp_path, name):
    """Runs evaluated before question use existed: their summaries read exactly as committed."""
    folder = shutil.copytree(ROOT / "results" / name, tmp_path / name,
                             ignore=shutil.ignore_patterns("*.png", "*.jsonl", "selected", "model"))
    for file in ("summary.csv", "summary.md"):
        (folder / file).unlink()
    summarise(folder)
    for file in ("summary.csv", "summary.md"):
        assert (folder / file).read_text() == (ROOT / "results" / name / file).read_text(), file

"""Behaviour is unchanged by refactoring: `grads select` on the demo's pool (the bundled SmolLM2 and MedMCQA, every
method, two ratios, scores at θ0) writes the files it wrote before, on any machine.

What is compared, and how (floats differ in their last bits between CPUs; nothing else may differ):
- every selected file byte for byte (they hold input rows verbatim: a changed choice changes the bytes);
- scores.parquet column by column against `golden/select-demo/scores.csv`: ids, rows, statuses and token counts
  exactly, the loss and the norms within rtol 1e-5, `combined` and `density` within rtol 1e-5 + 1e-6 absolute;
- selection.json against `golden/select-demo/selection.json`, without the fields that name this run's
  temporary paths, the installed package versions and the scores' fingerprint (it hashes the data path): every
  field that is not a float exactly, floats within rtol 1e-5.

The selected files' digests were written by the code as it stood at commit 95f88af (before the stages, the rule
registry and the config-driven CLI). One intended change since: the kernel's head norm became one online-softmax
pass (issue 17), which moved the scores in their last digits and left every selected file byte-identical. The
reference scores and selection.json were recorded by commit 1e07281 (the flat package, before the layered
layout) on the machine of the layout change, where that commit and the layered code wrote byte-identical
scores.parquet and selection.json (digests fdd676c70d2fb2cc and 5809f396d031c34c; the machine the old digests
were written on gave 81b8a4a0494647a5 and 64feac77b455e599: the last bits of floats differ between CPUs). They
are rewritten only on purpose: `python tests/test_golden.py --write` (and say why in the commit).
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from grads.cli import app
from grads.config import DataConfig, ModelConfig, SelectConfig, SelectJob, TrainConfig
from grads.experiment.config import load_config
from grads.stages.warmup import warmup_plan

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = Path(__file__).resolve().parent / "golden" / "select-demo"
RTOL = 1e-5
EXACT_COLUMNS = ["id", "row", "n_tokens", "n_target_tokens", "truncated_tokens", "status"]
# z-scores and densities are O(1) numbers that cross 0: compared within RTOL plus this absolute slack
DERIVED_ATOL = {"combined": 1e-6, "density": 1e-6}

METHODS = ["grads", "grads-auto", "grads-high", "grads-low", "grads-tails", "emb-only", "head-only", "random",
           "full", "length", "loss", "ifd", "gradnorm"]
SELECTED = {
    "emb-only-0.05.jsonl": "b2e4dd419aced7a9",
    "emb-only-0.5.jsonl": "aa3cb7850a438aac",
    "full.jsonl": "757962b7e416a154",
    "gradnorm-0.05.jsonl": "3a02c9627858de77",
    "gradnorm-0.5.jsonl": "fa37c16674468216",
    "grads-0.05.jsonl": "bda850e8f6861186",
    "grads-0.5.jsonl": "468246020510a84b",
    "grads-auto.jsonl": "bf8a882edadf60b1",
    "grads-high-0.05.jsonl": "3a02c9627858de77",
    "grads-high-0.5.jsonl": "290ae1fc1da097b9",
    "grads-low-0.05.jsonl": "f5fa1a893e58b17c",
    "grads-low-0.5.jsonl": "473ecd76148890d1",
    "grads-tails-0.05.jsonl": "3a02c9627858de77",
    "grads-tails-0.5.jsonl": "5b3f01e98a0dbfe9",
    "head-only-0.05.jsonl": "a22c70bf7639aba8",
    "head-only-0.5.jsonl": "4e1c97ba4159703a",
    "ifd-0.05.jsonl": "3bafcb64ed6989bf",
    "ifd-0.5.jsonl": "a7aa5784a81723d6",
    "length-0.05.jsonl": "65a428a83b07b501",
    "length-0.5.jsonl": "43c41bfcde714192",
    "loss-0.05.jsonl": "64a9a2cedbc4d043",
    "loss-0.5.jsonl": "72dfab91c59c5dc4",
    "random-0.05.jsonl": "024630492a6a2544",
    "random-0.5.jsonl": "3937bf7f4e9dfc65",
}


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def run_demo_select(pool: Path, out: Path) -> None:
    args = ["select", "--model", "smollm2-135m-instruct", "--data", str(pool), "--limit", "40", "--max-length",
            "128", "--ratio", "0.05", "--ratio", "0.5", "--warmup-epochs", "0", "--out", str(out), "--quiet"]
    result = CliRunner().invoke(app, args + [x for m in METHODS for x in ("--method", m)], catch_exceptions=False)
    assert result.exit_code == 0, result.output


def comparable_summary(out: Path) -> dict:
    """selection.json less this run's paths, the installed versions, the path-dependent fingerprint and the
    cost (wall-clock seconds: tests/stages/test_cost.py checks it)."""
    summary = json.loads((out / "selection.json").read_text())
    summary["settings"].pop("out"), summary["settings"]["data"].pop("data"), summary["input"].pop("path")
    summary.pop("versions"), summary.pop("score_fingerprint"), summary.pop("cost", None)
    return summary


def differences(got, want, where: str = "selection.json") -> list[str]:
    """Where two JSON values differ: floats beyond RTOL (NaN equals NaN), anything else at all."""
    if isinstance(want, dict) and isinstance(got, dict):
        keys = sorted(set(got) | set(want))
        return [d for k in keys for d in differences(got.get(k, "<missing>"), want.get(k, "<missing>"),
                                                     f"{where}.{k}")]
    if isinstance(want, list) and isinstance(got, list) and len(got) == len(want):
        return [d for i, (g, w) in enumerate(zip(got, want)) for d in differences(g, w, f"{where}[{i}]")]
    if isinstance(want, float) and isinstance(got, float | int) and not isinstance(got, bool):
        same = (math.isnan(want) and math.isnan(got)) or math.isclose(got, want, rel_tol=RTOL, abs_tol=0.0)
        return [] if same else [f"{where}: {got!r} != {want!r}"]
    return [] if got == want and type(got) is type(want) else [f"{where}: {got!r} != {want!r}"]


def score_differences(got: pd.DataFrame, want: pd.DataFrame) -> list[str]:
    """Where two score tables differ: ids, rows, statuses and token counts at all, any other column (the loss, the
    norms, extra columns such as answer_only_loss, `combined`, `density`) beyond RTOL."""
    if list(got.columns) != list(want.columns) or len(got) != len(want):
        return [f"columns or rows differ: {list(got.columns)} x {len(got)} != {list(want.columns)} x {len(want)}"]
    out = []
    for column in want.columns:
        if column in EXACT_COLUMNS:
            if got[column].astype(str).tolist() != want[column].astype(str).tolist():
                out.append(f"scores.parquet column {column} differs")
            continue
        g, w = got[column].to_numpy(float), want[column].to_numpy(float)
        if not np.allclose(g, w, rtol=RTOL, atol=DERIVED_ATOL.get(column, 0.0), equal_nan=True):
            out.append(f"scores.parquet column {column}: max relative difference "
                       f"{np.nanmax(np.abs(g - w) / np.abs(w)):.3g}")
    return out


@pytest.fixture
def demo_select(tmp_path, medmcqa_dir, monkeypatch) -> Path:
    from grads.infra.models import builtin_cache_dir, cache_builtin

    model = cache_builtin("smollm2-135m-instruct")
    monkeypatch.setenv("GRADS_HOME", str(tmp_path / "home"))  # tokenised afresh, not from the shared token cache
    builtin_cache_dir("smollm2-135m-instruct").parent.mkdir(parents=True)
    builtin_cache_dir("smollm2-135m-instruct").symlink_to(model)
    run_demo_select(medmcqa_dir / "pool.jsonl", tmp_path / "out")
    return tmp_path / "out"


@pytest.mark.e2e
def test_select_on_the_demo_pool_writes_the_same_files_as_before(demo_select):
    selected = {p.name: _digest(p.read_bytes()) for p in sorted((demo_select / "selected").glob("*.jsonl"))}
    assert selected == SELECTED
    scores = pd.read_parquet(demo_select / "scores.parquet")
    assert score_differences(scores, pd.read_csv(REFERENCE / "scores.csv", dtype={"id": str})) == []
    want = json.loads((REFERENCE / "selection.json").read_text())
    assert differences(comparable_summary(demo_select), want) == []


def test_the_comparison_tolerates_the_last_bits_and_nothing_more():
    """The golden comparison's own check: a float moved by 1e-9 relative passes; by 1e-4, a changed id or
    count, or an int where a float was, fails."""
    want = {"bandwidth": 0.4, "ids": ["a", "b"], "n": 3, "nested": {"ratio": 0.05}}
    assert differences({"bandwidth": 0.4 * (1 + 1e-9), "ids": ["a", "b"], "n": 3, "nested": {"ratio": 0.05}},
                       want) == []
    assert len(differences({"bandwidth": 0.4 * (1 + 1e-4), "ids": ["a", "c"], "n": 3.0,
                            "nested": {"ratio": 0.05}}, want)) == 3
    frame = pd.DataFrame({"id": ["x", "y"], "row": [0, 1], "n_tokens": [5, 6], "loss": [1.0, float("nan")],
                          "status": ["ok", "no_target"], "density": [0.5, float("nan")]})
    assert score_differences(frame.assign(loss=[1.0 + 1e-9, float("nan")]), frame) == []
    assert score_differences(frame.assign(loss=[1.001, float("nan")], row=[1, 3]), frame) == [
        "scores.parquet column row differs", "scores.parquet column loss: max relative difference 0.001"]
    assert len(score_differences(frame.drop(columns="density"), frame)) == 1


def test_fingerprints_are_those_of_before():
    """The warm-up's and the scores' fingerprints decide whether a finished warm-up or scoring is reused (and
    whether a folder is refused): they must not change with the code's shape. Values from commit 95f88af."""
    expected = {0.0: ("78d4b57d1cc950d02845", "2b3fd3e1cd241cece7ab"), 1.0: ("5d9f9599ff26ff45d6f2",
                                                                           "b91f685b0244cc60111d")}
    for warmup, (warmup_fp, score_fp) in expected.items():
        job = SelectJob(model=ModelConfig(model="smollm2-135m-instruct"),
                        data=DataConfig(data=Path("pool.jsonl"), limit=40, max_length=128), train=TrainConfig(seed=3),
                        select=SelectConfig(methods=("grads", "random"), ratios=(0.05, 0.5), seed=3,
                                            warmup_epochs=warmup), out=Path("out"))
        plan = warmup_plan(job, "ab" * 32)
        assert (plan.fingerprint, plan.score_fingerprint) == (warmup_fp, score_fp)


def test_committed_experiments_still_read_as_they_were_run():
    configs = [c for c in sorted(ROOT.glob("results/*/config.yaml")) if (c.parent / "config.json").exists()]
    assert len(configs) >= 8  # every experiment that has run
    for config in configs:
        assert load_config(config).settings() == json.loads((config.parent / "config.json").read_text()), config


def write_reference(out: Path) -> None:
    """Record the reference files from a finished demo selection in `out` (on purpose only)."""
    REFERENCE.mkdir(parents=True, exist_ok=True)
    scores = pd.read_parquet(out / "scores.parquet")
    scores.to_csv(REFERENCE / "scores.csv", index=False, float_format="%.17g")
    (REFERENCE / "selection.json").write_text(json.dumps(comparable_summary(out), indent=1, sort_keys=True) + "\n")


if __name__ == "__main__" and sys.argv[1:] == ["--write"]:
    import tempfile

    from grads.data.bundled import prepare_medmcqa

    with tempfile.TemporaryDirectory() as tmp:
        prepare_medmcqa(Path(tmp) / "data")
        run_demo_select(Path(tmp) / "data" / "pool.jsonl", Path(tmp) / "out")
        write_reference(Path(tmp) / "out")
    print(f"wrote {REFERENCE}")

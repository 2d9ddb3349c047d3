"""Behaviour is unchanged by refactoring: `grads select` on the demo's pool (the bundled SmolLM2 and MedMCQA, every
method, two ratios, scores at θ0) writes exactly the files it wrote before.

The digests were written by the code as it stood at commit 95f88af (before the stages, the rule registry and
the config-driven CLI), with the same command as below (`golden_digests`); a change that alters any selected
row, any score or any field of selection.json fails here. selection.json is compared without the fields that
name this run's temporary paths and the installed package versions, and without the scores' fingerprint (it
hashes the data path); the fingerprints are compared on fixed paths in their own test, and every committed
experiment's config must still read back as the config.json it was run with.

One intended change since 95f88af: the kernel's head norm became one online-softmax pass (issue 17), which moves
the scores in their last digits (loss, norms ≤ 1.4e-6 relative, the KDE bandwidth 1e-7), so scores.parquet and
selection.json have new digests; every selected file stayed byte-identical (compared against 95f88af's outputs
of the same command).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from grads.cli import app
from grads.config import DataConfig, ModelConfig, SelectConfig, SelectJob, TrainConfig
from grads.experiment.config import load_config
from grads.stages.warmup import warmup_plan

ROOT = Path(__file__).resolve().parent.parent

METHODS = ["grads", "grads-auto", "grads-high", "grads-low", "grads-tails", "emb-only", "head-only", "random",
           "full", "length", "loss", "ifd", "gradnorm"]
GOLDEN = {
    "scores.parquet": "81b8a4a0494647a5",  # 95f88af: addd8b28ec0a4f60 (see the note above)
    "selected/emb-only-0.05.jsonl": "b2e4dd419aced7a9",
    "selected/emb-only-0.5.jsonl": "aa3cb7850a438aac",
    "selected/full.jsonl": "757962b7e416a154",
    "selected/gradnorm-0.05.jsonl": "3a02c9627858de77",
    "selected/gradnorm-0.5.jsonl": "fa37c16674468216",
    "selected/grads-0.05.jsonl": "bda850e8f6861186",
    "selected/grads-0.5.jsonl": "468246020510a84b",
    "selected/grads-auto.jsonl": "bf8a882edadf60b1",
    "selected/grads-high-0.05.jsonl": "3a02c9627858de77",
    "selected/grads-high-0.5.jsonl": "290ae1fc1da097b9",
    "selected/grads-low-0.05.jsonl": "f5fa1a893e58b17c",
    "selected/grads-low-0.5.jsonl": "473ecd76148890d1",
    "selected/grads-tails-0.05.jsonl": "3a02c9627858de77",
    "selected/grads-tails-0.5.jsonl": "5b3f01e98a0dbfe9",
    "selected/head-only-0.05.jsonl": "a22c70bf7639aba8",
    "selected/head-only-0.5.jsonl": "4e1c97ba4159703a",
    "selected/ifd-0.05.jsonl": "3bafcb64ed6989bf",
    "selected/ifd-0.5.jsonl": "a7aa5784a81723d6",
    "selected/length-0.05.jsonl": "65a428a83b07b501",
    "selected/length-0.5.jsonl": "43c41bfcde714192",
    "selected/loss-0.05.jsonl": "64a9a2cedbc4d043",
    "selected/loss-0.5.jsonl": "72dfab91c59c5dc4",
    "selected/random-0.05.jsonl": "024630492a6a2544",
    "selected/random-0.5.jsonl": "3937bf7f4e9dfc65",
    "selection.json (paths and versions left out)": "64feac77b455e599",  # 95f88af: ff1bd75abf753629
}


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def golden_digests(pool: Path, out: Path) -> dict[str, str]:
    args = ["select", "--model", "smollm2-135m-instruct", "--data", str(pool), "--limit", "40", "--max-length",
            "128", "--ratio", "0.05", "--ratio", "0.5", "--warmup-epochs", "0", "--out", str(out), "--quiet"]
    result = CliRunner().invoke(app, args + [x for m in METHODS for x in ("--method", m)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    files = [out / "scores.parquet", *(out / "selected").glob("*.jsonl")]
    digests = {str(p.relative_to(out)): _digest(p.read_bytes()) for p in sorted(files)}
    summary = json.loads((out / "selection.json").read_text())
    summary["settings"].pop("out"), summary["settings"]["data"].pop("data"), summary["input"].pop("path")
    summary.pop("versions"), summary.pop("score_fingerprint")
    digests["selection.json (paths and versions left out)"] = _digest(json.dumps(summary, sort_keys=True).encode())
    return digests


@pytest.mark.slow
def test_select_on_the_demo_pool_writes_the_same_files_as_before(tmp_path, medmcqa_dir, monkeypatch):
    from grads.infra.models import builtin_cache_dir, cache_builtin

    model = cache_builtin("smollm2-135m-instruct")
    monkeypatch.setenv("GRADS_HOME", str(tmp_path / "home"))  # tokenised afresh, not from the shared token cache
    builtin_cache_dir("smollm2-135m-instruct").parent.mkdir(parents=True)
    builtin_cache_dir("smollm2-135m-instruct").symlink_to(model)
    assert golden_digests(medmcqa_dir / "pool.jsonl", tmp_path / "out") == GOLDEN


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

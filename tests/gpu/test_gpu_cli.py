"""`grads score` and `grads select` end to end on CUDA, as a user runs them (child processes), with a random-weight
model of SmolLM2-135M's shape and a synthetic pool (tests/gpu/conftest.py): the outputs are there, every example
is scored `ok` with finite positive norms, and the CUDA scores are those of the CPU in fp32 for the same model and
data: to 1e-4 in fp32, and in bf16 to what bf16 allows. Skipped without CUDA (`pytest -m gpu`)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.e2e,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

GRADS = [sys.executable, "-m", "grads.cli"]
FLOATS = ["loss", "emb_grad_norm", "head_grad_norm", "tied_grad_norm"]
N = 64  # the pool's records (tests/gpu/conftest.py)
# bf16 against fp32: the weights are rounded to bf16 and the backbone rounds to 8 significant bits at every layer,
# forward and backward, so bf16 norms are those of fp32 to ~1e-2 at best (on the CPU's bf16, this shape's norms are
# up to 4.4e-3 off its fp32 norms); 2e-2 is what a bf16 computation can promise, with a margin.
RTOL = {"float32": 1e-4, "bfloat16": 2e-2}
TIMEOUT = 600


def grads(env, *args) -> subprocess.CompletedProcess:
    return subprocess.run([*GRADS, *map(str, args)], env=env, capture_output=True, text=True, timeout=TIMEOUT)


def score(model, pool, out, env, *flags):
    done = grads(env, "score", "--model", model, "--data", pool, "--max-length", 128, "--batch-size", 8, "--quiet",
                 "--out", out, *flags)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def assert_scored(out, device: str, dtype: str):
    """Every example `ok`, loss and norms finite and positive; the job ran on `device` in `dtype`."""
    table = pq.read_table(out / "scores.parquet").to_pandas()
    assert len(table) == N and table["row"].tolist() == list(range(N))
    assert (table["status"] == "ok").all(), table["status"].value_counts()
    for column in FLOATS:
        values = table[column].to_numpy()
        assert np.isfinite(values).all() and (values > 0).all(), column
    meta = json.loads((out / "score.json").read_text())
    assert meta["status_counts"] == {"ok": N}
    assert (meta["job"]["model"]["device"], meta["job"]["model"]["dtype"]) == (device, dtype), meta["job"]["model"]
    return table


def assert_agree(got, want, rtol):
    assert got["id"].tolist() == want["id"].tolist()
    for column in ["n_tokens", "n_target_tokens"]:
        assert got[column].tolist() == want[column].tolist(), column
    for column in FLOATS:
        np.testing.assert_allclose(got[column].to_numpy(), want[column].to_numpy(), rtol=rtol, err_msg=column)


@pytest.fixture(scope="module")
def cpu_fp32(tmp_path_factory, real_shape_dir, gpu_pool, grads_env):
    """The reference: the same model and pool scored on the CPU in fp32."""
    tmp = tmp_path_factory.mktemp("cpu")
    return assert_scored(score(real_shape_dir, gpu_pool, tmp / "out", grads_env(tmp / "home"), "--device", "cpu",
                               "--dtype", "float32"), "cpu", "float32")


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_score_on_cuda_agrees_with_the_cpu_in_fp32(tmp_path, real_shape_dir, gpu_pool, grads_env, cpu_fp32, dtype):
    out = score(real_shape_dir, gpu_pool, tmp_path / "out", grads_env(tmp_path / "home"), "--device", "cuda",
                "--dtype", dtype)
    assert_agree(assert_scored(out, "cuda", dtype), cpu_fp32, RTOL[dtype])


def test_select_on_cuda_warms_up_scores_and_writes_every_output(tmp_path, real_shape_dir, gpu_pool, grads_env):
    """The paper's pipeline on the GPU: a LoRA warm-up epoch in bf16 (TRL on CUDA), scoring at the warmed-up model,
    the selections, the report."""
    out = tmp_path / "select"
    done = grads(grads_env(tmp_path / "home"), "select", "--model", real_shape_dir, "--data", gpu_pool,
                 "--max-length", 128, "--batch-size", 8, "--device", "cuda", "--dtype", "bfloat16", "--ratio", 0.25,
                 "--method", "grads", "--method", "random", "--warmup-epochs", 1, "--quiet", "--out", out)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((out / "warmup" / "model" / "done.json").read_text())["steps"] == N // 8
    assert_scored(out / "score", "cuda", "bfloat16")
    scores = pq.read_table(out / "scores.parquet").to_pandas()
    assert len(scores) == N and scores["status"].eq("ok").all() and np.isfinite(scores["combined"]).all()
    summary = json.loads((out / "selection.json").read_text())
    assert summary["status_counts"] == {"ok": N}
    assert {name: entry["n_selected"] for name, entry in summary["outputs"].items()} == \
        {"grads-0.25.jsonl": 16, "random-0.25.jsonl": 16}
    for name in summary["outputs"]:
        lines = (out / "selected" / name).read_text().splitlines()
        assert len(lines) == 16 and all(json.loads(line)["id"].startswith("g") for line in lines)
    assert summary["cost"]["warmup_seconds"] > 0 and (out / "report.html").exists()

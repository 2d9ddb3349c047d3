"""`grads score --fsdp` on the NCCL path (tests/infra/test_distributed.py does the same on the CPU with gloo): under
torchrun on one GPU (a process group of one: the parameters are FSDP2 DTensors gathered by NCCL, every rank's
share is all of them) and, where the machine has two GPUs, on two; each gives the table of one plain process on
the GPU. In fp32, so agreement is to the last digits and not bf16's. Skipped without CUDA (`pytest -m gpu`)."""

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
TIMEOUT = 600


def torchrun(n: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(n), "-m",
            "grads.cli"]


def args(model, pool, out) -> list[str]:
    return ["score", "--model", str(model), "--data", str(pool), "--max-length", "128", "--batch-size", "4",
            "--device", "cuda", "--dtype", "float32", "--quiet", "--out", str(out)]


def assert_same_table(a, b):
    a, b = a.to_pandas(), b.to_pandas()
    assert list(a.columns) == list(b.columns) and len(a) == len(b)
    for column in ["id", "row", "n_tokens", "n_target_tokens", "truncated_tokens", "status"]:
        assert a[column].tolist() == b[column].tolist(), column
    assert (a["status"] == "ok").all()
    for column in FLOATS:
        np.testing.assert_allclose(a[column].to_numpy(), b[column].to_numpy(), rtol=1e-4, err_msg=column)


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, real_shape_dir, gpu_pool, grads_env):
    tmp = tmp_path_factory.mktemp("one")
    done = subprocess.run([*GRADS, *args(real_shape_dir, gpu_pool, tmp / "out")], env=grads_env(tmp / "home"),
                          capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr[-3000:]
    return pq.read_table(tmp / "out" / "scores.parquet")


@pytest.mark.parametrize("ranks", [1, pytest.param(2, marks=pytest.mark.skipif(
    torch.cuda.device_count() < 2, reason="needs 2 GPUs"))])
def test_fsdp_over_nccl_merges_to_the_one_process_table(tmp_path, real_shape_dir, gpu_pool, grads_env, one_process,
                                                        ranks):
    out = tmp_path / "fsdp"
    done = subprocess.run([*torchrun(ranks), *args(real_shape_dir, gpu_pool, out), "--fsdp"],
                          env=grads_env(tmp_path / "home"), capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr[-3000:]
    assert_same_table(pq.read_table(out / "scores.parquet"), one_process)
    meta = json.loads((out / "score.json").read_text())
    assert meta["fsdp"] and meta["world_size"] == ranks
    # rank 0 holds 1/ranks of the parameters, give or take a row of each sharded matrix
    share = meta["parameter_bytes_rank0"] / meta["parameter_bytes"]
    assert abs(share - 1 / ranks) < 0.06, share
    assert not (out / "score-chunks").exists()

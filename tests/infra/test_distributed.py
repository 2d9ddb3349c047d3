"""`grads score` under torchrun: 2 CPU processes (gloo) give the same table as 1 process, data parallel and with the
model sharded (--fsdp), as one launch of 2 processes or as two "nodes" of one process each on 127.0.0.1; a run
whose rank is killed midway completes on rerun and still matches.

Each launch starts two processes (several seconds on two cores), so the modes are not all crossed: both modes go
through the same chunk plan, rendezvous and merge (stages/score.py), and the sharded one, which adds the gathering of
the model's shards, carries the kill, the two nodes and `grads select` under torchrun."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow.parquet as pq
import pytest

GRADS = [sys.executable, "-m", "grads.cli"]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "grads.cli"]
FLOATS = ["loss", "emb_grad_norm", "head_grad_norm", "tied_grad_norm"]


def _args(tiny_model_dir, medmcqa_dir, limit=96):
    return ["score", "--model", str(tiny_model_dir), "--data", str(medmcqa_dir / "pool.jsonl"), "--limit",
            str(limit), "--batch-size", "1", "--max-length", "96", "--quiet"]


def _env(tmp_path):
    return {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "GRADS_HOME": str(tmp_path / "home")}


def assert_same_table(a, b):
    a, b = a.to_pandas(), b.to_pandas()
    assert list(a.columns) == list(b.columns) and len(a) == len(b)
    for column in ["id", "row", "n_tokens", "n_target_tokens", "truncated_tokens", "status"]:
        assert a[column].tolist() == b[column].tolist(), column
    for column in FLOATS:
        np.testing.assert_allclose(a[column].to_numpy(), b[column].to_numpy(), rtol=1e-5, equal_nan=True)


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, tiny_model_dir, medmcqa_dir):
    tmp = tmp_path_factory.mktemp("one")
    subprocess.run([*GRADS, *_args(tiny_model_dir, medmcqa_dir), "--out", str(tmp / "out")], check=True,
                   env=_env(tmp), capture_output=True)
    return pq.read_table(tmp / "out" / "scores.parquet")


@pytest.mark.e2e
def test_two_ranks_data_parallel_or_sharded_merge_to_the_one_process_table(tmp_path, tiny_model_dir, medmcqa_dir,
                                                                           one_process):
    import json

    two = tmp_path / "two"
    run = subprocess.run([*TORCHRUN, *_args(tiny_model_dir, medmcqa_dir), "--out", str(two)],
                         env=_env(tmp_path), capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    table = pq.read_table(two / "scores.parquet")
    assert table.num_rows == 96
    assert_same_table(table, one_process)
    data_parallel = json.loads((two / "score.json").read_text())
    assert data_parallel["world_size"] == 2 and not (two / "score-chunks").exists()

    sharded = tmp_path / "fsdp"
    run = subprocess.run([*TORCHRUN, *_args(tiny_model_dir, medmcqa_dir), "--fsdp", "--out", str(sharded)],
                         env=_env(tmp_path), capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    assert_same_table(pq.read_table(sharded / "scores.parquet"), one_process)
    meta = json.loads((sharded / "score.json").read_text())
    assert meta["fsdp"] and meta["world_size"] == 2
    # rank 0 holds half the parameters, give or take a row of each sharded matrix (dim 0 split in 2)
    assert 0.45 < meta["parameter_bytes_rank0"] / meta["parameter_bytes"] < 0.56
    # --fsdp is how the job ran, not what it computed: the fingerprint is the data-parallel run's
    assert meta["fingerprint"] == data_parallel["fingerprint"]


@pytest.mark.e2e
def test_a_killed_rank_of_a_sharded_scoring_reruns_to_the_same_table(tmp_path, tiny_model_dir, medmcqa_dir,
                                                                     one_process):
    import psutil

    out = tmp_path / "killed"
    args = [*TORCHRUN, *_args(tiny_model_dir, medmcqa_dir), "--fsdp", "--out", str(out)]
    proc = subprocess.Popen(args, env=_env(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    chunks = out / "score-chunks"
    deadline = time.time() + 180
    while len(list(chunks.glob("chunk-*.parquet"))) < 2 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    rank1 = [p for p in psutil.Process(proc.pid).children(recursive=True) if p.environ().get("RANK") == "1"]
    assert rank1, "rank 1 was not running"
    rank1[0].send_signal(signal.SIGKILL)
    assert proc.wait(timeout=120) != 0  # the launcher fails the job when a rank dies
    n_done = len(list(chunks.glob("chunk-*.parquet")))
    assert 2 <= n_done < 24 and not (out / "scores.parquet").exists()  # really killed midway (24 chunks in all)

    rerun = subprocess.run(args, env=_env(tmp_path), capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert_same_table(pq.read_table(out / "scores.parquet"), one_process)


@pytest.mark.e2e
def test_fsdp_needs_a_launched_job(tmp_path, tiny_model_dir, medmcqa_dir):
    run = subprocess.run([*GRADS, *_args(tiny_model_dir, medmcqa_dir), "--fsdp", "--out", str(tmp_path / "o")],
                         env=_env(tmp_path), capture_output=True, text=True)
    assert run.returncode == 2 and "torchrun" in run.stderr


@pytest.mark.e2e
def test_fsdp_under_torchrun_on_one_process_shards_over_a_group_of_one(tmp_path, tiny_model_dir, medmcqa_dir,
                                                                       one_process):
    """torchrun --nproc_per_node 1 --fsdp: a process group of one (gloo here, NCCL on a GPU: tests/gpu)."""
    import json

    out = tmp_path / "one-rank"
    one_rank = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1", "-m",
                "grads.cli"]
    run = subprocess.run([*one_rank, *_args(tiny_model_dir, medmcqa_dir), "--fsdp", "--out", str(out)],
                         env=_env(tmp_path), capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    assert_same_table(pq.read_table(out / "scores.parquet"), one_process)
    meta = json.loads((out / "score.json").read_text())
    assert meta["fsdp"] and meta["world_size"] == 1 and meta["parameter_bytes_rank0"] == meta["parameter_bytes"]


@pytest.mark.e2e
def test_two_nodes_on_one_machine_merge_to_the_one_process_table(tmp_path, tiny_model_dir, medmcqa_dir,
                                                                 one_process):
    """Two torchrun launches, --nnodes 2 --node_rank 0|1, one process each, meeting at 127.0.0.1 (static
    rendezvous, as on a cluster without a scheduler's rendezvous service)."""
    import socket

    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    out = tmp_path / "nodes"
    nodes = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node_rank",
                               str(rank), "--nproc_per_node", "1", "--master_addr", "127.0.0.1", "--master_port",
                               str(port), "-m", "grads.cli", *_args(tiny_model_dir, medmcqa_dir), "--fsdp", "--out",
                               str(out)], env=_env(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True) for rank in (0, 1)]
    for node in nodes:
        _, err = node.communicate(timeout=600)
        assert node.returncode == 0, err[-3000:]
    assert_same_table(pq.read_table(out / "scores.parquet"), one_process)


@pytest.mark.e2e
def test_select_under_torchrun_warms_up_data_parallel_and_rank_0_writes_the_outputs(tmp_path, tiny_model_dir,
                                                                                   medmcqa_dir):
    import json

    out = tmp_path / "sel"
    args = ["select", "--model", str(tiny_model_dir), "--data", str(medmcqa_dir / "pool.jsonl"), "--limit", "32",
            "--max-length", "96", "--batch-size", "8", "--ratio", "0.25", "--method", "grads", "--method", "random",
            "--warmup-epochs", "1", "--quiet", "--out", str(out), "--fsdp"]
    run = subprocess.run([*TORCHRUN, *args], env=_env(tmp_path), capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    done = json.loads((out / "warmup" / "model" / "done.json").read_text())
    assert done["steps"] == 2  # 32 examples, 8 per rank, 2 ranks: 2 optimizer steps (one process takes 4)
    assert json.loads((out / "score" / "score.json").read_text())["fsdp"]  # scored sharded, trained data parallel
    scores = pq.read_table(out / "scores.parquet").to_pandas()
    assert len(scores) == 32 and scores["row"].tolist() == list(range(32)) and scores["density"].notna().all()
    summary = json.loads((out / "selection.json").read_text())
    assert {name: entry["n_selected"] for name, entry in summary["outputs"].items()} == \
        {"grads-0.25.jsonl": 8, "random-0.25.jsonl": 8}
    assert len((out / "selected" / "grads-0.25.jsonl").read_text().splitlines()) == 8
    assert (out / "report.html").exists() and not list(out.rglob(".*.tmp"))


def test_an_accelerate_launch_with_the_fsdp_plugin_asks_for_sharded_scoring(monkeypatch):
    from grads.infra.distributed import fsdp_requested

    monkeypatch.delenv("ACCELERATE_USE_FSDP", raising=False)
    assert not fsdp_requested(False) and fsdp_requested(True)
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # what `accelerate launch` exports for an FSDP config
    assert fsdp_requested(False)
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "false")
    assert not fsdp_requested(False)

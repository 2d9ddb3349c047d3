"""Hub access as the ecosystem does it, for real: `grads` runs in a child process with HF_ENDPOINT pointed at a
small hub on 127.0.0.1 (tests/hub_server.py) serving the tiny test model (gated: it needs HF_TOKEN) and a dataset
repo. The first run downloads both into an empty Hugging Face cache; a second run with HF_HUB_OFFLINE=1 reads the
cache alone (the server sees no request) and writes the same selection. A LoRA adapter repo on the model loads
both, online and with `grads --offline`. With the server stopped and the cache emptied, a run stops with exit 2
naming the missing id and how to fetch it. HF_TOKEN reaches the hub and no file a run writes.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from helpers import ENV, lora_adapter, write_jsonl
from hub_server import HubServer, Repo

MODEL, DATA, ADAPTER = "acme/tiny-gated", "acme/tiny-sft", "acme/tiny-lora"
TOKEN = "hf_MARKERtokenNEVERwritten0123456789"  # the test's HF_TOKEN: searched for in every output
TIMEOUT = 300  # seconds per child process


@pytest.fixture(scope="module")
def repos(tiny_model_dir, tmp_path_factory) -> dict[str, dict[str, Repo]]:
    """The tiny model as a gated model repo, a LoRA adapter repo on it, and 24 prompt-completion records as a
    dataset repo (data/train.jsonl)."""
    adapter = lora_adapter(tiny_model_dir, tmp_path_factory.mktemp("adapter-repo"), MODEL)
    folder = tmp_path_factory.mktemp("dataset-repo")
    records = [{"id": f"q{i}", "prompt": f"Question {i}: what is {i} plus {3 * i}?",
                "completion": f"Answer: {4 * i}." + " Because." * (i % 4)} for i in range(24)]
    (folder / "data").mkdir()
    write_jsonl(folder / "data" / "train.jsonl", records)
    (folder / "README.md").write_text("# tiny SFT set\n")
    return {"models": {MODEL: Repo.from_folder(tiny_model_dir, token=TOKEN), ADAPTER: Repo.from_folder(adapter)},
            "datasets": {DATA: Repo.from_folder(folder)}}


def child_env(home: Path, endpoint: str, **extra: str) -> dict[str, str]:
    """The environment of a user's shell: HF_ENDPOINT at the test hub, every cache under `home`, and none of the
    suite's offline switches (the Makefile and conftest set them) unless asked."""
    env = {k: v for k, v in ENV.items()
           if k not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN")}
    env.update(HF_ENDPOINT=endpoint, HF_HOME=str(home / "hf"), HF_HUB_CACHE=str(home / "hf" / "hub"),
               HF_DATASETS_CACHE=str(home / "hf" / "datasets"), GRADS_HOME=str(home / "grads"),
               HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_UPDATE_CHECK="1", TOKENIZERS_PARALLELISM="false")
    env.update(extra)
    return env


def grads(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "grads.cli", *args], env=env, capture_output=True, text=True,
                          timeout=TIMEOUT)


def select(env: dict[str, str], out: Path, *flags: str, model: str = MODEL, data: str = DATA):
    return grads(env, *flags, "select", "--model", model, "--data", data, "--out", str(out), "--warmup-epochs", "0",
                 "--max-length", "64", "--batch-size", "8", "--method", "grads", "--method", "random",
                 "--ratio", "0.25", "--quiet")


def comparable(record: dict) -> dict:
    """A score.json or selection.json less what names this run's folder (the job's `out`) and the seconds its
    stages took (`cost`)."""
    record = json.loads(json.dumps(record))
    record.pop("cost", None)
    for settings in (record.get("job"), record.get("settings")):
        if settings is not None:
            settings.pop("out", None)
    return record


@pytest.mark.e2e  # starts grads in child processes
def test_hub_model_and_dataset_download_on_demand_then_read_offline(repos, tmp_path):
    model_sha, data_sha = repos["models"][MODEL].sha, repos["datasets"][DATA].sha
    home = tmp_path / "home"
    with HubServer(repos) as hub:
        # no token: the gated model is refused, and the error says what to do
        refused = select(child_env(home, hub.url), tmp_path / "refused")
        assert refused.returncode == 2, refused.stderr[-3000:]
        assert f"could not load the tokenizer of '{MODEL}' from the Hugging Face Hub" in refused.stderr
        assert "HF_TOKEN" in refused.stderr and "Traceback" not in refused.stderr

        online = select(child_env(home, hub.url, HF_TOKEN=TOKEN), tmp_path / "online")
        assert online.returncode == 0, online.stderr[-3000:]
        assert any(auth and "/resolve/" in path and MODEL in path for _, path, auth in hub.requests)
        asked = len(hub.requests)

        offline = select(child_env(home, hub.url, HF_TOKEN=TOKEN, HF_HUB_OFFLINE="1"), tmp_path / "offline")
        assert offline.returncode == 0, offline.stderr[-3000:]
        assert len(hub.requests) == asked, hub.requests[asked:]  # the cache alone

        # a PEFT adapter repo: its base downloads first (here already cached), the adapter on top; then offline,
        # by `grads --offline`
        lora = grads(child_env(home, hub.url, HF_TOKEN=TOKEN), "score", "--model", ADAPTER, "--data", DATA,
                     "--out", str(tmp_path / "lora"), "--max-length", "64", "--batch-size", "8", "--quiet")
        assert lora.returncode == 0, lora.stderr[-3000:]
        assert any("/resolve/" in path and ADAPTER in path and "safetensors" in path for _, path, _ in hub.requests)
        asked = len(hub.requests)
        lora_offline = grads(child_env(home, hub.url), "--offline", "score", "--model", ADAPTER, "--data", DATA,
                             "--out", str(tmp_path / "lora-offline"), "--max-length", "64", "--batch-size", "8",
                             "--quiet")
        assert lora_offline.returncode == 0, lora_offline.stderr[-3000:]
        assert len(hub.requests) == asked, hub.requests[asked:]

    # the files read, and the commits they are of, are recorded; offline they are the same files
    arrow = next((home / "hf" / "datasets").rglob("*-train.arrow"))
    assert arrow.parent.name == data_sha
    for run in ("online", "offline"):
        score = json.loads((tmp_path / run / "score" / "score.json").read_text())
        selection = json.loads((tmp_path / run / "selection.json").read_text())
        for record in (score, selection):
            assert record["model_revision"] == model_sha
            assert record["input"]["revision"] == data_sha
            assert record["input"]["sha256"] == hashlib.sha256(arrow.read_bytes()).hexdigest()
            assert record["input"]["path"] == DATA and record["input"]["n_examples"] == 24
    first = json.loads((tmp_path / "online" / "selection.json").read_text())
    tables = {run: pq.read_table(tmp_path / run / "scores.parquet").to_pandas() for run in ("online", "offline")}
    again = json.loads((tmp_path / "offline" / "selection.json").read_text())
    assert again["outputs"] == first["outputs"] and again["input"] == first["input"]
    assert comparable(again) == comparable(first)
    assert comparable(json.loads((tmp_path / "offline" / "score" / "score.json").read_text())) == \
        comparable(json.loads((tmp_path / "online" / "score" / "score.json").read_text()))
    assert (tmp_path / "offline" / "selected" / "grads-0.25.jsonl").read_bytes() == \
        (tmp_path / "online" / "selected" / "grads-0.25.jsonl").read_bytes()
    assert list(tables["offline"]["id"]) == list(tables["online"]["id"])
    for column in ("loss", "emb_grad_norm", "head_grad_norm", "combined"):
        np.testing.assert_allclose(tables["offline"][column], tables["online"][column], rtol=1e-5, atol=1e-7)
    records = {run: json.loads((tmp_path / run / "score.json").read_text()) for run in ("lora", "lora-offline")}
    assert records["lora"]["model_revision"] == records["lora-offline"]["model_revision"] == \
        repos["models"][ADAPTER].sha
    lora_scores = {run: pq.read_table(tmp_path / run / "scores.parquet").to_pandas() for run in records}
    np.testing.assert_allclose(lora_scores["lora-offline"]["loss"], lora_scores["lora"]["loss"], rtol=1e-5)
    base_scores = pq.read_table(tmp_path / "online" / "score" / "scores.parquet").to_pandas()
    assert not np.allclose(lora_scores["lora"]["loss"], base_scores["loss"])  # the adapter was applied

    # HF_TOKEN reached the hub (it served the gated model) and nothing else: no file any run wrote holds it (the
    # outputs, grads' token cache, the Hugging Face caches), nor what they printed
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(written) > 50 and any((home / "grads").rglob("*.arrow"))
    assert not [p for p in written if TOKEN.encode() in p.read_bytes()]
    assert all(TOKEN not in run.stdout + run.stderr for run in (refused, online, offline, lora, lora_offline))

    # the server gone and the cache emptied: offline, a missing dataset or model is one clear error
    shutil.rmtree(home / "hf")
    env = child_env(home, hub.url, HF_HUB_OFFLINE="1")
    gone = select(env, tmp_path / "gone")
    assert gone.returncode == 2, gone.stderr[-3000:]
    assert gone.stderr.startswith(f"error: {DATA}:train: {DATA} is not a local file or folder, and not a dataset "
                                  "in the local Hugging Face cache (HF_HUB_OFFLINE=1: nothing is downloaded)")
    assert f"hint: fetch it once where the hub is reachable (`hf download {DATA} --repo-type dataset`)" in gone.stderr
    pool = write_jsonl(tmp_path / "pool.jsonl", [{"prompt": "Q", "completion": "A"}] * 4)
    gone = select(env, tmp_path / "gone", model=MODEL, data=str(pool))
    assert gone.returncode == 2, gone.stderr[-3000:]
    assert gone.stderr.startswith(f"error: the tokenizer of '{MODEL}' is not in the local Hugging Face cache, and "
                                  "HF_HUB_OFFLINE=1 allows no download")
    assert f"hint: fetch it once where the hub is reachable (`hf download {MODEL}`)" in gone.stderr
    assert "Traceback" not in gone.stderr

"""SIGKILL at the worst moments (docs/reliability.md, "Faults"): during scoring, during the warm-up, while a
checkpoint is saved and while the outputs are written; each rerun resumes and ends with the files of an
uninterrupted run, byte for byte. Every run that is killed here is a child process."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from helpers import kill_when, run_select_process, start_select, temp_files, visible_files

from grads.errors import GradsError

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("one_thread")]
GRADS = [sys.executable, "-m", "grads.cli"]


def test_score_killed_halfway_resumes_to_the_same_file(tmp_path, tiny_model_dir, medmcqa_dir):
    """A scoring killed midway resumes from its chunks to the file of an uninterrupted run, and its recorded
    seconds count the killed sitting's chunks too."""
    from grads.stages.score import CHUNK_DIR, chunk_seconds

    args = ["score", "--model", str(tiny_model_dir), "--data", str(medmcqa_dir / "pool.jsonl"), "--limit", "120",
            "--batch-size", "1", "--max-length", "128", "--quiet"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    subprocess.run([*GRADS, *args, "--out", str(tmp_path / "clean")], check=True, env=env, capture_output=True)

    killed = tmp_path / "killed"
    proc = subprocess.Popen([*GRADS, *args, "--out", str(killed)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while len(list((killed / CHUNK_DIR).glob("chunk-*.parquet"))) < 3 and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    n_chunks = len(list((killed / CHUNK_DIR).glob("chunk-*.parquet")))
    assert 3 <= n_chunks < 90 and not (killed / "scores.parquet").exists()  # really killed midway
    earlier = chunk_seconds(killed / CHUNK_DIR)

    subprocess.run([*GRADS, *args, "--out", str(killed)], check=True, env=env, capture_output=True)
    clean = pq.read_table(tmp_path / "clean" / "scores.parquet")
    resumed = pq.read_table(killed / "scores.parquet")
    assert resumed.num_rows == 120 and resumed.to_pandas().equals(clean.to_pandas())
    assert (killed / "scores.parquet").read_bytes() == (tmp_path / "clean" / "scores.parquet").read_bytes()
    meta = json.loads((killed / "score.json").read_text())
    assert sum(meta["status_counts"].values()) == 120
    timings = json.loads((killed / "timings.json").read_text())
    assert earlier > 0 and timings["scoring_s"] == pytest.approx(earlier + timings["scoring_s_this_sitting"],
                                                                 abs=0.011)

    # the same command again reuses the finished folder (the file untouched); another run's settings are refused
    # (no kill: in this process)
    from typer.testing import CliRunner

    from grads.cli import app

    finished = (killed / "scores.parquet").stat().st_mtime_ns
    again = CliRunner().invoke(app, [*args, "--out", str(killed)])
    assert again.exit_code == 0, again.output
    assert (killed / "scores.parquet").stat().st_mtime_ns == finished
    other = CliRunner().invoke(app, [*args[:-1], "--max-length", "64", "--quiet", "--out", str(killed)])
    assert isinstance(other.exception, GradsError) and "different run" in str(other.exception)  # exit code 2


def comparable(folder: Path) -> dict[str, bytes]:
    """Every output a reader uses; timings.json (wall-clock seconds, of the run and of its scoring stage), the
    warm-up's done.json (which records where it resumed from and the losses logged by this process) and what the
    selection cost (selection.json's cost object and the report's Cost section: seconds) legitimately differ."""
    files = visible_files(folder)
    for name in ("timings.json", "score/timings.json", "warmup/model/done.json"):
        files.pop(name, None)
    if "selection.json" in files:
        summary = json.loads(files["selection.json"])
        summary.pop("cost")
        files["selection.json"] = json.dumps(summary, sort_keys=True).encode()
    if "report.html" in files:
        files["report.html"] = re.sub(rb"<h2>Cost</h2>.*?(?=<h2>)", b"", files["report.html"], flags=re.S)
    return files


@pytest.fixture
def fresh(warm):
    shutil.rmtree(warm.run, ignore_errors=True)
    yield warm
    shutil.rmtree(warm.run, ignore_errors=True)


def test_sigkill_during_warm_up_resumes_from_the_last_checkpoint(fresh):
    checkpoints = fresh.run / "warmup" / "checkpoints"
    proc = start_select(fresh.job_file)
    kill_when(proc, lambda: (checkpoints / "checkpoint-4" / "trainer_state.json").exists())
    assert not (fresh.run / "warmup" / "model").exists() and not (fresh.run / "selection.json").exists()
    saved = sorted(p.name for p in checkpoints.glob("checkpoint-*"))
    assert "checkpoint-4" in saved and "checkpoint-12" not in saved

    # the same folder with other warm-up settings is refused, and its checkpoints are left alone
    from grads.pipeline import run_select

    before = visible_files(checkpoints)
    other = fresh.job.model_copy(update={"train": fresh.job.train.model_copy(update={"learning_rate": 1e-3})})
    with pytest.raises(GradsError, match="unfinished training checkpoints of a run with other settings") as err:
        run_select(other, progress=False, log=lambda m: None)
    assert err.value.path == str(checkpoints)
    assert visible_files(checkpoints) == before

    # each checkpoint records the training seconds up to it; the resumed run's done.json adds its own sitting
    from grads.stages.train import SECONDS, last_complete_checkpoint

    step = Path(last_complete_checkpoint(checkpoints)).name.removeprefix("checkpoint-")
    earlier = json.loads((checkpoints / SECONDS).read_text())[step]
    run_select_process(fresh.job_file)
    done = json.loads((fresh.run / "warmup" / "model" / "done.json").read_text())
    resumed = int(Path(done["resumed_from"]).name.removeprefix("checkpoint-"))
    assert 4 <= resumed < 12 and done["steps"] == 12 and done["examples"] == 24
    assert earlier > 0 and done["seconds"] == pytest.approx(earlier + done["seconds_this_sitting"], abs=0.11)
    # every step's seconds, the killed sitting's among them, rising to the whole
    by_step = done["seconds_by_step"]
    assert sorted(by_step, key=int) == [str(k) for k in range(1, 13)] and by_step[step] == earlier
    seconds = [by_step[str(k)] for k in range(1, 13)]
    assert all(a <= b for a, b in zip(seconds, seconds[1:]))
    assert 0 < seconds[0] and seconds[-1] <= done["seconds"]
    assert not checkpoints.exists() and temp_files(fresh.run) == []
    assert comparable(fresh.run) == comparable(fresh.clean)  # the LoRA weights, scores, selections, report


def test_sigkill_while_a_checkpoint_is_saved_resumes_from_the_one_before(fresh, monkeypatch):
    """The Trainer writes a checkpoint's files one by one, trainer_state.json last; a kill in between left a
    folder that every rerun crashed on. Now it is deleted and the run resumes from the checkpoint before."""
    checkpoints = fresh.run / "warmup" / "checkpoints"
    proc = start_select(fresh.job_file)
    kill_when(proc, lambda: (checkpoints / "checkpoint-4").is_dir())
    # whether the kill landed inside that save or just after it, make the folder what a kill inside leaves
    (checkpoints / "checkpoint-4" / "trainer_state.json").unlink(missing_ok=True)
    assert (checkpoints / "checkpoint-2" / "trainer_state.json").exists()
    # what a checkpoint holds: the adapter as safetensors; optimizer/scheduler/RNG state in torch's format,
    # read back below only with weights_only=True (checked by the spy)
    assert (checkpoints / "checkpoint-2" / "adapter_model.safetensors").exists()

    loads = []
    real_load = torch.load

    def spy(*args, **kwargs):
        loads.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    from grads.pipeline import run_select

    run_select(fresh.job, progress=False, log=lambda m: None)  # in this process, to watch torch.load
    done = json.loads((fresh.run / "warmup" / "model" / "done.json").read_text())
    assert Path(done["resumed_from"]).name == "checkpoint-2" and done["steps"] == 12
    assert loads and all(w is True for w in loads), loads
    assert comparable(fresh.run) == comparable(fresh.clean)


def test_sigkill_while_writing_outputs_never_leaves_half_files(fresh):
    """Kill the run twice while it writes its outputs (warm-up and scores are reused): every file a reader can
    see is then complete (identical to the clean run's), and the rerun ends with the same outputs and no
    temporary files."""
    shutil.copytree(fresh.clean, fresh.run)
    for name in ["selected", "plots"]:
        shutil.rmtree(fresh.run / name)
    for name in ["selection.json", "scores.parquet", "report.html", "timings.json"]:
        (fresh.run / name).unlink()
    clean = comparable(fresh.clean)
    points = [lambda: any((fresh.run / "selected").glob("*.jsonl")),
              lambda: (fresh.run / "plots").is_dir() and any((fresh.run / "plots").iterdir())]
    for ready in points:
        proc = start_select(fresh.job_file)
        kill_when(proc, ready)
        seen = comparable(fresh.run)
        assert seen and all(seen[name] == clean[name] for name in seen), \
            [name for name in seen if seen[name] != clean.get(name)]
        assert not (fresh.run / "report.html").exists()
    run_select_process(fresh.job_file)
    assert comparable(fresh.run) == clean
    assert temp_files(fresh.run) == []

"""Outputs and folders (issue 16): file and folder modes follow the umask, one writer per output folder, and a
pool whose norms have no spread (a flat density)."""

from __future__ import annotations

import json
import math
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from grads.core.rules import id_hash, select
from grads.core.signals import SIGNALS, DensitySpec, combined_signal, density
from grads.errors import GradsError
from grads.infra import atomic
from grads.stages.report import FLAT_DENSITY, write_report

SRC = Path(__file__).resolve().parent.parent / "src"
ENV = {**{k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")},
       "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# ------------------------------------------------------------------------------------------------ modes


@pytest.fixture(params=[(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)], ids=["umask022", "umask077"])
def umask(request):
    """Run the test under a umask; yields (file mode, folder mode) a plain open()/mkdir would give."""
    mask, file_mode, folder_mode = request.param
    old = os.umask(mask)
    try:
        yield file_mode, folder_mode
    finally:
        os.umask(old)


def test_written_files_get_the_mode_open_would_give(tmp_path, umask):
    file_mode, _ = umask
    plain = tmp_path / "plain.txt"
    with open(plain, "w") as f:
        f.write("x")
    assert mode(plain) == file_mode  # the reference: what the user's umask gives any program's file

    atomic.write_json(tmp_path / "selection.json", {"a": 1})
    atomic.write_parquet(tmp_path / "scores.parquet", pa.table({"x": [1, 2]}))
    atomic.write_text(tmp_path / "report.html", "<p>hi</p>")
    atomic.write_bytes(tmp_path / "nested" / "data.bin", b"\0\1")
    atomic.write_with(tmp_path / "plot.png", lambda tmp: Path(tmp).write_bytes(b"png"))
    with atomic.atomic_path(tmp_path / "selected.jsonl") as tmp:
        assert tmp.match(atomic.TEMP_GLOB) and mode(tmp) == file_mode  # the temporary file already has it
        tmp.write_text("{}\n")
    for name in ["selection.json", "scores.parquet", "report.html", "nested/data.bin", "plot.png",
                 "selected.jsonl"]:
        assert mode(tmp_path / name) == file_mode, name
    assert mode(tmp_path / "nested") == umask[1]


def test_rewriting_an_old_0600_file_gives_it_the_umask_mode(tmp_path, umask):
    target = tmp_path / "selection.json"
    target.write_text("old")
    target.chmod(0o600)  # what earlier versions wrote
    atomic.write_json(target, {"new": True})
    assert mode(target) == umask[0] and json.loads(target.read_text()) == {"new": True}


def test_atomic_folder_gets_the_mode_mkdir_would_give(tmp_path, umask):
    file_mode, folder_mode = umask
    with atomic.atomic_folder(tmp_path / "model") as tmp:
        assert tmp.name.startswith(".model.") and mode(tmp) == folder_mode
        (tmp / "config.json").write_text("{}")  # what a library's save_pretrained does inside it
    assert mode(tmp_path / "model") == folder_mode
    assert mode(tmp_path / "model" / "config.json") == file_mode
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no temporary left


# -------------------------------------------------------------------------------------- one writer per folder

HOLD = """
import sys, time
from grads.infra import atomic
with atomic.folder_lock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(120)
"""


@pytest.fixture
def holder(tmp_path):
    """A child process that holds tmp_path/'out' with folder_lock and sleeps; killed at the end."""
    folder = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], env=ENV, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        yield proc, folder
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stdout.close()


def test_a_second_process_is_refused_and_a_killed_holder_frees_the_folder(holder):
    proc, folder = holder
    lock = folder / atomic.LOCK_NAME
    assert json.loads(lock.read_text())["pid"] == proc.pid
    with pytest.raises(GradsError) as err:
        with atomic.folder_lock(folder):
            pytest.fail("entered a folder another process holds")
    text = str(err.value)
    assert f"output folder is in use by another grads process (pid {proc.pid})" in text
    assert err.value.path == str(folder) and "use another --out" in err.value.hint

    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert lock.exists()  # a killed holder leaves its file behind, unlocked
    assert atomic.remove_stale_temps(folder) == [] and lock.exists()  # not a temporary file
    started = time.monotonic()
    with atomic.folder_lock(folder):  # taken at once: the kernel released the dead process's lock
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert time.monotonic() - started < 1
    assert not lock.exists()  # a clean exit removes it


def test_lock_file_is_left_alone_by_stale_temp_cleanup_and_readers(tmp_path):
    folder = tmp_path / "new" / "out"
    with atomic.folder_lock(folder) as held:
        assert held == folder and folder.is_dir()  # created when needed
        (folder / ".scores.parquet.abc.tmp").write_bytes(b"half")
        atomic.write_json(folder / "selection.json", {})
        assert atomic.remove_stale_temps(folder) == [folder / ".scores.parquet.abc.tmp"]
        assert (folder / atomic.LOCK_NAME).exists()
        assert not (folder / atomic.LOCK_NAME).match(atomic.TEMP_GLOB)
        for pattern in ["*.jsonl", "*.json", "*.parquet", "checkpoint-*", ".model.*", "*/results.json"]:
            assert atomic.LOCK_NAME not in [p.name for p in folder.glob(pattern)], pattern  # globs in src/
        with atomic.folder_lock(folder):  # nested in one process: allowed, a no-op
            pass
        assert (folder / atomic.LOCK_NAME).exists()  # still held by the outer one
    assert sorted(p.name for p in folder.iterdir()) == ["selection.json"]


def test_only_rank_zero_of_a_launched_job_takes_the_lock(holder, monkeypatch):
    _, folder = holder
    before = (folder / atomic.LOCK_NAME).read_bytes()
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    with atomic.folder_lock(folder):  # rank 1 shares its job's folder: it does not try
        pass
    assert (folder / atomic.LOCK_NAME).read_bytes() == before  # and does not touch rank 0's lock file
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(GradsError, match="in use by another grads process"):
        with atomic.folder_lock(folder):
            pass


# ------------------------------------------------------------------------------------------- zero spread


def table(emb, head, n_target=None) -> pd.DataFrame:
    n = len(emb)
    return pd.DataFrame({
        "id": [f"e{i}" for i in range(n)], "row": np.arange(n),
        "n_target_tokens": n_target if n_target is not None else [5] * n, "loss": [1.0] * n,
        "emb_grad_norm": emb, "head_grad_norm": head, "tied_grad_norm": [math.nan] * n, "status": ["ok"] * n,
    })


N = 50
ULP = float(np.nextafter(0.1, 1.0))
F32 = float(np.float32(0.1))  # a norm scored in float32, read back as float64
FLAT = {"0.1": ([0.1] * N, [0.1] * N), "0.7": ([0.7] * N, [0.7] * N), "float32 0.1": ([F32] * N, [F32] * N),
        "1 ulp apart": ([0.1, ULP] * (N // 2), [ULP, 0.1] * (N // 2))}


def test_equal_norms_do_give_a_rounding_noise_spread():
    """Why the fix is needed: the std of 50 equal log-norms is not always 0, and (x - mean) / std is then ±1."""
    for value in (0.7, F32):
        x = np.log(np.full(N, value))
        assert 0 < x.std() < 1e-15 and np.all(np.abs((x - x.mean()) / x.std()) == 1.0)


@pytest.mark.parametrize("case", FLAT)
def test_norms_without_spread_give_a_zero_signal_and_a_flat_density(case):
    emb, head = FLAT[case]
    frame = table(emb, head, n_target=list(range(3, 3 + N)))  # lengths vary: the residual signal too
    for name in SIGNALS:
        s = combined_signal(frame, name)
        assert np.all(s == 0.0), (name, s[:3])
    s, dens, h = density(frame)
    assert np.all(s == 0.0) and np.all(dens == dens[0]) and np.isfinite(dens[0]) and h > 0


@pytest.mark.parametrize("case", FLAT)
def test_grads_on_a_flat_pool_keeps_the_id_hash_tie_break_subset(case):
    emb, head = FLAT[case]
    frame = table(emb, head)
    picked = select(frame, "grads", 0.1)
    assert len(picked) == math.ceil(0.1 * N) == 5
    want = sorted(frame["id"].iloc[np.argsort(id_hash(frame["id"]))[:5]])  # ties go to the smallest id hash
    assert sorted(frame["id"].iloc[picked]) == want
    shuffled = frame.sample(frac=1, random_state=0).reset_index(drop=True)
    assert sorted(shuffled["id"].iloc[select(shuffled, "grads", 0.1)]) == want  # input order does not matter


def test_a_small_real_spread_is_still_standardised():
    emb = 0.1 * (1 + 1e-6 * np.arange(N))  # tiny but far above rounding
    frame = table(emb, [0.2] * N)
    la = np.log(emb)
    np.testing.assert_allclose(combined_signal(frame, "emb"), (la - la.mean()) / la.std(), rtol=1e-6)
    np.testing.assert_allclose(combined_signal(frame), (la - la.mean()) / la.std(), rtol=1e-6)  # head: 0
    assert combined_signal(frame, "robust-zsum").std() > 0.5


def report_inputs(frame: pd.DataFrame, cfg: DensitySpec):
    frame = frame.copy()
    frame["combined"], frame["density"], h = density(frame, cfg)
    picked = select(frame, "grads", 0.1, cfg=cfg)
    ids = frame["id"].iloc[picked].tolist()
    summary = {"input": {"path": "/data/pool.jsonl", "n_examples": len(frame), "format": "prompt-completion",
                         "sha256": "0" * 64},
               "n_eligible": len(frame), "settings": {"model": {"model": "tiny"}}, "warmup_model": None,
               "signal": {"bandwidth": h, "signal": cfg.signal}, "status_counts": {"ok": len(frame)},
               "outputs": {"grads-0.1.jsonl": {"method": "grads", "ratio": 0.1, "n_selected": len(ids), "ids": ids,
                                               "rule": ""}}}
    rows = [json.dumps({"prompt": f"q{i}", "completion": "a"}) for i in range(len(frame))]
    return frame, summary, cfg, rows


def test_report_of_a_flat_pool_says_the_density_is_flat(tmp_path):
    cfg = DensitySpec()
    stale = tmp_path / "plots" / "signal_kde.png"
    stale.parent.mkdir()
    stale.write_bytes(b"an earlier run's plot")
    page = write_report(tmp_path, *report_inputs(table([0.1] * N, [0.1] * N), cfg)).read_text()
    assert FLAT_DENSITY in page and 'alt="signal and KDE"' not in page
    assert not stale.exists()  # no plot of a density that does not exist
    for kept in ['alt="embedding vs head"', 'alt="signal vs length"', "grads-0.1.jsonl", "Excluded examples",
                 "most representative", "Overlap between selections"]:
        assert kept in page, kept
    assert (tmp_path / "plots" / "emb_vs_head.png").exists()


def test_report_with_a_spread_still_draws_the_kde(tmp_path):
    cfg = DensitySpec()
    rng = np.random.default_rng(0)
    frame = table(rng.random(N) + 0.5, rng.random(N) + 0.5)
    page = write_report(tmp_path, *report_inputs(frame, cfg)).read_text()
    assert 'alt="signal and KDE"' in page and FLAT_DENSITY not in page
    assert (tmp_path / "plots" / "signal_kde.png").exists()


def test_a_second_command_on_a_folder_in_use_stops_at_once_with_exit_2(holder, tiny_model_dir, capsys):
    """The stages take the lock: `grads select`, `grads score`, `grads train` and `grads experiment` on a folder
    another grads process holds stop before doing anything, naming the folder and the holder's pid."""
    from conftest import write_jsonl

    from grads.cli import main

    proc, folder = holder
    pool = write_jsonl(folder.parent / "pool.jsonl", [{"prompt": "What is 2 + 2?", "completion": "4"}] * 3)
    config = folder.parent / "exp.yaml"
    config.write_text(f"model: {tiny_model_dir}\ndata: {pool}\nmethods: []\nseeds: [0]\n")
    for command in (["select", "--model", str(tiny_model_dir), "--data", str(pool)],
                    ["score", "--model", str(tiny_model_dir), "--data", str(pool)],
                    ["train", "--model", str(tiny_model_dir), "--data", str(pool)],
                    ["experiment", str(config)]):
        with pytest.raises(SystemExit) as exit_info:  # it does not wait for the holder (which sleeps 120 s)
            main([*command, "--out", str(folder)])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2, command
        assert f"{folder}: output folder is in use by another grads process (pid {proc.pid})" in err, command
    assert sorted(p.name for p in folder.iterdir()) == [atomic.LOCK_NAME]  # nothing written beside the lock

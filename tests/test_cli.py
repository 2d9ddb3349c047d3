"""The command line end to end: help texts, errors with exit code 2 before any model loads, and a scoring run
killed halfway that resumes to the same file as a clean run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest
from conftest import write_jsonl
from typer.testing import CliRunner

from grads.cli import app, main

GRADS = [sys.executable, "-m", "grads.cli"]


@pytest.mark.parametrize("command", [["score"], ["select"], ["train"], ["eval"], ["experiment"],
                                     ["data", "prepare"], ["data", "inspect"], ["models", "cache"], ["models", "list"]])
def test_every_command_has_help_with_an_example(command):
    result = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0 and "Example: grads " + " ".join(command) in result.output


def test_top_level_help_lists_the_commands():
    result = CliRunner().invoke(app, ["--help"])
    for name in ["score", "select", "data", "models"]:
        assert name in result.output


def run_main(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    return exit_info.value.code, capsys.readouterr().err


def test_bad_data_fails_before_the_model_is_loaded(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "completion": "b"}\n{oops\n')
    # the model does not exist: if the data were not checked first, the error would be about the model
    code, err = run_main(["score", "--model", "./no-such-model", "--data", str(bad), "--out", str(tmp_path / "o")],
                         capsys)
    assert code == 2 and f"{bad}:2: not valid JSON" in err
    assert not (tmp_path / "o").exists()


def test_unknown_model_and_bad_values_exit_2(tmp_path, capsys):
    data = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "a", "completion": "b"}])
    code, err = run_main(["score", "--model", "./no-such-model", "--data", str(data), "--out", str(tmp_path / "o")],
                         capsys)
    assert code == 2 and "model './no-such-model' not found" in err
    code, err = run_main(["score", "--model", "x", "--data", str(data), "--out", str(tmp_path / "o"),
                          "--batch-size", "0"], capsys)
    assert code == 2 and "batch_size" in err


def test_data_inspect_reports_tokens(tiny_model_dir, medmcqa_dir):
    result = CliRunner().invoke(app, ["data", "inspect", str(medmcqa_dir / "pool.jsonl"), "--model",
                                      str(tiny_model_dir), "--limit", "20", "--max-length", "128"])
    assert result.exit_code == 0, result.output
    assert "20 examples, format prompt-completion, ids from field" in result.output
    assert "truncated to 128:" in result.output


def test_score_killed_halfway_resumes_to_the_same_file(tmp_path, tiny_model_dir, medmcqa_dir):
    args = ["score", "--model", str(tiny_model_dir), "--data", str(medmcqa_dir / "pool.jsonl"), "--limit", "240",
            "--batch-size", "1", "--max-length", "128", "--quiet"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    subprocess.run([*GRADS, *args, "--out", str(tmp_path / "clean")], check=True, env=env, capture_output=True)

    killed = tmp_path / "killed"
    proc = subprocess.Popen([*GRADS, *args, "--out", str(killed)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while len(list((killed / "score-chunks").glob("chunk-*.parquet"))) < 3 and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    n_chunks = len(list((killed / "score-chunks").glob("chunk-*.parquet")))
    assert 3 <= n_chunks < 60 and not (killed / "scores.parquet").exists()  # really killed midway

    subprocess.run([*GRADS, *args, "--out", str(killed)], check=True, env=env, capture_output=True)
    clean = pq.read_table(tmp_path / "clean" / "scores.parquet")
    resumed = pq.read_table(killed / "scores.parquet")
    assert resumed.num_rows == 240 and resumed.to_pandas().equals(clean.to_pandas())
    assert (killed / "scores.parquet").read_bytes() == (tmp_path / "clean" / "scores.parquet").read_bytes()
    meta = json.loads((killed / "score.json").read_text())
    assert sum(meta["status_counts"].values()) == 240

    # the same command again reuses the finished folder; another run's settings are refused
    again = subprocess.run([*GRADS, *args, "--out", str(killed)], env=env, capture_output=True, text=True)
    assert again.returncode == 0
    other = subprocess.run([*GRADS, *args[:-1], "--max-length", "64", "--quiet", "--out", str(killed)], env=env,
                           capture_output=True, text=True)
    assert other.returncode == 2 and "different run" in other.stderr

"""Reliability and safety (docs/reliability.md lists every case with its message and test).

Bad input stops with one message naming the file, the line or record, and what to do (exit code 2, nothing
written); per-example problems get a status and never abort a run; SIGKILL during the warm-up, while a
checkpoint is saved and while outputs are written resumes to the same files; a full disk is a clear error that
keeps earlier outputs; no remote code unless asked, no unpickling, no shell commands, and an escaped report.
"""

from __future__ import annotations

import ast
import errno
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from conftest import tiny_llama, write_jsonl
from typer.testing import CliRunner

from grads.cli import app, main
from grads.config import DataConfig, ModelConfig, ScoreConfig, SelectConfig, SelectJob, TrainConfig
from grads.core.gradnorms import IGNORE_INDEX
from grads.data.formats import load_pool
from grads.data.readers import raw_rows
from grads.errors import GradsError
from grads.infra import atomic

SRC = Path(__file__).resolve().parent.parent / "src" / "grads"
PC = {"prompt": "Capital of France?", "completion": "Paris."}
PC_LINE = json.dumps(PC).encode() + b"\n"
# subprocesses: one thread each (the CPUs are shared), the same in every run whose outputs are compared
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def run_main(argv, capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in argv])
    captured = capsys.readouterr()
    return exit_info.value.code, captured.err, captured.out


def assert_one_message(err: str, where: str, message: str, hint: str, after_progress: bool = False) -> None:
    """`error: WHERE MESSAGE` on one line, `  hint: HINT` on the next, and nothing else (after the progress
    lines a run printed before it failed, if `after_progress`)."""
    assert sum(line.startswith("error: ") for line in err.splitlines()) == 1, err[-3000:]
    if after_progress:
        err = err[err.index("\nerror: ") + 1:]
    assert err.startswith(f"error: {where}"), err[:2000]
    first, _, rest = err.rstrip("\n").partition("\n")
    assert message in first, first[:2000]
    assert rest.startswith("  hint: ") and hint in rest and "\n" not in rest, err[:2000]
    assert "Traceback" not in err


def visible_files(folder: Path) -> dict[str, bytes]:
    """Every file a reader would open (temporary files start with a dot), by path relative to `folder`."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)}


def temp_files(folder: Path) -> list[Path]:
    """Temporary files and folders left behind; a killed run's unlocked `.grads.lock` is not one (the next run
    takes it over, tests/test_outputs.py)."""
    return [p for p in folder.rglob(".*") if (p.is_file() or p.is_dir()) and p.name != atomic.LOCK_NAME]


# ------------------------------------------------------------------------------------------------ bad input

LONG = b"x" * 1_000_000
JSONL_CASES = {
    "empty file": (b"", None, "no records found (the input is empty)", "give a file with at least one example"),
    "only blank lines": (b"\n  \n\n", None, "no records found (the input is empty)",
                         "give a file with at least one example"),
    "a line that is not JSON": (PC_LINE + b'{"prompt": "a", \n', 2,
                                "not valid JSON: Expecting property name enclosed in double quotes at column 17",
                                "each line must be one JSON object"),
    "a record that is a list": (PC_LINE + b"[1, 2]\n", 2, "expected a JSON object, got list",
                                "each line must be one JSON object"),
    "a record that is a string": (b'"hello"\n', 1, "expected a JSON object, got str", "each line must be one JSON"),
    "a prompt of the wrong type": (PC_LINE + b'{"prompt": 5, "completion": "b"}\n', 2,
                                   "field 'prompt' must be a string or a list of messages, got int",
                                   "prompt-completion records need"),
    "a missing completion": (PC_LINE + b'{"prompt": "a"}\n', 2, "field 'prompt' or 'completion' is missing or null",
                             "prompt-completion records need"),
    "an empty completion": (b'{"prompt": "a", "completion": " \\n "}\n', 1, "field 'completion' is empty",
                            "remove the record or fill the field"),
    "an empty alpaca output": (b'{"instruction": "a", "output": ""}\n', 1, "field 'output' is empty",
                               "remove the record or fill the field"),
    "a missing alpaca instruction": (b'{"instruction": "a", "output": "b"}\n{"output": "c"}\n', 2,
                                     "field 'instruction' is missing or not a string", "alpaca records need"),
    "a chat with no assistant turn": (b'{"messages": [{"role": "system", "content": "Be brief."}, '
                                      b'{"role": "user", "content": "hi"}]}\n', 1,
                                      "chat has no non-empty assistant turn", "every chat needs at least one"),
    "a chat whose assistant turn is empty": (b'{"messages": [{"role": "user", "content": "hi"}, '
                                             b'{"role": "assistant", "content": " "}]}\n', 1,
                                             "chat has no non-empty assistant turn", "every chat needs at least one"),
    "a ShareGPT-style chat": (b'{"messages": [{"from": "human", "value": "hi"}]}\n', 1,
                              "messages[0] is not a message with a known role and string content",
                              'each message is {"role"'),
    "duplicate ids": (b'{"id": "q1", "prompt": "a", "completion": "b"}\n{"id": "q2", "prompt": "c", '
                      b'"completion": "d"}\n{"id": "q1", "prompt": "e", "completion": "f"}\n', 3,
                      "duplicate id 'q1' (lines [1, 3])", "ids must be unique"),
    "an id on some records only": (b'{"id": "q1", "prompt": "a", "completion": "b"}\n' + PC_LINE, 2,
                                   "some records have an 'id' field and this one does not",
                                   "give every record an id"),
    "non-UTF-8 bytes": (PC_LINE + b'{"prompt": "caf\xe9", "completion": "b"}\n', 2,
                        "line is not valid UTF-8 (byte 15)", "re-encode the file as UTF-8"),
    "a raw control character": (PC_LINE + b'{"prompt": "a\x1bb", "completion": "c"}\n', 2,
                                "not valid JSON: Invalid control character at column 14 ('\\x1b')",
                                "control characters inside strings must be escaped"),
    "a 1 MB line cut short": (PC_LINE + b'{"prompt": "' + LONG + b'", "completion": ', 2,
                              "not valid JSON: Expecting value at column 1000030", "each line must be one JSON"),
}


@pytest.mark.parametrize("case", list(JSONL_CASES))
def test_bad_jsonl_stops_with_one_message_and_writes_nothing(tmp_path, capsys, case):
    content, line, message, hint = JSONL_CASES[case]
    path = tmp_path / "pool.jsonl"
    path.write_bytes(content)
    # the model does not exist: the data must be checked (and refused) before any model is looked at
    code, err, _ = run_main(["select", "--model", tmp_path / "no-such-model", "--data", path, "--out",
                             tmp_path / "out", "--quiet"], capsys)
    assert code == 2
    assert_one_message(err, f"{path}: " if line is None else f"{path}:{line}: ", message, hint)
    assert len(err) < 1000  # never echoes the (possibly huge) line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", [["score"], ["train"], ["select"], ["data", "inspect"]])
def test_every_command_checks_the_data_before_the_model(tmp_path, capsys, command):
    path = tmp_path / "pool.jsonl"
    path.write_bytes(PC_LINE + b'{"prompt": "a"}\n')
    args = [path] if command == ["data", "inspect"] else ["--data", path, "--out", tmp_path / "out"]
    code, err, _ = run_main([*command, "--model", tmp_path / "no-such-model", *args], capsys)
    assert code == 2
    assert_one_message(err, f"{path}:2: ", "field 'prompt' or 'completion' is missing or null",
                       "prompt-completion records need")
    assert not (tmp_path / "out").exists()


def write_parquet(path: Path, records: list[dict]) -> Path:
    pq.write_table(pa.Table.from_pylist(records), path)
    return path


FILE_CASES = {  # .parquet and .json inputs count records, not lines
    "parquet without known columns": ("pool.parquet", [{"text": "a"}], "record 1: ",
                                      "cannot tell the format from the fields ['text']", "(or pass --format)"),
    "parquet with ShareGPT messages": ("pool.parquet", [{"messages": [{"from": "human", "value": "hi"}]}],
                                       "record 1: ", "messages[0] is not a message with a known role",
                                       'each message is {"role"'),
    "parquet with a number column as prompt": ("pool.parquet", [{"prompt": 1, "completion": "a"}], "record 1: ",
                                               "field 'prompt' must be a string or a list of messages, got int",
                                               "prompt-completion records need"),
    "parquet with a null answer": ("pool.parquet", [PC, PC, {"prompt": "q", "completion": None}], "record 3: ",
                                   "field 'prompt' or 'completion' is missing or null",
                                   "prompt-completion records need"),
    "a damaged parquet file": ("pool.parquet", b"PAR1 not really parquet", "", "cannot read parquet",
                               "the file is damaged or not parquet"),
    "json list with a non-object": ("pool.json", json.dumps([PC, 7]).encode(), "record 2: ",
                                    "expected an object, got int", "every record must be a JSON object"),
    "json that is not a list": ("pool.json", json.dumps(PC).encode(), "", "expected a JSON list of records, got dict",
                                "a .json file must hold a list of objects"),
    "json with a syntax error": ("pool.json", b'[\n {"prompt": "a",\n  "completion": }\n]', "",
                                 "not valid JSON at line 3, column 17: Expecting value",
                                 "a .json file must hold a list of objects"),
    "json chat without an assistant turn": ("pool.json", json.dumps(
        [{"messages": [{"role": "user", "content": "hi"}]}]).encode(), "record 1: ",
        "chat has no non-empty assistant turn", "every chat needs at least one"),
}


@pytest.mark.parametrize("case", list(FILE_CASES))
def test_bad_parquet_and_json_files_name_the_record(tmp_path, capsys, case):
    name, content, where, message, hint = FILE_CASES[case]
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        write_parquet(path, content)
    code, err, _ = run_main(["select", "--model", tmp_path / "no-such-model", "--data", path, "--out",
                             tmp_path / "out", "--quiet"], capsys)
    assert code == 2
    assert_one_message(err, f"{path}: {where}", message, hint)
    assert not (tmp_path / "out").exists()


def test_control_characters_and_line_separators_stay_verbatim(tmp_path):
    """JSON allows U+2028, U+2029 and U+0085 unescaped inside strings: they must not split a record in two
    (they did: raw_rows used str.splitlines, so the selected files shifted to other rows)."""
    records = [PC, {"prompt": "a\u2028b\u2029c\x85d\x0ce", "completion": "f"},
               {"prompt": "escaped: \x00 \x1b \x07 \t", "completion": "g"}, {"prompt": "q", "completion": "last"}]
    path = tmp_path / "pool.jsonl"
    path.write_bytes("".join(json.dumps(r, ensure_ascii=False) + "\r\n" for r in records).encode())
    pool = load_pool(path)
    assert [e.messages[0]["content"] for e in pool.examples] == [r["prompt"] for r in records]
    rows = raw_rows(path)
    assert list(rows) == [json.dumps(r, ensure_ascii=False) for r in records]  # the file's own lines, no \r\n
    assert [json.loads(r) for r in rows] == records


def test_a_one_megabyte_line_scores_and_truncation_keeps_the_answer(tmp_path, capsys, tiny_model_dir):
    records = [{"id": "long-prompt", "prompt": "word " * 200_000, "completion": "Answer: A."},
               {"id": "long-answer", "prompt": "Why?", "completion": "because " * 2_000},
               {"id": "control", "prompt": "esc \x1b bell \x07 nul \x00", "completion": "ok"}, {"id": "plain", **PC}]
    pool = write_jsonl(tmp_path / "pool.jsonl", records)
    assert len(pool.read_text().splitlines()[0]) > 1_000_000
    code, err, _ = run_main(["score", "--model", tiny_model_dir, "--data", pool, "--out", tmp_path / "out",
                             "--max-length", "64", "--batch-size", "2", "--quiet"], capsys)
    assert code == 0, err
    scores = pq.read_table(tmp_path / "out" / "scores.parquet").to_pandas().set_index("id")
    assert (scores["status"] == "ok").all() and (scores["n_tokens"] <= 64).all()
    # the prompt is cut from the left down to one token; the answer is kept whole, or its tail is cut, but at
    # least --max-length - 1 answer tokens always stay (and --max-length must exceed 8)
    assert scores.loc["long-prompt", "n_tokens"] == 64 and scores.loc["long-prompt", "truncated_tokens"] > 199_000
    assert scores.loc["long-answer", "n_target_tokens"] == 63
    meta = json.loads((tmp_path / "out" / "score.json").read_text())
    assert meta["truncation"]["n_truncated"] == 2 and meta["truncation"]["answer_tokens_cut"] > 1_900
    code, err, _ = run_main(["score", "--model", tiny_model_dir, "--data", pool, "--out", tmp_path / "o2",
                             "--max-length", "8"], capsys)
    assert code == 2 and "invalid value for max_length: Input should be greater than 8" in err


@pytest.fixture(scope="module")
def tokenizer_variants(tmp_path_factory, tiny_model_dir):
    """The tiny model with its tokenizer stripped of the chat template, the pad token, or pad and eos."""
    base = tmp_path_factory.mktemp("tokenizers")
    out = {}
    for name, drop in [("no-chat-template", ["chat_template"]), ("no-pad", ["pad_token"]),
                       ("no-pad-no-eos", ["pad_token", "eos_token"])]:
        folder = base / name
        shutil.copytree(tiny_model_dir, folder)
        config = json.loads((folder / "tokenizer_config.json").read_text())
        for key in drop:
            config.pop(key, None)
        (folder / "tokenizer_config.json").write_text(json.dumps(config))
        if "chat_template" in drop:
            (folder / "chat_template.jinja").unlink(missing_ok=True)
        out[name] = folder
    return out


@pytest.mark.parametrize("variant", ["no-chat-template", "no-pad"])
def test_model_without_chat_template_or_pad_token_scores(tmp_path, capsys, tokenizer_variants, variant):
    from transformers import AutoTokenizer

    folder = tokenizer_variants[variant]
    raw = AutoTokenizer.from_pretrained(folder)
    assert (raw.chat_template is None) if variant == "no-chat-template" else (raw.pad_token is None)
    pool = write_jsonl(tmp_path / "pool.jsonl", [PC, {"prompt": "2+2?", "completion": "4"}])
    code, err, _ = run_main(["score", "--model", folder, "--data", pool, "--out", tmp_path / "out", "--quiet"],
                            capsys)
    assert code == 0, err
    scores = pq.read_table(tmp_path / "out" / "scores.parquet").to_pandas()
    assert (scores["status"] == "ok").all() and (scores["n_target_tokens"] > 0).all()


def test_tokenizer_without_pad_or_eos_token_is_refused(tmp_path, capsys, tokenizer_variants):
    folder = tokenizer_variants["no-pad-no-eos"]
    pool = write_jsonl(tmp_path / "pool.jsonl", [PC])
    code, err, _ = run_main(["score", "--model", folder, "--data", pool, "--out", tmp_path / "out"], capsys)
    assert code == 2
    assert_one_message(err, f"tokenizer of '{folder}' has neither a pad nor an eos token", "",
                       "use a tokenizer that defines pad_token or eos_token")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("value", ["0", "-0.5", "1.0001", "nan"])
def test_ratio_outside_0_1_is_refused(tmp_path, capsys, value):
    pool = write_jsonl(tmp_path / "pool.jsonl", [PC])
    code, err, _ = run_main(["select", "--model", tmp_path / "no-such-model", "--data", pool, "--out",
                             tmp_path / "out", "--ratio", "0.5", f"--ratio={value}"], capsys)
    assert code == 2
    assert_one_message(err, "", f"a ratio must be in (0, 1], got {float(value)}", "e.g. 0.05 keeps 5% of the eligible examples")
    assert not (tmp_path / "out").exists()


def test_ratio_of_one_is_accepted(tmp_path):
    job = SelectJob(model=ModelConfig(model="m"), data=DataConfig(data=tmp_path), out=tmp_path,
                    select=SelectConfig(ratios=(1.0, 1e-9)))  # the config checks ratios, methods and the signal
    assert job.select.ratios == (1.0, 1e-9)
    with pytest.raises(GradsError, match="a ratio must be in"):
        SelectConfig(ratios=(1.0001,))


# ------------------------------------------------------------------------------------- per-example problems


def test_per_example_problems_get_a_status_and_never_abort(tmp_path, monkeypatch, smol_tokenizer):
    """One example with a non-finite loss (real: the model has NaN embeddings for its words only) and one with no
    answer token (simulated: no valid input produces one today, see docs/reliability.md) are scored with a
    status, left out of every selection but the whole-pool baseline, and counted in selection.json and the
    report."""
    import grads.data.pool
    from grads.data.tokenize import tokenize_example

    records = [{"id": f"q{i}", "prompt": f"Question {i}: what is {i} plus {3 * i}?",
                "completion": f"Answer: {4 * i}." + " Because." * (i % 4)} for i in range(14)]
    records += [{"id": "nan-example", "prompt": "Which instrument?", "completion": "xylophone zeppelin"},
                {"id": "no-answer", "prompt": "Say nothing.", "completion": "..."},
                {"id": "separators", "prompt": "a\u2028b\x85c", "completion": "d"}]
    pool = tmp_path / "pool.jsonl"
    pool.write_bytes("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode())
    examples = [tokenize_example(smol_tokenizer, ex, 64) for ex in load_pool(pool).examples]
    others = {t for ex in examples if ex.id != "nan-example" for t in ex.input_ids}
    poison = {t for ex in examples if ex.id == "nan-example" for t in ex.input_ids} - others
    assert poison
    model = tiny_llama(vocab_size=len(smol_tokenizer), tied=False)
    with torch.no_grad():
        model.model.embed_tokens.weight[sorted(poison)] = float("nan")
    model.save_pretrained(tmp_path / "model")
    smol_tokenizer.save_pretrained(tmp_path / "model")

    real = grads.token_cache.tokenize_example

    def no_answer_for_one(tokenizer, example, max_length):
        tok = real(tokenizer, example, max_length)
        if tok.id == "no-answer":
            tok.labels = [IGNORE_INDEX] * len(tok.labels)
        return tok

    # the token cache is built with the patched tokeniser, so it must not land in (or come from) the shared cache
    monkeypatch.setenv("GRADS_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(grads.token_cache, "tokenize_example", no_answer_for_one)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["select", "--model", str(tmp_path / "model"), "--data", str(pool), "--out",
                                      str(out), "--warmup-epochs", "0", "--max-length", "64", "--ratio", "0.5",
                                      "--quiet", *[x for m in ["grads", "random", "loss", "gradnorm", "full"]
                                                   for x in ("--method", m)]], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "selection.json").read_text())
    assert summary["status_counts"] == {"no_target": 1, "nonfinite": 1, "ok": 15} and summary["n_eligible"] == 15
    scores = pq.read_table(out / "scores.parquet").to_pandas().set_index("id")
    assert scores.loc["nan-example", "status"] == "nonfinite" and math.isnan(scores.loc["nan-example", "loss"])
    assert scores.loc["no-answer", "status"] == "no_target" and scores.loc["no-answer", "n_target_tokens"] == 0
    assert scores.drop(["nan-example", "no-answer"])["loss"].notna().all()
    for name, entry in summary["outputs"].items():
        if entry["method"] == "full":
            continue
        assert entry["n_selected"] == 8 and not {"nan-example", "no-answer"} & set(entry["ids"]), name
    # the whole-pool baseline keeps every input row, verbatim (U+2028 and U+0085 included)
    assert (out / "selected" / "full.jsonl").read_bytes() == pool.read_bytes()
    page = (out / "report.html").read_text()
    assert "<td>no_target</td><td>1</td>" in page and "<td>nonfinite</td><td>1</td>" in page
    assert "Eligible for selection: 15." in page


# ------------------------------------------------------------------------------------------------- faults

SELECT_SCRIPT = ("import sys; from grads.config import SelectJob; from grads.pipeline import run_select; "
                 "run_select(SelectJob.model_validate_json(open(sys.argv[1]).read()), progress=False, "
                 "log=lambda m: None)")


def start_select(job_file: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", SELECT_SCRIPT, str(job_file)], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=tempfile.TemporaryFile())
    return proc


def _stderr(proc: subprocess.Popen) -> str:
    proc.stderr.seek(0)
    return proc.stderr.read().decode(errors="replace")[-3000:]


def run_select_process(job_file: Path) -> None:
    proc = start_select(job_file)
    proc.wait(timeout=300)
    assert proc.returncode == 0, _stderr(proc)


def kill_when(proc: subprocess.Popen, ready, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not ready() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.002)
    assert proc.poll() is None, "the run ended before the kill point: " + _stderr(proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL


def comparable(folder: Path) -> dict[str, bytes]:
    """Every output a reader uses; timings.json (wall-clock seconds, of the run and of its scoring stage) and the
    warm-up's done.json (which records where it resumed from and the losses logged by this process) legitimately
    differ."""
    files = visible_files(folder)
    for name in ("timings.json", "score/timings.json", "warmup/model/done.json"):
        files.pop(name, None)
    return files


@pytest.fixture(scope="module")
def warm(tmp_path_factory, tiny_model_dir):
    """A clean, uninterrupted `grads select` (LoRA warm-up of 12 steps, a checkpoint every 2) in the folder that
    every fault test then reuses, so paths recorded in the outputs are the same."""
    base = tmp_path_factory.mktemp("warm")
    records = [{"id": f"q{i}", "prompt": f"Question {i}: what is {i} plus {3 * i}?",
                "completion": f"Answer: {4 * i}." + " Because." * (i % 4)} for i in range(24)]
    pool = write_jsonl(base / "pool.jsonl", records)
    run = base / "run"
    job = SelectJob(model=ModelConfig(model=str(tiny_model_dir)), data=DataConfig(data=pool, max_length=64),
                    score=ScoreConfig(batch_size=4), train=TrainConfig(batch_size=2, save_steps=2),
                    select=SelectConfig(methods=("grads", "random"), ratios=(0.25, 0.5), warmup_epochs=1), out=run)
    job_file = base / "job.json"
    job_file.write_text(job.model_dump_json())
    run_select_process(job_file)
    run.rename(base / "clean")
    return SimpleNamespace(job=job, job_file=job_file, run=run, clean=base / "clean")


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

    run_select_process(fresh.job_file)
    done = json.loads((fresh.run / "warmup" / "model" / "done.json").read_text())
    resumed = int(Path(done["resumed_from"]).name.removeprefix("checkpoint-"))
    assert 4 <= resumed < 12 and done["steps"] == 12 and done["examples"] == 24
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


KILL_INSIDE_WRITE = """
import os, signal, sys
from grads.infra import atomic
def writer(tmp):
    with open(tmp, "wb") as f:
        f.write(b"new " * 1000)
        f.flush()
        os.kill(os.getpid(), signal.SIGKILL)
atomic.write_with(sys.argv[1], writer)
"""


def test_sigkill_inside_an_atomic_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "selection.json"
    target.write_bytes(b"old")
    proc = subprocess.run([sys.executable, "-c", KILL_INSIDE_WRITE, str(target)], env=ENV)
    assert proc.returncode == -signal.SIGKILL
    assert target.read_bytes() == b"old"  # never half of the new one
    (stale,) = temp_files(tmp_path)
    assert stale.name.startswith(".selection.json.") and stale.stat().st_size == 4000
    assert atomic.remove_stale_temps(tmp_path) == [stale] and temp_files(tmp_path) == []
    fresh = tmp_path / "fresh.json"
    proc = subprocess.run([sys.executable, "-c", KILL_INSIDE_WRITE, str(fresh)], env=ENV)
    assert proc.returncode == -signal.SIGKILL and not fresh.exists()


WRITERS = {"open", "write_text", "write_bytes", "write_table", "to_parquet", "to_csv", "to_json", "savefig",
           "save_pretrained", "save_to_disk", "OSFile", "torch.save", "np.save", "json.dump", "yaml.dump",
           "save_file"}
TARGET_IS_SECOND = {"write_table", "torch.save", "json.dump", "yaml.dump", "save_file"}  # f(obj, where)


def direct_writes(source: str) -> list[str]:
    """Calls in `source` that write a file whose name does not mention `tmp` (a heuristic for 'every output is
    written under a temporary name, then renamed': through grads.atomic, or into a temporary folder renamed
    into place)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        dotted = _dotted(node.func)
        name = dotted if dotted in WRITERS else dotted.rsplit(".", 1)[-1]
        if name not in WRITERS or "." in name and dotted != name or dotted.startswith("atomic."):
            continue
        if name == "open":
            mode = node.args[1] if len(node.args) > 1 else {k.arg: k.value for k in node.keywords}.get("mode")
            if not (isinstance(mode, ast.Constant) and set(str(mode.value)) & set("wax")):
                continue  # reading
        if name in ("write_text", "write_bytes"):
            target = node.func.value
        else:
            index = 1 if name in TARGET_IS_SECOND else 0
            target = node.args[index] if len(node.args) > index else None
        where = ast.unparse(target) if target is not None else ""
        if "tmp" not in where:
            found.append(f"{ast.unparse(node.func)}: {where}")
    return sorted(found)


def test_every_output_is_written_to_a_temporary_name_first():
    assert direct_writes("open(path, 'w').write(x)\nopen(path).read()\nPath(out).write_text(s)\n"
                         "fig.savefig(out / 'a.png')\nmodel.save_pretrained(tmp)\ntorch.save(x, 'y.pt')\n"
                         "json.dump(obj, f)\npq.write_table(t, tmp)\natomic.write_text(out, s)\n") == \
        ["Path(out).write_text: Path(out)", "fig.savefig: out / 'a.png'", "json.dump: f", "open: path",
         "torch.save: 'y.pt'"]
    found = {str(p.relative_to(SRC)): direct_writes(p.read_text()) for p in _src_files() if p.name != "atomic.py"}
    found = {name: hits for name, hits in found.items() if hits}
    assert found == {}, found


class _FullDisk:
    """A file whose write puts part of the data down and then fails as a full disk does."""

    def __init__(self, f) -> None:
        self.f = f

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.f.close()

    def write(self, data):
        self.f.write(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name):
        return getattr(self.f, name)


def fill_disk_at(monkeypatch, victim: str) -> None:
    def fake_open(file, mode="r", *args, **kwargs):
        f = open(file, mode, *args, **kwargs)
        return _FullDisk(f) if "w" in mode and Path(file).name.startswith(f".{victim}.") else f

    monkeypatch.setattr(atomic, "open", fake_open, raising=False)


def test_full_disk_is_a_clear_error_and_keeps_earlier_outputs(tmp_path, capsys, monkeypatch, tiny_model_dir):
    records = [{"id": f"q{i}", "prompt": f"Question {i}?", "completion": f"Answer {i}." * (1 + i % 3)}
               for i in range(12)]
    pool = write_jsonl(tmp_path / "pool.jsonl", records)
    out = tmp_path / "out"
    args = ["select", "--model", tiny_model_dir, "--data", pool, "--out", out, "--warmup-epochs", "0",
            "--max-length", "64", "--method", "grads", "--method", "random", "--ratio", "0.5", "--quiet"]

    # 1. the disk fills while selection.json is written: what came before is complete, it is not there at all
    with monkeypatch.context() as patch:
        fill_disk_at(patch, "selection.json")
        code, err, _ = run_main(args, capsys)
    assert code == 2
    assert_one_message(err, f"{out / 'selection.json'}: ", "the disk is full: this file was not written",
                       "free some space", after_progress=True)
    assert not (out / "selection.json").exists() and temp_files(out) == []
    first = visible_files(out)
    assert {"scores.parquet", "selected/grads-0.5.jsonl", "selected/random-0.5.jsonl"} <= set(first)
    code, err, _ = run_main(args, capsys)  # space freed: the same command finishes
    assert code == 0, err
    done = visible_files(out)
    assert all(done[name] == data for name, data in first.items())  # the files written before were whole

    # 2. the disk fills while a rerun replaces report.html: the old report and everything else stay as they were
    with monkeypatch.context() as patch:
        fill_disk_at(patch, "report.html")
        code, err, _ = run_main(args, capsys)
    assert code == 2 and f"error: {out / 'report.html'}: the disk is full" in err
    after = visible_files(out)
    after.pop("timings.json"), done.pop("timings.json")
    assert after == done and temp_files(out) == []


def test_full_disk_errors_without_errno_and_from_libraries(tmp_path, capsys, monkeypatch):
    # pyarrow reports a full disk as an OSError carrying only the text
    def failing_write_table(table, where, **kwargs):
        Path(where).write_bytes(b"PAR1 half")
        raise OSError("IOError: [Errno 28] No space left on device. Detail: [errno 28] No space left on device")

    monkeypatch.setattr(atomic.pq, "write_table", failing_write_table)
    target = tmp_path / "score" / "chunk-00000.parquet"
    with pytest.raises(GradsError, match="the disk is full") as err:
        atomic.write_parquet(target, pa.table({"x": [1]}))
    assert err.value.path == str(target) and not target.exists() and temp_files(tmp_path) == []

    # a full disk hit inside a library (a Trainer checkpoint, a tokenizer save) still ends as one message
    import grads.pipeline

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", "/runs/x/warmup/checkpoints/checkpoint-50/x.json")

    monkeypatch.setattr(grads.pipeline, "run_select", full)
    pool = write_jsonl(tmp_path / "pool.jsonl", [PC])
    code, err, _ = run_main(["select", "--model", "m", "--data", pool, "--out", tmp_path / "o"], capsys)
    assert code == 2
    assert_one_message(err, "/runs/x/warmup/checkpoints/checkpoint-50/x.json: the disk is full", "",
                       "free some space")

    def full_in_safetensors(*args, **kwargs):  # safetensors' own error type, carrying the OS message
        raise type("SafetensorError", (Exception,), {})(
            "Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(grads.pipeline, "run_select", full_in_safetensors)
    code, err, _ = run_main(["select", "--model", "m", "--data", pool, "--out", tmp_path / "o"], capsys)
    assert code == 2
    assert_one_message(err, "an output file: the disk is full (Error while serializing", "", "free some space")

    def denied(*args, **kwargs):  # any other OSError is not dressed up as a full disk
        raise PermissionError(errno.EACCES, "Permission denied", "/runs/x")

    monkeypatch.setattr(grads.pipeline, "run_select", denied)
    with pytest.raises(PermissionError):
        main(["select", "--model", "m", "--data", str(pool), "--out", str(tmp_path / "o")])


# ------------------------------------------------------------------------------------------------- safety


def test_trust_remote_code_is_off_unless_asked(tmp_path, capsys, monkeypatch, tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from grads.infra.models import load_model, load_tokenizer

    calls = []
    for cls in (AutoTokenizer, AutoModelForCausalLM):
        def recording(*args, _real=cls.from_pretrained, _name=cls.__name__, **kwargs):
            calls.append((_name, kwargs.get("trust_remote_code", "not passed")))
            return _real(*args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", recording)
    load_tokenizer(str(tiny_model_dir))
    load_model(str(tiny_model_dir))
    assert calls == [("AutoTokenizer", False), ("AutoModelForCausalLM", False)]

    pool = write_jsonl(tmp_path / "pool.jsonl", [PC])
    for extra, expected in [([], False), (["--trust-remote-code"], True)]:
        calls.clear()
        code, err, _ = run_main(["score", "--model", tiny_model_dir, "--data", pool, "--out",
                                 tmp_path / f"out{expected}", "--quiet", *extra], capsys)
        assert code == 0, err
        assert {name for name, _ in calls} == {"AutoTokenizer", "AutoModelForCausalLM"}
        assert all(value is expected for _, value in calls), calls


def _src_files() -> list[Path]:
    files = sorted(SRC.rglob("*.py"))
    assert len(files) >= 15  # really scanning the package
    return files


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


# importing pickle is allowed (models.py uses pickle.UnpicklingError); loading anything with it is not
UNSAFE_MODULES = {"dill", "cloudpickle", "joblib", "shelve", "marshal", "subprocess"}
UNSAFE_CALLS = {"pickle.load", "pickle.loads", "pickle.Unpickler", "dill.load", "dill.loads", "joblib.load",
                "pd.read_pickle", "pandas.read_pickle", "os.system", "os.popen", "os.execv", "os.execvp",
                "os.spawnl", "os.startfile", "eval", "exec", "__import__"}


def unsafe(source: str) -> list[str]:
    """Unpickling, shell commands and dynamic code in `source`: calls, imports and keyword arguments."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            found += [f"import {n}" for n in names if n.split(".")[0] in UNSAFE_MODULES]
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        kwargs = {k.arg: k.value for k in node.keywords}
        if name in UNSAFE_CALLS:
            found.append(name)
        if name == "torch.load":
            flag = kwargs.get("weights_only")
            if not (isinstance(flag, ast.Constant) and flag.value is True):
                found.append("torch.load without weights_only=True")
        if name.endswith("np.load") or name.endswith("numpy.load"):
            flag = kwargs.get("allow_pickle")
            if flag is not None and not (isinstance(flag, ast.Constant) and flag.value is False):
                found.append("np.load with allow_pickle")
        shell = kwargs.get("shell")
        if shell is not None and not (isinstance(shell, ast.Constant) and shell.value is False):
            found.append("shell=True")
    return found


def test_src_never_unpickles_or_runs_shell_commands():
    # the scanner finds what it looks for ...
    assert unsafe("import pickle\npickle.loads(b'')") == ["pickle.loads"]
    assert unsafe("import torch\ntorch.load('x.pt')\ntorch.load('y', weights_only=True)") == \
        ["torch.load without weights_only=True"]
    assert unsafe("import subprocess\nsubprocess.run(cmd, shell=True)") == ["import subprocess", "shell=True"]
    assert unsafe("import numpy as np\nnp.load('a.npy', allow_pickle=True)\neval(s)") == \
        ["np.load with allow_pickle", "eval"]
    assert unsafe("model.eval()\nimport pickle  # noqa\n") == []  # a method named eval; importing for a type
    # ... and the package has none of it (models.py imports pickle only for its error type)
    found = {str(path.relative_to(SRC)): unsafe(path.read_text()) for path in _src_files()}
    found = {name: hits for name, hits in found.items() if hits}
    assert found == {}, found


def test_every_from_pretrained_call_in_src_sets_trust_remote_code():
    calls = []
    for path in _src_files():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and _dotted(node.func).startswith("Auto") and \
                    _dotted(node.func).endswith(".from_pretrained"):
                kwargs = {k.arg: k.value for k in node.keywords}
                value = kwargs.get("trust_remote_code")
                ok = isinstance(value, ast.Name) and value.id == "trust_remote_code" or \
                    isinstance(value, ast.Constant) and value.value is False
                calls.append((path.name, node.lineno, ok))
    assert len(calls) >= 4 and all(ok for *_, ok in calls), calls


def test_pickled_weights_are_refused_not_run(tmp_path, capsys, tiny_model_dir):
    """A model folder whose weights are a pickle that would run code: refused, and the code never runs."""
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "model.safetensors").unlink()
    marker = tmp_path / "code-ran"
    script = ("import pathlib, sys, torch\n"
              "class Payload:\n"
              "    def __reduce__(self):\n"
              "        return (pathlib.Path.touch, (pathlib.Path(sys.argv[2]),))\n"
              "torch.save({'model.embed_tokens.weight': torch.zeros(3), 'x': Payload()}, sys.argv[1])\n")
    subprocess.run([sys.executable, "-c", script, str(folder / "pytorch_model.bin"), str(marker)], check=True,
                   env=ENV)
    pool = write_jsonl(tmp_path / "pool.jsonl", [PC])
    code, err, _ = run_main(["score", "--model", folder, "--data", pool, "--out", tmp_path / "out"], capsys)
    assert code == 2
    assert_one_message(err, f"{folder}: refused to load the weights", "unpickling them could run code",
                       "use a model saved as safetensors")
    assert not marker.exists() and not (tmp_path / "out" / "scores.parquet").exists()


PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt"}


def test_saved_models_are_safetensors(tmp_path, warm, tiny_model_dir):
    adapter = warm.clean / "warmup" / "model"
    assert (adapter / "adapter_model.safetensors").exists()
    assert not [p for p in adapter.rglob("*") if p.suffix in PICKLE_SUFFIXES]
    pool = write_jsonl(tmp_path / "pool.jsonl", [PC, {"prompt": "2+2?", "completion": "4"}])
    result = CliRunner().invoke(app, ["train", "--model", str(tiny_model_dir), "--data", str(pool), "--full",
                                      "--batch-size", "2", "--max-length", "32", "--out", str(tmp_path / "ft"),
                                      "--quiet"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    model = tmp_path / "ft" / "model"
    assert (model / "model.safetensors").exists()
    assert not [p for p in (tmp_path / "ft").rglob("*") if p.suffix in PICKLE_SUFFIXES]


def test_report_escapes_every_example_text(tmp_path):
    """Ids, example text, the input path and the model name, all hostile: none becomes markup in report.html,
    and control characters are shown as escapes, not written raw."""
    import numpy as np
    import pandas as pd

    from grads.core.signals import DensitySpec
    from grads.stages.report import write_report

    hostile = "<script>alert(1)</script><img src=x onerror=alert(2)>"
    n = 12
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"id": [f"{hostile}{i}" for i in range(n)], "row": range(n),
                          "n_target_tokens": rng.integers(2, 40, n), "loss": rng.random(n),
                          "emb_grad_norm": rng.random(n) + 0.5, "head_grad_norm": rng.random(n) + 0.5,
                          "status": ["ok"] * (n - 1) + ["nonfinite"]})
    frame["combined"] = rng.normal(size=n)
    frame["density"] = rng.random(n)
    rows = [json.dumps({"prompt": f"{hostile} \x1b[31m red \u2028 {i}", "completion": "</table><h1>injected"})
            for i in range(n)]
    ids = frame["id"].tolist()
    summary = {"input": {"path": f"/data/{hostile}.jsonl", "n_examples": n, "format": "prompt-completion",
                         "sha256": "0" * 64},
               "n_eligible": n - 1, "settings": {"model": {"model": hostile}}, "warmup_model": hostile,
               "signal": {"bandwidth": 0.3, "signal": "zsum"}, "status_counts": {"ok": n - 1, hostile: 1},
               "outputs": {f"{hostile}.jsonl": {"method": "grads", "ratio": 0.5, "n_selected": 6, "ids": ids[:6],
                                                "rule": hostile}}}
    page = write_report(tmp_path, frame, summary, DensitySpec(), rows).read_text()
    for raw in ["<script", "<img src=x", "<h1>injected", "\x1b", "\u2028"]:
        assert raw not in page, raw
    assert page.count("&lt;script&gt;alert(1)&lt;/script&gt;") >= 10  # shown as text: ids, examples, path, ...
    assert "\\x1b[31m red \\u2028" in page

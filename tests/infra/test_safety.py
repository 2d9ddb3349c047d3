"""Safety (docs/reliability.md, "Safety"): no remote code unless asked, nothing unpickled, no shell commands or
dynamic code in src/, and every model grads saves is safetensors."""

from __future__ import annotations

import ast
import pathlib
import shutil

import pytest
import torch
from helpers import PC, SRC, assert_one_message, dotted_name, run_main, src_files, write_jsonl
from typer.testing import CliRunner

from grads.cli import app


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
        name = dotted_name(node.func)
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
    found = {str(path.relative_to(SRC)): unsafe(path.read_text()) for path in src_files()}
    found = {name: hits for name, hits in found.items() if hits}
    assert found == {}, found


def test_every_from_pretrained_call_in_src_sets_trust_remote_code():
    calls = []
    for path in src_files():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and dotted_name(node.func).startswith("Auto") and \
                    dotted_name(node.func).endswith(".from_pretrained"):
                kwargs = {k.arg: k.value for k in node.keywords}
                value = kwargs.get("trust_remote_code")
                ok = isinstance(value, ast.Name) and value.id == "trust_remote_code" or \
                    isinstance(value, ast.Constant) and value.value is False
                calls.append((path.name, node.lineno, ok))
    assert len(calls) >= 4 and all(ok for *_, ok in calls), calls


class Payload:
    """Unpickling this touches `marker`: code that runs when the weights are loaded."""

    def __init__(self, marker) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def test_pickled_weights_are_refused_not_run(tmp_path, capsys, tiny_model_dir):
    """A model folder whose weights are a pickle that would run code: refused, and the code never runs."""
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "model.safetensors").unlink()
    marker = tmp_path / "code-ran"
    torch.save({"model.embed_tokens.weight": torch.zeros(3), "x": Payload(marker)}, folder / "pytorch_model.bin")
    assert not marker.exists()  # saving it ran nothing
    pool = write_jsonl(tmp_path / "pool.jsonl", [PC])
    code, err, _ = run_main(["score", "--model", folder, "--data", pool, "--out", tmp_path / "out"], capsys)
    assert code == 2
    assert_one_message(err, f"{folder}: refused to load the weights", "unpickling them could run code",
                       "use a model saved as safetensors")
    assert not marker.exists() and not (tmp_path / "out" / "scores.parquet").exists()
    torch.load(folder / "pytorch_model.bin", weights_only=False)  # what a plain unpickling of that file does
    assert marker.exists()  # the payload was live


PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt"}


@pytest.mark.e2e
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

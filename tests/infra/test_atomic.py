"""Atomic outputs: every file and folder is written under a temporary name and renamed into place (a kill inside
a write keeps the old file; a static check of src/), and gets the mode a plain open()/mkdir would give under the
user's umask (issue 16)."""

from __future__ import annotations

import ast
import json
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest
from helpers import ENV, SRC, dotted_name, src_files, temp_files

from grads.infra import atomic


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


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


@pytest.mark.e2e
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
        dotted = dotted_name(node.func)
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
    found = {str(p.relative_to(SRC)): direct_writes(p.read_text()) for p in src_files() if p.name != "atomic.py"}
    found = {name: hits for name, hits in found.items() if hits}
    assert found == {}, found

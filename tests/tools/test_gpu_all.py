"""benchmarks/gpu-all.sh (the one device call: the GPU tests, pipeline_cost.py and gpu.sh) as far as a machine
without a GPU can check it: every program it starts accepts what it is given, on CUDA, with random weights of a
real shape and its outputs where the device tool brings them back; and benchmarks/gpu_inputs.py, which prepares
its inputs here, writes a pool and a tokenizer that load."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import tarfile

import pytest
from helpers import ROOT

RECORDER = """#!{python}
import json, sys
with open({log!r}, "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\\n")
"""


def parse(build_parser, argv, program):
    with contextlib.redirect_stderr(io.StringIO()) as err:
        try:
            return build_parser().parse_args(argv)
        except SystemExit:
            pytest.fail(f"{program} refuses what gpu-all.sh passes: {argv}\n{err.getvalue()}")


def run_script(tmp_path, inputs):
    """gpu-all.sh with PYTHON a stand-in that records each command instead of running it."""
    log, python = tmp_path / "commands.jsonl", tmp_path / "python"
    python.write_text(RECORDER.format(python=sys.executable, log=str(log)))
    python.chmod(0o755)
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "trl-1.16.0-py3-none-any.whl").write_bytes(b"")
    out, work = tmp_path / "out", tmp_path / "work"
    env = {k: v for k, v in os.environ.items() if k != "OUT"}
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu-all.sh"), str(out)], capture_output=True,
                          text=True, timeout=120, env={**env, "PYTHON": str(python), "GPU_WHEELS": str(wheels),
                                                       "GPU_INPUTS": str(inputs), "GPU_ALL_WORK": str(work)})
    assert done.returncode == 0, done.stderr[-2000:]
    return [json.loads(line) for line in log.read_text().splitlines()], out, work, wheels


@pytest.mark.e2e
def test_every_command_the_gpu_script_starts_is_one_its_program_accepts(tmp_path, monkeypatch):
    script = ROOT / "benchmarks" / "gpu-all.sh"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    inputs = tmp_path / "inputs"
    (inputs / "tokenizer").mkdir(parents=True)
    (inputs / "pool.jsonl").write_text("")
    commands, out, work, wheels = run_script(tmp_path, inputs)

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from bench_models import CONFIGS
    from gradnorms import build_parser as gradnorms_parser
    from pipeline_cost import build_parser as cost_parser
    from pipeline_cost import parse_setting

    by_program = {}
    for argv in commands:
        by_program.setdefault(argv[1] if argv[0] == "-m" else argv[0], []).append(argv)
    assert set(by_program) == {"pip", "-", "-c", "pytest", "benchmarks/pipeline_cost.py", "benchmarks/gradnorms.py"}

    # the wheels: offline, into a folder of their own, no dependency resolution
    (pip,) = by_program["pip"]
    assert pip[2] == "install" and {"--no-index", "--no-deps", "--target"} <= set(pip)
    assert pip[-1] == str(wheels / "trl-1.16.0-py3-none-any.whl")

    # the GPU tests: exactly `pytest -m gpu tests/gpu`, the reports in OUT; pytest itself accepts the options
    (tests,) = by_program["pytest"]
    assert tests[2:5] == ["-m", "gpu", "tests/gpu"] and f"--junitxml={out / 'pytest-gpu.xml'}" in tests
    collected = subprocess.run([sys.executable, *tests[:-1], f"--junitxml={tmp_path / 'collect.xml'}",
                                "--collect-only", "-q"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert collected.returncode == 0, collected.stdout[-2000:] + collected.stderr[-2000:]
    ids = [line for line in collected.stdout.splitlines() if line.startswith("tests/gpu/")]
    assert {line.split("::")[0] for line in ids} == {f"tests/gpu/test_gpu_{name}.py" for name in ("kernel", "cli",
                                                                                                  "fsdp")}, ids

    # pipeline_cost: random weights of a real shape, on CUDA in bf16, the prepared inputs, its figures in OUT
    (cost,) = by_program["benchmarks/pipeline_cost.py"]
    args = parse(cost_parser, cost[1:], "pipeline_cost.py")
    kind, _, name = args.model.partition(":")
    assert kind == "random" and name in CONFIGS and name == "smollm2-135m"
    assert (args.device, args.dtype, args.limit, args.max_length) == ("cuda", "bf16", 1200, 256)
    assert (args.tokenizer, args.data) == (inputs / "tokenizer", inputs / "pool.jsonl")
    assert args.json == out / "pipeline_cost.json" and args.out.parent == work  # the model folders stay out of OUT
    assert args.settings[0] == "default" and "seed-1" in args.settings  # the noise bar the verdict needs
    for setting in args.settings:
        parse_setting(setting)

    # gpu.sh's benchmarks, as tests/tools/test_benchmarks.py checks them, writing into the work folder
    benchmarks = by_program["benchmarks/gradnorms.py"]
    assert len(benchmarks) == 4
    for argv in benchmarks:
        bench = parse(gradnorms_parser, argv[1:], "gradnorms.py")
        assert bench.model.startswith("random:") and bench.model.split(":", 1)[1] in CONFIGS
        assert (bench.device, bench.in_process, bench.data) == ("cuda", True, "synthetic")
        assert bench.out.parent == work / "kernel"

    # what comes back: a few flat files (the device tool brings back 8 at most), the rest in the tarball
    files = sorted(p.name for p in out.iterdir())
    assert all(p.is_file() for p in out.iterdir()) and len(files) <= 8, files
    assert {"gpu-all.txt", "pytest-gpu.txt", "pipeline_cost.txt", "kernel.txt", "gpu-all.tar.gz"} <= set(files)
    summary = (out / "gpu-all.txt").read_text()
    for part in ["tests", "pipeline_cost", "gpu.sh"]:
        assert f"== {part}: exit 0" in summary, summary
    with tarfile.open(out / "gpu-all.tar.gz") as tar:
        assert "./pip.log" in tar.getnames()


@pytest.mark.e2e
def test_without_prepared_inputs_the_script_skips_only_pipeline_cost(tmp_path):
    commands, out, _, _ = run_script(tmp_path, tmp_path / "absent")
    programs = {argv[1] if argv[0] == "-m" else argv[0] for argv in commands}
    assert "benchmarks/pipeline_cost.py" not in programs and {"pytest", "benchmarks/gradnorms.py"} <= programs
    assert "pipeline_cost: skipped" in (out / "gpu-all.txt").read_text()


def test_gpu_inputs_writes_a_pool_and_a_tokenizer_that_load(tmp_path, monkeypatch):
    from transformers import AutoTokenizer

    from grads.data.formats import scan_pool

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from gpu_inputs import main

    out = tmp_path / "inputs"
    summary = main(["--out", str(out), "--limit", "40"])
    assert summary["records"] == 40 and json.loads((out / "inputs.json").read_text()) == summary
    records = [json.loads(line) for line in (out / "pool.jsonl").read_text().splitlines()]
    assert len(records) == 40 and all(r["id"].startswith("medmcqa-") for r in records)
    assert scan_pool(out / "pool.jsonl").n_examples == 40
    tokenizer = AutoTokenizer.from_pretrained(out / "tokenizer")  # as pipeline_cost.py reads it
    assert len(tokenizer) == 49152 and tokenizer.pad_token == "<|im_end|>" and tokenizer.chat_template

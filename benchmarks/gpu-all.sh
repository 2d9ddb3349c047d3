#!/usr/bin/env bash
# Everything that needs a GPU, in one call of under 10 minutes on one H200, written to one folder:
#   1. the GPU tests, `pytest -m gpu tests/gpu` (the kernel against fp64 on CUDA in bf16 and fp32; `grads score` and
#      `grads select` on CUDA; `--fsdp` over NCCL on one GPU, and two where there are two)
#   2. benchmarks/pipeline_cost.py: each cheaper selection's seconds over a full-pool LoRA epoch and its agreement
#      with the faithful one, on CUDA in bf16, random weights of SmolLM2-135M's shape, 1,200 MedMCQA records of 256
#      tokens
#   3. benchmarks/gpu.sh: the kernel against a training step, the naive loop and the peers (its own ~5 minutes
#      are cut to what is left; each of its runs writes its JSON when it ends)
# Each part gets what is left of DEADLINE_S (default 570 s) when it starts, at most its own cap (TESTS_S 240,
# COST_S 200; gpu.sh the rest), so the call ends inside the device tool's 10 minutes with every finished part's
# output in place.
#
#   benchmarks/gpu-all.sh [OUT_DIR]      # default: $OUT if set, else ./benchmarks-gpu-all
#
# OUT_DIR holds 7 files (the device tool brings back 8 at most, none deeper than two folders):
#   gpu-all.txt        the machine, the versions, each part's exit status and seconds
#   pytest-gpu.txt     pytest's output (-rA: every test's outcome; --durations)  pytest-gpu.xml  its JUnit report
#   pipeline_cost.txt  pipeline_cost.py's table and log                          pipeline_cost.json  its figures
#   kernel.txt         gpu.sh's tables
#   gpu-all.tar.gz     everything else: gpu.sh's JSON files and logs, each pipeline_cost setting's selection.json,
#                      score.json and scores.parquet (no model weights), the pip log
#
# Inputs, prepared on a machine with the bundled packages (the GPU machine has neither the bundled data nor the
# bundled model, and nothing can be downloaded there): GPU_INPUTS (default .gpu-inputs), from
#   .venv/bin/python benchmarks/gpu_inputs.py --out .gpu-inputs      # pool.jsonl (1,200 records), tokenizer/
# Without them part 2 is skipped (the GPU tests train their own tokenizer and need no input).
#
# Wheels: the GPU machine's Python 3.12 has torch, transformers, tokenizers, peft, accelerate, huggingface_hub,
# scipy, pyarrow, pandas, matplotlib, typer, rich, pyyaml, psutil, safetensors and pytest, but not trl, datasets
# (and its dill, multiprocess), pydantic (and pydantic_core, annotated-types, typing-inspection) or gguf. Where a
# folder of wheels is at hand (GPU_WHEELS, default .gpu-wheels) they are installed from it, offline, into a
# temporary folder on PYTHONPATH (grads itself comes from src/, on PYTHONPATH too). To build that folder on a
# machine with PyPI access, for the GPU machine's Python (the versions of requirements.lock):
#   pip download --only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 \
#       --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --no-deps -d .gpu-wheels \
#       trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 pydantic==2.14.4 pydantic_core==2.50.5 \
#       annotated-types==0.8.0 typing-inspection==0.4.5 gguf==0.19.0                        # 4.6 MB
# and, for gpu.sh's peers, the rest of the list in gpu.sh's header (opacus bergson jaxtyping ...; leave out
# datasets, dill and multiprocess, already above: one version of each). gpu-all.txt lists the versions found there;
# where one is older than grads needs, add its wheel of requirements.lock's version to the folder.
#
# The one device call (the device tool, from the repository root):
#   run(command="bash benchmarks/gpu-all.sh", carry=[".gpu-inputs", ".gpu-wheels"], timeout_s=600)
set -u
cd "$(dirname "$0")/.."
START=$SECONDS
OUT_DIR=${1:-${OUT:-benchmarks-gpu-all}}
PY=${PYTHON:-python3}
WHEELS=${GPU_WHEELS:-.gpu-wheels}
INPUTS=${GPU_INPUTS:-.gpu-inputs}
DEADLINE=$((START + ${DEADLINE_S:-570}))
WORK=${GPU_ALL_WORK:-}  # the bulky outputs (model folders, warm-ups); the tarball takes what matters
if [ -z "$WORK" ]; then
    WORK=$(mktemp -d)
    trap 'rm -rf "$WORK"' EXIT
fi
mkdir -p "$OUT_DIR" "$WORK"
OUT_DIR=$(cd "$OUT_DIR" && pwd)
LOG="$OUT_DIR/gpu-all.txt"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
export GRADS_HOME="$WORK/grads-home"

note() { echo "$*" | tee -a "$LOG"; }
left() { echo $((DEADLINE - SECONDS)); }
budget() {  # seconds for the next part: what is left (less 20 s for the tarball), at most $1
    local rest=$(($(left) - 20))
    echo $((rest < $1 ? rest : $1))
}
pack() {  # everything but weights, warm-ups and caches, into one file
    tar -czf "$OUT_DIR/gpu-all.tar.gz.part" -C "$WORK" --exclude=site --exclude=grads-home --exclude=models \
        --exclude=warmup --exclude=full-epoch --exclude=selected --exclude=report.html --exclude='*.safetensors' \
        --exclude='*.bin' --exclude='*.pt' --exclude='*.pth' . 2>>"$LOG" \
        && mv "$OUT_DIR/gpu-all.tar.gz.part" "$OUT_DIR/gpu-all.tar.gz"
}
part() {  # name, cap in seconds, then the command (its output goes where the caller sends it)
    local name=$1 cap=$2 t0=$SECONDS status
    shift 2
    local seconds
    seconds=$(budget "$cap")
    if [ "$seconds" -lt 30 ]; then
        note "== $name: skipped, ${seconds}s left"
        return
    fi
    note "== $name (at most ${seconds}s): $*"
    timeout --kill-after 10 "$seconds" "$@"
    status=$?
    note "== $name: exit $status$([ $status = 124 ] && echo ' (cut at its time limit)') in $((SECONDS - t0))s"
    pack
}

{
    date -u
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
} > "$LOG" 2>&1
if [ -d "$WHEELS" ]; then
    SITE="$WORK/site"
    if $PY -m pip install -q --no-index --no-deps --no-compile --target "$SITE" "$WHEELS"/*.whl > "$WORK/pip.log" 2>&1
    then note "installed $(ls "$WHEELS"/*.whl | wc -l) wheels from $WHEELS"
    else note "installing the wheels from $WHEELS failed:"; tail -5 "$WORK/pip.log" >> "$LOG"
    fi
    export PYTHONPATH="$PYTHONPATH:$SITE"
fi
$PY - >> "$LOG" 2>&1 <<'EOF'
import sys
from importlib.metadata import PackageNotFoundError, version

print("python", sys.version.split()[0])
for name in ["torch", "transformers", "tokenizers", "peft", "trl", "accelerate", "datasets", "huggingface_hub",
             "scipy", "numpy", "pyarrow", "pandas", "matplotlib", "typer", "rich", "pydantic", "gguf", "pyyaml",
             "safetensors", "psutil", "pytest", "opacus", "bergson"]:
    try:
        print(f"  {name} {version(name)}")
    except PackageNotFoundError:
        print(f"  {name} MISSING")
import torch

print("cuda", torch.cuda.is_available(), torch.cuda.device_count(), torch.version.cuda)
EOF
if ! $PY -c "import grads.cli, trl, datasets, peft" >> "$LOG" 2>&1; then
    note "grads cannot be imported here (see above): add the missing wheels to $WHEELS"
    pack
    exit 3
fi

# 1. the GPU tests
part tests "${TESTS_S:-240}" $PY -m pytest -m gpu tests/gpu -p no:cacheprovider -rA --durations=15 \
    --junitxml="$OUT_DIR/pytest-gpu.xml" > "$OUT_DIR/pytest-gpu.txt" 2>&1

# 2. a selection's cost over a full-pool epoch (random weights of a real shape, the SmolLM2 tokenizer, MedMCQA)
if [ -f "$INPUTS/pool.jsonl" ] && [ -d "$INPUTS/tokenizer" ]; then
    part pipeline_cost "${COST_S:-200}" $PY benchmarks/pipeline_cost.py --model random:smollm2-135m \
        --tokenizer "$INPUTS/tokenizer" --device cuda --dtype bf16 --data "$INPUTS/pool.jsonl" --limit 1200 \
        --max-length 256 --batch-size 8 \
        --settings default seed-1 theta0 warmup-0.05 len-128 warmup-0.05+len-128 \
        --out "$WORK/pipeline-cost" --json "$OUT_DIR/pipeline_cost.json" > "$OUT_DIR/pipeline_cost.txt" 2>&1
else
    note "== pipeline_cost: skipped, no $INPUTS/pool.jsonl and $INPUTS/tokenizer (benchmarks/gpu_inputs.py)"
fi

# 3. the kernel against a training step and the peers (wheels already on PYTHONPATH)
part gpu.sh "$(left)" env PYTHON="$PY" GPU_WHEELS="$WORK/no-wheels" bash benchmarks/gpu.sh "$WORK/kernel" \
    > "$OUT_DIR/kernel.txt" 2>&1
note "done in $((SECONDS - START))s $(date -u)"
pack

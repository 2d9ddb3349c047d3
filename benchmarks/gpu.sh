#!/usr/bin/env bash
# The gradient-norm kernel against a training step, the naive loop and the peers' tools on one GPU, in bf16 and
# fp32, both batch shapes, written to one folder (gpu.txt: the tables; *.json: every figure). About 5 minutes on
# one H200. Models are random weights of real shapes and the tokens synthetic, so nothing is downloaded.
#
#   benchmarks/gpu.sh [OUT_DIR]            # default: $OUT if set, else ./benchmarks-gpu
#   PYTHON=.venv/bin/python benchmarks/gpu.sh
#
# Peers need `pip install grads-llm[bench]` (opacus, bergson); where a folder of wheels is at hand
# (GPU_WHEELS, default .gpu-wheels) they are installed from it into a temporary folder, offline. A peer that cannot run
# a case is reported as failed, with its error, in the table. To build that folder on a machine with PyPI access,
# for the GPU machine's Python (here 3.12):
#   pip download --only-binary=:all: --python-version 3.12 --platform manylinux_2_28_x86_64 --no-deps -d .gpu-wheels \
#       opacus bergson jaxtyping wadler_lindig natsort simple-parsing docstring_parser petname ml_dtypes torchopt \
#       optree datasets dill multiprocess xxhash fsspec
set -u
cd "$(dirname "$0")/.."
OUT_DIR=${1:-${OUT:-benchmarks-gpu}}
PY=${PYTHON:-python}
WHEELS=${GPU_WHEELS:-.gpu-wheels}
mkdir -p "$OUT_DIR"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
if [ -d "$WHEELS" ]; then
    SITE=$(mktemp -d)
    $PY -m pip install -q --no-index --no-deps --target "$SITE" "$WHEELS"/*.whl > "$OUT_DIR/pip.log" 2>&1 \
        || echo "installing the peers' wheels failed: see pip.log"
    export PYTHONPATH="$PYTHONPATH:$SITE"
fi
{
    date -u
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    $PY -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
} > "$OUT_DIR/gpu.txt" 2>&1

run() {  # name, then the benchmark's options
    local name=$1; shift
    echo "== $name: $*" | tee -a "$OUT_DIR/gpu.txt"
    timeout 150 $PY benchmarks/gradnorms.py --device cuda --in-process --data synthetic --out "$OUT_DIR/$name.json" \
        "$@" 2>>"$OUT_DIR/stderr.log" | tee -a "$OUT_DIR/gpu.txt"
}
# SmolLM2-135M's shape: 512-token examples, 128 answer tokens (answer-only) or all 512 targets
common=(--batch-size 16 --batches 4 --max-tokens 512 --answer-tokens 128)
run smollm2-bf16 --model random:smollm2-135m --dtype bf16 "${common[@]}"
run smollm2-fp32 --model random:smollm2-135m --dtype fp32 "${common[@]}"
run smollm2-untied-bf16 --model random:smollm2-135m --dtype bf16 --untie "${common[@]}" \
    --methods train_step grads_kernel opacus opacus_ghost
# a 1B model (Llama-3.2-1B's shape, vocabulary 128k): the head dominates memory
run llama1b-bf16 --model random:llama-1b --dtype bf16 --batch-size 8 --batches 4 --max-tokens 512 --answer-tokens 128
echo "done $(date -u)" >> "$OUT_DIR/gpu.txt"

#!/usr/bin/env bash
# Issue 15's check on a domain other than MedMCQA: fine-tuning the bundled SmolLM2 on GSM8K worked solutions
# lowers the bits per byte of held-out GSM8K solutions, and `grads eval --heldout` shows it.
# Run from the repository root (about 15 minutes on a 2-core CPU); writes results/gsm8k-heldout/{base,ft}.json
# (+ their per-example parquet files); the fine-tuned adapter (ft/) is not committed.
set -euo pipefail
D=results/gsm8k-heldout
GRADS=${GRADS:-.venv/bin/grads}
$GRADS data prepare gsm8k --out $D/data
$GRADS eval --model smollm2-135m-instruct --heldout $D/data/heldout.jsonl --heldout-limit 150 --out $D/base.json
$GRADS train --model smollm2-135m-instruct --data $D/data/pool.jsonl --limit 400 --max-length 384 --epochs 1 \
    --seed 0 --out $D/ft --quiet
$GRADS eval --model $D/ft/model --heldout $D/data/heldout.jsonl --heldout-limit 150 --out $D/ft.json

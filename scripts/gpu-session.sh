#!/usr/bin/env bash
# One device call: quick correctness of the attention engines, the engine variants' timings, and
# the estimation checks and timings (minf and the PyTorch baseline), all on one card.
#   scripts/gpu-session.sh [BIN_DIR]   (logs under $OUT)
set -u
bin=${1:-.gpu/bin}
out=${OUT:-/tmp/gpu-session}
mkdir -p "$out"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
echo "== attention checks (dense, a_shape, block_sparse; every engine variant)"
timeout 200 "$bin/gpu" --include-ignored dense_ patterns::a_shape patterns::block_sparse > "$out/tests-attention.log" 2>&1
echo "rc=$?"; grep -E "^test |test result|panicked" "$out/tests-attention.log" | tail -n 8
echo "== estimation checks"
timeout 200 "$bin/gpu" --include-ignored estimate:: > "$out/tests-estimate.log" 2>&1
echo "rc=$?"; grep -E "^test |test result|panicked" "$out/tests-estimate.log" | tail -n 12
SDPA=0 scripts/hopper-variants.sh "$bin"
echo "== estimate bench"
timeout 150 "$bin/estimate_bench" --seq 131072 --heads 32 --kv-heads 8 --vertical 1000 --slash 6096 --reps 20 2>&1 | tail -n 12
timeout 120 python3 bench/estimate_torch.py --seq 131072 --heads 32 --kv-heads 8 --head-dim 128 --vertical 1000 --slash 6096 --reps 20 2>&1 | tail -n 6

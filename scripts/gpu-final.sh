#!/usr/bin/env bash
# The issue-4 measurements in one call: one Llama-3-8B layer at 128K through the per-layer prefill
# next to SDPA (FLASH and CUDNN) at the same shape, the estimate against its PyTorch version, then
# the estimation and prefill GPU checks.   scripts/gpu-final.sh [BIN_DIR]   (logs under $OUT)
set -u
bin=${1:-.gpu/bin}
out=${OUT:-/tmp/gpu-final}
mkdir -p "$out"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
echo "== prefill_demo 128K"
timeout 160 "$bin/prefill_demo" --seq 131072 --layer 16 --needle 50000 --reps 5 > "$out/prefill.log" 2>&1; echo "rc=$?"
tail -n 14 "$out/prefill.log"
echo "== SDPA 128K"
timeout 90 python3 bench/dense_check.py --bench --seqs 131072 2>&1 | tail -n 3
echo "== estimate"
timeout 60 "$bin/estimate_bench" --seq 131072 --heads 32 --kv-heads 8 --vertical 1000 --slash 6096 --reps 20 2>&1 | tail -n 3
timeout 60 python3 bench/estimate_torch.py --seq 131072 --heads 32 --kv-heads 8 --head-dim 128 --vertical 1000 --slash 6096 --reps 20 2>&1 | tail -n 2
echo "== estimate + prefill checks"
timeout 110 "$bin/gpu" --include-ignored estimate:: prefill:: > "$out/tests.log" 2>&1; echo "rc=$?"
grep -E "^test |test result|panicked" "$out/tests.log" | tail -n 16

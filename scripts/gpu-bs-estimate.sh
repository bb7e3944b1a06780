#!/usr/bin/env bash
# One GPU call (session 6, call 8): the block-sparse estimate that reads each pooled K row once per
# run of up to 8 query blocks (branch bs-estimate, dbddaeb; not merged: slower) against main (.gpu/prev, ff8151e):
# the estimate and prefill GPU tests on the new build, estimate_bench and minf bench's block-sparse
# case at 128K (32 heads) and 1M (4 heads) on both builds.
#   run: OUT=$OUT bash scripts/gpu-bs-estimate.sh   (carry .gpu/bin .gpu/prev)
set -u
out=${OUT:-/tmp/gpu-bs-estimate}; mkdir -p "$out"; exec > >(tee -a "$out/log") 2>&1
source scripts/gpu-common.sh
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
TEST_LIMIT=240 SUITE_GREP="^test " gpu_suite "$out" estimate:: prefill::
for build in prev bin; do
  echo "== estimate_bench 128K x 32 heads (.gpu/$build)"
  timeout 90 .gpu/$build/estimate_bench --seq 131072 --heads 32 --kv-heads 8 --reps 10 2>&1 | grep -iE "block|total|rror" | head -5
  echo "== estimate_bench 1M x 4 heads (.gpu/$build)"
  timeout 150 .gpu/$build/estimate_bench --seq 1048576 --heads 4 --kv-heads 1 --reps 5 2>&1 | grep -iE "block|total|rror" | head -5
done
for build in prev bin; do
  echo "== minf bench block_sparse:100 (.gpu/$build)"
  timeout 150 .gpu/$build/minf bench --seqs 131072,1048576 --patterns block_sparse:100 2>&1 | grep -E "^(128K|1M)|rror"
done
pack_outputs "$out" tests.log

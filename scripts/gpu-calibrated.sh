#!/usr/bin/env bash
# One GPU call (session 7, call 5), on the inputs with the decay calibrated to MInference's 96%
# (decay logit 5.5): the README's first command (prefill_demo, defaults), the same with a needle at
# 64K, and the GPU suite. Call 6 was then
#   CALL_LIMIT=575 MINF_RESERVE=200 PEER_SEQS=131072,1048576 OUT=$OUT bash scripts/gpu-bench-all.sh
# (minf bench with every default case at all five lengths, the peers at 128K and 1M on minf's
# indices, and the comparison).
#   scripts/gpu-bundle.sh; run: OUT=$OUT bash scripts/gpu-calibrated.sh  (carry .gpu/bin)
set -u
out=${OUT:-/tmp/gpu-calibrated}; mkdir -p "$out"
source scripts/gpu-common.sh
{
  nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
  prefill_demos "$out"
  gpu_suite "$out"
} 2>&1 | tee "$out/log"

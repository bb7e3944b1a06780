#!/usr/bin/env bash
# One GPU call (session 7, call 3), on the final inputs (planted keys exempt from the decay): the
# README's first command (prefill_demo with its defaults), the same with a needle at 64K, then
# scripts/gpu-decay.sh (the GPU suite, then minf bench and every peer at 128K and 1M).
#   scripts/gpu-bundle.sh; run: OUT=$OUT bash scripts/gpu-decay-final.sh
#   (carry .gpu/bin .gpu/install_minference.sh .gpu/minference-0.1.6.0.tar.gz)
set -u
out=${OUT:-/tmp/gpu-decay-final}; mkdir -p "$out"
source scripts/gpu-common.sh
{
  nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
  prefill_demos "$out"
} 2>&1 | tee "$out/log-demo"
OUT=$out TOTAL_LIMIT=$(( 575 - SECONDS )) bash scripts/gpu-decay.sh

#!/usr/bin/env bash
# One GPU call (session 7, call 1): the whole GPU suite on the inputs with the long-range decay,
# then scripts/gpu-bench-all.sh at 128K and 1M with every peer (SDPA FLASH and CUDNN, FlexAttention
# and MInference's kernels on minf's indices) for what is left of ${TOTAL_LIMIT:-570} s.
#   scripts/gpu-bundle.sh; run: OUT=$OUT bash scripts/gpu-decay.sh
#   (carry .gpu/bin .gpu/install_minference.sh .gpu/minference-0.1.6.0.tar.gz)
set -u
out=${OUT:-/tmp/gpu-decay}; mkdir -p "$out"
source scripts/gpu-common.sh
{
  nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
  gpu_suite "$out"
} 2>&1 | tee "$out/log-tests"
CALL_LIMIT=$(( ${TOTAL_LIMIT:-570} - SECONDS )) MINF_ARGS="--seqs 131072,1048576" PEER_SEQS=131072,1048576 \
  OUT=$out bash scripts/gpu-bench-all.sh

#!/usr/bin/env bash
# One GPU call (session 6, call 4): the whole GPU suite on the build with chunk-column copies for
# gathered tiles, vs_bench on issue 3's banded and a scattered index against the previous build
# (.gpu/prev: direct copies for contiguous tiles only), then scripts/gpu-bench-all.sh at 128K and 1M
# with every peer for what is left of ${TOTAL_LIMIT:-570} s.
#   run: OUT=$OUT bash scripts/gpu-gathered.sh  (carry .gpu/bin .gpu/prev and the MInference files)
set -u
out=${OUT:-/tmp/gpu-gathered}; mkdir -p "$out"
source scripts/gpu-common.sh
{
  nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
  gpu_suite "$out"
  banded="--generate 131072"
  scattered="--generate 131072 --sinks 30 --random-columns 70 --slashes 64 --far-slashes 736"
  square="--tile 64,64,4,2 --mainloop wgmma"
  for index in banded scattered; do
    for tile in "" "$square"; do
      for build in prev bin; do
        echo "== $index ${tile:-default tile} .gpu/$build"; vs ".gpu/$build/vs_bench" ${!index} --iters 5 $tile
      done
    done
  done
} 2>&1 | tee "$out/log-tests"
CALL_LIMIT=$(( ${TOTAL_LIMIT:-570} - SECONDS )) MINF_ARGS="--seqs 131072,1048576" PEER_SEQS=131072,1048576 \
  OUT=$out bash scripts/gpu-bench-all.sh

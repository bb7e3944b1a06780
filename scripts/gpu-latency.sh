#!/usr/bin/env bash
# One GPU call for the 64-row kernel's latency question (bench/NOTES.md, "Next device session"):
# the pattern and prefill tests with CP_ASYNC_MBARRIER=1, then vs_bench on a scattered index and on
# issue 3's banded one, 128-row and 64x64 wgmma blocks, with and without CP_ASYNC_MBARRIER=1, and
# on the scattered index's 64x64 blocks also WGMMA_OVERLAP=1 and (from .gpu/diag, a build with
# scripts/diag-defines.patch applied; skipped, and said so, without it) DIAG_NO_COPY=1;
# MInference on the banded index last.
#   scripts/gpu-bundle.sh; git apply scripts/diag-defines.patch && scripts/gpu-bundle.sh .gpu/diag-full &&
#     mkdir -p .gpu/diag && cp .gpu/diag-full/vs_bench .gpu/diag && git checkout templates
#   run: OUT=$OUT bash scripts/gpu-latency.sh   (carry .gpu/bin .gpu/diag and the MInference files)
set -u
out=${OUT:-/tmp/gpu-latency}; mkdir -p "$out"; exec > >(tee -a "$out/log") 2>&1
source scripts/gpu-common.sh
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
start_minference_install "$out/install.log"
echo "== tests patterns:: prefill:: with CP_ASYNC_MBARRIER=1"
MINF_KERNEL_DEFINES=CP_ASYNC_MBARRIER=1 timeout ${TEST_LIMIT:-180} .gpu/bin/gpu --include-ignored patterns:: prefill:: \
  --test-threads=8 --nocapture > "$out/tests-cp-async-mbarrier.log" 2>&1
echo "rc $?"; grep -E "test result|FAIL|panicked" "$out/tests-cp-async-mbarrier.log" | head -10
banded="--generate 131072"
scattered="--generate 131072 --sinks 30 --random-columns 70 --slashes 64 --far-slashes 736"
square="--tile 64,64,4,2 --mainloop wgmma"
# index|tile|defines|build: the 64x64 blocks on the scattered index get every variant.
cases=(
  "scattered|square|-|bin" "scattered|square|CP_ASYNC_MBARRIER=1|bin" "scattered|square|WGMMA_OVERLAP=1|bin"
  "scattered|square|DIAG_NO_COPY=1|diag" "scattered|-|-|bin" "scattered|-|CP_ASYNC_MBARRIER=1|bin"
  "banded|-|-|bin" "banded|-|CP_ASYNC_MBARRIER=1|bin" "banded|square|-|bin" "banded|square|CP_ASYNC_MBARRIER=1|bin"
)
for entry in "${cases[@]}"; do
  IFS='|' read -r index tile defines build <<< "$entry"
  [ "$defines" = "-" ] && defines=""
  tile_args=""; [ "$tile" = "square" ] && tile_args=$square
  [ -x ".gpu/$build/vs_bench" ] || { echo "== skipped (no .gpu/$build/vs_bench): $entry"; continue; }
  echo "== $index ${tile/-/default tile} ${defines:-no defines} (.gpu/$build)"
  MINF_KERNEL_DEFINES=$defines vs ".gpu/$build/vs_bench" ${!index} --iters 5 $tile_args
done
wait_minference_install
echo "== MInference on the banded index"; minference_vs

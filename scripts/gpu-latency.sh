#!/usr/bin/env bash
# One GPU call for the template switches not yet run (bench/NOTES.md, "Next device session"): the
# pattern and prefill tests with CP_ASYNC_MBARRIER=1 and SPLIT_TILES=1, then vs_bench on a scattered index and on
# issue 3's banded one, 128-row and 64x64 wgmma blocks, with and without CP_ASYNC_MBARRIER=1, and
# on the scattered index's 64x64 blocks also WGMMA_OVERLAP=1 and (from .gpu/diag, a build with
# scripts/diag-defines.patch applied; skipped, and said so, without it) DIAG_NO_COPY=1;
# SPLIT_TILES=1 on the 128-row blocks; MInference on the banded index; then, while CALL_LIMIT (540 s)
# allows, minf bench's estimated vertical-slash (1000, 6096) case at 128K with and without SPLIT_TILES=1.
#   scripts/gpu-bundle.sh; git apply scripts/diag-defines.patch && scripts/gpu-bundle.sh .gpu/diag-full &&
#     mkdir -p .gpu/diag && cp .gpu/diag-full/vs_bench .gpu/diag && git checkout templates
#   run: OUT=$OUT bash scripts/gpu-latency.sh   (carry .gpu/bin .gpu/diag and the MInference files)
set -u
out=${OUT:-/tmp/gpu-latency}; mkdir -p "$out"; exec > >(tee -a "$out/log") 2>&1
source scripts/gpu-common.sh
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
start_minference_install "$out/install.log"
echo "== tests patterns:: prefill:: with CP_ASYNC_MBARRIER=1 and SPLIT_TILES=1"
MINF_KERNEL_DEFINES=CP_ASYNC_MBARRIER=1,SPLIT_TILES=1 timeout ${TEST_LIMIT:-180} .gpu/bin/gpu --include-ignored \
  patterns:: prefill:: --test-threads=8 --nocapture > "$out/tests-switches.log" 2>&1
echo "rc $?"; grep -E "test result|FAIL|panicked" "$out/tests-switches.log" | head -10
banded="--generate 131072"
scattered="--generate 131072 --sinks 30 --random-columns 70 --slashes 64 --far-slashes 736"
square="--tile 64,64,4,2 --mainloop wgmma"
# index|tile|defines|build: the 64x64 blocks on the scattered index get every variant.
cases=(
  "scattered|square|-|bin" "scattered|square|CP_ASYNC_MBARRIER=1|bin" "scattered|square|WGMMA_OVERLAP=1|bin"
  "scattered|square|DIAG_NO_COPY=1|diag" "scattered|-|-|bin" "scattered|-|CP_ASYNC_MBARRIER=1|bin"
  "scattered|-|SPLIT_TILES=1|bin"
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
for defines in "" SPLIT_TILES=1; do
  [ "$SECONDS" -lt "${CALL_LIMIT:-540}" ] || { echo "== out of time for minf bench ${defines:-no defines}"; break; }
  echo "== minf bench 128K vertical_slash:1000,6096 ${defines:-no defines}"
  MINF_KERNEL_DEFINES=$defines timeout $(( ${CALL_LIMIT:-540} + 40 - SECONDS )) .gpu/bin/minf bench --seqs 131072 \
    --patterns vertical_slash:1000,6096 --json "$out/bench-${defines:-default}.json" 2>&1 | grep -E "^128K|rror"
done

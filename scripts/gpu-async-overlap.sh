#!/usr/bin/env bash
# One GPU call (session 6, call 10): ASYNC_ANNOUNCE (each copy announces itself through
# cp.async.mbarrier.arrive.noinc, so a tile's K is announced apart from its V) alone and with
# WGMMA_OVERLAP, two and three stages, against the default on dense and issue 3's banded index; then
# the dense, pattern and prefill tests under ASYNC_ANNOUNCE=1,WGMMA_OVERLAP=1.
#   run: OUT=$OUT bash scripts/gpu-async-overlap.sh   (carry .gpu/bin)
# ASYNC_ANNOUNCE was a define of that call's scratch build only (not kept; bench/RESULTS.md, call 10).
set -u
out=${OUT:-/tmp/gpu-async-overlap}; mkdir -p "$out"; exec > >(tee -a "$out/log") 2>&1
source scripts/gpu-common.sh
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
time_dense_and_banded "-|128,128,8,2" "ASYNC_ANNOUNCE=1|128,128,8,2" "ASYNC_ANNOUNCE=1,WGMMA_OVERLAP=1|128,128,8,2" \
  "ASYNC_ANNOUNCE=1|128,128,8,3" "ASYNC_ANNOUNCE=1,WGMMA_OVERLAP=1|128,128,8,3" "-|128,128,8,2"
defines=ASYNC_ANNOUNCE=1,WGMMA_OVERLAP=1
echo "== tests dense patterns:: prefill:: with $defines"
MINF_KERNEL_DEFINES=$defines timeout 170 .gpu/bin/gpu --include-ignored dense patterns:: prefill:: --test-threads=8 \
  --nocapture > "$out/tests.log" 2>&1
echo "rc $?"; grep -E "test result|FAIL|panicked" "$out/tests.log" | head -6
pack_outputs "$out"

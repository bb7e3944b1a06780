#!/usr/bin/env bash
# One GPU call (session 6, call 7): consumer ping-pong (WGMMA_PINGPONG) alone and with the
# intra-warpgroup overlap (WGMMA_OVERLAP), two and three stages, against the default on dense and on
# issue 3's banded index; then the dense, pattern and prefill tests under both ping-pong variants.
#   run: OUT=$OUT bash scripts/gpu-pingpong.sh   (carry .gpu/bin)
# WGMMA_PINGPONG was a define of that call's scratch build only (the idea is commit 6a479a5; it did not
# pay and was not kept): on later builds those variants run the default or overlap kernels.
set -u
out=${OUT:-/tmp/gpu-pingpong}; mkdir -p "$out"; exec > >(tee -a "$out/log") 2>&1
source scripts/gpu-common.sh
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
time_dense_and_banded "-|128,128,8,2" "WGMMA_PINGPONG=1|128,128,8,2" "WGMMA_OVERLAP=1,WGMMA_PINGPONG=1|128,128,8,2" \
  "WGMMA_PINGPONG=1|128,128,8,3" "WGMMA_OVERLAP=1,WGMMA_PINGPONG=1|128,128,8,3" "-|128,128,8,2"
for defines in WGMMA_PINGPONG=1 WGMMA_OVERLAP=1,WGMMA_PINGPONG=1; do
  echo "== tests dense patterns:: prefill:: with $defines"
  MINF_KERNEL_DEFINES=$defines timeout 170 .gpu/bin/gpu --include-ignored dense patterns:: prefill:: --test-threads=8 \
    --nocapture > "$out/tests-$defines.log" 2>&1
  echo "rc $?"; grep -E "test result|FAIL|panicked" "$out/tests-$defines.log" | head -6
done
pack_outputs "$out"

#!/usr/bin/env bash
# One GPU call for the producer's direct copies (session 6): the whole GPU suite on the new default,
# then dense_bench and vs_bench (issue 3's banded index and a scattered one, 128-row and 64x64
# blocks) with the default, with DIRECT_COPIES=0 (copies through the staged keys, as before) and
# with MBARRIER_SUSPEND_NS (a suspend hint on every mbarrier wait); MInference on the banded index;
# minf bench at 128K while CALL_LIMIT allows.   run: OUT=$OUT bash scripts/gpu-copies.sh
#   (carry .gpu/bin and the MInference files)
# DIRECT_COPIES and MBARRIER_SUSPEND_NS were defines of that build only (removed after this call):
# on later builds those variants run the default kernels.
set -u
out=${OUT:-/tmp/gpu-copies}; mkdir -p "$out"; exec > >(tee -a "$out/log") 2>&1
source scripts/gpu-common.sh
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
start_minference_install "$out/install.log"
TEST_LIMIT=${TEST_LIMIT:-200} SUITE_GREP=worst gpu_suite "$out"
hint=MBARRIER_SUSPEND_NS=10000000
for defines in "" DIRECT_COPIES=0 $hint; do
  echo "== dense ${defines:-default}"
  MINF_KERNEL_DEFINES=$defines timeout 120 .gpu/bin/dense_bench --seqs 32768,131072 --iters 5 2>&1 | grep -E "^seq|rror"
done
banded="--generate 131072"
scattered="--generate 131072 --sinks 30 --random-columns 70 --slashes 64 --far-slashes 736"
square="--tile 64,64,4,2 --mainloop wgmma"
cases=("banded|-|-" "banded|-|DIRECT_COPIES=0" "banded|-|$hint" "banded|square|-" "banded|square|DIRECT_COPIES=0"
  "scattered|-|-" "scattered|-|DIRECT_COPIES=0" "scattered|square|-" "scattered|square|DIRECT_COPIES=0")
for entry in "${cases[@]}"; do
  IFS='|' read -r index tile defines <<< "$entry"
  [ "$defines" = "-" ] && defines=""
  tile_args=""; [ "$tile" = "square" ] && tile_args=$square
  echo "== $index ${tile/-/default tile} ${defines:-default}"
  MINF_KERNEL_DEFINES=$defines vs .gpu/bin/vs_bench ${!index} --iters 5 $tile_args
done
wait_minference_install
echo "== MInference on the banded index"; minference_vs
for defines in "" DIRECT_COPIES=0; do
  [ "$SECONDS" -lt "${CALL_LIMIT:-520}" ] || { echo "== out of time for minf bench ${defines:-default}"; break; }
  echo "== minf bench 128K ${defines:-default}"
  MINF_KERNEL_DEFINES=$defines timeout $(( ${CALL_LIMIT:-520} + 50 - SECONDS )) .gpu/bin/minf bench --seqs 131072 \
    --patterns dense,vertical_slash:1000,6096,block_sparse:100,config:.gpu/Llama_3_8B_Instruct_262k_kv_out_v32_fit_o_best_pattern.json --json "$out/bench-${defines:-default}.json" 2>&1 | grep -E "^128K|rror"
done

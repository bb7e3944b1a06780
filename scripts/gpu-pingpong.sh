#!/usr/bin/env bash
# One GPU call: the wgmma engine's consumer schedules timed side by side (default, WGMMA_OVERLAP,
# OVERLAP + WGMMA_PINGPONG, the latter with 3 stages) on dense 16K/64K and the 128K vertical-slash
# index, MInference's kernel on the same index in the same call, then the GPU tests under
# PINGPONG's defines.   bash scripts/gpu-pingpong.sh      (logs under $OUT)
set -u
out=${OUT:-/tmp/gpu-pingpong}; mkdir -p "$out"
export MINF_CACHE_DIR=${MINF_CACHE_DIR:-/tmp/minf-cache}
B=.gpu/bin
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
[ -d /tmp/site/minference ] || { bash .gpu/install_minference.sh > "$out/install.log" 2>&1 & }
PP=WGMMA_OVERLAP=1,WGMMA_PINGPONG=1
variants=("" "WGMMA_OVERLAP=1" "$PP")
for defs in "${variants[@]}"; do
  echo "== dense, defines '$defs'"
  MINF_KERNEL_DEFINES=$defs timeout 60 $B/dense_bench --seqs 16384,65536 2>&1 | grep -iE "tflop|rror" | sed 's/, NVIDIA.*//'
done
echo "== dense, $PP, 3 stages"; MINF_KERNEL_DEFINES=$PP timeout 60 $B/dense_bench --seqs 16384,65536 --tile 128,128,8,3 --mainloop wgmma 2>&1 | grep -iE "tflop|rror"
for defs in "${variants[@]}"; do
  echo "== vertical-slash 128K, defines '$defs'"
  MINF_KERNEL_DEFINES=$defs timeout 90 $B/vs_bench --generate 131072 2>&1 | grep -E "^minf vertical-slash|rror" | sed 's/, NVIDIA.*//'
done
echo "== vertical-slash 128K, $PP, 3 stages"; MINF_KERNEL_DEFINES=$PP timeout 90 $B/vs_bench --generate 131072 --tile 128,128,8,3 --mainloop wgmma 2>&1 | grep -E "^minf vertical-slash|rror" | sed 's/, NVIDIA.*//'
wait
export PYTHONPATH=/tmp/site
timeout 120 python3 bench/minference_vs.py --out /tmp/vs 2>&1 | tail -1
for defs in "" "$PP"; do
  echo "== MInference's index, defines '$defs'"
  MINF_KERNEL_DEFINES=$defs timeout 90 $B/vs_bench /tmp/vs/vs_index.safetensors 2>&1 | grep -E "^minf vertical-slash|rror" | sed 's/, NVIDIA.*//'
done
timeout 120 python3 bench/minference_vs.py --out /tmp/vs 2>&1 | tail -1
cp /tmp/vs/minference_vs.json "$out/" 2>/dev/null
echo "== tests under $PP: ${TESTS:-patterns:: prefill:: dense explicit}"
MINF_KERNEL_DEFINES=$PP timeout ${TEST_LIMIT:-300} $B/gpu --include-ignored ${TESTS:-patterns:: prefill:: dense explicit} --test-threads=6 --nocapture > "$out/tests.log" 2>&1
echo "tests rc $?"; grep -E "^test |test result|FAIL|panicked|worst" "$out/tests.log" | head -40

#!/usr/bin/env bash
# Times the attention engines side by side on one GPU (run on the GPU machine from the repository
# root after scripts/gpu-bundle.sh): dense at 16K/64K and vertical-slash on a generated 128K index
# (30 sinks + 970 random columns + 6096 nearest diagonals), mma.sync vs the warp-specialised wgmma
# engine with and without the softmax/matmul overlap, then SDPA in the same call.
#   scripts/hopper-variants.sh [BIN_DIR]        (writes logs under $OUT if set)
set -u
bin=${1:-.gpu/bin}
out=${OUT:-/tmp/hopper-variants}
mkdir -p "$out"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
run() {  # label, then the command; 120 s cap each so a hang cannot eat the lease
  local label=$1; shift
  echo "== $label"
  timeout 120 "$@" > "$out/$label.log" 2>&1; local rc=$?
  grep -E "TFLOP|ms|error|Error|panick" "$out/$label.log" | tail -n 6
  [ $rc -eq 0 ] || echo "   ($label exited $rc)"
}
run dense-mma "$bin/dense_bench" --seqs 16384,65536 --mainloop mma_sync
run dense-wgmma-s2 "$bin/dense_bench" --seqs 16384,65536 --mainloop wgmma --tile 128,128,8,2
run dense-wgmma-s3 "$bin/dense_bench" --seqs 16384,65536 --mainloop wgmma --tile 128,128,8,3
run vs-mma "$bin/vs_bench" --generate 131072 --mainloop mma_sync
run vs-wgmma-s2 "$bin/vs_bench" --generate 131072 --mainloop wgmma --tile 128,128,8,2
run vs-wgmma-s3 "$bin/vs_bench" --generate 131072 --mainloop wgmma --tile 128,128,8,3
run vs-wgmma-m64 "$bin/vs_bench" --generate 131072 --mainloop wgmma --tile 64,64,4,2
if [ "${SDPA:-1}" = 1 ]; then
  echo "== sdpa"; timeout 180 python3 bench/dense_check.py --bench --seqs 16384,65536 2>&1 | tail -n 8
fi

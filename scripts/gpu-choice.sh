#!/usr/bin/env bash
# One GPU call for the per-head tile choice (minf::TileChoice): the whole GPU suite (with the
# choice's own test), vs_bench on issue 3's banded index and on a scattered one with the default
# tile and with --choose, then `minf bench` at 128K with the choice (default) and without it
# (--no-tile-choice) on the index-driven cases. Logged under $OUT as it runs.
#   scripts/gpu-bundle.sh; run: OUT=$OUT bash scripts/gpu-choice.sh   (carry .gpu/bin)
set -u
out=${OUT:-/tmp/gpu-choice}; mkdir -p "$out"; exec > >(tee -a "$out/log") 2>&1
source scripts/gpu-common.sh
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
TEST_LIMIT=${TEST_LIMIT:-240} SUITE_GREP="tile choice" gpu_suite "$out"
banded="--generate 131072"
scattered="--generate 131072 --sinks 30 --random-columns 70 --slashes 64 --far-slashes 736"
for index in banded scattered; do
  for choose in "" "--choose"; do
    echo "== $index ${choose:-default}"
    timeout ${VS_LIMIT:-120} .gpu/bin/vs_bench ${!index} --iters 5 $choose 2>&1 | grep -E "^minf vertical-slash|^tile choice|rror|panick" | sed 's/, NVIDIA.*//'
  done
done
indexed="vertical_slash:1000,6096,vertical_slash:100,800,block_sparse:100,config:configs/Llama_3_8B_Instruct_262k_kv_out_v32_fit_o_best_pattern.json"
echo "== minf bench 128K, tile choice"
timeout 200 .gpu/bin/minf bench --seqs 131072 --patterns "$indexed" --json "$out/choice.json"
echo "== minf bench 128K, --no-tile-choice"
timeout 200 .gpu/bin/minf bench --seqs 131072 --patterns "$indexed" --no-tile-choice --json "$out/fixed.json"

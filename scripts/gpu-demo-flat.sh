#!/usr/bin/env bash
# One GPU call (session 7, call 2): the README's first command (prefill_demo with its defaults: one
# Llama-3-8B layer under the shipped config at 128K on the structured inputs), the same with a
# needle at 64K, then `minf bench --flat-tail` (the inputs before the long-range decay) on dense,
# vertical-slash (1000, 6096) and the config layer at 128K and 1M, to compare with call 1.
#   scripts/gpu-bundle.sh; run: OUT=$OUT bash scripts/gpu-demo-flat.sh  (carry .gpu/bin)
set -u
out=${OUT:-/tmp/gpu-demo-flat}; mkdir -p "$out"; exec > >(tee -a "$out/log") 2>&1
source scripts/gpu-common.sh
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
DEMO_LIMIT=170 prefill_demos "$out"
echo "== minf bench --flat-tail at ${SECONDS}s"
timeout $((560 - SECONDS)) .gpu/bin/minf bench --flat-tail --seqs 131072,1048576 \
  --patterns dense,vertical_slash:1000,6096,config:configs/Llama_3_8B_Instruct_262k_kv_out_v32_fit_o_best_pattern.json:16 \
  --json "$out/flat.json"
echo "rc $? at ${SECONDS}s"
pack_outputs "$out" demo.log needle.log flat.json

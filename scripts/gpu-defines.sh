#!/usr/bin/env bash
# One GPU call: template variants of one build (.gpu/bin) chosen by MINF_KERNEL_DEFINES, timed
# alternately on dense 16K/64K and the 128K vertical-slash index, with MInference's kernel on the
# same kind of index in the same call. VARIANTS: ';'-separated "DEFINES|vs_bench args" entries
# ("-" for no defines), e.g. VARIANTS='-;WGMMA_PINGPONG=1;WGMMA_PINGPONG=1|--tile 128,128,8,3 --mainloop wgmma'.
#   VARIANTS=... ROUNDS=2 bash scripts/gpu-defines.sh 2>&1 | tee $OUT/log
set -u
source scripts/gpu-common.sh
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
start_minference_install
IFS=';' read -ra variants <<< "${VARIANTS:--}"
for round in $(seq "${ROUNDS:-2}"); do
  for variant in "${variants[@]}"; do
    defines=${variant%%|*}; args=""; [[ $variant == *"|"* ]] && args=${variant#*|}
    [ "$defines" = "-" ] && defines=""
    echo "== round $round: defines '${defines}' args '${args}'"
    if [ -z "$args" ]; then
      MINF_KERNEL_DEFINES=$defines timeout 90 .gpu/bin/dense_bench --seqs 16384,65536 2>&1 | grep -iE "tflop|rror"
    fi
    MINF_KERNEL_DEFINES=$defines vs .gpu/bin/vs_bench --generate 131072 $args
  done
done
wait_minference_install
minference_vs

#!/usr/bin/env bash
# One GPU call: this build (.gpu/bin) against an older build (REF, default .gpu/old: dense_bench and
# vs_bench only) on dense 16K/64K and the 128K vertical-slash index, MInference's kernel on the same
# index in the same call, then the GPU tests (TESTS, default all) on this build. VS_VARIANTS: more
# vs_bench argument sets (';'-separated, e.g. '--tile 128,128,8,3 --mainloop wgmma') run per build.
#   REF=.gpu/main VS_VARIANTS='...' bash scripts/gpu-compare.sh      (logs under $OUT)
set -u
out=${OUT:-/tmp/gpu-compare}; mkdir -p "$out"
source scripts/gpu-common.sh
ref=${REF:-.gpu/old}
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
start_minference_install "$out/install.log"
for b in $ref .gpu/bin $ref .gpu/bin; do
  echo "== $b dense"; timeout 60 $b/dense_bench --seqs 16384,65536 2>&1 | grep -iE "tflop|rror"
  echo "== $b vertical-slash 128K"; vs $b/vs_bench --generate 131072
  IFS=';' read -ra variants <<< "${VS_VARIANTS:-}"
  for v in "${variants[@]}"; do echo "== $b vertical-slash 128K $v"; vs $b/vs_bench --generate 131072 $v; done
done
wait_minference_install
minference_vs
echo "== .gpu/bin on MInference's index"; vs .gpu/bin/vs_bench /tmp/vs/vs_index.safetensors --json "$out/minf_vs.json"
cp /tmp/vs/minference_vs.json "$out/" 2>/dev/null
echo "== tests: ${TESTS:-all}"
timeout ${TEST_LIMIT:-330} .gpu/bin/gpu --include-ignored ${TESTS:-} --test-threads=8 --nocapture > "$out/tests.log" 2>&1
echo "tests rc $?"; grep -E "^test |test result|FAIL|panicked|worst" "$out/tests.log" | head -50

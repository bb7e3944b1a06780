#!/usr/bin/env bash
# One GPU call: vertical-slash timings of this build (.gpu/bin) against a reference build
# (REF, default .gpu/tworun) and MInference's kernel on the same index, then the GPU tests named in
# TESTS (default the pattern and prefill tests). Logs under $OUT.   bash scripts/gpu-call.sh
set -u
out=${OUT:-/tmp/gpu-call}; mkdir -p "$out"
export MINF_CACHE_DIR=${MINF_CACHE_DIR:-/tmp/minf-cache}
ref=${REF:-.gpu/tworun}
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
[ -d /tmp/site/minference ] || { bash .gpu/install_minference.sh > "$out/install.log" 2>&1 & }
vs() { timeout 90 "$@" 2>&1 | grep -E "^minf vertical-slash|rror" | sed 's/, NVIDIA.*//'; }
for b in .gpu/bin $ref; do
  echo "== $b: 30 sinks + 970 columns + 6096 nearest diagonals"; vs $b/vs_bench --generate 131072
  echo "== $b: columns only"; vs $b/vs_bench --generate 131072 --slashes 64
done
wait
export PYTHONPATH=/tmp/site
timeout 120 python3 bench/minference_vs.py --out /tmp/vs 2>&1 | tail -2
for b in .gpu/bin $ref .gpu/bin; do echo "== $b on MInference's index"; vs $b/vs_bench /tmp/vs/vs_index.safetensors --json "$out/minf_vs_$(basename $b).json"; done
timeout 120 python3 bench/minference_vs.py --out /tmp/vs 2>&1 | tail -1
cp /tmp/vs/minference_vs.json "$out/" 2>/dev/null
echo "== tests: ${TESTS:-patterns:: prefill::}"
timeout ${TEST_LIMIT:-300} .gpu/bin/gpu --include-ignored ${TESTS:-patterns:: prefill::} --test-threads=6 --nocapture > "$out/tests.log" 2>&1
echo "tests rc $?"; grep -E "^test |test result|FAIL|panicked|worst" "$out/tests.log" | head -40

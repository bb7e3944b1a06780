#!/usr/bin/env bash
# One GPU call that finds what limits the vertical-slash kernel (bench/NOTES.md): the index's parts
# timed apart on `main`'s build and on a second build (e.g. a branch), Nsight Compute sections of
# minf's vertical-slash and dense kernels and of MInference's kernel, and both kernels on
# MInference's own converted index.
#   scripts/gpu-diagnose-vs.sh [BIN_DIR [OTHER_BIN_DIR]]      (writes under $OUT or /tmp/diagnose)
set -u
bin=${1:-.gpu/bin}
other=${2:-}
out=${OUT:-/tmp/diagnose}
mkdir -p "$out"
export MINF_CACHE_DIR=${MINF_CACHE_DIR:-/tmp/minf-cache}
# MInference builds on the CPU while the GPU runs minf.
[ -f .gpu/install_minference.sh ] && { bash .gpu/install_minference.sh > "$out/install.log" 2>&1 & }

sections=(--section SpeedOfLight --section MemoryWorkloadAnalysis --section ComputeWorkloadAnalysis
  --section WarpStateStats --section SchedulerStats --section Occupancy --section LaunchStats)
profile() {  # label, kernel regex, command...
  local label=$1 kernel=$2; shift 2
  echo "== ncu $label"
  timeout 180 ncu --clock-control none -k "regex:$kernel" --launch-count 1 "${sections[@]}" "$@" > "$out/ncu-$label.txt" 2>&1
  echo "rc $? ($(wc -l < "$out/ncu-$label.txt") lines)"
}

MAINLOOPS=default scripts/vs-parts.sh "$bin" $other

# Session 3, call 1: ncu produced nothing on the 128K vertical-slash kernel within 180 s.
profile vs-default minf_vertical_slash "$bin/vs_bench" --generate 131072 --iters 1
profile dense-32k minf_dense "$bin/dense_bench" --seqs 32768 --iters 1

wait
tail -3 "$out/install.log"
if [ -d /tmp/site/minference ]; then
  export PYTHONPATH=/tmp/site
  timeout 120 python3 bench/minference_vs.py --out /tmp/vs 2>&1 | tail -4
  for b in "$bin" $other; do
    echo "== MInference's index ($b)"
    timeout 90 "$b/vs_bench" /tmp/vs/vs_index.safetensors 2>&1 | grep -E "^minf vertical-slash|rror" | sed 's/, NVIDIA.*//'
  done
  cp /tmp/vs/minference_vs.json "$out/" 2>/dev/null
  profile minference _triton_mixed python3 bench/minference_vs.py --out /tmp/vs2
fi

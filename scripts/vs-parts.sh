#!/usr/bin/env bash
# Times the vertical-slash kernel on generated 128K indices that isolate its parts, to find what
# limits it (bench/NOTES.md): the default index, the band alone, the columns alone, and scattered
# far diagonals, for each build folder given and each engine in MAINLOOPS (default: the default
# engine and mma.sync).   [MAINLOOPS="default mma_sync"] scripts/vs-parts.sh [BIN_DIR ...]
set -u
[ $# -gt 0 ] || set -- .gpu/bin
seq=${SEQ:-131072}
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
part() {  # label, then vs_bench --generate arguments
  local label=$1; shift
  for bin in "${bins[@]}"; do
    for mainloop in ${MAINLOOPS:-default mma_sync}; do
      local extra=(); [ "$mainloop" = default ] || extra=(--mainloop "$mainloop")
      echo "== $label ($bin, $mainloop)"
      timeout 120 "$bin/vs_bench" --generate "$seq" "$@" "${extra[@]}" 2>&1 | grep -E "^minf vertical-slash|rror" | sed 's/, NVIDIA.*//'
    done
  done
}
bins=("$@")
part "30 sinks + 970 columns + 6096 nearest diagonals" --sinks 30 --random-columns 970 --slashes 6096
part "band only: 1 sink + 6096 nearest diagonals" --sinks 1 --random-columns 0 --slashes 6096
part "columns only: 30 sinks + 970 columns + 64 diagonals" --sinks 30 --random-columns 970 --slashes 64
part "scattered: 1 sink + 100 nearest + 1000 far diagonals" --sinks 1 --random-columns 0 --slashes 100 --far-slashes 1000

#!/usr/bin/env bash
# Times the vertical-slash kernel on generated 128K indices that isolate its parts, to find what
# limits it (bench/NOTES.md): the default index, the band alone, the columns alone, and scattered
# far diagonals, each on the default engine and on mma.sync.   scripts/vs-parts.sh [BIN_DIR]
set -u
bin=${1:-.gpu/bin}
seq=${SEQ:-131072}
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
part() {  # label, then vs_bench --generate arguments
  local label=$1; shift
  for mainloop in default mma_sync; do
    local extra=(); [ "$mainloop" = default ] || extra=(--mainloop "$mainloop")
    echo "== $label ($mainloop)"
    timeout 120 "$bin/vs_bench" --generate "$seq" "$@" "${extra[@]}" 2>&1 | grep -E "^minf vertical-slash|rror" | sed 's/, NVIDIA.*//'
  done
}
part "30 sinks + 970 columns + 6096 nearest diagonals" --sinks 30 --random-columns 970 --slashes 6096
part "band only: 1 sink + 6096 nearest diagonals" --sinks 1 --random-columns 0 --slashes 6096
part "columns only: 30 sinks + 970 columns + 64 diagonals" --sinks 30 --random-columns 970 --slashes 64
part "scattered: 1 sink + 100 nearest + 1000 far diagonals" --sinks 1 --random-columns 0 --slashes 100 --far-slashes 1000

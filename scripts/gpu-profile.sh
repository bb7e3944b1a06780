#!/usr/bin/env bash
# Usage: scripts/gpu-profile.sh NAME KERNEL_REGEX COMMAND [ARGS...]
#
# Profiles one launch of the kernels whose name matches KERNEL_REGEX, run by COMMAND, with Nsight
# Compute (hardware counters and warp-state sampling per SASS instruction), and writes under $OUT:
# NAME.ncu-rep (open it in the Nsight Compute GUI), NAME-details.txt (the details page),
# NAME-sass.csv (per-instruction samples). Prints the headline metrics and the SASS lines with the
# most stall samples (scripts/ncu-top-stalls.py). Kernel names are minf_<pattern>_<dtype>_d<D>_...
# for attention and minf_<index kernel>_... for the index kernels. Examples, from the bundle:
#
#   scripts/gpu-profile.sh dense minf_dense .gpu/bin/dense_bench --seqs 32768 --iters 1
#   scripts/gpu-profile.sh banded 'minf_vertical_slash.*_tma$' .gpu/bin/vs_bench --generate 131072 --iters 1
#   scripts/gpu-profile.sh scores vs_scores .gpu/bin/estimate_bench --seq 131072 --reps 1
#   LAUNCH_SKIP=1 scripts/gpu-profile.sh bs 'minf_block_sparse.*_tma$' .gpu/bin/minf bench --seqs 131072 \
#     --patterns block_sparse:100 --reps 1     (the skipped launch: the bench's 1024-token first call)
#
# The 128-row index-driven kernels launch their tile-list pass (`<kernel>_tile_list`) before each
# launch: a regex that ends at the engine's suffix (`_tma$`) profiles the kernel, `_tile_list$` the pass.
#
# Environment: OUT (default /tmp/gpu-profile), LAUNCH_SKIP (matching launches to skip first,
# default 0), TIME_LIMIT (seconds, default 300), NCU (default ncu). Clocks are left as the
# driver sets them (--clock-control none), so times compare with unprofiled runs.
set -uo pipefail
[ $# -ge 3 ] || { sed -n '2,3p' "$0" >&2; exit 2; }
name=$1 kernel=$2; shift 2
out=${OUT:-/tmp/gpu-profile}
ncu=${NCU:-ncu}
export MINF_CACHE_DIR=${MINF_CACHE_DIR:-/tmp/minf-cache}
mkdir -p "$out"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv,noheader 2>/dev/null
"$ncu" --version | tail -1
sections=(--section SpeedOfLight --section ComputeWorkloadAnalysis --section WarpStateStats --section SchedulerStats
  --section SourceCounters --section MemoryWorkloadAnalysis --section Occupancy --section LaunchStats)
timeout "${TIME_LIMIT:-300}" "$ncu" --clock-control none --kernel-name "regex:$kernel" --launch-skip "${LAUNCH_SKIP:-0}" \
  --launch-count 1 "${sections[@]}" --import-source no -f -o "$out/$name" "$@" > "$out/$name-run.log" 2>&1
rc=$?
tail -3 "$out/$name-run.log"
[ -f "$out/$name.ncu-rep" ] || { echo "gpu-profile: no report (ncu exit $rc; log $out/$name-run.log)" >&2; exit 1; }
"$ncu" --import "$out/$name.ncu-rep" --page details > "$out/$name-details.txt" 2>&1
grep -E "Duration|Compute \(SM\) Throughput|Issue Slots Busy|Warp Cycles Per Issued|No Eligible|Eligible Warps|Registers Per|Achieved Occupancy|L2 Hit|DRAM Throughput|Tensor|Executed Ipc" \
  "$out/$name-details.txt" | head -40
"$ncu" --import "$out/$name.ncu-rep" --page source --csv --print-source sass > "$out/$name-sass.csv" 2> "$out/$name-sass.err"
python3 "$(dirname "$0")/ncu-top-stalls.py" "$out/$name-sass.csv" 40 || head -5 "$out/$name-sass.err"

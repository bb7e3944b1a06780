#!/usr/bin/env bash
# One GPU call that profiles the wgmma kernels with Nsight Compute (hardware counters, warp-state
# sampling per SASS instruction): dense at 32K, issue 3's banded vertical-slash index at 128K on
# 128-row blocks, and the scattered index on 64x64 blocks. Writes each report (.ncu-rep), its details
# page and the SASS lines with the most stall samples under $OUT.
#   run: OUT=$OUT bash scripts/gpu-profile.sh   (carry .gpu/bin)
set -u
out=${OUT:-/tmp/gpu-profile}; mkdir -p "$out"; exec > >(tee -a "$out/log") 2>&1
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv,noheader
ncu --version | tail -1
ncu --query-metrics 2>/dev/null | grep -i -E "gmma|pipe_tensor" | head -20
sections="--section SpeedOfLight --section ComputeWorkloadAnalysis --section WarpStateStats --section SchedulerStats \
  --section SourceCounters --section MemoryWorkloadAnalysis --section Occupancy --section LaunchStats"
profile() {  # name, kernel regex, command...
  local name=$1 kernel=$2; shift 2
  echo "== $name"
  timeout 240 ncu --clock-control none --kernel-name "regex:$kernel" --launch-count 1 $sections \
    --import-source no -f -o "$out/$name" "$@" > "$out/$name-run.log" 2>&1
  echo "rc $?"; tail -3 "$out/$name-run.log"
  ncu --import "$out/$name.ncu-rep" --page details > "$out/$name-details.txt" 2>&1
  grep -E "Duration|Compute \(SM\) Throughput|Issue Slots Busy|Warp Cycles Per Issued|No Eligible|Active Warps Per|Eligible Warps|Registers Per|Achieved Occupancy|L2 Hit|DRAM Throughput|Tensor|Executed Ipc" "$out/$name-details.txt" | head -40
  ncu --import "$out/$name.ncu-rep" --page source --csv --print-source sass > "$out/$name-sass.csv" 2>"$out/$name-sass.err"
  python3 scripts/ncu-top-stalls.py "$out/$name-sass.csv" 45 || head -5 "$out/$name-sass.err"
}
profile dense 'minf_dense' .gpu/bin/dense_bench --seqs 32768 --iters 1
profile banded 'minf_vertical_slash' .gpu/bin/vs_bench --generate 131072 --iters 1
profile scattered64 'minf_vertical_slash' .gpu/bin/vs_bench --generate 131072 --sinks 30 --random-columns 70 \
  --slashes 64 --far-slashes 736 --iters 1 --tile 64,64,4,2 --mainloop wgmma

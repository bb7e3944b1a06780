#!/usr/bin/env bash
# One GPU call (session 6, call 9): Nsight Compute on dense at 32K with WGMMA_OVERLAP=1, to set
# against call 6's profile of the default (why the overlap loses). run: OUT=$OUT bash
# scripts/gpu-profile-overlap.sh   (carry .gpu/bin)
set -u
out=${OUT:-/tmp/gpu-profile-overlap}; mkdir -p "$out"; exec > >(tee -a "$out/log") 2>&1
source scripts/gpu-common.sh
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
MINF_KERNEL_DEFINES=WGMMA_OVERLAP=1 timeout 150 ncu --clock-control none --kernel-name regex:minf_dense --launch-count 1 \
  --section SpeedOfLight --section ComputeWorkloadAnalysis --section WarpStateStats --section SchedulerStats \
  --section SourceCounters --import-source no -f -o "$out/overlap" .gpu/bin/dense_bench --seqs 32768 --iters 1 \
  > "$out/ncu-run.log" 2>&1
echo "rc $?"; grep -E "TFLOP" "$out/ncu-run.log"
ncu --import "$out/overlap.ncu-rep" --page details > "$out/overlap-details.txt" 2>&1
grep -E "Tensor is|Eligible Warps|No Eligible|Issue Slots|Registers" "$out/overlap-details.txt" | head
ncu --import "$out/overlap.ncu-rep" --page source --csv --print-source sass > "$out/overlap-sass.csv" 2>/dev/null
python3 scripts/ncu-top-stalls.py "$out/overlap-sass.csv" 30
pack_outputs "$out" overlap-sass.csv overlap-details.txt

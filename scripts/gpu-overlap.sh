#!/usr/bin/env bash
# One GPU call (session 6, call 6): now that the producer keeps up, do the consumer-side variants pay?
# dense_bench and vs_bench (issue 3's banded index; a scattered one on 64x64 blocks) with the
# default, WGMMA_OVERLAP=1 (S of tile i issued before P V of tile i - 1), three stages, and both;
# then Nsight Compute on dense at 32K (where the default build waits now).
#   run: OUT=$OUT bash scripts/gpu-overlap.sh   (carry .gpu/bin)
set -u
out=${OUT:-/tmp/gpu-overlap}; mkdir -p "$out"; exec > >(tee -a "$out/log") 2>&1
source scripts/gpu-common.sh
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
wide="--mainloop wgmma --tile"
time_dense_and_banded "-|128,128,8,2" "WGMMA_OVERLAP=1|128,128,8,2" "-|128,128,8,3" "WGMMA_OVERLAP=1|128,128,8,3"
scattered="--generate 131072 --sinks 30 --random-columns 70 --slashes 64 --far-slashes 736"
for variant in "-|64,64,4,2" "WGMMA_OVERLAP=1|64,64,4,2"; do
  IFS='|' read -r defines tile <<< "$variant"; [ "$defines" = "-" ] && defines=""
  echo "== scattered tile $tile ${defines:-default}"
  MINF_KERNEL_DEFINES=$defines vs .gpu/bin/vs_bench $scattered --iters 5 $wide $tile
done
echo "== ncu dense 32K"
timeout 150 ncu --clock-control none --kernel-name regex:minf_dense --launch-count 1 --section SpeedOfLight \
  --section ComputeWorkloadAnalysis --section WarpStateStats --section SchedulerStats --section SourceCounters \
  --import-source no -f -o "$out/dense" .gpu/bin/dense_bench --seqs 32768 --iters 1 > "$out/ncu-run.log" 2>&1
echo "rc $?"
ncu --import "$out/dense.ncu-rep" --page details > "$out/dense-details.txt" 2>&1
grep -E "Tensor is|Eligible Warps|No Eligible|Issue Slots" "$out/dense-details.txt" | head
ncu --import "$out/dense.ncu-rep" --page source --csv --print-source sass > "$out/dense-sass.csv" 2>/dev/null
python3 scripts/ncu-top-stalls.py "$out/dense-sass.csv" 25
pack_outputs "$out" dense-sass.csv dense-details.txt

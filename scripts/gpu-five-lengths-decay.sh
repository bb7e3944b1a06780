#!/usr/bin/env bash
# One GPU call (session 7, call 4): `minf bench` with every default case at all five lengths on the
# inputs with the long-range decay (issue 5, acceptance 1), records and plot.
#   scripts/gpu-bundle.sh; run: OUT=$OUT bash scripts/gpu-five-lengths-decay.sh  (carry .gpu/bin)
set -u
out=${OUT:-/tmp/gpu-five}; mkdir -p "$out"; exec > >(tee -a "$out/log") 2>&1
source scripts/gpu-common.sh
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
timeout 560 .gpu/bin/minf bench --json "$out/minf-five-lengths.json" --plot "$out/minf-five-lengths.svg"
echo "rc $? at ${SECONDS}s"

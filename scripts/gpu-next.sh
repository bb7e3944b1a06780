#!/usr/bin/env bash
# One GPU call for the open vertical-slash questions (bench/NOTES.md, "Next device session"):
# a second build (ALT, default .gpu/alt: gpu and vs_bench of another branch) next to this one
# (.gpu/bin), on issue 3's banded index and on a scattered one, each with the default tile and
# with 64x64 wgmma blocks, MInference on the banded index in the same call, then the index-driven
# pattern tests of both builds. Everything is logged under $OUT as it runs.
#   git checkout BRANCH && scripts/gpu-bundle.sh .gpu/alt-full && mkdir -p .gpu/alt &&
#     cp .gpu/alt-full/{gpu,vs_bench} .gpu/alt && git checkout main && scripts/gpu-bundle.sh
#   run: OUT=$OUT bash scripts/gpu-next.sh        (carry .gpu/bin .gpu/alt and the MInference files)
set -u
out=${OUT:-/tmp/gpu-next}; mkdir -p "$out"; exec > >(tee -a "$out/log") 2>&1
source scripts/gpu-common.sh
alt=${ALT:-.gpu/alt}
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
start_minference_install
banded="--generate 131072"
scattered="--generate 131072 --sinks 30 --random-columns 70 --slashes 64 --far-slashes 736"
square="--tile 64,64,4,2 --mainloop wgmma"
for round in 1 2; do
  for index in banded scattered; do
    for b in .gpu/bin "$alt"; do
      echo "== round $round $index $b default"; vs $b/vs_bench ${!index}
    done
    echo "== round $round $index .gpu/bin 64x64 wgmma"; vs .gpu/bin/vs_bench ${!index} $square
  done
done
wait_minference_install
minference_vs
for b in .gpu/bin "$alt"; do
  echo "== tests patterns:: $b"
  timeout ${TEST_LIMIT:-150} $b/gpu --include-ignored patterns:: --test-threads=8 --nocapture > "$out/tests-$(basename $b).log" 2>&1
  echo "rc $?"; grep -E "^test |test result|FAIL|panicked" "$out/tests-$(basename $b).log" | head -10
done

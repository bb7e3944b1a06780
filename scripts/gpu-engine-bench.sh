#!/usr/bin/env bash
# Usage: scripts/gpu-engine-bench.sh [OUT_DIR]      (default OUT_DIR: /tmp/engine-bench)
#
# Times the Hopper tile engines against each other in one call on a GPU machine, from the
# repository root with the bundle of scripts/gpu-bundle.sh: dense (dense_bench, $SEQS, default
# 32768,131072), A-shape (128, 3968) at 128K (dense_bench --a-shape: rows of 33 tiles) and the
# banded, scattered and column-heavy (3500 columns, 100 diagonals: gathered key tiles)
# vertical-slash indices at 128K (vs_bench --generate, docs/design.md) on `wgmma`, `wgmma_tma`,
# `wgmma_tma_pingpong` and `wgmma_tma_overlap` (2 and 3 stages), each engine $ROUNDS times
# (default 2) in alternating order, so a difference smaller than the spread between two runs of
# one engine reads as noise. Prints one line per run and a table last; logs and JSON in OUT_DIR. Environment: BIN (default .gpu/bin), SEQS, ROUNDS, ITERS (default 20).
set -uo pipefail
cd "$(dirname "$0")/.."
bin=${BIN:-.gpu/bin}
out=${1:-/tmp/engine-bench}
seqs=${SEQS:-32768,131072}
rounds=${ROUNDS:-2}
iters=${ITERS:-20}
mkdir -p "$out"
[ -x "$bin/dense_bench" ] || { echo "gpu-engine-bench: $bin/dense_bench not found; build it with scripts/gpu-bundle.sh" >&2; exit 2; }
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null
# engine label, --mainloop, dense --tile, vs_bench --tile (128-row blocks)
engines=(
  "wgmma wgmma 128,128,8,2 128,128,8,2"
  "wgmma_tma wgmma_tma 128,128,8,2 128,128,8,2"
  "pingpong_s2 wgmma_tma_pingpong 128,128,8,2 128,128,8,2"
  "pingpong_s3 wgmma_tma_pingpong 128,128,8,3 128,128,8,3"
  "overlap_s2 wgmma_tma_overlap 128,128,8,2 128,128,8,2"
  "overlap_s3 wgmma_tma_overlap 128,128,8,3 128,128,8,3"
)
scattered="--sinks 30 --random-columns 70 --slashes 64 --far-slashes 736"
columns="--sinks 30 --random-columns 3470 --slashes 100"
table=()
for round in $(seq 1 "$rounds"); do
  for entry in "${engines[@]}"; do
    read -r label mainloop dense_tile vs_tile <<< "$entry"
    log="$out/$label-$round.log"
    "$bin/dense_bench" --seqs "$seqs" --iters "$iters" --tile "$dense_tile" --mainloop "$mainloop" \
      --json "$out/dense-$label-$round.json" > "$log" 2>&1
    dense=$(grep -oE "seq= *[0-9]+ .* ([0-9.]+) TFLOP/s" "$log" | awk '{print $(NF-1)}' | paste -sd/)
    "$bin/dense_bench" --seqs 131072 --iters "$iters" --a-shape 128,3968 --tile "$dense_tile" --mainloop "$mainloop" \
      --json "$out/a_shape-$label-$round.json" >> "$log" 2>&1
    a_shape=$(grep -oE "seq= *[0-9]+ .* ([0-9.]+) TFLOP/s" "$log" | tail -1 | awk '{print $(NF-1)}')
    "$bin/vs_bench" --generate 131072 --tile "$vs_tile" --mainloop "$mainloop" >> "$log" 2>&1
    banded=$(grep -oE "minf vertical-slash \([^)]*\): [0-9.]+ ms" "$log" | tail -1 | grep -oE "[0-9.]+ ms$")
    "$bin/vs_bench" --generate 131072 $scattered --tile "$vs_tile" --mainloop "$mainloop" >> "$log" 2>&1
    scattered_ms=$(grep -oE "minf vertical-slash \([^)]*\): [0-9.]+ ms" "$log" | tail -1 | grep -oE "[0-9.]+ ms$")
    "$bin/vs_bench" --generate 131072 $columns --tile "$vs_tile" --mainloop "$mainloop" >> "$log" 2>&1
    columns_ms=$(grep -oE "minf vertical-slash \([^)]*\): [0-9.]+ ms" "$log" | tail -1 | grep -oE "[0-9.]+ ms$")
    line=$(printf "%-12s round %s  dense %s TFLOP/s (%s)  a_shape %s TFLOP/s  banded %s  scattered %s  columns %s" \
      "$label" "$round" "${dense:-FAILED}" "$seqs" "${a_shape:-FAILED}" "${banded:-FAILED}" "${scattered_ms:-FAILED}" \
      "${columns_ms:-FAILED}")
    echo "$line"
    table+=("$line")
  done
done
echo
echo "engine       round  dense TFLOP/s per length; A-shape (128, 3968) 128K TFLOP/s; vertical-slash 128K banded / scattered / columns (128-row blocks)"
printf "%s\n" "${table[@]}" | sort

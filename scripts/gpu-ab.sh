#!/usr/bin/env bash
# Usage: scripts/gpu-ab.sh LABEL=DIR [LABEL=DIR...]
#
# Times builds of minf against each other on one card in one call, for a kernel change and its
# baseline (docs/benchmark.md, "Comparing builds"). DIR holds a `minf` binary (a bundle of
# scripts/gpu-bundle.sh, or one of `scripts/ab-build.sh`); the first build is the baseline. Each
# round runs `DIR/minf bench` once per build, in an order that rotates from round to round, so a
# drift of the card over the call reaches every build alike. Prints, for every case, each build's
# median attention time over the rounds with the range, and its ratio to the baseline's median: a
# difference inside the ranges reads as noise.
#
# Environment: PATTERNS (default "block_sparse:100,vertical_slash:1000,6096,vertical_slash:100,800"),
# SEQS (default 128K), ROUNDS (default 3), REPS (timed calls per case, default 10), EXTRA (more
# `minf bench` flags, e.g. "--index-tile 128,128,8,2,wgmma"), TIME_LIMIT (seconds for the whole
# run, default none: a round is started only while the time left covers the longest round so far),
# OUT (records and logs, default /tmp/gpu-ab), MINF_CACHE_DIR (default /tmp/minf-cache; the cache
# is keyed by each kernel's source, so the builds share it safely).
set -uo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 1 ] || { sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
labels=()
dirs=()
for build in "$@"; do
  label=${build%%=*}
  dir=${build#*=}
  [ "$label" != "$build" ] && [ -n "$label" ] || { echo "gpu-ab: expected LABEL=DIR, got '$build'" >&2; exit 2; }
  [ -x "$dir/minf" ] || { echo "gpu-ab: $dir/minf not found" >&2; exit 2; }
  labels+=("$label")
  dirs+=("$dir")
done
patterns=${PATTERNS:-block_sparse:100,vertical_slash:1000,6096,vertical_slash:100,800}
seqs=${SEQS:-128K}
rounds=${ROUNDS:-3}
reps=${REPS:-10}
out=${OUT:-/tmp/gpu-ab}
export MINF_CACHE_DIR=${MINF_CACHE_DIR:-/tmp/minf-cache}
mkdir -p "$out"
rm -f "$out"/*.json
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null || echo "gpu-ab: no nvidia-smi"
echo "builds: $* | patterns $patterns | seqs $seqs | rounds $rounds | reps $reps ${EXTRA:-}"
start=$SECONDS
longest=0
count=${#labels[@]}
for round in $(seq 1 "$rounds"); do
  if [ -n "${TIME_LIMIT:-}" ] && [ $((TIME_LIMIT - (SECONDS - start))) -lt "$longest" ]; then
    echo "gpu-ab: $((round - 1)) rounds in $((SECONDS - start)) s; no time for another within TIME_LIMIT=$TIME_LIMIT"
    break
  fi
  round_start=$SECONDS
  for slot in $(seq 0 $((count - 1))); do
    i=$(((slot + round - 1) % count))
    label=${labels[$i]}
    log="$out/$label-$round.log"
    # shellcheck disable=SC2086 # EXTRA is a list of flags
    "${dirs[$i]}/minf" bench --seqs "$seqs" --patterns "$patterns" --reps "$reps" ${EXTRA:-} \
      --json "$out/$label-$round.json" > "$log" 2>&1 ||
      echo "gpu-ab: round $round, $label failed (exit $?): $log"
    echo "round $round $label: $((SECONDS - start)) s"
  done
  [ $((SECONDS - round_start)) -gt "$longest" ] && longest=$((SECONDS - round_start))
done
python3 - "$out" "${labels[@]}" <<'EOF'
import glob, json, os, statistics, sys

out, labels = sys.argv[1], sys.argv[2:]
times = {}  # (case, label) -> attention ms of each round
cases = []
for label in labels:
    for path in sorted(glob.glob(os.path.join(out, f"{label}-*.json"))):
        if not path[len(os.path.join(out, label)) + 1:-5].isdigit():
            continue
        with open(path) as f:
            for record in json.load(f):
                case = f"{record['pattern']}({record['params']}) {record['seq']}"
                ms = record.get("attn_ms") or record["total_ms"]
                if case not in cases:
                    cases.append(case)
                times.setdefault((case, label), []).append(ms)
if not cases:
    sys.exit("gpu-ab: no records (see the logs in " + out + ")")
print(f"\nattention ms, median (min-max) over rounds; ratio to {labels[0]}")
print("| case | " + " | ".join(labels) + " |")
print("|---" * (len(labels) + 1) + "|")
for case in cases:
    base = times.get((case, labels[0]))
    cells = []
    for label in labels:
        runs = times.get((case, label))
        if not runs:
            cells.append("-")
            continue
        median = statistics.median(runs)
        cell = f"{median:.3f} ({min(runs):.3f}-{max(runs):.3f}, {len(runs)}x)"
        if base and label != labels[0]:
            cell += f" {median / statistics.median(base):.3f}"
        cells.append(cell)
    print(f"| {case} | " + " | ".join(cells) + " |")
EOF

#!/usr/bin/env bash
# The whole benchmark on a GPU machine, from the bundle (scripts/gpu-bundle.sh; carry .gpu):
# MInference installed from .gpu/ when present, `minf bench` (records + indices), the peers on
# minf's indices, then the comparison into bench/results/.
#
#   bash bench/run-all.sh [SEQS] [PATTERNS]
#
# SEQS (default all five lengths) and PATTERNS (default all) are passed to `minf bench`; records
# are appended to bench/results/{minf,peers}.json, so a run that does not fit one 10-minute call
# can be split by length, e.g.
#   bash bench/run-all.sh 32768,131072
#   bash bench/run-all.sh 262144
#   bash bench/run-all.sh 524288,1048576
# and every call rewrites the comparison from all records so far. Start over: rm -r bench/results/*.json
set -euo pipefail
cd "$(dirname "$0")/.."
seqs=${1:-32768,131072,262144,524288,1048576}
patterns=${2:-}
minf=${MINF:-.gpu/bin/minf}
[ -x "$minf" ] || minf=target/release/minf
out=bench/results
mkdir -p "$out" "$out/idx"

if [ -f .gpu/minference-0.1.6.0.tar.gz ] && [ ! -d /tmp/site/minference ]; then
  bash .gpu/install_minference.sh
fi
python3 -c 'import safetensors' 2>/dev/null || python3 -m pip install -q safetensors 2>/dev/null || true

args=(bench --seqs "$seqs" --json "$out/minf.json" --append --save-indices "$out/idx")
[ -n "$patterns" ] && args+=(--patterns "$patterns")
"$minf" "${args[@]}"
python3 bench/peers.py --indices "$out/idx" --json "$out/peers.json" --append --seqs "$seqs"
"$minf" bench compare "$out/minf.json" "$out/peers.json" --plot "$out/latency.svg" --markdown "$out/compare.md"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > "$out/card.txt" 2>/dev/null || true
echo "results: $out/compare.md $out/latency.svg"

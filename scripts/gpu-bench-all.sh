#!/usr/bin/env bash
# One GPU call for issue 5: `minf bench` over its default cases at all five lengths (records, plot
# and indices), then the peers on minf's indices at PEER_SEQS for what is left of the call
# (CALL_LIMIT seconds in all), then the comparison. Everything lands in $OUT as it runs.
# MINF_RESERVE (default 120) is what minf bench leaves of CALL_LIMIT; BANDED=1 also runs issue 3's
# banded index with minf and MInference's kernel between minf bench and the peers.
#   scripts/gpu-bundle.sh; run: OUT=$OUT bash scripts/gpu-bench-all.sh
#   (carry .gpu/bin .gpu/install_minference.sh .gpu/minference-0.1.6.0.tar.gz)
set -u
out=${OUT:-/tmp/gpu-bench-all}; mkdir -p "$out"; exec > >(tee -a "$out/log") 2>&1
source scripts/gpu-common.sh
limit=${CALL_LIMIT:-560}
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$out/card.txt"
start_minference_install "$out/install.log"
echo "== minf bench (all five lengths) at ${SECONDS}s"
timeout $((limit - ${MINF_RESERVE:-120})) .gpu/bin/minf bench ${MINF_ARGS:-} --json "$out/minf.json" --plot "$out/minf.svg" --save-indices /tmp/idx
echo "rc $? at ${SECONDS}s"
wait_minference_install
if [ "${BANDED:-0}" = 1 ]; then
  echo "== issue 3's banded index: minf, then MInference, at ${SECONDS}s"
  vs .gpu/bin/vs_bench --generate 131072 --iters 10
  minference_vs
fi
left=$((limit - SECONDS - 25))
echo "== peers at ${PEER_SEQS:-32768,131072,1048576}, ${left}s left"
PYTHONPATH=/tmp/site timeout $left python3 bench/peers.py --indices /tmp/idx --json "$out/peers.json" \
  --seqs ${PEER_SEQS:-32768,131072,1048576} > "$out/peers.log" 2>&1
echo "rc $? at ${SECONDS}s"; tail -3 "$out/peers.log"
.gpu/bin/minf bench compare "$out/minf.json" "$out/peers.json" --plot "$out/latency.svg" --markdown "$out/compare.md" > "$out/compare.log" 2>&1
echo "compare rc $?"; grep -iA6 "target" "$out/compare.md" | head -12
pack_outputs "$out" minf.json peers.json compare.md latency.svg minf.svg

#!/usr/bin/env bash
# One GPU call (session 6, call 5): `minf bench` over its default cases at all five lengths (records,
# plot, indices); issue 3's banded index with minf and MInference's kernel; the peers on minf's
# indices at PEER_SEQS for what is left of CALL_LIMIT; `minf bench compare`; outputs packed.
#   scripts/gpu-bundle.sh; run: OUT=$OUT bash scripts/gpu-five-lengths.sh
#   (carry .gpu/bin .gpu/install_minference.sh .gpu/minference-0.1.6.0.tar.gz)
set -u
out=${OUT:-/tmp/gpu-five-lengths}; mkdir -p "$out"; exec > >(tee -a "$out/log") 2>&1
source scripts/gpu-common.sh
limit=${CALL_LIMIT:-560}
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$out/card.txt"
start_minference_install "$out/install.log"
echo "== minf bench (all five lengths) at ${SECONDS}s"
timeout $((limit - 150)) .gpu/bin/minf bench --json "$out/minf.json" --plot "$out/minf.svg" --save-indices /tmp/idx
echo "rc $? at ${SECONDS}s"
wait_minference_install
echo "== issue 3's banded index: minf, then MInference, at ${SECONDS}s"
vs .gpu/bin/vs_bench --generate 131072 --iters 10
minference_vs
left=$((limit - SECONDS - 25))
echo "== peers at ${PEER_SEQS:-32768,262144,524288}, ${left}s left"
PYTHONPATH=/tmp/site timeout $left python3 bench/peers.py --indices /tmp/idx --json "$out/peers.json" \
  --seqs ${PEER_SEQS:-32768,262144,524288} > "$out/peers.log" 2>&1
echo "rc $? at ${SECONDS}s"; tail -3 "$out/peers.log"
.gpu/bin/minf bench compare "$out/minf.json" "$out/peers.json" --plot "$out/latency.svg" --markdown "$out/compare.md" > "$out/compare.log" 2>&1
echo "compare rc $?"
pack_outputs "$out" minf.json peers.json compare.md latency.svg minf.svg

#!/usr/bin/env bash
# One GPU call (session 6, call 5): scripts/gpu-bench-all.sh with `minf bench`'s default cases at all
# five lengths, issue 3's banded index with minf and MInference's kernel (BANDED=1), and the peers at
# 32K, 256K and 512K for what is left of CALL_LIMIT.
#   scripts/gpu-bundle.sh; run: OUT=$OUT bash scripts/gpu-five-lengths.sh
#   (carry .gpu/bin .gpu/install_minference.sh .gpu/minference-0.1.6.0.tar.gz)
set -u
OUT=${OUT:-/tmp/gpu-five-lengths} BANDED=1 MINF_RESERVE=150 PEER_SEQS=${PEER_SEQS:-32768,262144,524288} \
  exec bash "$(dirname "$0")/gpu-bench-all.sh"

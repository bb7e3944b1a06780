#!/usr/bin/env bash
# Builds the GPU test binary and the GPU examples in release mode into one folder (default .gpu/bin)
# that can be copied to a machine with an NVIDIA GPU and driver and run there with no Rust toolchain:
#
#   scripts/gpu-bundle.sh [DIR]
#   # on the GPU machine:
#   DIR/gpu --include-ignored --test-threads=1     # correctness against the CPU reference
#   DIR/dense_bench --seqs 16384,65536              # timing through the runtime
#   DIR/estimate_bench --seq 131072                 # the GPU estimates (bench/NOTES.md)
#   bash bench/run-all.sh                           # minf bench, the peers and the comparison
#
# The GPU machine also needs libnvrtc.so.13 (a CUDA toolkit, or `pip install nvidia-cuda-nvrtc`).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-.gpu/bin}
mkdir -p "$out"
tests=$(cargo test --release --test gpu --no-run --message-format=json 2>/dev/null |
  python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "gpu":
        print(m["executable"])')
[ -n "$tests" ] || { echo "gpu-bundle: could not build the gpu test binary" >&2; exit 1; }
cp "$tests" "$out/gpu"
cargo build --release --examples --bin minf
for example in dense_bench estimate_bench quickstart vs_bench prefill_demo; do cp "target/release/examples/$example" "$out/"; done
cp target/release/minf "$out/"
strip "$out"/* 2>/dev/null || true
ls -la "$out"

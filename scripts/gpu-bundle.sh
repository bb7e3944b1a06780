#!/usr/bin/env bash
# Usage: scripts/gpu-bundle.sh [DIR]      (default DIR: .gpu/bin)
#
# Builds, in release mode, everything the GPU machine runs into one folder, so that a machine with
# an NVIDIA GPU and driver but no Rust toolchain can run it: the GPU test binary `gpu`, the `minf`
# CLI and the examples prefill_demo, quickstart, dense_bench, vs_bench, estimate_bench and
# search_inputs (the input directory `minf search` is timed on, docs/search.md).
# Copy the repository with DIR to the GPU machine and run, from the repository root:
#
#   scripts/gpu-suite.sh [FILTER...]      the GPU tests (docs/testing.md)
#   scripts/gpu-suite.sh --python         the Python package's GPU tests (docs/python.md)
#   scripts/gpu-sanitize.sh [FILTER...]   the same under compute-sanitizer
#   scripts/gpu-bench.sh                  minf bench, the peers and the comparison (docs/benchmark.md)
#   DIR/prefill_demo                      the README's first command
#
# The GPU machine also needs NVRTC 13 (`pip install nvidia-cuda-nvrtc==13.0.88` or a CUDA 13 toolkit).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-.gpu/bin}
mkdir -p "$out"
tests=$(cargo test --release --test gpu --no-run --message-format=json 2>/dev/null | scripts/cargo-executable.py gpu)
cp "$tests" "$out/gpu"
examples=(prefill_demo quickstart dense_bench vs_bench estimate_bench search_inputs)
cargo build --release --bin minf $(printf -- '--example %s ' "${examples[@]}")
for example in "${examples[@]}"; do cp "target/release/examples/$example" "$out/"; done
cp target/release/minf "$out/"
strip "$out"/* 2>/dev/null || true
ls -la "$out"
mkdir -p "$out/../wheels"
wheels=$(cd "$out/../wheels" && pwd)
if command -v maturin > /dev/null; then
  rm -f "$wheels"/minf-*.whl
  (cd minf-python && maturin build --release --quiet --out "$wheels")
  # pytest for machines without it and without network (pure-Python wheels).
  python3 -m pip download --quiet --disable-pip-version-check --only-binary :all: --dest "$wheels" pytest ||
    echo "gpu-bundle: could not download pytest into $wheels" >&2
  ls -la "$wheels"
else
  echo "gpu-bundle: maturin not found (pip install maturin): no wheel for scripts/gpu-suite.sh --python" >&2
fi

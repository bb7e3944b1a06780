#!/usr/bin/env bash
# Usage: scripts/gpu-suite.sh [FILTER... | --skip NAME | --exact | --list]
#        scripts/gpu-suite.sh --python [PYTEST ARGS...]
#
# Runs the GPU tests (every kernel against the float64 CPU reference; docs/testing.md) from the
# bundle of scripts/gpu-bundle.sh, on a machine with an NVIDIA GPU, from the repository root.
# Arguments go to the test binary: substrings of test names (any matches), e.g. `prefill::` or
# `patterns::a_shape`, `--skip timing`, `--exact`, or `--list` for the test names.
# The whole log goes to $LOG; the results, failures and each test's seed are echoed. The exit
# status is the tests'. A failure is reproduced with the seed it printed: MINF_TEST_SEED=N.
#
# --python runs the Python package's GPU tests instead (minf-python/tests/test_gpu.py, docs/python.md):
# it installs the bundle's wheel (.gpu/wheels/minf-*.whl, no dependencies: the machine's torch,
# transformers and safetensors are used; pytest from .gpu/wheels when the machine lacks it) and
# runs pytest with the given arguments, e.g. `-k hf`.
#
# Environment: BIN (default .gpu/bin/gpu), THREADS (test threads, default 8), TIME_LIMIT (seconds,
# default none), LOG (default /tmp/gpu-suite.log), MINF_CACHE_DIR (default /tmp/minf-cache).
set -uo pipefail
cd "$(dirname "$0")/.."
bin=${BIN:-.gpu/bin/gpu}
log=${LOG:-/tmp/gpu-suite.log}
export MINF_CACHE_DIR=${MINF_CACHE_DIR:-/tmp/minf-cache}
if [ "${1:-}" = --python ]; then
  shift
  wheel=$(ls -t .gpu/wheels/minf-*.whl 2>/dev/null | head -1)
  [ -n "$wheel" ] || { echo "gpu-suite: no wheel in .gpu/wheels; build it with scripts/gpu-bundle.sh" >&2; exit 2; }
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --no-deps \
    --force-reinstall "$wheel" || exit 2
  python3 -m pytest --version > /dev/null 2>&1 || python3 -m pip install --quiet --disable-pip-version-check \
    --root-user-action=ignore --no-index --find-links .gpu/wheels pytest || exit 2
  nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null || echo "gpu-suite: no nvidia-smi"
  echo "== python gpu tests ${*:-(all)} ($wheel, log $log)"
  start=$SECONDS
  (cd minf-python && python3 -m pytest -s -rA -p no:cacheprovider tests/test_gpu.py "$@") > "$log" 2>&1
  rc=$?
  grep -E "^(PASSED|FAILED|SKIPPED|ERROR)|rel L2|ratio|seed|new tokens|refused|passed|failed|Error" "$log" | head -80
  echo "gpu-suite: exit $rc after $((SECONDS - start)) s"
  exit "$rc"
fi
[ -x "$bin" ] || { echo "gpu-suite: $bin not found; build it with scripts/gpu-bundle.sh" >&2; exit 2; }
if [[ " $* " == *" --list "* ]]; then
  exec "$bin" --include-ignored "$@"
fi
limit=()
[ -n "${TIME_LIMIT:-}" ] && limit=(timeout "$TIME_LIMIT")
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null || echo "gpu-suite: no nvidia-smi"
echo "== gpu tests ${*:-(all)} (log $log)"
start=$SECONDS
${limit[@]+"${limit[@]}"} "$bin" --include-ignored --test-threads="${THREADS:-8}" --nocapture "$@" > "$log" 2>&1
rc=$?
grep -E "^test .* (ok|FAILED|ignored)$|test result|panicked|FAIL|seed" "$log" | head -80
[ "$rc" = 124 ] && echo "gpu-suite: stopped after TIME_LIMIT=${TIME_LIMIT}s"
echo "gpu-suite: exit $rc after $((SECONDS - start)) s"
exit "$rc"

#!/usr/bin/env bash
# Usage: scripts/gpu-sanitize.sh [FILTER...]
#
# Runs GPU tests from the bundle (scripts/gpu-bundle.sh) under NVIDIA compute-sanitizer, once per
# tool: memcheck (out-of-bounds and misaligned accesses), racecheck (shared-memory hazards),
# synccheck (barrier misuse) and initcheck (reads of uninitialised device memory). Prints a
# summary with the error count of each tool and exits non-zero if any tool reports an error or a
# test fails. Logs: $OUT/<tool>.log.
#
# FILTERs are test-name substrings (`.gpu/bin/gpu --list` lists the names). The default,
# `sanitize::`, is the sanitizer sweep (tests/gpu/sanitize.rs): one small launch of every kernel
# family (dense, A-shape, vertical-slash and block-sparse attention on every tile engine and
# variant the device has, hostile indices and packed batches included, the tile choice, the
# converter, the score passes, both estimates and a prefill layer), each still checked against
# its reference, in one test per engine variant, run side by side. The sanitizer slows kernels down
# by one to two orders of magnitude: other tests (e.g. `patterns::`, lengths up to 32K) are slow.
# racecheck runs each matching test in a process of its own, one after the other: with several
# test threads launching at once, racecheck 2025.3 does not complete on the wgmma engine's kernels
# (the run hangs, or the tool reports an internal error).
#
# Environment: BIN (default .gpu/bin/gpu), TOOLS (default "memcheck racecheck synccheck initcheck"),
# THREADS (tests run side by side, default 8), TIME_LIMIT (seconds per tool run, default 1800;
# racecheck: per test),
# OUT (default /tmp/gpu-sanitize), MINF_TEST_SEED (replay a printed seed), MINF_TEST_HEAD_DIMS (the
# sweep's attention cases on these head dims only, e.g. 128: racecheck runs an engine's whole sweep past 110 s),
# SANITIZER (default: compute-sanitizer on PATH, else /usr/local/cuda/bin/compute-sanitizer).
set -uo pipefail
cd "$(dirname "$0")/.."
bin=${BIN:-.gpu/bin/gpu}
out=${OUT:-/tmp/gpu-sanitize}
tools=${TOOLS:-memcheck racecheck synccheck initcheck}
export MINF_CACHE_DIR=${MINF_CACHE_DIR:-/tmp/minf-cache}
sanitizer=${SANITIZER:-$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)}
[ -x "$bin" ] || { echo "gpu-sanitize: $bin not found; build it with scripts/gpu-bundle.sh" >&2; exit 2; }
[ -x "$sanitizer" ] || { echo "gpu-sanitize: compute-sanitizer not found (CUDA toolkit; or set SANITIZER)" >&2; exit 2; }
filters=("$@")
[ ${#filters[@]} -gt 0 ] || filters=(sanitize::)
mkdir -p "$out"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null
"$sanitizer" --version | tail -1
echo "tests: ${filters[*]}"
# Compile the kernels once, outside the sanitizer (NVRTC is host code; the cache serves later runs).
timeout "${TIME_LIMIT:-1800}" "$bin" --include-ignored --test-threads="${THREADS:-8}" "${filters[@]}" > "$out/plain.log" 2>&1
echo "without the sanitizer: $(grep -E '^test result' "$out/plain.log" | tail -1)"

# Runs one tool over the given tests; prints its error count (racecheck: hazards), or nothing when
# the log has no summary (the run was cut short or the sanitizer failed).
sanitize() { # tool log threads tests...
  local tool=$1 log=$2 threads=$3
  shift 3
  timeout "${TIME_LIMIT:-1800}" "$sanitizer" --tool "$tool" --print-limit 50 \
    "$bin" --include-ignored --test-threads="$threads" --nocapture "$@" > "$log" 2>&1
  rc=$?
  if [ "$tool" = racecheck ]; then
    # "RACECHECK SUMMARY: N hazards displayed (E errors, W warnings)": count every hazard.
    grep -oE "RACECHECK SUMMARY: [0-9]+ hazards" "$log" | tail -1 | grep -oE "[0-9]+"
  else
    grep -oE "ERROR SUMMARY: [0-9]+" "$log" | tail -1 | grep -oE "[0-9]+$"
  fi
  return $rc
}

summary=()
failed=0
for tool in $tools; do
  start=$SECONDS
  if [ "$tool" = racecheck ]; then
    # One test per process, one after the other; the counts add up.
    names=$("$bin" --include-ignored --list 2>/dev/null | sed -n 's/: test$//p' | grep -F "${filters[@]/#/-e}")
    errors=0 rc=0 passed=0 total=0
    : > "$out/racecheck.log"
    for name in $names; do
      count=$(sanitize racecheck "$out/racecheck.one.log" 1 --exact "$name") || rc=$?
      cat "$out/racecheck.one.log" >> "$out/racecheck.log"
      total=$((total + 1))
      grep -qE "^test result: ok" "$out/racecheck.one.log" && passed=$((passed + 1))
      if [ -z "$count" ]; then errors="?"; elif [ "$errors" != "?" ]; then errors=$((errors + count)); fi
    done
    rm -f "$out/racecheck.one.log"
    tests="$passed of $total tests passed, one process each"
  else
    errors=$(sanitize "$tool" "$out/$tool.log" "${THREADS:-8}" "${filters[@]}")
    rc=$?
    tests=$(grep -E "^test result" "$out/$tool.log" | tail -1 | sed 's/^test result: //')
  fi
  if [ -z "$errors" ] || [ "$errors" = "?" ]; then
    errors="?"  # no summary: the run was cut short (rc 124: TIME_LIMIT) or the sanitizer failed
    failed=1
  elif [ "$errors" != 0 ] || [ "$rc" != 0 ]; then
    failed=1
  fi
  summary+=("$(printf '%-10s errors %-4s rc %-4s %5d s  %s' "$tool" "$errors" "$rc" $((SECONDS - start)) "${tests:-no test result}")")
  [ "$errors" = 0 ] || grep -m 20 -E "^========= (Invalid|Error|Race|Barrier|Uninitialized|.*hazard)" "$out/$tool.log"
done
echo "== compute-sanitizer summary ($out)"
printf '%s\n' "${summary[@]}"
exit "$failed"

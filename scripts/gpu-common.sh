# Shared by the device scripts (source it from the repository root on the GPU machine).
export MINF_CACHE_DIR=${MINF_CACHE_DIR:-/tmp/minf-cache}

# Builds MInference into /tmp/site in the background (CPU work while the GPU runs minf); call
# wait_minference_install before timing it. $1: the install log.
start_minference_install() {
  minference_install_pid=
  [ -d /tmp/site/minference ] || { bash .gpu/install_minference.sh > "${1:-/tmp/install.log}" 2>&1 & minference_install_pid=$!; }
}

# Waits for the install only: a bare `wait` also waits for the `exec > >(tee ...)` logger of the
# calling script, which never ends (session 5's calls 1 and 4 lost their tails to it).
wait_minference_install() {
  [ -z "${minference_install_pid:-}" ] || wait "$minference_install_pid"
}

# Runs a command (vs_bench, with a time limit of ${VS_LIMIT:-120} s) and keeps its result and error lines.
vs() { timeout "${VS_LIMIT:-120}" "$@" 2>&1 | grep -E "^minf vertical-slash|rror|panick" | sed 's/, NVIDIA.*//'; }

# MInference's Triton vertical-slash kernel on its own converted index of issue 3's kind (writes /tmp/vs).
minference_vs() { PYTHONPATH=/tmp/site timeout 150 python3 bench/minference_vs.py --out /tmp/vs 2>&1 | tail -1; }

# A call returns at most eight files from $OUT: packs everything under $1 into $1/all.tgz and keeps
# only that, the log and the files named after it loose.
pack_outputs() {
  local dir=$1; shift
  tar -czf /tmp/all.tgz -C "$dir" . && mv /tmp/all.tgz "$dir/all.tgz"
  local keep=" all.tgz log $* "
  find "$dir" -type f | while read -r f; do
    case "$keep" in *" ${f#"$dir"/} "*) ;; *) rm -f "$f" ;; esac
  done
}

# Times dense_bench (32K and 128K) and vs_bench on issue 3's banded 128K index with the wgmma engine,
# for each "DEFINES|BLOCK_M,BLOCK_N,WARPS,STAGES" argument (DEFINES "-" for none).
time_dense_and_banded() {
  local variant defines tile
  for variant in "$@"; do
    IFS='|' read -r defines tile <<< "$variant"; [ "$defines" = "-" ] && defines=""
    echo "== dense tile $tile ${defines:-default}"
    MINF_KERNEL_DEFINES=$defines timeout 100 .gpu/bin/dense_bench --seqs 32768,131072 --iters 5 --mainloop wgmma \
      --tile "$tile" 2>&1 | grep -E "^seq|rror"
    echo "== banded tile $tile ${defines:-default}"
    MINF_KERNEL_DEFINES=$defines vs .gpu/bin/vs_bench --generate 131072 --iters 5 --mainloop wgmma --tile "$tile"
  done
}

# The README's first command (prefill_demo with its defaults) and the same with a needle at 64K,
# each within ${DEMO_LIMIT:-150} s; logs $1/demo.log and $1/needle.log, echoed.
prefill_demos() {
  echo "== prefill_demo (defaults) at ${SECONDS}s"
  timeout "${DEMO_LIMIT:-150}" .gpu/bin/prefill_demo > "$1/demo.log" 2>&1; echo "rc $?"; cat "$1/demo.log"
  echo "== prefill_demo --needle 65536 --reps 5 at ${SECONDS}s"
  timeout "${DEMO_LIMIT:-150}" .gpu/bin/prefill_demo --needle 65536 --reps 5 > "$1/needle.log" 2>&1
  echo "rc $?"; cat "$1/needle.log"
}

# The GPU suite (or the tests matching filters $2...) within ${TEST_LIMIT:-150} s; log $1/tests.log,
# its results and failures echoed (and the lines matching ${SUITE_GREP}, if set).
gpu_suite() {
  local dir=$1; shift
  echo "== GPU suite ${*:-(all)} at ${SECONDS}s"
  timeout "${TEST_LIMIT:-150}" .gpu/bin/gpu --include-ignored "$@" --test-threads=8 --nocapture > "$dir/tests.log" 2>&1
  echo "rc $?"; grep -E "test result|FAIL|panicked${SUITE_GREP:+|$SUITE_GREP}" "$dir/tests.log" | head -24
}

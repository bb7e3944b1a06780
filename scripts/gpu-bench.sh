#!/usr/bin/env bash
# Usage: scripts/gpu-bench.sh [OUT_DIR]      (default OUT_DIR: bench/results)
#
# The benchmark of bench/RESULTS.md in one run on a GPU machine, from the repository root with the
# bundle of scripts/gpu-bundle.sh (docs/benchmark.md):
#   1. `minf bench` over its default cases (or $SEQS, $PATTERNS): OUT_DIR/minf.json, OUT_DIR/minf.svg,
#      and each sparse case's index in $INDICES;
#   2. bench/peers.py at $PEER_SEQS: PyTorch SDPA (FLASH_ATTENTION, CUDNN_ATTENTION), FlexAttention,
#      MInference's kernels and minf through its Python package (the bundle's wheel, installed
#      first) on minf's own indices: OUT_DIR/peers.json;
#   3. `minf bench compare`: OUT_DIR/compare.md (ratios, targets, every record), OUT_DIR/targets.json
#      (the targets checked: name, value, bound, met), OUT_DIR/latency.svg;
#      OUT_DIR/card.txt names the card and driver; logs go to OUT_DIR/logs/ (git-ignored).
# MInference 0.1.6 is imported from $MINFERENCE_SITE (default /tmp/site). If it is not there and
# $MINFERENCE_SRC names its source (a source distribution or checkout; default
# .gpu/minference-0.1.6.0.tar.gz when that file exists), it is built there first, on the CPU while
# minf bench runs. Without it the minference_* peers are skipped (peers.py says so).
#
# Environment: SEQS, PATTERNS, MINF_ARGS (more `minf bench` flags), PEER_SEQS (default
# 131072,1048576), APPEND=1 (add to the record files instead of replacing them, to split a run
# over several calls), TIME_LIMIT (seconds for everything; the peers get what minf bench leaves,
# at least PEER_TIME, default 200), BIN (default .gpu/bin), INDICES (default /tmp/minf-indices).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-bench/results}
bin=${BIN:-.gpu/bin}
indices=${INDICES:-/tmp/minf-indices}
site=${MINFERENCE_SITE:-/tmp/site}
src=${MINFERENCE_SRC:-}
[ -z "$src" ] && [ -f .gpu/minference-0.1.6.0.tar.gz ] && src=.gpu/minference-0.1.6.0.tar.gz
export MINF_CACHE_DIR=${MINF_CACHE_DIR:-/tmp/minf-cache}
[ -x "$bin/minf" ] || { echo "gpu-bench: $bin/minf not found; build the bundle with scripts/gpu-bundle.sh" >&2; exit 2; }
mkdir -p "$out/logs" "$indices"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$out/card.txt"

install_pid=
if [ ! -d "$site/minference" ] && [ -n "$src" ]; then
  arch=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1)
  echo "== building MInference from $src into $site (log $out/logs/minference-install.log)"
  MINFERENCE_FORCE_BUILD=TRUE TORCH_CUDA_ARCH_LIST=${arch:-9.0} MAX_JOBS=$(nproc) python3 -m pip install -q \
    --no-deps --no-build-isolation --target "$site" "$src" > "$out/logs/minference-install.log" 2>&1 &
  install_pid=$!
fi

append=()
[ "${APPEND:-0}" = 1 ] && append=(--append)
minf_limit=()
peer_limit=()
if [ -n "${TIME_LIMIT:-}" ]; then
  minf_limit=(timeout $((TIME_LIMIT - ${PEER_TIME:-200})))
fi
args=(bench --json "$out/minf.json" --plot "$out/minf.svg" --save-indices "$indices")
[ -n "${SEQS:-}" ] && args+=(--seqs "$SEQS")
[ -n "${PATTERNS:-}" ] && args+=(--patterns "$PATTERNS")
echo "== minf ${args[*]} ${MINF_ARGS:-} ${append[*]:-}"
${minf_limit[@]+"${minf_limit[@]}"} "$bin/minf" "${args[@]}" ${MINF_ARGS:-} ${append[@]+"${append[@]}"}
minf_rc=$?
echo "minf bench: exit $minf_rc at ${SECONDS} s"

if [ -n "$install_pid" ]; then
  wait "$install_pid" || echo "gpu-bench: the MInference build failed (see $out/logs/minference-install.log)"
fi
[ -n "${TIME_LIMIT:-}" ] && peer_limit=(timeout $((TIME_LIMIT - SECONDS - 20)))
wheel=$(ls -t .gpu/wheels/minf-*.whl 2>/dev/null | head -1)
[ -n "$wheel" ] && python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --no-deps \
  --force-reinstall "$wheel"
peer_seqs=${PEER_SEQS:-131072,1048576}
echo "== bench/peers.py at $peer_seqs (log $out/logs/peers.log)"
${peer_limit[@]+"${peer_limit[@]}"} python3 bench/peers.py --indices "$indices" --json "$out/peers.json" \
  --seqs "$peer_seqs" --site "$site" ${append[@]+"${append[@]}"} > "$out/logs/peers.log" 2>&1
echo "peers: exit $? at ${SECONDS} s"; grep -E "skipped|failed|wrote" "$out/logs/peers.log"

"$bin/minf" bench compare "$out/minf.json" "$out/peers.json" --plot "$out/latency.svg" --markdown "$out/compare.md" \
  --targets "$out/targets.json"
compare_rc=$?
echo "compare: exit $compare_rc"
[ "$compare_rc" = 0 ] && sed -n '/^## Targets/,/^## minf/p' "$out/compare.md" | head -10
echo "results: $out/compare.md $out/latency.svg"
# Non-zero when minf bench or the comparison failed (a peer that could not run is only reported).
[ "$minf_rc" = 0 ] && exit "$compare_rc"
exit "$minf_rc"

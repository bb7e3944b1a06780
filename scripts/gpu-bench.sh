#!/usr/bin/env bash
# Usage: scripts/gpu-bench.sh [OUT_DIR]      (default OUT_DIR: bench/results)
#
# The benchmark of bench/RESULTS.md (its Commands) in one run on a GPU machine, from the repository
# root with the bundle of scripts/gpu-bundle.sh (docs/benchmark.md):
#   1. the structured inputs (seed 1) as files, written once into $INPUTS by search_inputs: 128K
#      tokens x 32 query heads on 8 KV heads, and 1M tokens x 4 query heads on 1 KV head;
#   2. minf bench: the default cases at 128K, each sparse case's index saved for the peers
#      (OUT_DIR/minf.json, OUT_DIR/minf.svg), and block-sparse top-100 at 1M; the Llama-3-8B-262K
#      layer 16 on both input files (OUT_DIR/layer.json); dense and that layer in 8K chunks at
#      128K and in 64K chunks at 1M (OUT_DIR/chunk.json);
#   3. bench/peers.py: PyTorch SDPA (FLASH_ATTENTION, CUDNN_ATTENTION), FlexAttention, MInference's
#      kernels and minf through its Python package (the bundle's wheel, installed first) at 128K on
#      minf's indices, and cuDNN at 1M (OUT_DIR/peers.json); MInference's own layer on both input
#      files (OUT_DIR/layer-peers.json);
#   4. minf bench compare over every record: OUT_DIR/compare.md (ratios, targets, every record),
#      OUT_DIR/targets.json (the targets checked: name, value, bound, met), OUT_DIR/latency.svg.
# OUT_DIR/card.txt names the card and driver; logs go to OUT_DIR/logs/ (git-ignored). About 5
# minutes on an H100 with MInference installed (its build, about a minute, runs beside step 2).
#
# BASELINE=DIR (another bundle folder, such as the build before a change) runs step 2 first with
# DIR's minf into OUT_DIR/baseline/, and step 4 compares those records against the same peers too
# (OUT_DIR/baseline/compare.md and targets.json): both builds on one card in one call.
# QUICK=1 runs the 128K cases of steps 2 and 3 alone.
#
# MInference 0.1.6 is imported from $MINFERENCE_SITE (default /tmp/site). If it is not there and
# $MINFERENCE_SRC names its source (a source distribution or checkout; default
# .gpu/minference-0.1.6.0.tar.gz when that file exists), it is built there first. Without it the
# minference_* peers are skipped (peers.py says so).
#
# Environment: BIN (default .gpu/bin), BASELINE, QUICK, INPUTS (default /tmp/minf-inputs),
# INDICES (default /tmp/minf-indices), MINF_ARGS (more flags for every `minf bench` run),
# TIME_LIMIT (seconds for the whole run: a step that would start with less than 30 s left is
# skipped and said so, and a running step is stopped at the limit).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-bench/results}
bin=${BIN:-.gpu/bin}
baseline=${BASELINE:-}
inputs=${INPUTS:-/tmp/minf-inputs}
indices=${INDICES:-/tmp/minf-indices}
site=${MINFERENCE_SITE:-/tmp/site}
src=${MINFERENCE_SRC:-}
[ -z "$src" ] && [ -f .gpu/minference-0.1.6.0.tar.gz ] && src=.gpu/minference-0.1.6.0.tar.gz
config=configs/Llama_3_8B_Instruct_262k_kv_out_v32_fit_o_best_pattern.json
layer=16
export MINF_CACHE_DIR=${MINF_CACHE_DIR:-/tmp/minf-cache}
for dir in "$bin" ${baseline:+"$baseline"}; do
  [ -x "$dir/minf" ] || { echo "gpu-bench: $dir/minf not found; build the bundle with scripts/gpu-bundle.sh" >&2; exit 2; }
done
# The Python package for peers.py's minf_python rows: the newest wheel at hand, installed before step 3.
wheel=$(ls -t .gpu/wheels/minf-*.whl "$bin"/minf-*.whl 2>/dev/null | head -1)
if [ -z "$wheel" ] && ! python3 -c "import minf" 2> /dev/null; then
  echo "gpu-bench: no minf wheel in .gpu/wheels or $bin and no minf installed: bench/peers.py will skip its" \
    "minf_python rows (scripts/gpu-bundle.sh writes the wheel into .gpu/wheels; bring that folder too)" >&2
fi
logs=$out/logs
mkdir -p "$logs" "$inputs" "$indices"
rm -f "$logs"/minf-*.log "$logs"/inputs.log "$logs"/peers.log "$logs"/compare-*.log
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$out/card.txt"

failed=0
# step NAME LOG COMMAND...: runs COMMAND with its output appended to LOG, within TIME_LIMIT.
step() {
  local name=$1 log=$2
  shift 2
  local limit=()
  if [ -n "${TIME_LIMIT:-}" ]; then
    local left=$((TIME_LIMIT - SECONDS))
    if [ "$left" -lt 30 ]; then
      echo "[$SECONDS s] $name: skipped, ${left} s of TIME_LIMIT left"
      failed=1
      return
    fi
    limit=(timeout "$left")
  fi
  ${limit[@]+"${limit[@]}"} "$@" >> "$log" 2>&1
  local rc=$?
  echo "[$SECONDS s] $name: exit $rc"
  [ "$rc" = 0 ] || failed=1
}

install_pid=
if [ ! -d "$site/minference" ] && [ -n "$src" ]; then
  arch=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1)
  echo "== building MInference from $src into $site (log $logs/minference-install.log)"
  MINFERENCE_FORCE_BUILD=TRUE TORCH_CUDA_ARCH_LIST=${arch:-9.0} MAX_JOBS=$(nproc) python3 -m pip install -q \
    --no-deps --no-build-isolation --target "$site" "$src" > "$logs/minference-install.log" 2>&1 &
  install_pid=$!
fi

echo "== step 1: inputs in $inputs"
[ -f "$inputs/128k/layer_0.safetensors" ] ||
  step "inputs 128K" "$logs/inputs.log" "$bin/search_inputs" --out "$inputs/128k" --seq 131072 --layers 1
if [ "${QUICK:-0}" != 1 ] && [ ! -f "$inputs/1m/layer_0.safetensors" ]; then
  step "inputs 1M" "$logs/inputs.log" "$bin/search_inputs" --out "$inputs/1m" --seq 1048576 --heads 4 --kv-heads 1 --layers 1
fi

read -r -a extra <<< "${MINF_ARGS:-}"  # more flags for every minf bench run
# Step 2 with the minf of bundle $1, records into $2 (saving the indices when $3 is set).
minf_steps() {
  local minf=$1/minf dir=$2 save=$3 log=$logs/minf-$(basename "$2").log
  mkdir -p "$dir"
  rm -f "$dir/minf.json" "$dir/layer.json" "$dir/chunk.json"
  local args=(bench --seqs 131072 --json "$dir/minf.json" --plot "$dir/minf.svg")
  [ -n "$save" ] && args+=(--save-indices "$indices")
  echo "== step 2: $minf -> $dir (log $log)"
  step "minf bench 128K" "$log" "$minf" "${args[@]}" ${extra[@]+"${extra[@]}"}
  step "layer $layer, 128K file" "$log" "$minf" bench --inputs "$inputs/128k/layer_0.safetensors" \
    --patterns "config:$config:$layer" --json "$dir/layer.json" ${extra[@]+"${extra[@]}"}
  [ "${QUICK:-0}" = 1 ] && return
  step "block-sparse 1M" "$log" "$minf" bench --seqs 1M --patterns block_sparse:100 --json "$dir/minf.json" --append \
    ${extra[@]+"${extra[@]}"}
  step "layer $layer, 1M file" "$log" "$minf" bench --inputs "$inputs/1m/layer_0.safetensors" \
    --patterns "config:$config:$layer" --json "$dir/layer.json" --append ${extra[@]+"${extra[@]}"}
  step "8K chunks at 128K" "$log" "$minf" bench --seqs 128K --patterns "dense,config:$config:$layer" --chunk 8K \
    --json "$dir/chunk.json" ${extra[@]+"${extra[@]}"}
  step "64K chunks at 1M" "$log" "$minf" bench --seqs 1M --patterns "dense,config:$config:$layer" --chunk 64K \
    --json "$dir/chunk.json" --append ${extra[@]+"${extra[@]}"}
}
[ -n "$baseline" ] && minf_steps "$baseline" "$out/baseline" ""
minf_steps "$bin" "$out" save

if [ -n "$install_pid" ]; then
  wait "$install_pid" || echo "gpu-bench: the MInference build failed (see $logs/minference-install.log)"
fi
[ -n "$wheel" ] && python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --no-deps \
  --force-reinstall "$wheel"
peers=(python3 bench/peers.py --site "$site")
echo "== step 3: the peers (log $logs/peers.log)"
rm -f "$out/peers.json" "$out/layer-peers.json"
step "peers 128K" "$logs/peers.log" "${peers[@]}" --indices "$indices" --json "$out/peers.json" --seqs 131072
step "MInference's layer, 128K file" "$logs/peers.log" "${peers[@]}" --methods minference_layer \
  --layer-inputs "$inputs/128k/layer_0.safetensors" --config "$config" --layer "$layer" --json "$out/layer-peers.json"
if [ "${QUICK:-0}" != 1 ]; then
  step "cuDNN 1M" "$logs/peers.log" "${peers[@]}" --seqs 1048576 --methods sdpa_cudnn --long-reps 3 \
    --json "$out/peers.json" --append
  step "MInference's layer, 1M file" "$logs/peers.log" "${peers[@]}" --methods minference_layer \
    --layer-inputs "$inputs/1m/layer_0.safetensors" --config-heads 0,8,16,24 --config "$config" --layer "$layer" \
    --json "$out/layer-peers.json" --append
fi
grep -E "skipped|failed" "$logs/peers.log" 2>/dev/null

echo "== step 4: minf bench compare"
compare() {
  local dir=$1 files=()
  for f in "$dir/minf.json" "$out/peers.json" "$dir/chunk.json" "$dir/layer.json" "$out/layer-peers.json"; do
    [ -f "$f" ] && files+=("$f")
  done
  "$bin/minf" bench compare "${files[@]}" --plot "$dir/latency.svg" --markdown "$dir/compare.md" \
    --targets "$dir/targets.json" > "$logs/compare-$(basename "$dir").log" 2>&1
  local rc=$?
  echo "$dir: compare exit $rc"
  [ "$rc" = 0 ] || { failed=1; return; }
  sed -n '/^## Targets/,/^## minf/p' "$dir/compare.md" | grep '^| [^t-]'
}
[ -n "$baseline" ] && compare "$out/baseline"
compare "$out"
echo "results: $out/compare.md $out/latency.svg${baseline:+ (baseline: $out/baseline/compare.md)}"
# Non-zero when a minf step, a peer step or a comparison failed or was skipped (a peer that
# peers.py could not run is only reported).
exit "$failed"

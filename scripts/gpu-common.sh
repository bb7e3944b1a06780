# Shared by the device scripts (source it from the repository root on the GPU machine).
export MINF_CACHE_DIR=${MINF_CACHE_DIR:-/tmp/minf-cache}

# Builds MInference into /tmp/site in the background (CPU work while the GPU runs minf); `wait`
# before timing it. $1: the install log.
start_minference_install() {
  [ -d /tmp/site/minference ] || { bash .gpu/install_minference.sh > "${1:-/tmp/install.log}" 2>&1 & }
}

# Runs a command (vs_bench, with a time limit of ${VS_LIMIT:-120} s) and keeps its result and error lines.
vs() { timeout "${VS_LIMIT:-120}" "$@" 2>&1 | grep -E "^minf vertical-slash|rror|panick" | sed 's/, NVIDIA.*//'; }

# MInference's Triton vertical-slash kernel on its own converted index of issue 3's kind (writes /tmp/vs).
minference_vs() { PYTHONPATH=/tmp/site timeout 150 python3 bench/minference_vs.py --out /tmp/vs 2>&1 | tail -1; }

#!/usr/bin/env bash
# Usage: scripts/ab-build.sh LABEL=REV [LABEL=REV...]
#
# Builds the `minf` binary of each git revision (a commit, branch or tag; `.` for the working
# tree as it is) into .gpu/ab/LABEL/minf, stripped, for scripts/gpu-ab.sh to time against each
# other on the GPU machine (carry .gpu/ab). Each revision builds in a worktree and target folder
# of its own under target/ab/LABEL: the kernels' templates are embedded at build time, and one
# target folder shared by several checkouts can keep a binary built from another's templates.
# TESTS=1 also builds each revision's GPU test binary into .gpu/ab/LABEL/gpu, for
# `BIN=.gpu/ab/LABEL/gpu scripts/gpu-suite.sh` and scripts/gpu-sanitize.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 1 ] || { sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
root=$(pwd)
for build in "$@"; do
  label=${build%%=*}
  rev=${build#*=}
  [ "$label" != "$build" ] && [ -n "$label" ] || { echo "ab-build: expected LABEL=REV, got '$build'" >&2; exit 2; }
  mkdir -p ".gpu/ab/$label"
  if [ "$rev" = . ]; then
    src=$root
  else
    src=$root/target/ab/$label/src
    commit=$(git rev-parse --verify "$rev^{commit}")
    if [ -d "$src" ]; then
      git -C "$src" checkout --quiet --detach "$commit"
    else
      git worktree add --quiet --detach "$src" "$commit"
    fi
  fi
  echo "ab-build: $label = $rev ($(git -C "$src" rev-parse --short HEAD))"
  CARGO_TARGET_DIR=$root/target/ab/$label/target cargo build --quiet --release --bin minf --manifest-path "$src/Cargo.toml"
  cp "$root/target/ab/$label/target/release/minf" ".gpu/ab/$label/minf"
  strip ".gpu/ab/$label/minf"
  if [ "${TESTS:-0}" = 1 ]; then
    tests=$(CARGO_TARGET_DIR=$root/target/ab/$label/target cargo test --release --test gpu --no-run \
      --manifest-path "$src/Cargo.toml" --message-format=json 2>/dev/null | scripts/cargo-executable.py gpu)
    cp "$tests" ".gpu/ab/$label/gpu"
    strip ".gpu/ab/$label/gpu"
  fi
  git -C "$src" rev-parse HEAD > ".gpu/ab/$label/commit"
done
du -sh .gpu/ab

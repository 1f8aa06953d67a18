#!/usr/bin/env bash
# How long the tests take to build from clean and to run, per git revision: one table
# row each, to compare layouts of the tests (one binary against one per file).
#
#   scripts/measure-test-build.sh [--build-only] REV...
#
# For each REV: a throwaway worktree (detached) and an empty CARGO_TARGET_DIR, then
# `cargo test --no-run` timed (the clean test build), then `cargo test` timed (the run,
# with nothing left to build). Both are removed afterwards. Rows print as each revision
# finishes; progress and cargo's output go to stderr.
#
#   --build-only   skip the test run (its column says "-")
#
# Environment:
#   NICE    niceness of the cargo commands (default 10: the machine is shared)
#   CARGO   the cargo to run (default cargo)
#
# "test binaries" counts what `cargo test --no-run` built, the lib's and main's unit
# test binaries included.
#
# Run it on an otherwise quiet machine, revisions back to back: the figures are only
# comparable with each other. Helm and ../shared/ are set up as .ci/run does, so the run
# column covers the same tests as CI.
set -euo pipefail

build_only=false
revs=()
for arg in "$@"; do
  case "$arg" in
    --build-only) build_only=true ;;
    -h | --help)
      sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
      exit 0
      ;;
    -*) echo "unknown flag $arg (see --help)" >&2; exit 2 ;;
    *) revs+=("$arg") ;;
  esac
done
if [ ${#revs[@]} -eq 0 ]; then
  echo "usage: $0 [--build-only] REV..." >&2
  exit 2
fi

repo=$(git -C "$(dirname "$0")/.." rev-parse --show-toplevel)
cargo=${CARGO:-cargo}
nice_level=${NICE:-10}

# Helm for the helm tests, as .ci/run exports it (they say SKIPPED without it).
if [ "$build_only" = false ] && helm_env=$("$repo/scripts/install-helm.sh" 2>/dev/null); then
  eval "$helm_env"
  export CALICO_MIGRATE_HELM3 CALICO_MIGRATE_HELM4
fi

# Each revision's worktree and target dir live under one temp dir, removed on exit.
scratch=$(mktemp -d)
worktrees=()
cleanup() {
  for wt in "${worktrees[@]}"; do
    git -C "$repo" worktree remove --force "$wt" >/dev/null 2>&1 || true
  done
  rm -rf "$scratch"
}
trap cleanup EXIT

# Seconds since the epoch, with fractions.
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }

# Every revision resolved before anything is built.
commits=()
for rev in "${revs[@]}"; do
  commits+=("$(git -C "$repo" rev-parse --verify --quiet "$rev^{commit}")") || {
    echo "$rev: not a revision" >&2
    exit 2
  }
done

echo "| rev | commit | test binaries | clean test build (s) | test run (s) |"
echo "|---|---|---|---|---|"
for i in "${!revs[@]}"; do
  rev=${revs[$i]}
  commit=${commits[$i]}
  slot="$scratch/$(echo "$commit" | cut -c1-12)"
  mkdir -p "$slot"
  wt="$slot/repo"
  git -C "$repo" worktree add --detach --quiet "$wt" "$commit"
  worktrees+=("$wt")
  # Some tests read ../shared/real/ beside the checkout.
  if [ -d "$repo/../shared" ]; then
    ln -s "$(cd "$repo/../shared" && pwd)" "$slot/shared"
  fi
  export CARGO_TARGET_DIR="$slot/target"

  echo "$rev: clean test build in $wt" >&2
  start=$(now)
  (cd "$wt" && nice -n "$nice_level" "$cargo" test --no-run) 2>"$slot/build.log" || {
    cat "$slot/build.log" >&2
    echo "$rev: the test build failed" >&2
    exit 1
  }
  build=$(elapsed "$start" "$(now)")
  binaries=$(grep -c '^ *Executable ' "$slot/build.log" || true)

  run="-"
  if [ "$build_only" = false ]; then
    echo "$rev: test run" >&2
    start=$(now)
    status=0
    (cd "$wt" && nice -n "$nice_level" "$cargo" test) >&2 || status=$?
    run=$(elapsed "$start" "$(now)")
    [ "$status" -eq 0 ] || run="$run (failed, exit $status)"
  fi
  echo "| $rev | $(echo "$commit" | cut -c1-9) | $binaries | $build | $run |"
  git -C "$repo" worktree remove --force "$wt"
  rm -rf "$slot"
done

#!/usr/bin/env bash
# Reliability campaigns against the embedded sandbox (loopback only), each bounded in
# count and time, each ending with a line `N passed, N failed`. docs/reliability.md
# has the figures of a run and what each trial asserts.
#
#   scripts/campaign.sh kill [TRIALS]        SIGKILL at random moments of apply and rollback (default 200)
#   scripts/campaign.sh api [TRIALS]         API faults: 5% and 20% errors, dropped watches, conflicts, latency
#   scripts/campaign.sh combined [TRIALS]    API faults and node faults together, with a lapse caught
#   scripts/campaign.sh statedirs            corrupt, truncated, foreign, locked state dirs; two applies at once
#   scripts/campaign.sh all                  everything above at its default size
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --quiet --all-targets
bin=target/release/calico-migrate

kill_campaign() {
  local trials=${1:-200}
  # The seeded SIGKILL campaign of tests/apply.rs, at full size.
  CALICO_MIGRATE_CRASH_TRIALS=$trials cargo test --release --quiet --test integration \
    apply::sigkill_campaign -- --nocapture 2>&1 | grep -E 'passed, [0-9]+ failed' | tail -1
}

# One rehearsal per spec list; a trial passes when rehearse exits 0 (the whole job:
# apply, verification, rollback to the baseline object by object, second apply, and
# no divergence in the sandbox's enforcement monitor that was not injected on purpose).
rehearse_trials() {
  local trials=$1; shift
  local passed=0 failed=0 i spec
  for ((i = 0; i < trials; i++)); do
    for spec in "$@"; do
      # shellcheck disable=SC2086
      if timeout 600 "$bin" rehearse --nodes 6 --seed "$((i + 1))" $spec -q -o json \
           > "/tmp/campaign-$$.json" 2> "/tmp/campaign-$$.err"; then
        passed=$((passed + 1))
      else
        failed=$((failed + 1))
        echo "FAILED: rehearse --seed $((i + 1)) $spec: $(tail -c 600 /tmp/campaign-$$.err)" >&2
      fi
    done
  done
  rm -f "/tmp/campaign-$$.json" "/tmp/campaign-$$.err"
  echo "$passed passed, $failed failed"
}

api_campaign() {
  rehearse_trials "${1:-5}" \
    "--fault api-errors:0.05" \
    "--fault api-errors:0.2" \
    "--fault drop-watch:0.5" \
    "--fault conflicts:0.2" \
    "--fault latency:50"
}

combined_campaign() {
  rehearse_trials "${1:-5}" \
    "--fault api-errors:0.05 --fault lapse:@2" \
    "--fault conflicts:0.1 --fault operator-stall:@3" \
    "--fault api-errors:0.05 --fault agent-not-ready:@4" \
    "--fault drop-watch:0.3 --fault typha-stuck"
}

statedirs_campaign() {
  # The engine's bad-state-dir tests (corrupt, truncated, foreign, locked, read-only,
  # unknown --to) and apply's refusals (another holder's Lease, drift, a second apply
  # on the same state dir) through the real binary. The names below match only tests
  # of the engine and apply modules.
  local out
  out=$(cargo test --release --test integration -- \
          corrupt another_cluster unknown_rollback second_process read_only missing_state_dir \
          refusals unknown_pause 2>&1 | grep '^test result' || true)
  local p f
  p=$(echo "$out" | awk '{s += $4} END {print s + 0}')
  f=$(echo "$out" | awk '{s += $6} END {print s + 0}')
  echo "$p passed, $f failed"
}

case "${1:-all}" in
  kill) kill_campaign "${2:-}" ;;
  api) api_campaign "${2:-}" ;;
  combined) combined_campaign "${2:-}" ;;
  statedirs) statedirs_campaign ;;
  all)
    echo "kill:      $(kill_campaign)"
    echo "api:       $(api_campaign)"
    echo "combined:  $(combined_campaign)"
    echo "statedirs: $(statedirs_campaign)"
    ;;
  *) echo "usage: $0 kill|api|combined|statedirs|all [TRIALS]" >&2; exit 2 ;;
esac

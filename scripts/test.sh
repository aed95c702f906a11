#!/usr/bin/env bash
# npm test: installs (or names) the system tools the tests drive, compiles, runs every test with
# tap on the compiled JavaScript, and ends with one line "N passed, N failed".
set -uo pipefail
cd "$(dirname "$0")/.."

if ! bash scripts/ensure-system-tools.sh; then
  echo "0 passed, 1 failed"
  exit 1
fi
if ! npx tsc -p .; then
  echo "TypeScript compilation failed"
  echo "0 passed, 1 failed"
  exit 1
fi

log=$(mktemp)
trap 'rm -f "$log"' EXIT
CI=true npx tap -R tap "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}

summary=$(grep -E '^# \{ total: [0-9]+' "$log" | tail -n 1)
pass=$(sed -nE 's/.*pass: ([0-9]+).*/\1/p' <<<"$summary")
fail=$(sed -nE 's/.*fail: ([0-9]+).*/\1/p' <<<"$summary")
if [ -z "$summary" ]; then
  echo "tap printed no summary (exit status $status)"
  echo "0 passed, 1 failed"
  exit 1
fi
echo "${pass:-0} passed, ${fail:-0} failed"
[ "$status" -eq 0 ] && [ "${fail:-0}" -eq 0 ]

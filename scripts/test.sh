#!/usr/bin/env bash
# Runs every test: the Swift package (unit, integration on the sample photos, process-level) and
# the Python trainer package. Needs scripts/setup.sh to have run once (models, samples, .venv).
set -euo pipefail
cd "$(dirname "$0")/.."
export PIDIFF_CACHE="${PIDIFF_CACHE:-$HOME/.cache/pidiff-data}"

echo "== swift tests"
swift build 2>&1 | tail -n 1   # the CLI the process-level tests drive
LOG="${TMPDIR:-/tmp}/pidiff-swift-test.log"
# Full log in $LOG; the summary lines here. pipefail makes a failing `swift test` fail the script.
swift test 2>&1 | tee "$LOG" | { grep -E "error:|failed \(|Executed [0-9]+ tests?, with|PSNR" || true; }

echo "== python tests"
.venv/bin/python -m pytest -q Trainer/tests

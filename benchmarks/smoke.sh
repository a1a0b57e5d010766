#!/usr/bin/env bash
# One point per benchmark, in the current environment, results not saved: the suite must not rot.
set -euo pipefail
cd "$(dirname "$0")/.."
asv machine --yes >/dev/null
NUMGRU_ASV_SMOKE=1 asv run --python=same --quick --dry-run --show-stderr 2>&1 | tee /tmp/asv-smoke.log
if grep -qE "failed|Traceback" /tmp/asv-smoke.log; then
    echo "asv smoke run: a benchmark failed" >&2
    exit 1
fi

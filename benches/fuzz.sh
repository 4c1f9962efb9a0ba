#!/usr/bin/env bash
# The longer fuzz run: every target of fuzz/ for SECONDS each (default 600), continuing the corpus
# kept under ~/.cache/vendflow/fuzz (the test command runs them for 15 s each: see fuzz/README.md).
#
#   benches/fuzz.sh [SECONDS] [TARGET...]
set -euo pipefail
exec "$(dirname "$0")/../fuzz/run.sh" "${1:-600}" "${@:2}"

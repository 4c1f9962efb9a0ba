#!/usr/bin/env bash
# The whole test suite, from a clean clone: installs what the tests need, builds, runs every test.
#
# - tests/install.sh: Python with the pinned packages of tests/requirements.txt (a venv under
#   ~/.cache/vendflow: duckdb and pyarrow for the DuckDB cross-checks, openapi-spec-validator,
#   psycopg), Mosquitto, curl, openssl, psql, Debian's Chromium, tansu (a Kafka-protocol broker,
#   pinned; cargo install, cached in ~/.cargo/bin: only a fresh machine pays its ~10-minute build)
#   and playwright-core (tests/browser); under CI=true it first dry-runs every install step;
# - the dashboard's own build (queries/web: its committed dist/ is what the binary embeds);
# - the vendflow binary (the end-to-end tests run the real thing);
# - then every crate's tests with cargo-nextest (or cargo test where nextest is missing), and the
#   controller's no_std core checked for a bare-metal target;
# - then every fuzz target for 15 s (fuzz/run.sh, nightly cargo-fuzz, no sanitizer).
#
# CARGO_TARGET_DIR defaults to ~/.cache/vendflow/target so repeated runs reuse compiled dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/vendflow/target}"
# Incremental caches only pay off while editing; on CI they double the target dir's size.
if [ "${CI:-}" = true ]; then
  export CARGO_INCREMENTAL=0
  rm -rf "$CARGO_TARGET_DIR/debug/incremental"
fi
# A full disk makes rustc fail halfway with an LLVM I/O error: say so plainly up front.
mkdir -p "$CARGO_TARGET_DIR"
free_gib=$(( $(df -Pk "$CARGO_TARGET_DIR" | awk 'NR==2 {print $4}') / 1024 / 1024 ))
if [ "$free_gib" -lt 8 ]; then
  echo "== only ${free_gib} GiB free under $CARGO_TARGET_DIR; a cold build and test run needs about 15 GiB" >&2
fi
# Everything the tests need, each tool installed alone and only when missing; under CI=true every
# install step is first dry-run, so a step that would fail on a fresh machine fails here too.
./tests/install.sh
echo "== installed in ${SECONDS}s"
# This script installs every tool the tests use, so under it a missing tool fails a test, never
# skips it (tests/support.rs: tools_required).
export VENDFLOW_TOOLS_REQUIRED=1
export VENDFLOW_PYTHON="${VENDFLOW_VENV:-$HOME/.cache/vendflow/venv}/bin/python"

# The binary embeds queries/web/dist as committed; rebuild it from the sources and say so if the
# commit forgot to.
echo "== building the dashboard (queries/web)"
(cd queries/web && npm ci --no-audit --no-fund --loglevel=error && npm run --silent build >/dev/null)
if ! git diff --quiet -- queries/web/dist 2>/dev/null; then
  echo "== WARNING: queries/web/dist differs from its sources' build: commit the rebuilt dist/" >&2
fi

echo "== building"
cargo build --workspace --bins --tests --locked
echo "== built in ${SECONDS}s (since the start)"

export VENDFLOW_ARTIFACTS="${VENDFLOW_ARTIFACTS:-$PWD/artifacts}"
echo "== testing (the dashboard test keeps its screenshots in $VENDFLOW_ARTIFACTS/dashboard)"
tests_ok=true
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast || tests_ok=false
else
  cargo test --workspace --locked --no-fail-fast --exclude vendflow-tests || tests_ok=false
  # The end-to-end tests one at a time, as .config/nextest.toml runs the real-broker ones.
  cargo test -p vendflow-tests --locked --no-fail-fast -- --test-threads=1 || tests_ok=false
fi
echo "== tested in ${SECONDS}s (since the start)"

# The controller's core must build without std for the machine's own hardware.
echo "== checking firmware/controller for riscv32imc-unknown-none-elf (no_std)"
cargo check --locked -p vendflow-controller --lib --no-default-features \
  --target riscv32imc-unknown-none-elf || tests_ok=false

# Every fuzz target briefly (its kept crashing inputs, then 15 s of fuzzing), without the
# address sanitizer: the targets are safe Rust and look for panics, and the build is a fraction
# of a sanitizer build. benches/fuzz.sh runs them for minutes each with the sanitizer.
fuzz_ok=true
VENDFLOW_FUZZ_SANITIZER=none ./fuzz/run.sh 15 || fuzz_ok=false
echo "== fuzzed in ${SECONDS}s (since the start)"
$tests_ok || { echo "== FAILED: tests (see above)" >&2; exit 1; }
$fuzz_ok || { echo "== FAILED: fuzzing (see above)" >&2; exit 1; }

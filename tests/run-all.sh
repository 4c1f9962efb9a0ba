#!/usr/bin/env bash
# The whole test suite, from a clean clone: installs what the tests need, builds, runs every test.
#
# - Python with duckdb and pyarrow (a venv under ~/.cache/vendflow) for the DuckDB cross-checks;
# - Mosquitto, curl, openssl and psql (Debian's postgresql-client), and tansu, a Kafka-protocol broker (cargo install, cached in ~/.cargo/bin:
#   only a fresh machine pays its ~10-minute build), for the broker tests;
# - the vendflow binary (the end-to-end tests run the real thing);
# - then every crate's tests with cargo-nextest (or cargo test where nextest is missing).
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
venv="${VENDFLOW_VENV:-$HOME/.cache/vendflow/venv}"
if ! "$venv/bin/python" -c 'import duckdb, pyarrow' 2>/dev/null; then
  echo "== installing duckdb and pyarrow into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check duckdb pyarrow
fi
export VENDFLOW_PYTHON="$venv/bin/python"

if ! command -v mosquitto >/dev/null || ! command -v mosquitto_pub >/dev/null \
  || ! command -v curl >/dev/null || ! command -v openssl >/dev/null || ! command -v psql >/dev/null; then
  echo "== installing mosquitto, curl, openssl, postgresql-client (psql)"
  sudo_=""; [ "$(id -u)" = 0 ] || sudo_="sudo"
  $sudo_ apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq mosquitto mosquitto-clients curl openssl postgresql-client >/dev/null
fi
# The broker tests start their own mosquitto on a free port; the packaged service is not needed.
if ! command -v tansu >/dev/null && [ ! -x "$HOME/.cargo/bin/tansu" ]; then
  echo "== installing tansu (Kafka-protocol broker; about 10 minutes, once per machine)"
  cargo install --locked tansu --features dynostore
fi

echo "== building"
cargo build --workspace --bins --tests --locked

echo "== testing"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
else
  cargo test --workspace --locked --no-fail-fast
fi

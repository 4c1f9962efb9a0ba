#!/usr/bin/env bash
# The whole test suite, from a clean clone: installs what the tests need, builds, runs every test.
#
# - Python with duckdb and pyarrow (a venv under ~/.cache/vendflow) for the DuckDB cross-checks,
#   openapi-spec-validator for the API's OpenAPI document, psycopg for the Postgres endpoint's extended protocol;
# - Mosquitto, curl, openssl and psql (Debian's postgresql-client), and tansu, a Kafka-protocol broker (cargo install, cached in ~/.cargo/bin:
#   only a fresh machine pays its ~10-minute build), for the broker tests;
# - Debian's Chromium and, from npm, playwright-core (tests/browser) for the dashboard's browser
#   test, and the dashboard's own build (queries/web: its committed dist/ is what the binary embeds);
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
if ! "$venv/bin/python" -c 'import duckdb, pyarrow, openapi_spec_validator, psycopg' 2>/dev/null; then
  echo "== installing duckdb, pyarrow, openapi-spec-validator and psycopg into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check duckdb pyarrow openapi-spec-validator "psycopg[binary]"
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

if ! command -v chromium >/dev/null || ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "== installing chromium, nodejs and npm (the dashboard's browser test)"
  sudo_=""; [ "$(id -u)" = 0 ] || sudo_="sudo"
  $sudo_ apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq chromium nodejs npm >/dev/null
fi
echo "== npm ci: tests/browser (playwright-core drives Debian's chromium; no browser download)"
(cd tests/browser && npm ci --no-audit --no-fund --loglevel=error)
# The binary embeds queries/web/dist as committed; rebuild it from the sources and say so if the
# commit forgot to.
echo "== building the dashboard (queries/web)"
# (`npm install --no-save`, not `npm ci`: a lockfile written where registry addresses are omitted
# lacks rollup's optional per-platform packages, which `npm ci` then calls out of sync.)
(cd queries/web && npm install --no-audit --no-fund --no-save --loglevel=error && npm run --silent build >/dev/null)
if ! git diff --quiet -- queries/web/dist 2>/dev/null; then
  echo "== WARNING: queries/web/dist differs from its sources' build: commit the rebuilt dist/" >&2
fi

echo "== building"
cargo build --workspace --bins --tests --locked

export VENDFLOW_ARTIFACTS="${VENDFLOW_ARTIFACTS:-$PWD/artifacts}"
echo "== testing (the dashboard test keeps its screenshots in $VENDFLOW_ARTIFACTS/dashboard)"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
else
  cargo test --workspace --locked --no-fail-fast
fi

#!/usr/bin/env bash
# Installs what the test suite needs, each tool on its own and only when it is missing, and checks
# that every install step this script may take would succeed on a fresh machine.
#
#   tests/install.sh            install what is missing (run-all.sh calls this)
#   tests/install.sh --check    dry-run every install step, install nothing; exit 1 on any failure
#
# Why the check exists: a machine keeps what was installed on it by hand, so a green CI run can hide
# an install step that would fail on a fresh machine. (It did: `apt-get install chromium nodejs npm`
# is refused where Node.js comes from NodeSource, which bundles npm and declares `Conflicts: npm`;
# CI stayed green only because Chromium had been installed by hand.) So under CI=true, and with
# --check, every apt line below is run as `apt-get install -s` (a dry run), the pinned Python
# packages as `pip install --dry-run`, the npm lockfiles as `npm ci --dry-run`, and tansu's pinned
# version is looked up in the registry, whether or not the tool is already there.
#
# What is pinned (a new release cannot change the suite unannounced): the Python packages in
# tests/requirements.txt, tansu's version and features below, and the npm packages by their
# package-lock.json files (tests/browser, queries/web).
set -euo pipefail
cd "$(dirname "$0")/.."

TANSU_VERSION=0.6.0
TANSU_FEATURES=dynostore,libsql
# The fuzz targets (fuzz/, run briefly by run-all.sh) build with cargo-fuzz on the nightly
# toolchain that the machine image carries (rustup cannot fetch another one here).
CARGO_FUZZ_VERSION=0.13.2
# The controller's core (firmware/controller) is checked for a bare-metal ESP32-C3-class target
# (no_std): rustup adds the target's standard library (about 20 MB, once per machine).
BARE_METAL_TARGET=riscv32imc-unknown-none-elf
# vite 7 and playwright-core 1.65 need at least this Node.js.
NODE_MIN=20.19.0

# One apt line per tool: "command-that-proves-it-is-there|debian packages". Each line is installed
# alone, so one package's conflict cannot block the others, and each is dry-run by --check.
apt_lines=(
  "mosquitto|mosquitto"
  "mosquitto_pub|mosquitto-clients"
  "mosquitto_sub|mosquitto-clients"
  "curl|curl"
  "openssl|openssl"
  "psql|postgresql-client"
  "chromium|chromium"
)
# Node.js: only ever installed where there is none. A Node.js that is already there (the machine
# image's comes from NodeSource and bundles npm) is never replaced, and npm is never asked of apt
# beside it.
if ! command -v node >/dev/null; then
  apt_lines+=("node|nodejs npm")
fi

sudo_=""
[ "$(id -u)" = 0 ] || sudo_="sudo"
apt_updated=false
apt_update() {
  if [ "$apt_updated" = false ]; then
    $sudo_ apt-get update -qq
    apt_updated=true
  fi
}

venv="${VENDFLOW_VENV:-$HOME/.cache/vendflow/venv}"
requirements=tests/requirements.txt
npm_dirs=(tests/browser queries/web)

fail() {
  echo "install: $*" >&2
  exit 1
}

version_at_least() { # have want
  [ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n1)" = "$2" ]
}

# --check: every step dry-run, whether or not its tool is present.
check() {
  local bad=0 line cmd pkgs out
  apt_update
  for line in "${apt_lines[@]}"; do
    cmd=${line%%|*}
    pkgs=${line#*|}
    # shellcheck disable=SC2086
    if out=$(DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -s $pkgs 2>&1); then
      echo "check: apt-get install $pkgs (for $cmd): ok"
    else
      echo "check: apt-get install $pkgs (for $cmd) would FAIL on a fresh machine:" >&2
      echo "$out" | tail -n 5 | sed 's/^/    /' >&2
      bad=1
    fi
  done
  local py=python3
  [ -x "$venv/bin/python" ] && py="$venv/bin/python"
  if out=$("$py" -m pip install --disable-pip-version-check --dry-run --quiet -r "$requirements" 2>&1); then
    echo "check: pip install -r $requirements: ok"
  else
    echo "check: pip install -r $requirements would FAIL:" >&2
    echo "$out" | tail -n 5 | sed 's/^/    /' >&2
    bad=1
  fi
  local dir
  for dir in "${npm_dirs[@]}"; do
    if out=$(cd "$dir" && npm ci --dry-run --no-audit --no-fund --loglevel=error 2>&1); then
      echo "check: npm ci in $dir: ok"
    else
      echo "check: npm ci in $dir would FAIL:" >&2
      echo "$out" | tail -n 5 | sed 's/^/    /' >&2
      bad=1
    fi
  done
  # cargo has no dry run for `install`; resolving the pinned version and its feature in the
  # registry is what can break between machines.
  local feature missing=""
  if out=$(cargo info "tansu@$TANSU_VERSION" 2>&1); then
    for feature in ${TANSU_FEATURES//,/ }; do
      echo "$out" | grep -q "^ *$feature " || missing="$missing $feature"
    done
  else
    missing=" (the version itself)"
  fi
  if [ -z "$missing" ]; then
    echo "check: tansu $TANSU_VERSION with features $TANSU_FEATURES is in the registry: ok"
  else
    echo "check: tansu $TANSU_VERSION cannot be resolved with:$missing" >&2
    echo "$out" | tail -n 5 | sed 's/^/    /' >&2
    bad=1
  fi
  if out=$(cargo info "cargo-fuzz@$CARGO_FUZZ_VERSION" 2>&1); then
    echo "check: cargo-fuzz $CARGO_FUZZ_VERSION is in the registry: ok"
  else
    echo "check: cargo-fuzz $CARGO_FUZZ_VERSION cannot be resolved:" >&2
    echo "$out" | tail -n 5 | sed 's/^/    /' >&2
    bad=1
  fi
  if out=$(cargo +nightly --version 2>&1); then
    echo "check: the nightly toolchain (for cargo fuzz): $out: ok"
  else
    echo "check: no nightly toolchain, which cargo fuzz needs:" >&2
    echo "$out" | tail -n 3 | sed 's/^/    /' >&2
    bad=1
  fi
  if out=$(rustup target list 2>&1) && echo "$out" | grep -q "^$BARE_METAL_TARGET"; then
    echo "check: rustup knows the target $BARE_METAL_TARGET: ok"
  else
    echo "check: rustup cannot add the target $BARE_METAL_TARGET:" >&2
    echo "$out" | tail -n 3 | sed 's/^/    /' >&2
    bad=1
  fi
  [ "$bad" = 0 ] || fail "an install step would fail on a fresh machine (see above)"
}

install_missing() {
  local line cmd pkgs
  for line in "${apt_lines[@]}"; do
    cmd=${line%%|*}
    pkgs=${line#*|}
    if ! command -v "$cmd" >/dev/null; then
      echo "== installing $pkgs (for $cmd)"
      apt_update
      # shellcheck disable=SC2086
      DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq $pkgs >/dev/null \
        || fail "apt-get install $pkgs failed; run it by hand to see why"
      command -v "$cmd" >/dev/null || fail "$pkgs installed, but there is still no $cmd on PATH"
    fi
  done

  command -v npm >/dev/null || fail "node is installed but npm is not: install npm with the same package source as node (NodeSource's nodejs bundles it; Debian's needs the npm package)"
  local node_version
  node_version=$(node --version | sed 's/^v//')
  version_at_least "$node_version" "$NODE_MIN" \
    || fail "Node.js $node_version is older than $NODE_MIN, which vite and playwright-core need; install a newer Node.js (this script never replaces one that is there)"

  # Python: a venv holding exactly the pinned versions; a stamp of the requirements file tells
  # whether it is current.
  local stamp="$venv/.requirements.sha256" want
  want=$(sha256sum "$requirements" | cut -d' ' -f1)
  if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "== installing the pinned Python packages ($requirements) into $venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$requirements"
    echo "$want" >"$stamp"
  fi

  # tansu --version does not say which storage engines were compiled in, so the install leaves a
  # stamp of its version and features; a tansu without the stamp's features is installed again.
  local have="" tansu_stamp="$HOME/.cache/vendflow/tansu.installed"
  if command -v tansu >/dev/null && [ -f "$tansu_stamp" ]; then have=$(cat "$tansu_stamp"); fi
  if [ "$have" != "$TANSU_VERSION $TANSU_FEATURES" ]; then
    echo "== installing tansu $TANSU_VERSION with $TANSU_FEATURES (Kafka-protocol broker; memory and sqlite storage; about 12 minutes, once per machine)"
    cargo install --locked --force "tansu@$TANSU_VERSION" --features "$TANSU_FEATURES"
    mkdir -p "$(dirname "$tansu_stamp")"
    echo "$TANSU_VERSION $TANSU_FEATURES" >"$tansu_stamp"
  fi

  cargo +nightly --version >/dev/null 2>&1 \
    || fail "no nightly toolchain: cargo fuzz needs one (rustup toolchain install nightly)"
  if [ "$(cargo fuzz --version 2>/dev/null)" != "cargo-fuzz $CARGO_FUZZ_VERSION" ]; then
    echo "== installing cargo-fuzz $CARGO_FUZZ_VERSION (about 2 minutes, once per machine)"
    cargo install --locked --force "cargo-fuzz@$CARGO_FUZZ_VERSION"
  fi

  if ! rustup target list --installed | grep -qx "$BARE_METAL_TARGET"; then
    echo "== adding the Rust target $BARE_METAL_TARGET (the controller's core is checked for it)"
    rustup target add "$BARE_METAL_TARGET" || fail "rustup target add $BARE_METAL_TARGET failed"
  fi

  echo "== npm ci: tests/browser (playwright-core drives Debian's chromium; no browser download)"
  (cd tests/browser && npm ci --no-audit --no-fund --loglevel=error)
}

case "${1:-}" in
  --check) check ;;
  "")
    [ "${CI:-}" = true ] && check
    install_missing
    ;;
  -h | --help) sed -n '2,19p' "$0" ;;
  *) fail "unknown argument $1 (see --help)" ;;
esac

#!/usr/bin/env bash
# Runs every fuzz target: first over its kept crashing inputs (regressions/TARGET, each must now
# pass), then for SECONDS of fuzzing from its seeds and its corpus. A crash fails the run and
# leaves the input in fuzz/artifacts/TARGET/: fix the code, then move the input to
# regressions/TARGET/ so it is checked on every run.
#
#   fuzz/run.sh [SECONDS] [TARGET...]     default 15 s per target, every target
#
# VENDFLOW_FUZZ_SANITIZER: address (the default; what benches/fuzz.sh runs for minutes per
# target) or none (what tests/run-all.sh runs for 15 s per target: the targets are safe Rust, a
# panic is what they look for, and a build without the sanitizer takes a fraction of the time).
# Needs the nightly toolchain and cargo-fuzz 0.13.2 (tests/install.sh). The build and the
# growing corpus are kept under ~/.cache/vendflow (VENDFLOW_FUZZ_CACHE), outside the clone.
set -euo pipefail
cd "$(dirname "$0")"
seconds="${1:-15}"
shift || true
cache="${VENDFLOW_FUZZ_CACHE:-$HOME/.cache/vendflow/fuzz}"
sanitizer="${VENDFLOW_FUZZ_SANITIZER:-address}"
export CARGO_TARGET_DIR="$cache/target-$sanitizer"
# Incremental caches are of no use to a sanitizer build and double its size.
export CARGO_INCREMENTAL=0
targets=("$@")
if [ "${#targets[@]}" = 0 ]; then
  mapfile -t targets < <(cargo +nightly fuzz list)
fi
echo "== fuzz: building ${#targets[@]} targets (nightly, sanitizer: $sanitizer)"
cargo +nightly fuzz build --release -s "$sanitizer"
for t in "${targets[@]}"; do
  corpus="$cache/corpus/$t"
  mkdir -p "$corpus" "seeds/$t" "regressions/$t"
  if [ -n "$(ls -A "regressions/$t")" ]; then
    echo "== fuzz $t: the kept crashing inputs"
    cargo +nightly fuzz run --release -s "$sanitizer" "$t" "regressions/$t" -- -runs=0 >/dev/null 2>"$cache/$t.log" \
      || { grep -A3 "panicked at" "$cache/$t.log" | head -n 20 >&2; tail -n 40 "$cache/$t.log" >&2; echo "fuzz $t: a kept crashing input fails again" >&2; exit 1; }
  fi
  echo "== fuzz $t: ${seconds}s"
  if ! cargo +nightly fuzz run --release -s "$sanitizer" "$t" "$corpus" "seeds/$t" -- \
      -max_total_time="$seconds" -timeout=10 -rss_limit_mb=4096 -print_final_stats=1 \
      >"$cache/$t.log" 2>&1; then
    # The panic message comes long before libFuzzer's summary: show it first.
    grep -A3 "panicked at" "$cache/$t.log" | head -n 20 >&2 || true
    tail -n 40 "$cache/$t.log" >&2
    echo "fuzz $t: FAILED; the input is in fuzz/artifacts/$t/" >&2
    exit 1
  fi
  grep -E "^stat::number_of_executed_units|^stat::peak_rss_mb" "$cache/$t.log" | tr '\n' ' ' | sed "s/^/   /"
  echo
done
echo "== fuzz: ${#targets[@]} targets, no crash"

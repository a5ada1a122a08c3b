#!/usr/bin/env bash
# Fuzzes the dtab parsers for a bounded time.
#
#   fuzz/run.sh [SECONDS] [LIBFUZZER_ARG…]      (SECONDS defaults to 60)
#
# Installs cargo-fuzz if it is missing, copies the committed seeds
# (fuzz/seeds/parse) into the working corpus (fuzz/corpus/parse, not
# committed), then runs the `parse` target under AddressSanitizer until
# SECONDS have passed. Exits non-zero when libFuzzer finds a crash, leak,
# timeout or out-of-memory; the input is then in fuzz/artifacts/parse/ and
# `cargo fuzz run parse fuzz/artifacts/parse/<file>` replays it.
#
# The toolchain is stable: RUSTC_BOOTSTRAP=1 lets it take the -Z flags
# cargo-fuzz passes. FUZZ_SANITIZER=none builds without ASan (faster, and a
# way out should the sanitizer runtime be unavailable).
set -euo pipefail

seconds="${1:-60}"
shift $(( $# > 0 ? 1 : 0 ))
case "$seconds" in
  '' | *[!0-9]*) echo "usage: $0 [SECONDS] [LIBFUZZER_ARG...]" >&2; exit 2 ;;
esac

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"

if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi

mkdir -p corpus/parse
cp seeds/parse/* corpus/parse/

# The fuzz build has flags of its own: keep it in fuzz/target, away from a
# shared target directory.
unset CARGO_TARGET_DIR
export RUSTC_BOOTSTRAP=1

exec cargo fuzz run --sanitizer "${FUZZ_SANITIZER:-address}" parse corpus/parse -- \
  -max_total_time="$seconds" \
  -timeout=10 \
  -dict="$here/dtab.dict" \
  "$@"

#!/usr/bin/env bash
# `make bench`: everything the benchmarks need (bench/deps-apt.txt's Debian
# packages and deps/python.txt's venv, through scripts/deps.sh), one release
# build, then the data-plane and control-plane benchmarks in turn; prints
# both tables and how long it all took.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/ecsmesh/target}"
started=$(date +%s)
bash scripts/deps.sh bench/deps-apt.txt
# One build for both (bench/proxy.sh and bench/control.sh then find it done).
cargo build --release -q -p ecsmesh-agent -p ecsmesh-controller -p ecsmesh-bench
built=$(date +%s)
bash bench/proxy.sh
proxied=$(date +%s)
bash bench/control.sh
ended=$(date +%s)
echo
echo "make bench: $((ended - started)) s in all (deps and build $((built - started)) s," \
  "bench-proxy $((proxied - built)) s, bench-control $((ended - proxied)) s)"

# Setup shared by bench/proxy.sh and bench/profile.sh, sourced from the
# repository root after `set -euo pipefail`: installs what deps-apt.txt
# (and any list in the array BENCH_APT_LISTS) names, builds the release
# binaries (BIN), makes a scratch directory (WORK) removed on exit with
# every process in PIDS, and defines wait_port.

# --- what the benchmark needs (scripts/deps.sh installs what is missing) --
DEPS_PYTHON=0 bash scripts/deps.sh bench/deps-apt.txt ${BENCH_APT_LISTS[@]+"${BENCH_APT_LISTS[@]}"} >/dev/null
# The same package set as bench/control.sh, so cargo's feature unification
# (and therefore the cached artifacts) is the same for both.
cargo build --release -q -p ecsmesh-agent -p ecsmesh-controller -p ecsmesh-bench
BIN="$CARGO_TARGET_DIR/release"

WORK="$(mktemp -d)"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
wait_port() {
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null && return 0; sleep 0.1; done
  echo "nothing listens on $1:$2" >&2; return 1
}

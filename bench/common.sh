# Setup shared by bench/proxy.sh and bench/profile.sh, sourced from the
# repository root after `set -euo pipefail`: installs what deps-apt.txt
# lists, builds the release binaries (BIN), makes a scratch directory (WORK)
# removed on exit with every process in PIDS, and defines wait_port.

# --- what the benchmark needs -------------------------------------------
missing=()
for p in $(grep -v '^\s*#' bench/deps-apt.txt); do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo_cmd=""; [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
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

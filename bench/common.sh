# Setup shared by bench/proxy.sh, bench/profile.sh and bench/ab.sh, sourced
# from the repository root after `set -euo pipefail`: installs what
# deps-apt.txt (and any list in the array BENCH_APT_LISTS) names, builds the
# release binaries (BIN), makes a scratch directory (WORK) removed on exit
# with every process in PIDS, and defines wait_port and the launchers of
# the upstream, an agent and haproxy as every benchmark runs them.

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

# --- the systems under test ----------------------------------------------
# Each proxy has one worker thread and runs pinned with the upstream to
# CPU 1; the load generators run on CPU 0.
UP_IP=127.0.50.10; UP="$UP_IP:8080"
start_upstream() {
  taskset -c 1 "$BIN/bench-upstream" --addr "$UP" & PIDS+=($!)
  wait_port "$UP_IP" 8080
}
# start_agent NAME HOST_IP MODE UPSTREAM_HOST [BINARY]: an agent routing
# with a real snapshot file (20-entry dtab, 50 services; the upstream's
# endpoints named by UPSTREAM_HOST), no controller; pid in AGENT_PID[NAME].
declare -A AGENT_PID
start_agent() {
  "$BIN/bench-snapshot" --upstream "$UP" --upstream-host "$4" --out "$WORK/$1/snapshot.pb"
  RUST_LOG=error TOKIO_WORKER_THREADS=1 ECSMESH_WORKER_THREADS=1 taskset -c 1 "${5:-$BIN/ecsmesh-agent}" \
    --host-ip "$2" --instance-id "i-$1" --availability-zone bench-a --mode "$3" \
    --controller http://127.0.0.1:9 --state-dir "$WORK/$1" --imds-endpoint http://127.0.0.1:9 &
  AGENT_PID[$1]=$!; PIDS+=($!)
}
# start_haproxy ADDR: haproxy as a plain reverse proxy to the upstream,
# keep-alive to it; pid in HAPROXY_PID.
start_haproxy() {
  cat > "$WORK/haproxy.cfg" <<EOF
global
  nbthread 1
  maxconn 4000
defaults
  mode http
  timeout connect 2s
  timeout client 30s
  timeout server 30s
  http-reuse always
frontend fe
  bind $1
  default_backend be
backend be
  server up $UP
EOF
  taskset -c 1 haproxy -db -f "$WORK/haproxy.cfg" & HAPROXY_PID=$!; PIDS+=($!)
}

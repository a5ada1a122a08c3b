# Setup shared by bench/proxy.sh, bench/profile.sh and bench/ab.sh, sourced
# from the repository root after `set -euo pipefail`: installs what
# deps-apt.txt (and any list in the array BENCH_APT_LISTS) names, builds the
# release binaries (BIN), makes a scratch directory (WORK) removed on exit
# with every process in PIDS, and defines wait_port and the launchers of
# the upstream, an agent and haproxy as every benchmark runs them.

# --- where everything runs ------------------------------------------------
# BENCH_CORES=N gives each proxy N worker threads (the agent's
# worker_threads, haproxy's nbthread, nginx's worker_processes) on CPUs
# 0..N-1, the upstream N threads on the next N CPUs, and the load generator
# the rest: disjoint sets, so a proxy's figure is its own. That needs
# 2N + 2 CPUs. On a smaller machine only N = 1 runs, in the layout the
# 2-core VM has always used (proxy and upstream on CPU 1, load on CPU 0),
# so its results stay comparable.
CORES="${BENCH_CORES:-1}"
NCPU="$(nproc)"
if [ "$NCPU" -ge $((2 * CORES + 2)) ]; then
  PROXY_CPUS="0-$((CORES - 1))"
  UP_CPUS="$CORES-$((2 * CORES - 1))"
  LOAD_CPUS="$((2 * CORES))-$((NCPU - 1))"
  LOAD_THREADS=$((NCPU - 2 * CORES))
elif [ "$CORES" -eq 1 ]; then
  PROXY_CPUS=1; UP_CPUS=1; LOAD_CPUS=0; LOAD_THREADS=1
else
  echo "BENCH_CORES=$CORES needs $((2 * CORES + 2)) CPUs (proxy, upstream and load apart); this machine has $NCPU" >&2
  exit 2
fi
# Connections grow with the cores, so every worker has work.
CONNS=$((32 * CORES))
LAYOUT="proxies on CPUs $PROXY_CPUS ($CORES worker(s) each), upstream on $UP_CPUS, wrk -t$LOAD_THREADS -c$CONNS on $LOAD_CPUS"
# wrk_run ARGS…: wrk on the load CPUs with the layout's threads and connections.
wrk_run() { taskset -c "$LOAD_CPUS" wrk -t"$LOAD_THREADS" -c"$CONNS" "$@"; }

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
UP_IP=127.0.50.10; UP="$UP_IP:8080"
start_upstream() {
  taskset -c "$UP_CPUS" "$BIN/bench-upstream" --addr "$UP" --threads "$CORES" & PIDS+=($!)
  wait_port "$UP_IP" 8080
}
# start_agent NAME HOST_IP MODE UPSTREAM_HOST [BINARY]: an agent routing
# with a real snapshot file (20-entry dtab, 50 services; the upstream's
# endpoints named by UPSTREAM_HOST), no controller; pid in AGENT_PID[NAME].
# SNAPSHOT_ARGS (an array) adds bench-snapshot flags (the zone services);
# AGENT_CONTROLLER, the agent's --controller (by default an address where
# nothing listens: the agent stays on the snapshot file; proxy.sh's
# agent-deltas row points it at bench-push).
declare -A AGENT_PID
SNAPSHOT_ARGS=()
NO_CONTROLLER=http://127.0.0.1:9
AGENT_CONTROLLER=$NO_CONTROLLER
start_agent() {
  "$BIN/bench-snapshot" --upstream "$UP" --upstream-host "$4" ${SNAPSHOT_ARGS[@]+"${SNAPSHOT_ARGS[@]}"} \
    --out "$WORK/$1/snapshot.pb"
  RUST_LOG=error TOKIO_WORKER_THREADS="$CORES" ECSMESH_WORKER_THREADS="$CORES" taskset -c "$PROXY_CPUS" "${5:-$BIN/ecsmesh-agent}" \
    --host-ip "$2" --instance-id "i-$1" --availability-zone bench-a --mode "$3" \
    --controller "$AGENT_CONTROLLER" --state-dir "$WORK/$1" --imds-endpoint http://127.0.0.1:9 &
  AGENT_PID[$1]=$!; PIDS+=($!)
}
# start_haproxy ADDR [SERVER [NAME [BIND_OPTS [SERVER_OPTS]]]]: haproxy as a
# plain reverse proxy to SERVER (default: the upstream), keep-alive to it;
# pid in HAPROXY_PID (and HAPROXY_PIDS[NAME]).
declare -A HAPROXY_PIDS
start_haproxy() {
  local name="${3:-haproxy}"
  cat > "$WORK/$name.cfg" <<EOF
global
  nbthread $CORES
  maxconn 4000
defaults
  mode http
  timeout connect 2s
  timeout client 30s
  timeout server 30s
  http-reuse always
frontend fe
  bind $1 ${4:-}
  default_backend be
backend be
  server up ${2:-$UP} ${5:-}
EOF
  taskset -c "$PROXY_CPUS" haproxy -db -f "$WORK/$name.cfg" & HAPROXY_PID=$!; PIDS+=($!)
  HAPROXY_PIDS[$name]=$HAPROXY_PID
}

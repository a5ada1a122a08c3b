#!/usr/bin/env bash
# The whole mesh on one machine: moto's ECS (patched), the controller, two agents
# (instance A = 127.0.1.1, instance B = 127.0.1.2) and one helloworld process per RUNNING
# ECS task, then the seed's walkthrough with its real output.
#
#   bash scripts/demo.sh                  # make demo: runs the steps, stays up until Ctrl-C
#   bash scripts/demo.sh down             # make demo-down: stops a running demo from another shell
#   DEMO_NO_WAIT=1 bash scripts/demo.sh   # runs the steps, tears everything down, exits 0 (CI)
#   TLS=1 bash scripts/demo.sh            # make demo TLS=1: TLS on every hop (see below)
#
# Every address is loopback. State and logs: $ECSMESH_DEMO_DIR (default ~/.cache/ecsmesh/demo).
# Dtab writes need a token even here (issue #16): a fresh one in $DEMO_DIR/admin-token, found
# by ecsmeshctl through $DEMO_DIR/ecsmeshctl.yaml (ECSMESH_CTL_CONFIG); the user's own
# ~/.config/ecsmesh/config.yaml is never written.
set -euo pipefail
cd "$(dirname "$0")/.."

DEMO_DIR="${ECSMESH_DEMO_DIR:-$HOME/.cache/ecsmesh/demo}"
VENV="${ECSMESH_VENV:-$HOME/.cache/ecsmesh/venv}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/ecsmesh/target}"
# DEMO_PROFILE=debug runs the debug binaries (the test suite does: CI never
# builds release).
PROFILE="${DEMO_PROFILE:-release}"
# DEMO_MODE=direct routes outgoing -> endpoint instead of through the
# endpoint host's agent.
MODE="${DEMO_MODE:-linker-to-linker}"
# TLS=1: agent to agent (mTLS), agents and ecsmeshctl to the controller, all
# over TLS with certificates from `ecsmeshctl certs init` ($DEMO_DIR/certs).
TLS="${TLS:-}"
BIN="$CARGO_TARGET_DIR/$PROFILE"
PIDFILE="$DEMO_DIR/demo.pid"   # the demo script itself
PIDS="$DEMO_DIR/pids"          # every process it started: "<pid> <name>"
LOGS="$DEMO_DIR/logs"
CONTROLLER_GRPC=127.0.0.1:4321
CONTROLLER_ADMIN=127.0.0.1:9991
HOST_A=127.0.1.1
HOST_B=127.0.1.2

log() { printf '\n\033[1;34m==>\033[0m \033[1m%s\033[0m\n' "$*"; }
die() { printf 'demo: %s\n' "$*" >&2; exit 1; }
# A process that has exited but not been reaped by its parent (a zombie) is gone too.
alive() {
  kill -0 "$1" 2>/dev/null && [ "$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1)" != Z ]
}

# Stops the processes listed in $PIDS (TERM, then KILL after 10 s), newest first.
stop_listed() {
  [ -f "$PIDS" ] || return 0
  local pids=() pid any
  mapfile -t pids < <(tac "$PIDS" | awk '{print $1}')
  for pid in "${pids[@]}"; do
    if alive "$pid"; then kill -TERM "$pid" 2>/dev/null || true; fi
  done
  for _ in $(seq 100); do
    any=0
    for pid in "${pids[@]}"; do if alive "$pid"; then any=1; fi; done
    [ "$any" = 0 ] && break
    sleep 0.1
  done
  for pid in "${pids[@]}"; do
    if alive "$pid"; then kill -KILL "$pid" 2>/dev/null || true; fi
  done
  rm -f "$PIDS"
}

down() {
  local pid
  if [ -f "$PIDFILE" ] && alive "$(cat "$PIDFILE")"; then
    pid="$(cat "$PIDFILE")"
    echo "demo: stopping the demo (pid $pid)"
    kill -TERM "$pid"
    for _ in $(seq 300); do alive "$pid" || break; sleep 0.1; done
    if alive "$pid"; then
      echo "demo: pid $pid still running after 30 s; killing it and what it started" >&2
      kill -KILL "$pid" 2>/dev/null || true
    fi
  else
    echo "demo: no demo running"
  fi
  stop_listed   # whatever a killed demo left behind
  rm -f "$PIDFILE"
}

if [ "${1:-}" = "down" ]; then down; exit 0; fi
[ $# -eq 0 ] || die "usage: demo.sh [down]"

mkdir -p "$DEMO_DIR"
if [ -f "$PIDFILE" ] && alive "$(cat "$PIDFILE")"; then
  die "a demo is already running (pid $(cat "$PIDFILE")); stop it with: make demo-down"
fi
stop_listed   # leftovers of a demo that was killed -9
rm -rf "$LOGS" "$DEMO_DIR/store" "$DEMO_DIR"/agent-* "$DEMO_DIR/moto.json" "$DEMO_DIR/topology.txt"
mkdir -p "$LOGS"
echo $$ > "$PIDFILE"

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  log "stopping everything the demo started"
  stop_listed
  rm -f "$PIDFILE"
  echo "demo: stopped"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# start NAME CMD...: runs CMD in the background, logging to $LOGS/NAME.log, and records its pid.
start() {
  local name=$1; shift
  "$@" </dev/null >"$LOGS/$name.log" 2>&1 &
  echo "$! $name" >> "$PIDS"
}

# wait_for WHAT SECONDS CMD...: retries CMD every 0.2 s for at most SECONDS.
wait_for() {
  local what=$1 secs=$2; shift 2
  for _ in $(seq $((secs * 5))); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.2
  done
  die "timed out after ${secs}s waiting for $what (logs: $LOGS)"
}

port_in_use() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }
for hp in "$HOST_A:4140" "$HOST_A:4141" "$HOST_A:9990" "$HOST_B:4140" "$HOST_B:4141" "$HOST_B:9990" \
          "$CONTROLLER_GRPC" "$CONTROLLER_ADMIN"; do
  if port_in_use "${hp%:*}" "${hp#*:}"; then
    die "$hp is in use (another demo? stop it with: make demo-down)"
  fi
done

log "dependencies (scripts/deps.sh: the demo's only)"
DEPS_PYTHON_LIST=deps/demo-python.txt bash scripts/deps.sh deps/demo-apt.txt

log "building $PROFILE binaries"
t0=$(date +%s)
if [ "$PROFILE" = release ]; then profile_flag=--release; else profile_flag=; fi
cargo build $profile_flag -p ecsmesh-controller -p ecsmesh-agent -p ecsmesh-cli -p ecsmesh-hello-world
echo "build: $(( $(date +%s) - t0 ))s"

CERTS="$DEMO_DIR/certs"
SCHEME=http
CONTROLLER_TLS=()
if [ -n "$TLS" ]; then
  log "TLS: a mesh CA and certificates for the controller, two agents and an operator"
  rm -rf "$CERTS"
  "$BIN/ecsmeshctl" certs init --out "$CERTS" --agents 2
  SCHEME=https
  CONTROLLER_TLS=(--tls-cert "$CERTS/controller.pem" --tls-key "$CERTS/controller-key.pem"
    --tls-ca "$CERTS/ca.pem" --agent-identity ecsmesh-agent --admin-identity ecsmesh-admin)
fi

# A fresh random admin token per run, private to the user.
TOKEN_FILE="$DEMO_DIR/admin-token"
rm -f "$TOKEN_FILE"
(umask 077 && head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$TOKEN_FILE")
# And one for the agents' mesh stream: only agents that hold it follow the controller.
AGENT_TOKEN_FILE="$DEMO_DIR/agent-token"
rm -f "$AGENT_TOKEN_FILE"
(umask 077 && head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$AGENT_TOKEN_FILE")
# ecsmeshctl's settings for this demo: where the controller is, the token (and the
# operator's certificate with TLS=1). Relative paths are taken from this file's directory.
CTL_CONFIG="$DEMO_DIR/ecsmeshctl.yaml"
{
  echo "# ecsmeshctl settings for the demo: ECSMESH_CTL_CONFIG=$CTL_CONFIG ecsmeshctl ..."
  echo "controller: $SCHEME://$CONTROLLER_GRPC"
  echo "token_file: admin-token"
  if [ -n "$TLS" ]; then
    echo "tls: { ca: certs/ca.pem, cert: certs/admin.pem, key: certs/admin-key.pem }"
  fi
} > "$CTL_CONFIG"

log "starting moto (the patched ECS of tests/harness/moto_ecs.py)"
start moto "$VENV/bin/python" tests/harness/moto_ecs.py --port 0 --ready-file "$DEMO_DIR/moto.json" --exit-with-parent
wait_for "moto" 30 test -s "$DEMO_DIR/moto.json"
MOTO_PORT=$(sed -E 's/.*"port": *([0-9]+).*/\1/' "$DEMO_DIR/moto.json")
MOTO="http://127.0.0.1:$MOTO_PORT"
echo "moto: $MOTO"

log "ECS: cluster demo, instances A=$HOST_A B=$HOST_B, services hello x2, world x2, world-v2 x1"
"$VENV/bin/python" scripts/demo_topology.py "$MOTO" > "$DEMO_DIR/topology.txt"
cat "$DEMO_DIR/topology.txt"
IID_A=$(awk -v ip="$HOST_A" '$1=="node" && $3==ip {print $2}' "$DEMO_DIR/topology.txt")
IID_B=$(awk -v ip="$HOST_B" '$1=="node" && $3==ip {print $2}' "$DEMO_DIR/topology.txt")

export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_EC2_METADATA_DISABLED=true
log "starting the controller (gRPC $CONTROLLER_GRPC, admin $CONTROLLER_ADMIN)"
start controller "$BIN/ecsmesh-controller" --cluster demo --aws-endpoint-url "$MOTO" --aws-region us-west-1 \
  --grpc-addr "$CONTROLLER_GRPC" --admin-addr "$CONTROLLER_ADMIN" --store-dir "$DEMO_DIR/store" --resync-interval 1s \
  --admin-token-file "$TOKEN_FILE" --agent-token-file "$AGENT_TOKEN_FILE" "${CONTROLLER_TLS[@]}"
wait_for "the controller" 60 curl -fsS "http://$CONTROLLER_ADMIN/ready"

# Each agent discovers its host IP, instance id and zone from its instance's IMDSv2
# endpoint (moto serves one per instance at $MOTO/imds/<instance-id>), as it would on EC2.
# The readiness checks below are on the expected loopback addresses, so an agent that
# ended up anywhere else stops the demo.
log "starting two agents (instance A on $HOST_A, instance B on $HOST_B; $MODE${TLS:+, TLS})"
for x in "a $HOST_A $IID_A 1" "b $HOST_B $IID_B 2"; do
  read -r name ip iid n <<<"$x"
  agent_tls=()
  if [ -n "$TLS" ]; then
    agent_tls=(--tls-ca "$CERTS/ca.pem" --tls-cert "$CERTS/agent-$n.pem" --tls-key "$CERTS/agent-$n-key.pem")
  fi
  start "agent-$name" env -u AWS_EC2_METADATA_DISABLED "$BIN/ecsmesh-agent" "${agent_tls[@]}" \
    --controller "$SCHEME://$CONTROLLER_GRPC" --controller-token-file "$AGENT_TOKEN_FILE" \
    --cluster demo --imds-endpoint "$MOTO/imds/$iid" \
    --state-dir "$DEMO_DIR/agent-$name" --mode "$MODE" \
    --summary-interval "${ECSMESH_SUMMARY_INTERVAL:-2s}"
done
wait_for "agent A" 60 curl -fsS "http://$HOST_A:9990/ready"
wait_for "agent B" 60 curl -fsS "http://$HOST_B:9990/ready"

log "starting one helloworld process per RUNNING task, on its host IP and host port"
while read -r kind svc ip port _; do
  [ "$kind" = task ] || continue
  case "$svc" in
    hello) args=(--text Hello --target world) ;;
    world) args=(--text World) ;;
    world-v2) args=(--text World-V2) ;;
    *) die "unknown service $svc" ;;
  esac
  echo "  $svc on $ip:$port"
  start "$svc-$ip-$port" env POD_IP="$ip" http_proxy="$ip:4140" "$BIN/helloworld" --addr "$ip:$port" "${args[@]}"
done < "$DEMO_DIR/topology.txt"
while read -r kind svc ip port _; do
  if [ "$kind" = task ]; then wait_for "$svc on $ip:$port" 20 curl -fsS -o /dev/null "http://$ip:$port/setLatency" -d 0; fi
done < "$DEMO_DIR/topology.txt"

# The mesh routes once the controller's first ECS observation has reached both agents.
wait_for "the mesh to route from A" 60 bash -c "curl -fsS -x $HOST_A:4140 http://hello | grep -q '!!'"
wait_for "the mesh to route from B" 60 bash -c "curl -fsS -x $HOST_B:4140 http://hello | grep -q '!!'"

# ecsmeshctl in the walkthrough: the demo's settings file only (the controller, the token,
# with TLS the mesh CA and the operator's certificate), not whatever the shell had set.
unset ECSMESH_CONTROLLER ECSMESH_TOKEN ECSMESH_TOKEN_FILE ECSMESH_TLS_CA ECSMESH_TLS_CERT \
  ECSMESH_TLS_KEY ECSMESH_CONTROLLER_SERVER_NAME
export ECSMESH_CTL_CONFIG="$CTL_CONFIG"
# show CMD: prints "$ CMD" and runs it (with ecsmeshctl on PATH), so a reader can paste it.
show() { printf '\n$ %s\n' "$1"; PATH="$BIN:$PATH" bash -c "$1"; echo; }

if [ -n "$TLS" ]; then
  TLS_NOTE="on every hop (agents with mTLS, agents and ecsmeshctl to the controller); certificates: $CERTS"
else
  TLS_NOTE="off (make demo TLS=1 turns it on)"
fi
cat <<BANNER

============================================================================
 ecsmesh demo: ECS (moto) cluster "demo"; instance A = $HOST_A, B = $HOST_B
 controller: gRPC $CONTROLLER_GRPC, admin http://$CONTROLLER_ADMIN
 agents: $HOST_A and $HOST_B (:4140 outgoing, :4141 incoming, :9990 admin)
 TLS: $TLS_NOTE
============================================================================
BANNER

log "1. hello calls world, each through its host's agent"
for _ in 1 2 3; do show "http_proxy=$HOST_A:4140 curl -s hello"; done

if [ -n "$TLS" ]; then
  log "1b. TLS: the incoming port answers a mesh certificate, and refuses a plaintext client"
  show "curl -s --http1.1 --cacert $CERTS/ca.pem --cert $CERTS/agent-1.pem --key $CERTS/agent-1-key.pem --connect-to ecsmesh-agent:4141:$HOST_B:4141 -H 'host: hello' https://ecsmesh-agent:4141/"
  show "curl -sS -H 'host: hello' http://$HOST_B:4141/ || echo \"refused (curl exit \$?)\""
  show "curl -s http://$HOST_B:9990/metrics | grep '^ecsmesh_agent_tls_handshake_failures'"
fi

log "2. a per-request override (l5d-dtab) travels through hello to its world call"
for _ in 1 2; do show "http_proxy=$HOST_A:4140 curl -s -H 'l5d-dtab: /svc/world => /svc/world-v2' hello"; done

# Each agent's /admin/dtab shows the dtab it routes with. (A request through
# one agent may be answered by a hello whose world call goes through the other,
# so sampling requests does not tell whether both agents have a change.)
both_dtabs() {
  curl -fsS "http://$HOST_A:9990/admin/dtab" | grep -qF "$1" &&
    curl -fsS "http://$HOST_B:9990/admin/dtab" | grep -qF "$1"
}
neither_dtab() {
  ! curl -fsS "http://$HOST_A:9990/admin/dtab" | grep -qF "$1" &&
    ! curl -fsS "http://$HOST_B:9990/admin/dtab" | grep -qF "$1"
}

log "3. an override for everyone, through the controller's gRPC API"
show "ecsmeshctl dtab set default '/svc/world => /svc/world-v2'"
wait_for "the override to reach both agents" 30 both_dtabs "/svc/world=>/svc/world-v2"
show "ecsmeshctl dtab get default"
for _ in 1 2; do show "http_proxy=$HOST_A:4140 curl -s hello"; done
show "http_proxy=$HOST_B:4140 curl -s hello"
show "ecsmeshctl dtab delete default"
wait_for "the override to be gone" 30 neither_dtab "world-v2"
show "http_proxy=$HOST_A:4140 curl -s hello"

log "3b. a weighted canary: about 10 % of world's traffic to world-v2"
# (Written with concrete names: '/svc/world => 9 * /svc/world & …' would
# rewrite /svc/world again, as in Linkerd, and send everything to v2.)
show "ecsmeshctl dtab set default '/svc/world => 9 * /#/ecs/demo/world & 1 * /#/ecs/demo/world-v2'"
wait_for "the canary to reach both agents" 30 both_dtabs "9.00*/#/ecs/demo/world"
show "for i in \$(seq 200); do http_proxy=$HOST_A:4140 curl -s hello; echo; done | sed -E 's/ \\(127[^)]*\\)//g' | sort | uniq -c"
show "ecsmeshctl dtab delete default"
wait_for "the canary to be gone" 30 neither_dtab "world-v2"

log "4. where to look"
# An agent installs a version before its ACK reaches the controller: the
# status below is shown once both ACKs are in.
wait_for "both agents to ACK the last version" 30 bash -c "\"$BIN/ecsmeshctl\" status | grep -q '2/2 agents converged'"
show "ecsmeshctl status"
show "curl -s http://$CONTROLLER_ADMIN/agents"
show "curl -s 'http://$HOST_A:9990/admin/delegator?path=/svc/world'"
cat <<WHERE
  agent A admin:  http://$HOST_A:9990/metrics  /ready  /admin/dtab  /admin/delegator?path=/svc/world
  agent B admin:  http://$HOST_B:9990/metrics  /ready  /admin/dtab
  dashboard:      http://$CONTROLLER_ADMIN/   (services, agents, dtab playground)
  controller:     http://$CONTROLLER_ADMIN/metrics  /ready  /agents
  ecsmeshctl:     export ECSMESH_CTL_CONFIG=$CTL_CONFIG   (the controller and the admin token)
                  $BIN/ecsmeshctl status | dtab get default | dtab set default '/svc/world => /svc/world-v2'
  moto (ECS):     $MOTO  (endpoint URL for the aws CLI / boto3, region us-west-1)
  logs:           $LOGS
WHERE

if [ -n "${DEMO_NO_WAIT:-}" ]; then
  exit 0
fi
# From here on, Ctrl-C or `make demo-down` is the normal way out: exit 0 after cleaning up.
trap 'exit 0' INT TERM
log "the demo is up: press Ctrl-C here, or run 'make demo-down' in another shell, to stop it"
while :; do sleep 1 & wait $! || true; done

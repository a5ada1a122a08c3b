#!/usr/bin/env bash
# The control-plane benchmark (`make bench-control`): the real controller
# binary against a simulated ECS (the project's patched moto: 10,000 tasks on
# 500 container instances, ListTasks paged as ECS pages it), with 100 and then
# 1,000 simulated agents (gRPC stream clients in one process that Hello, apply
# and ACK like the agent); then with ECS events on an SQS queue: the event
# path with 1,000 agents, and the steady-state ECS+EC2 calls of 1 and of 3
# replicas on a DynamoDB store. See bench/README.md for what is measured and how.
#
# The controller is pinned to CPU 1 and the emulator to CPU 0; the simulated
# agents (they stand for other machines) run where the kernel puts them.
# Loopback only; every phase is bounded (3 min each).
#
# Environment: BENCH_AGENTS (default "100,1000"), BENCH_INSTANCES (500),
# BENCH_SERVICES (200), BENCH_TASKS_PER_SERVICE (50), BENCH_CHANGES (3),
# BENCH_STEADY_RESYNCS (2), BENCH_DTAB_UPDATES (10), BENCH_POLICY_UPDATES (10,
# service-policy writes, in turn with the dtab writes), BENCH_RESYNC_INTERVAL (1s),
# BENCH_EVENT_AGENTS (1000), BENCH_EVENT_CHANGES (20; 0 skips the event path),
# BENCH_STEADY_REPLICAS ("1,3"; 0 skips), BENCH_STEADY_WINDOW (330 seconds a
# replica count; the goal's 10 minutes is 600), BENCH_STEADY_CHURN (30 s
# between changes in the window; 0: none).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/ecsmesh/target}"
VENV="${ECSMESH_VENV:-$HOME/.cache/ecsmesh/venv}"

# moto and boto3 come from deps/python.txt, as for the tests.
if ! "$VENV/bin/python" -c 'import moto, boto3' 2>/dev/null; then
  DEPS_APT=0 bash scripts/deps.sh
fi
# One package set for every benchmark build, so cargo's feature unification
# (and therefore the cached artifacts) is the same for all of them.
cargo build --release -q -p ecsmesh-agent -p ecsmesh-controller -p ecsmesh-bench
BIN="$CARGO_TARGET_DIR/release"

# 1,000 agent connections on each side of loopback.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

pin=()
if [ "$(nproc)" -ge 2 ]; then
  pin=(--emulator-cpus 0 --controller-cpus 1)
fi
quiet() { echo "load $(cut -d' ' -f1-3 /proc/loadavg), rustc processes $(pgrep -c rustc || true)"; }

mkdir -p bench/results
stamp=$(date -u +%Y%m%d-%H%M)
raw="bench/results/control-$stamp.json"
before=$(quiet)
"$BIN/bench-control" \
  --controller "$BIN/ecsmesh-controller" \
  --python "$VENV/bin/python" \
  --emulator bench/moto_bench.py \
  --agents "${BENCH_AGENTS:-100,1000}" \
  --instances "${BENCH_INSTANCES:-500}" \
  --services "${BENCH_SERVICES:-200}" \
  --tasks-per-service "${BENCH_TASKS_PER_SERVICE:-50}" \
  --steady-resyncs "${BENCH_STEADY_RESYNCS:-2}" \
  --changes "${BENCH_CHANGES:-3}" \
  --dtab-updates "${BENCH_DTAB_UPDATES:-10}" \
  --policy-updates "${BENCH_POLICY_UPDATES:-10}" \
  --resync-interval "${BENCH_RESYNC_INTERVAL:-1s}" \
  --event-agents "${BENCH_EVENT_AGENTS:-1000}" \
  --event-changes "${BENCH_EVENT_CHANGES:-20}" \
  --steady-replicas "${BENCH_STEADY_REPLICAS:-1,3}" \
  --steady-window-s "${BENCH_STEADY_WINDOW:-330}" \
  --steady-churn-s "${BENCH_STEADY_CHURN:-30}" \
  "${pin[@]}" \
  --out "$raw"
after=$(quiet)
python3 bench/report_control.py "$raw" "$before" "$after" | tee "bench/results/control-$stamp.md"
echo "written: bench/results/control-$stamp.md (raw: $raw)"

#!/usr/bin/env bash
# Profiles the agent under load (`make bench-profile`): the same setup as
# bench/proxy.sh's "agent" system (outgoing, direct mode, one worker thread,
# a 20-entry dtab and 50 services from a snapshot file), driven by wrk at
# full speed with 64-byte bodies, sampled by `perf record` with the software
# cpu-clock event (this VM has no hardware counters) and DWARF call graphs
# (release builds keep no frame pointers; their unwind tables suffice).
# Also counts system calls and context switches per request for the agent
# and for haproxy (same setup as bench/proxy.sh) from software tracepoints.
# Writes bench/results/profile-<date>.txt: syscalls per request, top symbols
# by self time, self time by area and by the agent function that caused it,
# inclusive time (bench/fold.py). Loopback only; bounded.
#
# Environment: PROFILE_SECONDS (default 10).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/ecsmesh/target}"
SECS="${PROFILE_SECONDS:-10}"

BENCH_APT_LISTS=(bench/deps-profile-apt.txt)
. bench/common.sh

start_upstream
start_agent profile 127.0.50.1 direct "$UP_IP"
AGENT=${AGENT_PID[profile]}
start_haproxy 127.0.50.4:8080
HAPROXY=$HAPROXY_PID
wait_port 127.0.50.1 4140; wait_port 127.0.50.4 8080

# System calls and context switches per request, agent against haproxy:
# software tracepoints, counted while wrk saturates each in turn.
EVENTS=raw_syscalls:sys_enter,sched:sched_switch
for c in writev write sendto sendmsg read readv recvfrom recvmsg epoll_wait epoll_pwait futex; do
  EVENTS+=",syscalls:sys_enter_$c"
done
syscalls() { # name address host pid
  wrk_run -d1s -H "Host: $3" "http://$2/64" >/dev/null
  wrk_run -d7s -H "Host: $3" "http://$2/64" > "$WORK/wrk-$1.txt" &
  local w=$!
  sleep 1
  local before; before=$(awk '{print $14, $15}' "/proc/$4/stat")
  perf stat -x, -e "$EVENTS" -p "$4" -o "$WORK/stat-$1.csv" -- sleep 5 2>/dev/null
  local after; after=$(awk '{print $14, $15}' "/proc/$4/stat")
  wait "$w"
  local rps; rps=$(awk '/^Requests\/sec/{print $2}' "$WORK/wrk-$1.txt")
  awk -F, -v name="$1" -v rps="$rps" '$1 ~ /^[0-9]+$/ {
      printf "%-8s %-36s %8.2f per request\n", name, $3, $1 / (rps * 5) }' "$WORK/stat-$1.csv"
  # CPU time split (from /proc, no sampling): microseconds per request.
  python3 -c "import sys; b, a, rps, hz = sys.argv[1].split(), sys.argv[2].split(), float(sys.argv[3]), float(sys.argv[4])
for i, what in ((0, 'user CPU'), (1, 'system CPU')):
    print(f'{sys.argv[5]:8s} {what:36s} {(int(a[i]) - int(b[i])) / hz / (rps * 5) * 1e6:8.2f} µs per request')" \
    "$before" "$after" "$rps" "$(getconf CLK_TCK)" "$1"
  echo "$1 $rps req/s"
}
{
  syscalls agent 127.0.50.1:4140 svc7 "$AGENT"
  syscalls haproxy 127.0.50.4:8080 upstream "$HAPROXY"
} > "$WORK/syscalls.txt"

# Warm up, then sample the agent while wrk keeps it saturated.
wrk_run -d2s -H "Host: svc7" http://127.0.50.1:4140/64 >/dev/null
wrk_run -d"$((SECS + 2))s" -H "Host: svc7" http://127.0.50.1:4140/64 > "$WORK/wrk.txt" &
WRK=$!
sleep 1
perf record -e cpu-clock -F 999 --call-graph dwarf,32768 -p "$AGENT" -o "$WORK/perf.data" -- sleep "$SECS" 2>"$WORK/perf.log"
wait "$WRK"

mkdir -p bench/results
stamp=$(date -u +%Y%m%d-%H%M)
out="bench/results/profile-$stamp.txt"
{
  echo "# Agent profile ($(date -u +%FT%TZ))"
  echo "# make bench-profile (bench/profile.sh): perf record -e cpu-clock -F 999 --call-graph dwarf -p <agent> for ${SECS} s"
  echo "# while: wrk -H 'Host: svc7' http://127.0.50.1:4140/64; $LAYOUT"
  echo "# machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores; load $(cut -d' ' -f1-3 /proc/loadavg); rustc processes $(pgrep -c rustc || true)"
  echo "# wrk:"; sed 's/^/#   /' "$WORK/wrk.txt"
  echo
  echo "## System calls and context switches per request (perf stat on tracepoints, 5 s of wrk each; zero counts left out)"
  grep -v ' 0.00 per' "$WORK/syscalls.txt"
  echo
  echo "## Self time by symbol (perf report --no-children)"
  perf report -i "$WORK/perf.data" --no-children -F overhead,dso,sym --stdio -g none --percent-limit 0.7 2>/dev/null \
    | grep -v '^#' | grep -v '^$' | sed 's/ *$//' | cut -c1-160
  echo
  perf script -i "$WORK/perf.data" -F comm,tid,ip,sym,dso 2>/dev/null | python3 bench/fold.py
} > "$out"
head -60 "$out"
echo "written: $out"

#!/usr/bin/env bash
# A/B of two ecsmesh-agent binaries (`make bench-ab A=path B=path`), for
# judging one change to the hot path: both agents run side by side in the
# `agent` shape of bench/proxy.sh (outgoing, direct mode, one worker thread,
# pinned with the upstream to CPU 1; the same 20-entry dtab and 50-service
# snapshot), and wrk (CPU 0) alternates between them, so drift in the
# machine hits both alike. Prints every run and the medians, and writes the
# table to bench/results/ab-<date>.md.
# Loopback only; every run is bounded.
#
# Environment: AB_REPS (default 5), AB_SECONDS (per run, default 3).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/ecsmesh/target}"
A="${1:?usage: bench/ab.sh AGENT_A AGENT_B}"
B="${2:?usage: bench/ab.sh AGENT_A AGENT_B}"
REPS="${AB_REPS:-5}"
SECS="${AB_SECONDS:-3}"

. bench/common.sh

# common.sh has just rebuilt what lies in $BIN: a binary there is not the one asked for.
for x in "$A" "$B"; do
  case "$(realpath "$x")" in
    "$(realpath "$BIN")"/*) echo "bench/ab.sh: copy $x out of $BIN first (the build replaces it)" >&2; exit 2 ;;
  esac
done

start_upstream
declare -A IP=([A]=127.0.50.21 [B]=127.0.50.22) AGENT=([A]="$A" [B]="$B")
for n in A B; do
  start_agent "$n" "${IP[$n]}" direct "$UP_IP" "${AGENT[$n]}"
  wait_port "${IP[$n]}" 4140
done
for n in A B; do
  wrk_run -d1s -H "Host: svc7" "http://${IP[$n]}:4140/64" >/dev/null
done
RAW="$WORK/runs.txt"
for rep in $(seq "$REPS"); do
  for size in 64 4096; do
    for n in A B; do
      rps=$(wrk_run -d"${SECS}s" -H "Host: svc7" "http://${IP[$n]}:4140/$size" |
        awk '/^Requests\/sec/{print $2}')
      echo "$n $size $rep $rps" | tee -a "$RAW"
    done
  done
done
mkdir -p bench/results
out="bench/results/ab-$(date -u +%Y%m%d-%H%M).md"
python3 - "$RAW" "$A" "$B" "$REPS" "$SECS" "$LAYOUT" <<'PY' | tee "$out"
import statistics, sys
from collections import defaultdict
runs = defaultdict(list)
for line in open(sys.argv[1]):
    n, size, _, rps = line.split()
    runs[(n, int(size))].append(float(rps))
print(f"\n### Agent A/B (`bench/ab.sh`): {sys.argv[4]} alternating wrk runs of {sys.argv[5]} s each; {sys.argv[6]}\n")
print(f"A = `{sys.argv[2]}`; B = `{sys.argv[3]}`\n")
print("| body | A req/s (median) | B req/s (median) | B / A | runs where B > A |")
print("|---|---:|---:|---:|---:|")
for size in sorted({s for _, s in runs}):
    a, b = runs[("A", size)], runs[("B", size)]
    wins = sum(y > x for x, y in zip(a, b))
    ma, mb = statistics.median(a), statistics.median(b)
    print(f"| {size} B | {ma:,.0f} | {mb:,.0f} | {mb / ma:.3f} | {wins} of {len(a)} |")
PY
echo "written: $out"

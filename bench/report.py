"""Renders bench/proxy.sh's raw results as Markdown tables: medians over the
repetitions, with the spread (min-max), and ratios against haproxy and the
direct connection."""

import json
import platform
import statistics
import subprocess
import sys
from collections import defaultdict


def machine():
    model = "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    mem = ""
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) // 1024 // 1024} GiB"
    except OSError:
        pass
    return f"{model}, {cores} cores, {mem} RAM, Linux {platform.release()}"


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def spread(xs):
    return f"{min(xs):,.0f}–{max(xs):,.0f}" if xs else ""


# Each agent shape and the haproxy setup it compares with: one hop, two
# hops, two hops with mutual TLS between them.
FAIR = {"agent": "haproxy", "agent-l2l": "haproxy-chain", "agent-l2l-tls": "haproxy-chain-tls"}


def main(path, secs, lat_secs, reps, quiet="", layout=""):
    rows = [json.loads(line) for line in open(path)]
    tput = defaultdict(list)
    lat = defaultdict(list)
    for r in rows:
        if r["kind"] == "throughput":
            tput[(r["system"], r["size"])].append(r)
        else:
            lat[(r["system"], r["result"]["rate"])].append(r["result"])
    systems = []
    for r in rows:
        if r["system"] not in systems:
            systems.append(r["system"])

    print(f"### Proxy benchmark ({machine()})\n")
    print(
        f"`make bench-proxy` (bench/proxy.sh): {reps} repetitions, medians; throughput runs of "
        f"{secs} s, open-loop latency runs of {lat_secs} s; "
        f"{layout or 'wrk -t1 -c32 on CPU 0; each proxy with one worker thread, pinned with the upstream to CPU 1'}; "
        "loopback. *vs its haproxy*: the agent over the haproxy setup of the same shape "
        "(agent-l2l over haproxy-chain, agent-l2l-tls over haproxy-chain-tls).\n"
    )
    if quiet:
        print(f"Machine during the run: {quiet}.\n")
    print("**Max throughput (req/s, keep-alive)**\n")
    print("| system | 64 B | spread | 4 KiB | spread | vs haproxy (64 B) | vs its haproxy (64 B / 4 KiB) | vs direct (64 B) | RSS idle | RSS under load | CPU s / 100k req (64 B) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    base_h = med([r["rps"] for r in tput.get(("haproxy", 64), [])])
    base_d = med([r["rps"] for r in tput.get(("direct", 64), [])])
    for s in systems:
        small = [r["rps"] for r in tput.get((s, 64), [])]
        large = [r["rps"] for r in tput.get((s, 4096), [])]
        m64, m4k = med(small), med(large)
        idle = med([r["rss_idle_kib"] for r in tput.get((s, 64), [])])
        load = med([r["rss_load_kib"] for r in tput.get((s, 64), []) + tput.get((s, 4096), [])])
        cpu = med([r["cpu_s_per_100k"] for r in tput.get((s, 64), [])])
        fmt_kib = lambda k: "–" if k is None else f"{k / 1024:.1f} MiB"
        fair = "–"
        if s in FAIR and tput.get((FAIR[s], 64)):
            f64 = med([r["rps"] for r in tput[(FAIR[s], 64)]])
            f4k = med([r["rps"] for r in tput.get((FAIR[s], 4096), [])])
            fair = f"{m64 / f64:.2f}× / {m4k / f4k:.2f}×"
        print(
            f"| {s} | {m64:,.0f} | {spread(small)} | {m4k:,.0f} | {spread(large)} | "
            f"{m64 / base_h:.2f}× | {fair} | {m64 / base_d:.2f}× | {fmt_kib(idle)} | {fmt_kib(load)} | "
            f"{'–' if cpu is None else f'{cpu:.2f}'} |"
        )
    rates = sorted({rate for (_, rate) in lat})
    for rate in rates:
        print(f"\n**Latency at {rate:,} req/s, open loop (µs; added = over direct, medians)**\n")
        print("| system | p50 | p90 | p99 | p99.9 | added p50 | added p99 | errors | late |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        d = lat.get(("direct", rate), [])
        dp50, dp99 = med([x["p50_us"] for x in d]), med([x["p99_us"] for x in d])
        for s in systems:
            xs = lat.get((s, rate), [])
            if not xs:
                continue
            p = {k: med([x[k] for x in xs]) for k in ("p50_us", "p90_us", "p99_us", "p999_us")}
            errors = sum(x["errors"] for x in xs)
            late = sum(x["late"] for x in xs)
            print(
                f"| {s} | {p['p50_us']:,.0f} | {p['p90_us']:,.0f} | {p['p99_us']:,.0f} | {p['p999_us']:,.0f} | "
                f"{p['p50_us'] - dp50:+,.0f} | {p['p99_us'] - dp99:+,.0f} | {errors} | {late} |"
            )


if __name__ == "__main__":
    main(*sys.argv[1:7])

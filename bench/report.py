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


# Each agent shape and the haproxy setup it compares with: one hop (with
# and without a controller pushing deltas), two hops, two hops with mutual
# TLS between them.
FAIR = {
    "agent": "haproxy",
    "agent-deltas": "haproxy",
    "agent-l2l": "haproxy-chain",
    "agent-l2l-tls": "haproxy-chain-tls",
}


def main(path, secs, lat_secs, reps, quiet="", layout=""):
    every = [json.loads(line) for line in open(path)]
    rows = [r for r in every if r["kind"] in ("throughput", "latency")]
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
        "(agent and agent-deltas over haproxy, agent-l2l over haproxy-chain, agent-l2l-tls over "
        "haproxy-chain-tls). *agent-deltas*: the agent row's twin, following `bench-push`, a stand-in "
        "controller that changes the routed set (svc7) with a delta at a fixed interval (issue #15).\n"
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
    share = next((r for r in every if r["kind"] == "haproxy_share"), None)
    rates = sorted({rate for (_, rate) in lat})
    for rate in rates:
        of = ""
        if share and rate == share["rate"]:
            of = (
                f" ({share['share'] * 100:.0f} % of haproxy's max, {base_h:,.0f} req/s;"
                " one-hop systems: the two-hop shapes' max is below it)"
            )
        print(f"\n**Latency at {rate:,} req/s{of}, open loop (µs; added = over direct, medians)**\n")
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

    pushed(every, tput, lat, rates)
    zones([r for r in every if r["kind"] == "zones"], secs, lat_secs)


def pushed(every, tput, lat, rates):
    """The agent-deltas line (issue #15): the deltas bench-push sent during
    agent-deltas's own runs and how many of those the agent had ACKed by
    each run's end, and agent-deltas over agent, the same agent with no
    controller."""
    runs = [r for r in every if r.get("system") == "agent-deltas" and r.get("push_before")]
    if not runs:
        return
    sent = acked = nacks = 0
    for r in runs:
        b, a = r["push_before"], r["push_after"]
        n = a["deltas_sent"] - b["deltas_sent"]
        sent += n
        nacks += a["nacks"] - b["nacks"]
        if a["streams"] == b["streams"] and a["snapshots_sent"] == b["snapshots_sent"]:
            # One stream, deltas only: the run's deltas are versions
            # b.version + 1 … a.version, ACKed in order. (Counting the ACKs
            # that arrived would also count earlier deltas the agent was
            # still saving to disk when the run began.)
            acked += max(0, min(a["acked_version"], a["version"]) - b["version"])
        else:
            acked += a["deltas_acked"] - b["deltas_acked"]
    interval = runs[0]["push_after"]["interval_ms"]
    line = (
        f"\nagent-deltas: {sent:,} deltas pushed, one every {interval} ms, "
        f"{acked:,} acknowledged"
    )
    if nacks:
        line += f", {nacks} NACKed"
    whole = next((r for r in every if r["kind"] == "push"), None)
    if whole:
        b, a = whole["before"], whole["after"]
        line += (
            f" (during its {len(runs)} runs, ACKed by each run's end; over the whole measurement, "
            f"every system's runs: {a['deltas_sent'] - b['deltas_sent']:,} pushed, "
            f"{a['deltas_acked'] - b['deltas_acked']:,} ACKed, mesh version "
            f"{b['acked_version']:,} → {a['acked_version']:,})"
        )
    print(line + ".")
    tputs, lats = [], []
    for size, label in ((64, "64 B"), (4096, "4 KiB")):
        d = med([r["rps"] for r in tput.get(("agent-deltas", size), [])])
        a = med([r["rps"] for r in tput.get(("agent", size), [])])
        if d and a:
            tputs.append(f"{label} {d / a:.2f}×")
    for rate in rates:
        d, a = lat.get(("agent-deltas", rate), []), lat.get(("agent", rate), [])
        if d and a:
            added = lambda k: med([x[k] for x in d]) - med([x[k] for x in a])
            lats.append(f"at {rate:,} req/s p99 {added('p99_us'):+,.0f} µs, p99.9 {added('p999_us'):+,.0f} µs")
    if tputs or lats:
        print(
            f"agent-deltas over agent (the same agent, no controller): throughput {', '.join(tputs)}; "
            f"latency added {'; '.join(lats)}."
        )


AGENT_ZONE = "bench-a"


def zone_run(r):
    """One zones run: requests and body bytes each zone's upstreams served
    (their own counts), and the agent's zone counters, over the run."""
    b, a = r["before"], r["after"]
    up = {"near": [0, 0], "far": [0, 0]}
    for addr, x in a["upstreams"].items():
        side = "near" if x["zone"] == AGENT_ZONE else "far"
        up[side][0] += x["requests"] - b["upstreams"][addr]["requests"]
        up[side][1] += x["body_bytes"] - b["upstreams"][addr]["body_bytes"]
    ag = {"near": 0.0, "far": 0.0}
    for key, v in a["agent_zone_requests"].items():
        src, dst = key.split(">")
        if src == AGENT_ZONE:
            ag["near" if dst == AGENT_ZONE else "far"] += v - b["agent_zone_requests"].get(key, 0.0)
    total_req, total_bytes = up["near"][0] + up["far"][0], up["near"][1] + up["far"][1]
    ag_total = ag["near"] + ag["far"]
    if r["load"] == "wrk":
        errors = r["errors"]
    else:
        errors = r["result"]["errors"]
    return {
        "requests": total_req,
        "far_req": up["far"][0] / total_req if total_req else None,
        "bytes": total_bytes,
        "far_bytes": up["far"][1] / total_bytes if total_bytes else None,
        "agent_total": ag_total,
        "agent_far": ag["far"] / ag_total if ag_total else None,
        "agent_far_bytes": ag["far"] * r["size"],
        "errors": errors,
    }


def zones(rows, secs, lat_secs):
    """The cross-zone rows (issue #18)."""
    if not rows:
        return
    runs = defaultdict(list)
    for r in rows:
        load = r["result"]["rate"] if r["load"] == "open" else "wrk"
        runs[(r["mode"], load)].append(zone_run(r))
    pc = lambda x: "–" if x is None else f"{x * 100:.1f} %"
    rng = lambda xs: "" if len(xs) < 2 else f" ({min(xs) * 100:.1f}–{max(xs) * 100:.1f})"
    mib = lambda b: f"{b / 1024 / 1024:,.1f} MiB"
    print("\n### Cross-zone traffic (issue #18)\n")
    print(
        f"One agent in zone {AGENT_ZONE} (`--availability-zone`), direct mode, one worker thread, in front of four "
        "upstreams on loopback: two in bench-a, two in bench-b (endpoint meta `availability_zone`). The same "
        "service twice: `zones` (zone-aware balancing on, the default) and `zones-off` (its service policy: "
        "`zone_aware: false`; the default balancer, p2c peak-EWMA, over all four). 4 KiB responses. Crossed = "
        "served by a bench-b endpoint. *Upstreams*: each upstream's own count of requests and body bytes; "
        "*agent*: `ecsmesh_agent_zone_requests_total{src_zone,dst_zone}` (attempts); its bytes are its "
        "cross-zone attempts × the 4,096-byte response body (the agent's byte counters are per listener, "
        "not per zone). With zone-aware balancing off the agent "
        "makes no zone split and that counter does not move: the upstreams' counts are the figure. Medians over "
        f"the repetitions (range); open-loop runs of {lat_secs} s (bench-load, 32 connections), wrk runs of "
        f"{secs} s (closed loop, 32 connections: saturation, the upstreams and the agent sharing one CPU).\n"
    )
    print("| zone-aware | load | requests per run | crossed zones: share of requests (upstreams) "
          "| crossed zones: body bytes per run, share (upstreams) | crossed zones: share of attempts (agent) "
          "| crossed zones: bytes per run (agent: attempts × 4 KiB) | client errors |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    loads = sorted({k[1] for k in runs if k[1] != "wrk"}) + ["wrk"]
    for mode in ("on", "off"):
        for load in loads:
            xs = runs.get((mode, load), [])
            if not xs:
                continue
            label = f"open loop, {load:,} req/s" if load != "wrk" else "wrk -c32 (saturated)"
            fr = [z["far_req"] for z in xs if z["far_req"] is not None]
            fb = [z["far_bytes"] for z in xs if z["far_bytes"] is not None]
            fa = [z["agent_far"] for z in xs if z["agent_far"] is not None]
            far_bytes = med([z["bytes"] * z["far_bytes"] for z in xs if z["far_bytes"] is not None])
            ab = med([z["agent_far_bytes"] for z in xs]) if fa else None
            print(
                f"| {mode} | {label} | {med([z['requests'] for z in xs]):,.0f} | {pc(med(fr))}{rng(fr)} | "
                f"{'–' if far_bytes is None else mib(far_bytes)}, {pc(med(fb))} | "
                f"{pc(med(fa)) + rng(fa) if fa else '– (not counted when off)'} | "
                f"{'–' if ab is None else mib(ab)} | {sum(z['errors'] for z in xs)} |"
            )
    print(
        "\nGoal (2 zones × 2 endpoints, agent in zone a): ≥ 95 % of requests stay in zone a while its endpoints "
        "are healthy. Stayed (upstreams' counts, median over repetitions, worst run): "
        + "; ".join(
            f"{'wrk (saturated)' if load == 'wrk' else f'{load:,} req/s'}: on "
            f"{100 - med(on) * 100:.1f} % (worst {100 - max(on) * 100:.1f} %), off {100 - med(off) * 100:.1f} %"
            for load in loads
            for on, off in [
                ([z["far_req"] for z in runs.get(("on", load), []) if z["far_req"] is not None],
                 [z["far_req"] for z in runs.get(("off", load), []) if z["far_req"] is not None])
            ]
            if on and off
        )
        + ". With zone-aware balancing on, a first attempt leaves the zone only when the near endpoint picked "
        "has requests queued and costs more than twice a far one (peak-EWMA × pending: `SPILL_FACTOR` in "
        "agent/src/routes.rs), so the share that crosses grows with load."
    )


if __name__ == "__main__":
    main(*sys.argv[1:7])

"""Renders bench-control's JSON (bench/control.sh) as Markdown tables.

    python3 bench/report_control.py RESULTS.json [QUIET-BEFORE] [QUIET-AFTER]
"""

import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from report import machine  # noqa: E402  (same directory)


def pct(xs, q):
    """Nearest-rank percentile (q in 0..100)."""
    xs = sorted(xs)
    if not xs:
        return 0.0
    return xs[min(len(xs) - 1, round((len(xs) - 1) * q / 100))]


def ms(x):
    return "–" if x is None else f"{x:.0f} ms"


def mib(kib):
    return f"{kib / 1024:.0f} MiB"


def main(path, before="", after=""):
    doc = json.load(open(path))
    runs = doc["runs"]
    cmd = doc["command"]
    print(f"### Control-plane benchmark ({machine()})\n")
    print(
        f"`make bench-control` (bench/control.sh). Simulated ECS: the project's patched moto 5.2.5 "
        f"(tests/harness) with ListTasks paged as ECS pages it (100 a page), holding "
        f"**{doc['tasks']:,} tasks** ({doc['services']} services) on **{doc['instances']} container "
        f"instances** (populated in {doc['populate_s']:.0f} s). The real `ecsmesh-controller` binary "
        f"(release), `--resync-interval {doc['resync_interval']}`, "
        + (f"pinned to CPU {doc['controller_cpus']}, the emulator to CPU {doc.get('emulator_cpus')}, the "
           "simulated agents wherever the kernel puts them. "
           if doc["controller_cpus"] else "not pinned. ")
        + "Each simulated agent has its own HTTP/2 connection and `Mesh.Stream`, applies every "
        f"snapshot and delta with `ecsmesh-state` and ACKs it (no routing table, no disk write). "
        f"Run took {doc['wall_s']:.0f} s.\n"
    )
    if before or after:
        print(f"Machine before the run: {before}; after: {after}.\n")
    print(f"Command: `{cmd}`\n")

    print("**Summary**\n")
    print(
        "| agents | controller RSS: ready / agents connected / end (peak) | connect every agent: wall (controller CPU) "
        "| CPU per steady resync | ECS calls per steady resync | change visible → all agents ACK: p50 / p99 over changes (n) "
        "| every agent's ACK after a change: p50 / p99 | dtab write → all agents ACK: p50 / p99 over writes (n) "
        "| every agent's ACK after a dtab write: p50 / p99 |"
    )
    print("|---:|---|---|---:|---:|---|---|---|---|")
    for r in runs:
        ch = [c["all_acked_ms"] for c in r["changes"]]
        dt = [c["all_acked_ms"] for c in r["dtab_updates"]]
        calls = sum(r["calls_per_resync"].values())
        pooled = lambda p: "–" if not p else f"{p['p50_ms']:.0f} / {p['p99_ms']:.0f} ms ({p['n']:,})"
        print(
            f"| {r['agents']:,} | {mib(r['rss_ready_kib'])} / {mib(r['rss_connected_kib'])} / "
            f"{mib(r['rss_end_kib'])} ({mib(r['hwm_end_kib'])}) | {r['connect_s']:.1f} s "
            f"({r['connect_cpu_s']:.1f} s) | {r['cpu_s_per_resync']:.2f} s | {calls:.0f} | "
            f"{pct(ch, 50):.0f} / {pct(ch, 99):.0f} ms ({len(ch)}) | {pooled(r.get('change_acks'))} | "
            f"{pct(dt, 50):.0f} / {pct(dt, 99):.0f} ms ({len(dt)}) | {pooled(r.get('dtab_acks'))} |"
        )
    print(
        "\nWith a handful of changes, p99 over changes is their maximum; the pooled columns take every "
        "agent's ACK of every change (n = agents × changes). Controller memory per connected agent "
        "((RSS connected − RSS ready) / agents): "
        + ", ".join(
            f"{(r['rss_connected_kib'] - r['rss_ready_kib']) / r['agents']:,.0f} KiB at {r['agents']:,}"
            for r in runs
        )
        + "."
    )

    print("\n**Bytes per agent** (protobuf `ControllerMessage`; gRPC adds 5 bytes a message)\n")
    print("| agents | snapshot (endpoints) | one-endpoint change (median of changes) | dtab update | snapshot / one-endpoint delta |")
    print("|---:|---:|---:|---:|---:|")
    for r in runs:
        ch = statistics.median([c["bytes_median"] for c in r["changes"]]) if r["changes"] else 0
        dt = statistics.median([c["bytes_median"] for c in r["dtab_updates"]]) if r["dtab_updates"] else 0
        ratio = f"{r['snapshot_bytes'] / ch:,.0f}×" if ch else "–"
        print(
            f"| {r['agents']:,} | {r['snapshot_bytes']:,} B ({r['snapshot_endpoints']:,}) | {ch:,.0f} B | "
            f"{dt:,.0f} B | {ratio} |"
        )

    first = runs[0]
    ops = sorted(set(first["first_resync_calls"]) | set().union(*(r["calls_per_resync"] for r in runs)))
    print("\n**ECS/EC2 API calls per resync, by operation** (the controller's `ecsmesh_controller_api_calls_total`)\n")
    head = " | ".join(f"steady, {r['agents']:,} agents" for r in runs)
    print(f"| operation | first resync (cold caches) | {head} |")
    print("|---|---:|" + "---:|" * len(runs))
    for op in ops:
        steady = " | ".join(f"{r['calls_per_resync'].get(op, 0):.0f}" for r in runs)
        print(f"| {op} | {first['first_resync_calls'].get(op, 0)} | {steady} |")
    reads = [x for r in runs for x in r["resync_read_s"]]
    if reads:
        print(
            f"\nA steady resync reads for {statistics.median(reads):.1f} s (median, first call to last answer, "
            f"as the emulator saw it: moto answers a 100-task DescribeTasks in ~50 ms). The controller's "
            f"first resync (start to /ready) took " + ", ".join(f"{r['first_resync_s']:.1f} s" for r in runs) + "."
        )

    print(
        "\n**Each change** (visible = the emulator sent the last answer of the resync that read it: the last "
        "resync to end before the first agent's ACK)\n"
    )
    print(
        "| agents | change | delta: upserted / removed / dtabs | bytes per agent | visible → all ACK "
        "| per-agent ACK p50 / p99 | controller: reconcile / publish → ACK (means) | change made → all ACK |"
    )
    print("|---:|---|---|---:|---:|---|---|---:|")
    for r in runs:
        for c in r["changes"] + r["dtab_updates"]:
            made = c.get("change_to_all_acked_ms")
            label = c["kind"] if c["kind"] != "dtab update" else "dtab update (from the UpdateDtab call)"
            print(
                f"| {r['agents']:,} | {label} | {c['upserted']} / {c['removed']} / {c['dtabs']} | "
                f"{c['bytes_median']:,} B | {c['all_acked_ms']:.0f} ms | "
                f"{c['per_agent']['p50_ms']:.0f} / {c['per_agent']['p99_ms']:.0f} ms | "
                f"{ms(c.get('reconcile_mean_ms'))} / {ms(c.get('publish_to_ack_mean_ms'))} | "
                f"{'–' if made is None else f'{made / 1000:.1f} s'} |"
            )


if __name__ == "__main__":
    main(*sys.argv[1:4])

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
        "| every agent's ACK after a dtab write: p50 / p99 | policy write → all agents ACK: p50 / p99 over writes (n) "
        "| every agent's ACK after a policy write: p50 / p99 |"
    )
    print("|---:|---|---|---:|---:|---|---|---|---|---|---|")
    for r in runs:
        ch = [c["all_acked_ms"] for c in r["changes"]]
        dt = [c["all_acked_ms"] for c in r["dtab_updates"]]
        po = [c["all_acked_ms"] for c in r.get("policy_updates", [])]
        calls = sum(r["calls_per_resync"].values())
        pooled = lambda p: "–" if not p else f"{p['p50_ms']:.0f} / {p['p99_ms']:.0f} ms ({p['n']:,})"
        print(
            f"| {r['agents']:,} | {mib(r['rss_ready_kib'])} / {mib(r['rss_connected_kib'])} / "
            f"{mib(r['rss_end_kib'])} ({mib(r['hwm_end_kib'])}) | {r['connect_s']:.1f} s "
            f"({r['connect_cpu_s']:.1f} s) | {r['cpu_s_per_resync']:.2f} s | {calls:.0f} | "
            f"{pct(ch, 50):.0f} / {pct(ch, 99):.0f} ms ({len(ch)}) | {pooled(r.get('change_acks'))} | "
            f"{pct(dt, 50):.0f} / {pct(dt, 99):.0f} ms ({len(dt)}) | {pooled(r.get('dtab_acks'))} | "
            + (f"{pct(po, 50):.0f} / {pct(po, 99):.0f} ms ({len(po)})" if po else "–")
            + f" | {pooled(r.get('policy_acks'))} |"
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
    print("| agents | snapshot (endpoints) | one-endpoint change (median of changes) | dtab update | policy update "
          "| snapshot / one-endpoint delta |")
    print("|---:|---:|---:|---:|---:|---:|")
    for r in runs:
        ch = statistics.median([c["bytes_median"] for c in r["changes"]]) if r["changes"] else 0
        dt = statistics.median([c["bytes_median"] for c in r["dtab_updates"]]) if r["dtab_updates"] else 0
        po = [c["bytes_median"] for c in r.get("policy_updates", [])]
        po = f"{statistics.median(po):,.0f} B" if po else "–"
        ratio = f"{r['snapshot_bytes'] / ch:,.0f}×" if ch else "–"
        print(
            f"| {r['agents']:,} | {r['snapshot_bytes']:,} B ({r['snapshot_endpoints']:,}) | {ch:,.0f} B | "
            f"{dt:,.0f} B | {po} | {ratio} |"
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
        "| agents | change | delta: upserted / removed / dtabs / policies | bytes per agent | visible → all ACK "
        "| per-agent ACK p50 / p99 | controller: reconcile / publish → ACK (means) | change made → all ACK |"
    )
    print("|---:|---|---|---:|---:|---|---|---:|")
    for r in runs:
        for c in r["changes"] + r["dtab_updates"] + r.get("policy_updates", []):
            made = c.get("change_to_all_acked_ms")
            label = {
                "dtab update": "dtab update (from the UpdateDtab call)",
                "policy update": "policy update (from the UpdatePolicy call)",
            }.get(c["kind"], c["kind"])
            print(
                f"| {r['agents']:,} | {label} | {c['upserted']} / {c['removed']} / {c['dtabs']} / "
                f"{c.get('policies', 0)} | "
                f"{c['bytes_median']:,} B | {c['all_acked_ms']:.0f} ms | "
                f"{c['per_agent']['p50_ms']:.0f} / {c['per_agent']['p99_ms']:.0f} ms | "
                f"{ms(c.get('reconcile_mean_ms'))} / {ms(c.get('publish_to_ack_mean_ms'))} | "
                f"{'–' if made is None else f'{made / 1000:.1f} s'} |"
            )
    policies(doc)
    goals(doc)


def policies(doc):
    """The issue #18 row: a policy write against a dtab write, same runs."""
    runs = [r for r in doc["runs"] if r.get("policy_updates")]
    if not runs:
        return
    print("\n### Service policies (issue #18)\n")
    print(
        "Policy writes go through `PolicyAdmin.CreatePolicy`/`UpdatePolicy` (what `ecsmeshctl policy set|update` "
        "calls) on `/svc/bench`, each a new total timeout; dtab writes through `DtabAdmin` on the \"default\" "
        "namespace; the two taken in turn, 200 ms apart, against the same controller and agents. Each is timed "
        "from the call to the last agent's ACK of the version carrying it (a delta with one policy, or one dtab).\n"
    )
    print("| goal | agents | dtab write → all ACK: p50 / p99 (n) | policy write → all ACK: p50 / p99 (n) "
          "| every agent's ACK, dtab / policy: p99 | policy p99 / dtab p99 |")
    print("|---|---:|---|---|---|---:|")
    for r in runs:
        dt = [c["all_acked_ms"] for c in r["dtab_updates"]]
        po = [c["all_acked_ms"] for c in r["policy_updates"]]
        da, pa = r.get("dtab_acks") or {}, r.get("policy_acks") or {}
        ratio = f"{pct(po, 99) / pct(dt, 99):.2f}×" if dt and pct(dt, 99) else "–"
        print(
            f"| A policy change reaches every agent with the same p99 as a dtab change | {r['agents']:,} | "
            f"{pct(dt, 50):.0f} / {pct(dt, 99):.0f} ms ({len(dt)}) | {pct(po, 50):.0f} / {pct(po, 99):.0f} ms "
            f"({len(po)}) | {da.get('p99_ms', 0):.0f} / {pa.get('p99_ms', 0):.0f} ms | {ratio} |"
        )
    print(
        "\nWith n writes, p99 over writes is their maximum (n < 100); the per-agent column pools every agent's "
        "ACK of every write (agents × writes)."
    )


def goals(doc):
    """The issue #17 rows: the event path and the steady-state calls with events."""
    ev, steady = doc.get("event_path"), doc.get("steady") or []
    if not ev and not steady:
        return
    print("\n### With ECS events (issue #17)\n")
    print(
        "The emulator's rule delivers the harness's \"ECS Task State Change\" events (detail.version, "
        "containers with their network bindings, as `tests/harness/moto_ecs.py` emits them on every task "
        "start and stop) to a fresh SQS queue per run; the controller long-polls it "
        "(`--ecs-events-queue-url`). moto answers a long poll from short polls 50 ms apart, so up to "
        "50 ms of each event-path figure is the emulator's, not SQS's.\n"
    )
    rows = []
    if ev:
        oc = ev.get("over_changes") or {}
        rows.append((
            f"Event path: event on the queue → all {ev['agents']:,} agents ACKed, p99 ≤ 1 s at "
            f"{doc['tasks']:,} tasks",
            f"p50 {oc.get('p50_ms', 0):.0f} ms / p99 {oc.get('p99_ms', 0):.0f} ms over {oc.get('n', 0)} changes",
        ))
    by = {s["replicas"]: s for s in steady}
    for s in steady:
        comp = s.get("computed_10min_calls_per_s")
        rows.append((
            f"Steady-state ECS+EC2 calls, {s['replicas']} replica{'s' if s['replicas'] > 1 else ''}, "
            "≤ 1 call/s averaged over 10 minutes",
            f"{s['calls_per_s']:.2f} calls/s measured ({s['calls']} calls in {s['window_s']:.0f} s); "
            + ("10-min average computed: –" if comp is None else f"{comp:.2f} calls/s computed"),
        ))
    if 1 in by and 3 in by and by[1]["calls"]:
        ratio = by[3]["calls"] / by[1]["calls"]
        rows.append((
            "Calls do not grow with replicas: 3 vs 1 within ±10 %",
            f"{by[3]['calls']} vs {by[1]['calls']} calls: {ratio:.2f}× ({(ratio - 1) * 100:+.0f} %)",
        ))
    print("| goal | measured |")
    print("|---|---|")
    for goal, got in rows:
        print(f"| {goal} | {got} |")

    if ev:
        oc, pooled = ev.get("over_changes") or {}, ev.get("change_acks") or {}
        calls = sum(ev["calls_during_changes"].values())
        print(
            f"\n**Event path** (one controller, `--full-resync-interval {ev['full_resync_interval']}` so no resync "
            f"runs: the event is what is measured; {ev['agents']:,} simulated agents, connected in "
            f"{ev['connect_s']:.0f} s; each change scales a service up by one task, the next back down: one task "
            f"event each; timed from the moment the emulator had put the event on the queue)\n"
        )
        print("| agents | tasks | event on the queue → all agents ACK: p50 / p99 over changes (n) "
              "| every agent's ACK: p50 / p99 (n) | ECS+EC2 calls during the changes | events (controller) |")
        print("|---:|---:|---|---|---:|---|")
        res = ", ".join(f"{k} {v:.0f}" for k, v in ev["events_by_result"].items()) or "–"
        print(
            f"| {ev['agents']:,} | {doc['tasks']:,} | {oc.get('p50_ms', 0):.0f} / {oc.get('p99_ms', 0):.0f} ms "
            f"({oc.get('n', 0)}) | {pooled.get('p50_ms', 0):.0f} / {pooled.get('p99_ms', 0):.0f} ms "
            f"({pooled.get('n', 0):,}) | {calls} | {res} |"
        )
        print("\n| change (its event: task, lastStatus, detail.version) | delta: upserted / removed | bytes per agent "
              "| event → all ACK | per-agent ACK p50 / p99 | controller: reconcile / publish → ACK (means) |")
        print("|---|---|---:|---:|---|---|")
        for c in ev["changes"]:
            print(
                f"| {c['kind']} | {c['upserted']} / {c['removed']} | {c['bytes_median']:,} B | "
                f"{c['all_acked_ms']:.0f} ms | {c['per_agent']['p50_ms']:.0f} / {c['per_agent']['p99_ms']:.0f} ms | "
                f"{ms(c.get('reconcile_mean_ms'))} / {ms(c.get('publish_to_ack_mean_ms'))} |"
            )

    if steady:
        print(
            f"\n**Steady-state ECS+EC2 calls with events** (replicas on a DynamoDB store sharing the leader lease, "
            f"events on, the default full resync ({steady[0]['full_resync_interval_s'] / 60:.0f} min); no agents; "
            f"the window opens after the leader's first, cold resync and holds one change every "
            f"{doc.get('steady_churn_s', 0)} s, delivered as an event; it is extended until a full resync under "
            f"way at its end has finished. Calls: the sum over replicas of each one's "
            f"`ecsmesh_controller_api_calls_total{{api=\"ecs\"|\"ec2\"}}`)\n"
        )
        print("| replicas | `/leader` at the window's start → end | window | changes (events) | ECS+EC2 calls "
              "(per replica) | calls/s measured | full resyncs in the window: calls each, read time "
              "| 10-min average, computed | other calls (all replicas) |")
        print("|---:|---|---:|---:|---|---:|---|---:|---|")
        for s in steady:
            other = ", ".join(f"{k} {v}" for k, v in s["by_operation"].items()
                              if not k.startswith(("ecs:", "ec2:"))) or "–"
            per = s.get("computed_calls_per_resync")
            reads = ", ".join(f"{r:.1f} s" for r in s["resync_read_s"]) or "–"
            comp = s.get("computed_10min_calls_per_s")
            print(
                f"| {s['replicas']} | {', '.join(s['roles_start'])} → {', '.join(s['roles_end'])} | "
                f"{s['window_s']:.0f} s (asked {s['window_asked_s']:.0f} s) | {s['churn_changes']} | "
                f"{s['calls']} ({' + '.join(str(c) for c in s['calls_per_replica'])}; emulator log "
                f"{s['emulator_calls']}) | {s['calls_per_s']:.2f} | {s['full_resyncs']}: "
                f"{'–' if per is None else f'{per:.0f}'}, {reads} | "
                f"{'–' if comp is None else f'{comp:.2f} calls/s'} | {other} |"
            )
        print(
            "\nThe computed 10-minute average is not a measurement: a full resync's calls (ListTasks, "
            "DescribeTasks, ListContainerInstances of DRAINING instances) once per (interval + the resync's own "
            "duration, as the next is scheduled from its end), plus the window's other ECS+EC2 calls per second. "
            "A window that opens just after a resync holds one resync per 5 minutes at most, so the measured rate "
            "over a 10-minute window can be below the long-run one; the computed figure is the long-run one."
        )
        ops = sorted({k for s in steady for k in s["by_operation"]})
        head = " | ".join(f"{s['replicas']} replica{'s' if s['replicas'] > 1 else ''}" for s in steady)
        print(f"\n| operation (all replicas, in the window) | {head} |")
        print("|---|" + "---:|" * len(steady))
        for op in ops:
            print(f"| {op} | " + " | ".join(str(s["by_operation"].get(op, 0)) for s in steady) + " |")


if __name__ == "__main__":
    main(*sys.argv[1:4])

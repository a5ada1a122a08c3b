//! The control-plane benchmark (`make bench-control`, see `bench/README.md`).
//!
//! A simulated ECS (the project's patched moto, ListTasks paged as in ECS)
//! holds `--services` × `--tasks-per-service` tasks on `--instances`
//! container instances. For each `--agents` count, the real controller
//! binary starts against it and that many simulated agents connect. Then:
//! - the first resync and the connection of every agent (snapshot sizes);
//! - `--steady-resyncs` resyncs with nothing changing: controller CPU per
//!   resync and ECS calls per resync by operation;
//! - `--changes` changes in the emulator (scale a service up, stop a task,
//!   scale it down, in turn), each made between two resyncs: the time from
//!   the end of the resync that read it (the moment it became visible to the
//!   controller) to every agent's ACK, and the bytes each agent got;
//! - `--dtab-updates` dtab writes through `DtabAdmin.UpdateDtab` and
//!   `--policy-updates` service-policy writes through
//!   `PolicyAdmin.UpdatePolicy` (issue #18), taken in turn so both see the
//!   same machine: the time from the call to every agent's ACK, and the
//!   bytes.
//!
//! Then, with ECS events (`events.rs`): the event path (event on the queue
//! → every agent ACKed, `--event-agents` agents) and the steady-state
//! ECS+EC2 calls of `--steady-replicas` controllers on a DynamoDB store.
//!
//! Writes one JSON document (`--out`); `bench/report_control.py` renders it.
//! Loopback only; every wait is bounded.

mod controller;
mod emulator;
mod events;
mod fleet;
mod http;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, bail};
use clap::Parser;
use ecsmesh_proto::v1 as pb;
use serde::Serialize;
use serde_json::json;

use crate::controller::{Controller, Samples, Usage};
use crate::emulator::{Emulator, Log, Population, resyncs, unix_now};
use crate::fleet::{Fleet, Identity};

#[derive(Debug, Parser)]
#[command(about = "The control-plane benchmark: the controller at scale against a simulated ECS")]
struct Args {
    /// The ecsmesh-controller binary.
    #[arg(long)]
    controller: PathBuf,
    /// The venv's Python (moto 5.2.5, from `make deps`).
    #[arg(long)]
    python: PathBuf,
    /// bench/moto_bench.py.
    #[arg(long)]
    emulator: PathBuf,
    /// Agent counts, one controller run each.
    #[arg(long, value_delimiter = ',', default_value = "100,1000")]
    agents: Vec<usize>,
    #[arg(long, default_value_t = 500)]
    instances: usize,
    #[arg(long, default_value_t = 200)]
    services: usize,
    #[arg(long, default_value_t = 50)]
    tasks_per_service: usize,
    /// The controller's --resync-interval.
    #[arg(long, default_value = "1s")]
    resync_interval: String,
    #[arg(long, default_value_t = 3)]
    steady_resyncs: usize,
    #[arg(long, default_value_t = 6)]
    changes: usize,
    #[arg(long, default_value_t = 10)]
    dtab_updates: usize,
    /// Service-policy writes (`PolicyAdmin`), in turn with the dtab writes.
    #[arg(long, default_value_t = 10)]
    policy_updates: usize,
    /// Agents connecting at once (each waits for its first snapshot).
    #[arg(long, default_value_t = 100)]
    connect_concurrency: usize,
    /// CPUs to pin the controller to (taskset -c), e.g. "1".
    #[arg(long)]
    controller_cpus: Option<String>,
    /// CPUs to pin the emulator to (taskset -c), e.g. "0".
    #[arg(long)]
    emulator_cpus: Option<String>,
    /// Agents following the controller in the event path (0 changes: skip it).
    #[arg(long, default_value_t = 1000)]
    event_agents: usize,
    /// Changes delivered as ECS events (scale up, then back down, in turn).
    #[arg(long, default_value_t = 20)]
    event_changes: usize,
    /// Controller replicas of each steady-state call count (0: skip).
    #[arg(long, value_delimiter = ',', default_value = "1,3")]
    steady_replicas: Vec<usize>,
    /// The steady-state window, seconds: long enough to hold one full
    /// resync (5 min apart) after the first.
    #[arg(long, default_value_t = 330)]
    steady_window_s: u64,
    /// One change (delivered as an event) every this many seconds of the
    /// window; 0: none.
    #[arg(long, default_value_t = 30)]
    steady_churn_s: u64,
    /// Where to write the JSON results.
    #[arg(long)]
    out: PathBuf,
}

/// How long any one phase may take before the run gives up.
const PHASE_TIMEOUT: Duration = Duration::from_mins(3);
/// Between two resyncs, the emulator sees no call for this long.
const QUIET: Duration = Duration::from_millis(300);

#[derive(Debug, Serialize)]
struct Percentiles {
    n: usize,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

fn percentiles(mut ms: Vec<f64>) -> Percentiles {
    ms.sort_by(f64::total_cmp);
    let at = |per_mille: usize| {
        if ms.is_empty() {
            return 0.0;
        }
        let rank = ((ms.len() - 1) * per_mille + 500) / 1000;
        ms[rank.min(ms.len() - 1)]
    };
    Percentiles {
        n: ms.len(),
        p50_ms: at(500),
        p99_ms: at(990),
        max_ms: ms.last().copied().unwrap_or(0.0),
    }
}

fn unix(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// One propagated change: from `from` (unix seconds) to each agent's ACK.
#[derive(Debug, Serialize)]
struct Propagation {
    kind: String,
    version: u64,
    /// Until the last agent ACKed.
    all_acked_ms: f64,
    /// Each agent's ACK.
    per_agent: Percentiles,
    /// Bytes each agent received for it (median and max).
    bytes_median: usize,
    bytes_max: usize,
    snapshots: usize,
    upserted: usize,
    removed: usize,
    dtabs: usize,
    policies: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    change_to_all_acked_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    emulator_read_ms: Option<f64>,
    /// The controller's own view (its histograms): mean time from
    /// publishing the version to an agent's ACK, and the reconcile runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    publish_to_ack_mean_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reconcile_mean_ms: Option<f64>,
    /// Every agent's ACK time (pooled into the run's percentiles).
    #[serde(skip)]
    acks_ms: Vec<f64>,
}

const PUSH_LATENCY: &str = "ecsmesh_controller_push_latency_seconds";
const RECONCILE: &str = "ecsmesh_controller_reconcile_duration_seconds";

impl Propagation {
    fn controller_view(&mut self, before: &Samples, after: &Samples) {
        self.publish_to_ack_mean_ms = after.mean_since(before, PUSH_LATENCY).map(|s| s * 1e3);
        self.reconcile_mean_ms = after.mean_since(before, RECONCILE).map(|s| s * 1e3);
    }
}

/// `got`: each agent's answer to the version (`Fleet::after`).
fn propagation(got: &[(fleet::Event, usize)], from: f64, kind: &str) -> Propagation {
    let acks: Vec<f64> = got
        .iter()
        .map(|(e, _)| (unix(e.acked_at) - from) * 1e3)
        .collect();
    let mut bytes: Vec<usize> = got.iter().map(|(_, b)| *b).collect();
    bytes.sort_unstable();
    let first = got.first().map(|(e, _)| e);
    let per_agent = percentiles(acks.clone());
    Propagation {
        kind: kind.to_owned(),
        version: first.map_or(0, |e| e.version),
        all_acked_ms: per_agent.max_ms,
        per_agent,
        bytes_median: bytes.get(bytes.len() / 2).copied().unwrap_or(0),
        bytes_max: bytes.last().copied().unwrap_or(0),
        snapshots: got.iter().filter(|(e, _)| e.snapshot).count(),
        upserted: first.map_or(0, |e| e.upserted),
        removed: first.map_or(0, |e| e.removed),
        dtabs: first.map_or(0, |e| e.dtabs),
        policies: first.map_or(0, |e| e.policies),
        change_to_all_acked_ms: None,
        emulator_read_ms: None,
        publish_to_ack_mean_ms: None,
        reconcile_mean_ms: None,
        acks_ms: acks,
    }
}

#[derive(Debug, Serialize, Default)]
struct Run {
    agents: usize,
    /// Controller start to /ready: the first resync, cold caches.
    first_resync_s: f64,
    first_resync_calls: BTreeMap<String, u64>,
    rss_ready_kib: u64,
    /// Every agent connected and ACKed its snapshot.
    connect_s: f64,
    connect_cpu_s: f64,
    snapshot_bytes: usize,
    snapshot_endpoints: usize,
    rss_connected_kib: u64,
    steady_resyncs: usize,
    cpu_s_per_resync: f64,
    calls_per_resync: BTreeMap<String, f64>,
    /// The emulator's view: first call to last answer of each steady resync.
    resync_read_s: Vec<f64>,
    rss_steady_kib: u64,
    changes: Vec<Propagation>,
    dtab_updates: Vec<Propagation>,
    policy_updates: Vec<Propagation>,
    /// Every agent's ACK over every change (visible → ACK), every dtab
    /// update and every policy update (call → ACK).
    change_acks: Option<Percentiles>,
    dtab_acks: Option<Percentiles>,
    policy_acks: Option<Percentiles>,
    rss_end_kib: u64,
    hwm_end_kib: u64,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    ecsmesh_bench::init_tracing();
    let args = Args::parse();
    let started = Instant::now();

    tracing::info!("starting the emulator");
    let emulator = Emulator::start(&args.python, &args.emulator, args.emulator_cpus.as_deref())?;
    tracing::info!(
        instances = args.instances,
        tasks = args.services * args.tasks_per_service,
        "populating the emulator (about 25 s for 10,000 tasks)"
    );
    let pop = emulator.populate(
        &args.python,
        &args.emulator,
        args.instances,
        args.services,
        args.tasks_per_service,
    )?;
    tracing::info!(
        tasks = pop.tasks,
        instances = pop.instances,
        seconds = pop.instances_seconds + pop.tasks_seconds,
        "emulator populated"
    );
    if pop.tasks != args.services * args.tasks_per_service {
        bail!(
            "the emulator placed {} tasks, not {}",
            pop.tasks,
            args.services * args.tasks_per_service
        );
    }

    let mut runs = Vec::new();
    let mut desired: BTreeMap<String, usize> = pop
        .services
        .iter()
        .map(|s| (s.clone(), args.tasks_per_service))
        .collect();
    for &n in &args.agents {
        tracing::info!(agents = n, "controller run");
        runs.push(run(&args, &emulator, &pop, &mut desired, n).await?);
    }
    // After the polling runs, so their changes are not queued.
    let mut event_path = None;
    if args.event_changes > 0 {
        tracing::info!(agents = args.event_agents, "event path");
        event_path = Some(events::event_path(&args, &emulator, &pop, &mut desired).await?);
    }
    let mut steady_runs = Vec::new();
    for (i, &n) in args
        .steady_replicas
        .iter()
        .enumerate()
        .filter(|(_, n)| **n > 0)
    {
        tracing::info!(replicas = n, "steady-state calls with events");
        steady_runs.push(events::steady(&args, &emulator, &pop, &mut desired, (i, n)).await?);
    }

    let doc = json!({
        "command": std::env::args().collect::<Vec<_>>().join(" "),
        "instances": pop.instances,
        "services": pop.services.len(),
        "tasks": pop.tasks,
        "populate_s": pop.instances_seconds + pop.tasks_seconds,
        "resync_interval": args.resync_interval,
        "controller_cpus": args.controller_cpus,
        "emulator_cpus": args.emulator_cpus,
        "wall_s": started.elapsed().as_secs_f64(),
        "runs": runs,
        "event_path": event_path,
        "steady_window_s": args.steady_window_s,
        "steady_churn_s": args.steady_churn_s,
        "steady": steady_runs,
    });
    std::fs::write(&args.out, serde_json::to_vec_pretty(&doc)?)
        .with_context(|| format!("writing {}", args.out.display()))?;
    tracing::info!(out = %args.out.display(), seconds = started.elapsed().as_secs(), "done");
    Ok(())
}

/// CPU seconds between two readings.
fn cpu_s(a: Usage, b: Usage) -> f64 {
    (b.cpu_seconds - a.cpu_seconds).max(0.0)
}

/// What one run shares between its phases.
struct Ctx<'a> {
    args: &'a Args,
    emulator: &'a Emulator,
    pop: &'a Population,
    log: Log,
    /// Where this run's calls start in the emulator's log.
    log_start: usize,
    ctl: Controller,
}

async fn run(
    args: &Args,
    emulator: &Emulator,
    pop: &Population,
    desired: &mut BTreeMap<String, usize>,
    agents: usize,
) -> anyhow::Result<Run> {
    let mut out = Run {
        agents,
        ..Run::default()
    };
    let mut log = Log::default();
    log.refresh(emulator).await?;
    let log_start = log.calls.len();

    let t0 = Instant::now();
    let mut ctl = Controller::start(
        &args.controller,
        args.controller_cpus.as_deref(),
        &emulator.endpoint,
        &pop.cluster,
        &["--resync-interval".to_owned(), args.resync_interval.clone()],
    )?;
    ctl.wait_ready(PHASE_TIMEOUT).await?;
    out.first_resync_s = t0.elapsed().as_secs_f64();
    out.first_resync_calls = ctl.metrics().await?.api_calls();
    out.rss_ready_kib = ctl.usage()?.rss_kib;
    tracing::info!(seconds = out.first_resync_s, "controller ready");
    let mut cx = Ctx {
        args,
        emulator,
        pop,
        log,
        log_start,
        ctl,
    };

    let fleet = connect(&cx, agents, &mut out).await?;
    steady(&mut cx, &mut out).await?;
    changes(&mut cx, &fleet, desired, &mut out).await?;
    admin_writes(&cx, &fleet, &mut out).await?;

    let pooled = |ps: &[Propagation]| {
        (!ps.is_empty()).then(|| percentiles(ps.iter().flat_map(|p| p.acks_ms.clone()).collect()))
    };
    out.change_acks = pooled(&out.changes);
    out.dtab_acks = pooled(&out.dtab_updates);
    out.policy_acks = pooled(&out.policy_updates);
    let end = cx.ctl.usage()?;
    out.rss_end_kib = end.rss_kib;
    out.hwm_end_kib = end.hwm_kib;
    drop(fleet);
    Ok(out)
}

/// `agents` identities cycling over the real hosts.
fn identities(hosts: &[emulator::Host], agents: usize) -> Vec<Identity> {
    (0..agents)
        .map(|i| {
            let h = &hosts[i % hosts.len()];
            Identity {
                instance_id: if i < hosts.len() {
                    h.instance_id.clone()
                } else {
                    format!("{}-{}", h.instance_id, i / hosts.len())
                },
                host_ip: h.ip.clone(),
            }
        })
        .collect()
}

/// Connects the simulated agents.
async fn connect(cx: &Ctx<'_>, agents: usize, out: &mut Run) -> anyhow::Result<Fleet> {
    let identities = identities(&cx.pop.hosts, agents);
    let before = cx.ctl.usage()?;
    let t1 = Instant::now();
    let fleet = Fleet::connect(
        &cx.ctl.grpc,
        &cx.pop.cluster,
        identities,
        cx.args.connect_concurrency,
        PHASE_TIMEOUT,
    )
    .await?;
    out.connect_s = t1.elapsed().as_secs_f64();
    let after = cx.ctl.usage()?;
    out.connect_cpu_s = cpu_s(before, after);
    out.rss_connected_kib = after.rss_kib;
    if let Some(first) = fleet.agents.first().map(|a| a.events())
        && let Some(s) = first.iter().find(|e| e.snapshot)
    {
        out.snapshot_bytes = s.bytes;
        out.snapshot_endpoints = s.upserted;
    }
    tracing::info!(
        agents,
        seconds = out.connect_s,
        snapshot_bytes = out.snapshot_bytes,
        "every agent holds the snapshot"
    );
    Ok(fleet)
}

/// Nothing changes for a few resyncs: CPU and API calls per resync.
async fn steady(cx: &mut Ctx<'_>, out: &mut Run) -> anyhow::Result<()> {
    let k = cx.args.steady_resyncs.max(1);
    let seen = cx.log.wait_idle(cx.emulator, QUIET, PHASE_TIMEOUT).await?;
    let (calls0, use0) = (cx.ctl.metrics().await?.api_calls(), cx.ctl.usage()?);
    cx.log
        .wait_resyncs(cx.emulator, seen + k, QUIET, PHASE_TIMEOUT)
        .await?;
    let (calls1, use1) = (cx.ctl.metrics().await?.api_calls(), cx.ctl.usage()?);
    let per = f64::from(u32::try_from(k)?);
    out.steady_resyncs = k;
    out.cpu_s_per_resync = cpu_s(use0, use1) / per;
    out.calls_per_resync = controller::diff(&calls1, &calls0)
        .into_iter()
        .map(|(op, v)| (op, f64::from(u32::try_from(v).unwrap_or(u32::MAX)) / per))
        .collect();
    out.rss_steady_kib = use1.rss_kib;
    // `seen` counts resyncs over the whole log, as wait_idle does.
    let rs = resyncs(&cx.log.calls);
    out.resync_read_s = rs
        .iter()
        .skip(seen)
        .take(k)
        .map(|r| r.end - r.start)
        .collect();
    tracing::info!(cpu_s = out.cpu_s_per_resync, calls = ?out.calls_per_resync, "steady resyncs");
    Ok(())
}

/// Changes in the emulator, each made between two resyncs: scale a
/// service up, stop one of its tasks (the scheduler replaces it), scale it
/// back down.
async fn changes(
    cx: &mut Ctx<'_>,
    fleet: &Fleet,
    desired: &mut BTreeMap<String, usize>,
    out: &mut Run,
) -> anyhow::Result<()> {
    let (emulator, cluster) = (cx.emulator, &cx.pop.cluster);
    let services = &cx.pop.services;
    for i in 0..cx.args.changes {
        cx.log.wait_idle(emulator, QUIET, PHASE_TIMEOUT).await?;
        let version = fleet.min_acked();
        let metrics0 = cx.ctl.metrics().await?;
        let service = &services[(i / 3 * 37 + 11) % services.len()];
        let count = desired
            .get(service)
            .copied()
            .unwrap_or(cx.args.tasks_per_service);
        let changed_at = unix_now();
        let kind = match i % 3 {
            0 => {
                emulator
                    .scale(cluster, service, u32::try_from(count + 1)?)
                    .await?;
                desired.insert(service.clone(), count + 1);
                format!("scale {service} {count}→{}", count + 1)
            }
            1 => {
                emulator.stop_one_task(cluster, service).await?;
                format!("stop a task of {service} (replaced)")
            }
            _ => {
                let to = count.saturating_sub(1);
                emulator.scale(cluster, service, u32::try_from(to)?).await?;
                desired.insert(service.clone(), to);
                format!("scale {service} {count}→{to}")
            }
        };
        fleet.wait_acked(version + 1, PHASE_TIMEOUT).await?;
        cx.log.refresh(emulator).await?;
        // The resync that made the change visible is the last one to end
        // before the first agent ACKed it (a publish follows a resync's end
        // by milliseconds; resyncs are seconds apart). Choosing by time, not
        // by "the first resync after the change", stays right when a resync
        // that was already under way reads the change.
        let got = fleet.after(version);
        let first_ack = got
            .iter()
            .map(|(e, _)| unix(e.acked_at))
            .fold(f64::INFINITY, f64::min);
        let rs = resyncs(&cx.log.calls[cx.log_start..]);
        let Some(visible) = rs.iter().rfind(|r| r.complete && r.end <= first_ack) else {
            bail!("no resync ended before the agents ACKed the change {kind}");
        };
        if visible.end < changed_at {
            bail!("the agents ACKed a version no resync after the change {kind} produced");
        }
        let mut p = propagation(&got, visible.end, &kind);
        p.change_to_all_acked_ms = Some(p.all_acked_ms + (visible.end - changed_at) * 1e3);
        p.emulator_read_ms = Some((visible.end - visible.start) * 1e3);
        p.controller_view(&metrics0, &cx.ctl.metrics().await?);
        tracing::info!(kind = %p.kind, all_acked_ms = p.all_acked_ms, bytes = p.bytes_median, "change propagated");
        out.changes.push(p);
    }
    Ok(())
}

/// Dtab writes through `DtabAdmin` and service-policy writes through
/// `PolicyAdmin` (the API `ecsmeshctl dtab|policy update` calls), in turn:
/// from the call to every agent's ACK of the version carrying it.
async fn admin_writes(cx: &Ctx<'_>, fleet: &Fleet, out: &mut Run) -> anyhow::Result<()> {
    let channel = tonic::transport::Endpoint::from_shared(cx.ctl.grpc.clone())?
        .connect()
        .await?;
    let mut dtabs = pb::dtab_admin_client::DtabAdminClient::new(channel.clone());
    let mut policies = pb::policy_admin_client::PolicyAdminClient::new(channel);
    let services = &cx.pop.services;
    let (mut dtab_version, mut policy_version) = (None, None);
    for i in 0..cx.args.dtab_updates.max(cx.args.policy_updates) {
        if i < cx.args.dtab_updates {
            let dtab = format!("/svc/bench=>/svc/{}", services[i % services.len()]);
            let write = dtab_write(&mut dtabs, dtab, &mut dtab_version);
            let p = timed_write(cx, fleet, "dtab update", write).await?;
            out.dtab_updates.push(p);
            // Spread the writes out a little so each is its own version.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        if i < cx.args.policy_updates {
            // A different total timeout each time: a new policy version.
            let policy = format!(
                "timeouts: {{total: {}s}}\nretries: {{max_attempts: 2}}\n",
                i + 1
            );
            let write = policy_write(&mut policies, policy, &mut policy_version);
            let p = timed_write(cx, fleet, "policy update", write).await?;
            out.policy_updates.push(p);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Ok(())
}

/// Runs one admin write and waits for every agent to ACK the next version;
/// timed from just before the call.
async fn timed_write(
    cx: &Ctx<'_>,
    fleet: &Fleet,
    kind: &str,
    write: impl Future<Output = anyhow::Result<()>>,
) -> anyhow::Result<Propagation> {
    let version = fleet.min_acked();
    let metrics0 = cx.ctl.metrics().await?;
    let from = unix_now();
    write.await?;
    fleet.wait_acked(version + 1, PHASE_TIMEOUT).await?;
    let mut p = propagation(&fleet.after(version), from, kind);
    p.controller_view(&metrics0, &cx.ctl.metrics().await?);
    tracing::info!(
        kind,
        all_acked_ms = p.all_acked_ms,
        bytes = p.bytes_median,
        "admin write propagated"
    );
    Ok(p)
}

/// `CreateDtab` on the "default" namespace the first time, then
/// `UpdateDtab` on the version it returned.
async fn dtab_write(
    admin: &mut pb::dtab_admin_client::DtabAdminClient<tonic::transport::Channel>,
    dtab: String,
    stored: &mut Option<Vec<u8>>,
) -> anyhow::Result<()> {
    let namespace = "default".to_owned();
    let resp = match stored.take() {
        None => admin
            .create_dtab(pb::CreateDtabRequest { namespace, dtab })
            .await
            .context("CreateDtab")?,
        Some(expected_version) => admin
            .update_dtab(pb::UpdateDtabRequest {
                namespace,
                dtab,
                expected_version,
            })
            .await
            .context("UpdateDtab")?,
    };
    *stored = Some(resp.into_inner().version);
    Ok(())
}

/// `CreatePolicy` on `/svc/bench` the first time, then `UpdatePolicy` on
/// the version it returned.
async fn policy_write(
    admin: &mut pb::policy_admin_client::PolicyAdminClient<tonic::transport::Channel>,
    policy: String,
    stored: &mut Option<Vec<u8>>,
) -> anyhow::Result<()> {
    let prefix = POLICY_PREFIX.to_owned();
    let resp = match stored.take() {
        None => admin
            .create_policy(pb::CreatePolicyRequest { prefix, policy })
            .await
            .context("CreatePolicy")?,
        Some(expected_version) => admin
            .update_policy(pb::UpdatePolicyRequest {
                prefix,
                policy,
                expected_version,
            })
            .await
            .context("UpdatePolicy")?,
    };
    *stored = Some(resp.into_inner().version);
    Ok(())
}

/// The prefix the policy writes go to: the name the dtab writes alias, so
/// the policy is one an operator would write for it.
const POLICY_PREFIX: &str = "/svc/bench";

//! The controller following ECS events (issue #17): EventBridge delivers
//! the emulator's "ECS Task State Change" events to SQS queues
//! (`moto_bench.py events`) and the controller long-polls one.
//!
//! - **Event path**: one controller with `--ecs-events-queue-url` and a
//!   full resync an hour away, `--event-agents` simulated agents; each
//!   change (scale a service up, then back down: one task event each) is
//!   timed from the moment its event was on the queue (the emulator's event
//!   log) to each agent's ACK. ECS+EC2 calls over the changes are counted:
//!   the events alone must carry them.
//! - **Steady-state calls**: replicas on a DynamoDB store (leader lease),
//!   events on, the default full resync (5 min); over `--steady-window-s`
//!   (one change every `--steady-churn-s`, delivered as events), every
//!   replica's `ecsmesh_controller_api_calls_total{api="ecs"|"ec2"}`,
//!   summed. `/leader` must show one leader throughout.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde::Serialize;

use crate::controller::{Controller, Samples, diff};
use crate::emulator::{Call, EcsEvent, Emulator, Log, Population};
use crate::fleet::Fleet;
use crate::{Args, PHASE_TIMEOUT, Percentiles, Propagation, QUIET, percentiles, propagation};

/// The controller's default full resync with events (`ecs.full_resync_interval`).
pub const DEFAULT_FULL_RESYNC: Duration = Duration::from_mins(5);
/// The event path's full resync: long enough that none runs during it.
const EVENT_PATH_FULL_RESYNC: &str = "60m";
/// What a steady full resync calls (the polling runs' steady resyncs); an
/// event costs at most a DescribeTaskDefinition or a container instance
/// describe, and only for one not cached yet.
const RESYNC_OPERATIONS: [&str; 3] = [
    "ecs:ListTasks",
    "ecs:DescribeTasks",
    "ecs:ListContainerInstances",
];
/// The averaging period of the goal.
const GOAL_PERIOD_S: f64 = 600.0;

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

/// ECS and EC2 calls in an `api:operation` map.
fn ecs_ec2(calls: &BTreeMap<String, u64>) -> u64 {
    calls
        .iter()
        .filter(|(k, _)| k.starts_with("ecs:") || k.starts_with("ec2:"))
        .map(|(_, v)| *v)
        .sum()
}

/// The event path's results.
#[derive(Debug, Serialize, Default)]
pub struct EventRun {
    pub agents: usize,
    pub full_resync_interval: String,
    pub connect_s: f64,
    pub changes: Vec<Propagation>,
    /// Event on the queue → every agent ACKed, over the changes.
    pub over_changes: Option<Percentiles>,
    /// Every agent's ACK of every change, pooled.
    pub change_acks: Option<Percentiles>,
    /// ECS+EC2 calls the controller made while the changes propagated, by
    /// operation (none: the events carried the changes).
    pub calls_during_changes: BTreeMap<String, u64>,
    /// The controller's `ecs_events_total{result}` over the changes.
    pub events_by_result: BTreeMap<String, f64>,
}

/// Scale `service` by one, up for even `i`, back down for odd: one task
/// starts or stops, one "ECS Task State Change" event.
async fn churn(
    emulator: &Emulator,
    pop: &Population,
    desired: &mut BTreeMap<String, usize>,
    i: usize,
    default_count: usize,
) -> anyhow::Result<String> {
    let service = &pop.services[(i / 2 * 53 + 7) % pop.services.len()];
    let count = desired.get(service).copied().unwrap_or(default_count);
    let to = if i.is_multiple_of(2) {
        count + 1
    } else {
        count.saturating_sub(1)
    };
    emulator
        .scale(&pop.cluster, service, u32::try_from(to)?)
        .await?;
    desired.insert(service.clone(), to);
    Ok(format!("scale {service} {count}→{to}"))
}

fn events_by_result(before: &Samples, after: &Samples) -> BTreeMap<String, f64> {
    ["applied", "stale", "ignored", "malformed", "other_cluster"]
        .iter()
        .filter_map(|r| {
            let key = format!("ecsmesh_controller_ecs_events_total{{result=\"{r}\"}}");
            let n = after.get(&key) - before.get(&key);
            (n > 0.0).then(|| ((*r).to_owned(), n))
        })
        .collect()
}

/// Event on the queue → every agent ACKed, with `args.event_agents` agents.
pub async fn event_path(
    args: &Args,
    emulator: &Emulator,
    pop: &Population,
    desired: &mut BTreeMap<String, usize>,
) -> anyhow::Result<EventRun> {
    let queue = &plumbing(args, emulator, "bench-events-path", None)?;
    let mut ctl = Controller::start(
        &args.controller,
        args.controller_cpus.as_deref(),
        &emulator.endpoint,
        &pop.cluster,
        &strings(&[
            "--ecs-events-queue-url",
            queue,
            "--full-resync-interval",
            EVENT_PATH_FULL_RESYNC,
        ]),
    )?;
    ctl.wait_ready(PHASE_TIMEOUT).await?;
    let mut out = EventRun {
        agents: args.event_agents,
        full_resync_interval: EVENT_PATH_FULL_RESYNC.to_owned(),
        ..EventRun::default()
    };
    let t = Instant::now();
    let fleet = Fleet::connect(
        &ctl.grpc,
        &pop.cluster,
        crate::identities(&pop.hosts, args.event_agents),
        args.connect_concurrency,
        PHASE_TIMEOUT,
    )
    .await?;
    out.connect_s = t.elapsed().as_secs_f64();
    tracing::info!(
        agents = args.event_agents,
        seconds = out.connect_s,
        "event path: agents connected"
    );

    let start = ctl.metrics().await?;
    let (_, mut seen) = emulator.ecs_events(usize::MAX).await?;
    for i in 0..args.event_changes {
        let version = fleet.min_acked();
        let metrics0 = ctl.metrics().await?;
        let kind = churn(emulator, pop, desired, i, args.tasks_per_service).await?;
        fleet.wait_acked(version + 1, PHASE_TIMEOUT).await?;
        let (new, total) = emulator.ecs_events(seen).await?;
        seen = total;
        // The change's event: the scale emits exactly one task event, on
        // the queue by the time the UpdateService call returned.
        let task_events: Vec<&EcsEvent> = new.iter().filter(|e| e.is_task()).collect();
        let Some(queued) = task_events.iter().map(|e| e.queued_at()).reduce(f64::max) else {
            bail!("the change {kind} emitted no task event");
        };
        let labels: Vec<String> = task_events.iter().map(|e| e.label()).collect();
        let kind = format!("{kind} (event: {})", labels.join(", "));
        let got = fleet.after(version);
        if got.iter().any(|(e, _)| crate::unix(e.acked_at) < queued) {
            bail!("an agent ACKed a version from before the change {kind}'s event");
        }
        let mut p = propagation(&got, queued, &kind);
        p.controller_view(&metrics0, &ctl.metrics().await?);
        tracing::info!(kind = %p.kind, all_acked_ms = p.all_acked_ms, "event propagated");
        out.changes.push(p);
        // Each change its own version (and its own long poll).
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let end = ctl.metrics().await?;
    out.calls_during_changes = diff(&end.api_calls(), &start.api_calls())
        .into_iter()
        .filter(|(k, _)| k.starts_with("ecs:") || k.starts_with("ec2:"))
        .collect();
    out.events_by_result = events_by_result(&start, &end);
    out.over_changes = (!out.changes.is_empty())
        .then(|| percentiles(out.changes.iter().map(|c| c.all_acked_ms).collect()));
    out.change_acks = (!out.changes.is_empty()).then(|| {
        percentiles(
            out.changes
                .iter()
                .flat_map(|c| c.acks_ms.iter().copied())
                .collect(),
        )
    });
    drop(fleet);
    Ok(out)
}

/// Steady-state calls of `replicas` controllers over one window.
#[derive(Debug, Serialize, Default)]
pub struct SteadyRun {
    pub replicas: usize,
    pub store: String,
    pub full_resync_interval_s: f64,
    /// The window asked for, and as measured (it is extended until a full
    /// resync under way at its end has finished, so none is cut in two).
    pub window_asked_s: f64,
    pub window_s: f64,
    /// Changes made in the window (delivered as events).
    pub churn_changes: usize,
    /// Each replica's `/leader` role at the window's start and end.
    pub roles_start: Vec<String>,
    pub roles_end: Vec<String>,
    pub leader_index: usize,
    /// ECS+EC2 calls in the window (each replica's `/metrics`).
    pub calls_per_replica: Vec<u64>,
    pub calls: u64,
    pub calls_per_s: f64,
    /// The same calls as the emulator logged them (a cross-check).
    pub emulator_calls: usize,
    /// Every API call in the window, all replicas, by `api:operation`
    /// (SQS and DynamoDB too).
    pub by_operation: BTreeMap<String, u64>,
    /// Full resyncs in the window (the emulator's log): how many, each's
    /// duration (first call to last answer).
    pub full_resyncs: usize,
    pub resync_read_s: Vec<f64>,
    /// The calls of [`RESYNC_OPERATIONS`] in the window: full resyncs make
    /// them; applying an event does not.
    pub resync_calls: u64,
    /// Computed, not measured over 10 minutes: calls per full resync over
    /// (interval + resync duration), plus the window's other ECS+EC2 calls
    /// per second.
    pub computed_10min_calls_per_s: Option<f64>,
    pub computed_calls_per_resync: Option<f64>,
}

/// Waits until exactly one replica leads and every other follows it;
/// returns the leader's index and each replica's role.
async fn one_leader(ctls: &[Controller]) -> anyhow::Result<(usize, Vec<String>)> {
    let deadline = Instant::now() + PHASE_TIMEOUT;
    loop {
        let mut roles = Vec::new();
        for c in ctls {
            roles.push(c.role().await.ok());
        }
        if let Some(found) = leadership(&roles) {
            return Ok(found);
        }
        if Instant::now() > deadline {
            bail!("no single leader within {PHASE_TIMEOUT:?}: {roles:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `(leader index, roles)` when exactly one replica leads and every other
/// follows the same leader.
fn leadership(roles: &[Option<(String, Option<String>)>]) -> Option<(usize, Vec<String>)> {
    let names: Vec<String> = roles
        .iter()
        .map(|r| {
            r.as_ref()
                .map_or_else(|| "unreachable".to_owned(), |(n, _)| n.clone())
        })
        .collect();
    let leaders: Vec<usize> = (0..names.len()).filter(|&i| names[i] == "leader").collect();
    let [leader] = leaders[..] else { return None };
    let id = roles[leader].as_ref()?.1.clone()?;
    let all_follow = roles.iter().enumerate().all(|(i, r)| {
        i == leader
            || r.as_ref()
                .is_some_and(|(n, l)| n == "follower" && l.as_ref() == Some(&id))
    });
    all_follow.then_some((leader, names))
}

/// The full resyncs among `calls`: (start, end) of each, from a first
/// ListTasks page to the last ListTasks or DescribeTasks answer before the
/// next first page.
fn full_resyncs(calls: &[Call]) -> Vec<(f64, f64)> {
    let mut out: Vec<(f64, f64)> = Vec::new();
    for c in calls {
        if c.first_page() {
            out.push((c.start(), c.end()));
        } else if let Some(last) = out.last_mut()
            && matches!(c.op(), "ListTasks" | "DescribeTasks")
        {
            last.1 = last.1.max(c.end());
        }
    }
    out
}

/// Every replica's `api:operation` counts, summed, and each one's ECS+EC2.
async fn all_calls(ctls: &[Controller]) -> anyhow::Result<Vec<BTreeMap<String, u64>>> {
    let mut out = Vec::new();
    for c in ctls {
        out.push(c.metrics().await?.api_calls());
    }
    Ok(out)
}

/// Starts `replicas` controllers on the store `table` following `queue`,
/// and waits for one leader, every replica ready and the leader's first
/// (cold) resync over. Returns them, the leader, the roles and the log.
async fn start_replicas(
    args: &Args,
    emulator: &Emulator,
    pop: &Population,
    replicas: usize,
    queue: &str,
    table: &str,
) -> anyhow::Result<(Vec<Controller>, usize, Vec<String>, Log)> {
    let flags = strings(&[
        "--store",
        "dynamodb",
        "--dynamodb-table",
        table,
        "--ecs-events-queue-url",
        queue,
    ]);
    let ctls = (0..replicas)
        .map(|_| {
            Controller::start(
                &args.controller,
                args.controller_cpus.as_deref(),
                &emulator.endpoint,
                &pop.cluster,
                &flags,
            )
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let (leader, roles_start) = one_leader(&ctls).await?;
    let deadline = Instant::now() + PHASE_TIMEOUT;
    for c in &ctls {
        while !c.ready().await {
            if Instant::now() > deadline {
                bail!("a replica was not ready within {PHASE_TIMEOUT:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // The leader's first (cold) resync is over before the window opens.
    let mut log = Log::default();
    log.wait_idle(emulator, QUIET, PHASE_TIMEOUT).await?;
    Ok((ctls, leader, roles_start, log))
}

/// One change every `--steady-churn-s` until `window` has passed; how many.
async fn churn_for(
    args: &Args,
    emulator: &Emulator,
    pop: &Population,
    desired: &mut BTreeMap<String, usize>,
    window: Duration,
) -> anyhow::Result<usize> {
    let t0 = Instant::now();
    let mut churned = 0usize;
    let churn_every = Duration::from_secs(args.steady_churn_s);
    while t0.elapsed() < window {
        let due = if args.steady_churn_s == 0 {
            window
        } else {
            churn_every * u32::try_from(churned + 1)?
        };
        if due >= window {
            tokio::time::sleep(window.saturating_sub(t0.elapsed())).await;
            break;
        }
        tokio::time::sleep(due.saturating_sub(t0.elapsed())).await;
        churn(emulator, pop, desired, churned, args.tasks_per_service).await?;
        churned += 1;
    }
    Ok(churned)
}

/// `replicas` controllers on the DynamoDB store `table`, events from
/// `queue`, the default full resync: ECS+EC2 calls over the window.
pub async fn steady(
    args: &Args,
    emulator: &Emulator,
    pop: &Population,
    desired: &mut BTreeMap<String, usize>,
    (run, replicas): (usize, usize),
) -> anyhow::Result<SteadyRun> {
    let table = &format!("ecsmesh-bench-{run}-{replicas}");
    let queue = &plumbing(
        args,
        emulator,
        &format!("bench-events-{run}-{replicas}"),
        Some(table),
    )?;
    let (ctls, leader, roles_start, mut log) =
        start_replicas(args, emulator, pop, replicas, queue, table).await?;
    let from_entry = log.calls.len();
    tracing::info!(
        replicas,
        leader,
        window_s = args.steady_window_s,
        "steady window opens"
    );

    let before = all_calls(&ctls).await?;
    let t0 = Instant::now();
    let window = Duration::from_secs(args.steady_window_s);
    let churned = churn_for(args, emulator, pop, desired, window).await?;
    // A full resync under way at the window's end is counted whole (a call
    // in flight is not in the log yet: wait_idle waits for it too).
    log.wait_idle(emulator, QUIET, PHASE_TIMEOUT).await?;
    let after = all_calls(&ctls).await?;
    let window_s = t0.elapsed().as_secs_f64();
    log.refresh(emulator).await?;
    let mut roles_end = Vec::new();
    for c in &ctls {
        roles_end.push(c.role().await.ok());
    }
    let Some((leader_end, roles_end)) = leadership(&roles_end) else {
        bail!("not exactly one leader at the window's end: {roles_end:?}");
    };
    if leader_end != leader {
        bail!("the leader changed during the window ({leader} → {leader_end})");
    }

    let per: Vec<BTreeMap<String, u64>> =
        after.iter().zip(&before).map(|(a, b)| diff(a, b)).collect();
    let mut by_operation = BTreeMap::new();
    for m in &per {
        for (k, v) in m {
            *by_operation.entry(k.clone()).or_insert(0) += v;
        }
    }
    let calls_per_replica: Vec<u64> = per.iter().map(ecs_ec2).collect();
    let calls: u64 = calls_per_replica.iter().sum();
    let window_calls: Vec<Call> = log.calls[from_entry..].to_vec();
    let resyncs = full_resyncs(&window_calls);
    let resync_calls = RESYNC_OPERATIONS
        .iter()
        .map(|op| by_operation.get(*op).copied().unwrap_or(0))
        .sum();
    let mut out = SteadyRun {
        replicas,
        store: format!("dynamodb ({table})"),
        full_resync_interval_s: DEFAULT_FULL_RESYNC.as_secs_f64(),
        window_asked_s: window.as_secs_f64(),
        window_s,
        churn_changes: churned,
        roles_start,
        roles_end,
        leader_index: leader,
        calls_per_replica,
        calls,
        calls_per_s: f64_of(calls) / window_s,
        emulator_calls: window_calls.len(),
        by_operation,
        full_resyncs: resyncs.len(),
        resync_read_s: resyncs.iter().map(|(s, e)| e - s).collect(),
        resync_calls,
        ..SteadyRun::default()
    };
    computed(&mut out);
    tracing::info!(
        replicas,
        calls,
        window_s,
        resyncs = out.full_resyncs,
        "steady window closed"
    );
    Ok(out)
}

#[allow(clippy::cast_precision_loss)]
fn f64_of(n: u64) -> f64 {
    n as f64
}

/// The long-run rate from the window's parts: a full resync's calls every
/// (interval + its duration: the next is scheduled from its end), plus the
/// window's other ECS+EC2 calls per second (events that needed a describe).
fn computed(out: &mut SteadyRun) {
    if out.full_resyncs == 0 {
        return;
    }
    let n = f64::from(u32::try_from(out.full_resyncs).unwrap_or(u32::MAX));
    let per_resync = f64_of(out.resync_calls) / n;
    let read = out.resync_read_s.iter().sum::<f64>() / n;
    let other = f64_of(out.calls.saturating_sub(out.resync_calls)) / out.window_s;
    out.computed_calls_per_resync = Some(per_resync);
    // Averaged over the goal's 10 minutes: the same rate (a resync every
    // interval + duration), stated per second.
    let resyncs_per_period = GOAL_PERIOD_S / (out.full_resync_interval_s + read);
    out.computed_10min_calls_per_s = Some(per_resync * resyncs_per_period / GOAL_PERIOD_S + other);
}

/// A fresh queue `name` that the rule feeds from now on (earlier runs'
/// events are not in it), and the store table `table`, if any.
fn plumbing(
    args: &Args,
    emulator: &Emulator,
    name: &str,
    table: Option<&str>,
) -> anyhow::Result<String> {
    let setup = emulator.events_setup(&args.python, &args.emulator, &[name], table.as_slice())?;
    setup
        .queues
        .get(name)
        .cloned()
        .context("the events set-up made no queue")
}

#[cfg(test)]
mod tests {
    use super::*;

    type Seen = Option<(String, Option<String>)>;

    fn role(n: &str, leader: Option<&str>) -> Seen {
        Seen::from((n.to_owned(), leader.map(str::to_owned)))
    }

    #[test]
    fn one_leader_and_the_rest_following_it() {
        let ok = [
            role("follower", Some("b")),
            role("leader", Some("b")),
            role("follower", Some("b")),
        ];
        assert_eq!(leadership(&ok).map(|(i, _)| i), Some(1));
        let two = [role("leader", Some("a")), role("leader", Some("b"))];
        assert!(leadership(&two).is_none());
        let other = [role("leader", Some("a")), role("follower", Some("c"))];
        assert!(leadership(&other).is_none());
        let starting = [role("leader", Some("a")), role("candidate", None), None];
        assert!(leadership(&starting).is_none());
        assert_eq!(
            leadership(&[role("leader", Some("a"))]).map(|(i, _)| i),
            Some(0)
        );
    }

    #[test]
    fn the_computed_rate_spreads_a_resync_over_its_period() {
        let mut run = SteadyRun {
            calls: 201,
            resync_calls: 200,
            full_resyncs: 1,
            resync_read_s: vec![5.0],
            full_resync_interval_s: 300.0,
            window_s: 330.0,
            ..SteadyRun::default()
        };
        computed(&mut run);
        let rate = run.computed_10min_calls_per_s.unwrap_or_default();
        assert!(
            (rate - (200.0 / 305.0 + 1.0 / 330.0)).abs() < 1e-9,
            "{rate}"
        );
    }
}

//! The ECS source: every resync interval, per cluster, read the running
//! tasks and turn them into endpoint sets `/#/ecs/<cluster>/<service>`.
//!
//! Calls per resync, never one per task: `ListTasks` (paged), `DescribeTasks`
//! in batches of 100, `ListContainerInstances` (paged: the instances agents
//! may claim, see [`crate::admission`]), `DescribeContainerInstances` in
//! batches of 100 for instances not yet known, EC2 `DescribeInstances` for instance IPs not yet
//! known, `DescribeTaskDefinition` once per task definition ever (they are
//! immutable). An error never empties a set: the last good view stays until
//! a resync succeeds, and throttling backs the loop off exponentially.
//! Every call takes a token from the controller's [`CallBudget`] first.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_ec2 as ec2;
use aws_sdk_ecs as ecs;
use aws_sdk_ecs::error::ProvideErrorMetadata as _;
use aws_sdk_ecs::types::{
    ContainerDefinition, ContainerInstanceStatus, DesiredStatus, HealthStatus, NetworkMode, Task,
    TaskDefinition,
};
use ecsmesh_dtab::Path;
use ecsmesh_state::{Endpoint, EndpointSet, names};

use crate::admission::Instances;
use crate::config::EcsSettings;
use crate::metrics::Metrics;
use crate::sources::budget::{BudgetSettings, CallBudget};
use crate::sources::ecs_events::{Applied, Batch, Change, Event};
use crate::sources::{Observed, SourceSets};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// The AWS limit on ARNs per DescribeTasks / DescribeContainerInstances call.
const BATCH: usize = 100;
/// The longest the loop backs off after repeated failures.
const MAX_BACKOFF: Duration = Duration::from_mins(5);

/// Endpoint metadata keys.
pub mod meta {
    pub const TASK_ARN: &str = "task_arn";
    pub const CONTAINER: &str = "container";
    pub const CONTAINER_INSTANCE: &str = "container_instance";
    pub const INSTANCE_ID: &str = "instance_id";
    pub const HOST_IP: &str = "host_ip";
    pub const AVAILABILITY_ZONE: &str = ecsmesh_state::meta::AVAILABILITY_ZONE;
    pub const TASK_DEFINITION: &str = "task_definition";
}

/// A failed ECS or EC2 call.
#[derive(Debug, thiserror::Error)]
#[error("{operation}: {message}")]
pub struct EcsError {
    pub operation: &'static str,
    pub message: String,
    /// The API asked us to slow down.
    pub throttled: bool,
}

impl EcsError {
    fn from_sdk<E, R>(operation: &'static str, e: &aws_sdk_ecs::error::SdkError<E, R>) -> Self
    where
        E: aws_sdk_ecs::error::ProvideErrorMetadata + std::error::Error + 'static,
        R: std::fmt::Debug,
    {
        let code = e.code().unwrap_or_default();
        Self {
            operation,
            message: aws_sdk_ecs::error::DisplayErrorContext(e).to_string(),
            throttled: matches!(
                code,
                "ThrottlingException"
                    | "Throttling"
                    | "RequestLimitExceeded"
                    | "TooManyRequestsException"
            ),
        }
    }
}

/// Builds the SDK clients: region and credentials from the standard chain,
/// with the configured overrides (an endpoint URL for emulators).
pub async fn clients(settings: &EcsSettings) -> (ecs::Client, ec2::Client, aws_sdk_sqs::Client) {
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
    if let Some(region) = &settings.region {
        loader = loader.region(aws_config::Region::new(region.clone()));
    }
    if let Some(url) = &settings.endpoint_url {
        loader = loader.endpoint_url(url.clone());
    }
    let conf = loader.load().await;
    (
        ecs::Client::new(&conf),
        ec2::Client::new(&conf),
        aws_sdk_sqs::Client::new(&conf),
    )
}

/// Runs one resync loop per configured cluster; reports to `observed` as
/// source `ecs:<cluster>`.
pub async fn run(
    settings: EcsSettings,
    observed: Arc<Observed>,
    metrics: Arc<Metrics>,
    instances: Option<Arc<Instances>>,
) {
    let (ecs, ec2, sqs) = clients(&settings).await;
    let budget = Arc::new(CallBudget::new(settings.api_budget));
    metrics.set_api_budget_rate(budget.rate());
    let mut loops = tokio::task::JoinSet::new();
    let mut routes = BTreeMap::new();
    for cluster in &settings.clusters {
        let mut source = EcsSource::new(
            ecs.clone(),
            ec2.clone(),
            cluster.clone(),
            Arc::clone(&metrics),
        );
        source.instances.clone_from(&instances);
        source.budget = Arc::clone(&budget);
        if settings.events_queue_url.is_some() {
            let (tx, rx) = mpsc::channel(16);
            routes.insert(cluster.clone(), tx);
            source.events = Some(rx);
        }
        // With events the resync is the backstop, at its own interval.
        let interval = if settings.events_queue_url.is_some() {
            settings.full_resync_interval
        } else {
            settings.resync_interval
        };
        let observed = Arc::clone(&observed);
        loops.spawn(async move { source.run(&observed, interval).await });
    }
    if let Some(url) = settings.events_queue_url.clone() {
        tracing::info!(queue = %url, clusters = ?settings.clusters,
            full_resync = ?settings.full_resync_interval, "following ECS events");
        loops.spawn(crate::sources::ecs_events::run(
            sqs,
            url,
            routes,
            Arc::clone(&metrics),
        ));
    }
    while loops.join_next().await.is_some() {}
}

/// Source id of a cluster's view in [`Observed`].
pub fn source_id(cluster: &str) -> String {
    format!("ecs:{cluster}")
}

/// Where a container instance runs.
#[derive(Clone, Debug)]
pub struct Host {
    pub instance_id: String,
    pub availability_zone: Option<String>,
    pub ip: Option<IpAddr>,
}

/// One cluster's watcher and its caches.
#[derive(Debug)]
pub struct EcsSource {
    ecs: ecs::Client,
    ec2: ec2::Client,
    cluster: String,
    metrics: Arc<Metrics>,
    task_definitions: HashMap<String, Arc<TaskDefinition>>,
    hosts: HashMap<String, Host>,
    /// Each task's endpoints at the last resync: reused for a task that a
    /// describe call reports as a failure, rather than dropping it.
    last_by_task: HashMap<String, Vec<(Path, Endpoint)>>,
    /// Where the cluster's container instances are reported, for agent
    /// admission; `None` when nothing checks agents against ECS.
    pub instances: Option<Arc<Instances>>,
    /// Container instance ARNs at the last listing.
    listed: HashSet<String>,
    /// Container instances in `DRAINING`: their tasks' endpoints are
    /// marked, and agents use them only when nothing else serves.
    draining: HashSet<String>,
    /// Shared by every cluster's source: the controller's ECS/EC2 calls.
    pub budget: Arc<CallBudget>,
    /// This cluster's ECS events from the queue, when one is configured.
    pub events: Option<mpsc::Receiver<Batch>>,
    /// The highest version known per task: from an applied event (and
    /// when it was applied) or from a resync's listing (`None`).
    versions: HashMap<String, (i64, Option<Instant>)>,
    /// When the last successful resync began (wall clock, to compare with
    /// events' `updatedAt`).
    resync_began: Option<std::time::SystemTime>,
}

/// How long a task an event reported stays in the view while a resync
/// does not list it yet.
const EVENT_GRACE: Duration = Duration::from_secs(30);

async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn changed_some(
    rx: &mut Option<tokio::sync::watch::Receiver<u64>>,
) -> Result<(), tokio::sync::watch::error::RecvError> {
    match rx {
        Some(rx) => rx.changed().await,
        None => std::future::pending().await,
    }
}

async fn recv_some(rx: &mut Option<mpsc::Receiver<Batch>>) -> Option<Batch> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// The shortest time between two listings of container instances asked for
/// by agents' `Hello`s (a flood of made-up instance ids costs at most one
/// listing per this interval).
const MIN_LISTING_INTERVAL: Duration = Duration::from_secs(2);

impl EcsSource {
    pub fn new(ecs: ecs::Client, ec2: ec2::Client, cluster: String, metrics: Arc<Metrics>) -> Self {
        Self {
            ecs,
            ec2,
            cluster,
            metrics,
            task_definitions: HashMap::new(),
            hosts: HashMap::new(),
            last_by_task: HashMap::new(),
            instances: None,
            listed: HashSet::new(),
            draining: HashSet::new(),
            budget: Arc::new(CallBudget::new(BudgetSettings::default())),
            events: None,
            versions: HashMap::new(),
            resync_began: None,
        }
    }

    /// Resyncs forever: on success the view is replaced; on failure it is
    /// kept and the next attempt backs off (exponentially, with jitter).
    /// Between resyncs it applies the queue's ECS events (when
    /// [`Self::events`] is set) and lists container instances an agent's
    /// Hello asked for (rate-limited).
    pub async fn run(&mut self, observed: &Observed, interval: Duration) {
        let id = source_id(&self.cluster);
        let mut failures = 0u32;
        let mut wanted = self.instances.as_ref().map(|i| i.wanted());
        let mut events = self.events.take();
        let mut last_listing: Option<Instant> = None;
        let mut listing_due: Option<Instant> = None;
        let mut synced = false;
        loop {
            let started = Instant::now();
            let wait = match self.resync().await {
                Ok(sets) => {
                    last_listing = Some(started);
                    failures = 0;
                    synced = true;
                    tracing::debug!(cluster = %self.cluster, sets = sets.len(), "ECS resync");
                    observed.replace(&id, sets);
                    interval
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    let backoff = backoff(interval, failures, e.throttled);
                    tracing::warn!(cluster = %self.cluster, error = %e, retry_in = ?backoff,
                        "ECS resync failed; keeping the last good endpoints");
                    backoff
                }
            };
            let next = Instant::now() + wait;
            loop {
                tokio::select! {
                    () = tokio::time::sleep_until(next) => break,
                    () = sleep_until_some(listing_due) => {
                        listing_due = None;
                        last_listing = Some(Instant::now());
                        if let Err(e) = self.refresh_instances().await {
                            tracing::warn!(cluster = %self.cluster, error = %e, "listing container instances failed");
                        }
                    }
                    changed = changed_some(&mut wanted) => {
                        if changed.is_err() {
                            wanted = None;
                        } else if listing_due.is_none() {
                            let earliest = last_listing.map_or(started, |t| t + MIN_LISTING_INTERVAL);
                            listing_due = Some(earliest.max(Instant::now()));
                        }
                    }
                    batch = recv_some(&mut events) => {
                        let Some(batch) = batch else {
                            events = None;
                            continue;
                        };
                        // Nothing is published from events before a full
                        // view exists: the messages come back later.
                        let ok = synced && match self.apply_events(batch.events).await {
                            Ok(true) => {
                                observed.replace(&id, self.sets());
                                true
                            }
                            Ok(false) => true,
                            Err(e) => {
                                tracing::warn!(cluster = %self.cluster, error = %e,
                                    "applying ECS events failed; they stay queued");
                                false
                            }
                        };
                        let _ = batch.done.send(Applied { ok });
                    }
                }
            }
        }
    }

    /// Applies one batch of the queue's events; whether the view changed.
    async fn apply_events(&mut self, events: Vec<Event>) -> Result<bool, EcsError> {
        let mut changed = false;
        for event in events {
            match event.change {
                Change::Task {
                    task,
                    version,
                    updated_at,
                } => {
                    changed |= self.apply_task(*task, version, updated_at).await?;
                }
                Change::Instance { arn, status } => {
                    tracing::debug!(cluster = %self.cluster, %arn, %status, "container instance changed");
                    self.metrics.ecs_event("applied");
                    let draining = status == "DRAINING";
                    let was = if draining {
                        !self.draining.insert(arn.clone())
                    } else {
                        self.draining.remove(&arn)
                    };
                    if was != draining {
                        self.remark_draining(&arn);
                        changed = true;
                    }
                    if self.instances.is_some() {
                        self.refresh_instances().await?;
                    }
                }
            }
        }
        Ok(changed)
    }

    /// One task's change: its endpoints now, unless an equal or newer
    /// version is known already (SQS redelivers and reorders), or the task
    /// is out of the view and the event is older than the last resync by
    /// more than [`EVENT_GRACE`]: that resync saw a later state (a message
    /// delivered late, or one a replaced leader read and never deleted,
    /// must not bring a stopped task back until the next full resync).
    async fn apply_task(
        &mut self,
        task: Task,
        version: i64,
        updated_at: Option<std::time::SystemTime>,
    ) -> Result<bool, EcsError> {
        let Some(arn) = task.task_arn().map(str::to_owned) else {
            return Ok(false);
        };
        let superseded = updated_at
            .zip(self.resync_began)
            .is_some_and(|(at, resync)| at + EVENT_GRACE < resync);
        if self.versions.get(&arn).is_some_and(|(v, _)| *v >= version)
            || (superseded && !self.last_by_task.contains_key(&arn))
        {
            self.metrics.ecs_event("stale");
            return Ok(false);
        }
        if let Some(ci) = task.container_instance_arn() {
            self.learn_hosts(&HashSet::from([ci.to_owned()])).await?;
        }
        self.learn_task_definitions(std::slice::from_ref(&task))
            .await?;
        let endpoints = self.endpoints_of(&task);
        self.versions
            .insert(arn.clone(), (version, Some(Instant::now())));
        self.metrics.ecs_event("applied");
        Ok(if endpoints.is_empty() {
            self.last_by_task.remove(&arn).is_some()
        } else if self.last_by_task.get(&arn) == Some(&endpoints) {
            false
        } else {
            self.last_by_task.insert(arn, endpoints);
            true
        })
    }

    /// The view: every task's endpoints, by concrete name.
    fn sets(&self) -> SourceSets {
        let mut sets: BTreeMap<Path, EndpointSet> = BTreeMap::new();
        for (name, endpoint) in self.last_by_task.values().flatten() {
            sets.entry(name.clone())
                .or_default()
                .insert(endpoint.clone());
        }
        sets.into_iter().map(|(n, s)| (n, Arc::new(s))).collect()
    }

    fn count(&self, api: &'static str, operation: &'static str, ok: bool) {
        self.metrics.api_call(api, operation, ok);
    }

    /// One ECS or EC2 call through the [`CallBudget`]: a token first (the
    /// SDK's `send()` future does nothing until polled), then the call;
    /// its outcome feeds the budget and the metrics.
    async fn call<T, E, R>(
        &self,
        api: &'static str,
        operation: &'static str,
        send: impl Future<Output = Result<T, aws_sdk_ecs::error::SdkError<E, R>>>,
    ) -> Result<T, EcsError>
    where
        E: aws_sdk_ecs::error::ProvideErrorMetadata + std::error::Error + 'static,
        R: std::fmt::Debug,
    {
        self.metrics.api_budget_wait(self.budget.acquire().await);
        let result = send.await.map_err(|e| EcsError::from_sdk(operation, &e));
        self.settle(api, operation, result.as_ref().err());
        result
    }

    /// As [`Self::call`], for a paginator's next page (`None`: no more).
    async fn call_paged<T, E, R>(
        &self,
        api: &'static str,
        operation: &'static str,
        next: impl Future<Output = Option<Result<T, aws_sdk_ecs::error::SdkError<E, R>>>>,
    ) -> Result<Option<T>, EcsError>
    where
        E: aws_sdk_ecs::error::ProvideErrorMetadata + std::error::Error + 'static,
        R: std::fmt::Debug,
    {
        self.metrics.api_budget_wait(self.budget.acquire().await);
        let Some(page) = next.await else {
            return Ok(None);
        };
        let result = page.map_err(|e| EcsError::from_sdk(operation, &e));
        self.settle(api, operation, result.as_ref().err());
        result.map(Some)
    }

    fn settle(&self, api: &'static str, operation: &'static str, error: Option<&EcsError>) {
        let throttled = error.is_some_and(|e| e.throttled);
        self.budget.record(throttled);
        self.count(api, operation, error.is_none());
        if throttled {
            self.metrics.api_throttled(api, operation);
        }
        self.metrics.set_api_budget_rate(self.budget.rate());
    }

    /// One full read of the cluster.
    pub async fn resync(&mut self) -> Result<SourceSets, EcsError> {
        let began = std::time::SystemTime::now();
        let arns = self.list_tasks().await?;
        self.draining = self
            .list_container_instances(Some(ContainerInstanceStatus::Draining))
            .await?;
        if self.instances.is_some() {
            self.listed = self.list_container_instances(None).await?;
        }
        let mut tasks = Vec::with_capacity(arns.len());
        let mut undescribed = Vec::new();
        for batch in arns.chunks(BATCH) {
            let out = self
                .call(
                    "ecs",
                    "DescribeTasks",
                    self.ecs
                        .describe_tasks()
                        .cluster(&self.cluster)
                        .set_tasks(Some(batch.to_vec()))
                        .send(),
                )
                .await?;
            for f in out.failures() {
                tracing::warn!(arn = ?f.arn(), reason = ?f.reason(), "DescribeTasks failure");
                self.count("ecs", "DescribeTasksFailure", false);
                undescribed.extend(f.arn().map(str::to_owned));
            }
            tasks.extend(out.tasks.unwrap_or_default());
        }
        let on_hosts: HashSet<String> = tasks
            .iter()
            .filter_map(Task::container_instance_arn)
            .chain(self.listed.iter().map(String::as_str))
            .map(str::to_owned)
            .collect();
        self.learn_hosts(&on_hosts).await?;
        self.report_instances();
        self.learn_task_definitions(&tasks).await?;

        let mut by_task: HashMap<String, Vec<(Path, Endpoint)>> = HashMap::new();
        for task in &tasks {
            let Some(arn) = task.task_arn() else { continue };
            if self
                .versions
                .get(arn)
                .is_some_and(|(v, _)| *v > task.version())
            {
                // An event told of a newer state than this listing: keep it.
                if let Some(previous) = self.last_by_task.get(arn) {
                    by_task.insert(arn.to_owned(), previous.clone());
                }
                continue;
            }
            by_task.insert(arn.to_owned(), self.endpoints_of(task));
        }
        for arn in undescribed {
            if let Some(previous) = self.last_by_task.get(&arn) {
                by_task.insert(arn, previous.clone());
            }
        }
        // A task an event just reported running may not be listed yet
        // (ECS's reads are eventually consistent): kept for a while.
        let listed: HashSet<&str> = tasks.iter().filter_map(Task::task_arn).collect();
        let recent = |applied: &Option<Instant>| applied.is_some_and(|t| t.elapsed() < EVENT_GRACE);
        for (arn, (_, applied)) in &self.versions {
            if !listed.contains(arn.as_str())
                && recent(applied)
                && let Some(previous) = self.last_by_task.get(arn)
            {
                by_task.insert(arn.clone(), previous.clone());
            }
        }
        self.versions
            .retain(|arn, (_, applied)| listed.contains(arn.as_str()) || recent(applied));
        // What this listing read is known too: an event no newer is stale.
        for task in &tasks {
            if let Some(arn) = task.task_arn() {
                let v = task.version();
                match self.versions.get_mut(arn) {
                    Some(known) if known.0 >= v => {}
                    Some(known) => *known = (v, None),
                    None => {
                        self.versions.insert(arn.to_owned(), (v, None));
                    }
                }
            }
        }
        self.resync_began = Some(began);
        self.last_by_task = by_task;
        self.hosts.retain(|arn, _| on_hosts.contains(arn));
        Ok(self.sets())
    }

    async fn list_tasks(&self) -> Result<Vec<String>, EcsError> {
        let mut pages = self
            .ecs
            .list_tasks()
            .cluster(&self.cluster)
            .desired_status(DesiredStatus::Running)
            .into_paginator()
            .send();
        let mut arns = Vec::new();
        while let Some(page) = self.call_paged("ecs", "ListTasks", pages.next()).await? {
            arns.extend(page.task_arns.unwrap_or_default());
        }
        Ok(arns)
    }

    /// The cluster's container instances in `status`; `None`: every state
    /// but `INACTIVE` (ECS's default), `DRAINING` included, as their agents
    /// still serve.
    async fn list_container_instances(
        &self,
        status: Option<ContainerInstanceStatus>,
    ) -> Result<HashSet<String>, EcsError> {
        let mut pages = self
            .ecs
            .list_container_instances()
            .cluster(&self.cluster)
            .set_status(status)
            .into_paginator()
            .send();
        let mut arns = HashSet::new();
        while let Some(page) = self
            .call_paged("ecs", "ListContainerInstances", pages.next())
            .await?
        {
            arns.extend(page.container_instance_arns.unwrap_or_default());
        }
        Ok(arns)
    }

    /// A task's endpoints now: its definition's ports at its host (see
    /// [`task_endpoints`]), marked when its container instance drains.
    fn endpoints_of(&self, task: &Task) -> Vec<(Path, Endpoint)> {
        let def = task
            .task_definition_arn()
            .and_then(|a| self.task_definitions.get(a));
        let host = task
            .container_instance_arn()
            .and_then(|a| self.hosts.get(a));
        let mut endpoints = match def {
            Some(def) => task_endpoints(&self.cluster, task, def, host),
            None => Vec::new(),
        };
        let draining = task
            .container_instance_arn()
            .is_some_and(|a| self.draining.contains(a));
        for (_, e) in &mut endpoints {
            mark_draining(e, draining);
        }
        endpoints
    }

    /// After an instance's state event: its tasks' endpoints marked (or
    /// not) as its state now says.
    fn remark_draining(&mut self, instance: &str) {
        let draining = self.draining.contains(instance);
        for (_, e) in self.last_by_task.values_mut().flatten() {
            if e.meta.get(meta::CONTAINER_INSTANCE).map(String::as_str) == Some(instance) {
                mark_draining(e, draining);
            }
        }
    }

    /// Lists the container instances again (between resyncs) and reports them.
    async fn refresh_instances(&mut self) -> Result<(), EcsError> {
        self.listed = self.list_container_instances(None).await?;
        let listed = self.listed.clone();
        self.learn_hosts(&listed).await?;
        self.report_instances();
        Ok(())
    }

    /// The listed instances, by EC2 instance id, to agent admission.
    fn report_instances(&self) {
        let Some(instances) = &self.instances else {
            return;
        };
        let by_id = self
            .listed
            .iter()
            .filter_map(|arn| self.hosts.get(arn))
            .map(|h| (h.instance_id.clone(), h.ip))
            .collect();
        instances.replace(&self.cluster, by_id);
    }

    /// Container instance → EC2 instance → private IP, for instances not yet cached.
    async fn learn_hosts(&mut self, arns: &HashSet<String>) -> Result<(), EcsError> {
        let unknown: Vec<String> = arns
            .iter()
            .filter(|a| !self.hosts.contains_key(*a))
            .cloned()
            .collect();
        let mut new_hosts = Vec::new();
        for batch in unknown.chunks(BATCH) {
            let out = self
                .call(
                    "ecs",
                    "DescribeContainerInstances",
                    self.ecs
                        .describe_container_instances()
                        .cluster(&self.cluster)
                        .set_container_instances(Some(batch.to_vec()))
                        .send(),
                )
                .await?;
            for ci in out.container_instances() {
                let (Some(arn), Some(instance_id)) =
                    (ci.container_instance_arn(), ci.ec2_instance_id())
                else {
                    continue;
                };
                let availability_zone = ci
                    .attributes()
                    .iter()
                    .find(|a| a.name() == "ecs.availability-zone")
                    .and_then(|a| a.value())
                    .map(str::to_owned);
                new_hosts.push((
                    arn.to_owned(),
                    Host {
                        instance_id: instance_id.to_owned(),
                        availability_zone,
                        ip: None,
                    },
                ));
            }
        }
        if new_hosts.is_empty() {
            return Ok(());
        }
        let ids: Vec<String> = new_hosts
            .iter()
            .map(|(_, h)| h.instance_id.clone())
            .collect();
        let mut ips = HashMap::new();
        for batch in ids.chunks(BATCH) {
            let out = self
                .call(
                    "ec2",
                    "DescribeInstances",
                    self.ec2
                        .describe_instances()
                        .set_instance_ids(Some(batch.to_vec()))
                        .send(),
                )
                .await?;
            for instance in out
                .reservations()
                .iter()
                .flat_map(ec2::types::Reservation::instances)
            {
                if let (Some(id), Some(Ok(ip))) = (
                    instance.instance_id(),
                    instance.private_ip_address().map(str::parse::<IpAddr>),
                ) {
                    ips.insert(id.to_owned(), ip);
                }
            }
        }
        for (arn, mut host) in new_hosts {
            host.ip = ips.get(&host.instance_id).copied();
            // An instance EC2 did not describe yet is retried next time.
            if host.ip.is_some() {
                self.hosts.insert(arn, host);
            }
        }
        Ok(())
    }

    async fn learn_task_definitions(&mut self, tasks: &[Task]) -> Result<(), EcsError> {
        let unknown: HashSet<&str> = tasks
            .iter()
            .filter_map(Task::task_definition_arn)
            .filter(|a| !self.task_definitions.contains_key(*a))
            .collect();
        for arn in unknown {
            let out = self
                .call(
                    "ecs",
                    "DescribeTaskDefinition",
                    self.ecs
                        .describe_task_definition()
                        .task_definition(arn)
                        .send(),
                )
                .await?;
            if let Some(def) = out.task_definition {
                self.task_definitions.insert(arn.to_owned(), Arc::new(def));
            }
        }
        Ok(())
    }
}

/// Sets or clears an endpoint's draining mark.
fn mark_draining(e: &mut Endpoint, draining: bool) {
    if draining {
        e.meta
            .insert(ecsmesh_state::meta::DRAINING.to_owned(), "true".to_owned());
    } else {
        e.meta.remove(ecsmesh_state::meta::DRAINING);
    }
}

/// How long to wait after `failures` failed resyncs in a row.
fn backoff(interval: Duration, failures: u32, throttled: bool) -> Duration {
    let base = if throttled {
        interval * 2
    } else {
        interval.min(Duration::from_secs(2))
    };
    let exp = base.saturating_mul(1 << failures.min(8).saturating_sub(1));
    let capped = exp.min(MAX_BACKOFF);
    // ±20 % jitter so many controllers do not retry in step.
    capped.mul_f64(0.8 + fastrand::f64() * 0.4)
}

/// Whether a task should receive traffic: running, meant to keep running,
/// and not unhealthy.
pub fn routable(task: &Task) -> bool {
    task.last_status() == Some("RUNNING")
        && task.desired_status() == Some("RUNNING")
        && task.health_status() != Some(&HealthStatus::Unhealthy)
}

/// The service name of one container port, in order of precedence: the
/// docker label `ecsmesh.service.<port>`, then `ecsmesh.service`;
/// registrator's `SERVICE_<port>_NAME`, then `SERVICE_NAME`; the ECS
/// service (`group` = `service:<name>`); the container's name.
pub fn service_name(task: &Task, def: &ContainerDefinition, container_port: i32) -> Option<String> {
    let labels = def.docker_labels();
    let label = |k: &str| {
        labels
            .and_then(|l| l.get(k))
            .filter(|v| !v.is_empty())
            .cloned()
    };
    let env = |k: &str| {
        def.environment()
            .iter()
            .find(|kv| kv.name() == Some(k))
            .and_then(|kv| kv.value())
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    };
    label(&format!("ecsmesh.service.{container_port}"))
        .or_else(|| label("ecsmesh.service"))
        .or_else(|| env(&format!("SERVICE_{container_port}_NAME")))
        .or_else(|| env("SERVICE_NAME"))
        .or_else(|| {
            task.group()
                .and_then(|g| g.strip_prefix("service:"))
                .map(str::to_owned)
        })
        .or_else(|| def.name().map(str::to_owned))
}

/// The endpoints one task contributes, by concrete name.
pub fn task_endpoints(
    cluster: &str,
    task: &Task,
    def: &TaskDefinition,
    host: Option<&Host>,
) -> Vec<(Path, Endpoint)> {
    if !routable(task) {
        return Vec::new();
    }
    let awsvpc = def.network_mode() == Some(&NetworkMode::Awsvpc);
    let task_eni_ip = task
        .attachments()
        .iter()
        .filter(|a| a.r#type() == Some("ElasticNetworkInterface"))
        .flat_map(aws_sdk_ecs::types::Attachment::details)
        .find(|d| d.name() == Some("privateIPv4Address"))
        .and_then(|d| d.value())
        .and_then(|v| v.parse::<IpAddr>().ok());
    let mut out = Vec::new();
    for container in task.containers() {
        let Some(cdef) = def
            .container_definitions()
            .iter()
            .find(|d| d.name() == container.name())
        else {
            continue;
        };
        if !container_healthy(container.health_status(), cdef) {
            continue;
        }
        // (container port, address)
        let mut addrs: Vec<(i32, SocketAddr)> = Vec::new();
        if awsvpc {
            let ip = container
                .network_interfaces()
                .iter()
                .find_map(|n| n.private_ipv4_address())
                .and_then(|v| v.parse::<IpAddr>().ok())
                .or(task_eni_ip);
            if let Some(ip) = ip {
                for pm in cdef.port_mappings() {
                    if let Some(port) = pm.container_port().and_then(|p| u16::try_from(p).ok()) {
                        addrs.push((i32::from(port), SocketAddr::new(ip, port)));
                    }
                }
            }
        } else if let Some(ip) = host.and_then(|h| h.ip) {
            let mut seen = HashSet::new();
            for nb in container.network_bindings() {
                // Newer agents report a binding per address family: dedupe.
                let (Some(cport), Some(hport)) = (nb.container_port(), nb.host_port()) else {
                    continue;
                };
                let Ok(hport) = u16::try_from(hport) else {
                    continue;
                };
                if hport != 0 && seen.insert((cport, hport)) {
                    addrs.push((cport, SocketAddr::new(ip, hport)));
                }
            }
        }
        for (container_port, addr) in addrs {
            let Some(name) =
                service_name(task, cdef, container_port).and_then(|svc| names::ecs(cluster, &svc))
            else {
                continue;
            };
            let mut e = Endpoint::new(addr);
            let mut meta = |k: &str, v: Option<&str>| {
                if let Some(v) = v {
                    e.meta.insert(k.to_owned(), v.to_owned());
                }
            };
            meta(meta::TASK_ARN, task.task_arn());
            meta(meta::CONTAINER, container.name());
            meta(meta::CONTAINER_INSTANCE, task.container_instance_arn());
            meta(meta::INSTANCE_ID, host.map(|h| h.instance_id.as_str()));
            meta(
                meta::HOST_IP,
                host.and_then(|h| h.ip).map(|ip| ip.to_string()).as_deref(),
            );
            meta(
                meta::AVAILABILITY_ZONE,
                task.availability_zone()
                    .or_else(|| host.and_then(|h| h.availability_zone.as_deref())),
            );
            let family_revision = def.family().map(|f| format!("{f}:{}", def.revision()));
            meta(meta::TASK_DEFINITION, family_revision.as_deref());
            out.push((name, e));
        }
    }
    out
}

/// A container with a health check must be HEALTHY; one without may be
/// UNKNOWN; UNHEALTHY never routes.
fn container_healthy(status: Option<&HealthStatus>, def: &ContainerDefinition) -> bool {
    match status {
        Some(HealthStatus::Unhealthy) => false,
        Some(HealthStatus::Healthy) => true,
        _ => def.health_check().is_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_ecs::types::{
        Container, ContainerDefinition, HealthCheck, NetworkBinding, PortMapping,
    };

    fn task(task_health: Option<HealthStatus>, container_health: Option<HealthStatus>) -> Task {
        Task::builder()
            .task_arn("arn:aws:ecs:us-east-1:1:task/c/t1")
            .last_status("RUNNING")
            .desired_status("RUNNING")
            .group("service:web")
            .set_health_status(task_health)
            .containers(
                Container::builder()
                    .name("web")
                    .set_health_status(container_health)
                    .network_bindings(
                        NetworkBinding::builder()
                            .container_port(8080)
                            .host_port(49153)
                            .build(),
                    )
                    .build(),
            )
            .build()
    }

    fn definition(checked: bool) -> TaskDefinition {
        let mut c = ContainerDefinition::builder()
            .name("web")
            .port_mappings(PortMapping::builder().container_port(8080).build());
        if checked {
            c = c.health_check(
                HealthCheck::builder()
                    .command("CMD-SHELL")
                    .command("true")
                    .build()
                    .unwrap_or_else(|e| panic!("{e}")),
            );
        }
        TaskDefinition::builder()
            .family("web")
            .network_mode(NetworkMode::Bridge)
            .container_definitions(c.build())
            .build()
    }

    fn routed(task: &Task, def: &TaskDefinition) -> usize {
        let host = Host {
            instance_id: "i-1".into(),
            availability_zone: None,
            ip: "10.0.0.1".parse().ok(),
        };
        task_endpoints("c", task, def, Some(&host)).len()
    }

    #[test]
    fn unhealthy_tasks_and_containers_are_not_routed() {
        use HealthStatus::{Healthy, Unhealthy};
        let unknown = || HealthStatus::from("UNKNOWN");
        // A task ECS reports UNHEALTHY: never.
        assert_eq!(
            routed(&task(Some(Unhealthy), Some(Healthy)), &definition(true)),
            0
        );
        // A container that is UNHEALTHY: never, checked or not.
        assert_eq!(routed(&task(None, Some(Unhealthy)), &definition(false)), 0);
        // With a health check, only HEALTHY routes (UNKNOWN: not yet checked).
        assert_eq!(
            routed(&task(Some(unknown()), Some(unknown())), &definition(true)),
            0
        );
        assert_eq!(
            routed(&task(Some(Healthy), Some(Healthy)), &definition(true)),
            1
        );
        // Without one, UNKNOWN is all ECS can say: it routes.
        assert_eq!(
            routed(&task(Some(unknown()), Some(unknown())), &definition(false)),
            1
        );
    }
}

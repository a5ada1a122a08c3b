//! The simulated ECS: `bench/moto_bench.py serve` (the project's patched
//! moto with ECS-style ListTasks pages and a call log), its population, the
//! changes the benchmark makes through the ECS API, and reading resyncs
//! back from the call log.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, bail};
use serde::Deserialize;

use crate::http;

/// The region moto's backend for the benchmark lives in.
pub const REGION: &str = "us-west-1";
/// ECS's JSON protocol target prefix.
const ECS_TARGET: &str = "AmazonEC2ContainerServiceV20141113";
/// moto takes the region from the credential scope; it does not check signatures.
const AUTH: &str = "AWS4-HMAC-SHA256 Credential=testing/20260101/us-west-1/ecs/aws4_request, SignedHeaders=host, Signature=00";

/// The emulator process; killed on drop.
#[derive(Debug)]
pub struct Emulator {
    child: Child,
    pub endpoint: String,
    _dir: tempfile::TempDir,
}

/// `program`, pinned to `cpus` with taskset when given.
pub fn pinned(program: &Path, cpus: Option<&str>) -> Command {
    match cpus {
        Some(cpus) => {
            let mut c = Command::new("taskset");
            c.args(["-c", cpus]).arg(program);
            c
        }
        None => Command::new(program),
    }
}

/// A scratch directory removed on drop.
pub fn scratch(tag: &str) -> anyhow::Result<tempfile::TempDir> {
    Ok(tempfile::Builder::new()
        .prefix(&format!("ecsmesh-bench-{tag}-"))
        .tempdir()?)
}

/// What `populate` built.
#[derive(Debug, Deserialize)]
pub struct Population {
    pub cluster: String,
    pub instances: usize,
    pub services: Vec<String>,
    pub tasks: usize,
    pub instances_seconds: f64,
    pub tasks_seconds: f64,
    pub hosts: Vec<Host>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Host {
    pub instance_id: String,
    pub ip: String,
}

/// One API call the emulator answered: `[operation, first ListTasks page,
/// start, end, n, last ListTasks page]` (wall-clock seconds).
#[derive(Debug, Clone, Deserialize)]
pub struct Call(pub String, pub bool, pub f64, pub f64, pub usize, pub bool);

impl Call {
    pub fn op(&self) -> &str {
        &self.0
    }
    pub fn first_page(&self) -> bool {
        self.1
    }
    pub fn start(&self) -> f64 {
        self.2
    }
    pub fn end(&self) -> f64 {
        self.3
    }
}

/// One ECS event the emulator emitted: `[detail-type, resource ARN,
/// detail.version, lastStatus or status, wall-clock time it was queued]`.
#[derive(Debug, Clone, Deserialize)]
pub struct EcsEvent(
    pub String,
    pub String,
    pub Option<i64>,
    pub Option<String>,
    pub f64,
);

impl EcsEvent {
    pub fn is_task(&self) -> bool {
        self.0 == "ECS Task State Change"
    }
    pub fn queued_at(&self) -> f64 {
        self.4
    }
    /// "task-id lastStatus vN", for the results.
    pub fn label(&self) -> String {
        let id = self.1.rsplit('/').next().unwrap_or_default();
        let status = self.3.as_deref().unwrap_or("?");
        let version = self.2.map_or_else(|| "?".to_owned(), |v| v.to_string());
        format!("{id} {status} v{version}")
    }
}

#[derive(Debug, Deserialize)]
struct EventLog {
    total: usize,
    events: Vec<EcsEvent>,
}

/// What `moto_bench.py events` set up: queue name → URL.
#[derive(Debug, Deserialize)]
pub struct EventSetup {
    pub queues: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
struct CallLog {
    in_flight: usize,
    calls: Vec<Call>,
}

/// One resync as the emulator saw it.
#[derive(Debug, Clone)]
pub struct Resync {
    pub start: f64,
    pub end: f64,
    /// Whether every listed task has been described.
    pub complete: bool,
}

/// Seconds since the Unix epoch (the emulator logs in the same clock).
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl Emulator {
    /// Starts the emulator on a free loopback port and waits for its ready
    /// file; pinned to `cpus` with taskset when given.
    pub fn start(python: &Path, script: &Path, cpus: Option<&str>) -> anyhow::Result<Self> {
        let dir = scratch("moto")?;
        let ready = dir.path().join("ready.json");
        let mut cmd = pinned(python, cpus);
        let child = cmd
            .arg(script)
            .args(["serve", "--port", "0", "--exit-with-parent", "--ready-file"])
            .arg(&ready)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {} {}", python.display(), script.display()))?;
        let mut emulator = Self {
            child,
            endpoint: String::new(),
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_mins(1);
        loop {
            if let Ok(text) = std::fs::read_to_string(&ready) {
                let v: serde_json::Value = serde_json::from_str(&text)?;
                let port = v["port"].as_u64().context("ready file without a port")?;
                emulator.endpoint = format!("http://127.0.0.1:{port}");
                return Ok(emulator);
            }
            if let Some(status) = emulator.child.try_wait()? {
                bail!("the emulator exited early: {status}");
            }
            if Instant::now() > deadline {
                bail!("the emulator did not start within 60 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Builds the cluster (a subprocess: boto3, as the tests do).
    pub fn populate(
        &self,
        python: &Path,
        script: &Path,
        instances: usize,
        services: usize,
        tasks_per_service: usize,
    ) -> anyhow::Result<Population> {
        let out = Command::new(python)
            .arg(script)
            .args(["populate", "--endpoint", &self.endpoint])
            .args(["--instances", &instances.to_string()])
            .args(["--services", &services.to_string()])
            .args(["--tasks-per-service", &tasks_per_service.to_string()])
            .stderr(Stdio::inherit())
            .output()
            .context("running populate")?;
        if !out.status.success() {
            bail!("populate failed: {}", out.status);
        }
        serde_json::from_slice(&out.stdout).context("populate's summary")
    }

    /// Creates SQS queues that the EventBridge rule feeds the cluster's ECS
    /// events to from now on (instead of any earlier queue), and DynamoDB
    /// store tables (a subprocess: boto3).
    pub fn events_setup(
        &self,
        python: &Path,
        script: &Path,
        queues: &[&str],
        tables: &[&str],
    ) -> anyhow::Result<EventSetup> {
        let mut cmd = Command::new(python);
        cmd.arg(script)
            .args(["events", "--endpoint", &self.endpoint]);
        for q in queues {
            cmd.args(["--queue", q]);
        }
        for t in tables {
            cmd.args(["--table", t]);
        }
        let out = cmd
            .stderr(Stdio::inherit())
            .output()
            .context("running events")?;
        if !out.status.success() {
            bail!("events set-up failed: {}", out.status);
        }
        serde_json::from_slice(&out.stdout).context("the events set-up's summary")
    }

    /// The ECS events the emulator emitted from entry `since`, and how many
    /// it has emitted in all.
    pub async fn ecs_events(&self, since: usize) -> anyhow::Result<(Vec<EcsEvent>, usize)> {
        let body = http::get(&format!("{}/bench/events?since={since}", self.endpoint)).await?;
        let log: EventLog = serde_json::from_slice(&body).context("the event log")?;
        Ok((log.events, log.total))
    }

    /// The call log from entry `since`, and how many calls are in flight.
    pub async fn calls(&self, since: usize) -> anyhow::Result<(Vec<Call>, usize)> {
        let body = http::get(&format!("{}/bench/calls?since={since}", self.endpoint)).await?;
        let log: CallLog = serde_json::from_slice(&body).context("the call log")?;
        Ok((log.calls, log.in_flight))
    }

    /// One ECS API call (JSON 1.1), as the benchmark's driver (not logged).
    async fn ecs(
        &self,
        operation: &str,
        body: serde_json::Value,
    ) -> anyhow::Result<serde_json::Value> {
        let target = format!("{ECS_TARGET}.{operation}");
        let (status, resp) = http::request(
            ::http::Method::POST,
            &format!("{}/", self.endpoint),
            &[
                ("content-type", "application/x-amz-json-1.1"),
                ("x-amz-target", &target),
                ("authorization", AUTH),
                ("x-bench-driver", "1"),
            ],
            serde_json::to_vec(&body)?,
        )
        .await?;
        if !status.is_success() {
            bail!(
                "{operation}: {status}: {}",
                String::from_utf8_lossy(&resp[..resp.len().min(300)])
            );
        }
        Ok(serde_json::from_slice(&resp)?)
    }

    pub async fn scale(&self, cluster: &str, service: &str, desired: u32) -> anyhow::Result<()> {
        self.ecs(
            "UpdateService",
            serde_json::json!({"cluster": cluster, "service": service, "desiredCount": desired}),
        )
        .await
        .map(drop)
    }

    /// Stops the service's first running task (the scheduler replaces it).
    pub async fn stop_one_task(&self, cluster: &str, service: &str) -> anyhow::Result<String> {
        let listed = self
            .ecs(
                "ListTasks",
                serde_json::json!({"cluster": cluster, "serviceName": service, "maxResults": 1}),
            )
            .await?;
        let arn = listed["taskArns"][0]
            .as_str()
            .with_context(|| format!("service {service} has no task"))?
            .to_owned();
        self.ecs(
            "StopTask",
            serde_json::json!({"cluster": cluster, "task": arn, "reason": "bench"}),
        )
        .await?;
        Ok(arn)
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The controller's resyncs in a call log: each starts at a first ListTasks
/// page; it is complete once the pages have ended and every listed task has
/// been described.
pub fn resyncs(calls: &[Call]) -> Vec<Resync> {
    let mut out: Vec<Resync> = Vec::new();
    let (mut listed, mut described, mut last_page) = (0usize, 0usize, false);
    for c in calls {
        if c.first_page() {
            if let Some(r) = out.last_mut() {
                r.complete = last_page && listed == described;
            }
            out.push(Resync {
                start: c.start(),
                end: c.end(),
                complete: false,
            });
            (listed, described, last_page) = (0, 0, false);
        }
        let Some(r) = out.last_mut() else { continue };
        r.end = r.end.max(c.end());
        match c.op() {
            "ListTasks" => {
                listed += c.4;
                last_page = c.5;
            }
            "DescribeTasks" => described += c.4,
            _ => {}
        }
    }
    if let Some(r) = out.last_mut() {
        r.complete = last_page && listed == described;
    }
    out
}

/// Follows the call log, keeping all of it.
#[derive(Debug, Default)]
pub struct Log {
    pub calls: Vec<Call>,
    in_flight: usize,
}

impl Log {
    pub async fn refresh(&mut self, emulator: &Emulator) -> anyhow::Result<()> {
        let (new, in_flight) = emulator.calls(self.calls.len()).await?;
        self.calls.extend(new);
        self.in_flight = in_flight;
        Ok(())
    }

    /// Waits until the controller is between resyncs: nothing in flight,
    /// the last resync complete, and `quiet` since its last call. Returns
    /// how many resyncs the whole log holds.
    pub async fn wait_idle(
        &mut self,
        emulator: &Emulator,
        quiet: Duration,
        timeout: Duration,
    ) -> anyhow::Result<usize> {
        let deadline = Instant::now() + timeout;
        loop {
            self.refresh(emulator).await?;
            let rs = resyncs(&self.calls);
            if let Some(last) = rs.last()
                && last.complete
                && self.in_flight == 0
                && unix_now() - last.end >= quiet.as_secs_f64()
            {
                return Ok(rs.len());
            }
            if Instant::now() > deadline {
                bail!("the controller's resyncs did not settle within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until `count` resyncs have completed and the controller is idle.
    pub async fn wait_resyncs(
        &mut self,
        emulator: &Emulator,
        count: usize,
        quiet: Duration,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let done = self
                .wait_idle(
                    emulator,
                    quiet,
                    deadline.saturating_duration_since(Instant::now()),
                )
                .await?;
            if done >= count {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

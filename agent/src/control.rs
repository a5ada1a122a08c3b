//! Following the controller: one `Mesh.Stream`, reconnected with backoff
//! and jitter forever. Snapshots replace the routing table; deltas apply on
//! top of the version they name; each is ACKed once installed, or NACKed
//! (and the table kept) if it cannot be applied.
//!
//! Static stability: every installed version is written to disk
//! (atomically), restored at start when the controller is away, and kept in
//! force for as long as the controller stays away.

use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ecsmesh_proto::v1 as pb;
use ecsmesh_state::MeshState;
use prost::Message as _;
use tokio::sync::{mpsc, watch};
use tonic::transport::Channel;

use crate::metrics::Metrics;
use crate::routes::Routes;
use crate::tls::ControllerEndpoint;

const SNAPSHOT_FILE: &str = "snapshot.pb";
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(15);

/// Who this agent is, as told to the controller.
#[derive(Clone, Debug, Default)]
pub struct AgentInfo {
    pub instance_id: String,
    pub host_ip: String,
    pub availability_zone: String,
    pub namespace: String,
    pub cluster: String,
}

/// Traffic summaries for the controller's dashboard.
#[derive(Clone, Debug)]
pub struct Summaries {
    pub metrics: Arc<Metrics>,
    /// Zero turns them off.
    pub interval: Duration,
}

/// The agent's view of its control plane (admin `/ready`, metrics).
#[derive(Clone, Debug, Default)]
pub struct ControlStatus {
    pub connected: bool,
    /// The controller replica followed now (or last).
    pub controller: Option<String>,
    /// The installed version, 0 before the first.
    pub version: u64,
    pub epoch: String,
    /// Where the installed state came from.
    pub from_disk: bool,
    pub last_update: Option<Instant>,
    pub last_error: Option<String>,
}

/// Reads and writes the last installed snapshot.
#[derive(Debug, Clone)]
pub struct SnapshotFile {
    path: PathBuf,
}

impl SnapshotFile {
    pub fn new(dir: &FsPath) -> Self {
        Self {
            path: dir.join(SNAPSHOT_FILE),
        }
    }

    /// The saved snapshot, if there is a readable one.
    pub fn load(&self) -> Option<pb::Snapshot> {
        let bytes = std::fs::read(&self.path).ok()?;
        match pb::Snapshot::decode(bytes.as_slice()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "ignoring an unreadable saved snapshot");
                None
            }
        }
    }

    /// Replaces the file atomically (temporary file, fsync, rename).
    pub fn save(&self, snapshot: &pb::Snapshot) -> std::io::Result<()> {
        use std::io::Write as _;
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = self.path.with_extension("pb.tmp");
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&snapshot.encode_to_vec())?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    }
}

/// Installs the saved snapshot, if any. Returns whether one was installed.
pub fn restore(
    file: &SnapshotFile,
    routes: &Routes,
    status: &watch::Sender<ControlStatus>,
) -> bool {
    let Some(snapshot) = file.load() else {
        return false;
    };
    match MeshState::from_snapshot(&snapshot) {
        Ok(mesh) => {
            routes.install(snapshot.version, snapshot.epoch.clone(), Arc::new(mesh));
            status.send_modify(|s| {
                s.version = snapshot.version;
                s.epoch.clone_from(&snapshot.epoch);
                s.from_disk = true;
                s.last_update = Some(Instant::now());
            });
            tracing::info!(
                version = snapshot.version,
                "serving the saved snapshot until the controller answers"
            );
            true
        }
        Err(e) => {
            tracing::warn!(error = %e, "ignoring an invalid saved snapshot");
            false
        }
    }
}

/// Follows the controller forever. With several replicas, a stream that
/// ends or cannot start moves on to the next one at once; only a whole
/// round of failures backs off.
pub async fn run(
    controllers: Vec<ControllerEndpoint>,
    info: AgentInfo,
    routes: Arc<Routes>,
    file: SnapshotFile,
    status: watch::Sender<ControlStatus>,
    summaries: Summaries,
) {
    let saver = Saver::start(file);
    let mut failures = 0u32;
    let replicas = u32::try_from(controllers.len().max(1)).unwrap_or(u32::MAX);
    for controller in controllers.iter().cycle() {
        let started = Instant::now();
        let result = follow(controller, &info, &routes, &saver, &status, &summaries).await;
        status.send_modify(|s| s.connected = false);
        if let Err(e) = &result {
            tracing::warn!(%controller, error = %e, "controller stream ended; routing on the last state");
            status.send_modify(|s| s.last_error = Some(e.to_string()));
        }
        // A stream that lived a while resets the backoff.
        failures = if started.elapsed() > Duration::from_secs(30) {
            0
        } else {
            failures.saturating_add(1)
        };
        if failures == 0 || !failures.is_multiple_of(replicas) {
            continue;
        }
        let rounds = failures / replicas;
        let backoff = BACKOFF_MIN
            .saturating_mul(1 << rounds.min(8))
            .min(BACKOFF_MAX);
        tokio::time::sleep(backoff.mul_f64(0.5 + fastrand::f64() * 0.5)).await;
    }
}

#[derive(Debug, thiserror::Error)]
enum StreamError {
    #[error("connecting: {0}")]
    Connect(#[from] tonic::transport::Error),
    #[error("stream: {0}")]
    Status(#[from] tonic::Status),
    #[error("the controller closed the stream")]
    Closed,
    #[error(transparent)]
    Token(#[from] crate::tls::TokenError),
}

async fn connect(controller: &ControllerEndpoint) -> Result<Channel, StreamError> {
    Ok(controller.connect().await?)
}

/// One stream, until it ends.
async fn follow(
    controller: &ControllerEndpoint,
    info: &AgentInfo,
    routes: &Routes,
    saver: &Saver,
    status: &watch::Sender<ControlStatus>,
    summaries: &Summaries,
) -> Result<(), StreamError> {
    let bearer = controller.bearer()?;
    let channel = connect(controller).await?;
    let (tx, rx) = mpsc::channel(8);
    let held = status.borrow().clone();
    let _ = tx
        .send(pb::AgentMessage {
            kind: Some(pb::agent_message::Kind::Hello(pb::Hello {
                instance_id: info.instance_id.clone(),
                host_ip: info.host_ip.clone(),
                availability_zone: info.availability_zone.clone(),
                namespace: info.namespace.clone(),
                agent_version: env!("CARGO_PKG_VERSION").to_owned(),
                last_applied_version: held.version,
                last_applied_epoch: held.epoch,
                cluster: info.cluster.clone(),
            })),
        })
        .await;
    let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    if let Some(bearer) = bearer {
        request.metadata_mut().insert("authorization", bearer);
    }
    let mut inbound = pb::mesh_client::MeshClient::new(channel)
        .max_decoding_message_size(ecsmesh_proto::MAX_SNAPSHOT_BYTES)
        .stream(request)
        .await?
        .into_inner();
    status.send_modify(|s| {
        s.connected = true;
        s.controller = Some(controller.to_string());
        s.last_error = None;
    });
    tracing::info!(%controller, "following the controller");
    // Ends with the stream: the task stops when its sender is refused.
    let _summaries = (!summaries.interval.is_zero())
        .then(|| AbortOnDrop(tokio::spawn(send_summaries(summaries.clone(), tx.clone()))));
    let mut parts = ecsmesh_proto::SnapshotAssembler::default();
    while let Some(msg) = inbound.message().await? {
        let reply = match msg.kind {
            Some(pb::controller_message::Kind::Snapshot(s)) => {
                parts.reset();
                apply_snapshot(s, routes, saver, status)
            }
            Some(pb::controller_message::Kind::SnapshotPart(part)) => match parts.push(part) {
                Ok(Some(s)) => apply_snapshot(s, routes, saver, status),
                Ok(None) => continue,
                Err(e) => nack(e.version(), &e.to_string()),
            },
            Some(pb::controller_message::Kind::Delta(d)) => {
                parts.reset();
                apply_delta(&d, routes, saver, status)
            }
            None => continue,
        };
        if tx
            .send(pb::AgentMessage { kind: Some(reply) })
            .await
            .is_err()
        {
            break;
        }
    }
    Err(StreamError::Closed)
}

/// Aborts the task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Sends a traffic summary every interval: the first carries every service,
/// later ones only those whose counts moved.
async fn send_summaries(summaries: Summaries, tx: mpsc::Sender<pb::AgentMessage>) {
    let mut sent = std::collections::HashMap::new();
    let mut ticks = tokio::time::interval(summaries.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let summary = summaries.metrics.summary(&mut sent);
        let msg = pb::AgentMessage {
            kind: Some(pb::agent_message::Kind::Summary(summary)),
        };
        if tx.send(msg).await.is_err() {
            break;
        }
    }
}

fn apply_snapshot(
    snapshot: pb::Snapshot,
    routes: &Routes,
    saver: &Saver,
    status: &watch::Sender<ControlStatus>,
) -> pb::agent_message::Kind {
    let version = snapshot.version;
    match MeshState::from_snapshot(&snapshot) {
        Ok(mesh) => {
            let mesh = Arc::new(mesh);
            install(
                version,
                snapshot.epoch.clone(),
                Arc::clone(&mesh),
                routes,
                status,
            );
            saver.save(version, snapshot.epoch, mesh);
            tracing::info!(version, "installed a snapshot");
            pb::agent_message::Kind::Ack(pb::Ack { version })
        }
        Err(e) => nack(version, &e.to_string()),
    }
}

fn apply_delta(
    delta: &pb::Delta,
    routes: &Routes,
    saver: &Saver,
    status: &watch::Sender<ControlStatus>,
) -> pb::agent_message::Kind {
    let table = routes.load();
    if table.epoch != delta.epoch || table.version != delta.base_version {
        return nack(
            delta.version,
            &format!(
                "delta applies to {}@{}, this agent holds {}@{}",
                delta.base_version, delta.epoch, table.version, table.epoch
            ),
        );
    }
    match table.mesh.apply(delta) {
        Ok(mesh) => {
            let mesh = Arc::new(mesh);
            install(
                delta.version,
                delta.epoch.clone(),
                Arc::clone(&mesh),
                routes,
                status,
            );
            saver.save(delta.version, delta.epoch.clone(), mesh);
            tracing::debug!(version = delta.version, "installed a delta");
            pb::agent_message::Kind::Ack(pb::Ack {
                version: delta.version,
            })
        }
        Err(e) => nack(delta.version, &e.to_string()),
    }
}

fn install(
    version: u64,
    epoch: String,
    mesh: Arc<MeshState>,
    routes: &Routes,
    status: &watch::Sender<ControlStatus>,
) {
    routes.install(version, epoch.clone(), mesh);
    status.send_modify(|s| {
        s.version = version;
        s.epoch = epoch;
        s.from_disk = false;
        s.last_update = Some(Instant::now());
    });
}

/// Saves the installed state to disk off the update path: the ACK does
/// not wait for the disk, and the encoding and fsync run on a blocking
/// thread, one at a time, always of the newest state (updates that come
/// faster than the disk takes them are saved only as the latest). A
/// restart may thus find a slightly older version, which the controller
/// then brings up to date.
#[derive(Debug)]
struct Saver {
    latest: watch::Sender<Option<Pending>>,
}

/// A state waiting to be saved.
#[derive(Clone, Debug)]
struct Pending {
    version: u64,
    epoch: String,
    mesh: Arc<MeshState>,
}

impl Saver {
    fn start(file: SnapshotFile) -> Self {
        let (latest, mut next) = watch::channel::<Option<Pending>>(None);
        tokio::spawn(async move {
            while next.changed().await.is_ok() {
                let Some(p) = next.borrow_and_update().clone() else {
                    continue;
                };
                let file = file.clone();
                let saved = tokio::task::spawn_blocking(move || {
                    file.save(&p.mesh.to_snapshot(p.version, &p.epoch))
                })
                .await;
                match saved {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::warn!(error = %e, "could not save the snapshot"),
                    Err(e) => tracing::warn!(error = %e, "could not save the snapshot"),
                }
            }
        });
        Self { latest }
    }

    /// Saves this state soon (a failure is logged, not fatal: routing goes on).
    fn save(&self, version: u64, epoch: String, mesh: Arc<MeshState>) {
        self.latest.send_replace(Some(Pending {
            version,
            epoch,
            mesh,
        }));
    }
}

fn nack(version: u64, error: &str) -> pb::agent_message::Kind {
    tracing::warn!(version, error, "rejecting an update from the controller");
    pb::agent_message::Kind::Nack(pb::Nack {
        version,
        error: error.to_owned(),
    })
}

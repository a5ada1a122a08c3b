//! Simulated agents: each one its own HTTP/2 connection and `Mesh.Stream`,
//! following the protocol as `agent/src/control.rs` does: Hello, then apply
//! every snapshot and delta with `ecsmesh-state` (a delta only on top of the
//! version it names, else NACK) and ACK it.
//!
//! What a real agent does and these do not: build the routing table
//! (balancers) and write the snapshot to disk before the ACK. Both are the
//! agent's cost, not the controller's; the figures here are the controller's
//! and the protocol's.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, bail};
use ecsmesh_proto::v1 as pb;
use ecsmesh_state::MeshState;
use prost::Message as _;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;

/// One message an agent received and answered.
#[derive(Debug, Clone)]
pub struct Event {
    pub version: u64,
    pub snapshot: bool,
    /// The protobuf-encoded `ControllerMessage` (gRPC adds 5 bytes of framing).
    pub bytes: usize,
    pub acked_at: SystemTime,
    pub nacked: bool,
    /// Endpoints upserted and removed, dtabs and service policies changed
    /// or removed (deltas); endpoints, dtabs and policies (snapshots).
    pub upserted: usize,
    pub removed: usize,
    pub dtabs: usize,
    pub policies: usize,
}

#[derive(Debug, Default)]
pub struct AgentLog {
    pub acked: AtomicU64,
    pub events: Mutex<Vec<Event>>,
    pub failed: Mutex<Option<String>>,
}

impl AgentLog {
    pub fn events(&self) -> Vec<Event> {
        self.events
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// Applied states by (epoch, version). Every agent decodes and applies every
/// message itself (the work a real agent does); it then keeps the state
/// another simulated agent already holds for that version, if any. Versions
/// name states within an epoch, so this only saves memory: a thousand
/// copies of a 10,000-endpoint table would not fit beside the controller.
#[derive(Debug, Default)]
struct Interner(Mutex<HashMap<(String, u64), Weak<MeshState>>>);

impl Interner {
    fn intern(&self, epoch: &str, version: u64, state: MeshState) -> Arc<MeshState> {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let key = (epoch.to_owned(), version);
        if let Some(held) = map.get(&key).and_then(Weak::upgrade) {
            return held;
        }
        if map.len() > 64 {
            map.retain(|_, w| w.strong_count() > 0);
        }
        let state = Arc::new(state);
        map.insert(key, Arc::downgrade(&state));
        state
    }
}

/// The simulated agents; their streams close when this is dropped.
#[derive(Debug)]
pub struct Fleet {
    pub agents: Vec<Arc<AgentLog>>,
    _tasks: JoinSet<()>,
}

/// Who a simulated agent says it is.
#[derive(Debug, Clone)]
pub struct Identity {
    pub instance_id: String,
    pub host_ip: String,
}

impl Fleet {
    /// Connects one agent per identity, at most `concurrency` at a time
    /// waiting for their first snapshot, and waits until all have ACKed one.
    pub async fn connect(
        controller: &str,
        cluster: &str,
        identities: Vec<Identity>,
        concurrency: usize,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        let interner = Arc::new(Interner::default());
        let gate = Arc::new(Semaphore::new(concurrency));
        let mut tasks = JoinSet::new();
        let mut agents = Vec::with_capacity(identities.len());
        for id in identities {
            let log = Arc::new(AgentLog::default());
            agents.push(Arc::clone(&log));
            let permit = Arc::clone(&gate).acquire_owned().await?;
            let hello = pb::Hello {
                instance_id: id.instance_id,
                host_ip: id.host_ip,
                availability_zone: format!("{}a", crate::emulator::REGION),
                namespace: "default".to_owned(),
                agent_version: "bench".to_owned(),
                last_applied_version: 0,
                last_applied_epoch: String::new(),
                cluster: cluster.to_owned(),
            };
            let (controller, interner) = (controller.to_owned(), Arc::clone(&interner));
            tasks.spawn(async move {
                let mut permit = Some(permit);
                if let Err(e) = follow(&controller, hello, &log, &interner, &mut permit).await {
                    *log.failed.lock().unwrap_or_else(PoisonError::into_inner) =
                        Some(format!("{e:#}"));
                }
            });
        }
        let fleet = Self {
            agents,
            _tasks: tasks,
        };
        fleet.wait_acked(1, timeout).await?;
        Ok(fleet)
    }

    /// The lowest version every agent has ACKed.
    pub fn min_acked(&self) -> u64 {
        self.agents
            .iter()
            .map(|a| a.acked.load(Ordering::Acquire))
            .min()
            .unwrap_or(0)
    }

    /// Waits until every agent has ACKed `version` or later; fails early
    /// if a stream failed.
    pub async fn wait_acked(&self, version: u64, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.min_acked() >= version {
                return Ok(());
            }
            if let Some(e) = self.agents.iter().find_map(|a| {
                a.failed
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone()
            }) {
                bail!("a simulated agent failed: {e}");
            }
            if Instant::now() > deadline {
                let behind = self
                    .agents
                    .iter()
                    .filter(|a| a.acked.load(Ordering::Acquire) < version)
                    .count();
                bail!("{behind} agents had not ACKed version {version} after {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// For each agent, the first message after `version` it ACKed (the one
    /// carrying the change), and the bytes of every message after `version`
    /// up to and including that one.
    pub fn after(&self, version: u64) -> Vec<(Event, usize)> {
        self.agents
            .iter()
            .filter_map(|a| {
                let events = a.events();
                let mut bytes = 0;
                for e in events.into_iter().filter(|e| e.version > version) {
                    bytes += e.bytes;
                    if !e.nacked {
                        return Some((e, bytes));
                    }
                }
                None
            })
            .collect()
    }
}

/// One agent's stream, until it ends. Mirrors `agent/src/control.rs`.
async fn follow(
    controller: &str,
    hello: pb::Hello,
    log: &AgentLog,
    interner: &Interner,
    permit: &mut Option<tokio::sync::OwnedSemaphorePermit>,
) -> anyhow::Result<()> {
    let channel = tonic::transport::Endpoint::from_shared(controller.to_owned())?
        .connect_timeout(Duration::from_secs(3))
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(20))
        .connect()
        .await
        .context("connecting")?;
    let (tx, rx) = mpsc::channel(8);
    tx.send(pb::AgentMessage {
        kind: Some(pb::agent_message::Kind::Hello(hello)),
    })
    .await?;
    // The agent's limit on one message.
    let mut inbound = pb::mesh_client::MeshClient::new(channel)
        .max_decoding_message_size(ecsmesh_proto::MAX_SNAPSHOT_BYTES)
        .stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    let mut held: Option<(u64, String, Arc<MeshState>)> = None;
    // A snapshot in parts counts every part's bytes.
    let mut parts = ecsmesh_proto::SnapshotAssembler::default();
    let mut part_bytes = 0;
    while let Some(msg) = inbound.message().await? {
        let bytes = msg.encoded_len() + std::mem::take(&mut part_bytes);
        let (reply, mut event) = match msg.kind {
            Some(pb::controller_message::Kind::Snapshot(s)) => {
                apply_snapshot(&s, interner, &mut held)
            }
            Some(pb::controller_message::Kind::SnapshotPart(part)) => {
                let Some(s) = parts.push(part)? else {
                    part_bytes = bytes;
                    continue;
                };
                apply_snapshot(&s, interner, &mut held)
            }
            Some(pb::controller_message::Kind::Delta(d)) => apply_delta(&d, interner, &mut held),
            None => continue,
        };
        tx.send(pb::AgentMessage { kind: Some(reply) }).await?;
        event.bytes = bytes;
        event.acked_at = SystemTime::now();
        if !event.nacked {
            log.acked.store(event.version, Ordering::Release);
        }
        log.events
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(event);
        // The first snapshot is in: let the next agent connect.
        permit.take();
    }
    bail!("the controller closed the stream")
}

fn event(version: u64, snapshot: bool) -> Event {
    Event {
        version,
        snapshot,
        bytes: 0,
        acked_at: SystemTime::UNIX_EPOCH,
        nacked: false,
        upserted: 0,
        removed: 0,
        dtabs: 0,
        policies: 0,
    }
}

fn ack(version: u64) -> pb::agent_message::Kind {
    pb::agent_message::Kind::Ack(pb::Ack { version })
}

fn nack(version: u64, error: String) -> pb::agent_message::Kind {
    pb::agent_message::Kind::Nack(pb::Nack { version, error })
}

fn apply_snapshot(
    s: &pb::Snapshot,
    interner: &Interner,
    held: &mut Option<(u64, String, Arc<MeshState>)>,
) -> (pb::agent_message::Kind, Event) {
    let mut e = event(s.version, true);
    match MeshState::from_snapshot(s) {
        Ok(mesh) => {
            e.upserted = mesh.endpoint_count();
            e.dtabs = mesh.dtabs.len();
            e.policies = s.policies.len();
            *held = Some((
                s.version,
                s.epoch.clone(),
                interner.intern(&s.epoch, s.version, mesh),
            ));
            (ack(s.version), e)
        }
        Err(err) => {
            e.nacked = true;
            (nack(s.version, err.to_string()), e)
        }
    }
}

fn apply_delta(
    d: &pb::Delta,
    interner: &Interner,
    held: &mut Option<(u64, String, Arc<MeshState>)>,
) -> (pb::agent_message::Kind, Event) {
    let mut e = event(d.version, false);
    e.upserted = d.endpoint_changes.iter().map(|c| c.upserted.len()).sum();
    e.removed = d.endpoint_changes.iter().map(|c| c.removed.len()).sum();
    e.dtabs = d.dtabs.len();
    e.policies = d.policies.len() + d.removed_policies.len();
    let Some((version, epoch, mesh)) = held.as_ref() else {
        e.nacked = true;
        return (nack(d.version, "a delta before any snapshot".into()), e);
    };
    if *epoch != d.epoch || *version != d.base_version {
        e.nacked = true;
        let error = format!(
            "delta applies to {}@{}, this agent holds {version}@{epoch}",
            d.base_version, d.epoch
        );
        return (nack(d.version, error), e);
    }
    match mesh.apply(d) {
        Ok(next) => {
            *held = Some((
                d.version,
                d.epoch.clone(),
                interner.intern(&d.epoch, d.version, next),
            ));
            (ack(d.version), e)
        }
        Err(err) => {
            e.nacked = true;
            (nack(d.version, err.to_string()), e)
        }
    }
}

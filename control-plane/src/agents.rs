//! Which agents are connected, and which version each holds: the
//! controller's view of convergence (`/agents`, `ecsmeshctl status`,
//! the lag metrics).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use ecsmesh_metrics::unix_now;
use ecsmesh_proto::v1 as pb;
use serde::Serialize;

use crate::limits::TrafficLimits;
use crate::traffic::{AgentTraffic, Dropped, MeshTraffic, ServiceNames, Stats, aggregate};

/// How much traffic history is kept per series: the longest window the
/// dashboard asks for.
pub const TRAFFIC_HISTORY: Duration = Duration::from_mins(5);

/// One agent stream's state.
#[derive(Clone, Debug, Serialize)]
pub struct AgentStatus {
    pub instance_id: String,
    pub host_ip: String,
    pub availability_zone: String,
    pub namespace: String,
    pub agent_version: String,
    pub cluster: String,
    /// The last version sent to it.
    pub sent_version: u64,
    /// The last version it ACKed (0 before the first).
    pub acked_version: u64,
    /// Seconds since the Unix epoch of the last ACK.
    pub last_ack_unix: Option<f64>,
    /// The last NACK's error, cleared by the next ACK.
    pub last_nack: Option<String>,
    pub connected_unix: f64,
}

/// The registry of connected agents, keyed by stream.
#[derive(Debug, Default)]
pub struct Agents {
    next_id: Mutex<u64>,
    streams: Mutex<BTreeMap<u64, AgentStatus>>,
    /// Each stream's traffic summaries (apart: `list` need not copy them).
    traffic: Mutex<Traffic>,
    limits: TrafficLimits,
}

/// Every stream's traffic, and the service names they hold together.
#[derive(Debug, Default)]
struct Traffic {
    agents: BTreeMap<u64, AgentTraffic>,
    names: ServiceNames,
}

/// One agent on the dashboard: its status and its traffic over the window.
#[derive(Clone, Debug, Serialize)]
pub struct AgentView {
    #[serde(flatten)]
    pub status: AgentStatus,
    pub stats: Stats,
    /// Whether it ACKed the version the view was taken at.
    pub converged: bool,
    pub resident_memory_bytes: u64,
    /// CPU use between its last two summaries, in cores.
    pub cpu_cores: Option<f64>,
}

impl Agents {
    pub fn new(limits: TrafficLimits) -> Self {
        Self {
            limits,
            ..Self::default()
        }
    }

    fn streams(&self) -> MutexGuard<'_, BTreeMap<u64, AgentStatus>> {
        self.streams.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records a new stream; the handle forgets it when dropped.
    pub fn register(self: &Arc<Self>, hello: &pb::Hello) -> AgentHandle {
        let id = {
            let mut next = self.next_id.lock().unwrap_or_else(PoisonError::into_inner);
            *next += 1;
            *next
        };
        let namespace = if hello.namespace.is_empty() {
            "default".to_owned()
        } else {
            hello.namespace.clone()
        };
        self.streams().insert(
            id,
            AgentStatus {
                instance_id: hello.instance_id.clone(),
                host_ip: hello.host_ip.clone(),
                availability_zone: hello.availability_zone.clone(),
                namespace,
                agent_version: hello.agent_version.clone(),
                cluster: hello.cluster.clone(),
                sent_version: 0,
                acked_version: 0,
                last_ack_unix: None,
                last_nack: None,
                connected_unix: unix_now(),
            },
        );
        AgentHandle {
            id,
            agents: Arc::clone(self),
        }
    }

    fn traffic(&self) -> MutexGuard<'_, Traffic> {
        self.traffic.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The mesh's traffic over `window` and every agent's, in connection
    /// order, each agent's convergence judged against `current_version`.
    pub fn traffic_view(
        &self,
        window: Duration,
        current_version: u64,
    ) -> (MeshTraffic, Vec<AgentView>) {
        let now = Instant::now();
        let streams = self.list_with_ids();
        let traffic = self.traffic();
        let empty = AgentTraffic::default();
        let per_agent: Vec<&AgentTraffic> = streams
            .iter()
            .map(|(id, _)| traffic.agents.get(id).unwrap_or(&empty))
            .collect();
        let (mesh, stats) = aggregate(per_agent.iter().copied(), now, window);
        let views = streams
            .into_iter()
            .zip(stats)
            .zip(per_agent)
            .map(|(((_, status), stats), t)| AgentView {
                converged: status.acked_version == current_version,
                status,
                stats,
                resident_memory_bytes: t.resident_memory_bytes,
                cpu_cores: t.cpu_cores(),
            })
            .collect();
        (mesh, views)
    }

    /// Distinct service names held from the agents' summaries.
    pub fn traffic_services(&self) -> usize {
        self.traffic().names.len()
    }

    fn list_with_ids(&self) -> Vec<(u64, AgentStatus)> {
        self.streams()
            .iter()
            .map(|(id, a)| (*id, a.clone()))
            .collect()
    }

    /// Every connected agent, in connection order.
    pub fn list(&self) -> Vec<AgentStatus> {
        self.streams().values().cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.streams().len()
    }

    pub fn is_empty(&self) -> bool {
        self.streams().is_empty()
    }
}

/// A connected agent's entry; removed when the stream ends.
#[derive(Debug)]
pub struct AgentHandle {
    id: u64,
    agents: Arc<Agents>,
}

impl AgentHandle {
    fn update(&self, f: impl FnOnce(&mut AgentStatus)) {
        if let Some(a) = self.agents.streams().get_mut(&self.id) {
            f(a);
        }
    }

    pub fn sent(&self, version: u64) {
        self.update(|a| a.sent_version = version);
    }

    pub fn acked(&self, version: u64) {
        self.update(|a| {
            a.acked_version = a.acked_version.max(version);
            a.last_ack_unix = Some(unix_now());
            a.last_nack = None;
        });
    }

    pub fn nacked(&self, version: u64, error: &str) {
        self.update(|a| a.last_nack = Some(format!("version {version}: {error}")));
    }

    /// Takes in a summary; returns what the bounds dropped from it.
    pub fn summary(&self, summary: &pb::TrafficSummary) -> Dropped {
        let mut traffic = self.agents.traffic();
        let Traffic { agents, names } = &mut *traffic;
        agents.entry(self.id).or_default().record(
            summary,
            Instant::now(),
            TRAFFIC_HISTORY,
            names,
            &self.agents.limits,
        )
    }
}

impl Drop for AgentHandle {
    fn drop(&mut self) {
        self.agents.streams().remove(&self.id);
        let mut traffic = self.agents.traffic();
        let Traffic { agents, names } = &mut *traffic;
        if let Some(gone) = agents.remove(&self.id) {
            gone.forget(names);
        }
    }
}

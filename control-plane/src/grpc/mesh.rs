//! `Mesh.Stream`: one bidirectional stream per agent. A complete snapshot
//! first, then deltas; ACKs and NACKs come back on the same stream.
//!
//! Each stream's outgoing side is a lazily polled stream: it computes the
//! next message only when the transport asks for one. A slow agent is
//! therefore never queued for: while it is not reading, versions pile up in
//! the watch channel as just "the latest", and its next message is one delta
//! from what it last received to whatever is current (coalescing). Deltas
//! are cached by (from, to), so a push to a thousand agents at the same
//! version computes one diff.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use ecsmesh_proto::v1 as pb;
use futures_util::Stream;
use tokio::sync::{Notify, watch};
use tonic::{Request, Response, Status, Streaming};

use crate::agents::{AgentHandle, Agents};
use crate::metrics::Metrics;
use crate::publish::{Published, Publisher};

#[derive(Debug, Clone)]
pub struct MeshService {
    pub publisher: Arc<Publisher>,
    pub agents: Arc<Agents>,
    pub metrics: Arc<Metrics>,
}

type Outbound = Pin<Box<dyn Stream<Item = Result<pb::ControllerMessage, Status>> + Send>>;

#[tonic::async_trait]
impl pb::mesh_server::Mesh for MeshService {
    type StreamStream = Outbound;

    async fn stream(
        &self,
        request: Request<Streaming<pb::AgentMessage>>,
    ) -> Result<Response<Outbound>, Status> {
        let mut inbound = request.into_inner();
        let Some(pb::AgentMessage {
            kind: Some(pb::agent_message::Kind::Hello(hello)),
        }) = inbound.message().await?
        else {
            return Err(Status::invalid_argument("the first message must be Hello"));
        };
        tracing::info!(instance = %hello.instance_id, host_ip = %hello.host_ip,
            namespace = %hello.namespace, held = hello.last_applied_version, "agent connected");
        let agent = Arc::new(self.agents.register(&hello));
        let resync = Arc::new(Notify::new());
        tokio::spawn(read_acks(
            inbound,
            Arc::clone(&agent),
            Arc::clone(&resync),
            Arc::clone(&self.publisher),
            Arc::clone(&self.metrics),
        ));
        let outbound = Sender {
            updates: self.publisher.subscribe(),
            publisher: Arc::clone(&self.publisher),
            last_sent: None,
            resync,
            agent,
        };
        let stream = futures_util::stream::unfold(outbound, |mut s| async move {
            let msg = s.next().await?;
            Some((Ok(msg), s))
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

/// The outgoing side of one agent stream.
struct Sender {
    updates: watch::Receiver<Arc<Published>>,
    publisher: Arc<Publisher>,
    /// What the agent was last sent; `None` means the next message is a snapshot.
    last_sent: Option<Arc<Published>>,
    /// Signalled on a NACK: the agent's state is in doubt, so resend everything.
    resync: Arc<Notify>,
    agent: Arc<AgentHandle>,
}

impl Sender {
    /// The next message for the agent; `None` when the controller shuts down.
    async fn next(&mut self) -> Option<pb::ControllerMessage> {
        loop {
            let current = self.updates.borrow_and_update().clone();
            // Version 0 is "not yet observed": never send an empty mesh.
            if current.version > 0 {
                let kind = match &self.last_sent {
                    None => Some(pb::controller_message::Kind::Snapshot(
                        self.publisher.snapshot(&current),
                    )),
                    Some(last) if last.version != current.version => {
                        let delta = self.publisher.delta(last, &current);
                        Some(pb::controller_message::Kind::Delta(pb::Delta::clone(
                            &delta,
                        )))
                    }
                    Some(_) => None,
                };
                if let Some(kind) = kind {
                    self.agent.sent(current.version);
                    self.last_sent = Some(current);
                    return Some(pb::ControllerMessage { kind: Some(kind) });
                }
            }
            tokio::select! {
                changed = self.updates.changed() => changed.ok()?,
                () = self.resync.notified() => self.last_sent = None,
            }
        }
    }
}

/// Reads the agent's ACKs and NACKs until the stream ends.
async fn read_acks(
    mut inbound: Streaming<pb::AgentMessage>,
    agent: Arc<AgentHandle>,
    resync: Arc<Notify>,
    publisher: Arc<Publisher>,
    metrics: Arc<Metrics>,
) {
    use pb::agent_message::Kind;
    loop {
        match inbound.message().await {
            Ok(Some(msg)) => match msg.kind {
                Some(Kind::Ack(ack)) => {
                    agent.acked(ack.version);
                    let current = publisher.current();
                    if current.version == ack.version {
                        metrics.observe_push(Instant::now().saturating_duration_since(current.at));
                    }
                }
                Some(Kind::Nack(nack)) => {
                    tracing::warn!(version = nack.version, error = %nack.error, "agent rejected an update; resending a snapshot");
                    agent.nacked(nack.version, &nack.error);
                    resync.notify_one();
                }
                Some(Kind::Summary(summary)) => agent.summary(&summary),
                Some(Kind::Hello(_)) | None => {
                    tracing::debug!("ignoring an unexpected message on an agent stream");
                }
            },
            Ok(None) => break,
            Err(status) => {
                tracing::debug!(%status, "agent stream ended");
                break;
            }
        }
    }
    // Dropping the last handle clone (here or in the sender) unregisters it.
    drop(agent);
}

/// `MeshStatus`: the agent registry over gRPC.
#[derive(Debug, Clone)]
pub struct StatusService {
    pub publisher: Arc<Publisher>,
    pub agents: Arc<Agents>,
}

#[tonic::async_trait]
impl pb::mesh_status_server::MeshStatus for StatusService {
    async fn list_agents(
        &self,
        _: Request<pb::ListAgentsRequest>,
    ) -> Result<Response<pb::ListAgentsResponse>, Status> {
        let current = self.publisher.current();
        let agents = self
            .agents
            .list()
            .into_iter()
            .map(|a| pb::AgentStatus {
                instance_id: a.instance_id,
                host_ip: a.host_ip,
                availability_zone: a.availability_zone,
                namespace: a.namespace,
                agent_version: a.agent_version,
                cluster: a.cluster,
                sent_version: a.sent_version,
                acked_version: a.acked_version,
                last_ack_unix: a.last_ack_unix.unwrap_or_default(),
                last_nack: a.last_nack.unwrap_or_default(),
                connected_unix: a.connected_unix,
            })
            .collect();
        Ok(Response::new(pb::ListAgentsResponse {
            version: current.version,
            epoch: self.publisher.epoch().to_owned(),
            agents,
        }))
    }
}

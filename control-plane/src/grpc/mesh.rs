//! `Mesh.Stream`: one bidirectional stream per agent. A complete snapshot
//! first, then deltas; ACKs and NACKs come back on the same stream.
//!
//! Each stream's outgoing side is a lazily polled stream: it computes the
//! next message only when the transport asks for one. A slow agent is
//! therefore never queued for: while it is not reading, versions pile up in
//! the watch channel as just "the latest", and its next message is one delta
//! from what it last received to whatever is current (coalescing).
//!
//! Messages go out already encoded: the [`Publisher`] encodes a version's
//! snapshot once and each (from, to) delta once, and every stream copies
//! those bytes. That is why this service is routed by [`MeshServer`] here
//! rather than the generated server, whose codec encodes a message per
//! stream; the wire format is the same `ControllerMessage`.
//!
//! What agents send is bounded ([`crate::limits::TrafficLimits`]). A
//! message over `max_summary_bytes` is refused by the decoder before it is
//! buffered, and the stream is closed with `RESOURCE_EXHAUSTED`: the
//! decoder cannot skip it, and no genuine agent sends one (its summaries
//! carry at most 500 services), so the agent's log shows why.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::{BufMut as _, Bytes};
use ecsmesh_proto::v1 as pb;
use futures_util::Stream;
use tokio::sync::{Notify, oneshot, watch};
use tonic::codec::{BufferSettings, Codec, EncodeBuf, Encoder};
use tonic::codegen::{Body, BoxFuture, Service, StdError, http};
use tonic::server::{Grpc, NamedService, StreamingService};
use tonic::{Request, Response, Status, Streaming};

use crate::agents::{AgentHandle, Agents};
use crate::metrics::Metrics;
use crate::publish::{Published, Publisher};

#[derive(Debug, Clone)]
pub struct MeshService {
    pub publisher: Arc<Publisher>,
    pub agents: Arc<Agents>,
    pub metrics: Arc<Metrics>,
    /// The largest agent message decoded (`max_summary_bytes`).
    pub max_message_bytes: usize,
    /// Who may follow the stream.
    pub admission: crate::admission::Admission,
}

/// Whether the decoder refused a message over the size limit (tonic's
/// `OUT_OF_RANGE` "decoded message length too large").
fn too_large(status: &Status) -> bool {
    status.code() == tonic::Code::OutOfRange && status.message().contains("too large")
}

/// The controller's side of one stream: encoded `ControllerMessage`s.
pub type Outbound = Pin<Box<dyn Stream<Item = Result<Bytes, Status>> + Send>>;

impl MeshService {
    /// Serves one agent's stream.
    ///
    /// # Errors
    /// The caller is not admitted ([`crate::admission`]), or the first
    /// message is not a Hello.
    pub async fn stream(
        &self,
        request: Request<Streaming<pb::AgentMessage>>,
    ) -> Result<Response<Outbound>, Status> {
        // Credentials first: nothing is read from a caller without them.
        let peer = self.admission.credentials(&request)?;
        let mut inbound = request.into_inner();
        let first = inbound.message().await.inspect_err(|status| {
            if too_large(status) {
                self.metrics.agent_message_refused("too_large");
            }
        })?;
        let Some(pb::AgentMessage {
            kind: Some(pb::agent_message::Kind::Hello(hello)),
        }) = first
        else {
            return Err(Status::invalid_argument("the first message must be Hello"));
        };
        self.admission.hello(peer.as_ref(), &hello).await?;
        tracing::info!(instance = %hello.instance_id, host_ip = %hello.host_ip,
            namespace = %hello.namespace, held = hello.last_applied_version, "agent connected");
        let agent = Arc::new(self.agents.register(&hello));
        let resync = Arc::new(Notify::new());
        let (refuse, refused) = oneshot::channel();
        tokio::spawn(read_acks(
            inbound,
            Inbound {
                agent: Arc::clone(&agent),
                resync: Arc::clone(&resync),
                refuse,
                max_message_bytes: self.max_message_bytes,
            },
            Arc::clone(&self.publisher),
            Arc::clone(&self.metrics),
        ));
        let outbound = Sender {
            updates: self.publisher.subscribe(),
            publisher: Arc::clone(&self.publisher),
            last_sent: None,
            parts: None,
            resync,
            refused: Some(refused),
            ended: false,
            agent,
        };
        let stream = futures_util::stream::unfold(outbound, |mut s| async move {
            let msg = s.next().await?;
            Some((msg, s))
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
    /// The snapshot being sent: its messages (one, or its parts) and the
    /// next one's index. Nothing else goes out until it is done.
    parts: Option<(Arc<[Bytes]>, usize)>,
    /// Signalled on a NACK: the agent's state is in doubt, so resend everything.
    resync: Arc<Notify>,
    /// Why the stream must end (an agent message over the limit), once;
    /// `None` once read or when the reader ended without one.
    refused: Option<oneshot::Receiver<Status>>,
    /// The refusal went out: nothing follows it.
    ended: bool,
    agent: Arc<AgentHandle>,
}

impl Sender {
    /// The next message for the agent, or the status that ends the stream;
    /// `None` when the controller shuts down or after that status.
    async fn next(&mut self) -> Option<Result<Bytes, Status>> {
        if self.ended {
            return None;
        }
        if let Some(part) = self.next_part() {
            return Some(Ok(part));
        }
        loop {
            let current = self.updates.borrow_and_update().clone();
            // Version 0 is "not yet observed": never send an empty mesh.
            if current.version > 0 {
                let message = match &self.last_sent {
                    None => {
                        self.parts = Some((self.publisher.snapshot_messages(&current).await, 0));
                        self.next_part()
                    }
                    Some(last) if last.version != current.version => {
                        Some(self.publisher.delta_message(last, &current))
                    }
                    Some(_) => None,
                };
                if let Some(message) = message {
                    self.agent.sent(current.version);
                    self.last_sent = Some(current);
                    return Some(Ok(message));
                }
            }
            let refused = async {
                match self.refused.as_mut() {
                    Some(rx) => rx.await.ok(),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                changed = self.updates.changed() => changed.ok()?,
                () = self.resync.notified() => self.last_sent = None,
                status = refused => {
                    self.refused = None;
                    if let Some(status) = status {
                        self.ended = true;
                        return Some(Err(status));
                    }
                }
            }
        }
    }

    /// The next message of the snapshot being sent, if one is.
    fn next_part(&mut self) -> Option<Bytes> {
        let (messages, index) = self.parts.take()?;
        let message = messages.get(index)?.clone();
        if index + 1 < messages.len() {
            self.parts = Some((messages, index + 1));
        }
        Some(message)
    }
}

/// Routes `ecsmesh.v1.Mesh` to [`MeshService`] with [`EncodedCodec`], as the
/// generated `MeshServer` would with its per-stream encoding codec.
#[derive(Debug, Clone)]
pub struct MeshServer(Arc<MeshService>);

impl MeshServer {
    pub fn new(service: MeshService) -> Self {
        Self(Arc::new(service))
    }
}

impl NamedService for MeshServer {
    const NAME: &'static str = pb::mesh_server::SERVICE_NAME;
}

const STREAM_PATH: &str = "/ecsmesh.v1.Mesh/Stream";

impl<B> Service<http::Request<B>> for MeshServer
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if req.uri().path() != STREAM_PATH {
            return Box::pin(async { Ok(Status::unimplemented("no such method").into_http()) });
        }
        let method = StreamMethod(Arc::clone(&self.0));
        let mut grpc = Grpc::new(EncodedCodec).max_decoding_message_size(self.0.max_message_bytes);
        Box::pin(async move { Ok(grpc.streaming(method, req).await) })
    }
}

struct StreamMethod(Arc<MeshService>);

impl StreamingService<pb::AgentMessage> for StreamMethod {
    type Response = Bytes;
    type ResponseStream = Outbound;
    type Future = BoxFuture<Response<Outbound>, Status>;

    fn call(&mut self, request: Request<Streaming<pb::AgentMessage>>) -> Self::Future {
        let service = Arc::clone(&self.0);
        Box::pin(async move { service.stream(request).await })
    }
}

/// Sends bytes that are already an encoded `ControllerMessage`; decodes
/// `AgentMessage`s as the generated code would.
#[derive(Debug, Clone, Copy, Default)]
struct EncodedCodec;

impl Codec for EncodedCodec {
    type Encode = Bytes;
    type Decode = pb::AgentMessage;
    type Encoder = EncodedEncoder;
    type Decoder = tonic_prost::ProstDecoder<pb::AgentMessage>;

    fn encoder(&mut self) -> Self::Encoder {
        EncodedEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        tonic_prost::ProstDecoder::new(BufferSettings::default())
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct EncodedEncoder;

impl Encoder for EncodedEncoder {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

/// What the reader of one stream tells its sender.
struct Inbound {
    agent: Arc<AgentHandle>,
    resync: Arc<Notify>,
    /// Ends the stream with this status.
    refuse: oneshot::Sender<Status>,
    max_message_bytes: usize,
}

/// Reads the agent's ACKs, NACKs and summaries until the stream ends.
async fn read_acks(
    mut inbound: Streaming<pb::AgentMessage>,
    Inbound {
        agent,
        resync,
        refuse,
        max_message_bytes,
    }: Inbound,
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
                Some(Kind::Summary(summary)) => {
                    let dropped = agent.summary(&summary);
                    metrics.summary_services_dropped("summary_limit", dropped.summary_limit);
                    metrics.summary_services_dropped("service_limit", dropped.service_limit);
                    metrics.summary_services_dropped("name_too_long", dropped.name_too_long);
                }
                Some(Kind::Hello(_)) | None => {
                    tracing::debug!("ignoring an unexpected message on an agent stream");
                }
            },
            Ok(None) => break,
            Err(status) if too_large(&status) => {
                metrics.agent_message_refused("too_large");
                tracing::warn!(%status, "closing an agent stream: a message was over the limit");
                // The sender may be gone already; then the stream is too.
                let _ = refuse.send(Status::resource_exhausted(format!(
                    "an agent message was over {max_message_bytes} bytes (max_summary_bytes): \
                     closing the stream"
                )));
                break;
            }
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

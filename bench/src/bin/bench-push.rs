//! A stand-in controller for `bench/proxy.sh`'s `agent-deltas` row (issue
//! #15: route-table rebuilds must not stall requests). It serves the agent
//! stream, `ecsmesh.v1.Mesh.Stream`, as the real controller does
//! (control-plane/src/grpc/mesh.rs): it waits for the agent's Hello,
//! answers with a complete snapshot (the one `bench-snapshot` writes,
//! [`ecsmesh_bench::BenchMesh`]), then sends a delta every `--interval-ms`,
//! each on top of the version sent before it, in the snapshot's epoch
//! (the agent applies a delta only on the version and epoch it holds).
//!
//! Every delta changes the routed set (`--set`, the one `Host: svc7` binds
//! to): its endpoint gets a new `bench_push` meta value (the version) and
//! its weight alternates between 1 and 2. The upstream stays the same, so
//! no request has a reason to fail, but the set is a new one each time: the
//! agent rebuilds its route table, that set's balancer, and drops its
//! cached routing decisions, as on a real endpoint change.
//!
//! A NACK is answered as the controller does, with a snapshot. `GET
//! /_bench/stats` on `--stats-addr` returns the counts as JSON (streams,
//! snapshots and deltas sent, ACKs, deltas ACKed, NACKs, the last version
//! sent and ACKed); they are also printed on SIGTERM or SIGINT, and when
//! `--max-seconds` have passed (the process never outlives a benchmark).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use clap::Parser;
use ecsmesh_bench::{BenchMesh, SNAPSHOT_EPOCH};
use ecsmesh_dtab::Path;
use ecsmesh_proto::v1 as pb;
use ecsmesh_state::{EndpointSet, MeshState};
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::sync::{Notify, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

/// A stand-in controller: the benchmark snapshot, then a delta every
/// `--interval-ms` to each agent that connects.
#[derive(Debug, Parser)]
struct Args {
    #[command(flatten)]
    mesh: BenchMesh,
    /// Where to serve `Mesh.Stream` (plain HTTP/2: the agent's
    /// `--controller http://ADDR`).
    #[arg(long)]
    addr: SocketAddr,
    /// Where to serve `GET /_bench/stats` (HTTP/1.1, JSON).
    #[arg(long)]
    stats_addr: SocketAddr,
    /// One delta every this many milliseconds.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    interval_ms: u64,
    /// The endpoint set every delta changes.
    #[arg(long, default_value = "/#/ecs/bench/svc7")]
    set: String,
    /// Exits after this many seconds, whatever happens.
    #[arg(long, default_value_t = 3600)]
    max_seconds: u64,
}

/// The meta key each delta gives a new value.
const PUSH_META: &str = "bench_push";
/// Delta versions sent on a stream and not yet ACKed, at most: the agent
/// ACKs each in turn, so more means it stopped answering (and the oldest
/// are forgotten, not ACKed).
const MAX_PENDING: usize = 4096;

/// Counts over every stream, for `/_bench/stats`.
#[derive(Debug, Default)]
struct Stats {
    streams: AtomicU64,
    snapshots_sent: AtomicU64,
    deltas_sent: AtomicU64,
    acks: AtomicU64,
    deltas_acked: AtomicU64,
    nacks: AtomicU64,
    version: AtomicU64,
    acked_version: AtomicU64,
}

impl Stats {
    fn json(&self, interval_ms: u64) -> String {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        serde_json::json!({
            "interval_ms": interval_ms,
            "streams": get(&self.streams),
            "snapshots_sent": get(&self.snapshots_sent),
            "deltas_sent": get(&self.deltas_sent),
            "acks": get(&self.acks),
            "deltas_acked": get(&self.deltas_acked),
            "nacks": get(&self.nacks),
            "version": get(&self.version),
            "acked_version": get(&self.acked_version),
        })
        .to_string()
    }
}

/// One stream's delta versions awaiting their ACK, and its NACK signal.
#[derive(Debug, Default)]
struct StreamState {
    pending: Mutex<VecDeque<u64>>,
    resync: Notify,
}

impl StreamState {
    fn sent_delta(&self, version: u64) {
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        if pending.len() == MAX_PENDING {
            pending.pop_front();
        }
        pending.push_back(version);
    }

    /// Whether `version` was a delta sent on this stream (ACKs come in order).
    fn acked(&self, version: u64) -> bool {
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        while let Some(&front) = pending.front() {
            if front > version {
                break;
            }
            pending.pop_front();
            if front == version {
                return true;
            }
        }
        false
    }
}

/// What every stream shares.
#[derive(Debug)]
struct Shared {
    base: Arc<MeshState>,
    set: Path,
    interval: Duration,
    /// The last version handed out, over every stream: versions only grow.
    version: AtomicU64,
    stats: Arc<Stats>,
}

impl Shared {
    /// `base` with the pushed set as version `version` has it.
    fn mesh_at(&self, version: u64) -> MeshState {
        let mut mesh = MeshState::clone(&self.base);
        if let Some(set) = self.base.sets.get(&self.set) {
            let changed: EndpointSet = set
                .iter()
                .map(|e| {
                    let mut e = e.clone().with_meta(PUSH_META, version.to_string());
                    e.weight = if version.is_multiple_of(2) { 2.0 } else { 1.0 };
                    e
                })
                .collect();
            mesh.sets.insert(self.set.clone(), Arc::new(changed));
        }
        mesh
    }

    fn next_version(&self) -> u64 {
        let v = self.version.fetch_add(1, Ordering::Relaxed) + 1;
        self.stats.version.fetch_max(v, Ordering::Relaxed);
        v
    }
}

type Outbound = mpsc::Sender<Result<pb::ControllerMessage, Status>>;

/// The `Mesh` service.
#[derive(Debug)]
struct Push(Arc<Shared>);

#[tonic::async_trait]
impl pb::mesh_server::Mesh for Push {
    type StreamStream = ReceiverStream<Result<pb::ControllerMessage, Status>>;

    async fn stream(
        &self,
        request: Request<Streaming<pb::AgentMessage>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let mut inbound = request.into_inner();
        let Some(pb::AgentMessage {
            kind: Some(pb::agent_message::Kind::Hello(hello)),
        }) = inbound.message().await?
        else {
            return Err(Status::invalid_argument("the first message must be Hello"));
        };
        tracing::info!(instance = %hello.instance_id, host_ip = %hello.host_ip,
            held = hello.last_applied_version, "agent connected");
        self.0.stats.streams.fetch_add(1, Ordering::Relaxed);
        let state = Arc::new(StreamState::default());
        tokio::spawn(read_acks(
            inbound,
            Arc::clone(&state),
            Arc::clone(&self.0.stats),
        ));
        // One message in hand at most: when HTTP/2 flow control holds the
        // stream, the next delta waits (at the interval's pace), rather than
        // piling up here.
        let (tx, rx) = mpsc::channel(1);
        tokio::spawn(send(Arc::clone(&self.0), tx, state));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// One stream's outgoing side: a snapshot, then a delta every interval
/// (a snapshot again after a NACK), until the stream closes.
async fn send(push: Arc<Shared>, tx: Outbound, stream: Arc<StreamState>) {
    let stats = &push.stats;
    // The first snapshot is bench-snapshot's, at the version reached so far
    // (the first stream gets exactly version 1).
    let mut version = push.version.load(Ordering::Relaxed);
    let mut mesh = if version == ecsmesh_bench::SNAPSHOT_VERSION {
        MeshState::clone(&push.base)
    } else {
        push.mesh_at(version)
    };
    let mut snapshot = true;
    let mut ticks = tokio::time::interval(push.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        let kind = if snapshot {
            pb::controller_message::Kind::Snapshot(mesh.to_snapshot(version, SNAPSHOT_EPOCH))
        } else {
            let next_version = push.next_version();
            let next = push.mesh_at(next_version);
            let delta = pb::Delta {
                version: next_version,
                base_version: version,
                epoch: SNAPSHOT_EPOCH.to_owned(),
                ..mesh.diff(&next)
            };
            (version, mesh) = (next_version, next);
            stream.sent_delta(version);
            pb::controller_message::Kind::Delta(delta)
        };
        let message = pb::ControllerMessage { kind: Some(kind) };
        if tx.send(Ok(message)).await.is_err() {
            return;
        }
        let sent = if snapshot {
            &stats.snapshots_sent
        } else {
            &stats.deltas_sent
        };
        sent.fetch_add(1, Ordering::Relaxed);
        tokio::select! {
            _ = ticks.tick() => snapshot = false,
            () = stream.resync.notified() => snapshot = true,
            () = tx.closed() => return,
        }
    }
}

/// Counts the agent's ACKs and NACKs until its side of the stream ends.
async fn read_acks(
    mut inbound: Streaming<pb::AgentMessage>,
    stream: Arc<StreamState>,
    stats: Arc<Stats>,
) {
    while let Ok(Some(message)) = inbound.message().await {
        match message.kind {
            Some(pb::agent_message::Kind::Ack(ack)) => {
                stats.acks.fetch_add(1, Ordering::Relaxed);
                stats
                    .acked_version
                    .fetch_max(ack.version, Ordering::Relaxed);
                if stream.acked(ack.version) {
                    stats.deltas_acked.fetch_add(1, Ordering::Relaxed);
                }
            }
            Some(pb::agent_message::Kind::Nack(nack)) => {
                stats.nacks.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(version = nack.version, error = %nack.error, "NACK; resending a snapshot");
                stream.resync.notify_one();
            }
            // Hello again, traffic summaries: nothing to count.
            _ => {}
        }
    }
}

/// `GET /_bench/stats` (any other path too: there is nothing else).
async fn serve_stats(addr: SocketAddr, stats: Arc<Stats>, interval_ms: u64) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    loop {
        let (stream, _) = listener.accept().await?;
        let stats = Arc::clone(&stats);
        tokio::spawn(async move {
            let svc = service_fn(move |_req: http::Request<hyper::body::Incoming>| {
                let body = Bytes::from(stats.json(interval_ms));
                async move {
                    Ok::<_, Infallible>(
                        http::Response::builder()
                            .header("content-type", "application/json")
                            .body(Full::new(body))
                            .unwrap_or_default(),
                    )
                }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    ecsmesh_bench::init_tracing();
    let args = Args::parse();
    let snapshot = args.mesh.snapshot()?;
    let base = Arc::new(MeshState::from_snapshot(&snapshot)?);
    let set = Path::read(&args.set)?;
    anyhow::ensure!(
        base.sets.contains_key(&set),
        "the snapshot has no endpoint set {}",
        args.set
    );
    let stats = Arc::new(Stats::default());
    stats.version.store(snapshot.version, Ordering::Relaxed);
    let push = Push(Arc::new(Shared {
        base,
        set,
        interval: Duration::from_millis(args.interval_ms),
        version: AtomicU64::new(snapshot.version),
        stats: Arc::clone(&stats),
    }));
    let grpc = tonic::transport::Server::builder()
        .add_service(pb::mesh_server::MeshServer::new(push))
        .serve(args.addr);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    // No graceful shutdown: the agent's stream never ends on its own, and
    // the counts are what is left to give.
    tokio::select! {
        r = grpc => r.context("serving Mesh.Stream")?,
        r = serve_stats(args.stats_addr, Arc::clone(&stats), args.interval_ms) => r?,
        _ = term.recv() => {}
        r = tokio::signal::ctrl_c() => r?,
        () = tokio::time::sleep(Duration::from_secs(args.max_seconds)) => {
            tracing::warn!(seconds = args.max_seconds, "--max-seconds reached; exiting");
        }
    }
    println!("{}", stats.json(args.interval_ms));
    Ok(())
}

//! A controller on loopback ports with a test-fed endpoint source, and a
//! minimal agent-stream client.
#![allow(dead_code, clippy::missing_panics_doc, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};

use ecsmesh_controller::Controller;
use ecsmesh_controller::config::Config;
use ecsmesh_controller::reconcile::BaseDtabs;
use ecsmesh_controller::sources::SourceSets;
use ecsmesh_dtab::{Dtab, Path};
use ecsmesh_proto::v1 as pb;
use ecsmesh_state::{Endpoint, EndpointSet};
use tokio::sync::mpsc;
use tonic::Streaming;
use tonic::transport::Channel;

pub const SOURCE: &str = "test";

pub fn config(store_dir: &std::path::Path, token: Option<&str>) -> Config {
    Config {
        grpc_addr: "127.0.0.1:0".parse().unwrap(),
        admin_addr: "127.0.0.1:0".parse().unwrap(),
        store_dir: store_dir.to_owned(),
        admin_token: token.map(Arc::from),
        base_dtabs: BaseDtabs(
            [(
                "default".to_owned(),
                Arc::new(Dtab::read("/svc=>/#/ecs/demo").unwrap()),
            )]
            .into(),
        ),
        ecs: None,
        consul: None,
        consul_store: None,
        dynamodb_store: None,
        security: ecsmesh_controller::config::Security::default(),
        replicas: ecsmesh_controller::config::ReplicaSettings::default(),
    }
}

pub async fn start(store_dir: &std::path::Path, token: Option<&str>) -> Controller {
    Controller::start(config(store_dir, token), &[SOURCE])
        .await
        .unwrap()
}

/// Endpoint sets from `(name, [addr])` pairs.
pub fn sets(entries: &[(&str, &[&str])]) -> SourceSets {
    entries
        .iter()
        .map(|(name, addrs)| {
            let set: EndpointSet = addrs
                .iter()
                .map(|a| {
                    Endpoint::new(a.parse().unwrap()).with_meta("task_arn", format!("arn:{a}"))
                })
                .collect();
            (Path::read(name).unwrap(), Arc::new(set))
        })
        .collect::<BTreeMap<_, _>>()
}

pub async fn channel(addr: std::net::SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// One agent's end of `Mesh.Stream`.
pub struct TestAgent {
    pub to_controller: mpsc::Sender<pb::AgentMessage>,
    pub from_controller: Streaming<pb::ControllerMessage>,
}

impl TestAgent {
    pub async fn connect(channel: Channel, instance_id: &str) -> Self {
        Self::connect_as(channel, instance_id, "127.0.1.1").await
    }

    /// As [`TestAgent::connect`], claiming `host_ip` too.
    pub async fn connect_as(channel: Channel, instance_id: &str, host_ip: &str) -> Self {
        let (tx, rx) = mpsc::channel(16);
        tx.send(pb::AgentMessage {
            kind: Some(pb::agent_message::Kind::Hello(pb::Hello {
                instance_id: instance_id.to_owned(),
                host_ip: host_ip.to_owned(),
                namespace: "default".to_owned(),
                agent_version: "test".to_owned(),
                ..Default::default()
            })),
        })
        .await
        .unwrap();
        let mut client = pb::mesh_client::MeshClient::new(channel);
        let from_controller = client
            .stream(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        Self {
            to_controller: tx,
            from_controller,
        }
    }

    pub async fn next(&mut self) -> pb::controller_message::Kind {
        tokio::time::timeout(Duration::from_secs(10), self.from_controller.message())
            .await
            .expect("a message within 10 s")
            .unwrap()
            .unwrap()
            .kind
            .unwrap()
    }

    pub async fn ack(&self, version: u64) {
        self.send(pb::agent_message::Kind::Ack(pb::Ack { version }))
            .await;
    }

    pub async fn send(&self, kind: pb::agent_message::Kind) {
        self.to_controller
            .send(pb::AgentMessage { kind: Some(kind) })
            .await
            .unwrap();
    }
}

/// Polls `f` until it is true (10 s at most).
pub async fn eventually(mut f: impl FnMut() -> bool) {
    for _ in 0..1000 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("condition not reached within 10 s");
}

/// A free port on `ip` (closed again at once: fine on loopback).
pub fn free_port(ip: &str) -> u16 {
    std::net::TcpListener::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The real `ecsmesh-controller` binary; killed (SIGKILL) on drop.
pub struct Running(std::process::Child);

impl Running {
    pub fn start(args: &[&str], env: &[(&str, String)]) -> Self {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_ecsmesh-controller"));
        cmd.args(args)
            .env_remove("AWS_PROFILE")
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        Self(cmd.spawn().unwrap())
    }

    pub fn kill(mut self) {
        self.0.kill().unwrap();
        self.0.wait().unwrap();
    }

    /// SIGTERM (as ECS stops a task), then waits for the exit.
    pub fn terminate(mut self) {
        let status = std::process::Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        self.0.wait().unwrap();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The environment that points the binary's AWS SDK at the emulator, with
/// static credentials and no instance-role lookup.
pub fn emulator_env(endpoint: &str, region: &str) -> Vec<(&'static str, String)> {
    vec![
        ("ECSMESH_AWS_ENDPOINT_URL", endpoint.to_owned()),
        ("ECSMESH_AWS_REGION", region.to_owned()),
        ("AWS_ACCESS_KEY_ID", "testing".to_owned()),
        ("AWS_SECRET_ACCESS_KEY", "testing".to_owned()),
        ("AWS_EC2_METADATA_DISABLED", "true".to_owned()),
    ]
}

/// An upstream that counts its requests. It stays up after its task is
/// scaled away (draining) until `exit` (the container exits).
pub struct Upstream {
    pub hits: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Upstream {
    pub async fn exit(&self) {
        self.task.abort();
        // Let the aborted task drop its listener and connections.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn upstream(addr: SocketAddr) -> Upstream {
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let hits = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&hits);
    let task = tokio::spawn(async move {
        // Connections belong to this task: aborting it is the container exiting.
        let mut conns = tokio::task::JoinSet::new();
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let counter = Arc::clone(&counter);
            conns.spawn(async move {
                let svc = hyper::service::service_fn(
                    move |_req: http::Request<hyper::body::Incoming>| {
                        counter.fetch_add(1, Ordering::SeqCst);
                        async {
                            Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from(
                                "world",
                            ))))
                        }
                    },
                );
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Upstream { hits, task }
}

/// An agent on `node` (direct mode) following the controller replicas on
/// `controllers` (gRPC ports, in order): it claims the node's instance, as
/// controllers admit only those.
pub async fn agent(
    node: &ecsmesh_test_support::ecs::Node,
    controllers: &[u16],
    state_dir: std::path::PathBuf,
) -> ecsmesh_agent::Agent {
    use ecsmesh_agent::config::{Args, Config as AgentConfig, FileConfig, Mode};
    let host_ip = node.private_ip.as_str();
    let mut config = AgentConfig::resolve(&Args::default(), FileConfig::default()).unwrap();
    config.host_ip = Some(host_ip.parse().unwrap());
    config.instance_id = Some(node.instance_id.clone());
    config.availability_zone = Some("zone-a".into());
    config.controller = controllers
        .iter()
        .map(|p| format!("http://127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .join(",");
    config.state_dir = state_dir;
    config.mode = Mode::Direct;
    config.outgoing_port = 0;
    config.incoming_port = free_port(host_ip);
    config.admin_port = 0;
    config.imds_endpoint = Some("http://127.0.0.1:1".into());
    ecsmesh_agent::Agent::start(config).await.unwrap()
}

/// Requests in a loop through `proxy` until `stop`; counts successes and
/// failures.
pub fn clients(
    n: usize,
    proxy: SocketAddr,
    stop: &Arc<AtomicBool>,
    ok: &Arc<AtomicU64>,
    failed: &Arc<AtomicU64>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..n)
        .map(|_| {
            let (stop, ok, failed) = (Arc::clone(stop), Arc::clone(ok), Arc::clone(failed));
            tokio::spawn(async move {
                let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
                    .build_http::<Full<Bytes>>();
                let mut n = 0;
                while !stop.load(Ordering::SeqCst) && n < 50_000 {
                    n += 1;
                    let req = http::Request::get(format!("http://{proxy}/"))
                        .header("host", "world")
                        .body(Full::new(Bytes::new()))
                        .unwrap();
                    match client.request(req).await {
                        Ok(resp) if resp.status().is_success() => {
                            let _ = resp.into_body().collect().await;
                            ok.fetch_add(1, Ordering::SeqCst);
                        }
                        other => {
                            eprintln!("failed: {:?}", other.map(|r| r.status()));
                            failed.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                }
            })
        })
        .collect()
}

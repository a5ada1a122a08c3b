//! A controller on loopback ports with a test-fed endpoint source, and a
//! minimal agent-stream client.
#![allow(dead_code, clippy::missing_panics_doc, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

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

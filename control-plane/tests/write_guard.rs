//! The real `ecsmesh-controller` binary and the start-up rules for dtab
//! writes and the mesh stream: open writes (or an open stream) on a
//! non-loopback address refuse to start unless
//! `--allow-unauthenticated-writes` (`--allow-unauthenticated-agents`) says
//! so. It binds 0.0.0.0 but every request goes to 127.0.0.1.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::BufRead as _;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::{channel, free_port};
use ecsmesh_proto::v1 as pb;

/// The controller's command line with gRPC on `grpc`, the rest on loopback.
fn controller(grpc: &str, store: &std::path::Path, extra: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ecsmesh-controller"));
    cmd.args(["--grpc-addr", grpc])
        .args([
            "--admin-addr",
            "127.0.0.1:0",
            "--base-dtab",
            "/svc=>/#/ecs/demo",
        ])
        .arg("--store-dir")
        .arg(store)
        .args(extra)
        // The developer's own settings must not decide the outcome.
        .env_remove("ECSMESH_CONFIG")
        .env_remove("ECSMESH_ADMIN_TOKEN_FILE")
        .env_remove("ECSMESH_ADMIN_IDENTITIES")
        .env_remove("ECSMESH_ALLOW_UNAUTHENTICATED_WRITES")
        .env_remove("ECSMESH_AGENT_TOKEN_FILE")
        // The write tests are about writes: the stream's rule is opted out
        // of here, and tested on its own below.
        .env("ECSMESH_ALLOW_UNAUTHENTICATED_AGENTS", "true")
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1");
    cmd
}

/// A started controller, killed on drop, and its log lines (stdout).
struct Started {
    child: std::process::Child,
    lines: mpsc::Receiver<String>,
}

impl Started {
    fn spawn(mut cmd: Command) -> Self {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self { child, lines }
    }

    /// The first log line containing `needle` (within 30 s).
    fn line_with(&self, needle: &str) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(e) => panic!("no log line with {needle:?}: {e}"),
            }
        }
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn dtab_api(port: u16) -> pb::dtab_admin_client::DtabAdminClient<tonic::transport::Channel> {
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return pb::dtab_admin_client::DtabAdminClient::new(channel(addr).await);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the controller did not listen on {addr}");
}

fn create(dtab: &str) -> pb::CreateDtabRequest {
    pb::CreateDtabRequest {
        namespace: "default".into(),
        dtab: dtab.into(),
    }
}

#[test]
fn open_writes_on_every_address_refuse_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let port = free_port("0.0.0.0");
    let mut child = controller(&format!("0.0.0.0:{port}"), &store, &[])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // It must exit by itself, soon (a controller that started never would).
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the controller started on 0.0.0.0 with open writes");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!status.success());
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(
        stderr.contains(&format!(
            "refusing to start: dtab writes would be unauthenticated on 0.0.0.0:{port}"
        )),
        "{stderr}"
    );
    assert!(stderr.contains("--admin-token-file"), "{stderr}");
    assert!(
        stderr.contains("--allow-unauthenticated-writes"),
        "{stderr}"
    );
    // Refused before anything was opened: no store was created.
    assert!(!store.exists());
}

#[tokio::test]
async fn the_explicit_flag_starts_open_with_a_warning() {
    for how in ["flag", "env"] {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port("0.0.0.0");
        let mut cmd = controller(&format!("0.0.0.0:{port}"), dir.path(), &[]);
        if how == "flag" {
            cmd.arg("--allow-unauthenticated-writes");
        } else {
            cmd.env("ECSMESH_ALLOW_UNAUTHENTICATED_WRITES", "true");
        }
        let started = Started::spawn(cmd);
        let warning = started.line_with("dtab writes are unauthenticated");
        assert!(warning.contains("WARN"), "{how}: {warning}");
        assert!(
            warning.contains("--allow-unauthenticated-writes"),
            "{how}: {warning}"
        );
        // Open indeed: a write without credentials is taken.
        let mut api = dtab_api(port).await;
        api.create_dtab(create("/svc/world=>/svc/world-v2"))
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn a_token_file_lets_it_listen_on_every_address() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cret\n").unwrap();
    let store = dir.path().join("store");
    let port = free_port("0.0.0.0");
    let cmd = controller(
        &format!("0.0.0.0:{port}"),
        &store,
        &["--admin-token-file", token.to_str().unwrap()],
    );
    let _started = Started::spawn(cmd);
    let mut api = dtab_api(port).await;
    let refused = api
        .create_dtab(create("/svc/world=>/svc/world-v2"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    let mut req = tonic::Request::new(create("/svc/world=>/svc/world-v2"));
    req.metadata_mut()
        .insert("authorization", "Bearer s3cret".parse().unwrap());
    api.create_dtab(req).await.unwrap();
}

#[tokio::test]
async fn loopback_starts_open_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port("127.0.0.1");
    let cmd = controller(&format!("127.0.0.1:{port}"), dir.path(), &[]);
    let started = Started::spawn(cmd);
    let line = started.line_with("dtab writes are unauthenticated");
    assert!(line.contains("INFO"), "{line}");
    assert!(line.contains("local process"), "{line}");
}

#[test]
fn an_open_mesh_stream_on_every_address_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cret\n").unwrap();
    let store = dir.path().join("store");
    let port = free_port("0.0.0.0");
    let out = controller(
        &format!("0.0.0.0:{port}"),
        &store,
        &["--admin-token-file", token.to_str().unwrap()],
    )
    .env_remove("ECSMESH_ALLOW_UNAUTHENTICATED_AGENTS")
    .stdout(Stdio::null())
    .output()
    .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("the mesh stream (every endpoint and dtab) would be open to anyone who reaches 0.0.0.0:{port}")),
        "{stderr}"
    );
    assert!(stderr.contains("--agent-token-file"), "{stderr}");
    assert!(
        stderr.contains("--allow-unauthenticated-agents"),
        "{stderr}"
    );
    assert!(!store.exists());
}

#[tokio::test]
async fn an_agent_token_lets_the_stream_listen_on_every_address() {
    let dir = tempfile::tempdir().unwrap();
    let (admin_token, agent_token) = (dir.path().join("admin"), dir.path().join("agent"));
    std::fs::write(&admin_token, "s3cret\n").unwrap();
    std::fs::write(&agent_token, "agent-s3cret\n").unwrap();
    let port = free_port("0.0.0.0");
    let mut cmd = controller(
        &format!("0.0.0.0:{port}"),
        &dir.path().join("store"),
        &[
            "--admin-token-file",
            admin_token.to_str().unwrap(),
            "--agent-token-file",
            agent_token.to_str().unwrap(),
        ],
    );
    cmd.env_remove("ECSMESH_ALLOW_UNAUTHENTICATED_AGENTS");
    let _started = Started::spawn(cmd);
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let _ = dtab_api(port).await;
    let hello = || pb::AgentMessage {
        kind: Some(pb::agent_message::Kind::Hello(pb::Hello {
            instance_id: "i-rogue".into(),
            host_ip: "127.0.1.9".into(),
            ..Default::default()
        })),
    };
    let mut mesh = pb::mesh_client::MeshClient::new(channel(addr).await);
    let refused = mesh
        .stream(tokio_stream::iter([hello()]))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    let mut req = tonic::Request::new(tokio_stream::iter([hello()]));
    req.metadata_mut()
        .insert("authorization", "Bearer agent-s3cret".parse().unwrap());
    let mut inbound = mesh.stream(req).await.unwrap().into_inner();
    let first = inbound.message().await.unwrap().unwrap();
    assert!(matches!(
        first.kind,
        Some(pb::controller_message::Kind::Snapshot(_))
    ));
    // The admin token is not an agent token.
    let mut req = tonic::Request::new(tokio_stream::iter([hello()]));
    req.metadata_mut()
        .insert("authorization", "Bearer s3cret".parse().unwrap());
    let refused = mesh.stream(req).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
}

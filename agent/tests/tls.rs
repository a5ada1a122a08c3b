//! TLS on every hop the agent owns: two agents (linker-to-linker) and the
//! controller, all with certificates from one mesh CA (`ecsmeshctl certs
//! init`'s generator). Requests pass; clients without a certificate, with
//! another CA's or an expired one are refused at the incoming port, counted
//! and logged; certificates rotate under load without a failed request.

#![allow(clippy::unwrap_used, clippy::too_many_lines)]

mod common;

use std::io::Write as _;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{SOURCE, Upstream, agent_with, converged, free_port, get_via, sets};
use ecsmesh_agent::Agent;
use ecsmesh_agent::config::{Mode, TlsConfig};
use ecsmesh_controller::Controller;
use ecsmesh_controller::config::{Security, ServerTlsSettings};
use ecsmesh_tls::generate::{LeafSpec, MeshCa, MeshCertsSpec, write_mesh_certs};
use ecsmesh_tls::{ClientAuth, ClientTls, ServerName, TlsFiles};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

fn files(dir: &Path, who: &str) -> TlsFiles {
    TlsFiles {
        ca: Some(dir.join("ca.pem")),
        cert: Some(dir.join(format!("{who}.pem"))),
        key: Some(dir.join(format!("{who}-key.pem"))),
    }
}

async fn tls_controller(store: &Path, certs: &Path, port: u16) -> Controller {
    let mut config = common::controller_config(store, port);
    config.security = Security {
        tls: Some(ServerTlsSettings {
            files: files(certs, "controller"),
            client_auth: ClientAuth::Required,
            reload_interval: Duration::from_millis(200),
        }),
        agent_identities: vec!["ecsmesh-agent".into()],
        ..Security::default()
    };
    Controller::start(config, &[SOURCE]).await.unwrap()
}

async fn tls_agent(
    host: &str,
    grpc: u16,
    incoming: u16,
    certs: &Path,
    who: &str,
    state: &Path,
    server_name: &str,
) -> Agent {
    let certs = certs.to_owned();
    let who = who.to_owned();
    let server_name = server_name.to_owned();
    agent_with(
        host,
        grpc,
        incoming,
        Mode::LinkerToLinker,
        state,
        move |c| {
            c.controller = format!("https://127.0.0.1:{grpc}");
            c.tls = TlsConfig {
                files: files(&certs, &who),
                reload_interval: Duration::from_millis(200),
                l2l: true,
                l2l_server_name: server_name.parse().unwrap(),
                l2l_client_auth: ClientAuth::Required,
                controller_server_name: Some("ecsmesh-controller".into()),
            };
        },
    )
    .await
}

/// The value of one series (name and labels as printed) of `agent`'s
/// metrics; 0 when it is not there.
async fn series(agent: &Agent, key: &str) -> u64 {
    let (_, _, text) = get_via(
        agent.admin_addr,
        &agent.admin_addr.to_string(),
        "/metrics",
        &[],
    )
    .await;
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(' '))
        .map_or(0, |v| v.trim().parse().unwrap())
}

/// `ecsmesh_agent_fast_path_requests_total` of `agent`.
async fn fast_path_requests(agent: &Agent) -> u64 {
    series(agent, "ecsmesh_agent_fast_path_requests_total").await
}

/// B's `ecsmesh_agent_tls_handshake_failures_total` for `reason`.
async fn refusals(agent: &Agent, reason: &str) -> u64 {
    let key = format!(
        "ecsmesh_agent_tls_handshake_failures_total{{listener=\"incoming\",reason=\"{reason}\"}}"
    );
    series(agent, &key).await
}

/// A TLS client's GET to an incoming port; `None` when the connection is
/// refused (at the handshake, or right after it under TLS 1.3).
async fn get_over_tls(
    connector: &tokio_rustls::TlsConnector,
    addr: std::net::SocketAddr,
) -> Option<String> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("ecsmesh-agent").unwrap();
    let mut s = connector.connect(name, tcp).await.ok()?;
    s.write_all(b"GET / HTTP/1.1\r\nhost: world\r\nconnection: close\r\n\r\n")
        .await
        .ok()?;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .ok()?
        .ok()?;
    Some(String::from_utf8_lossy(&out).into_owned()).filter(|s| !s.is_empty())
}

/// A rustls client presenting `cert`/`key` PEM (or nothing), trusting `ca`.
fn connector(ca: &str, cert: Option<(&str, &str)>) -> tokio_rustls::TlsConnector {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca.as_bytes()).unwrap())
        .unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    let config = match cert {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// Log lines, captured for one test (current-thread runtime).
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

struct Mesh {
    _dirs: tempfile::TempDir,
    certs: std::path::PathBuf,
    _ctl: Controller,
    a: Agent,
    b: Agent,
    _world: Upstream,
}

/// Controller, agent A (127.0.51.1) and B (127.0.51.2), and one world
/// endpoint on B: a request from A's outgoing port crosses A → B over TLS.
async fn mesh() -> Mesh {
    mesh_named(&MeshCertsSpec::default(), "ecsmesh-agent", "127.0.51").await
}

/// [`mesh`] with other certificates and server name, on `<net>.1` and `<net>.2`.
async fn mesh_named(spec: &MeshCertsSpec, server_name: &str, net: &str) -> Mesh {
    let (ip_a, ip_b) = (format!("{net}.1"), format!("{net}.2"));
    let dirs = tempfile::tempdir().unwrap();
    let certs = dirs.path().join("certs");
    write_mesh_certs(&certs, spec).unwrap();
    let grpc = free_port("127.0.0.1");
    let ctl = tls_controller(&dirs.path().join("ctl"), &certs, grpc).await;
    let world = Upstream::start(&ip_b, "world-b").await;
    ctl.observed.replace(
        SOURCE,
        sets(&[("/#/ecs/demo/world", &[(world.addr, ip_b.as_str())])]),
    );
    let incoming = free_port(&ip_a);
    let a = tls_agent(
        &ip_a,
        grpc,
        incoming,
        &certs,
        "agent-1",
        &dirs.path().join("a"),
        server_name,
    )
    .await;
    let b = tls_agent(
        &ip_b,
        grpc,
        incoming,
        &certs,
        "agent-2",
        &dirs.path().join("b"),
        server_name,
    )
    .await;
    // Converging proves the controller stream works over TLS.
    converged(&a, 1).await;
    converged(&b, 1).await;
    Mesh {
        _dirs: dirs,
        certs,
        _ctl: ctl,
        a,
        b,
        _world: world,
    }
}

#[tokio::test]
async fn requests_cross_every_hop_over_tls_and_strangers_are_refused_at_the_incoming_port() {
    let logs = Captured::default();
    let writer = logs.clone();
    let _guard = tracing::subscriber::set_default(
        tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish(),
    );
    let m = mesh().await;
    for _ in 0..20 {
        let (status, _, body) = get_via(m.a.outgoing_addr, "world", "/", &[]).await;
        assert_eq!((status, body.as_str()), (200, "world-b"));
    }
    // Both hops carried them on the HTTP/1 fast path, over TLS between.
    assert_eq!(fast_path_requests(&m.a).await, 20);
    assert_eq!(fast_path_requests(&m.b).await, 20);

    let ca = std::fs::read_to_string(m.certs.join("ca.pem")).unwrap();
    let b_incoming = m.b.incoming_addr;

    // Plaintext: no answer, counted as not TLS.
    let answer = common::raw(b_incoming, "GET / HTTP/1.0\r\nhost: world\r\n\r\n").await;
    assert!(!answer.contains("world-b"), "{answer}");
    assert_eq!(refusals(&m.b, "not_tls").await, 1);

    // TLS without a client certificate.
    assert_eq!(get_over_tls(&connector(&ca, None), b_incoming).await, None);
    assert_eq!(refusals(&m.b, "no_client_cert").await, 1);

    // Another CA's certificate.
    let other = MeshCa::new("another CA", 30).unwrap();
    let stranger = other
        .issue(&LeafSpec::new("x", &["ecsmesh-agent"], 30))
        .unwrap();
    let c = connector(&ca, Some((&stranger.cert_pem, &stranger.key_pem)));
    assert_eq!(get_over_tls(&c, b_incoming).await, None);
    assert_eq!(refusals(&m.b, "unknown_ca").await, 1);

    // An expired certificate from the mesh CA: refused, with a log line
    // that says so.
    let mesh_ca = MeshCa::from_pem(
        &ca,
        &std::fs::read_to_string(m.certs.join("ca-key.pem")).unwrap(),
    )
    .unwrap();
    let mut spec = LeafSpec::new("old-agent", &["ecsmesh-agent"], 30);
    spec.not_before -= time::Duration::days(60);
    spec.not_after = spec.not_before + time::Duration::days(30);
    let expired = mesh_ca.issue(&spec).unwrap();
    let c = connector(&ca, Some((&expired.cert_pem, &expired.key_pem)));
    assert_eq!(get_over_tls(&c, b_incoming).await, None);
    assert_eq!(refusals(&m.b, "expired").await, 1);
    let text = logs.text();
    let line = text
        .lines()
        .find(|l| l.contains("reason=\"expired\""))
        .unwrap_or_else(|| panic!("no log line for the expired certificate:\n{text}"));
    assert!(
        line.contains("WARN")
            && line.contains("TLS handshake refused: the client's certificate has expired"),
        "{line}"
    );

    // A mesh client still gets in, directly too.
    let agent_cert = std::fs::read_to_string(m.certs.join("agent-1.pem")).unwrap();
    let agent_key = std::fs::read_to_string(m.certs.join("agent-1-key.pem")).unwrap();
    let c = connector(&ca, Some((&agent_cert, &agent_key)));
    let answer = get_over_tls(&c, b_incoming).await.unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 200") && answer.ends_with("world-b"),
        "{answer}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_rotate_under_load_without_a_failed_request() {
    let m = Arc::new(mesh().await);
    // The certificate B presents, as a new client sees it.
    let presented = || {
        let m = Arc::clone(&m);
        async move {
            let client = ClientTls::new(&files(&m.certs, "agent-1"), &[]).unwrap();
            let tcp = TcpStream::connect(m.b.incoming_addr).await.unwrap();
            let s = client
                .connect(ServerName::try_from("ecsmesh-agent").unwrap(), tcp)
                .await
                .unwrap();
            s.get_ref().1.peer_certificates().unwrap()[0].to_vec()
        }
    };
    let before = presented().await;

    // Four bounded client loops through A → B while every certificate is
    // re-issued (same CA) twice.
    let load: Vec<_> = (0..4)
        .map(|_| {
            let m = Arc::clone(&m);
            tokio::spawn(async move {
                let mut failed = Vec::new();
                for _ in 0..150 {
                    let (status, _, body) = get_via(m.a.outgoing_addr, "world", "/", &[]).await;
                    if status != 200 {
                        failed.push(format!("{status} {body}"));
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                failed
            })
        })
        .collect();
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        write_mesh_certs(&m.certs, &MeshCertsSpec::default()).unwrap();
    }
    let mut failed = Vec::new();
    for l in load {
        failed.extend(l.await.unwrap());
    }
    assert!(
        failed.is_empty(),
        "{} failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(3)]
    );

    // The new certificate is in force for new handshakes (the watcher
    // checks every 200 ms; an explicit reload says whether anything is left).
    tokio::time::sleep(Duration::from_millis(600)).await;
    let after = presented().await;
    assert_ne!(before, after, "B still presents the old certificate");
    assert!(!m.b.l2l_tls.as_ref().unwrap().reload().unwrap());
    // And requests still flow.
    let (status, _, body) = get_via(m.a.outgoing_addr, "world", "/", &[]).await;
    assert_eq!((status, body.as_str()), (200, "world-b"));
}

#[tokio::test]
async fn an_agent_with_an_expired_certificate_does_not_start_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    write_mesh_certs(&certs, &MeshCertsSpec::default()).unwrap();
    let ca = MeshCa::from_pem(
        &std::fs::read_to_string(certs.join("ca.pem")).unwrap(),
        &std::fs::read_to_string(certs.join("ca-key.pem")).unwrap(),
    )
    .unwrap();
    let mut spec = LeafSpec::new("old-agent", &["ecsmesh-agent"], 30);
    spec.not_before -= time::Duration::days(60);
    spec.not_after = spec.not_before + time::Duration::days(30);
    let expired = ca.issue(&spec).unwrap();
    std::fs::File::create(certs.join("old.pem"))
        .unwrap()
        .write_all(expired.cert_pem.as_bytes())
        .unwrap();
    std::fs::write(certs.join("old-key.pem"), &expired.key_pem).unwrap();

    let mut config = ecsmesh_agent::config::Config::resolve(
        &ecsmesh_agent::config::Args::default(),
        ecsmesh_agent::config::FileConfig::default(),
    )
    .unwrap();
    config.host_ip = Some("127.0.51.9".parse().unwrap());
    config.instance_id = Some("i-old".into());
    config.imds_endpoint = Some("http://127.0.0.1:1".into());
    config.state_dir = dir.path().join("state");
    config.outgoing_port = 0;
    config.incoming_port = 0;
    config.admin_port = 0;
    config.tls.files = files(&certs, "old");
    config.tls.l2l = true;
    let err = Agent::start(config).await.unwrap_err();
    let text = format!("{err:#}");
    assert!(
        text.contains("old.pem") && text.contains("is not valid now"),
        "{text}"
    );
}

#[tokio::test]
async fn an_agent_from_another_ca_is_refused_by_the_outgoing_side_with_the_reason() {
    let dirs = tempfile::tempdir().unwrap();
    let (certs, other) = (dirs.path().join("certs"), dirs.path().join("other"));
    write_mesh_certs(&certs, &MeshCertsSpec::default()).unwrap();
    write_mesh_certs(&other, &MeshCertsSpec::default()).unwrap();
    let grpc = free_port("127.0.0.1");
    let ctl = common::controller(&dirs.path().join("ctl"), grpc).await;
    let world = Upstream::start("127.0.51.4", "world-d").await;
    ctl.observed.replace(
        SOURCE,
        sets(&[("/#/ecs/demo/world", &[(world.addr, "127.0.51.4")])]),
    );
    let incoming = free_port("127.0.51.3");
    // Plaintext to the controller; TLS between the agents only.
    let plain_controller = |who: &str, certs: &Path| {
        let (who, certs) = (who.to_owned(), certs.to_owned());
        move |c: &mut ecsmesh_agent::config::Config| {
            c.tls = TlsConfig {
                files: files(&certs, &who),
                reload_interval: Duration::from_secs(5),
                l2l: true,
                l2l_server_name: "ecsmesh-agent".parse().unwrap(),
                l2l_client_auth: ClientAuth::Required,
                controller_server_name: None,
            };
        }
    };
    let c = agent_with(
        "127.0.51.3",
        grpc,
        incoming,
        Mode::LinkerToLinker,
        &dirs.path().join("c"),
        plain_controller("agent-1", &certs),
    )
    .await;
    let d = agent_with(
        "127.0.51.4",
        grpc,
        incoming,
        Mode::LinkerToLinker,
        &dirs.path().join("d"),
        plain_controller("agent-2", &other),
    )
    .await;
    converged(&c, 1).await;
    converged(&d, 1).await;
    let (status, _, body) = get_via(c.outgoing_addr, "world", "/", &[]).await;
    assert_eq!(status, 502, "{body}");
    assert!(
        body.starts_with("TLS error: the TLS handshake with 127.0.51.4")
            && body.contains("is not signed by the mesh CA"),
        "{body}"
    );
}

#[tokio::test]
async fn a_server_name_template_is_filled_per_destination() {
    // Agents carry a wildcard for the template's names.
    let spec = MeshCertsSpec {
        agent_names: vec!["ecsmesh-agent".into(), "*.svc.mesh".into()],
        ..MeshCertsSpec::default()
    };
    let m = mesh_named(&spec, "{service}.svc.mesh", "127.0.53").await;
    let (status, _, body) = get_via(m.a.outgoing_addr, "world", "/", &[]).await;
    assert_eq!((status, body.as_str()), (200, "world-b"));

    // A template the certificates do not cover: refused, and the 502 says
    // which name was expected.
    let m = mesh_named(&spec, "{service}.{cluster}.other", "127.0.54").await;
    let (status, _, body) = get_via(m.a.outgoing_addr, "world", "/", &[]).await;
    assert_eq!(status, 502, "{body}");
    assert!(
        body.contains("does not carry the expected name") && body.contains("world.demo.other"),
        "{body}"
    );
}

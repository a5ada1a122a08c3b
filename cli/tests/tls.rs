//! `ecsmeshctl certs init`, and the controller commands over TLS: the
//! operator's certificate writes, a missing one reads only, another CA's
//! controller is refused.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use assert_cmd::Command;
use ecsmesh_controller::Controller;
use ecsmesh_controller::config::{Security, ServerTlsSettings};
use ecsmesh_tls::{ClientAuth, TlsFiles};

async fn ctl(args: Vec<String>) -> (i32, String, String) {
    common::ecsmeshctl(args, Vec::new()).await
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

fn init(dir: &Path) -> String {
    let out = Command::cargo_bin("ecsmeshctl")
        .unwrap()
        .args(["certs", "init", "--out"])
        .arg(dir)
        .args(["--agents", "3"])
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

async fn tls_controller(store: &Path, certs: &Path) -> Controller {
    let config = common::controller_config(
        store,
        None,
        Security {
            tls: Some(ServerTlsSettings {
                files: TlsFiles {
                    ca: Some(certs.join("ca.pem")),
                    cert: Some(certs.join("controller.pem")),
                    key: Some(certs.join("controller-key.pem")),
                },
                client_auth: ClientAuth::Optional,
                reload_interval: ecsmesh_tls::DEFAULT_RELOAD_INTERVAL,
            }),
            admin_identities: vec!["ecsmesh-admin".into()],
            ..Security::default()
        },
    );
    let c = Controller::start(config, &["test"]).await.unwrap();
    c.observed.replace("test", BTreeMap::new());
    c
}

#[test]
fn certs_init_writes_a_ca_and_certificates_and_reuses_the_ca() {
    let dir = tempfile::tempdir().unwrap();
    let listed = init(dir.path());
    for f in [
        "ca.pem",
        "ca-key.pem",
        "controller.pem",
        "agent-1.pem",
        "agent-3-key.pem",
        "admin.pem",
    ] {
        assert!(listed.contains(f), "{f} not in {listed}");
    }
    let mode = std::fs::metadata(dir.path().join("agent-1-key.pem"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    // Again: the same CA, new certificates.
    let ca = std::fs::read(dir.path().join("ca.pem")).unwrap();
    let cert = std::fs::read(dir.path().join("agent-1.pem")).unwrap();
    let listed = init(dir.path());
    assert!(!listed.contains("ca.pem"), "{listed}");
    assert_eq!(std::fs::read(dir.path().join("ca.pem")).unwrap(), ca);
    assert_ne!(std::fs::read(dir.path().join("agent-1.pem")).unwrap(), cert);
}

#[tokio::test]
async fn controller_commands_over_tls() {
    let (store, certs, other) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    init(certs.path());
    init(other.path());
    let c = tls_controller(store.path(), certs.path()).await;
    let addr = c.grpc_addr.to_string();
    let ca = certs.path().join("ca.pem").display().to_string();
    let admin = certs.path().join("admin.pem").display().to_string();
    let admin_key = certs.path().join("admin-key.pem").display().to_string();

    // The operator's certificate writes (a bare address with --tls-ca is TLS).
    let (code, out, err) = ctl(args(&[
        "dtab",
        "set",
        "default",
        "/svc/a=>/svc/b",
        "--controller",
        &addr,
        "--tls-ca",
        &ca,
        "--tls-cert",
        &admin,
        "--tls-key",
        &admin_key,
        "--tls-server-name",
        "ecsmesh-controller",
    ]))
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("/svc/a=>/svc/b"), "{out}");

    // Without a certificate: reads are open, writes are not.
    let https = format!("https://{addr}");
    let (code, out, err) = ctl(args(&[
        "dtab",
        "get",
        "default",
        "--controller",
        &https,
        "--tls-ca",
        &ca,
        "--tls-server-name",
        "ecsmesh-controller",
    ]))
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("/svc/a=>/svc/b"), "{out}");
    let (code, _, err) = ctl(args(&[
        "dtab",
        "delete",
        "default",
        "--controller",
        &https,
        "--tls-ca",
        &ca,
        "--tls-server-name",
        "ecsmesh-controller",
    ]))
    .await;
    assert_eq!(code, 1);
    assert!(err.contains("writes need"), "{err}");

    // The default server name is the address's host: 127.0.0.1, which the
    // controller's certificate carries too.
    let (code, _, err) = ctl(args(&[
        "dtab",
        "list",
        "--controller",
        &https,
        "--tls-ca",
        &ca,
    ]))
    .await;
    assert_eq!(code, 0, "{err}");

    // Trusting another CA: the controller is refused, and the error says why.
    let other_ca = other.path().join("ca.pem").display().to_string();
    let (code, _, err) = ctl(args(&[
        "dtab",
        "list",
        "--controller",
        &https,
        "--tls-ca",
        &other_ca,
    ]))
    .await;
    assert_eq!(code, 1);
    assert!(err.contains("not signed by the mesh CA"), "{err}");

    // Plaintext to a TLS port: refused.
    let (code, _, _) = ctl(args(&["dtab", "list", "--controller", &addr])).await;
    assert_eq!(code, 1);
}

//! TLS on the gRPC port: agents with mesh certificates follow the stream,
//! clients without one (or with another CA's) do not; dtab writes need an
//! allowed identity or the token; reads can be closed to strangers.

#![allow(clippy::unwrap_used, clippy::too_many_lines)]

mod common;

use std::path::Path;

use common::{SOURCE, TestAgent, sets};
use ecsmesh_controller::Controller;
use ecsmesh_controller::config::{AdminReads, Security, ServerTlsSettings};
use ecsmesh_proto::v1 as pb;
use ecsmesh_tls::generate::{MeshCertsSpec, write_mesh_certs};
use ecsmesh_tls::{ClientAuth, ClientTls, HttpsConnector, ServerName, TlsFiles};
use pb::controller_message::Kind;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request};

fn files(dir: &Path, who: Option<&str>) -> TlsFiles {
    TlsFiles {
        ca: Some(dir.join("ca.pem")),
        cert: who.map(|w| dir.join(format!("{w}.pem"))),
        key: who.map(|w| dir.join(format!("{w}-key.pem"))),
    }
}

async fn controller(store: &Path, certs: &Path, client_auth: ClientAuth) -> Controller {
    let mut config = common::config(store, Some("s3cret"));
    config.security = Security {
        tls: Some(ServerTlsSettings {
            files: files(certs, Some("controller")),
            client_auth,
            reload_interval: ecsmesh_tls::DEFAULT_RELOAD_INTERVAL,
        }),
        agent_identities: vec!["ecsmesh-agent".into()],
        admin_identities: vec!["ecsmesh-admin".into()],
        admin_reads: AdminReads::Authenticated,
        ..Security::default()
    };
    let c = Controller::start(config, &[SOURCE]).await.unwrap();
    c.observed
        .replace(SOURCE, sets(&[("/#/ecs/demo/world", &["127.0.1.1:8080"])]));
    c
}

/// A TLS channel presenting `files`' certificate (if any).
async fn tls_channel(
    addr: std::net::SocketAddr,
    files: &TlsFiles,
) -> Result<Channel, tonic::transport::Error> {
    let tls = ClientTls::new(files, ecsmesh_tls::ALPN_H2).unwrap();
    let name = ServerName::try_from("ecsmesh-controller").unwrap();
    Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .connect_with_connector(HttpsConnector::new(tls, name, None))
        .await
}

fn certs() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write_mesh_certs(dir.path(), &MeshCertsSpec::default()).unwrap();
    dir
}

#[tokio::test]
async fn agents_with_mesh_certificates_follow_the_stream_and_strangers_do_not() {
    let (store, certs, other) = (tempfile::tempdir().unwrap(), certs(), certs());
    let c = controller(store.path(), certs.path(), ClientAuth::Optional).await;

    // An agent's certificate: the snapshot arrives.
    let ch = tls_channel(c.grpc_addr, &files(certs.path(), Some("agent-1")))
        .await
        .unwrap();
    let mut agent = TestAgent::connect(ch, "i-a").await;
    assert!(matches!(agent.next().await, Kind::Snapshot(_)));

    // No certificate (optional client auth lets the handshake through): the
    // stream is refused.
    let ch = tls_channel(c.grpc_addr, &files(certs.path(), None))
        .await
        .unwrap();
    let (_tx, rx) = tokio::sync::mpsc::channel(1);
    let err = pb::mesh_client::MeshClient::new(ch)
        .stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err}");

    // A mesh certificate that is not an agent's (the operator's): refused.
    let ch = tls_channel(c.grpc_addr, &files(certs.path(), Some("admin")))
        .await
        .unwrap();
    let (_tx, rx) = tokio::sync::mpsc::channel(1);
    let err = pb::mesh_client::MeshClient::new(ch)
        .stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err}");

    // Another CA's certificate: the handshake fails.
    let mut stranger = files(other.path(), Some("agent-1"));
    stranger.ca = Some(certs.path().join("ca.pem"));
    let refused = match tls_channel(c.grpc_addr, &stranger).await {
        Err(_) => true,
        // TLS 1.3: the refusal can come after the client's side finished.
        Ok(ch) => pb::mesh_status_client::MeshStatusClient::new(ch)
            .list_agents(pb::ListAgentsRequest {})
            .await
            .is_err(),
    };
    assert!(refused);

    // Plaintext: nothing.
    let plain = Endpoint::from_shared(format!("http://{}", c.grpc_addr))
        .unwrap()
        .connect()
        .await;
    if let Ok(ch) = plain {
        assert!(
            pb::mesh_status_client::MeshStatusClient::new(ch)
                .list_agents(pb::ListAgentsRequest {})
                .await
                .is_err()
        );
    }
}

#[tokio::test]
async fn required_client_auth_refuses_clients_without_a_certificate_at_the_handshake() {
    let (store, certs) = (tempfile::tempdir().unwrap(), certs());
    let c = controller(store.path(), certs.path(), ClientAuth::Required).await;
    let anonymous = match tls_channel(c.grpc_addr, &files(certs.path(), None)).await {
        Err(_) => true,
        Ok(ch) => {
            let err = pb::mesh_status_client::MeshStatusClient::new(ch)
                .list_agents(pb::ListAgentsRequest {})
                .await
                .unwrap_err();
            // Refused by TLS, not by the read policy.
            err.code() != Code::Unauthenticated || !err.message().contains("reads need")
        }
    };
    assert!(anonymous);
    // The refusal is counted, by reason.
    let metrics = admin_get(c.admin_addr, "/metrics").await;
    assert!(
        metrics.lines().any(|l| l
            .starts_with("ecsmesh_controller_tls_handshake_failures_total{reason=")
            && !l.ends_with(" 0")),
        "{metrics}"
    );
    let ch = tls_channel(c.grpc_addr, &files(certs.path(), Some("agent-2")))
        .await
        .unwrap();
    let mut agent = TestAgent::connect(ch, "i-b").await;
    assert!(matches!(agent.next().await, Kind::Snapshot(_)));
}

#[tokio::test]
async fn dtab_writes_need_an_admin_identity_or_the_token_and_reads_a_mesh_identity() {
    let (store, certs) = (tempfile::tempdir().unwrap(), certs());
    let c = controller(store.path(), certs.path(), ClientAuth::Optional).await;
    let api = |ch| pb::dtab_admin_client::DtabAdminClient::new(ch);
    let create = |ns: &str| pb::CreateDtabRequest {
        namespace: ns.to_owned(),
        dtab: "/svc/a=>/svc/b".to_owned(),
    };

    // The operator's certificate writes.
    let admin = tls_channel(c.grpc_addr, &files(certs.path(), Some("admin")))
        .await
        .unwrap();
    api(admin.clone()).create_dtab(create("one")).await.unwrap();

    // An agent's certificate reads but may not write.
    let agent = tls_channel(c.grpc_addr, &files(certs.path(), Some("agent-1")))
        .await
        .unwrap();
    api(agent.clone())
        .get_dtab(pb::GetDtabRequest {
            namespace: "one".into(),
        })
        .await
        .unwrap();
    let err = api(agent).create_dtab(create("two")).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err}");

    // No certificate: neither reads nor writes, unless with the token.
    let anonymous = tls_channel(c.grpc_addr, &files(certs.path(), None))
        .await
        .unwrap();
    let err = api(anonymous.clone())
        .list_namespaces(pb::ListNamespacesRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err}");
    let err = pb::mesh_status_client::MeshStatusClient::new(anonymous.clone())
        .list_agents(pb::ListAgentsRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err}");
    let err = api(anonymous.clone())
        .create_dtab(create("two"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err}");
    api(anonymous.clone())
        .create_dtab(with_token(create("two")))
        .await
        .unwrap();
    api(anonymous)
        .list_namespaces(with_token(pb::ListNamespacesRequest {}))
        .await
        .unwrap();
}

/// A plain HTTP/1.0 GET on the admin port (no client library needed).
async fn admin_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    conn.write_all(format!("GET {path} HTTP/1.0\r\nHost: admin\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut body = String::new();
    conn.read_to_string(&mut body).await.unwrap();
    body
}

fn with_token<T>(msg: T) -> Request<T> {
    let mut req = Request::new(msg);
    req.metadata_mut()
        .insert("authorization", "Bearer s3cret".parse().unwrap());
    req
}

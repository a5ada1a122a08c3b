//! Handshakes between [`ServerTls`] and [`ClientTls`] on loopback, with
//! certificates made by the `generate` module: who is let in, why others
//! are not, and rotation.
#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

use std::path::Path;
use std::sync::Arc;

use ecsmesh_tls::generate::{LeafSpec, MeshCa, write_file};
use ecsmesh_tls::{
    ClientAuth, ClientTls, HandshakeError, HandshakeFailure, ServerName, ServerTls, TlsError,
    TlsFiles,
};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

/// Writes `name.pem` and `name-key.pem`; returns the files with `ca`.
fn write_leaf(dir: &Path, ca: &MeshCa, name: &str, spec: &LeafSpec) -> TlsFiles {
    let issued = ca.issue(spec).unwrap();
    let (cert, key) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}-key.pem")),
    );
    write_file(&key, &issued.key_pem, true).unwrap();
    write_file(&cert, &issued.cert_pem, false).unwrap();
    let ca_file = dir.join("ca.pem");
    write_file(&ca_file, ca.cert_pem(), false).unwrap();
    TlsFiles {
        ca: Some(ca_file),
        cert: Some(cert),
        key: Some(key),
    }
}

/// Only the CA of `files`: for a client without a certificate, or a server
/// missing its own.
fn ca_only(files: &TlsFiles) -> TlsFiles {
    TlsFiles {
        ca: files.ca.clone(),
        ..TlsFiles::default()
    }
}

/// A leaf for `ecsmesh-agent` that expired a month ago.
fn expired_spec() -> LeafSpec {
    let mut spec = LeafSpec::new("old", &["ecsmesh-agent"], 30);
    spec.not_before -= time::Duration::days(60);
    spec.not_after = spec.not_before + time::Duration::days(30);
    spec
}

fn name(s: &str) -> ServerName<'static> {
    ServerName::try_from(s.to_owned()).unwrap()
}

/// Connects to `addr` and handshakes, expecting the server to be `server_name`.
async fn dial(
    client: &ClientTls,
    addr: std::net::SocketAddr,
    server_name: &str,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, HandshakeError> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    client.connect(name(server_name), tcp).await
}

/// Each handshake's outcome at the server: the client's identities, or why
/// it was refused.
type Outcomes = tokio::sync::mpsc::UnboundedReceiver<Result<Vec<String>, HandshakeFailure>>;

/// A server that accepts one connection at a time, echoes one line and
/// reports each handshake's outcome.
async fn echo_server(tls: ServerTls) -> (std::net::SocketAddr, Outcomes) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (tls, tx) = (tls.clone(), tx.clone());
            tokio::spawn(async move {
                match tls.accept(tcp).await {
                    Ok((mut stream, peer)) => {
                        let _ = tx.send(Ok(peer.identities.to_vec()));
                        let mut buf = [0u8; 64];
                        while let Ok(n) = stream.read(&mut buf).await {
                            if n == 0 || stream.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e.failure));
                    }
                }
            });
        }
    });
    (addr, rx)
}

/// Sends "ping" and expects it back.
async fn ping<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    stream: &mut S,
) -> std::io::Result<()> {
    stream.write_all(b"ping").await?;
    let mut buf = [0u8; 4];
    stream.read_exact(&mut buf).await?;
    assert_eq!(&buf, b"ping");
    Ok(())
}

/// A client the server refuses for `failure`. (TLS 1.3: the client may
/// learn of the refusal only on its first read.)
async fn expect_refused<S, E>(
    attempt: Result<S, E>,
    outcomes: &mut Outcomes,
    failure: HandshakeFailure,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    if let Ok(mut s) = attempt {
        assert!(ping(&mut s).await.is_err());
    }
    assert_eq!(outcomes.recv().await.unwrap(), Err(failure));
}

/// A rustls client built by hand, for certificates `ClientTls` would not
/// load (expired ones).
fn raw_client(ca: &MeshCa, cert_pem: &str, key_pem: &str) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca.cert_pem().as_bytes()).unwrap())
        .unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(
            vec![CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap()],
            PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap(),
        )
        .unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

#[tokio::test]
async fn mesh_clients_get_in_with_their_identity_and_others_do_not() {
    let dir = tempfile::tempdir().unwrap();
    let ca = MeshCa::new("test CA", 30).unwrap();
    let server_files = write_leaf(
        dir.path(),
        &ca,
        "server",
        &LeafSpec::new("agent-1", &["ecsmesh-agent"], 30),
    );
    let client_files = write_leaf(
        dir.path(),
        &ca,
        "client",
        &LeafSpec::new("agent-2", &["ecsmesh-agent"], 30),
    );
    let server = ServerTls::new(&server_files, ClientAuth::Required, &[]).unwrap();
    let (addr, mut outcomes) = echo_server(server).await;

    // A mesh client: in, and known by its names.
    let client = ClientTls::new(&client_files, &[]).unwrap();
    let mut stream = dial(&client, addr, "ecsmesh-agent").await.unwrap();
    ping(&mut stream).await.unwrap();
    assert_eq!(
        outcomes.recv().await.unwrap().unwrap(),
        vec!["ecsmesh-agent".to_owned(), "agent-2".to_owned()]
    );

    // No client certificate: refused.
    let anonymous = ClientTls::new(&ca_only(&client_files), &[]).unwrap();
    expect_refused(
        dial(&anonymous, addr, "ecsmesh-agent").await,
        &mut outcomes,
        HandshakeFailure::NoClientCert,
    )
    .await;

    // A certificate from another CA: refused.
    let other_ca = MeshCa::new("another CA", 30).unwrap();
    let other_dir = tempfile::tempdir().unwrap();
    let mut stranger = write_leaf(
        other_dir.path(),
        &other_ca,
        "stranger",
        &LeafSpec::new("x", &["ecsmesh-agent"], 30),
    );
    stranger.ca.clone_from(&client_files.ca);
    let stranger = ClientTls::new(&stranger, &[]).unwrap();
    expect_refused(
        dial(&stranger, addr, "ecsmesh-agent").await,
        &mut outcomes,
        HandshakeFailure::UnknownCa,
    )
    .await;

    // An expired certificate from the right CA: refused as expired.
    let expired = ca.issue(&expired_spec()).unwrap();
    let connector = raw_client(&ca, &expired.cert_pem, &expired.key_pem);
    let tcp = TcpStream::connect(addr).await.unwrap();
    expect_refused(
        connector.connect(name("ecsmesh-agent"), tcp).await,
        &mut outcomes,
        HandshakeFailure::Expired,
    )
    .await;

    // Plaintext: refused as not TLS.
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(
        outcomes.recv().await.unwrap(),
        Err(HandshakeFailure::NotTls)
    );
}

#[tokio::test]
async fn the_client_verifies_the_servers_name_and_ca() {
    let dir = tempfile::tempdir().unwrap();
    let ca = MeshCa::new("test CA", 30).unwrap();
    let server_files = write_leaf(
        dir.path(),
        &ca,
        "server",
        &LeafSpec::new("c", &["ecsmesh-controller", "*.svc.mesh"], 30),
    );
    let server = ServerTls::new(&server_files, ClientAuth::Optional, &[]).unwrap();
    let (addr, _outcomes) = echo_server(server).await;
    let client = ClientTls::new(&ca_only(&server_files), &[]).unwrap();
    // Optional client auth: a client without a certificate gets in.
    let mut s = dial(&client, addr, "ecsmesh-controller").await.unwrap();
    ping(&mut s).await.unwrap();
    // A wildcard name covers a templated one (webpki wants at least three
    // labels: `*.mesh` would not do).
    dial(&client, addr, "world.svc.mesh").await.unwrap();
    // Any other name: refused.
    let err = dial(&client, addr, "ecsmesh-agent").await.unwrap_err();
    assert_eq!(err.failure, HandshakeFailure::WrongName, "{err}");
    // Another CA's server: refused.
    let other = MeshCa::new("another CA", 30).unwrap();
    let other_dir = tempfile::tempdir().unwrap();
    let other_files = write_leaf(
        other_dir.path(),
        &other,
        "server",
        &LeafSpec::new("c", &["ecsmesh-controller"], 30),
    );
    let (other_addr, _o) =
        echo_server(ServerTls::new(&other_files, ClientAuth::None, &[]).unwrap()).await;
    let err = dial(&client, other_addr, "ecsmesh-controller")
        .await
        .unwrap_err();
    assert_eq!(err.failure, HandshakeFailure::UnknownCa, "{err}");
}

#[tokio::test]
async fn rotation_keeps_open_connections_and_new_ones_see_the_new_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let ca = MeshCa::new("test CA", 30).unwrap();
    let files = write_leaf(
        dir.path(),
        &ca,
        "server",
        &LeafSpec::new("first", &["ecsmesh-agent"], 30),
    );
    let server = ServerTls::new(&files, ClientAuth::None, &[]).unwrap();
    let (addr, _outcomes) = echo_server(server.clone()).await;
    let client = ClientTls::new(&ca_only(&files), &[]).unwrap();
    let subject = |s: &tokio_rustls::client::TlsStream<TcpStream>| {
        let der = &s.get_ref().1.peer_certificates().unwrap()[0];
        ecsmesh_tls::CertInfo::parse(der).unwrap().identities
    };
    let mut open = dial(&client, addr, "ecsmesh-agent").await.unwrap();
    assert!(subject(&open).contains(&"first".to_owned()));
    assert!(!server.reload().unwrap(), "nothing changed yet");

    write_leaf(
        dir.path(),
        &ca,
        "server",
        &LeafSpec::new("second", &["ecsmesh-agent"], 30),
    );
    assert!(server.reload().unwrap());
    let fresh = dial(&client, addr, "ecsmesh-agent").await.unwrap();
    assert!(subject(&fresh).contains(&"second".to_owned()));
    // The connection made before the rotation still works.
    ping(&mut open).await.unwrap();

    // Half a rotation (a new certificate, the old key): refused, and the
    // certificate in force stays.
    let other = ca
        .issue(&LeafSpec::new("third", &["ecsmesh-agent"], 30))
        .unwrap();
    write_file(files.cert.as_ref().unwrap(), &other.cert_pem, false).unwrap();
    assert!(matches!(server.reload(), Err(TlsError::KeyMismatch { .. })));
    let still = dial(&client, addr, "ecsmesh-agent").await.unwrap();
    assert!(subject(&still).contains(&"second".to_owned()));
}

#[test]
fn an_expired_certificate_is_refused_at_load_with_its_dates() {
    let dir = tempfile::tempdir().unwrap();
    let ca = MeshCa::new("test CA", 30).unwrap();
    let files = write_leaf(dir.path(), &ca, "old", &expired_spec());
    let err = ServerTls::new(&files, ClientAuth::Required, &[]).unwrap_err();
    assert!(matches!(err, TlsError::NotValidNow { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("old.pem") && text.contains("is not valid now"),
        "{text}"
    );
    // And missing pieces say what is missing.
    let err = ServerTls::new(&ca_only(&files), ClientAuth::None, &[]).unwrap_err();
    assert!(err.to_string().contains("certificate and a key"), "{err}");
}

//! # ecsmesh-tls
//!
//! TLS for every hop ecsmesh owns (agent to agent, agent to controller, the
//! dtab admin API), on rustls with the aws-lc-rs provider.
//!
//! - [`TlsFiles`]: a mesh CA bundle and a certificate + key, as PEM files
//!   (mounted from Secrets Manager, SSM or the instance). They are re-read
//!   when their contents change ([`ServerTls::watch`], [`ClientTls::watch`]):
//!   new handshakes use the new certificate, established connections carry
//!   on with the one they started with.
//! - [`ServerTls`]: the accepting side, optionally requiring (or accepting)
//!   client certificates signed by the mesh CA; tells who the peer is
//!   ([`Peer`]).
//! - [`ClientTls`]: the connecting side, verifying the server's name: a
//!   fixed one or a [`ServerNameTemplate`] such as `{service}.mesh` (like
//!   Linkerd's `commonName`), filled per destination.
//! - [`HttpsConnector`]: a connector for hyper's pooled client and tonic
//!   channels.
//! - [`HandshakeError`]: why a handshake failed, as a short reason (a
//!   metrics label) and a message saying which certificate and why (an
//!   expired certificate says when it expired).
//! - `generate` (feature): a mesh CA and certificates for controllers,
//!   agents and operators (`ecsmeshctl certs init`).

mod client;
mod connect;
mod error;
#[cfg(feature = "generate")]
pub mod generate;
mod identity;
mod material;
mod reload;
mod server;

pub use client::{ClientTls, ServerNameTemplate};
pub use connect::{HttpsConnector, TlsIo};
pub use error::{HandshakeError, HandshakeFailure, TlsError};
pub use identity::{CertInfo, Peer};
pub use material::TlsFiles;
pub use server::{ClientAuth, ServerTls};

/// Re-exported so callers name these without depending on rustls.
pub use rustls::pki_types::ServerName;
pub use tokio_rustls::client::TlsStream as ClientTlsStream;
pub use tokio_rustls::server::TlsStream as ServerTlsStream;

/// How often the certificate files are checked for changes by default.
pub const DEFAULT_RELOAD_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// ALPN for gRPC (HTTP/2 only).
pub const ALPN_H2: &[&[u8]] = &[b"h2"];
/// ALPN for a listener that speaks HTTP/2 and HTTP/1.1.
pub const ALPN_H2_HTTP1: &[&[u8]] = &[b"h2", b"http/1.1"];

/// The crypto provider every config here is built with.
fn provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

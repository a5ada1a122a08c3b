//! A connector for hyper's pooled client and tonic channels: TCP, then the
//! TLS handshake verifying one server name.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tower_service::Service;

use crate::ClientTls;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Connects to the URI's host and port and verifies `name` (not the URI's
/// host: a mesh peer is reached by address but known by name).
#[derive(Clone, Debug)]
pub struct HttpsConnector {
    http: HttpConnector,
    tls: ClientTls,
    name: ServerName<'static>,
}

impl HttpsConnector {
    pub fn new(
        tls: ClientTls,
        name: ServerName<'static>,
        connect_timeout: Option<Duration>,
    ) -> Self {
        let mut http = HttpConnector::new();
        // The URI may say https: this connector does the TLS itself.
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(connect_timeout);
        Self { http, tls, name }
    }

    /// The server name this connector verifies.
    pub fn server_name(&self) -> &ServerName<'static> {
        &self.name
    }
}

impl Service<Uri> for HttpsConnector {
    type Response = TlsIo;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<TlsIo, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.http.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connecting = self.http.call(uri.clone());
        let (tls, name) = (self.tls.clone(), self.name.clone());
        Box::pin(async move {
            let tcp = connecting.await?.into_inner();
            match tls.connect(name.clone(), tcp).await {
                Ok(stream) => Ok(TlsIo(TokioIo::new(stream))),
                Err(e) => {
                    let name = name.to_str();
                    if e.failure.is_certificate_problem() {
                        tracing::warn!(server = %uri, %name, reason = e.failure.as_str(), "TLS handshake refused: {}", e.message);
                    } else {
                        tracing::debug!(server = %uri, %name, reason = e.failure.as_str(), "TLS handshake failed: {}", e.message);
                    }
                    Err(e.into())
                }
            }
        })
    }
}

/// A client-side TLS connection, as hyper and tonic want it.
#[derive(Debug)]
pub struct TlsIo(TokioIo<TlsStream<TcpStream>>);

impl TlsIo {
    /// The TLS session (negotiated protocol, peer certificates).
    pub fn session(&self) -> &rustls::ClientConnection {
        self.0.inner().get_ref().1
    }
}

impl Connection for TlsIo {
    fn connected(&self) -> Connected {
        self.0.inner().get_ref().0.connected()
    }
}

impl hyper::rt::Read for TlsIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for TlsIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write_vectored(cx, bufs)
    }
}

//! TLS on the gRPC port: handshakes run off the accept loop (a slow client
//! holds up no one), and each connection carries its peer's identity into
//! the requests ([`ConnInfo`]) for the access checks (the mesh stream's
//! [`crate::admission`], [`ReadGate`], and the dtab API's own).

use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use ecsmesh_tls::{Peer, ServerTls};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;

/// What a request knows about its TLS connection (a request extension).
#[derive(Clone, Debug)]
pub struct ConnInfo {
    pub peer: Peer,
    pub remote_addr: SocketAddr,
}

/// An accepted, handshaken connection.
#[derive(Debug)]
pub struct TlsConn {
    stream: tokio_rustls::server::TlsStream<TcpStream>,
    info: ConnInfo,
}

impl Connected for TlsConn {
    type ConnectInfo = ConnInfo;
    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// The handshaken connections of `listener`, for `serve_with_incoming`.
/// Failed handshakes are logged (a certificate problem as a warning),
/// counted by reason, and dropped.
pub fn incoming(
    listener: TcpListener,
    tls: ServerTls,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
) -> ReceiverStream<Result<TlsConn, std::io::Error>> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let (tcp, remote_addr) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::debug!(error = %e, "accept failed");
                    continue;
                }
            };
            if tx.is_closed() {
                return;
            }
            let (tls, tx, metrics) = (tls.clone(), tx.clone(), std::sync::Arc::clone(&metrics));
            tokio::spawn(async move {
                let _ = tcp.set_nodelay(true);
                match tls.accept(tcp).await {
                    Ok((stream, peer)) => {
                        let info = ConnInfo { peer, remote_addr };
                        let _ = tx.send(Ok(TlsConn { stream, info })).await;
                    }
                    Err(e) if e.failure.is_certificate_problem() => {
                        metrics.tls_handshake_failure(e.failure.as_str());
                        tracing::warn!(%remote_addr, reason = e.failure.as_str(), "TLS handshake refused on the gRPC port: {}", e.message);
                    }
                    Err(e) => {
                        metrics.tls_handshake_failure(e.failure.as_str());
                        tracing::debug!(%remote_addr, reason = e.failure.as_str(), "TLS handshake failed on the gRPC port: {}", e.message);
                    }
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

/// The peer of a request that came over TLS.
pub fn peer<T>(request: &tonic::Request<T>) -> Option<&Peer> {
    request.extensions().get::<ConnInfo>().map(|c| &c.peer)
}

/// The gRPC port's acceptor, re-reading its files on the configured interval.
pub fn server(
    settings: &crate::config::ServerTlsSettings,
) -> Result<ServerTls, ecsmesh_tls::TlsError> {
    let server = ServerTls::new(&settings.files, settings.client_auth, ecsmesh_tls::ALPN_H2)?;
    server.watch(settings.reload_interval);
    tracing::info!(client_auth = %settings.client_auth, "TLS on the gRPC port");
    Ok(server)
}

/// In front of read-only APIs (`MeshStatus`): the dtab API's read policy.
#[derive(Clone, Debug)]
pub struct ReadGate(pub crate::grpc::admin::AdminService);

impl tonic::service::Interceptor for ReadGate {
    fn call(&mut self, req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        self.0.authorize_read(&req)?;
        Ok(req)
    }
}

//! HTTP/2 with prior knowledge to an endpoint that may speak only HTTP/1.
//!
//! An h2c request goes to its endpoint over HTTP/2. An endpoint that speaks
//! only HTTP/1 answers the connection preface with an HTTP/1 error (or
//! closes), which hyper sees only after the request — body included — was
//! handed over: the request would be lost and the endpoint charged for the
//! client's choice of protocol. So the HTTP/2 pool's connector sends the
//! preface itself and waits for the server's first frame (a server's
//! preface is a SETTINGS frame, RFC 9113 §3.4) before handing the connection
//! to hyper. Anything else fails the connect with [`NotHttp2`]: the request
//! never left, so the proxy sends it again as HTTP/1.1 and remembers the
//! endpoint ([`Http1Only`]).

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::net::TcpStream;

/// The client connection preface (RFC 9113 §3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// A frame header's length; its fourth byte is the frame type.
const FRAME_HEADER: usize = 9;
const SETTINGS: u8 = 0x4;

/// The endpoint did not answer the HTTP/2 preface with HTTP/2.
#[derive(Debug, thiserror::Error)]
#[error("the endpoint does not speak HTTP/2 with prior knowledge ({answer})")]
pub struct NotHttp2 {
    /// What it sent instead, for the error message.
    pub answer: String,
}

/// A connector for the HTTP/2 pool: TCP, then the preface exchange.
#[derive(Clone, Debug)]
pub struct H2Probe {
    inner: HttpConnector,
    /// How long the server may take to send its first frame.
    timeout: Duration,
}

impl H2Probe {
    pub fn new(inner: HttpConnector, timeout: Duration) -> Self {
        Self { inner, timeout }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower_service::Service<Uri> for H2Probe {
    type Response = TokioIo<Probed>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connecting = self.inner.call(uri);
        let timeout = self.timeout;
        Box::pin(async move {
            let mut stream = connecting.await?.into_inner();
            let head = tokio::time::timeout(timeout, exchange(&mut stream))
                .await
                .map_err(|_| NotHttp2 {
                    answer: format!("no answer to the preface within {timeout:?}"),
                })??;
            Ok(TokioIo::new(Probed {
                stream,
                unsent_preface: PREFACE.len(),
                head,
                head_read: 0,
            }))
        })
    }
}

/// Sends the preface and reads the server's first frame header.
async fn exchange(stream: &mut TcpStream) -> Result<Vec<u8>, BoxError> {
    stream.write_all(PREFACE).await?;
    let mut head = vec![0; FRAME_HEADER];
    let mut got = 0;
    while got < FRAME_HEADER {
        let n = stream.read(&mut head[got..]).await?;
        if n == 0 {
            let answer = if got == 0 {
                "it closed the connection".to_owned()
            } else {
                describe(&head[..got])
            };
            return Err(NotHttp2 { answer }.into());
        }
        got += n;
    }
    if head[3] == SETTINGS && head[5..9] == [0, 0, 0, 0] {
        Ok(head)
    } else {
        Err(NotHttp2 {
            answer: describe(&head),
        }
        .into())
    }
}

fn describe(bytes: &[u8]) -> String {
    if bytes.starts_with(b"HTTP/") {
        "it answered in HTTP/1".to_owned()
    } else {
        format!("it answered {:?}", String::from_utf8_lossy(bytes))
    }
}

/// A connection whose preface was exchanged already: hyper's own preface
/// is swallowed, and the server's first frame header read back first.
#[derive(Debug)]
pub struct Probed {
    stream: TcpStream,
    /// Bytes of hyper's preface still to swallow.
    unsent_preface: usize,
    head: Vec<u8>,
    head_read: usize,
}

impl Connection for Probed {
    fn connected(&self) -> Connected {
        self.stream.connected()
    }
}

impl AsyncRead for Probed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.head_read < this.head.len() {
            let rest = &this.head[this.head_read..];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            this.head_read += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Probed {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.unsent_preface == 0 {
            return Pin::new(&mut this.stream).poll_write(cx, buf);
        }
        // hyper writes the preface first; it was sent already.
        let offset = PREFACE.len() - this.unsent_preface;
        let n = this.unsent_preface.min(buf.len());
        if buf[..n] != PREFACE[offset..offset + n] {
            return Poll::Ready(Err(io::Error::other(
                "the HTTP/2 client did not start with the preface",
            )));
        }
        if n == buf.len() {
            this.unsent_preface -= n;
            return Poll::Ready(Ok(n));
        }
        match Pin::new(&mut this.stream).poll_write(cx, &buf[n..]) {
            Poll::Ready(Ok(written)) => {
                this.unsent_preface -= n;
                Poll::Ready(Ok(n + written))
            }
            other => other,
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// How long an endpoint is remembered as HTTP/1-only: a redeployed task
/// may speak HTTP/2 at the same address.
const REMEMBER: Duration = Duration::from_mins(5);
/// Endpoints remembered at most; the memory starts over past it.
const MAX_REMEMBERED: usize = 4096;

/// Endpoints found to speak only HTTP/1: h2c requests to them go as
/// HTTP/1.1 from the start.
#[derive(Debug, Default)]
pub struct Http1Only {
    seen: Mutex<HashMap<SocketAddr, Instant>>,
}

impl Http1Only {
    pub fn contains(&self, addr: SocketAddr) -> bool {
        let seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        seen.get(&addr).is_some_and(|at| at.elapsed() < REMEMBER)
    }

    pub fn insert(&self, addr: SocketAddr) {
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        if seen.len() >= MAX_REMEMBERED {
            seen.clear();
        }
        seen.insert(addr, Instant::now());
    }
}

/// Whether `e` (or one of its causes) is [`NotHttp2`].
pub fn is_not_http2(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if c.is::<NotHttp2>() {
            return true;
        }
        cause = c.source();
    }
    false
}

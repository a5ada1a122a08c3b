//! One accepted connection's timers: the header-read timeout and the idle
//! timeout, kept by [`Guarded`] (the I/O wrapper under hyper), switched by
//! the count of requests in progress ([`ConnHandle`], [`ActiveGuard`]).
//!
//! - Before the first request the header-read timeout runs from accept
//!   (TLS handshake included).
//! - HTTP/1, no request in progress: once a byte of the next head has
//!   arrived, the head has the header-read timeout from that byte (a
//!   slowloris trickling bytes is cut); until then the connection may stay
//!   idle for the idle timeout.
//! - HTTP/2, no stream in progress: the idle timeout, from the later of the
//!   last stream's end and the last bytes read (a client's pings keep the
//!   connection).
//! - A request is in progress from its head's arrival until its response
//!   body is sent or dropped ([`GuardedBody`]); no timer runs meanwhile.
//!
//! A timeout fails the pending read with [`io::ErrorKind::TimedOut`];
//! hyper then closes the connection.
//!
//! **Holding a connection open** (an upgraded connection's tunnel, which
//! outlives its request): requests that can become tunnels (an `Upgrade`
//! header, or `CONNECT`) carry a [`ConnHandle`] in their extensions; take
//! `req.extensions().get::<ConnHandle>()`, call [`ConnHandle::hold`] and
//! keep the [`ActiveGuard`] for the tunnel's life: no timer closes the
//! connection while it is held.
//!
//! The timer is one `Sleep` per connection, re-armed only when it fires
//! before the deadline now in force or when a nearer one is needed (not per
//! request). Per request: a few atomics, two clock reads, and one wake of
//! the connection's task when its last request ends (hyper's HTTP/1 side
//! would not read again by itself, and the timer is armed on a read).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use http_body::{Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use super::Body;
use super::listener::Slot;
use crate::metrics::LimitCounters;

/// The two timeouts of [`Guarded`].
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    pub header_read: Duration,
    pub idle: Duration,
}

/// No request seen yet: the protocol is unknown.
const NEW: u8 = 0;
const HTTP1: u8 = 1;
const HTTP2: u8 = 2;

/// What the I/O wrapper and the requests share.
#[derive(Debug)]
struct State {
    /// Accept time: the origin of the nanosecond offsets below.
    origin: Instant,
    /// Requests (and holds) in progress.
    active: AtomicUsize,
    /// When `active` last fell to zero.
    idle_since: AtomicU64,
    /// `NEW`, `HTTP1` or `HTTP2`.
    protocol: AtomicU8,
    /// The connection's task while a request is in progress: woken when
    /// the last one ends, since hyper's HTTP/1 side does not read again
    /// by itself, and a read is where the idle timer is armed.
    reader: AtomicWaker,
}

impl State {
    fn now(&self) -> u64 {
        nanos(self.origin.elapsed())
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// A connection's shared state, as requests see it.
#[derive(Clone, Debug)]
pub struct ConnHandle(Arc<State>);

impl ConnHandle {
    /// Keeps the connection's timers off until the guard drops.
    pub fn hold(&self) -> ActiveGuard {
        self.0.active.fetch_add(1, Ordering::Relaxed);
        ActiveGuard(Arc::clone(&self.0))
    }

    /// A request head has arrived: the connection is busy until its
    /// response is done.
    pub(crate) fn request(&self, version: http::Version) -> ActiveGuard {
        if self.0.protocol.load(Ordering::Relaxed) == NEW {
            let protocol = if version == http::Version::HTTP_2 {
                HTTP2
            } else {
                HTTP1
            };
            self.0.protocol.store(protocol, Ordering::Relaxed);
        }
        self.hold()
    }
}

/// A request or tunnel in progress on a connection (see [`ConnHandle::hold`]).
#[derive(Debug)]
pub struct ActiveGuard(Arc<State>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        // The time first, so a reader that sees zero sees this idle start.
        self.0.idle_since.store(self.0.now(), Ordering::Relaxed);
        if self.0.active.fetch_sub(1, Ordering::Release) == 1 {
            self.0.reader.wake();
        }
    }
}

/// A response body that keeps its connection busy until it is sent or
/// dropped.
#[derive(Debug)]
pub struct GuardedBody {
    inner: Body,
    guard: Option<ActiveGuard>,
}

impl GuardedBody {
    pub fn new(inner: Body, guard: ActiveGuard) -> Self {
        Self {
            inner,
            guard: Some(guard),
        }
    }
}

impl http_body::Body for GuardedBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        if frame.is_none() {
            this.guard = None;
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Which timeout closed a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expiry {
    HeaderRead,
    Idle,
}

/// An accepted connection under its timers and its listener's connection
/// slot (freed on drop).
#[derive(Debug)]
pub struct Guarded<T> {
    io: T,
    state: Arc<State>,
    timeouts: Timeouts,
    counters: Arc<LimitCounters>,
    /// HTTP/1: when the first byte after the connection went idle came.
    head_started: Option<u64>,
    /// HTTP/2: when bytes last came while no stream was open.
    last_read: u64,
    sleep: Pin<Box<Sleep>>,
    timed_out: bool,
    _slot: Slot,
}

impl<T> Guarded<T> {
    /// `io` under `timeouts`, and the handle its requests share.
    pub fn new(
        io: T,
        timeouts: Timeouts,
        counters: Arc<LimitCounters>,
        slot: Slot,
    ) -> (Self, ConnHandle) {
        let origin = Instant::now();
        let state = Arc::new(State {
            origin,
            active: AtomicUsize::new(0),
            idle_since: AtomicU64::new(0),
            protocol: AtomicU8::new(NEW),
            reader: AtomicWaker::new(),
        });
        let guarded = Self {
            io,
            state: Arc::clone(&state),
            timeouts,
            counters,
            head_started: None,
            last_read: 0,
            sleep: Box::pin(tokio::time::sleep_until(origin + timeouts.header_read)),
            timed_out: false,
            _slot: slot,
        };
        (guarded, ConnHandle(state))
    }

    /// Bytes came: note when, if a timer depends on it.
    fn on_read(&mut self) {
        if self.state.active.load(Ordering::Acquire) > 0 {
            return;
        }
        match self.state.protocol.load(Ordering::Relaxed) {
            HTTP1 => {
                let idle_since = self.state.idle_since.load(Ordering::Relaxed);
                if self.head_started.is_none_or(|t| t < idle_since) {
                    self.head_started = Some(self.state.now());
                }
            }
            HTTP2 => self.last_read = self.state.now(),
            _ => {}
        }
    }

    /// Whether a request is in progress; if so, the task is woken when
    /// none is (registered before the check, so no wake is lost).
    fn busy(&self, cx: &mut Context<'_>) -> bool {
        if self.state.active.load(Ordering::Acquire) == 0 {
            return false;
        }
        self.state.reader.register(cx.waker());
        self.state.active.load(Ordering::Acquire) > 0
    }

    /// The deadline in force (nanoseconds from accept) while no request
    /// is in progress.
    fn deadline(&self) -> (u64, Expiry) {
        let idle_since = self.state.idle_since.load(Ordering::Relaxed);
        let (header_read, idle) = (nanos(self.timeouts.header_read), nanos(self.timeouts.idle));
        match self.state.protocol.load(Ordering::Relaxed) {
            HTTP1 => match self.head_started {
                Some(t) if t >= idle_since => (t.saturating_add(header_read), Expiry::HeaderRead),
                _ => (idle_since.saturating_add(idle), Expiry::Idle),
            },
            HTTP2 => (
                idle_since.max(self.last_read).saturating_add(idle),
                Expiry::Idle,
            ),
            _ => (header_read, Expiry::HeaderRead),
        }
    }

    /// The inner read is pending: pending too, or failed if the deadline
    /// in force has passed.
    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.busy(cx) {
            return Poll::Pending;
        }
        let (at, expiry) = self.deadline();
        let at = self.state.origin + Duration::from_nanos(at);
        if at < self.sleep.deadline() {
            self.sleep.as_mut().reset(at);
        }
        if self.sleep.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        if Instant::now() < at {
            // It fired for an earlier deadline than the one now in force.
            self.sleep.as_mut().reset(at);
            if self.sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
        Poll::Ready(Err(self.expire(expiry)))
    }

    fn expire(&mut self, expiry: Expiry) -> io::Error {
        if !self.timed_out {
            self.timed_out = true;
            let counter = match expiry {
                Expiry::HeaderRead => &self.counters.closed_header_read_timeout,
                Expiry::Idle => &self.counters.closed_idle_timeout,
            };
            counter.inc();
            tracing::debug!(?expiry, "closing a connection: timeout");
        }
        let what = match expiry {
            Expiry::HeaderRead => "no complete request head within the header-read timeout",
            Expiry::Idle => "idle past the idle timeout",
        };
        io::Error::new(io::ErrorKind::TimedOut, what)
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Guarded<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.io).poll_read(cx, buf) {
            Poll::Pending => self.poll_deadline(cx),
            Poll::Ready(result) => {
                if buf.filled().len() > before {
                    self.on_read();
                }
                Poll::Ready(result)
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Guarded<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

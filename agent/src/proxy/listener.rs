//! The accept loop of each proxy listener and its limits: connections per
//! listener, accept errors, request heads, HTTP/2 streams; the timers of
//! each connection are in [`super::conn`]. Every limit is counted in
//! `/metrics` (`ecsmesh_agent_listener_*`).
//!
//! - **Connections**: past `max_connections` a new connection is accepted
//!   and closed at once (so it does not wait in the backlog), counted as
//!   refused (`max_connections`). The default comes from the open-file
//!   limit (see [`default_max_connections`]).
//! - **Accept errors** (out of file descriptors, buffers, memory) pause
//!   the loop, 5 ms doubling to 1 s, instead of retrying at once: at the fd
//!   limit that used to spin a core and starve the admin port. Errors
//!   about one connection (aborted, reset) only skip it.
//! - **Request heads**: HTTP/1 heads are bounded in bytes (hyper's read
//!   buffer) and in header count; HTTP/2 header lists in bytes. Past them
//!   hyper answers 431 itself. The outgoing listener keeps
//!   [`OUTGOING_HEADER_RESERVE`] headers back for those the agents add, so
//!   what it forwards fits the next hop's limit (hyper and most servers:
//!   100).
//! - **HTTP/2**: at most `h2_max_concurrent_streams` streams per
//!   connection (advertised in SETTINGS: clients queue the rest; a stream
//!   past it is refused with `REFUSED_STREAM`); hyper's rapid-reset guard
//!   (`max_pending_accept_reset_streams`, 20) stays at its default.

use std::convert::Infallible;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::conn::{ConnHandle, Guarded, GuardedBody, Timeouts};
use super::{Proxy, Side, io as counted};
use crate::config::ListenerLimits;
use crate::metrics::LimitCounters;

/// Headers the outgoing listener keeps back from `max_request_headers`:
/// the outgoing agent adds at most 7 (`Host` from a forward-proxy URI,
/// `Via`, `l5d-dst-service`, `l5d-dst-client`, `l5d-dst-residual`,
/// `l5d-reqid`, `l5d-ctx-deadline`; `l5d-ctx-dtab` takes the place of the
/// client's `l5d-dtab`), the incoming agent 1 (its `Via`). The limits test
/// sends the worst case through both; a new header the agents add needs
/// one more here.
pub const OUTGOING_HEADER_RESERVE: usize = 8;
/// Headers the incoming listener keeps back: the `Via` it appends.
pub const INCOMING_HEADER_RESERVE: usize = 1;
/// Head bytes the incoming listener allows past `max_request_head_bytes`:
/// the sending agent's context headers on a head that was just within it.
pub const INCOMING_HEAD_HEADROOM: usize = 8 << 10;

/// Files kept back from the connection budget: the admin port, the
/// controller stream, the snapshot file, the runtime's own.
const RESERVED_FDS: u64 = 256;
/// Files per connection slot: each proxied connection can need an
/// upstream one, and there are two listeners.
const FDS_PER_CONNECTION: u64 = 4;
const MIN_DEFAULT_CONNECTIONS: usize = 16;
const MAX_DEFAULT_CONNECTIONS: usize = 20_000;
/// Where Linux caps a process's open files unless told otherwise
/// (`fs.nr_open`): the soft limit's ceiling when the hard one is infinite.
const DEFAULT_NR_OPEN: u64 = 1 << 20;

/// Raises the soft open-file limit to the hard one (the soft default,
/// often 1024, dates from select(2)); returns the soft limit now in force,
/// `None` for unlimited.
pub fn raise_nofile_limit() -> Option<u64> {
    let Rlimit { current, maximum } = getrlimit(Resource::Nofile);
    let current = current?;
    let target = maximum.unwrap_or_else(nr_open);
    if target <= current {
        return Some(current);
    }
    let raised = Rlimit {
        current: Some(target),
        maximum,
    };
    match setrlimit(Resource::Nofile, raised) {
        Ok(()) => Some(target),
        Err(e) => {
            tracing::warn!(current, target, error = %e, "could not raise the open-file limit");
            Some(current)
        }
    }
}

fn nr_open() -> u64 {
    std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(DEFAULT_NR_OPEN)
}

/// The connections per listener an open-file limit of `nofile` allows.
fn fd_budget(nofile: Option<u64>) -> usize {
    nofile.map_or(usize::MAX, |n| {
        usize::try_from(n.saturating_sub(RESERVED_FDS) / FDS_PER_CONNECTION).unwrap_or(usize::MAX)
    })
}

/// The default connections per listener: `(nofile - 256) / 4`, within 16
/// and 20000 (see [`RESERVED_FDS`], [`FDS_PER_CONNECTION`]).
pub fn default_max_connections(nofile: Option<u64>) -> usize {
    fd_budget(nofile).clamp(MIN_DEFAULT_CONNECTIONS, MAX_DEFAULT_CONNECTIONS)
}

/// The connections per listener: the configured number (with a warning
/// if the open-file limit cannot back it), else the default.
pub fn max_connections(configured: Option<usize>, nofile: Option<u64>) -> usize {
    match configured {
        Some(n) if n > fd_budget(nofile) => {
            tracing::warn!(
                max_connections = n,
                open_file_limit = nofile,
                fits = fd_budget(nofile),
                "max_connections is more than the open-file limit allows: accepts will fail at the limit"
            );
            n
        }
        Some(n) => n,
        None => default_max_connections(nofile),
    }
}

/// One listener's connection count.
#[derive(Debug)]
struct Slots {
    open: AtomicUsize,
    max: usize,
}

impl Slots {
    fn take(self: &Arc<Self>) -> Option<Slot> {
        if self.open.fetch_add(1, Ordering::Relaxed) >= self.max {
            self.open.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(Slot(Arc::clone(self)))
    }
}

/// A connection's place under `max_connections`, given back on drop.
#[derive(Debug)]
pub struct Slot(Arc<Slots>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A listener's limits as it applies them.
#[derive(Clone, Copy, Debug)]
struct Settings {
    max_connections: usize,
    timeouts: Timeouts,
    max_headers: usize,
    max_head_bytes: usize,
    h2_max_concurrent_streams: u32,
}

impl Settings {
    fn new(limits: &ListenerLimits, side: Side) -> Self {
        let (reserve, headroom) = match side {
            Side::Outgoing => (OUTGOING_HEADER_RESERVE, 0),
            Side::Incoming => (INCOMING_HEADER_RESERVE, INCOMING_HEAD_HEADROOM),
        };
        Self {
            max_connections: limits
                .max_connections
                .unwrap_or_else(|| default_max_connections(getrlimit(Resource::Nofile).current)),
            timeouts: Timeouts {
                header_read: limits.header_read_timeout,
                idle: limits.idle_timeout,
            },
            max_headers: limits.max_request_headers.saturating_sub(reserve).max(1),
            max_head_bytes: limits.max_request_head_bytes + headroom,
            h2_max_concurrent_streams: limits.h2_max_concurrent_streams,
        }
    }

    /// The connection builder under these limits.
    fn builder(&self) -> auto::Builder<TokioExecutor> {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            // One write per message, as the upstream pools do (see `Pools`).
            .writev(false)
            // Our timers, not hyper's: hyper's would also cut idle
            // keep-alive connections after the header-read timeout.
            .header_read_timeout(None)
            .max_headers(self.max_headers)
            // Bounds the read buffer, thus the head (hyper's floor: 8 KiB).
            .max_buf_size(
                self.max_head_bytes
                    .max(crate::config::MIN_REQUEST_HEAD_BYTES),
            );
        builder
            .http2()
            .max_concurrent_streams(self.h2_max_concurrent_streams)
            .max_header_list_size(u32::try_from(self.max_head_bytes).unwrap_or(u32::MAX));
        builder
    }

    /// Publishes the limits as `ecsmesh_agent_listener_limit` gauges.
    #[allow(clippy::cast_precision_loss)] // counts far below 2^52
    fn publish(&self, proxy: &Proxy, side: Side) {
        let metrics = &proxy.metrics;
        metrics.set_listener_limit(side, "max_connections", self.max_connections as f64);
        metrics.set_listener_limit(
            side,
            "header_read_timeout_seconds",
            self.timeouts.header_read.as_secs_f64(),
        );
        metrics.set_listener_limit(
            side,
            "idle_timeout_seconds",
            self.timeouts.idle.as_secs_f64(),
        );
        metrics.set_listener_limit(side, "max_request_headers", self.max_headers as f64);
        metrics.set_listener_limit(side, "max_request_head_bytes", self.max_head_bytes as f64);
        metrics.set_listener_limit(
            side,
            "h2_max_concurrent_streams",
            f64::from(self.h2_max_concurrent_streams),
        );
    }
}

/// Serves `listener` until `shutdown` turns true, then lets in-flight
/// requests finish (up to `grace`).
pub async fn serve(
    proxy: Arc<Proxy>,
    side: Side,
    listener: TcpListener,
    mut shutdown: watch::Receiver<bool>,
    grace: Duration,
) {
    let settings = Settings::new(&proxy.config.limits, side);
    settings.publish(&proxy, side);
    // Fast-path connections hold a sender each: the channel closes when
    // the last has ended.
    let (live, mut ended) = tokio::sync::mpsc::channel::<()>(1);
    let mut server = Server {
        fast: super::fast::enabled(&proxy, side).then_some(super::fast::HeadLimits {
            max_headers: settings.max_headers,
            max_head_bytes: settings.max_head_bytes,
        }),
        shutdown: shutdown.clone(),
        live: Some(live),
        builder: settings.builder(),
        graceful: GracefulShutdown::new(),
        slots: Arc::new(Slots {
            open: AtomicUsize::new(0),
            max: settings.max_connections,
        }),
        counters: Arc::clone(proxy.metrics.limits(side)),
        timeouts: settings.timeouts,
        proxy,
        side,
    };
    let mut backoff = Backoff::default();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.wait_for(|stop| *stop) => break,
        };
        match accepted {
            Ok((stream, _)) => {
                backoff.reset();
                server.connection(stream);
            }
            Err(e) => {
                let Some(pause) = backoff.failed(side, &e, &server.counters) else {
                    continue;
                };
                tokio::select! {
                    () = tokio::time::sleep(pause) => {}
                    _ = shutdown.wait_for(|stop| *stop) => break,
                }
            }
        }
    }
    drop(listener);
    server.live = None;
    let drained = async {
        tokio::join!(server.graceful.shutdown(), ended.recv());
    };
    tokio::select! {
        () = drained => {}
        () = tokio::time::sleep(grace) => tracing::warn!(side = side.as_str(), "in-flight requests cut off by the shutdown deadline"),
    }
}

/// What each accepted connection needs.
struct Server {
    /// Connections start on the HTTP/1 fast path ([`super::fast`]).
    fast: Option<super::fast::HeadLimits>,
    shutdown: watch::Receiver<bool>,
    live: Option<tokio::sync::mpsc::Sender<()>>,
    proxy: Arc<Proxy>,
    side: Side,
    builder: auto::Builder<TokioExecutor>,
    graceful: GracefulShutdown,
    slots: Arc<Slots>,
    counters: Arc<LimitCounters>,
    timeouts: Timeouts,
}

impl Server {
    /// Serves one accepted connection on its own task (closes it at once
    /// past `max_connections`).
    fn connection(&self, stream: TcpStream) {
        let Some(slot) = self.slots.take() else {
            self.counters.refused_max_connections.inc();
            return;
        };
        let _ = stream.set_nodelay(true);
        let stream = counted::Counted::new(stream, self.proxy.metrics.listener(self.side));
        let (stream, conn) = Guarded::new(stream, self.timeouts, Arc::clone(&self.counters), slot);
        if let Some(limits) = self.fast {
            let service = service(Arc::clone(&self.proxy), self.side, conn.clone());
            let (proxy, builder, watcher) = (
                Arc::clone(&self.proxy),
                self.builder.clone(),
                self.graceful.watcher(),
            );
            let (shutdown, live, side) = (self.shutdown.clone(), self.live.clone(), self.side);
            tokio::spawn(async move {
                let _live = live;
                let fast = Fast {
                    proxy: &proxy,
                    side,
                    conn: &conn,
                    limits,
                    shutdown,
                };
                match (side, &proxy.l2l_tls) {
                    // The handshake runs off the accept loop.
                    (Side::Incoming, Some(tls)) => {
                        if let Some(stream) = tls.accept(stream).await {
                            fast.serve(stream, builder, service, watcher).await;
                        }
                    }
                    _ => fast.serve(stream, builder, service, watcher).await,
                }
            });
            return;
        }
        let service = service(Arc::clone(&self.proxy), self.side, conn);
        if let (Side::Incoming, Some(tls)) = (self.side, &self.proxy.l2l_tls) {
            // The handshake runs off the accept loop.
            let (tls, builder, watcher) = (
                Arc::clone(tls),
                self.builder.clone(),
                self.graceful.watcher(),
            );
            tokio::spawn(async move {
                if let Some(stream) = tls.accept(stream).await {
                    let conn =
                        builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                    let _ = watcher.watch(conn.into_owned()).await;
                }
            });
            return;
        }
        let conn = self
            .builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let conn = self.graceful.watch(conn);
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
}

/// A connection on the fast path.
struct Fast<'a> {
    proxy: &'a Proxy,
    side: Side,
    conn: &'a ConnHandle,
    limits: super::fast::HeadLimits,
    shutdown: watch::Receiver<bool>,
}

impl Fast<'_> {
    /// Serves `io` on the fast path until a request it declines; hyper
    /// serves the rest of the connection.
    async fn serve<T, S>(
        self,
        io: T,
        builder: auto::Builder<TokioExecutor>,
        service: S,
        watcher: hyper_util::server::graceful::Watcher,
    ) where
        T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
        S: hyper::service::Service<
                http::Request<Incoming>,
                Response = http::Response<GuardedBody>,
                Error = Infallible,
            > + Clone
            + Send
            + 'static,
        S::Future: Send + 'static,
    {
        let Fast {
            proxy,
            side,
            conn,
            limits,
            shutdown,
        } = self;
        if let Some(handoff) = super::fast::serve(proxy, side, io, conn, limits, shutdown).await {
            let conn = builder
                .serve_connection_with_upgrades(TokioIo::new(handoff.io), service)
                .into_owned();
            let _ = watcher.watch(conn).await;
        }
    }
}

/// A connection's service: each request keeps the connection busy (its
/// timers off) until its response is sent.
fn service(
    proxy: Arc<Proxy>,
    side: Side,
    conn: ConnHandle,
) -> impl hyper::service::Service<
    http::Request<Incoming>,
    Response = http::Response<GuardedBody>,
    Error = Infallible,
    Future = impl Future<Output = Result<http::Response<GuardedBody>, Infallible>> + Send + 'static,
> + Clone
+ Send
+ 'static {
    hyper::service::service_fn(move |mut req: http::Request<Incoming>| {
        let guard = conn.request(req.version());
        if may_tunnel(&req) {
            req.extensions_mut().insert(conn.clone());
        }
        let proxy = Arc::clone(&proxy);
        async move {
            let resp = proxy.handle(side, req).await;
            Ok::<_, Infallible>(resp.map(|body| GuardedBody::new(body, guard)))
        }
    })
}

/// Whether a request can turn its connection into a tunnel (the only
/// ones that get a [`ConnHandle`]: an extension costs allocations).
fn may_tunnel(req: &http::Request<Incoming>) -> bool {
    req.method() == http::Method::CONNECT || req.headers().contains_key(http::header::UPGRADE)
}

pub use crate::labels::AcceptErrorKind;

const MIN_PAUSE: Duration = Duration::from_millis(5);
const MAX_PAUSE: Duration = Duration::from_secs(1);
/// At most one log line per this long while accepts keep failing.
const LOG_EVERY: Duration = Duration::from_secs(1);

/// The accept loop's pause after errors: doubling while they go on.
#[derive(Debug, Default)]
struct Backoff {
    /// The next pause; zero after a successful accept.
    next: Duration,
    last_log: Option<Instant>,
    /// Errors not logged since the last line.
    unlogged: u64,
}

impl Backoff {
    fn reset(&mut self) {
        self.next = Duration::ZERO;
    }

    /// Counts an error; returns how long to pause, if at all.
    fn failed(&mut self, side: Side, e: &io::Error, counters: &LimitCounters) -> Option<Duration> {
        let kind = AcceptErrorKind::of(e);
        counters.accept_error(kind);
        if kind == AcceptErrorKind::Connection {
            return None;
        }
        self.next = (self.next * 2).clamp(MIN_PAUSE, MAX_PAUSE);
        self.unlogged += 1;
        if self.last_log.is_none_or(|t| t.elapsed() >= LOG_EVERY) {
            tracing::warn!(
                listener = side.as_str(),
                kind = kind.as_str(),
                error = %e,
                errors = self.unlogged,
                pause = ?self.next,
                "accept failed; pausing the listener"
            );
            self.last_log = Some(Instant::now());
            self.unlogged = 0;
        }
        Some(self.next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::io::Errno;

    #[test]
    fn default_connections_follow_the_fd_limit() {
        assert_eq!(default_max_connections(Some(1024)), 192);
        assert_eq!(default_max_connections(Some(65_536)), 16_320);
        assert_eq!(default_max_connections(Some(256)), 16);
        assert_eq!(default_max_connections(Some(1 << 20)), 20_000);
        assert_eq!(default_max_connections(None), 20_000);
        // An explicit setting wins, even past the budget.
        assert_eq!(max_connections(Some(5000), Some(1024)), 5000);
        assert_eq!(max_connections(None, Some(1024)), 192);
    }

    #[test]
    fn backoff_doubles_to_a_ceiling_and_resets() {
        let counters = LimitCounters::default();
        let emfile = io::Error::from_raw_os_error(Errno::MFILE.raw_os_error());
        let mut b = Backoff::default();
        let pauses: Vec<_> = (0..10)
            .map(|_| b.failed(Side::Outgoing, &emfile, &counters))
            .collect();
        assert_eq!(pauses[0], Some(MIN_PAUSE));
        assert_eq!(pauses[1], Some(MIN_PAUSE * 2));
        assert_eq!(pauses[9], Some(MAX_PAUSE));
        b.reset();
        assert_eq!(
            b.failed(Side::Outgoing, &emfile, &counters),
            Some(MIN_PAUSE)
        );
        // One connection's failure: no pause.
        let aborted = io::Error::from_raw_os_error(Errno::CONNABORTED.raw_os_error());
        assert_eq!(b.failed(Side::Outgoing, &aborted, &counters), None);
    }

    #[test]
    fn head_limits_per_side() {
        let limits = ListenerLimits {
            max_connections: Some(10),
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_mins(1),
            h2_max_concurrent_streams: 100,
            max_request_headers: 100,
            max_request_head_bytes: 64 << 10,
        };
        let out = Settings::new(&limits, Side::Outgoing);
        let inc = Settings::new(&limits, Side::Incoming);
        assert_eq!((out.max_headers, inc.max_headers), (92, 99));
        assert_eq!(out.max_head_bytes, 64 << 10);
        assert_eq!(inc.max_head_bytes, (64 << 10) + INCOMING_HEAD_HEADROOM);
    }
}

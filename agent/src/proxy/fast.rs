//! The HTTP/1 fast path: HTTP/1.1 requests without a body, carried
//! without hyper — on the outgoing listener routed by `Host`, on the
//! incoming listener by the concrete set the sending agent chose
//! (`l5d-dst-client`, with its `l5d-dst-service` and `l5d-ctx-deadline`).
//!
//! A connection starts here (after the TLS handshake on a TLS incoming
//! port). Each request head is parsed in place with `httparse`
//! ([`super::h1`]), routed through a per-thread cache keyed by the raw
//! `Host` (or context) bytes for one routing table, and written upstream
//! as the client's header lines minus the hop-by-hop ones, plus the
//! `l5d-*` context lines rendered from the decision. The upstream
//! connection (plain, or TLS to the next agent) is driven from this
//! connection's task (no pool task, no channel) and kept in a per-thread
//! idle list between requests. The response head is
//! parsed the same way and its body relayed with its own framing.
//!
//! What the general path decides is decided the same way here: the
//! decision and its policy ([`crate::routes`]), the endpoint pick, zone
//! counting and in-flight limits ([`Proxy::select`]), retries, budget and
//! backoff ([`Proxy::may_retry`]), the policy's classifier, failure
//! accrual, the error responses ([`Failure`]), the metrics.
//!
//! The first request the fast path does not take ([`h1::Decline`]: a
//! body, an upgrade, dtab or context headers, HTTP/1.0 or HTTP/2, a head
//! past the listener's limits, a name the fast path does not route, the
//! proxy at its in-flight limit …) hands the connection, with the bytes
//! read so far, to hyper for the rest of its life. Nothing has been sent
//! anywhere for that request by then.
//!
//! Per request, once warm, nothing is allocated (`agent/tests/fast_path.rs`
//! counts): heads live in reused buffers, the route in the thread's cache
//! with its metric handles, the upstream connection in the thread's idle
//! list.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use ecsmesh_agent_balance::{Outcome, Pick};
use ecsmesh_dtab::NameTree;
use http::header::HeaderValue;
use http::{Response, StatusCode};
use http_body_util::BodyExt as _;
use std::time::Instant;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::conn::ConnHandle;
use super::h1::{self, Framing, Parsed, RequestHead};
use super::headers::{
    L5D_CTX_DEADLINE, L5D_CTX_DTAB, L5D_DST_CLIENT, L5D_DST_RESIDUAL, L5D_DST_SERVICE, L5D_REQID,
};
use super::{Body, Failure, Proxy, Sent, Side, client_name};
use crate::config::{Identifier, Mode};
use crate::metrics::{Class, ClientHandles, ServiceHandles, TimeoutKind};
use crate::policy::Policy;
use crate::routes::{Decision, Dest, RouteTable, Target, choose};

/// The downstream read buffer's first size (it grows for larger heads,
/// up to the listener's head limit).
const READ_BUFFER: usize = 4 << 10;
/// The upstream read buffer and the write buffer, each (they grow for a
/// larger response head; a body is relayed a buffer at a time). 8 KiB
/// holds a typical head and a 4 KiB body in one read.
const EXCHANGE_BUFFER: usize = 8 << 10;
/// Routes kept per thread (the whole cache is dropped past it, and with
/// every new routing table).
const MAX_ROUTES: usize = 4096;
/// The longest `Host` the route cache keeps (a DNS name and a port fit):
/// a longer one goes the general way, so 4096 cached keys stay small.
const MAX_HOST: usize = 300;
/// Idle upstream connections kept per thread.
const MAX_IDLE: usize = 256;
/// How long an idle upstream connection is kept (hyper's pool: the same).
const IDLE_TIMEOUT: Duration = Duration::from_mins(1);
/// The most a response may hold for a retry to replace it (larger ones
/// are returned as they are).
const MAX_BUFFERED_BODY: u64 = 64 << 10;
/// Buffer pairs kept per thread for the next request: as many as
/// requests in progress at once on a thread, up to this (past it, a
/// request allocates its pair).
const MAX_SPARE_BUFFERS: usize = 64;

/// Whether `side` of `proxy` starts connections on the fast path.
///
/// - outgoing: when requests are named by `Host`, and the next agent's
///   TLS name (if the hop has TLS) is fixed, as by default;
/// - incoming: requests that name their concrete set (`l5d-dst-client`, as
///   agents send them), after the TLS handshake where the port has TLS.
pub(super) fn enabled(proxy: &Proxy, side: Side) -> bool {
    let on = proxy.config.http1_fast_path;
    match side {
        Side::Outgoing => {
            let by_host = matches!(&proxy.config.identifier,
                Identifier::HeaderToken { header } if header.eq_ignore_ascii_case("host"));
            // A server name rendered per destination needs the general
            // path's per-name pools.
            let templated = proxy.config.mode == Mode::LinkerToLinker
                && proxy
                    .l2l_tls
                    .as_ref()
                    .is_some_and(|t| t.names().fixed().is_none());
            on && by_host && !templated
        }
        Side::Incoming => on,
    }
}

/// A connection the fast path gives up: hyper serves it from the bytes
/// already read (the request it declined, and whatever came after) on.
pub(super) struct Handoff<T> {
    pub io: Rewind<T>,
}

/// The listener's limits on request heads.
#[derive(Clone, Copy, Debug)]
pub(super) struct HeadLimits {
    pub max_headers: usize,
    pub max_head_bytes: usize,
}

/// Serves `io` until it closes, or returns it to be served by hyper.
pub(super) async fn serve<T>(
    proxy: &Proxy,
    side: Side,
    mut io: T,
    conn: &ConnHandle,
    limits: HeadLimits,
    mut shutdown: watch::Receiver<bool>,
) -> Option<Handoff<T>>
where
    T: AsyncRead + AsyncWrite + Unpin + Send,
{
    let mut rbuf: Vec<u8> = Vec::with_capacity(READ_BUFFER);
    loop {
        let next = {
            let mut headers = h1::headers();
            match h1::parse_request(
                &rbuf,
                &mut headers,
                limits.max_headers,
                limits.max_head_bytes,
            ) {
                Parsed::Partial => None,
                Parsed::Decline(why) => {
                    proxy.metrics.fast_path_declined(why.as_str());
                    Some(Next::Decline)
                }
                Parsed::Request(head) => {
                    let len = head.len;
                    Some(match proxy.fast_request(side, &head, &mut io, conn).await {
                        Next::Keep => Next::Consumed(len),
                        other => other,
                    })
                }
            }
        };
        match next {
            None => {}
            Some(Next::Consumed(len)) => {
                rbuf.drain(..len);
                continue;
            }
            Some(Next::Close) => return None,
            Some(Next::Decline | Next::Keep) => {
                return Some(Handoff {
                    io: Rewind::new(rbuf, io),
                });
            }
        }
        if rbuf.len() == rbuf.capacity() {
            rbuf.reserve(READ_BUFFER);
        }
        let read = tokio::select! {
            biased;
            read = io.read_buf(&mut rbuf) => read,
            // Between requests, a shutdown closes the connection.
            _ = shutdown.wait_for(|stop| *stop), if rbuf.is_empty() => return None,
        };
        if !matches!(read, Ok(1..)) {
            return None;
        }
    }
}

/// What became of a request.
enum Next {
    /// Answered; the connection goes on.
    Keep,
    /// Answered, and its head was this long.
    Consumed(usize),
    /// Answered (or not answerable); the connection closes.
    Close,
    /// Not taken: hyper serves it.
    Decline,
}

/// A route as the fast path keeps it: where requests go, their policy,
/// the context lines it renders, and the metric handles of the service and
/// of each concrete name it may pick.
struct Route {
    service: Arc<str>,
    service_header: Option<HeaderValue>,
    local_dtab_header: Option<HeaderValue>,
    policy: Arc<Policy>,
    dests: Dests,
    handles: Arc<ServiceHandles>,
    /// By the address of the destination they are for.
    clients: Vec<(usize, Arc<ClientHandles>)>,
}

/// Where a route's requests go.
enum Dests {
    /// Outgoing: the decision's tree (a union is chosen per request).
    Tree(Arc<Decision>),
    /// Incoming: the concrete set the sending agent chose.
    Chosen(Dest),
}

impl Route {
    fn tree(&self) -> Option<&NameTree<Dest>> {
        match &self.dests {
            Dests::Tree(d) => d.route.as_ref().ok(),
            Dests::Chosen(_) => None,
        }
    }
}

/// This thread's routes, for one routing table.
#[derive(Default)]
struct Routes {
    table: Option<Arc<RouteTable>>,
    /// Outgoing, by `Host`; incoming, by `l5d-dst-client` NUL
    /// `l5d-dst-service`. `None`: left to the general path.
    by_key: [RouteMap; 2],
}

type RouteMap = HashMap<Box<[u8]>, Option<Arc<Route>>>;

thread_local! {
    static ROUTES: RefCell<Routes> = RefCell::new(Routes::default());
    static IDLE: RefCell<Vec<Idle>> = const { RefCell::new(Vec::new()) };
    static SPARE: RefCell<Vec<Buffers>> = const { RefCell::new(Vec::new()) };
}

/// An upstream connection: plain, or TLS to the next agent.
enum Up {
    Plain(TcpStream),
    Tls(Box<ecsmesh_tls::ClientTlsStream<TcpStream>>),
}

impl Up {
    fn tcp(&self) -> &TcpStream {
        match self {
            Self::Plain(s) => s,
            Self::Tls(s) => s.get_ref().0,
        }
    }

    fn is_tls(&self) -> bool {
        matches!(self, Self::Tls(_))
    }
}

impl AsyncRead for Up {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tls(s) => Pin::new(&mut **s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Up {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Self::Tls(s) => Pin::new(&mut **s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_flush(cx),
            Self::Tls(s) => Pin::new(&mut **s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tls(s) => Pin::new(&mut **s).poll_shutdown(cx),
        }
    }
}

/// An upstream connection between requests.
struct Idle {
    addr: SocketAddr,
    stream: Up,
    since: Instant,
}

/// Takes an idle connection to `addr` (TLS or not) that is still open.
fn take_idle(addr: SocketAddr, tls: bool) -> Option<Up> {
    IDLE.with_borrow_mut(|idle| {
        let now = Instant::now();
        idle.retain(|c| now.duration_since(c.since) < IDLE_TIMEOUT);
        while let Some(i) = idle
            .iter()
            .rposition(|c| c.addr == addr && c.stream.is_tls() == tls)
        {
            let c = idle.swap_remove(i);
            // Closed (or sent something unasked, a TLS alert included)
            // while idle: not usable.
            if matches!(c.stream.tcp().try_read(&mut [0_u8; 1]), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
            {
                return Some(c.stream);
            }
        }
        None
    })
}

fn put_idle(addr: SocketAddr, stream: Up) {
    IDLE.with_borrow_mut(|idle| {
        if idle.capacity() == 0 {
            idle.reserve_exact(MAX_IDLE);
        }
        if idle.len() >= MAX_IDLE {
            idle.remove(0);
        }
        idle.push(Idle {
            addr,
            stream,
            since: Instant::now(),
        });
    });
}

/// The write and upstream-read buffers of one request, kept per thread
/// between requests (a connection that waits holds none).
struct Buffers {
    out: Vec<u8>,
    up: Vec<u8>,
}

impl Buffers {
    fn take() -> Self {
        SPARE.with_borrow_mut(Vec::pop).unwrap_or_else(|| Self {
            out: Vec::with_capacity(EXCHANGE_BUFFER),
            up: Vec::with_capacity(EXCHANGE_BUFFER),
        })
    }

    fn give(mut self) {
        if self.out.capacity() > 4 * EXCHANGE_BUFFER || self.up.capacity() > 4 * EXCHANGE_BUFFER {
            return;
        }
        self.out.clear();
        self.up.clear();
        SPARE.with_borrow_mut(|spare| {
            if spare.len() < MAX_SPARE_BUFFERS {
                if spare.capacity() == 0 {
                    spare.reserve_exact(MAX_SPARE_BUFFERS);
                }
                spare.push(self);
            }
        });
    }
}

/// What the attempts came to.
enum Answer {
    /// A response was relayed: its status; whether the connection can go on.
    Relayed(StatusCode, bool),
    /// A response the proxy has to write (its own error, or one kept for
    /// a retry that did not happen).
    Made(Response<Body>),
}

/// A response head read from upstream, already rendered for the client.
struct Exchanged {
    code: u16,
    /// Where the body starts in the upstream buffer.
    head_len: usize,
    framing: Framing,
    /// What the client is sent: the upstream's framing, or chunks.
    relay: Framing,
    /// The upstream connection cannot be used again.
    close: bool,
}

impl Proxy {
    /// One request on the fast path.
    async fn fast_request<T>(
        &self,
        side: Side,
        head: &RequestHead<'_, '_>,
        io: &mut T,
        conn: &ConnHandle,
    ) -> Next
    where
        T: AsyncWrite + Unpin + Send,
    {
        let started = Instant::now();
        let clear = self.config.clear_context;
        let decline = |reason| {
            self.metrics.fast_path_declined(reason);
            Next::Decline
        };
        if head.via_depth >= self.config.max_call_depth {
            return decline("call_depth");
        }
        let clear = clear && side == Side::Outgoing;
        // The outgoing side reads no context from the application (and
        // clears its request id where told to); the incoming side routes
        // by the sending agent's choice.
        let context = &head.context;
        let bad_context = match side {
            Side::Outgoing => context.any() || (clear && head.has_request_id),
            Side::Incoming => context.other || context.dst_client.is_none(),
        };
        if bad_context {
            return decline("context");
        }
        let own = match context.deadline {
            Some(v) => match super::headers::deadline_value_remaining(v) {
                Some(left) if !left.is_zero() => Some(left),
                _ => return decline("context"),
            },
            None => None,
        };
        let table = self.routes.load();
        let Some(route) = self.fast_route(side, &table, head) else {
            return decline("route");
        };
        drop(table);
        // At the in-flight limit, the general path answers (503).
        let Ok(_permit) = self.in_flight.try_acquire() else {
            return decline("in_flight");
        };
        self.metrics.fast_path_requests.inc();
        let _active = conn.request(http::Version::HTTP_11);
        let mut bufs = Buffers::take();
        let answer = self
            .fast_attempts(side, head, &route, own, &mut bufs, io)
            .await;
        let (status, keep) = match answer {
            Answer::Relayed(status, keep) => (status, keep && !head.close),
            Answer::Made(resp) => {
                let resp = Self::finish(resp, http::Version::HTTP_11, false, clear);
                let status = resp.status();
                let head_request = head.method == "HEAD";
                let written = write_made(resp, head.close, head_request, &mut bufs.out, io).await;
                (status, written && !head.close)
            }
        };
        bufs.give();
        route.handles.record(status, started.elapsed());
        if keep { Next::Keep } else { Next::Close }
    }

    /// The thread's route for the request under `table`, filled on a
    /// miss; `None` where the general path must decide (no name, an
    /// error, a fixed address, a set not published).
    fn fast_route(
        &self,
        side: Side,
        table: &Arc<RouteTable>,
        head: &RequestHead<'_, '_>,
    ) -> Option<Arc<Route>> {
        ROUTES.with_borrow_mut(|routes| {
            if !routes.table.as_ref().is_some_and(|t| Arc::ptr_eq(t, table)) {
                routes.by_key.iter_mut().for_each(HashMap::clear);
                routes.table = Some(Arc::clone(table));
            }
            let by_key = &mut routes.by_key[usize::from(side == Side::Incoming)];
            let (client, service) = (
                head.context.dst_client.unwrap_or_default(),
                head.context.dst_service.unwrap_or_default(),
            );
            // Incoming keys are the client, NUL, the service: built on the
            // stack for the lookup.
            let mut stack = [0_u8; 512];
            let key: &[u8] = match side {
                Side::Outgoing if head.host.len() > MAX_HOST => return None,
                Side::Outgoing => head.host,
                Side::Incoming => {
                    let len = client.len() + 1 + service.len();
                    let key = stack.get_mut(..len)?;
                    key[..client.len()].copy_from_slice(client);
                    key[client.len() + 1..].copy_from_slice(service);
                    key
                }
            };
            if let Some(route) = by_key.get(key) {
                return route.clone();
            }
            if by_key.len() >= MAX_ROUTES {
                by_key.clear();
            }
            let route = match side {
                Side::Outgoing => self.outgoing_route(table, head.host),
                Side::Incoming => self.incoming_route(table, client, head.context.dst_service),
            }
            .map(Arc::new);
            by_key.insert(key.into(), route.clone());
            route
        })
    }

    fn outgoing_route(&self, table: &RouteTable, host: &[u8]) -> Option<Route> {
        if host.contains(&b'@') {
            return None;
        }
        let name = super::identify::token_name(host)?;
        let decision = table.decide(&name, None, None, &self.routes.settings);
        let mut leaves = Vec::new();
        if !sets_only(decision.route.as_ref().ok()?, &mut leaves) {
            return None;
        }
        let clients = leaves
            .into_iter()
            .map(|d| {
                let addr = std::ptr::from_ref(d) as usize;
                (addr, self.metrics.client_handles(client_name(d)))
            })
            .collect();
        Some(Route {
            service: Arc::clone(&decision.service),
            service_header: decision.service_header.clone(),
            local_dtab_header: decision.local_dtab_header.clone(),
            policy: Arc::clone(&decision.policy),
            handles: self
                .metrics
                .service_handles(Side::Outgoing, &decision.service),
            clients,
            dests: Dests::Tree(decision),
        })
    }

    fn incoming_route(
        &self,
        table: &RouteTable,
        client: &[u8],
        service: Option<&[u8]>,
    ) -> Option<Route> {
        let (name, dest, policy) =
            super::incoming_route(table, client, service, &self.routes.settings)?;
        let service: Arc<str> = Arc::from(name.to_string());
        Some(Route {
            service_header: HeaderValue::from_str(&service).ok(),
            local_dtab_header: None,
            policy,
            handles: self.metrics.service_handles(Side::Incoming, &service),
            clients: Vec::new(),
            service,
            dests: Dests::Chosen(dest),
        })
    }

    /// The attempt loop of [`Proxy::attempts`], on the fast path.
    #[allow(clippy::too_many_lines)]
    async fn fast_attempts<T>(
        &self,
        side: Side,
        head: &RequestHead<'_, '_>,
        route: &Route,
        own: Option<Duration>,
        bufs: &mut Buffers,
        io: &mut T,
    ) -> Answer
    where
        T: AsyncWrite + Unpin + Send,
    {
        let policy = &*route.policy;
        let service = &*route.service;
        let (remaining, bound) = super::limit_of(own, policy);
        let deadline = Instant::now() + remaining;
        let ctx_dtab = head
            .context
            .ctx_dtab
            .and_then(|d| std::str::from_utf8(d).ok());
        let request_id = (!head.has_request_id).then(super::headers::request_id_bytes);
        policy.budget.deposit();
        let mut tried: Vec<SocketAddr> = Vec::new();
        let mut last: Option<Response<Body>> = None;
        let mut retries = 0;
        loop {
            let dest = match (&route.dests, route.tree().map(choose)) {
                (Dests::Chosen(dest), _) | (_, Some(Ok(dest))) => dest,
                (_, Some(Err(e))) if last.is_none() => {
                    let table = self.routes.load();
                    let msg = Self::unable_to_route(service, &table, None, &e);
                    self.metrics.failure(service, None, Class::NoHosts);
                    return Answer::Made(super::error_response(StatusCode::BAD_GATEWAY, &msg));
                }
                _ => break,
            };
            let (addr, connect_to, pick) = match self.select(side, dest, &tried).await {
                Ok(Some(chosen)) => chosen,
                Ok(None) if last.is_none() => {
                    return Answer::Made(
                        self.no_endpoint(side, dest, &tried, service, policy, ctx_dtab),
                    );
                }
                Ok(None) | Err(_) => break,
            };
            let now = Instant::now();
            let left = deadline.saturating_duration_since(now);
            if left.is_zero() {
                self.metrics.failure(service, None, Class::Timeout);
                self.metrics.timeout(service, bound);
                return Answer::Made(super::timed_out(service, remaining));
            }
            render_request(head, route, dest, request_id.as_ref(), left, &mut bufs.out);
            let client = client_name(dest);
            let sent = Sent {
                dest,
                addr,
                connect_to,
                service,
            };
            let attempt_limit = left.min(policy.attempt_timeout);
            let exchanged = tokio::time::timeout(
                attempt_limit,
                self.exchange(
                    connect_to,
                    connect_to != addr,
                    head,
                    bufs,
                    self.config.clear_context && side == Side::Outgoing,
                ),
            )
            .await;
            let failure = match exchanged {
                Ok(Ok((up, ex))) => {
                    let status = StatusCode::from_u16(ex.code).unwrap_or(StatusCode::BAD_GATEWAY);
                    let handles = route
                        .clients
                        .iter()
                        .find(|(at, _)| *at == std::ptr::from_ref(dest) as usize);
                    match handles {
                        Some((_, h)) => h.record(status, now.elapsed()),
                        None => self.metrics.attempt(client, status, now.elapsed()),
                    }
                    match policy.classifier.classify(head.method, Some(ex.code)) {
                        Outcome::Success => {
                            if let Some(p) = pick {
                                p.success();
                            }
                        }
                        Outcome::Failure { retryable } => {
                            fail(pick);
                            self.metrics
                                .failure(service, Some(client), Class::Status5xx);
                            let bufferable = match ex.framing {
                                Framing::Empty | Framing::Chunked => true,
                                Framing::Length(n) => n <= MAX_BUFFERED_BODY,
                                Framing::Close => false,
                            };
                            if retryable && bufferable {
                                tried.push(addr);
                                // Kept whole, so that it can be returned
                                // if no retry happens after all.
                                let Some(resp) = buffered(up, connect_to, &ex, bufs).await else {
                                    let failure =
                                        Failure::Reset("reading the response body".into());
                                    return Answer::Made(failure.response(&sent, attempt_limit));
                                };
                                if !self
                                    .may_retry(policy, service, &mut retries, deadline)
                                    .await
                                {
                                    return Answer::Made(resp);
                                }
                                last = Some(resp);
                                continue;
                            }
                        }
                    }
                    let keep = relay(up, connect_to, &ex, bufs, io).await;
                    return Answer::Relayed(status, keep);
                }
                Ok(Err(failure)) => failure,
                Err(_) => {
                    let kind = if policy.attempt_timeout < left {
                        TimeoutKind::Attempt
                    } else {
                        bound
                    };
                    self.metrics.timeout(service, kind);
                    Failure::Timeout
                }
            };
            fail(pick);
            self.metrics.failure(service, Some(client), failure.class());
            let resp = failure.response(&sent, attempt_limit);
            let retry = failure.never_sent()
                || policy.classifier.classify(head.method, None).is_retryable();
            if !retry {
                return Answer::Made(resp);
            }
            last = Some(resp);
            tried.push(addr);
            if !self
                .may_retry(policy, service, &mut retries, deadline)
                .await
            {
                break;
            }
        }
        Answer::Made(last.unwrap_or_else(|| {
            super::error_response(
                StatusCode::BAD_GATEWAY,
                &format!("No hosts are available for {service}"),
            )
        }))
    }

    /// Sends the rendered request (`bufs.out`) to `addr` (another agent's
    /// incoming port if `to_agent`, over the hop's TLS if it has it) and reads the
    /// response head into `bufs.up`; renders the client's head into
    /// `bufs.out`. A kept connection that turns out closed before any
    /// answer is replaced once for an idempotent request, as hyper's pool
    /// does.
    async fn exchange(
        &self,
        addr: SocketAddr,
        to_agent: bool,
        head: &RequestHead<'_, '_>,
        bufs: &mut Buffers,
        clear: bool,
    ) -> Result<(Up, Exchanged), Failure> {
        let tls = self.tls_to(to_agent);
        let mut kept = take_idle(addr, tls.is_some());
        loop {
            let reused = kept.is_some();
            let mut up = match kept.take() {
                Some(up) => up,
                None => self.connect(addr, tls).await?,
            };
            match read_head(&mut up, head, bufs, clear).await {
                Ok(ex) => return Ok((up, ex)),
                Err((failure, answered)) => {
                    if reused && !answered && idempotent(head.method) {
                        continue;
                    }
                    return Err(failure);
                }
            }
        }
    }

    /// The TLS a connection needs: the linker-to-linker hop's, with its
    /// fixed server name, when it goes to another agent.
    fn tls_to(
        &self,
        to_agent: bool,
    ) -> Option<(&crate::tls::L2lTls, &ecsmesh_tls::ServerName<'static>)> {
        let tls = self.l2l_tls.as_deref().filter(|_| to_agent)?;
        tls.names().fixed().map(|name| (tls, name))
    }

    async fn connect(
        &self,
        addr: SocketAddr,
        tls: Option<(&crate::tls::L2lTls, &ecsmesh_tls::ServerName<'static>)>,
    ) -> Result<Up, Failure> {
        let timeout = self.config.connect_timeout;
        let tcp = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                stream
            }
            Ok(Err(e)) => return Err(Failure::Connect(format!("tcp connect error: {e}"))),
            Err(_) => {
                return Err(Failure::Connect(format!(
                    "tcp connect error: timed out after {timeout:?}"
                )));
            }
        };
        let Some((tls, name)) = tls else {
            return Ok(Up::Plain(tcp));
        };
        match tokio::time::timeout(timeout, tls.client().connect(name.clone(), tcp)).await {
            Ok(Ok(stream)) => Ok(Up::Tls(Box::new(stream))),
            Ok(Err(e)) => {
                let name = name.to_str();
                if e.failure.is_certificate_problem() {
                    tracing::warn!(server = %addr, %name, reason = e.failure.as_str(), "TLS handshake refused: {}", e.message);
                } else {
                    tracing::debug!(server = %addr, %name, reason = e.failure.as_str(), "TLS handshake failed: {}", e.message);
                }
                Err(Failure::Tls(e.to_string()))
            }
            Err(_) => Err(Failure::Tls(format!(
                "the TLS handshake timed out after {timeout:?}"
            ))),
        }
    }
}

/// Whether every leaf of `tree` is a published set (collected in `out`);
/// fixed addresses need the general path's checks.
fn sets_only<'a>(tree: &'a NameTree<Dest>, out: &mut Vec<&'a Dest>) -> bool {
    match tree {
        NameTree::Leaf(d) => {
            out.push(d);
            matches!(d.target, Target::Set { .. })
        }
        NameTree::Union(branches) => branches.iter().all(|b| sets_only(&b.tree, out)),
        NameTree::Alt(trees) => trees.iter().all(|t| sets_only(t, out)),
        NameTree::Neg | NameTree::Fail | NameTree::Empty => true,
    }
}

fn fail(pick: Option<Pick>) {
    if let Some(p) = pick {
        p.failure();
    }
}

fn idempotent(method: &str) -> bool {
    matches!(
        method,
        "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE"
    )
}

fn line(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// The upstream request: the client's line and header lines but the
/// hop-by-hop ones, then `Via` and the context lines.
fn render_request(
    head: &RequestHead<'_, '_>,
    route: &Route,
    dest: &Dest,
    request_id: Option<&[u8; 16]>,
    left: Duration,
    out: &mut Vec<u8>,
) {
    out.clear();
    out.extend_from_slice(head.method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(head.path);
    out.extend_from_slice(b" HTTP/1.1\r\n");
    if let Some(authority) = head.authority {
        line(out, "host", authority);
    }
    for h in head.headers {
        if head.forwards(h.name) {
            line(out, h.name, h.value);
        }
    }
    line(out, "via", b"1.1 ecsmesh");
    if let Some(v) = &route.service_header {
        line(out, L5D_DST_SERVICE, v.as_bytes());
    }
    if let Some(id) = request_id {
        line(out, L5D_REQID, id);
    }
    if let Some(v) = &route.local_dtab_header {
        line(out, L5D_CTX_DTAB, v.as_bytes());
    }
    if let Some(v) = &dest.id_header {
        line(out, L5D_DST_CLIENT, v.as_bytes());
    }
    if let Some(v) = &dest.residual_header {
        line(out, L5D_DST_RESIDUAL, v.as_bytes());
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    out.extend_from_slice(L5D_CTX_DEADLINE.as_bytes());
    // Writing to a Vec cannot fail.
    let _ = write!(out, ": {now} {}\r\n\r\n", now + left.as_nanos());
}

/// Writes the request in `bufs.out` and reads the response head (past
/// any 1xx) into `bufs.up`, then renders the client's head into
/// `bufs.out`. On failure: whether any answer had come.
async fn read_head(
    up: &mut Up,
    req: &RequestHead<'_, '_>,
    bufs: &mut Buffers,
    clear: bool,
) -> Result<Exchanged, (Failure, bool)> {
    if let Err(e) = up.write_all(&bufs.out).await {
        return Err((Failure::Reset(format!("sending the request: {e}")), false));
    }
    bufs.up.clear();
    let head_request = req.method == "HEAD";
    loop {
        let mut headers = h1::headers();
        match h1::parse_response(&bufs.up, &mut headers, head_request) {
            Ok(None) => {}
            Err(e) => return Err((Failure::Protocol(e.to_string()), true)),
            Ok(Some(h)) if h.code == 101 => {
                return Err((
                    Failure::Protocol(
                        "101 Switching Protocols to a request that asked for no upgrade".into(),
                    ),
                    true,
                ));
            }
            Ok(Some(h)) if h.code < 200 => {
                // Interim responses are not passed on (as hyper's client).
                let len = h.len;
                bufs.up.drain(..len);
                continue;
            }
            Ok(Some(h)) => return Ok(render_response(&h, req.close, clear, &mut bufs.out)),
        }
        if bufs.up.len() == bufs.up.capacity() {
            bufs.up.reserve(EXCHANGE_BUFFER);
        }
        match up.read_buf(&mut bufs.up).await {
            Ok(0) => {
                let answered = !bufs.up.is_empty();
                return Err((
                    Failure::Reset("connection closed before message completed".into()),
                    answered,
                ));
            }
            Ok(_) => {}
            Err(e) => {
                let answered = !bufs.up.is_empty();
                return Err((
                    Failure::Reset(format!("reading the response: {e}")),
                    answered,
                ));
            }
        }
    }
}

/// The client's response head: the upstream's status line and header
/// lines but the hop-by-hop ones (and, where the context is cleared, the
/// `l5d-*` ones), then `Via`; a body that only the connection's end
/// delimits is sent in chunks.
fn render_response(
    h: &h1::ResponseHead<'_, '_>,
    close: bool,
    clear: bool,
    out: &mut Vec<u8>,
) -> Exchanged {
    out.clear();
    let _ = write!(out, "HTTP/1.1 {} ", h.code);
    out.extend_from_slice(h.reason.as_bytes());
    out.extend_from_slice(b"\r\n");
    // An error the next agent made loses its body with its context.
    let hide_error = clear
        && h.headers
            .iter()
            .any(|x| x.name.eq_ignore_ascii_case(super::headers::L5D_ERR));
    let options = h
        .headers
        .iter()
        .any(|x| x.name.eq_ignore_ascii_case("connection"));
    // Headers the upstream's `Connection` names are hop-by-hop too.
    let named = |name: &str| {
        options
            && h.headers.iter().any(|x| {
                x.name.eq_ignore_ascii_case("connection")
                    && x.value
                        .split(|b| *b == b',')
                        .any(|o| o.trim_ascii().eq_ignore_ascii_case(name.as_bytes()))
            })
    };
    for x in h.headers {
        let l5d = x.name.len() > 4 && x.name[..4].eq_ignore_ascii_case("l5d-");
        let length = x.name.eq_ignore_ascii_case("content-length");
        if h1::hop_by_hop(x.name) || (clear && l5d) || (hide_error && length) || named(x.name) {
            continue;
        }
        line(out, x.name, x.value);
    }
    line(out, "via", b"1.1 ecsmesh");
    let relay = match h.framing {
        _ if hide_error => {
            line(out, "content-length", b"0");
            Framing::Empty
        }
        Framing::Chunked | Framing::Close => {
            line(out, "transfer-encoding", b"chunked");
            h.framing
        }
        other => other,
    };
    if close {
        line(out, "connection", b"close");
    }
    out.extend_from_slice(b"\r\n");
    Exchanged {
        code: h.code,
        head_len: h.len,
        framing: h.framing,
        relay,
        close: h.close || hide_error,
    }
}

/// Sends the client the rendered head and relays the body; the upstream
/// connection goes back to the idle list if it ended cleanly. Returns
/// whether the client's connection can go on.
async fn relay<T>(
    mut up: Up,
    addr: SocketAddr,
    ex: &Exchanged,
    bufs: &mut Buffers,
    io: &mut T,
) -> bool
where
    T: AsyncWrite + Unpin + Send,
{
    let Buffers { out, up: ubuf } = bufs;
    let body = &ubuf[ex.head_len..];
    let done = match (ex.framing, ex.relay) {
        (_, Framing::Empty) => {
            // A body the client does not get (hidden error) ends the
            // upstream connection instead of being read.
            if io.write_all(out).await.is_err() {
                return false;
            }
            let clean = ex.framing == Framing::Empty && body.is_empty();
            if clean && !ex.close {
                put_idle(addr, up);
            }
            return true;
        }
        (Framing::Length(n), _) => {
            let first = body.len().min(usize::try_from(n).unwrap_or(usize::MAX));
            out.extend_from_slice(&body[..first]);
            let extra = body.len() > first;
            if io.write_all(out).await.is_err() {
                return false;
            }
            let mut left = n - first as u64;
            while left > 0 {
                ubuf.clear();
                match up.read_buf(ubuf).await {
                    Ok(1..) => {}
                    _ => return false,
                }
                let take = ubuf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                if io.write_all(&ubuf[..take]).await.is_err() {
                    return false;
                }
                left -= take as u64;
                if ubuf.len() > take {
                    // Bytes past the body: the connection is not reusable.
                    return true;
                }
            }
            !extra
        }
        (Framing::Chunked, _) => {
            let mut chunked = h1::Chunked::default();
            let Ok(n) = chunked.scan(body) else {
                return false;
            };
            out.extend_from_slice(&body[..n]);
            let extra = n < body.len();
            if io.write_all(out).await.is_err() {
                return false;
            }
            while !chunked.is_done() {
                ubuf.clear();
                match up.read_buf(ubuf).await {
                    Ok(1..) => {}
                    _ => return false,
                }
                let Ok(n) = chunked.scan(ubuf) else {
                    return false;
                };
                if io.write_all(&ubuf[..n]).await.is_err() {
                    return false;
                }
                if n < ubuf.len() {
                    return true;
                }
            }
            !extra
        }
        (Framing::Close | Framing::Empty, _) => {
            // Until the upstream closes: sent on in chunks.
            let first = body.to_vec();
            if io.write_all(out).await.is_err() {
                return false;
            }
            if !first.is_empty() && !write_chunk(io, &first).await {
                return false;
            }
            loop {
                ubuf.clear();
                match up.read_buf(ubuf).await {
                    Ok(0) => break,
                    Ok(_) => {
                        if !write_chunk(io, ubuf).await {
                            return false;
                        }
                    }
                    Err(_) => return false,
                }
            }
            return io.write_all(b"0\r\n\r\n").await.is_ok();
        }
    };
    if done && !ex.close {
        put_idle(addr, up);
    }
    // Whether the body reached the client whole: it did if we got here.
    true
}

async fn write_chunk<T: AsyncWrite + Unpin>(io: &mut T, data: &[u8]) -> bool {
    let mut size = [0_u8; 20];
    let mut w = &mut size[..];
    let _ = write!(w, "{:x}\r\n", data.len());
    let len = 20 - w.len();
    io.write_all(&size[..len]).await.is_ok()
        && io.write_all(data).await.is_ok()
        && io.write_all(b"\r\n").await.is_ok()
}

/// Reads the whole (small) body of a response that may be retried, and
/// keeps the response; the connection goes back to the idle list.
async fn buffered(
    mut up: Up,
    addr: SocketAddr,
    ex: &Exchanged,
    bufs: &mut Buffers,
) -> Option<Response<Body>> {
    let ubuf = &mut bufs.up;
    let body_end = loop {
        let body = &ubuf[ex.head_len..];
        match ex.framing {
            Framing::Empty => break ex.head_len,
            Framing::Length(n) if body.len() as u64 >= n => {
                break ex.head_len + usize::try_from(n).ok()?;
            }
            Framing::Chunked => {
                let mut c = h1::Chunked::default();
                let n = c.scan(body).ok()?;
                if c.is_done() {
                    break ex.head_len + n;
                }
            }
            _ => {}
        }
        if body.len() as u64 > MAX_BUFFERED_BODY {
            return None;
        }
        if ubuf.len() == ubuf.capacity() {
            ubuf.reserve(EXCHANGE_BUFFER);
        }
        if !matches!(up.read_buf(ubuf).await, Ok(1..)) {
            return None;
        }
    };
    if body_end == ubuf.len() && !ex.close {
        put_idle(addr, up);
    }
    ubuf.truncate(body_end);
    to_response(ubuf, ex)
}

/// A response read whole (head and body in `buf`) as a [`Response`].
fn to_response(buf: &[u8], ex: &Exchanged) -> Option<Response<Body>> {
    let mut headers = h1::headers();
    let mut parsed = httparse::Response::new(&mut headers);
    parsed.parse(buf).ok()?;
    let mut resp = Response::builder().status(ex.code);
    for h in parsed.headers.iter() {
        if !h1::hop_by_hop(h.name) {
            resp = resp.header(h.name, h.value);
        }
    }
    let body = buf.get(ex.head_len..).unwrap_or_default();
    let body = if ex.framing == Framing::Chunked {
        dechunk(body)?
    } else {
        Bytes::copy_from_slice(body)
    };
    resp.body(super::headers::full(body)).ok()
}

/// A whole chunked body's data.
fn dechunk(mut body: &[u8]) -> Option<Bytes> {
    let mut data = Vec::new();
    loop {
        let end = body.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&body[..end]).ok()?;
        let size_text = size_text.split(';').next()?.trim();
        let size = usize::from_str_radix(size_text, 16).ok()?;
        body = &body[end + 2..];
        if size == 0 {
            return Some(Bytes::from(data));
        }
        data.extend_from_slice(body.get(..size)?);
        body = body.get(size + 2..)?;
    }
}

/// Writes a response the proxy made (or kept), without its body to a
/// HEAD request; whether it was written.
async fn write_made<T>(
    resp: Response<Body>,
    close: bool,
    head_request: bool,
    out: &mut Vec<u8>,
    io: &mut T,
) -> bool
where
    T: AsyncWrite + Unpin + Send,
{
    let (parts, body) = resp.into_parts();
    let Ok(body) = body
        .collect()
        .await
        .map(http_body_util::Collected::to_bytes)
    else {
        return false;
    };
    out.clear();
    let _ = write!(
        out,
        "HTTP/1.1 {} {}\r\n",
        parts.status.as_u16(),
        parts.status.canonical_reason().unwrap_or("")
    );
    for (name, value) in &parts.headers {
        if name != http::header::CONTENT_LENGTH {
            line(out, name.as_str(), value.as_bytes());
        }
    }
    let _ = write!(out, "content-length: {}\r\n", body.len());
    if close {
        line(out, "connection", b"close");
    }
    out.extend_from_slice(b"\r\n");
    if !head_request {
        out.extend_from_slice(&body);
    }
    io.write_all(out).await.is_ok()
}

/// A connection's first bytes, read before hyper took it over, then the
/// connection itself.
pub(super) struct Rewind<T> {
    prefix: Vec<u8>,
    at: usize,
    io: T,
}

impl<T> Rewind<T> {
    fn new(prefix: Vec<u8>, io: T) -> Self {
        Self { prefix, at: 0, io }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Rewind<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.at < this.prefix.len() {
            let n = (this.prefix.len() - this.at).min(buf.remaining());
            buf.put_slice(&this.prefix[this.at..this.at + n]);
            this.at += n;
            if this.at == this.prefix.len() {
                this.prefix = Vec::new();
                this.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Rewind<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

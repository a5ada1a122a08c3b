//! The proxy: the outgoing listener (applications' `http_proxy`) and the
//! incoming one (the linker-to-linker hop). HTTP/1.1 and HTTP/2 with prior
//! knowledge (h2c, so gRPC works) on both.
//!
//! Per request: identify → read the dtab headers → the routing decision
//! (cached per logical name and local dtab, with the service's traffic
//! policy) → pick a union branch, then an endpoint (the policy's balancer,
//! failure accrual, in-flight limit) → forward, retrying what the policy's
//! classifier allows on another endpoint within its attempts, its retry
//! budget and the request's deadline, after its backoff.
//!
//! In linker-to-linker mode the outgoing side sends the request to the
//! agent on the chosen endpoint's host, naming the chosen concrete set in
//! `l5d-dst-client`; the incoming side then balances over that set's
//! endpoints on its own host. A weighted split is thus decided once, by the
//! first agent.

pub mod body;
pub mod conn;
mod fast;
pub mod h1;
pub mod h2probe;
pub mod headers;
pub mod identify;
pub mod io;
pub mod listener;
pub mod upstream;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ecsmesh_agent_balance::Outcome;
use ecsmesh_dtab::Path;
use ecsmesh_state::names;
use http::header::HeaderValue;
use http::{Request, Response, StatusCode, Uri};
use http_body_util::BodyExt;
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::{Config, Mode};
use crate::metrics::{Class, Metrics, TimeoutKind};
use crate::policy::Policy;
use crate::routes::{Dest, RouteError, RouteTable, Routes, Target, choose};
use body::{BodyState, RequestBody};
use headers::{
    L5D_CTX_DEADLINE, L5D_CTX_DTAB, L5D_DST_CLIENT, L5D_DST_RESIDUAL, L5D_DST_SERVICE, L5D_DTAB,
    L5D_REQID, error_response,
};
use upstream::{Hop, Upstream};

pub use crate::labels::Side;

/// Every body the proxy sends or receives, boxed.
pub type Body = BoxBody<Bytes, hyper::Error>;

/// What one attempt came to.
enum Attempt {
    /// The answer to return (a success, or a failure not to retry).
    Done(Response<Body>),
    /// A failure another endpoint may fix; returned if no retry is left.
    Retry(Response<Body>),
    /// The endpoint speaks only HTTP/1 and the request never left: send
    /// it again as HTTP/1.1 (the response is returned if that cannot be).
    Downgrade(Response<Body>),
}

/// Where an attempt went, for its messages.
#[derive(Clone, Copy)]
struct Sent<'a> {
    dest: &'a Dest,
    addr: SocketAddr,
    connect_to: SocketAddr,
    service: &'a str,
}

/// The request's time and the policy it is held to.
#[derive(Clone, Copy)]
struct Limit<'a> {
    remaining: Duration,
    /// What set `remaining`: the policy's total timeout or the request's
    /// own deadline.
    bound: TimeoutKind,
    policy: &'a Policy,
}

/// The request's time: its own deadline (`l5d-ctx-deadline`,
/// `grpc-timeout`) where that is tighter than its policy's total timeout,
/// which it never loosens; and which of the two it is.
fn time_limit(headers: &http::HeaderMap, policy: &Policy) -> (Duration, TimeoutKind) {
    let own = [
        headers::deadline_remaining(headers),
        headers::grpc_timeout(headers),
    ]
    .into_iter()
    .flatten()
    .min();
    limit_of(own, policy)
}

/// The request's time from its own deadline, if any, and its policy.
fn limit_of(own: Option<Duration>, policy: &Policy) -> (Duration, TimeoutKind) {
    match own {
        Some(own) if own < policy.total_timeout => (own, TimeoutKind::Deadline),
        _ => (policy.total_timeout, TimeoutKind::Total),
    }
}

/// Whether a pick found nothing only because every endpoint it could use
/// is at its in-flight limit.
fn at_capacity(target: &Target, side: Side, tried: &[SocketAddr]) -> bool {
    match target {
        Target::Set {
            all,
            local,
            draining,
            ..
        } => {
            if side == Side::Incoming {
                local.at_capacity(tried)
            } else {
                all.at_capacity(tried) || draining.at_capacity(tried)
            }
        }
        Target::Inet { .. } => false,
    }
}

/// The 503 of a request whose whole time ran out.
fn timed_out(service: &str, remaining: Duration) -> Response<Body> {
    let mut resp = error_response(
        StatusCode::SERVICE_UNAVAILABLE,
        &format!("request to {service} timed out after {remaining:?}"),
    );
    resp.extensions_mut().insert(DeadlineExceeded);
    resp
}

/// Marks a response the proxy made because the request's deadline passed
/// (a gRPC client then reads `DEADLINE_EXCEEDED`).
#[derive(Clone, Copy, Debug)]
struct DeadlineExceeded;

/// How an attempt failed, by what happened: each is named in `l5d-err`,
/// the response body and the failure metrics.
#[derive(Debug)]
enum Failure {
    /// No connection: refused, unreachable, or the connect timed out.
    Connect(String),
    /// The TLS handshake with the next agent failed.
    Tls(String),
    /// The endpoint answered the HTTP/2 preface with something else.
    NotHttp2(String),
    /// The connection closed or was reset after the request was sent.
    Reset(String),
    /// The endpoint's answer was not valid HTTP.
    Protocol(String),
    /// The attempt's time ran out.
    Timeout,
}

impl Failure {
    fn of(e: &(dyn std::error::Error + 'static)) -> Self {
        let text = error_chain(e);
        if h2probe::is_not_http2(e) {
            return Self::NotHttp2(text);
        }
        let connect = e
            .downcast_ref::<hyper_util::client::legacy::Error>()
            .is_some_and(hyper_util::client::legacy::Error::is_connect);
        let mut cause = Some(e);
        let mut hyper_error = None;
        while let Some(c) = cause {
            if c.is::<ecsmesh_tls::HandshakeError>() {
                return Self::Tls(text);
            }
            if hyper_error.is_none() {
                hyper_error = c.downcast_ref::<hyper::Error>();
            }
            cause = c.source();
        }
        if connect {
            return Self::Connect(text);
        }
        match hyper_error {
            Some(h) if h.is_timeout() => Self::Timeout,
            Some(h) if h.is_parse() || h.is_parse_status() => Self::Protocol(text),
            // h2 names a peer's protocol violation in its reason.
            _ if ["protocol error", "invalid size", "compression"]
                .iter()
                .any(|s| text.contains(s)) =>
            {
                Self::Protocol(text)
            }
            _ => Self::Reset(text),
        }
    }

    /// Whether the request provably never reached the endpoint.
    fn never_sent(&self) -> bool {
        matches!(self, Self::Connect(_) | Self::Tls(_) | Self::NotHttp2(_))
    }

    fn class(&self) -> Class {
        match self {
            Self::Connect(_) => Class::ConnectFailure,
            Self::Tls(_) => Class::Tls,
            Self::Reset(_) => Class::Reset,
            Self::NotHttp2(_) | Self::Protocol(_) => Class::Protocol,
            Self::Timeout => Class::Timeout,
        }
    }

    /// The 502 (503 for a timeout) the client gets if no retry helps.
    fn response(&self, sent: &Sent<'_>, timeout: Duration) -> Response<Body> {
        let Sent {
            dest,
            addr,
            connect_to,
            service,
        } = *sent;
        let (headline, error) = match self {
            Self::Timeout => {
                let mut resp = error_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!(
                        "timeout: request to {addr} ({}) timed out after {timeout:?}",
                        dest.id
                    ),
                );
                resp.extensions_mut().insert(DeadlineExceeded);
                return resp;
            }
            Self::Connect(e) => (
                format!("connect error: Unable to establish connection to {connect_to}."),
                e,
            ),
            Self::Tls(e) => (
                format!("TLS error: the TLS handshake with {connect_to} failed."),
                e,
            ),
            Self::NotHttp2(e) => (
                format!("protocol error: {connect_to} does not speak HTTP/2."),
                e,
            ),
            Self::Reset(e) => (
                format!(
                    "connection reset: the connection to {connect_to} closed after the request was sent."
                ),
                e,
            ),
            Self::Protocol(e) => (
                format!("protocol error: {connect_to} did not answer in valid HTTP."),
                e,
            ),
        };
        error_response(
            StatusCode::BAD_GATEWAY,
            &format!(
                "{headline}\n\nservice name: {service}\nclient name: {}\nselected address: {addr}\nerror: {error}",
                dest.id
            ),
        )
    }
}

/// Strips the hop-by-hop headers from a request on its way out, keeping
/// what the next hop needs to carry an upgrade (returned: the client
/// side's half of it) or gRPC's trailers.
fn hop_by_hop(parts: &mut http::request::Parts) -> Option<hyper::upgrade::OnUpgrade> {
    let upgrade = (parts.version == http::Version::HTTP_11)
        .then(|| headers::upgrade(&parts.headers))
        .flatten();
    let trailers =
        parts.version == http::Version::HTTP_2 && headers::wants_trailers(&parts.headers);
    let on_upgrade = upgrade
        .as_ref()
        .and_then(|_| parts.extensions.remove::<hyper::upgrade::OnUpgrade>());
    headers::strip_hop_by_hop(&mut parts.headers);
    if let Some(protocol) = upgrade {
        headers::set_upgrade(&mut parts.headers, protocol);
    }
    if trailers {
        parts
            .headers
            .insert(http::header::TE, HeaderValue::from_static("trailers"));
    }
    on_upgrade
}

/// The client's error, if the attempt failed because of its side of the
/// exchange: a body that could not be read (malformed, cut short, the
/// client gone), or one still being sent when the time ran out.
fn client_side(state: BodyState, failure: &Failure, addr: SocketAddr) -> Option<Response<Body>> {
    match (state, failure) {
        (BodyState::ClientFailed, _) => Some(error_response(
            StatusCode::BAD_REQUEST,
            &format!(
                "client error: the request body could not be read (malformed or cut short); nothing was charged to {addr}"
            ),
        )),
        (BodyState::Started, Failure::Timeout) => Some(error_response(
            StatusCode::REQUEST_TIMEOUT,
            &format!(
                "client error: the request body was still being sent when the attempt to {addr} timed out"
            ),
        )),
        _ => None,
    }
}

/// Joins an upgraded client connection to the upgraded upstream one until
/// either side closes; `_hold` keeps the client connection's idle timer
/// off meanwhile.
async fn tunnel(
    downstream: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    _hold: Option<conn::ActiveGuard>,
) {
    let (Ok(down), Ok(up)) = tokio::join!(downstream, upstream) else {
        return;
    };
    let (mut down, mut up) = (TokioIo::new(down), TokioIo::new(up));
    if let Err(e) = tokio::io::copy_bidirectional(&mut down, &mut up).await {
        tracing::debug!("upgraded connection ended: {e}");
    }
}

/// The shared state of both listeners.
#[derive(Debug)]
pub struct Proxy {
    pub routes: Arc<Routes>,
    pub config: Config,
    pub host_ip: IpAddr,
    pub metrics: Arc<Metrics>,
    upstream: Upstream,
    /// Bounds the requests held at once: past it, fail fast instead of queueing.
    in_flight: Arc<tokio::sync::Semaphore>,
    /// TLS on the linker-to-linker hop (both sides), when on.
    l2l_tls: Option<Arc<crate::tls::L2lTls>>,
}

impl Proxy {
    pub fn new(
        routes: Arc<Routes>,
        config: Config,
        host_ip: IpAddr,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            routes,
            host_ip,
            metrics,
            upstream: Upstream::new(config.connect_timeout, None),
            in_flight: Arc::new(tokio::sync::Semaphore::new(config.max_in_flight)),
            config,
            l2l_tls: None,
        }
    }

    /// Turns on TLS for the linker-to-linker hop.
    #[must_use]
    pub fn with_l2l_tls(mut self, tls: Option<Arc<crate::tls::L2lTls>>) -> Self {
        self.upstream = Upstream::new(self.config.connect_timeout, tls.as_deref());
        self.l2l_tls = tls;
        self
    }

    /// Serves `listener` until `shutdown` turns true, then lets in-flight
    /// requests finish (up to `grace`); see [`listener`].
    pub async fn serve(
        self: Arc<Self>,
        side: Side,
        listener: TcpListener,
        shutdown: watch::Receiver<bool>,
        grace: Duration,
    ) {
        listener::serve(self, side, listener, shutdown, grace).await;
    }

    /// One request, start to finish.
    pub async fn handle(&self, side: Side, req: Request<Incoming>) -> Response<Body> {
        let started = Instant::now();
        let Ok(_permit) = Arc::clone(&self.in_flight).try_acquire_owned() else {
            self.metrics.request(
                side,
                None,
                StatusCode::SERVICE_UNAVAILABLE,
                started.elapsed(),
            );
            return error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!(
                    "the proxy is holding {} requests already",
                    self.config.max_in_flight
                ),
            );
        };
        let clear = self.config.clear_context && side == Side::Outgoing;
        let (mut parts, body) = req.into_parts();
        if clear {
            headers::clear_context(&mut parts.headers);
        }
        let grpc = headers::is_grpc(&parts.headers);
        let version = parts.version;
        let (service, resp) = self.route(side, &mut parts, body).await;
        let resp = Self::finish(resp, version, grpc, clear);
        self.metrics
            .request(side, service.as_deref(), resp.status(), started.elapsed());
        resp
    }

    /// A response on its way back to the client: hop-by-hop headers out,
    /// `Via` in, the proxy's own errors in gRPC's terms for a gRPC client,
    /// and, where the context is cleared (`clear`), every `l5d-*` header
    /// and an error's body removed.
    fn finish(
        mut resp: Response<Body>,
        version: http::Version,
        grpc: bool,
        clear: bool,
    ) -> Response<Body> {
        if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
            headers::strip_hop_by_hop(resp.headers_mut());
        }
        headers::append_via(resp.headers_mut(), version);
        // A remote agent's error is already gRPC-shaped (200 with
        // grpc-status); translating it again would turn its code into 13.
        if grpc
            && resp.headers().contains_key(headers::L5D_ERR)
            && !resp.headers().contains_key("grpc-status")
        {
            let timed_out = resp.extensions().get::<DeadlineExceeded>().is_some();
            headers::grpc_error(&mut resp, timed_out);
        }
        if clear {
            let had_error = resp.headers().contains_key(headers::L5D_ERR);
            headers::clear_context(resp.headers_mut());
            if had_error && !grpc {
                *resp.body_mut() = headers::full(Bytes::new());
            }
        }
        resp
    }

    /// Routes and forwards; returns the logical name (for metrics) and the response.
    async fn route(
        &self,
        side: Side,
        parts: &mut http::request::Parts,
        body: Incoming,
    ) -> (Option<Arc<str>>, Response<Body>) {
        let depth = headers::call_depth(&parts.headers);
        if depth >= self.config.max_call_depth {
            let msg = format!(
                "Maximum number of calls ({}) has been exceeded. Please check for proxy loops.",
                self.config.max_call_depth
            );
            return (None, error_response(StatusCode::BAD_REQUEST, &msg));
        }
        if let Some(msg) = self.oversized_dtab(&parts.headers) {
            return (
                None,
                error_response(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, &msg),
            );
        }
        identify::rewrite_proxy_form(parts);
        let table = self.routes.load();

        // On the incoming side, the first agent's choice of concrete set
        // stands (see the module docs).
        let chosen = (side == Side::Incoming)
            .then(|| incoming_choice(&table, parts, &self.routes.settings))
            .flatten();
        let ctx = headers::joined(&parts.headers, L5D_CTX_DTAB);
        let user = headers::joined(&parts.headers, L5D_DTAB);
        parts.headers.remove(L5D_CTX_DTAB);
        parts.headers.remove(L5D_DTAB);

        let (service, decision, policy): (Arc<str>, _, _) = if let Some((name, dest, policy)) =
            chosen
        {
            (Arc::from(name.to_string()), Err(dest), policy)
        } else {
            let name = match identify::identify(&self.config.identifier, parts) {
                Ok(name) => name,
                Err(e) => {
                    let msg = format!("Unknown destination: {} {} / {e}", parts.method, parts.uri);
                    return (None, error_response(StatusCode::BAD_REQUEST, &msg));
                }
            };
            let decision = table.decide(
                &name,
                ctx.as_deref(),
                user.as_deref(),
                &self.routes.settings,
            );
            let policy = Arc::clone(&decision.policy);
            (Arc::clone(&decision.service), Ok(decision), policy)
        };

        let local_dtab = match &decision {
            Ok(d) => match &d.route {
                Err(
                    e @ (RouteError::BadDtabHeader { .. }
                    | RouteError::ForbiddenOverride { .. }
                    | RouteError::ForbiddenLocalAddress { .. }),
                ) => {
                    if matches!(e, RouteError::ForbiddenOverride { .. }) {
                        self.metrics.refused("fixed_address_override");
                    }
                    return (
                        Some(service),
                        error_response(StatusCode::BAD_REQUEST, &e.to_string()),
                    );
                }
                Err(e) => {
                    let msg = Self::unable_to_route(&service, &table, d.local_dtab.as_deref(), e);
                    return (Some(service), error_response(StatusCode::BAD_GATEWAY, &msg));
                }
                Ok(_) => d.local_dtab.clone(),
            },
            // The incoming side forwards the context it received.
            Err(_) => ctx
                .as_deref()
                .and_then(|c| std::str::from_utf8(c).ok())
                .map(Arc::from),
        };

        let (remaining, bound) = time_limit(&parts.headers, &policy);
        parts.headers.remove(L5D_CTX_DEADLINE);
        if remaining.is_zero() {
            let mut resp = error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "the request's deadline has passed",
            );
            resp.extensions_mut().insert(DeadlineExceeded);
            return (Some(service), resp);
        }

        let on_upgrade = hop_by_hop(parts);
        headers::append_via(&mut parts.headers, parts.version);
        context_headers(parts, &decision, &service, local_dtab.as_deref());

        let limit = Limit {
            remaining,
            bound,
            policy: &policy,
        };
        let resp = self
            .forward(side, parts, body, decision, &service, limit, on_upgrade)
            .await;
        (Some(service), resp)
    }

    /// Sends the request within its deadline; joins an upgraded
    /// connection to the upstream's.
    #[allow(clippy::too_many_arguments)]
    async fn forward(
        &self,
        side: Side,
        parts: &http::request::Parts,
        body: Incoming,
        decision: Result<Arc<crate::routes::Decision>, Dest>,
        service: &str,
        limit: Limit<'_>,
        on_upgrade: Option<hyper::upgrade::OnUpgrade>,
    ) -> Response<Body> {
        let Limit {
            remaining,
            bound,
            policy,
        } = limit;
        // A body is kept for a retry only where a gRPC status may ask for one.
        let replay = policy.max_attempts > 1
            && policy
                .grpc
                .is_some_and(crate::policy::GrpcCodes::any_retryable)
            && headers::is_grpc(&parts.headers);
        let body = RequestBody::new(body, replay);
        let deadline = Instant::now() + remaining;
        let attempt = self.attempts(side, parts, &body, decision, service, deadline, limit);
        let mut resp = if let Ok(resp) = tokio::time::timeout(remaining, attempt).await {
            resp
        } else if body.state() == BodyState::Started {
            // The client was still sending its body: its side was slow.
            self.metrics.failure(service, None, Class::ClientError);
            error_response(
                StatusCode::REQUEST_TIMEOUT,
                &format!(
                    "the client did not send its request body to {service} within {remaining:?}"
                ),
            )
        } else {
            self.metrics.failure(service, None, Class::Timeout);
            self.metrics.timeout(service, bound);
            timed_out(service, remaining)
        };
        if let Some(downstream) = on_upgrade
            && resp.status() == StatusCode::SWITCHING_PROTOCOLS
        {
            let upstream = hyper::upgrade::on(&mut resp);
            // The tunnel keeps the client connection active: its idle and
            // header timers do not apply to the upgraded protocol.
            let hold = parts
                .extensions
                .get::<conn::ConnHandle>()
                .map(conn::ConnHandle::hold);
            tokio::spawn(tunnel(downstream, upstream, hold));
        }
        resp
    }

    /// A 431 message if a dtab header (all its values together) is larger
    /// than the limit, checked before anything copies or parses it.
    fn oversized_dtab(&self, headers: &http::HeaderMap) -> Option<String> {
        let limit = self.config.max_dtab_header_bytes;
        [L5D_DTAB, L5D_CTX_DTAB].into_iter().find_map(|name| {
            let values = headers.get_all(name);
            let size = values
                .iter()
                .map(HeaderValue::len)
                .sum::<usize>()
                .saturating_add(values.iter().count().saturating_sub(1));
            (size > limit).then(|| {
                self.metrics.refused("dtab_header_too_large");
                format!("{name} header is {size} bytes, more than the limit of {limit} (max_dtab_header_bytes)")
            })
        })
    }

    /// The attempt loop: pick, forward, classify, maybe retry elsewhere.
    #[allow(clippy::too_many_arguments, clippy::too_many_lines)]
    async fn attempts(
        &self,
        side: Side,
        parts: &http::request::Parts,
        body: &RequestBody,
        decision: Result<Arc<crate::routes::Decision>, Dest>,
        service: &str,
        deadline: Instant,
        limit: Limit<'_>,
    ) -> Response<Body> {
        let policy = limit.policy;
        policy.budget.deposit();
        // Endpoints that failed this request (allocated only on a retry).
        let mut tried: Vec<SocketAddr> = Vec::new();
        let mut last_error: Option<Response<Body>> = None;
        let mut retries = 0;
        // A downgrade to HTTP/1.1 resends at once, and at most this often.
        let mut downgrades = 2;
        loop {
            let dest: &Dest = match &decision {
                Ok(d) => match d.route.as_ref().map(|t| choose(t)) {
                    Ok(Ok(dest)) => dest,
                    // The tree is ~, ! or $: nothing to route to.
                    Ok(Err(e)) if last_error.is_none() => {
                        let table = self.routes.load();
                        let msg =
                            Self::unable_to_route(service, &table, d.local_dtab.as_deref(), &e);
                        self.metrics.failure(service, None, Class::NoHosts);
                        return error_response(StatusCode::BAD_GATEWAY, &msg);
                    }
                    Ok(Err(_)) | Err(_) => break,
                },
                Err(dest) => dest,
            };
            let (addr, connect_to, pick) = match self.select(side, dest, &tried).await {
                Ok(Some(chosen)) => chosen,
                Ok(None) if last_error.is_none() => {
                    let ctx = parts
                        .headers
                        .get(L5D_CTX_DTAB)
                        .and_then(|v| v.to_str().ok());
                    return self.no_endpoint(side, dest, &tried, service, policy, ctx);
                }
                Ok(None) => break,
                Err(refused) => {
                    self.metrics.refused("local_address_override");
                    return error_response(StatusCode::BAD_REQUEST, &refused.to_string());
                }
            };
            // Only the last hop meets the endpoint's own protocol; agents
            // speak both.
            let downgrade = parts.version == http::Version::HTTP_2
                && connect_to == addr
                && self.upstream.http1_only.contains(addr);
            let req = outbound_request(
                parts,
                body.for_attempt(),
                dest,
                connect_to,
                deadline.saturating_duration_since(Instant::now()),
                downgrade,
            );
            let sent = Sent {
                dest,
                addr,
                connect_to,
                service,
            };
            match self
                .try_once(parts, req, &sent, pick, body, deadline, downgrade, limit)
                .await
            {
                Attempt::Downgrade(resp) if downgrades > 0 && body.sendable() => {
                    downgrades -= 1;
                    last_error = Some(resp);
                }
                Attempt::Done(resp) | Attempt::Downgrade(resp) => return resp,
                Attempt::Retry(resp) => {
                    last_error = Some(resp);
                    tried.push(addr);
                    if !self
                        .may_retry(policy, service, &mut retries, deadline)
                        .await
                    {
                        break;
                    }
                }
            }
        }
        last_error.unwrap_or_else(|| {
            error_response(
                StatusCode::BAD_GATEWAY,
                &format!("No hosts are available for {service}"),
            )
        })
    }

    /// Whether a request whose attempt failed in a retryable way goes
    /// again: within its policy's attempts and retry budget, and only if
    /// the backoff (slept here) ends before its deadline.
    async fn may_retry(
        &self,
        policy: &Policy,
        service: &str,
        retries: &mut u32,
        deadline: Instant,
    ) -> bool {
        if *retries + 1 >= policy.max_attempts {
            return false;
        }
        if !policy.budget.try_withdraw() {
            self.metrics.retry_budget_exhausted(service);
            return false;
        }
        *retries += 1;
        self.metrics.retry(service);
        let wait = policy.backoff(*retries);
        if !wait.is_zero() {
            // A backoff that outlasts the deadline would only turn the
            // last answer into a timeout.
            if Instant::now() + wait >= deadline {
                return false;
            }
            tokio::time::sleep(wait).await;
        }
        true
    }

    /// The answer when a request's first attempt finds no endpoint: 503
    /// if they are all at the policy's in-flight limit, else Linkerd's
    /// 502 "no hosts".
    fn no_endpoint(
        &self,
        side: Side,
        dest: &Dest,
        tried: &[SocketAddr],
        service: &str,
        policy: &Policy,
        ctx_dtab: Option<&str>,
    ) -> Response<Body> {
        if at_capacity(&dest.target, side, tried) {
            self.metrics.concurrency_rejection(service);
            return error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!(
                    "max_concurrent_requests: every endpoint of {} has {} requests in flight for {service} (its policy's limit); failing fast instead of queueing",
                    dest.id, policy.target.balancer.max_concurrent
                ),
            );
        }
        let table = self.routes.load();
        let msg = Self::unable_to_route(service, &table, ctx_dtab, &RouteError::NoHosts);
        self.metrics
            .failure(service, Some(client_name(dest)), Class::NoHosts);
        error_response(StatusCode::BAD_GATEWAY, &msg)
    }

    /// Sends one attempt and classifies what happened; failures that are
    /// the endpoint's are reported to the balancer (failure accrual, EWMA)
    /// and metrics, and the client's own never are.
    #[allow(clippy::too_many_arguments)]
    async fn try_once(
        &self,
        parts: &http::request::Parts,
        req: Request<Body>,
        sent: &Sent<'_>,
        pick: Option<ecsmesh_agent_balance::Pick>,
        body: &RequestBody,
        deadline: Instant,
        downgraded: bool,
        limit: Limit<'_>,
    ) -> Attempt {
        let policy = limit.policy;
        let Sent {
            dest,
            addr,
            connect_to,
            service,
        } = *sent;
        let version = if downgraded {
            http::Version::HTTP_11
        } else {
            parts.version
        };
        let started = Instant::now();
        let left = deadline.saturating_duration_since(started);
        // `connect_to` differs from the endpoint only on the outgoing side
        // of linker-to-linker: it is then the remote agent's incoming port.
        let hop = if connect_to == addr {
            Hop::Endpoint
        } else {
            Hop::Agent
        };
        let sending = match self.upstream.send(hop, version, dest, req) {
            Ok(sending) => sending,
            Err(e) => {
                let msg = format!("TLS to the agent at {connect_to} for {}: {e}", dest.id);
                return Attempt::Done(error_response(StatusCode::BAD_GATEWAY, &msg));
            }
        };
        let attempt_limit = left.min(policy.attempt_timeout);
        let sent_result = tokio::time::timeout(attempt_limit, sending).await;
        let client_name = client_name(dest);
        let failure = match sent_result {
            Ok(Ok(resp)) => {
                self.metrics
                    .attempt(client_name, resp.status(), started.elapsed());
                return self.classify(parts, resp.map(BodyExt::boxed), sent, pick, body, policy);
            }
            Ok(Err(e)) => Failure::of(&e),
            Err(_) => {
                // The attempt's own limit, or the request's time.
                let kind = if policy.attempt_timeout < left {
                    TimeoutKind::Attempt
                } else {
                    limit.bound
                };
                self.metrics.timeout(service, kind);
                Failure::Timeout
            }
        };
        // The client's side broke first: its error, not the endpoint's.
        if let Some(resp) = client_side(body.state(), &failure, addr) {
            drop(pick);
            self.metrics.failure(service, None, Class::ClientError);
            return Attempt::Done(resp);
        }
        if let Failure::NotHttp2(reason) = &failure {
            // The request never left; the endpoint is fine, it just speaks
            // HTTP/1: resend downgraded.
            drop(pick);
            self.upstream.http1_only.insert(addr);
            self.metrics.downgrade(client_name);
            return Attempt::Downgrade(error_response(
                StatusCode::BAD_GATEWAY,
                &format!(
                    "protocol error: {addr} ({}) does not speak HTTP/2: {reason}",
                    dest.id
                ),
            ));
        }
        if let Some(p) = pick {
            p.failure();
        }
        self.metrics
            .failure(service, Some(client_name), failure.class());
        // Named by the limit that ran out: the attempt's own, or the
        // request's whole time (both fire together when it is the tighter).
        let ran_out = if policy.attempt_timeout < left {
            policy.attempt_timeout
        } else {
            limit.remaining
        };
        let resp = failure.response(sent, ran_out);
        let retry = if failure.never_sent() {
            // Provably never reached the endpoint: any method may go
            // elsewhere, if its body is still whole.
            body.sendable()
        } else {
            // It may have been processed: only an idempotent request
            // without a body is sent again.
            policy
                .classifier
                .classify(parts.method.as_str(), None)
                .is_retryable()
                && matches!(body, RequestBody::Empty)
        };
        if retry && !parts.headers.contains_key(http::header::UPGRADE) {
            Attempt::Retry(resp)
        } else {
            Attempt::Done(resp)
        }
    }

    /// Classifies a response by the policy: by `grpc-status` when its gRPC
    /// classifier applies and the status came in the headers (a
    /// trailers-only response: it may be retried), else by HTTP status with
    /// its HTTP classifier; a gRPC response whose status comes in trailers
    /// is classified when its body ends ([`body::GrpcClassified`]).
    fn classify(
        &self,
        parts: &http::request::Parts,
        resp: Response<Body>,
        sent: &Sent<'_>,
        pick: Option<ecsmesh_agent_balance::Pick>,
        body: &RequestBody,
        policy: &Policy,
    ) -> Attempt {
        let client = client_name(sent.dest);
        let grpc = policy.grpc.filter(|_| headers::is_grpc(&parts.headers));
        let (outcome, class) = match grpc.map(|g| (g, headers::grpc_status(resp.headers()))) {
            Some((codes, Some(code))) => {
                let outcome = if codes.is_retryable(code) {
                    Outcome::Failure { retryable: true }
                } else if codes.is_failure(code) {
                    Outcome::Failure { retryable: false }
                } else {
                    Outcome::Success
                };
                (outcome, Class::GrpcStatus)
            }
            Some((codes, None))
                if resp.status().is_success() && !http_body::Body::is_end_stream(resp.body()) =>
            {
                // The status comes in trailers: classified when they do.
                let report = body::Report {
                    metrics: Arc::clone(&self.metrics),
                    service: Arc::from(sent.service),
                    client: Arc::from(client),
                };
                let resp = resp.map(|b| body::GrpcClassified::new(b, pick, codes, report).boxed());
                return Attempt::Done(resp);
            }
            _ => (
                policy
                    .classifier
                    .classify(parts.method.as_str(), Some(resp.status().as_u16())),
                Class::Status5xx,
            ),
        };
        match outcome {
            Outcome::Success => {
                if let Some(p) = pick {
                    p.success();
                }
                Attempt::Done(resp)
            }
            Outcome::Failure { retryable } => {
                if let Some(p) = pick {
                    p.failure();
                }
                self.metrics.failure(sent.service, Some(client), class);
                // Resent only if the whole request can be: a gRPC request's
                // body was kept for it; an HTTP one must have none.
                let resendable = if class == Class::GrpcStatus {
                    body.replayable()
                } else {
                    matches!(body, RequestBody::Empty)
                };
                if retryable && resendable {
                    Attempt::Retry(resp)
                } else {
                    Attempt::Done(resp)
                }
            }
        }
    }

    /// The endpoint for one attempt: its address, where to connect (the
    /// remote agent in linker-to-linker mode), and the balancer's handle;
    /// `Ok(None)` if none is left, an error if the request may not go to
    /// the address its dtab named.
    async fn select(
        &self,
        side: Side,
        dest: &Dest,
        tried: &[SocketAddr],
    ) -> Result<Option<(SocketAddr, SocketAddr, Option<ecsmesh_agent_balance::Pick>)>, RouteError>
    {
        match &dest.target {
            Target::Set {
                all,
                local,
                draining,
                hosts,
                zones,
            } => {
                let pick = if side == Side::Incoming {
                    local.pick(tried)
                } else {
                    // The zone preference is for first attempts: a retry
                    // goes wherever the whole set says.
                    let zoned = zones.as_ref().filter(|_| tried.is_empty());
                    zoned
                        .and_then(|z| z.pick())
                        .or_else(|| all.pick(tried))
                        .or_else(|| draining.pick(tried))
                };
                // A retry prefers an endpoint not tried yet; with none left
                // it may go to one again (as Linkerd's retries do), unless
                // failure accrual has taken it out.
                let pick = pick.or_else(|| {
                    if tried.is_empty() {
                        None
                    } else if side == Side::Incoming {
                        local.pick(&[])
                    } else {
                        all.pick(&[]).or_else(|| draining.pick(&[]))
                    }
                });
                let Some(pick) = pick else {
                    return Ok(None);
                };
                let addr = pick.addr();
                if side == Side::Outgoing
                    && let Some(z) = zones
                {
                    z.count(&addr);
                }
                let connect_to = match (side, self.config.mode) {
                    (Side::Outgoing, Mode::LinkerToLinker) => SocketAddr::new(
                        hosts.get(&addr).copied().unwrap_or(addr.ip()),
                        self.config.incoming_port,
                    ),
                    _ => addr,
                };
                Ok(Some((addr, connect_to, Some(pick))))
            }
            Target::Inet {
                host,
                port,
                from_header,
            } => {
                let host = if host.is_empty() {
                    "127.0.0.1"
                } else {
                    host.as_str()
                };
                let Ok(resolved) = tokio::net::lookup_host((host, *port)).await else {
                    return Ok(None);
                };
                // Checked on what the name resolved to, not on its text: a
                // name can resolve to the host or the metadata service.
                let guard = *from_header && !self.routes.settings.allow_local_inet_override;
                let mut first = None;
                for addr in resolved {
                    if guard && crate::routes::is_local(addr.ip()) {
                        return Err(RouteError::ForbiddenLocalAddress {
                            path: dest.id.clone(),
                            addr: addr.ip(),
                        });
                    }
                    if first.is_none() && !tried.contains(&addr) {
                        first = Some(addr);
                    }
                }
                Ok(first.map(|addr| (addr, addr, None)))
            }
        }
    }

    /// Linkerd's 502 body for a request that cannot be routed.
    fn unable_to_route(
        service: &str,
        table: &RouteTable,
        local: Option<&str>,
        error: &RouteError,
    ) -> String {
        let lines = |d: &str| {
            d.split(';')
                .filter(|s| !s.is_empty())
                .map(|s| format!("  {s}"))
                .collect::<Vec<_>>()
                .join("\n")
        };
        format!(
            "Unable to route request!\n\nservice name: {service}\nreason: {error}\nbase dtab:\n{}\noverride dtab:\n{}",
            lines(&table.dtab.to_string()),
            lines(local.unwrap_or_default())
        )
    }
}

/// An error and its causes, `: `-separated (hyper's client error alone
/// says only "client error (Connect)"; the cause says why, e.g. which
/// certificate a TLS handshake refused).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let more = c.to_string();
        // Some errors repeat their source in their own message.
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = c.source();
    }
    text
}

/// The concrete name of `dest` (its prerendered header: no allocation).
fn client_name(dest: &Dest) -> &str {
    dest.id_header
        .as_ref()
        .and_then(|v| v.to_str().ok())
        .unwrap_or("unnamed")
}

/// The `l5d-*` context headers on the way out: the logical name, a request
/// id, and the local dtab (rendered once per cached decision).
fn context_headers(
    parts: &mut http::request::Parts,
    decision: &Result<Arc<crate::routes::Decision>, Dest>,
    service: &str,
    local_dtab: Option<&str>,
) {
    let service_header = match decision {
        Ok(d) => d.service_header.clone(),
        Err(_) => HeaderValue::from_str(service).ok(),
    };
    if let Some(v) = service_header {
        parts.headers.insert(L5D_DST_SERVICE, v);
    }
    if !parts.headers.contains_key(L5D_REQID) {
        parts.headers.insert(L5D_REQID, headers::request_id());
    }
    let local_dtab_header = match decision {
        Ok(d) => d.local_dtab_header.clone(),
        Err(_) => local_dtab.and_then(|d| HeaderValue::from_str(d).ok()),
    };
    if let Some(v) = local_dtab_header {
        parts.headers.insert(L5D_CTX_DTAB, v);
    }
}

/// One attempt's request: the shared parts, the body, the chosen
/// destination's headers and the address; `downgrade` turns an HTTP/2
/// request into HTTP/1.1 for an endpoint that speaks only that.
fn outbound_request(
    parts: &http::request::Parts,
    body: Body,
    dest: &Dest,
    connect_to: SocketAddr,
    left: Duration,
    downgrade: bool,
) -> Request<Body> {
    let mut req = Request::from_parts(parts.clone(), body);
    let headers = req.headers_mut();
    if let Some(v) = &dest.id_header {
        headers.insert(L5D_DST_CLIENT, v.clone());
    }
    if let Some(v) = &dest.residual_header {
        headers.insert(L5D_DST_RESIDUAL, v.clone());
    }
    if let Some(v) = headers::deadline_header(left) {
        headers.insert(L5D_CTX_DEADLINE, v);
    }
    if downgrade {
        // HTTP/1.1 names the authority in Host; TE would need Connection.
        headers.remove(http::header::TE);
        if !headers.contains_key(http::header::HOST)
            && let Some(host) = parts
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        {
            headers.insert(http::header::HOST, host);
        }
        *req.version_mut() = http::Version::HTTP_11;
    }
    *req.uri_mut() = absolute_uri(connect_to, parts.uri.path_and_query());
    req
}

/// On the incoming side: the concrete set the sending agent chose
/// (`l5d-dst-client`), if it names a published set.
fn incoming_choice(
    table: &RouteTable,
    parts: &http::request::Parts,
    settings: &crate::routes::TableSettings,
) -> Option<(Path, Dest, Arc<Policy>)> {
    let id = parts.headers.get(L5D_DST_CLIENT)?.as_bytes();
    let service = parts
        .headers
        .get(L5D_DST_SERVICE)
        .map(HeaderValue::as_bytes);
    incoming_route(table, id, service, settings)
}

/// The concrete set named by `l5d-dst-client` (`client`), if published,
/// with the logical name of `l5d-dst-service` (else the set's) and that
/// name's policy.
fn incoming_route(
    table: &RouteTable,
    client: &[u8],
    service: Option<&[u8]>,
    settings: &crate::routes::TableSettings,
) -> Option<(Path, Dest, Arc<Policy>)> {
    let id = Path::read(std::str::from_utf8(client).ok()?).ok()?;
    names::kind(id.elems())?;
    let (_, endpoints) = ecsmesh_state::MeshNamer::new(&table.mesh).set(&id)?;
    let bound = ecsmesh_state::Bound::Set {
        id: id.clone(),
        endpoints: Arc::clone(endpoints),
        residual: Path::empty(),
    };
    let service = service
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|s| Path::read(s).ok())
        .unwrap_or_else(|| id.clone());
    let policy = Arc::clone(table.policies.matching(&service));
    let dest = table.dest(bound, settings, &policy.target);
    Some((service, dest, policy))
}

/// `http://<addr><path and query>`: the address rendered on the stack, the
/// path and query shared with the request's (no copy).
fn absolute_uri(addr: SocketAddr, path_and_query: Option<&http::uri::PathAndQuery>) -> Uri {
    use std::io::Write as _;
    let mut buf = [0_u8; 64];
    let mut w = &mut buf[..];
    let written = write!(w, "{addr}").ok().map(|()| 64 - w.len());
    let authority = written.and_then(|len| http::uri::Authority::try_from(&buf[..len]).ok());
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(http::uri::Scheme::HTTP);
    parts.authority = authority;
    parts.path_and_query = Some(
        path_and_query
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")),
    );
    Uri::from_parts(parts).unwrap_or_else(|_| Uri::from_static("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absolute_uris() {
        let pq = http::uri::PathAndQuery::from_static("/a/b?c=d");
        let v4: SocketAddr = "127.0.1.2:8080".parse().unwrap();
        assert_eq!(
            absolute_uri(v4, Some(&pq)).to_string(),
            "http://127.0.1.2:8080/a/b?c=d"
        );
        let v6: SocketAddr = "[fd00::1]:80".parse().unwrap();
        assert_eq!(absolute_uri(v6, None).to_string(), "http://[fd00::1]:80/");
    }
}

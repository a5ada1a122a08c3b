//! The proxy: the outgoing listener (applications' `http_proxy`) and the
//! incoming one (the linker-to-linker hop). HTTP/1.1 and HTTP/2 with prior
//! knowledge (h2c, so gRPC works) on both.
//!
//! Per request: identify → read the dtab headers → the routing decision
//! (cached per logical name and local dtab) → pick a union branch, then an
//! endpoint (p2c over peak EWMA, failure accrual) → forward, retrying
//! idempotent body-less requests on another endpoint within the retry
//! budget and the request's deadline.
//!
//! In linker-to-linker mode the outgoing side sends the request to the
//! agent on the chosen endpoint's host, naming the chosen concrete set in
//! `l5d-dst-client`; the incoming side then balances over that set's
//! endpoints on its own host. A weighted split is thus decided once, by the
//! first agent.

pub mod headers;
pub mod identify;
pub mod io;

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ecsmesh_agent_balance::{Classifier, Outcome, RetryBudget, RetryBudgetConfig};
use ecsmesh_dtab::Path;
use ecsmesh_state::names;
use http::header::HeaderValue;
use http::{Request, Response, StatusCode, Uri};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::{Config, Mode};
use crate::metrics::{Class, Metrics};
use crate::routes::{Dest, RouteError, RouteTable, Routes, Target, choose};
use headers::{
    L5D_CTX_DEADLINE, L5D_CTX_DTAB, L5D_DST_CLIENT, L5D_DST_RESIDUAL, L5D_DST_SERVICE, L5D_DTAB,
    L5D_REQID, error_response,
};

/// Every body the proxy sends or receives, boxed.
pub type Body = BoxBody<Bytes, hyper::Error>;

/// Which listener a request came in on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Side {
    Outgoing,
    Incoming,
}

impl Side {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Outgoing => "outgoing",
            Self::Incoming => "incoming",
        }
    }
}

/// What one attempt came to.
enum Attempt {
    /// The answer to return (a success, or a failure not to retry).
    Done(Response<Body>),
    /// A failure another endpoint may fix; returned if no retry is left.
    Failed(Response<Body>),
}

/// The shared state of both listeners.
#[derive(Debug)]
pub struct Proxy {
    pub routes: Arc<Routes>,
    pub config: Config,
    pub host_ip: IpAddr,
    pub metrics: Arc<Metrics>,
    pools: Pools<HttpConnector>,
    budget: RetryBudget,
    classifier: Classifier,
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
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(config.connect_timeout));
        connector.set_nodelay(true);
        Self {
            routes,
            host_ip,
            metrics,
            pools: Pools::new(connector),
            budget: RetryBudget::new(&RetryBudgetConfig::default()),
            classifier: Classifier::RetryableIdempotent5XX,
            in_flight: Arc::new(tokio::sync::Semaphore::new(config.max_in_flight)),
            config,
            l2l_tls: None,
        }
    }

    /// Turns on TLS for the linker-to-linker hop.
    #[must_use]
    pub fn with_l2l_tls(mut self, tls: Option<Arc<crate::tls::L2lTls>>) -> Self {
        self.l2l_tls = tls;
        self
    }

    /// Serves `listener` until `shutdown` turns true, then lets in-flight
    /// requests finish (up to `grace`).
    pub async fn serve(
        self: Arc<Self>,
        side: Side,
        listener: TcpListener,
        mut shutdown: watch::Receiver<bool>,
        grace: Duration,
    ) {
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        // One write per message, as the upstream pools do (see `Pools`).
        builder.http1().writev(false);
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let Ok((stream, _)) = accepted else { continue };
                    let _ = stream.set_nodelay(true);
                    let stream = io::Counted::new(stream, self.metrics.listener(side));
                    let proxy = Arc::clone(&self);
                    let service = hyper::service::service_fn(move |req| {
                        let proxy = Arc::clone(&proxy);
                        async move { Ok::<_, Infallible>(proxy.handle(side, req).await) }
                    });
                    if let (Side::Incoming, Some(tls)) = (side, &self.l2l_tls) {
                        // The handshake runs off the accept loop.
                        let (tls, builder, watcher) = (Arc::clone(tls), builder.clone(), graceful.watcher());
                        tokio::spawn(async move {
                            if let Some(stream) = tls.accept(stream).await {
                                let conn = builder.serve_connection(TokioIo::new(stream), service);
                                let _ = watcher.watch(conn.into_owned()).await;
                            }
                        });
                        continue;
                    }
                    let conn = builder.serve_connection(TokioIo::new(stream), service).into_owned();
                    let conn = graceful.watch(conn);
                    tokio::spawn(async move {
                        let _ = conn.await;
                    });
                }
                _ = shutdown.wait_for(|stop| *stop) => break,
            }
        }
        drop(listener);
        tokio::select! {
            () = graceful.shutdown() => {}
            () = tokio::time::sleep(grace) => tracing::warn!(side = side.as_str(), "in-flight requests cut off by the shutdown deadline"),
        }
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
        let (service, mut resp) = self.route(side, &mut parts, body).await;
        headers::strip_hop_by_hop(resp.headers_mut());
        if clear {
            let had_error = resp.headers().contains_key(headers::L5D_ERR);
            headers::clear_context(resp.headers_mut());
            if had_error {
                *resp.body_mut() = headers::full(Bytes::new());
            }
        }
        self.metrics
            .request(side, service.as_deref(), resp.status(), started.elapsed());
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

        let (service, decision): (Arc<str>, _) = if let Some((name, dest)) = chosen {
            (Arc::from(name.to_string()), Err(dest))
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
            (Arc::clone(&decision.service), Ok(decision))
        };

        let local_dtab = match &decision {
            Ok(d) => match &d.route {
                Err(
                    e @ (RouteError::BadDtabHeader { .. } | RouteError::ForbiddenOverride { .. }),
                ) => {
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

        // Deadline: the request's own, tightened by the configured total timeout.
        let remaining = headers::deadline_remaining(&parts.headers)
            .map_or(self.config.request_timeout, |d| {
                d.min(self.config.request_timeout)
            });
        parts.headers.remove(L5D_CTX_DEADLINE);
        if remaining.is_zero() {
            return (
                Some(service),
                error_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the request's deadline has passed",
                ),
            );
        }

        // Outbound context headers.
        headers::strip_hop_by_hop(&mut parts.headers);
        headers::append_via(&mut parts.headers, parts.version);
        context_headers(parts, &decision, &service, local_dtab.as_deref());

        let deadline = Instant::now() + remaining;
        let attempt = self.attempts(side, parts, body, decision, &service, deadline);
        let resp = if let Ok(resp) = tokio::time::timeout(remaining, attempt).await {
            resp
        } else {
            self.metrics.failure(&service, None, Class::Timeout);
            error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("request to {service} timed out after {remaining:?}"),
            )
        };
        (Some(service), resp)
    }

    /// The attempt loop: pick, forward, classify, maybe retry elsewhere.
    async fn attempts(
        &self,
        side: Side,
        parts: &http::request::Parts,
        body: Incoming,
        decision: Result<Arc<crate::routes::Decision>, Dest>,
        service: &str,
        deadline: Instant,
    ) -> Response<Body> {
        use http_body::Body as _;
        // Only a request without a body can be sent again.
        let replayable = body.is_end_stream();
        let mut body = Some(body);
        self.budget.deposit();
        let mut tried: Vec<SocketAddr> = Vec::new();
        let mut last_error: Option<Response<Body>> = None;
        for attempt in 0..=self.config.max_retries {
            if attempt > 0 {
                if !replayable {
                    break;
                }
                if !self.budget.try_withdraw() {
                    self.metrics.retry_budget_exhausted(service);
                    break;
                }
            }
            let dest: &Dest = match &decision {
                Ok(d) => match d.route.as_ref().map(|t| choose(t)) {
                    Ok(Ok(dest)) => dest,
                    // The tree is ~, ! or $: nothing to route to.
                    Ok(Err(e)) if attempt == 0 => {
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
            let Some((addr, connect_to, pick)) = self.select(side, dest, &tried).await else {
                if attempt == 0 {
                    let table = self.routes.load();
                    let msg = Self::unable_to_route(
                        service,
                        &table,
                        parts
                            .headers
                            .get(L5D_CTX_DTAB)
                            .and_then(|v| v.to_str().ok()),
                        &RouteError::NoHosts,
                    );
                    self.metrics
                        .failure(service, Some(client_name(dest)), Class::NoHosts);
                    return error_response(StatusCode::BAD_GATEWAY, &msg);
                }
                break;
            };
            tried.push(addr);
            if attempt > 0 {
                self.metrics.retry(service);
            }
            let req = outbound_request(
                parts,
                body.take(),
                dest,
                connect_to,
                deadline.saturating_duration_since(Instant::now()),
            );
            match self
                .try_once(
                    parts,
                    req,
                    dest,
                    (addr, connect_to),
                    pick,
                    service,
                    deadline,
                )
                .await
            {
                Attempt::Done(resp) => return resp,
                Attempt::Failed(resp) => last_error = Some(resp),
            }
        }
        last_error.unwrap_or_else(|| {
            error_response(
                StatusCode::BAD_GATEWAY,
                &format!("No hosts are available for {service}"),
            )
        })
    }

    /// Sends one attempt and classifies it; failures are reported to the
    /// balancer (failure accrual) and metrics.
    #[allow(clippy::too_many_arguments)]
    async fn try_once(
        &self,
        parts: &http::request::Parts,
        req: Request<Body>,
        dest: &Dest,
        (addr, connect_to): (SocketAddr, SocketAddr),
        pick: Option<ecsmesh_agent_balance::Pick>,
        service: &str,
        deadline: Instant,
    ) -> Attempt {
        let client = self.pools.for_version(parts.version);
        let started = Instant::now();
        let left = deadline.saturating_duration_since(started);
        // `connect_to` differs from the endpoint only on the outgoing side
        // of linker-to-linker: it is then the remote agent's incoming port.
        let sending = match self.l2l_tls.as_deref().filter(|_| connect_to != addr) {
            Some(tls) => match tls.request(parts.version, dest, req) {
                Ok(sending) => sending,
                Err(e) => {
                    let msg = format!("TLS to the agent at {connect_to} for {}: {e}", dest.id);
                    return Attempt::Done(error_response(StatusCode::BAD_GATEWAY, &msg));
                }
            },
            None => client.request(req),
        };
        let sent = tokio::time::timeout(left.min(self.config.attempt_timeout), sending).await;
        let client_name = client_name(dest);
        let status = match &sent {
            Ok(Ok(resp)) => {
                self.metrics
                    .attempt(client_name, resp.status(), started.elapsed());
                Some(resp.status().as_u16())
            }
            _ => None,
        };
        let outcome = self.classifier.classify(parts.method.as_str(), status);
        let succeeded = matches!((&sent, outcome), (Ok(Ok(_)), Outcome::Success));
        if let Some(p) = pick {
            if succeeded { p.success() } else { p.failure() }
        }
        match (sent, outcome) {
            (Ok(Ok(resp)), Outcome::Success) => Attempt::Done(resp.map(BodyExt::boxed)),
            (Ok(Ok(resp)), Outcome::Failure { retryable }) => {
                self.metrics
                    .failure(service, Some(client_name), Class::Status5xx);
                let resp = resp.map(BodyExt::boxed);
                if retryable {
                    Attempt::Failed(resp)
                } else {
                    Attempt::Done(resp)
                }
            }
            (Ok(Err(e)), _) => {
                // A request that never reached the endpoint may go elsewhere
                // whatever its method (if it can be resent).
                self.metrics
                    .failure(service, Some(client_name), Class::ConnectFailure);
                let msg = format!(
                    "Unable to establish connection to {connect_to}.\n\nservice name: {service}\nclient name: {}\nselected address: {addr}\nerror: {}",
                    dest.id,
                    error_chain(&e)
                );
                Attempt::Failed(error_response(StatusCode::BAD_GATEWAY, &msg))
            }
            (Err(_), _) => {
                self.metrics
                    .failure(service, Some(client_name), Class::Timeout);
                Attempt::Failed(error_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!("request to {addr} ({}) timed out", dest.id),
                ))
            }
        }
    }

    /// The endpoint for one attempt: its address, where to connect (the
    /// remote agent in linker-to-linker mode), and the balancer's handle.
    async fn select(
        &self,
        side: Side,
        dest: &Dest,
        tried: &[SocketAddr],
    ) -> Option<(SocketAddr, SocketAddr, Option<ecsmesh_agent_balance::Pick>)> {
        match &dest.target {
            Target::Set { all, local, hosts } => {
                let balancer = if side == Side::Incoming { local } else { all };
                let pick = balancer.pick(tried)?;
                let addr = pick.addr();
                let connect_to = match (side, self.config.mode) {
                    (Side::Outgoing, Mode::LinkerToLinker) => SocketAddr::new(
                        hosts.get(&addr).copied().unwrap_or(addr.ip()),
                        self.config.incoming_port,
                    ),
                    _ => addr,
                };
                Some((addr, connect_to, Some(pick)))
            }
            Target::Inet { host, port } => {
                let host = if host.is_empty() {
                    "127.0.0.1"
                } else {
                    host.as_str()
                };
                let addr = tokio::net::lookup_host((host, *port))
                    .await
                    .ok()?
                    .find(|a| !tried.contains(a))?;
                Some((addr, addr, None))
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

/// The pooled upstream clients, HTTP/1 and HTTP/2, over one connector:
/// the plaintext one, or a TLS one per remote-agent name (`crate::tls`).
#[derive(Clone, Debug)]
pub(crate) struct Pools<C> {
    http1: Client<C, Body>,
    http2: Client<C, Body>,
}

impl<C> Pools<C>
where
    C: hyper_util::client::legacy::connect::Connect + Clone + Send + Sync + 'static,
{
    pub(crate) fn new(connector: C) -> Self {
        Self {
            // Flattened writes (head and body in one buffer, one `write`):
            // with 64 B bodies, ~1.7 % more requests a second than writev
            // with its iovecs, and no difference at 4 KiB (bench/ab.sh,
            // results/ab-20261122-0548.md); the copy costs no more than
            // the iovecs save.
            http1: Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_mins(1))
                .http1_writev(false)
                .build(connector.clone()),
            http2: Client::builder(TokioExecutor::new())
                .http2_only(true)
                .build(connector),
        }
    }

    /// The pool for a request of `version`.
    pub(crate) fn for_version(&self, version: http::Version) -> &Client<C, Body> {
        if version == http::Version::HTTP_2 {
            &self.http2
        } else {
            &self.http1
        }
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

/// One attempt's request: the shared parts, the body (only the first
/// attempt has one), the chosen destination's headers and the address.
fn outbound_request(
    parts: &http::request::Parts,
    body: Option<Incoming>,
    dest: &Dest,
    connect_to: SocketAddr,
    left: Duration,
) -> Request<Body> {
    let body = match body {
        Some(b) => b.boxed(),
        None => Empty::new().map_err(|never| match never {}).boxed(),
    };
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
    *req.uri_mut() = absolute_uri(
        connect_to,
        parts
            .uri
            .path_and_query()
            .map(http::uri::PathAndQuery::as_str),
    );
    req
}

/// On the incoming side: the concrete set the sending agent chose
/// (`l5d-dst-client`), if it names a published set.
fn incoming_choice(
    table: &RouteTable,
    parts: &http::request::Parts,
    settings: &crate::routes::TableSettings,
) -> Option<(Path, Dest)> {
    let id = parts.headers.get(L5D_DST_CLIENT)?.to_str().ok()?;
    let id = Path::read(id).ok()?;
    names::kind(id.elems())?;
    let (_, endpoints) = ecsmesh_state::MeshNamer::new(&table.mesh).set(&id)?;
    let bound = ecsmesh_state::Bound::Set {
        id: id.clone(),
        endpoints: Arc::clone(endpoints),
        residual: Path::empty(),
    };
    let service = parts
        .headers
        .get(L5D_DST_SERVICE)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| Path::read(s).ok())
        .unwrap_or_else(|| id.clone());
    Some((service, table.dest(bound, settings)))
}

fn absolute_uri(addr: SocketAddr, path_and_query: Option<&str>) -> Uri {
    let pq = path_and_query.unwrap_or("/");
    format!("http://{addr}{pq}")
        .parse()
        .unwrap_or_else(|_| Uri::from_static("/"))
}

//! The agent's Prometheus metrics (admin `/metrics`), and the traffic
//! summary it sends the controller for the dashboard.
//!
//! Two levels, as in Linkerd: the *service* (the logical name a request was
//! routed by, `/svc/…`; counted once per request, after retries) and the
//! *client* (the concrete endpoint set an attempt went to, `/#/…`; counted
//! per attempt). Label values are bounded: past [`MAX_SERVICES`] distinct
//! services (or [`MAX_CLIENTS`] clients) further ones, and any longer than
//! [`MAX_LABEL_BYTES`], are counted under `other`, so arbitrary Host
//! headers cannot blow up the series count or their memory; no
//! label ever holds an endpoint address or a request attribute.
//!
//! The request path looks up its series once per name and keeps the handles
//! (atomic counters and lock-free histograms), so it touches no label
//! strings after the first request.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use ecsmesh_metrics::histogram::{LATENCY_BOUNDS, LatencyHistogram};
use ecsmesh_metrics::process::ProcessCollector;
use ecsmesh_proto::v1 as pb;
use http::StatusCode;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

use crate::labels::{AcceptErrorKind, Side};

/// Distinct service label values kept before the rest become `other`.
pub const MAX_SERVICES: usize = 500;
/// Distinct client label values kept before the rest become `other`.
pub const MAX_CLIENTS: usize = 500;
/// The longest label value kept; a longer name is counted as `other`
/// (each series holds its own copy: 500 names of a 64 KiB Host each, in a
/// dozen families, would be hundreds of MiB).
pub const MAX_LABEL_BYTES: usize = 256;

/// The label of requests whose destination could not be identified.
const UNIDENTIFIED: &str = "unidentified";
const OTHER: &str = "other";

/// Why a request (or an attempt) failed.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Class {
    Status5xx,
    ConnectFailure,
    /// The TLS handshake with the next agent failed.
    Tls,
    /// The connection closed or was reset after the request was sent.
    Reset,
    /// The endpoint's answer was not valid HTTP (or not the HTTP version
    /// asked for).
    Protocol,
    Timeout,
    NoHosts,
    /// A gRPC status the service's policy counts as a failure.
    GrpcStatus,
    /// The client's side of the exchange failed (a malformed or short
    /// body, a body not sent in time): counted per service, never against
    /// a client (endpoint set).
    ClientError,
}

impl Class {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Status5xx => "status_5xx",
            Self::ConnectFailure => "connect_failure",
            Self::Tls => "tls",
            Self::Reset => "reset",
            Self::Protocol => "protocol",
            Self::Timeout => "timeout",
            Self::NoHosts => "no_hosts",
            Self::GrpcStatus => "grpc_status",
            Self::ClientError => "client_error",
        }
    }
}

/// Why the proxy refused a request before routing it.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusedLabels {
    reason: &'static str,
}

impl EncodeLabelValue for Class {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        EncodeLabelValue::encode(&self.as_str(), encoder)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    direction: &'static str,
    service: String,
    status_class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LatencyLabels {
    direction: &'static str,
    service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailureLabels {
    service: String,
    class: Class,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabel {
    service: String,
}

/// Requests by the caller's and the endpoint's availability zones.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ZoneLabels {
    src_zone: String,
    dst_zone: String,
}

/// The requests-by-zone counters, resolved into each route table's zone
/// split once per update, so a request only increments one.
#[derive(Clone, Debug, Default)]
pub struct ZoneCounters(Family<ZoneLabels, Counter>);

impl ZoneCounters {
    pub fn counter(&self, here: &str, there: &str) -> Counter {
        self.0
            .get_or_create(&ZoneLabels {
                src_zone: here.to_owned(),
                dst_zone: there.to_owned(),
            })
            .clone()
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClientLabel {
    client: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClientStatusLabels {
    client: String,
    status_class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClientFailureLabels {
    client: String,
    class: Class,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabels {
    client: String,
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabel {
    listener: &'static str,
}

const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

fn status_class(status: StatusCode) -> usize {
    match status.as_u16() {
        100..=199 => 0,
        200..=299 => 1,
        300..=399 => 2,
        400..=499 => 3,
        _ => 4,
    }
}

/// One (direction, service)'s series.
#[derive(Debug)]
pub struct ServiceHandles {
    /// By status class: 1xx … 5xx.
    requests: [Counter; 5],
    latency: LatencyHistogram,
}

impl ServiceHandles {
    /// One finished request (see [`Metrics::request`]).
    pub fn record(&self, status: StatusCode, took: Duration) {
        self.requests[status_class(status)].inc();
        self.latency.observe(took);
    }
}

/// A service's handles: outgoing, incoming.
type DirectionHandles = [Option<Arc<ServiceHandles>>; 2];

/// One client's per-attempt series.
#[derive(Debug)]
pub struct ClientHandles {
    requests: [Counter; 5],
    latency: LatencyHistogram,
}

impl ClientHandles {
    /// One attempt that got a response (see [`Metrics::attempt`]).
    pub fn record(&self, status: StatusCode, took: Duration) {
        self.requests[status_class(status)].inc();
        self.latency.observe(took);
    }
}

/// One listener's connection and byte counters (shared with its
/// connections' I/O wrappers).
#[derive(Clone, Debug, Default)]
pub struct ListenerCounters {
    pub accepted: Counter,
    pub open: Gauge,
    pub received_bytes: Counter,
    pub sent_bytes: Counter,
}

/// The listener families; each listener's [`ListenerCounters`] are its
/// series in them.
#[derive(Default)]
struct ListenerFamilies {
    accepted: Family<ListenerLabel, Counter>,
    open: Family<ListenerLabel, Gauge>,
    received: Family<ListenerLabel, Counter>,
    sent: Family<ListenerLabel, Counter>,
}

impl ListenerFamilies {
    fn counters(&self, side: Side) -> ListenerCounters {
        let label = ListenerLabel {
            listener: side.as_str(),
        };
        ListenerCounters {
            accepted: self.accepted.get_or_create(&label).clone(),
            open: self.open.get_or_create(&label).clone(),
            received_bytes: self.received.get_or_create(&label).clone(),
            sent_bytes: self.sent.get_or_create(&label).clone(),
        }
    }
}

/// A connection a listener refused or closed because of a limit.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerReasonLabels {
    listener: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AcceptErrorLabels {
    listener: &'static str,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLimitLabels {
    listener: &'static str,
    limit: &'static str,
}

/// One listener's limit counters, shared (one `Arc`) with its connections.
#[derive(Debug, Default)]
pub struct LimitCounters {
    /// Connections closed at accept: the listener was at `max_connections`.
    pub refused_max_connections: Counter,
    pub closed_header_read_timeout: Counter,
    pub closed_idle_timeout: Counter,
    /// By [`AcceptErrorKind`].
    accept_errors: [Counter; AcceptErrorKind::ALL.len()],
}

impl LimitCounters {
    pub fn accept_error(&self, kind: AcceptErrorKind) {
        self.accept_errors[kind as usize].inc();
    }
}

/// The limit families; each listener's [`LimitCounters`] are its series
/// in them, all created at zero so rates exist before the first event.
#[derive(Default)]
struct LimitFamilies {
    refused: Family<ListenerReasonLabels, Counter>,
    closed: Family<ListenerReasonLabels, Counter>,
    accept_errors: Family<AcceptErrorLabels, Counter>,
}

impl LimitFamilies {
    fn counters(&self, side: Side) -> Arc<LimitCounters> {
        let listener = side.as_str();
        let reason = |family: &Family<ListenerReasonLabels, Counter>, reason| {
            family
                .get_or_create(&ListenerReasonLabels { listener, reason })
                .clone()
        };
        Arc::new(LimitCounters {
            refused_max_connections: reason(&self.refused, "max_connections"),
            closed_header_read_timeout: reason(&self.closed, "header_read_timeout"),
            closed_idle_timeout: reason(&self.closed, "idle_timeout"),
            accept_errors: AcceptErrorKind::ALL.map(|kind| {
                self.accept_errors
                    .get_or_create(&AcceptErrorLabels {
                        listener,
                        kind: kind.as_str(),
                    })
                    .clone()
            }),
        })
    }
}

/// Which time ran out.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum TimeoutKind {
    /// The whole request's, from its policy (or `request_timeout`).
    Total,
    /// One attempt's.
    Attempt,
    /// The request's own deadline (`l5d-ctx-deadline`, `grpc-timeout`),
    /// tighter than its policy's.
    Deadline,
}

impl TimeoutKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Total => "total",
            Self::Attempt => "attempt",
            Self::Deadline => "deadline",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TimeoutLabels {
    service: String,
    kind: &'static str,
}

/// What the admin server reads from the routing table at scrape time.
#[derive(Clone, Debug)]
pub struct ClientEndpoints {
    pub client: String,
    /// `None`: the set's balancer with the default settings; else the
    /// settings of one a policy made (counted in removals only).
    pub variant: Option<crate::policy::TargetKey>,
    pub total: usize,
    pub available: usize,
    /// Failure-accrual removals so far (cumulative for the set's life).
    pub removals: u64,
}

/// A bounded set of label values.
#[derive(Debug)]
struct Bounded {
    seen: Mutex<HashSet<String>>,
    limit: usize,
}

impl Bounded {
    fn new(limit: usize) -> Self {
        Self {
            seen: Mutex::new(HashSet::new()),
            limit,
        }
    }

    /// `value` itself while there is room (and it is short enough), else
    /// `other`.
    fn label(&self, value: &str) -> String {
        if value == UNIDENTIFIED {
            return value.to_owned();
        }
        if value.len() > MAX_LABEL_BYTES {
            return OTHER.to_owned();
        }
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        if seen.contains(value) {
            value.to_owned()
        } else if seen.len() < self.limit {
            seen.insert(value.to_owned());
            value.to_owned()
        } else {
            OTHER.to_owned()
        }
    }
}

#[derive(Debug)]
pub struct Metrics {
    registry: Mutex<Registry>,
    services: Bounded,
    clients: Bounded,
    /// Per service: outgoing and incoming handles.
    service_handles: Mutex<HashMap<Arc<str>, DirectionHandles>>,
    client_handles: Mutex<HashMap<Arc<str>, Arc<ClientHandles>>>,
    requests: Family<RequestLabels, Counter>,
    latency: Family<LatencyLabels, LatencyHistogram>,
    failures: Family<FailureLabels, Counter>,
    retries: Family<ServiceLabel, Counter>,
    budget_exhausted: Family<ServiceLabel, Counter>,
    client_requests: Family<ClientStatusLabels, Counter>,
    client_latency: Family<ClientLabel, LatencyHistogram>,
    client_failures: Family<ClientFailureLabels, Counter>,
    client_endpoints: Family<EndpointLabels, Gauge>,
    client_removals: Family<ClientLabel, Counter>,
    /// The balancers' removal counts at the last scrape, to add only the difference.
    removals_seen: Mutex<HashMap<(String, Option<crate::policy::TargetKey>), u64>>,
    timeouts: Family<TimeoutLabels, Counter>,
    concurrency_rejections: Family<ServiceLabel, Counter>,
    /// Service policies in force.
    pub policies: Gauge,
    listeners: [ListenerCounters; 2],
    pub control_connected: Gauge,
    pub snapshot_version: Gauge,
    pub last_update_age_seconds: Gauge<f64, AtomicU64>,
    pub tls_handshake_failures: Family<TlsFailureLabels, Counter>,
    refused: Family<RefusedLabels, Counter>,
    downgrades: Family<ClientLabel, Counter>,
    pub zone_requests: ZoneCounters,
    limit_counters: [Arc<LimitCounters>; 2],
    /// Each listener's configured limits, so alerts can compare usage to them.
    listener_limits: Family<ListenerLimitLabels, Gauge<f64, AtomicU64>>,
    /// The runtime's request-serving threads.
    pub worker_threads: Gauge,
    /// Requests answered on the HTTP/1 fast path.
    pub fast_path_requests: Counter,
    fast_path_declines: Family<RefusedLabels, Counter>,
}

/// A refused TLS handshake: on which listener, and why.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TlsFailureLabels {
    pub listener: &'static str,
    pub reason: &'static str,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    #[allow(clippy::too_many_lines)] // one registration per family
    pub fn new() -> Self {
        let listeners = ListenerFamilies::default();
        let limits = LimitFamilies::default();
        let m = Self {
            registry: Mutex::new(Registry::default()),
            services: Bounded::new(MAX_SERVICES),
            clients: Bounded::new(MAX_CLIENTS),
            service_handles: Mutex::new(HashMap::new()),
            client_handles: Mutex::new(HashMap::new()),
            requests: Family::default(),
            latency: Family::default(),
            failures: Family::default(),
            retries: Family::default(),
            budget_exhausted: Family::default(),
            client_requests: Family::default(),
            client_latency: Family::default(),
            client_failures: Family::default(),
            client_endpoints: Family::default(),
            client_removals: Family::default(),
            removals_seen: Mutex::new(HashMap::new()),
            timeouts: Family::default(),
            concurrency_rejections: Family::default(),
            policies: Gauge::default(),
            listeners: [Side::Outgoing, Side::Incoming].map(|side| listeners.counters(side)),
            control_connected: Gauge::default(),
            snapshot_version: Gauge::default(),
            last_update_age_seconds: Gauge::default(),
            tls_handshake_failures: Family::default(),
            refused: Family::default(),
            downgrades: Family::default(),
            zone_requests: ZoneCounters::default(),
            limit_counters: [Side::Outgoing, Side::Incoming].map(|side| limits.counters(side)),
            listener_limits: Family::default(),
            worker_threads: Gauge::default(),
            fast_path_requests: Counter::default(),
            fast_path_declines: Family::default(),
        };
        {
            let mut root = m.registry.lock().unwrap_or_else(PoisonError::into_inner);
            root.register_collector(Box::new(ProcessCollector::new()));
            let r = root.sub_registry_with_prefix("ecsmesh_agent");
            r.register(
                "requests",
                "Requests by direction, logical service and response status class",
                m.requests.clone(),
            );
            r.register_with_unit(
                "request_duration",
                "Request latency as the calling application sees it, retries included",
                Unit::Seconds,
                m.latency.clone(),
            );
            r.register(
                "failures",
                "Failed requests and attempts by logical service and failure class",
                m.failures.clone(),
            );
            r.register(
                "retries",
                "Attempts retried on another endpoint, by logical service",
                m.retries.clone(),
            );
            r.register(
                "retry_budget_exhausted",
                "Retries not made because the retry budget was spent",
                m.budget_exhausted.clone(),
            );
            r.register(
                "timeouts",
                "Requests and attempts that ran out of time, by logical service and kind (total: the policy's total timeout, attempt: an attempt's, deadline: the request's own l5d-ctx-deadline or grpc-timeout)",
                m.timeouts.clone(),
            );
            r.register(
                "concurrency_rejections",
                "Requests failed fast (503) because every endpoint had its policy's max_concurrent_requests in flight, by logical service",
                m.concurrency_rejections.clone(),
            );
            r.register(
                "policies",
                "Service policies in force (admin /policies lists them)",
                m.policies.clone(),
            );
            r.register(
                "client_requests",
                "Attempts by concrete client (endpoint set) and response status class",
                m.client_requests.clone(),
            );
            r.register_with_unit(
                "client_request_duration",
                "Latency of single attempts, by concrete client",
                Unit::Seconds,
                m.client_latency.clone(),
            );
            r.register(
                "client_failures",
                "Failed attempts by concrete client and failure class",
                m.client_failures.clone(),
            );
            r.register(
                "client_endpoints",
                "Endpoints of a concrete client: all of them (total) and those failure accrual has not removed (available)",
                m.client_endpoints.clone(),
            );
            r.register(
                "client_failure_accrual_removals",
                "Endpoints removed by failure accrual, by concrete client",
                m.client_removals.clone(),
            );
            r.register(
                "connections",
                "Connections accepted, by listener",
                listeners.accepted,
            );
            r.register(
                "open_connections",
                "Connections open now, by listener",
                listeners.open,
            );
            r.register_with_unit(
                "received",
                "Bytes read from connections, by listener",
                Unit::Bytes,
                listeners.received,
            );
            r.register_with_unit(
                "sent",
                "Bytes written to connections, by listener",
                Unit::Bytes,
                listeners.sent,
            );
            r.register(
                "tls_handshake_failures",
                "TLS handshakes refused, by listener and reason",
                m.tls_handshake_failures.clone(),
            );
            r.register(
                "refused_requests",
                "Requests refused before they were sent, by reason (dtab_header_too_large, fixed_address_override, local_address_override)",
                m.refused.clone(),
            );
            r.register(
                "zone_requests",
                "Attempts sent by zone-aware balancing, by this agent's zone and the endpoint's (src_zone, dst_zone)",
                m.zone_requests.0.clone(),
            );
            r.register(
                "protocol_downgrades",
                "h2c requests sent as HTTP/1.1 because the endpoint speaks only HTTP/1, by concrete client",
                m.downgrades.clone(),
            );
            r.register(
                "fast_path_requests",
                "Requests answered on the outgoing listener's HTTP/1 fast path",
                m.fast_path_requests.clone(),
            );
            r.register(
                "fast_path_declines",
                "Requests the HTTP/1 fast path left to the general path (which then serves the rest of their connection), by reason",
                m.fast_path_declines.clone(),
            );
            r.register(
                "worker_threads",
                "Threads serving requests (worker_threads)",
                m.worker_threads.clone(),
            );
            r.register(
                "control_connected",
                "1 while the controller stream is open",
                m.control_connected.clone(),
            );
            r.register(
                "snapshot_version",
                "Version of the mesh state in force",
                m.snapshot_version.clone(),
            );
            r.register_with_unit(
                "last_update_age",
                "Time since the mesh state last changed",
                Unit::Seconds,
                m.last_update_age_seconds.clone(),
            );
            r.register(
                "listener_refused_connections",
                "Connections closed at accept because of a limit, by listener and reason",
                limits.refused,
            );
            r.register(
                "listener_closed_connections",
                "Connections closed by a timeout, by listener and reason",
                limits.closed,
            );
            r.register(
                "listener_accept_errors",
                "Failed accepts, by listener and kind (emfile: out of file descriptors)",
                limits.accept_errors,
            );
            r.register(
                "listener_limit",
                "Each listener's configured limits (timeouts in seconds)",
                m.listener_limits.clone(),
            );
        }
        m
    }

    /// A listener's limit counters.
    pub fn limits(&self, side: Side) -> &Arc<LimitCounters> {
        &self.limit_counters[usize::from(side == Side::Incoming)]
    }

    /// Publishes one of a listener's configured limits.
    pub fn set_listener_limit(&self, side: Side, limit: &'static str, value: f64) {
        self.listener_limits
            .get_or_create(&ListenerLimitLabels {
                listener: side.as_str(),
                limit,
            })
            .set(value);
    }

    /// A listener's counters (its connections count their bytes into them).
    pub fn listener(&self, side: Side) -> &ListenerCounters {
        &self.listeners[usize::from(side == Side::Incoming)]
    }

    /// One finished request, as the calling application saw it.
    pub fn request(&self, side: Side, service: Option<&str>, status: StatusCode, took: Duration) {
        self.service_handles(side, service.unwrap_or(UNIDENTIFIED))
            .record(status, took);
    }

    /// A service's request series, to keep and record into without the
    /// lookup (the HTTP/1 fast path caches them per route).
    pub fn service_handles(&self, side: Side, service: &str) -> Arc<ServiceHandles> {
        let slot = usize::from(side == Side::Incoming);
        let mut all = self
            .service_handles
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(Some(h)) = all.get(service).map(|s| &s[slot]) {
            return Arc::clone(h);
        }
        let label = self.services.label(service);
        // Past the label limit, every further service shares `other`'s
        // handles, and no key is kept for it (the map stays bounded too).
        if label != service
            && let Some(Some(h)) = all.get(label.as_str()).map(|s| &s[slot])
        {
            return Arc::clone(h);
        }
        let direction = side.as_str();
        let requests = STATUS_CLASSES.map(|status_class| {
            self.requests
                .get_or_create(&RequestLabels {
                    direction,
                    service: label.clone(),
                    status_class,
                })
                .clone()
        });
        let latency = self
            .latency
            .get_or_create(&LatencyLabels {
                direction,
                service: label.clone(),
            })
            .clone();
        // Zero-valued series from the start, so ratios and rates over
        // them exist before the first retry does.
        let _ = self.retries.get_or_create(&ServiceLabel {
            service: label.clone(),
        });
        let _ = self.budget_exhausted.get_or_create(&ServiceLabel {
            service: label.clone(),
        });
        let h = Arc::new(ServiceHandles { requests, latency });
        all.entry(Arc::from(label)).or_default()[slot] = Some(Arc::clone(&h));
        h
    }

    /// One attempt to a concrete client that got a response.
    pub fn attempt(&self, client: &str, status: StatusCode, took: Duration) {
        self.client_handles(client).record(status, took);
    }

    /// A client's attempt series, to keep (see [`Self::service_handles`]).
    pub fn client_handles(&self, client: &str) -> Arc<ClientHandles> {
        let mut all = self
            .client_handles
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(h) = all.get(client) {
            return Arc::clone(h);
        }
        let label = self.clients.label(client);
        if let Some(h) = all.get(label.as_str()) {
            return Arc::clone(h);
        }
        let requests = STATUS_CLASSES.map(|status_class| {
            self.client_requests
                .get_or_create(&ClientStatusLabels {
                    client: label.clone(),
                    status_class,
                })
                .clone()
        });
        let latency = self
            .client_latency
            .get_or_create(&ClientLabel {
                client: label.clone(),
            })
            .clone();
        let h = Arc::new(ClientHandles { requests, latency });
        all.insert(Arc::from(label), Arc::clone(&h));
        h
    }

    /// A failed request or attempt of `service` (and, when an attempt was
    /// made, of the concrete `client`).
    pub fn failure(&self, service: &str, client: Option<&str>, class: Class) {
        let service = self.services.label(service);
        self.failures
            .get_or_create(&FailureLabels { service, class })
            .inc();
        if let Some(client) = client {
            let client = self.clients.label(client);
            self.client_failures
                .get_or_create(&ClientFailureLabels { client, class })
                .inc();
        }
    }

    /// A request refused before it was sent anywhere: `reason` is
    /// `dtab_header_too_large`, `fixed_address_override` or
    /// `local_address_override`.
    pub fn refused(&self, reason: &'static str) {
        self.refused.get_or_create(&RefusedLabels { reason }).inc();
    }

    /// A request the HTTP/1 fast path left to the general path.
    pub fn fast_path_declined(&self, reason: &'static str) {
        self.fast_path_declines
            .get_or_create(&RefusedLabels { reason })
            .inc();
    }

    /// An endpoint found to speak only HTTP/1 (the request is resent).
    pub fn downgrade(&self, client: &str) {
        let client = self.clients.label(client);
        self.downgrades.get_or_create(&ClientLabel { client }).inc();
    }

    /// A request or an attempt that ran out of time.
    pub fn timeout(&self, service: &str, kind: TimeoutKind) {
        let service = self.services.label(service);
        self.timeouts
            .get_or_create(&TimeoutLabels {
                service,
                kind: kind.as_str(),
            })
            .inc();
    }

    /// A request failed fast: every endpoint was at its in-flight limit.
    pub fn concurrency_rejection(&self, service: &str) {
        let service = self.services.label(service);
        self.concurrency_rejections
            .get_or_create(&ServiceLabel { service })
            .inc();
    }

    pub fn retry(&self, service: &str) {
        let service = self.services.label(service);
        self.retries.get_or_create(&ServiceLabel { service }).inc();
    }

    pub fn retry_budget_exhausted(&self, service: &str) {
        let service = self.services.label(service);
        self.budget_exhausted
            .get_or_create(&ServiceLabel { service })
            .inc();
    }

    /// Refreshes the endpoint gauges and removal counters from the routing
    /// table (at scrape time). Sets no longer published lose their series.
    pub fn set_clients(&self, clients: impl IntoIterator<Item = ClientEndpoints>) {
        self.client_endpoints.clear();
        let mut seen = self
            .removals_seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut now = HashMap::with_capacity(seen.len());
        let mut sums: HashMap<String, (usize, usize)> = HashMap::new();
        for c in clients {
            let key = (c.client, c.variant);
            let before = seen.get(&key).copied().unwrap_or(0);
            // A set rebuilt from nothing restarts its count.
            let added = c.removals.checked_sub(before).unwrap_or(c.removals);
            let label = self.clients.label(&key.0);
            // Created at zero for every set, so rates over it exist.
            self.client_removals
                .get_or_create(&ClientLabel {
                    client: label.clone(),
                })
                .inc_by(added);
            if key.1.is_none() {
                let sum = sums.entry(label).or_default();
                sum.0 += c.total;
                sum.1 += c.available;
            }
            now.insert(key, c.removals);
        }
        *seen = now;
        drop(seen);
        for (client, (total, available)) in sums {
            for (state, n) in [("total", total), ("available", available)] {
                self.client_endpoints
                    .get_or_create(&EndpointLabels {
                        client: client.clone(),
                        state,
                    })
                    .set(i64::try_from(n).unwrap_or(i64::MAX));
            }
        }
    }

    /// The traffic summary for the controller: every service whose request
    /// count differs from `previous` (all of them when it is empty), which
    /// is updated to the new counts.
    pub fn summary(&self, previous: &mut HashMap<(Arc<str>, Side), u64>) -> pb::TrafficSummary {
        let mut services = Vec::new();
        let all = self
            .service_handles
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for (name, sides) in all.iter() {
            for (side, handles) in [Side::Outgoing, Side::Incoming].into_iter().zip(sides) {
                let Some(h) = handles else { continue };
                let counts = h.requests.each_ref().map(Counter::get);
                let requests: u64 = counts.iter().sum();
                let key = (Arc::clone(name), side);
                if previous.get(&key) == Some(&requests) {
                    continue;
                }
                previous.insert(key, requests);
                services.push(pb::ServiceTraffic {
                    service: name.to_string(),
                    direction: side.as_str().to_owned(),
                    requests,
                    successes: requests - counts[4],
                    status_4xx: counts[3],
                    status_5xx: counts[4],
                    latency_counts: h.latency.snapshot().counts,
                });
            }
        }
        drop(all);
        let process = ecsmesh_metrics::process::ProcessStats::read();
        pb::TrafficSummary {
            agent_start_unix: process.start_time_unix,
            sent_unix: ecsmesh_metrics::unix_now(),
            latency_bounds_seconds: LATENCY_BOUNDS.to_vec(),
            services,
            resident_memory_bytes: process.resident_memory_bytes,
            cpu_seconds: process.cpu_seconds,
        }
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn encode(&self) -> String {
        ecsmesh_metrics::encode(&self.registry.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

//! The agent's Prometheus metrics (admin `/metrics`). Service labels are
//! bounded: past [`MAX_SERVICES`] distinct logical names, further ones are
//! counted under `other`, so arbitrary Host headers cannot blow up the
//! series count.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use http::StatusCode;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use crate::proxy::Side;

/// Distinct service label values kept before the rest become `other`.
pub const MAX_SERVICES: usize = 500;

/// Why a request (or an attempt) failed.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum Class {
    Status5xx,
    ConnectFailure,
    Timeout,
    NoHosts,
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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabel {
    direction: &'static str,
}

/// One (direction, service)'s series, looked up once and kept: the request
/// path then touches no label strings.
#[derive(Debug)]
struct ServiceHandles {
    /// By status class: 1xx … 5xx.
    requests: [Counter; 5],
    latency: Histogram,
}

/// A service's handles: outgoing, incoming.
type DirectionHandles = [Option<Arc<ServiceHandles>>; 2];

const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

#[derive(Debug)]
pub struct Metrics {
    registry: Mutex<Registry>,
    services: Mutex<HashSet<String>>,
    /// Per service label: outgoing and incoming handles.
    handles: Mutex<HashMap<Arc<str>, DirectionHandles>>,
    requests: Family<RequestLabels, Counter>,
    latency: Family<LatencyLabels, Histogram>,
    failures: Family<FailureLabels, Counter>,
    retries: Family<ServiceLabel, Counter>,
    connections: Family<DirectionLabel, Counter>,
    pub control_connected: Gauge,
    pub snapshot_version: Gauge,
    pub last_update_age_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let latency: Family<LatencyLabels, Histogram> =
            Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.0001, 2.0, 18)));
        let m = Self {
            registry: Mutex::new(Registry::with_prefix("ecsmesh_agent")),
            services: Mutex::new(HashSet::new()),
            handles: Mutex::new(HashMap::new()),
            requests: Family::default(),
            latency,
            failures: Family::default(),
            retries: Family::default(),
            connections: Family::default(),
            control_connected: Gauge::default(),
            snapshot_version: Gauge::default(),
            last_update_age_seconds: Gauge::default(),
        };
        {
            let mut r = m.registry.lock().unwrap_or_else(PoisonError::into_inner);
            r.register(
                "requests",
                "Requests by direction, logical service and status class",
                m.requests.clone(),
            );
            r.register_with_unit(
                "request_duration",
                "Request latency as the client sees it (100 µs to ~13 s)",
                Unit::Seconds,
                m.latency.clone(),
            );
            r.register(
                "failures",
                "Failed requests and attempts by class",
                m.failures.clone(),
            );
            r.register(
                "retries",
                "Attempts retried on another endpoint",
                m.retries.clone(),
            );
            r.register(
                "connections",
                "Accepted connections by listener",
                m.connections.clone(),
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
        }
        m
    }

    /// The label for `service`, bounded.
    fn label(&self, service: Option<&str>) -> String {
        let Some(service) = service else {
            return "unidentified".to_owned();
        };
        let mut seen = self.services.lock().unwrap_or_else(PoisonError::into_inner);
        if seen.contains(service) {
            return service.to_owned();
        }
        if seen.len() < MAX_SERVICES {
            seen.insert(service.to_owned());
            service.to_owned()
        } else {
            "other".to_owned()
        }
    }

    pub fn connection(&self, side: Side) {
        self.connections
            .get_or_create(&DirectionLabel {
                direction: side.as_str(),
            })
            .inc();
    }

    pub fn request(&self, side: Side, service: Option<&str>, status: StatusCode, took: Duration) {
        let class = match status.as_u16() {
            100..=199 => 0,
            200..=299 => 1,
            300..=399 => 2,
            400..=499 => 3,
            _ => 4,
        };
        let handles = self.handles(side, service.unwrap_or("unidentified"));
        handles.requests[class].inc();
        handles.latency.observe(took.as_secs_f64());
    }

    fn handles(&self, side: Side, service: &str) -> Arc<ServiceHandles> {
        let slot = usize::from(side == Side::Incoming);
        let mut all = self.handles.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(Some(h)) = all.get(service).map(|s| &s[slot]) {
            return Arc::clone(h);
        }
        let label = if service == "unidentified" {
            service.to_owned()
        } else {
            self.label(Some(service))
        };
        // Past the label limit, every further service shares `other`'s
        // handles, and no key is kept for it (the map stays bounded too).
        if label != service
            && let Some(Some(h)) = all.get(label.as_str()).map(|s| &s[slot])
        {
            return Arc::clone(h);
        }
        let key = if label == service { service } else { "other" };
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
                service: label,
            })
            .clone();
        let h = Arc::new(ServiceHandles { requests, latency });
        all.entry(Arc::from(key)).or_default()[slot] = Some(Arc::clone(&h));
        h
    }

    pub fn failure(&self, service: &str, class: Class) {
        let service = self.label(Some(service));
        self.failures
            .get_or_create(&FailureLabels { service, class })
            .inc();
    }

    pub fn retry(&self, service: &str) {
        let service = self.label(Some(service));
        self.retries.get_or_create(&ServiceLabel { service }).inc();
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn encode(&self) -> String {
        ecsmesh_metrics::encode(&self.registry.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

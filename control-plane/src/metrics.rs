//! The controller's Prometheus metrics, served at the admin `/metrics`.

use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

/// An external API call: which API (`ecs`, `ec2`, `consul`) and operation.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApiCall {
    pub api: &'static str,
    pub operation: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AgentLabel {
    pub instance_id: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TlsFailure {
    pub reason: &'static str,
}

/// What became of an ECS event from the queue.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventOutcome {
    pub result: &'static str,
}

/// Why a client's input was refused or cut (see [`crate::limits`]).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Refusal {
    pub reason: &'static str,
}

#[derive(Debug)]
pub struct Metrics {
    registry: Mutex<Registry>,
    reconcile_seconds: Histogram,
    snapshot_version: Gauge,
    api_calls: Family<ApiCall, Counter>,
    api_errors: Family<ApiCall, Counter>,
    agents_connected: Gauge,
    agent_lag: Family<AgentLabel, Gauge>,
    push_latency_seconds: Histogram,
    tls_handshake_failures: Family<TlsFailure, Counter>,
    dtab_writes_refused: Family<Refusal, Counter>,
    policy_writes_refused: Family<Refusal, Counter>,
    summary_services_dropped: Family<Refusal, Counter>,
    agent_messages_refused: Family<Refusal, Counter>,
    agent_streams_refused: Family<Refusal, Counter>,
    traffic_services: Gauge,
    api_throttles: Family<ApiCall, Counter>,
    ecs_events: Family<EventOutcome, Counter>,
    api_budget_rate: Gauge<f64, std::sync::atomic::AtomicU64>,
    api_budget_wait_seconds: Counter<f64, std::sync::atomic::AtomicU64>,
    leader: Gauge,
    leader_changes: Counter,
    following: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let m = Self {
            registry: Mutex::new(Registry::default()),
            // 100 µs to ~13 s.
            reconcile_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 18)),
            snapshot_version: Gauge::default(),
            api_calls: Family::default(),
            api_errors: Family::default(),
            agents_connected: Gauge::default(),
            agent_lag: Family::default(),
            // 100 µs to ~26 s.
            push_latency_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 19)),
            tls_handshake_failures: Family::default(),
            dtab_writes_refused: Family::default(),
            policy_writes_refused: Family::default(),
            summary_services_dropped: Family::default(),
            agent_messages_refused: Family::default(),
            agent_streams_refused: Family::default(),
            api_throttles: Family::default(),
            ecs_events: Family::default(),
            api_budget_rate: Gauge::default(),
            api_budget_wait_seconds: Counter::default(),
            traffic_services: Gauge::default(),
            leader: Gauge::default(),
            leader_changes: Counter::default(),
            following: Gauge::default(),
        };
        {
            let mut root = m.registry();
            root.register_collector(Box::new(ecsmesh_metrics::process::ProcessCollector::new()));
            let r = root.sub_registry_with_prefix("ecsmesh_controller");
            r.register_with_unit(
                "reconcile_duration",
                "Time to compute the desired mesh state",
                Unit::Seconds,
                m.reconcile_seconds.clone(),
            );
            r.register(
                "snapshot_version",
                "Version of the published mesh state",
                m.snapshot_version.clone(),
            );
            r.register(
                "api_calls",
                "Calls to ECS, EC2 and Consul, by operation",
                m.api_calls.clone(),
            );
            r.register(
                "api_errors",
                "Failed calls to ECS, EC2 and Consul, by operation",
                m.api_errors.clone(),
            );
            r.register(
                "agents_connected",
                "Agents with an open stream",
                m.agents_connected.clone(),
            );
            r.register(
                "agent_lag_versions",
                "Versions between the published state and the agent's last ACK",
                m.agent_lag.clone(),
            );
            r.register_with_unit(
                "push_latency",
                "Time from publishing a version to an agent's ACK of it",
                Unit::Seconds,
                m.push_latency_seconds.clone(),
            );
            m.register_bounds_and_budget(r);
        }
        m
    }

    /// The refusal counters (hostile input) and the ECS/EC2 call budget.
    fn register_bounds_and_budget(&self, r: &mut Registry) {
        r.register(
            "tls_handshake_failures",
            "TLS handshakes refused on the gRPC port, by reason",
            self.tls_handshake_failures.clone(),
        );
        r.register(
            "dtab_writes_refused",
            "Dtab writes refused by a bound, by reason (dtab_too_large, too_many_namespaces, invalid_namespace)",
            self.dtab_writes_refused.clone(),
        );
        r.register(
            "policy_writes_refused",
            "Service policy writes refused by validation or a bound, by reason (invalid_policy, invalid_prefix, too_many_policies)",
            self.policy_writes_refused.clone(),
        );
        r.register(
            "summary_services_dropped",
            "Services dropped from agents' traffic summaries, by reason (summary_limit, service_limit, name_too_long)",
            self.summary_services_dropped.clone(),
        );
        r.register(
            "agent_messages_refused",
            "Agent stream messages refused (the stream is closed), by reason (too_large)",
            self.agent_messages_refused.clone(),
        );
        r.register(
            "agent_streams_refused",
            "Mesh streams refused at admission, by reason (no_certificate, identity, no_token, bad_token, certificate_instance, unknown_instance, host_ip, unknown_cluster, not_ready)",
            self.agent_streams_refused.clone(),
        );
        r.register(
            "api_throttles",
            "ECS and EC2 calls answered with throttling, by operation (each halves the call budget's rate)",
            self.api_throttles.clone(),
        );
        r.register(
            "ecs_events",
            "ECS events read from the queue, by result (applied, stale, ignored, malformed, other_cluster)",
            self.ecs_events.clone(),
        );
        r.register(
            "api_budget_rate",
            "The ECS/EC2 call budget's current rate, calls per second",
            self.api_budget_rate.clone(),
        );
        r.register_with_unit(
            "api_budget_wait",
            "Time ECS and EC2 calls waited for the call budget",
            Unit::Seconds,
            self.api_budget_wait_seconds.clone(),
        );
        r.register(
            "leader",
            "1 while this replica holds the leader lease (watches ECS and Consul), else 0",
            self.leader.clone(),
        );
        r.register(
            "leader_changes",
            "Times this replica took or lost the leader lease",
            self.leader_changes.clone(),
        );
        r.register(
            "following_leader",
            "1 while a follower receives the leader's mesh stream, else 0",
            self.following.clone(),
        );
        r.register(
            "traffic_services",
            "Distinct service names kept from the agents' traffic summaries",
            self.traffic_services.clone(),
        );
    }

    fn registry(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.registry
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn observe_reconcile(&self, took: Duration, version: u64) {
        self.reconcile_seconds.observe(took.as_secs_f64());
        self.snapshot_version
            .set(i64::try_from(version).unwrap_or(i64::MAX));
    }

    pub fn api_call(&self, api: &'static str, operation: &'static str, ok: bool) {
        let labels = ApiCall { api, operation };
        self.api_calls.get_or_create(&labels).inc();
        // The error series exists (at zero) from the first call on.
        let errors = self.api_errors.get_or_create(&labels);
        if !ok {
            errors.inc();
        }
    }

    pub fn api_throttled(&self, api: &'static str, operation: &'static str) {
        self.api_throttles
            .get_or_create(&ApiCall { api, operation })
            .inc();
    }

    pub fn ecs_event(&self, result: &'static str) {
        self.ecs_events
            .get_or_create(&EventOutcome { result })
            .inc();
    }

    pub fn set_api_budget_rate(&self, rate: f64) {
        self.api_budget_rate.set(rate);
    }

    pub fn api_budget_wait(&self, waited: Duration) {
        if !waited.is_zero() {
            self.api_budget_wait_seconds.inc_by(waited.as_secs_f64());
        }
    }

    pub fn tls_handshake_failure(&self, reason: &'static str) {
        self.tls_handshake_failures
            .get_or_create(&TlsFailure { reason })
            .inc();
    }

    pub fn dtab_write_refused(&self, reason: &'static str) {
        self.dtab_writes_refused
            .get_or_create(&Refusal { reason })
            .inc();
    }

    pub fn policy_write_refused(&self, reason: &'static str) {
        self.policy_writes_refused
            .get_or_create(&Refusal { reason })
            .inc();
    }

    pub fn summary_services_dropped(&self, reason: &'static str, services: u64) {
        if services > 0 {
            self.summary_services_dropped
                .get_or_create(&Refusal { reason })
                .inc_by(services);
        }
    }

    pub fn agent_message_refused(&self, reason: &'static str) {
        self.agent_messages_refused
            .get_or_create(&Refusal { reason })
            .inc();
    }

    pub fn agent_stream_refused(&self, reason: &'static str) {
        self.agent_streams_refused
            .get_or_create(&Refusal { reason })
            .inc();
    }

    /// Sets the distinct service names kept (at scrape time).
    /// Whether this replica leads; counts changes.
    pub fn set_leader(&self, leading: bool) {
        let now = i64::from(leading);
        if self.leader.set(now) != now {
            self.leader_changes.inc();
        }
    }

    pub fn set_following(&self, following: bool) {
        self.following.set(i64::from(following));
    }

    pub fn set_traffic_services(&self, services: usize) {
        self.traffic_services
            .set(i64::try_from(services).unwrap_or(i64::MAX));
    }

    pub fn observe_push(&self, latency: Duration) {
        self.push_latency_seconds.observe(latency.as_secs_f64());
    }

    /// Refreshes the per-agent gauges (at scrape time, from the registry).
    pub fn set_agents(&self, connected: usize, lags: impl IntoIterator<Item = (String, u64)>) {
        self.agents_connected
            .set(i64::try_from(connected).unwrap_or(i64::MAX));
        self.agent_lag.clear();
        for (instance_id, lag) in lags {
            self.agent_lag
                .get_or_create(&AgentLabel { instance_id })
                .set(i64::try_from(lag).unwrap_or(i64::MAX));
        }
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn encode(&self) -> String {
        ecsmesh_metrics::encode(&self.registry())
    }
}

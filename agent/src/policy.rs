//! Per-service traffic policies as the agent applies them (issue #18).
//!
//! The controller streams [`ecsmesh_policy::ServicePolicy`] documents by
//! service-name prefix with the mesh state; every field a policy leaves
//! out keeps the agent's configured default ([`Defaults`]). A routing
//! table resolves every stored policy once into a [`Policy`] — the
//! policy merged over the defaults, with its own retry budget — and each
//! routing decision carries the one for its service, so a request reads
//! its settings without a lookup. A policy whose document and version are
//! unchanged keeps its `Policy` (budget included) across table rebuilds; a
//! changed one keeps its budget while the budget's parameters stay the same.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use ecsmesh_agent_balance::{
    AccrualConfig, BalancerConfig, Classifier, RetryBudget, RetryBudgetConfig, Strategy,
    SuccessRateAccrual,
};
use ecsmesh_dtab::{Label, Path};
use ecsmesh_policy::{
    AccrualKind, Backoff, BalancerKind, GrpcClassifier, HttpClassifier, PolicySet, ServicePolicy,
    Versioned,
};

/// What applies where no policy says otherwise: the agent's configuration.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Defaults {
    /// The whole request, retries included (`request_timeout`).
    pub total_timeout: Duration,
    pub attempt_timeout: Duration,
    /// Attempts in all (`max_retries` + 1).
    pub max_attempts: u32,
    pub budget: RetryBudgetConfig,
    pub classifier: Classifier,
}

impl Default for Defaults {
    fn default() -> Self {
        Self {
            total_timeout: Duration::from_secs(10),
            attempt_timeout: Duration::from_secs(5),
            max_attempts: 4,
            budget: RetryBudgetConfig::default(),
            classifier: Classifier::RetryableIdempotent5XX,
        }
    }
}

/// What a set's balancers are built with: one balancer per distinct value
/// per set, so services whose policies differ here do not share accrual
/// state or in-flight limits.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TargetSettings {
    pub balancer: BalancerConfig,
    pub zone_aware: bool,
}

/// [`TargetSettings`] as a hashable key (floats by their bits).
pub type TargetKey = [u64; 11];

impl TargetSettings {
    pub fn key(&self) -> TargetKey {
        let nanos = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let b = &self.balancer;
        let a = &b.failure_accrual;
        let strategy = match b.strategy {
            Strategy::PeakEwma => 0,
            Strategy::RoundRobin => 1,
            Strategy::LeastRequests => 2,
        };
        let (rate, window) = a
            .success_rate
            .map_or((0, 0), |s| (s.rate.to_bits(), u64::from(s.requests)));
        [
            strategy,
            nanos(b.decay),
            nanos(b.default_rtt),
            u64::from(a.consecutive_failures),
            rate,
            window,
            nanos(a.backoff_min),
            nanos(a.backoff_max),
            a.jitter.to_bits(),
            u64::from(b.max_concurrent),
            u64::from(self.zone_aware),
        ]
    }
}

/// The gRPC classifier as bit sets of status codes (0 to 16).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GrpcCodes {
    retryable: u32,
    failures: u32,
}

impl GrpcCodes {
    fn new(c: &GrpcClassifier) -> Self {
        let bits = |codes: &[ecsmesh_policy::GrpcCode]| {
            codes
                .iter()
                .filter(|c| c.0 < 32)
                .fold(0_u32, |acc, c| acc | 1 << c.0)
        };
        Self {
            retryable: bits(&c.retryable),
            failures: bits(&c.failures),
        }
    }

    /// Whether any code may be retried.
    pub fn any_retryable(self) -> bool {
        self.retryable != 0
    }

    /// Whether `code` may be retried.
    pub fn is_retryable(self, code: u32) -> bool {
        code < 32 && self.retryable & (1 << code) != 0
    }

    /// Whether `code` counts as a failure (a retryable code does too).
    pub fn is_failure(self, code: u32) -> bool {
        code < 32 && (self.failures | self.retryable) & (1 << code) != 0
    }
}

/// Where a policy came from: the prefix it is stored under, its version
/// and its canonical document.
#[derive(Debug)]
pub struct Source {
    pub prefix: Path,
    pub version: u64,
    pub canonical: String,
}

/// The settings one service's requests are held to.
#[derive(Debug)]
pub struct Policy {
    /// `None`: the agent's defaults (no policy matched).
    pub source: Option<Source>,
    pub total_timeout: Duration,
    pub attempt_timeout: Duration,
    /// Attempts in all, the first included (at least 1).
    pub max_attempts: u32,
    pub budget: Arc<RetryBudget>,
    budget_config: RetryBudgetConfig,
    pub backoff: Option<Backoff>,
    pub classifier: Classifier,
    /// How gRPC responses are classified; `None`: by HTTP status only.
    pub grpc: Option<GrpcCodes>,
    pub target: TargetSettings,
}

impl Policy {
    /// The agent's defaults alone, keeping `previous`'s budget.
    pub fn defaults(d: &Defaults, target: TargetSettings, previous: Option<&Policy>) -> Self {
        Self::merged(d, target, &ServicePolicy::default(), None, previous)
    }

    /// `p` over the defaults; `previous`'s budget is kept when its
    /// parameters are the same.
    fn merged(
        d: &Defaults,
        target: TargetSettings,
        p: &ServicePolicy,
        source: Option<Source>,
        previous: Option<&Policy>,
    ) -> Self {
        let retries = p.retries.as_ref();
        let budget_config =
            retries
                .and_then(|r| r.budget)
                .map_or(d.budget, |b| RetryBudgetConfig {
                    ttl: b.ttl,
                    min_retries_per_sec: b.min_per_second,
                    percent_can_retry: b.percent / 100.0,
                });
        let budget = previous
            .filter(|prev| prev.budget_config == budget_config)
            .map_or_else(
                || Arc::new(RetryBudget::new(&budget_config)),
                |prev| Arc::clone(&prev.budget),
            );
        Self {
            source,
            total_timeout: p.total_timeout.unwrap_or(d.total_timeout),
            attempt_timeout: p.attempt_timeout.unwrap_or(d.attempt_timeout),
            max_attempts: retries
                .and_then(|r| r.max_attempts)
                .unwrap_or(d.max_attempts)
                .max(1),
            budget,
            budget_config,
            backoff: retries.and_then(|r| r.backoff),
            classifier: p.classifier.map_or(d.classifier, classifier),
            grpc: p.grpc.as_ref().map(GrpcCodes::new),
            target: target_settings(p, target),
        }
    }

    /// The wait before retry number `retry` (1 for the first): constant,
    /// or a uniform draw in `[min, min(max, min × 2^retry)]` (exponential,
    /// fully jittered above the floor).
    pub fn backoff(&self, retry: u32) -> Duration {
        match self.backoff {
            None => Duration::ZERO,
            Some(Backoff::Constant(d)) => d,
            Some(Backoff::Jittered { min, max }) => {
                let factor = 1_u32.checked_shl(retry.min(31)).unwrap_or(u32::MAX);
                let upper = min.saturating_mul(factor).min(max).max(min);
                min + upper.saturating_sub(min).mul_f64(fastrand::f64())
            }
        }
    }

    /// The matched prefix (`None` for the defaults), for messages.
    pub fn prefix(&self) -> Option<&Path> {
        self.source.as_ref().map(|s| &s.prefix)
    }
}

fn classifier(c: HttpClassifier) -> Classifier {
    match c {
        HttpClassifier::NonRetryable5xx => Classifier::NonRetryable5XX,
        HttpClassifier::RetryableRead5xx => Classifier::RetryableRead5XX,
        HttpClassifier::RetryableIdempotent5xx => Classifier::RetryableIdempotent5XX,
        HttpClassifier::AllSuccessful => Classifier::AllSuccessful,
    }
}

/// The balancer settings of `p` over the defaults in `base`.
fn target_settings(p: &ServicePolicy, base: TargetSettings) -> TargetSettings {
    let mut t = base;
    match p.balancer {
        Some(BalancerKind::PeakEwma { decay }) => {
            t.balancer.strategy = Strategy::PeakEwma;
            t.balancer.decay = decay;
        }
        Some(BalancerKind::RoundRobin) => t.balancer.strategy = Strategy::RoundRobin,
        Some(BalancerKind::LeastRequests) => t.balancer.strategy = Strategy::LeastRequests,
        None => {}
    }
    if let Some(a) = p.failure_accrual {
        let (consecutive_failures, success_rate) = match a.kind {
            AccrualKind::ConsecutiveFailures(n) => (n, None),
            AccrualKind::SuccessRate { rate, requests } => (
                base.balancer.failure_accrual.consecutive_failures,
                Some(SuccessRateAccrual { rate, requests }),
            ),
        };
        t.balancer.failure_accrual = AccrualConfig {
            consecutive_failures,
            success_rate,
            backoff_min: a.backoff_min,
            backoff_max: a.backoff_max,
            ..base.balancer.failure_accrual
        };
    }
    if let Some(n) = p.max_concurrent_requests {
        t.balancer.max_concurrent = n;
    }
    if let Some(z) = p.zone_aware {
        t.zone_aware = z;
    }
    t
}

/// Every policy of one mesh version, resolved.
#[derive(Debug)]
pub struct Policies {
    pub default: Arc<Policy>,
    by_prefix: BTreeMap<Path, Arc<Policy>>,
}

impl Policies {
    /// Resolves `set` over the defaults, reusing `previous`'s resolved
    /// policies (and budgets) for what did not change.
    pub fn build(
        set: &PolicySet,
        d: &Defaults,
        target: TargetSettings,
        previous: Option<&Policies>,
    ) -> Self {
        let default = match previous {
            Some(p) if p.default.target == target => Arc::clone(&p.default),
            _ => Arc::new(Policy::defaults(d, target, previous.map(|p| &*p.default))),
        };
        let by_prefix = set
            .iter()
            .map(|(prefix, v)| {
                let before = previous.and_then(|p| p.by_prefix.get(prefix));
                let policy = match before {
                    Some(b) if same(b, v) => Arc::clone(b),
                    _ => Arc::new(resolve(prefix, v, d, target, before.map(|b| &**b))),
                };
                (prefix.clone(), policy)
            })
            .collect();
        Self { default, by_prefix }
    }

    /// The policy for `service`: the one under its longest prefix, label
    /// by label, else the defaults. Looks prefixes up as label slices, so
    /// it allocates nothing.
    pub fn matching(&self, service: &Path) -> &Arc<Policy> {
        if self.by_prefix.is_empty() {
            return &self.default;
        }
        let labels = service.elems();
        (1..=labels.len())
            .rev()
            .find_map(|n| self.by_prefix.get::<[Label]>(&labels[..n]))
            .unwrap_or(&self.default)
    }

    /// The resolved policies by prefix.
    pub fn iter(&self) -> impl Iterator<Item = (&Path, &Arc<Policy>)> {
        self.by_prefix.iter()
    }

    /// Whether a policy in force builds balancers with `key`.
    pub fn uses(&self, key: &TargetKey) -> bool {
        self.by_prefix.values().any(|p| p.target.key() == *key)
    }

    pub fn len(&self) -> usize {
        self.by_prefix.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_prefix.is_empty()
    }
}

/// Whether a resolved policy is still the stored one.
fn same(resolved: &Policy, stored: &Versioned) -> bool {
    resolved
        .source
        .as_ref()
        .is_some_and(|s| s.version == stored.version && s.canonical == stored.policy.canonical())
}

fn resolve(
    prefix: &Path,
    v: &Versioned,
    d: &Defaults,
    target: TargetSettings,
    previous: Option<&Policy>,
) -> Policy {
    let source = Source {
        prefix: prefix.clone(),
        version: v.version,
        canonical: v.policy.canonical(),
    };
    Policy::merged(d, target, &v.policy, Some(source), previous)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(entries: &[(&str, &str, u64)]) -> PolicySet {
        let mut s = PolicySet::default();
        for (prefix, doc, version) in entries {
            s.insert(
                Path::read(prefix).unwrap(),
                Versioned {
                    policy: Arc::new(ServicePolicy::parse(doc).unwrap()),
                    version: *version,
                },
            );
        }
        s
    }

    fn target() -> TargetSettings {
        TargetSettings {
            balancer: BalancerConfig::default(),
            zone_aware: true,
        }
    }

    #[test]
    fn a_policy_overrides_only_what_it_sets() {
        let d = Defaults::default();
        let p = Policies::build(
            &set(&[
                (
                    "/svc/pay",
                    "{timeouts: {total: 2s}, retries: {max_attempts: 2}, classifier: retryableRead5XX, balancer: {kind: roundRobin}, max_concurrent_requests: 7, zone_aware: false, grpc: {retryable: [UNAVAILABLE], failures: [INVALID_ARGUMENT]}}",
                    3,
                ),
                (
                    "/svc/pay/v2",
                    "{failure_accrual: {kind: successRate, success_rate: 0.9, requests: 20}}",
                    4,
                ),
            ]),
            &d,
            target(),
            None,
        );
        let svc = |s: &str| Arc::clone(p.matching(&Path::read(s).unwrap()));
        let pay = svc("/svc/pay/x");
        assert_eq!(pay.prefix().unwrap().to_string(), "/svc/pay");
        assert_eq!(pay.total_timeout, Duration::from_secs(2));
        assert_eq!(pay.attempt_timeout, d.attempt_timeout);
        assert_eq!(pay.max_attempts, 2);
        assert_eq!(pay.classifier, Classifier::RetryableRead5XX);
        assert_eq!(pay.target.balancer.strategy, Strategy::RoundRobin);
        assert_eq!(pay.target.balancer.max_concurrent, 7);
        assert!(!pay.target.zone_aware);
        let grpc = pay.grpc.unwrap();
        assert!(grpc.is_retryable(14) && grpc.is_failure(14));
        assert!(!grpc.is_retryable(3) && grpc.is_failure(3));
        assert!(!grpc.is_failure(5) && !grpc.is_failure(99));
        // The most specific prefix wins, label by label.
        let v2 = svc("/svc/pay/v2");
        assert_eq!(v2.source.as_ref().unwrap().version, 4);
        assert_eq!(v2.total_timeout, d.total_timeout);
        assert_eq!(
            v2.target.balancer.failure_accrual.success_rate,
            Some(SuccessRateAccrual {
                rate: 0.9,
                requests: 20
            })
        );
        assert!(svc("/svc/payments").source.is_none());
        assert!(Arc::ptr_eq(&svc("/svc/other"), &p.default));
        assert_eq!(p.default.target, target());
        assert_eq!(p.default.classifier, Classifier::RetryableIdempotent5XX);
    }

    #[test]
    fn budgets_survive_rebuilds_while_their_parameters_do() {
        let d = Defaults::default();
        let doc = "{retries: {budget: {percent: 0, min_per_second: 1, ttl: 10s}}}";
        let one = Policies::build(&set(&[("/svc/a", doc, 1)]), &d, target(), None);
        let a = |p: &Policies| Arc::clone(p.matching(&Path::read("/svc/a").unwrap()));
        assert!(a(&one).budget.try_withdraw());
        // Unchanged: the same policy, the same budget.
        let two = Policies::build(&set(&[("/svc/a", doc, 1)]), &d, target(), Some(&one));
        assert!(Arc::ptr_eq(&a(&one), &a(&two)));
        assert!(Arc::ptr_eq(&one.default.budget, &two.default.budget));
        // Another field changed: a new policy, the budget kept.
        let changed =
            "{timeouts: {total: 1s}, retries: {budget: {percent: 0, min_per_second: 1, ttl: 10s}}}";
        let three = Policies::build(&set(&[("/svc/a", changed, 2)]), &d, target(), Some(&two));
        assert!(!Arc::ptr_eq(&a(&two), &a(&three)));
        assert!(Arc::ptr_eq(&a(&two).budget, &a(&three).budget));
        assert_eq!(a(&three).budget.balance(), 9);
        // The budget changed: a fresh one.
        let other = "{retries: {budget: {percent: 0, min_per_second: 2, ttl: 10s}}}";
        let four = Policies::build(&set(&[("/svc/a", other, 3)]), &d, target(), Some(&three));
        assert!(!Arc::ptr_eq(&a(&three).budget, &a(&four).budget));
        assert_eq!(a(&four).budget.balance(), 20);
        // Each policy has its own budget, apart from the defaults'.
        assert!(!Arc::ptr_eq(&a(&four).budget, &four.default.budget));
    }

    #[test]
    fn backoffs() {
        let defaults = Defaults::default();
        let policy = |doc: &str| {
            Policies::build(&set(&[("/svc/a", doc, 1)]), &defaults, target(), None)
                .matching(&Path::read("/svc/a").unwrap())
                .clone()
        };
        assert_eq!(policy("{}").backoff(1), Duration::ZERO);
        let constant = policy("{retries: {backoff: {kind: constant, delay: 150ms}}}");
        assert_eq!(constant.backoff(3), Duration::from_millis(150));
        let jittered = policy("{retries: {backoff: {kind: jittered, min: 10ms, max: 100ms}}}");
        for retry in 1..40 {
            let upper =
                Duration::from_millis(10 * (1 << retry.min(20))).min(Duration::from_millis(100));
            for _ in 0..20 {
                let wait = jittered.backoff(retry);
                assert!(
                    wait >= Duration::from_millis(10) && wait <= upper,
                    "{retry}: {wait:?}"
                );
            }
        }
    }
}

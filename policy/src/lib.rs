//! Traffic policy per service (issue #18): what an operator sets for the
//! services under a name prefix (`/svc/payments`, `/svc`), the most
//! specific prefix winning, as Linkerd 1's `service` configs did per
//! prefix. This crate is the document and its rules, shared by the
//! controller (validates writes, stores and streams policies) and the
//! agents (apply them per request):
//!
//! - [`ServicePolicy::parse`] reads YAML or JSON and validates every field;
//!   an error names the line and column (syntax, unknown fields, types) or
//!   the field and its allowed range (values). Nothing half-valid is kept.
//! - [`ServicePolicy::canonical`] is the stored and streamed form (JSON,
//!   fields in a fixed order, durations as `250ms`/`2s`): parsing it gives
//!   the same policy back.
//! - [`PolicySet::matching`] finds the policy for a service name and says
//!   which prefix matched, for `ecsmeshctl policy explain`.
//!
//! Every field is optional: what a policy leaves out keeps the agent's
//! configured default. Field names and their Linkerd 1 counterparts are in
//! the README's policy reference.

mod set;

pub use set::{MAX_PREFIX_BYTES, Matched, PolicySet, Versioned, parse_prefix};

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A policy that cannot be used; the message says where and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// Not YAML/JSON of the policy's shape: an unknown field, a wrong type.
    #[error("line {line}, column {column}: {message}")]
    Syntax {
        line: usize,
        column: usize,
        message: String,
    },
    /// A field outside its allowed values.
    #[error("{field}: {message}")]
    Field { field: String, message: String },
    /// The prefix it is stored under.
    #[error("invalid service prefix {prefix:?}: {message}")]
    Prefix { prefix: String, message: String },
    #[error("a policy is at most {MAX_POLICY_BYTES} bytes, this one has {0}")]
    TooLarge(usize),
}

/// The largest policy document accepted.
pub const MAX_POLICY_BYTES: usize = 16 * 1024;

/// What one service's traffic is held to. `None` keeps the agent's default.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ServicePolicy {
    /// Linkerd `totalTimeoutMs`: the whole request, retries included.
    pub total_timeout: Option<Duration>,
    /// Linkerd `requestAttemptTimeoutMs`: each attempt.
    pub attempt_timeout: Option<Duration>,
    pub retries: Option<Retries>,
    pub classifier: Option<HttpClassifier>,
    pub grpc: Option<GrpcClassifier>,
    pub balancer: Option<BalancerKind>,
    pub failure_accrual: Option<FailureAccrual>,
    /// Requests in flight to one endpoint; more fail fast (503) instead of
    /// queueing behind a slow endpoint.
    pub max_concurrent_requests: Option<u32>,
    /// Prefer endpoints in the caller's availability zone.
    pub zone_aware: Option<bool>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Retries {
    /// Attempts in all, the first included (1: no retry).
    pub max_attempts: Option<u32>,
    pub budget: Option<RetryBudget>,
    pub backoff: Option<Backoff>,
}

/// Linkerd's `retries.budget` (Finagle `RetryBudget`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RetryBudget {
    /// Retries allowed as a share of requests, in percent (Linkerd
    /// `percentCanRetry` × 100).
    pub percent: f64,
    /// Retries always allowed per second (`minRetriesPerSec`).
    pub min_per_second: u32,
    /// The window requests are counted over (`ttlSecs`).
    pub ttl: Duration,
}

/// Linkerd's `retries.backoff`: the wait before each retry.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Backoff {
    Constant(Duration),
    /// Exponential between `min` and `max`, with full jitter.
    Jittered {
        min: Duration,
        max: Duration,
    },
}

/// Linkerd 1's HTTP response classifiers (`io.l5d.http.*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HttpClassifier {
    /// `nonRetryable5XX`: a 5XX is a failure, never retried.
    NonRetryable5xx,
    /// `retryableRead5XX`: 5XX retried on GET, HEAD, OPTIONS, TRACE.
    RetryableRead5xx,
    /// `retryableIdempotent5XX`: also on PUT and DELETE.
    RetryableIdempotent5xx,
    /// `allSuccessful`: every response is a success.
    AllSuccessful,
}

impl HttpClassifier {
    const NAMES: [(&'static str, Self); 4] = [
        ("nonRetryable5XX", Self::NonRetryable5xx),
        ("retryableRead5XX", Self::RetryableRead5xx),
        ("retryableIdempotent5XX", Self::RetryableIdempotent5xx),
        ("allSuccessful", Self::AllSuccessful),
    ];

    /// Linkerd's name, without the `io.l5d.http.` prefix.
    pub fn name(self) -> &'static str {
        Self::NAMES
            .iter()
            .find(|(_, c)| *c == self)
            .map_or("", |(n, _)| n)
    }

    fn parse(s: &str) -> Option<Self> {
        let s = s.strip_prefix("io.l5d.http.").unwrap_or(s);
        Self::NAMES.iter().find(|(n, _)| *n == s).map(|(_, c)| *c)
    }
}

/// How gRPC responses (`grpc-status`) are classified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrpcClassifier {
    /// Codes that may be retried (when the request may be sent again).
    pub retryable: Vec<GrpcCode>,
    /// Codes counted as failures (in metrics and failure accrual).
    pub failures: Vec<GrpcCode>,
}

/// A gRPC status code, 0 to 16.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GrpcCode(pub u8);

impl GrpcCode {
    const NAMES: [&'static str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];

    /// A name (`UNAVAILABLE`, any case) or a number.
    fn parse(s: &str) -> Option<Self> {
        if let Ok(n) = s.parse::<u8>() {
            return (usize::from(n) < Self::NAMES.len()).then_some(Self(n));
        }
        Self::NAMES
            .iter()
            .position(|n| n.eq_ignore_ascii_case(s))
            .and_then(|i| u8::try_from(i).ok())
            .map(Self)
    }

    pub fn name(self) -> &'static str {
        Self::NAMES.get(usize::from(self.0)).copied().unwrap_or("")
    }
}

impl fmt::Display for GrpcCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Linkerd's `client.loadBalancer.kind`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum BalancerKind {
    /// `ewma`: power of two choices over peak-EWMA latency × load, with its
    /// decay (`decayTimeMs`).
    PeakEwma { decay: Duration },
    /// `roundRobin`.
    RoundRobin,
    /// `leastLoaded`: the endpoint with the fewest requests in flight (of two).
    LeastRequests,
}

/// Linkerd's `client.failureAccrual`: when an endpoint is taken out.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FailureAccrual {
    pub kind: AccrualKind,
    /// How long a removed endpoint waits for its probe: from `min`,
    /// doubling, up to `max` (jittered).
    pub backoff_min: Duration,
    pub backoff_max: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum AccrualKind {
    /// `io.l5d.consecutiveFailures`.
    ConsecutiveFailures(u32),
    /// `io.l5d.successRate`: below `rate` over the last `requests`.
    SuccessRate { rate: f64, requests: u32 },
}

/// The document as written: strings where people write durations and
/// names, checked into a [`ServicePolicy`] by [`ServicePolicy::parse`].
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
struct Doc {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    timeouts: Option<TimeoutsDoc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    retries: Option<RetriesDoc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    classifier: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    grpc: Option<GrpcDoc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    balancer: Option<BalancerDoc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    failure_accrual: Option<AccrualDoc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max_concurrent_requests: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    zone_aware: Option<bool>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct TimeoutsDoc {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    total: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    attempt: Option<String>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RetriesDoc {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max_attempts: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    budget: Option<BudgetDoc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    backoff: Option<BackoffDoc>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct BudgetDoc {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    percent: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    min_per_second: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ttl: Option<String>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct BackoffDoc {
    kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    delay: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    min: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max: Option<String>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct GrpcDoc {
    #[serde(default)]
    retryable: Vec<String>,
    #[serde(default)]
    failures: Vec<String>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct BalancerDoc {
    kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    decay: Option<String>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct AccrualDoc {
    kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    failures: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    success_rate: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    requests: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    backoff_min: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    backoff_max: Option<String>,
}

fn field(field: &str, message: impl Into<String>) -> PolicyError {
    PolicyError::Field {
        field: field.to_owned(),
        message: message.into(),
    }
}

/// A duration field: `250ms`, `2s`, `1m`, within `min..=max`.
fn duration(name: &str, text: &str, min: Duration, max: Duration) -> Result<Duration, PolicyError> {
    let d = ecsmesh_config::parse_duration(text).map_err(|_| {
        field(
            name,
            format!("{text:?} is not a duration (write 250ms, 2s or 1m)"),
        )
    })?;
    if d < min || d > max {
        return Err(field(
            name,
            format!("{} is outside {} to {}", show(d), show(min), show(max)),
        ));
    }
    Ok(d)
}

fn opt_duration(
    name: &str,
    text: Option<&String>,
    min: Duration,
    max: Duration,
) -> Result<Option<Duration>, PolicyError> {
    text.map(|t| duration(name, t, min, max)).transpose()
}

fn range<T: PartialOrd + fmt::Display + Copy>(
    name: &str,
    v: T,
    min: T,
    max: T,
) -> Result<T, PolicyError> {
    if v < min || v > max {
        return Err(field(name, format!("{v} is outside {min} to {max}")));
    }
    Ok(v)
}

/// A duration as the canonical form writes it: whole milliseconds.
pub fn show(d: Duration) -> String {
    let ms = d.as_millis();
    if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

const MS: Duration = Duration::from_millis(1);
const HOUR: Duration = Duration::from_hours(1);

impl ServicePolicy {
    /// Reads a policy from YAML (JSON is YAML too) and checks every field.
    ///
    /// # Errors
    /// The text is too large, not of the policy's shape (with its line and
    /// column), or a value is outside its range (with the field's name).
    pub fn parse(text: &str) -> Result<Self, PolicyError> {
        if text.len() > MAX_POLICY_BYTES {
            return Err(PolicyError::TooLarge(text.len()));
        }
        let doc: Doc = if text.trim().is_empty() {
            Doc::default()
        } else {
            serde_yaml_ng::from_str(text).map_err(|e| {
                let (line, column) = e.location().map_or((0, 0), |l| (l.line(), l.column()));
                PolicyError::Syntax {
                    line,
                    column,
                    message: e.to_string(),
                }
            })?
        };
        Self::from_doc(doc)
    }

    fn from_doc(doc: Doc) -> Result<Self, PolicyError> {
        let timeouts = doc.timeouts.unwrap_or_default();
        let total_timeout = opt_duration("timeouts.total", timeouts.total.as_ref(), MS, HOUR)?;
        let attempt_timeout =
            opt_duration("timeouts.attempt", timeouts.attempt.as_ref(), MS, HOUR)?;
        if let (Some(total), Some(attempt)) = (total_timeout, attempt_timeout)
            && attempt > total
        {
            return Err(field(
                "timeouts.attempt",
                format!(
                    "{} is longer than timeouts.total ({})",
                    show(attempt),
                    show(total)
                ),
            ));
        }
        Ok(Self {
            total_timeout,
            attempt_timeout,
            retries: doc.retries.as_ref().map(retries).transpose()?,
            classifier: doc
                .classifier
                .map(|c| {
                    HttpClassifier::parse(&c).ok_or_else(|| {
                        field(
                            "classifier",
                            format!(
                                "{c:?} is none of {}",
                                HttpClassifier::NAMES.map(|(n, _)| n).join(", ")
                            ),
                        )
                    })
                })
                .transpose()?,
            grpc: doc.grpc.as_ref().map(grpc).transpose()?,
            balancer: doc.balancer.as_ref().map(balancer).transpose()?,
            failure_accrual: doc.failure_accrual.as_ref().map(accrual).transpose()?,
            max_concurrent_requests: doc
                .max_concurrent_requests
                .map(|n| range("max_concurrent_requests", n, 1, 1_000_000))
                .transpose()?,
            zone_aware: doc.zone_aware,
        })
    }

    /// The stored and streamed form: JSON in a fixed field order.
    pub fn canonical(&self) -> String {
        // Plain strings, numbers and booleans: serialising cannot fail.
        serde_json::to_string(&self.to_doc()).unwrap_or_default()
    }

    fn to_doc(&self) -> Doc {
        let timeouts =
            (self.total_timeout.is_some() || self.attempt_timeout.is_some()).then(|| TimeoutsDoc {
                total: self.total_timeout.map(show),
                attempt: self.attempt_timeout.map(show),
            });
        Doc {
            timeouts,
            retries: self.retries.as_ref().map(|r| RetriesDoc {
                max_attempts: r.max_attempts,
                budget: r.budget.map(|b| BudgetDoc {
                    percent: Some(b.percent),
                    min_per_second: Some(b.min_per_second),
                    ttl: Some(show(b.ttl)),
                }),
                backoff: r.backoff.map(|b| match b {
                    Backoff::Constant(d) => BackoffDoc {
                        kind: "constant".to_owned(),
                        delay: Some(show(d)),
                        ..BackoffDoc::default()
                    },
                    Backoff::Jittered { min, max } => BackoffDoc {
                        kind: "jittered".to_owned(),
                        min: Some(show(min)),
                        max: Some(show(max)),
                        ..BackoffDoc::default()
                    },
                }),
            }),
            classifier: self.classifier.map(|c| c.name().to_owned()),
            grpc: self.grpc.as_ref().map(|g| GrpcDoc {
                retryable: g.retryable.iter().map(|c| c.name().to_owned()).collect(),
                failures: g.failures.iter().map(|c| c.name().to_owned()).collect(),
            }),
            balancer: self.balancer.map(|b| match b {
                BalancerKind::PeakEwma { decay } => BalancerDoc {
                    kind: "ewma".to_owned(),
                    decay: Some(show(decay)),
                },
                BalancerKind::RoundRobin => BalancerDoc {
                    kind: "roundRobin".to_owned(),
                    decay: None,
                },
                BalancerKind::LeastRequests => BalancerDoc {
                    kind: "leastLoaded".to_owned(),
                    decay: None,
                },
            }),
            failure_accrual: self.failure_accrual.map(|a| {
                let (kind, failures, success_rate, requests) = match a.kind {
                    AccrualKind::ConsecutiveFailures(n) => {
                        ("consecutiveFailures", Some(n), None, None)
                    }
                    AccrualKind::SuccessRate { rate, requests } => {
                        ("successRate", None, Some(rate), Some(requests))
                    }
                };
                AccrualDoc {
                    kind: kind.to_owned(),
                    failures,
                    success_rate,
                    requests,
                    backoff_min: Some(show(a.backoff_min)),
                    backoff_max: Some(show(a.backoff_max)),
                }
            }),
            max_concurrent_requests: self.max_concurrent_requests,
            zone_aware: self.zone_aware,
        }
    }
}

fn retries(r: &RetriesDoc) -> Result<Retries, PolicyError> {
    Ok(Retries {
        max_attempts: r
            .max_attempts
            .map(|n| range("retries.max_attempts", n, 1, 10))
            .transpose()?,
        budget: r
            .budget
            .as_ref()
            .map(|b| -> Result<RetryBudget, PolicyError> {
                Ok(RetryBudget {
                    percent: range(
                        "retries.budget.percent",
                        b.percent.unwrap_or(20.0),
                        0.0,
                        1000.0,
                    )?,
                    min_per_second: range(
                        "retries.budget.min_per_second",
                        b.min_per_second.unwrap_or(10),
                        0,
                        100_000,
                    )?,
                    ttl: match &b.ttl {
                        Some(t) => duration(
                            "retries.budget.ttl",
                            t,
                            Duration::from_secs(1),
                            Duration::from_mins(1),
                        )?,
                        None => Duration::from_secs(10),
                    },
                })
            })
            .transpose()?,
        backoff: r.backoff.as_ref().map(backoff).transpose()?,
    })
}

fn backoff(b: &BackoffDoc) -> Result<Backoff, PolicyError> {
    let max = Duration::from_mins(1);
    match b.kind.as_str() {
        "constant" => {
            if b.min.is_some() || b.max.is_some() {
                return Err(field(
                    "retries.backoff",
                    "constant takes delay, not min/max",
                ));
            }
            Ok(Backoff::Constant(
                opt_duration(
                    "retries.backoff.delay",
                    b.delay.as_ref(),
                    Duration::ZERO,
                    max,
                )?
                .unwrap_or(Duration::ZERO),
            ))
        }
        "jittered" => {
            if b.delay.is_some() {
                return Err(field(
                    "retries.backoff",
                    "jittered takes min and max, not delay",
                ));
            }
            let min = opt_duration("retries.backoff.min", b.min.as_ref(), MS, max)?
                .unwrap_or(Duration::from_millis(10));
            let high = opt_duration("retries.backoff.max", b.max.as_ref(), MS, max)?
                .unwrap_or(Duration::from_secs(1));
            if high < min {
                return Err(field(
                    "retries.backoff.max",
                    format!("{} is below min ({})", show(high), show(min)),
                ));
            }
            Ok(Backoff::Jittered { min, max: high })
        }
        other => Err(field(
            "retries.backoff.kind",
            format!("{other:?} is neither constant nor jittered"),
        )),
    }
}

fn grpc(g: &GrpcDoc) -> Result<GrpcClassifier, PolicyError> {
    let codes = |name: &str, list: &[String]| -> Result<Vec<GrpcCode>, PolicyError> {
        let mut codes = list
            .iter()
            .map(|c| {
                GrpcCode::parse(c)
                    .ok_or_else(|| field(name, format!("{c:?} is not a gRPC status code")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if codes.contains(&GrpcCode(0)) {
            return Err(field(name, "OK is never a failure"));
        }
        codes.sort_unstable();
        codes.dedup();
        Ok(codes)
    };
    Ok(GrpcClassifier {
        retryable: codes("grpc.retryable", &g.retryable)?,
        failures: codes("grpc.failures", &g.failures)?,
    })
}

fn balancer(b: &BalancerDoc) -> Result<BalancerKind, PolicyError> {
    match b.kind.as_str() {
        "ewma" => Ok(BalancerKind::PeakEwma {
            decay: opt_duration("balancer.decay", b.decay.as_ref(), MS, HOUR)?
                .unwrap_or(Duration::from_secs(10)),
        }),
        "roundRobin" | "leastLoaded" if b.decay.is_some() => Err(field(
            "balancer.decay",
            "only the ewma balancer has a decay",
        )),
        "roundRobin" => Ok(BalancerKind::RoundRobin),
        "leastLoaded" => Ok(BalancerKind::LeastRequests),
        other => Err(field(
            "balancer.kind",
            format!("{other:?} is none of ewma, roundRobin, leastLoaded"),
        )),
    }
}

fn accrual(a: &AccrualDoc) -> Result<FailureAccrual, PolicyError> {
    let kind = match a.kind.as_str() {
        "consecutiveFailures" => {
            if a.success_rate.is_some() || a.requests.is_some() {
                return Err(field(
                    "failure_accrual",
                    "consecutiveFailures takes failures, not success_rate/requests",
                ));
            }
            AccrualKind::ConsecutiveFailures(range(
                "failure_accrual.failures",
                a.failures.unwrap_or(5),
                1,
                1000,
            )?)
        }
        "successRate" => {
            if a.failures.is_some() {
                return Err(field(
                    "failure_accrual",
                    "successRate takes success_rate and requests, not failures",
                ));
            }
            AccrualKind::SuccessRate {
                rate: range(
                    "failure_accrual.success_rate",
                    a.success_rate.unwrap_or(0.8),
                    0.0,
                    1.0,
                )?,
                requests: range(
                    "failure_accrual.requests",
                    a.requests.unwrap_or(100),
                    1,
                    100_000,
                )?,
            }
        }
        other => {
            return Err(field(
                "failure_accrual.kind",
                format!("{other:?} is neither consecutiveFailures nor successRate"),
            ));
        }
    };
    let backoff_min = opt_duration(
        "failure_accrual.backoff_min",
        a.backoff_min.as_ref(),
        MS,
        HOUR,
    )?
    .unwrap_or(Duration::from_secs(5));
    let backoff_max = opt_duration(
        "failure_accrual.backoff_max",
        a.backoff_max.as_ref(),
        MS,
        HOUR,
    )?
    .unwrap_or(Duration::from_mins(5));
    if backoff_max < backoff_min {
        return Err(field(
            "failure_accrual.backoff_max",
            format!(
                "{} is below backoff_min ({})",
                show(backoff_max),
                show(backoff_min)
            ),
        ));
    }
    Ok(FailureAccrual {
        kind,
        backoff_min,
        backoff_max,
    })
}

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use ecsmesh_dtab::Path;

use super::*;

const FULL: &str = "\
timeouts:
  total: 2s
  attempt: 500ms
retries:
  max_attempts: 3
  budget: {percent: 20, min_per_second: 10, ttl: 10s}
  backoff: {kind: jittered, min: 10ms, max: 1s}
classifier: io.l5d.http.retryableIdempotent5XX
grpc:
  retryable: [UNAVAILABLE, 4]
  failures: [internal, UNAVAILABLE, DATA_LOSS]
balancer: {kind: ewma, decay: 10s}
failure_accrual: {kind: successRate, success_rate: 0.9, requests: 50, backoff_min: 1s, backoff_max: 1m}
max_concurrent_requests: 100
zone_aware: false
";

#[test]
fn a_full_policy_reads_and_round_trips_through_its_canonical_form() {
    let p = ServicePolicy::parse(FULL).unwrap();
    assert_eq!(p.total_timeout, Some(Duration::from_secs(2)));
    assert_eq!(p.attempt_timeout, Some(Duration::from_millis(500)));
    let r = p.retries.clone().unwrap();
    assert_eq!(r.max_attempts, Some(3));
    assert_eq!(
        r.budget,
        Some(RetryBudget {
            percent: 20.0,
            min_per_second: 10,
            ttl: Duration::from_secs(10)
        })
    );
    assert_eq!(
        r.backoff,
        Some(Backoff::Jittered {
            min: Duration::from_millis(10),
            max: Duration::from_secs(1)
        })
    );
    assert_eq!(p.classifier, Some(HttpClassifier::RetryableIdempotent5xx));
    let g = p.grpc.clone().unwrap();
    assert_eq!(g.retryable, [GrpcCode(4), GrpcCode(14)]);
    assert_eq!(g.failures, [GrpcCode(13), GrpcCode(14), GrpcCode(15)]);
    assert_eq!(
        p.balancer,
        Some(BalancerKind::PeakEwma {
            decay: Duration::from_secs(10)
        })
    );
    assert_eq!(
        p.failure_accrual.unwrap().kind,
        AccrualKind::SuccessRate {
            rate: 0.9,
            requests: 50
        }
    );
    assert_eq!(p.max_concurrent_requests, Some(100));
    assert_eq!(p.zone_aware, Some(false));
    let text = p.canonical();
    assert_eq!(ServicePolicy::parse(&text).unwrap(), p, "{text}");
    assert!(
        text.contains("\"total\":\"2s\"") && text.contains("\"attempt\":\"500ms\""),
        "{text}"
    );
    assert!(text.contains("\"retryableIdempotent5XX\""), "{text}");
    // The same text again: canonical means stable.
    assert_eq!(ServicePolicy::parse(&text).unwrap().canonical(), text);
}

#[test]
fn an_empty_policy_keeps_every_default() {
    assert_eq!(ServicePolicy::parse("").unwrap(), ServicePolicy::default());
    assert_eq!(
        ServicePolicy::parse("{}").unwrap(),
        ServicePolicy::default()
    );
    assert_eq!(ServicePolicy::default().canonical(), "{}");
}

#[test]
fn shape_errors_name_the_line_and_column() {
    let err = ServicePolicy::parse("timeouts:\n  total: 2s\n  totl: 3s\n").unwrap_err();
    match &err {
        PolicyError::Syntax {
            line,
            column,
            message,
        } => {
            assert_eq!(*line, 3, "{err}");
            assert!(*column > 0);
            assert!(message.contains("totl"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    let err = ServicePolicy::parse("max_concurrent_requests: lots\n").unwrap_err();
    assert!(matches!(err, PolicyError::Syntax { line: 1, .. }), "{err}");
    let err = ServicePolicy::parse("zone_aware: [1\n").unwrap_err();
    assert!(matches!(err, PolicyError::Syntax { .. }), "{err}");
}

#[test]
fn values_out_of_range_name_the_field() {
    let cases = [
        ("timeouts: {total: 0ms}", "timeouts.total"),
        ("timeouts: {total: 2h}", "timeouts.total"),
        ("timeouts: {attempt: soon}", "timeouts.attempt"),
        ("timeouts: {total: 1s, attempt: 2s}", "timeouts.attempt"),
        ("retries: {max_attempts: 0}", "retries.max_attempts"),
        ("retries: {max_attempts: 11}", "retries.max_attempts"),
        (
            "retries: {budget: {percent: 1001}}",
            "retries.budget.percent",
        ),
        ("retries: {budget: {ttl: 61s}}", "retries.budget.ttl"),
        ("retries: {budget: {ttl: 500ms}}", "retries.budget.ttl"),
        ("retries: {backoff: {kind: linear}}", "retries.backoff.kind"),
        (
            "retries: {backoff: {kind: jittered, min: 2s, max: 1s}}",
            "retries.backoff.max",
        ),
        (
            "retries: {backoff: {kind: constant, min: 1s}}",
            "retries.backoff",
        ),
        (
            "retries: {backoff: {kind: jittered, delay: 1s}}",
            "retries.backoff",
        ),
        ("classifier: retryable5XX", "classifier"),
        ("grpc: {retryable: [NOT_A_CODE]}", "grpc.retryable"),
        ("grpc: {failures: [17]}", "grpc.failures"),
        ("grpc: {failures: [OK]}", "grpc.failures"),
        ("balancer: {kind: random}", "balancer.kind"),
        ("balancer: {kind: roundRobin, decay: 1s}", "balancer.decay"),
        ("failure_accrual: {kind: always}", "failure_accrual.kind"),
        (
            "failure_accrual: {kind: consecutiveFailures, failures: 0}",
            "failure_accrual.failures",
        ),
        (
            "failure_accrual: {kind: successRate, success_rate: 1.5}",
            "failure_accrual.success_rate",
        ),
        (
            "failure_accrual: {kind: successRate, failures: 3}",
            "failure_accrual",
        ),
        (
            "failure_accrual: {kind: consecutiveFailures, backoff_min: 10s, backoff_max: 1s}",
            "failure_accrual.backoff_max",
        ),
        ("max_concurrent_requests: 0", "max_concurrent_requests"),
    ];
    for (text, name) in cases {
        match ServicePolicy::parse(text) {
            Err(PolicyError::Field { field, message }) => {
                assert_eq!(field, name, "{text}: {message}");
                assert!(!message.is_empty());
            }
            other => panic!("{text}: {other:?}"),
        }
    }
}

#[test]
fn classifier_and_code_names_follow_linkerd_and_grpc() {
    for (text, want) in [
        ("nonRetryable5XX", HttpClassifier::NonRetryable5xx),
        (
            "io.l5d.http.retryableRead5XX",
            HttpClassifier::RetryableRead5xx,
        ),
        ("allSuccessful", HttpClassifier::AllSuccessful),
    ] {
        let p = ServicePolicy::parse(&format!("classifier: {text}")).unwrap();
        assert_eq!(p.classifier, Some(want));
    }
    assert_eq!(GrpcCode(14).to_string(), "UNAVAILABLE");
    assert_eq!(GrpcCode::parse("deadline_exceeded"), Some(GrpcCode(4)));
    assert_eq!(GrpcCode::parse("16"), Some(GrpcCode(16)));
    assert_eq!(GrpcCode::parse("17"), None);
}

#[test]
fn documents_are_bounded() {
    let big = format!("zone_aware: true\n#{}\n", "x".repeat(MAX_POLICY_BYTES));
    assert!(matches!(
        ServicePolicy::parse(&big),
        Err(PolicyError::TooLarge(_))
    ));
}

#[test]
fn the_most_specific_prefix_wins_label_by_label() {
    let policy = |secs: u64, version: u64| Versioned {
        policy: Arc::new(ServicePolicy {
            total_timeout: Some(Duration::from_secs(secs)),
            ..ServicePolicy::default()
        }),
        version,
    };
    let set = PolicySet::new(BTreeMap::from([
        (Path::read("/svc").unwrap(), policy(5, 1)),
        (Path::read("/svc/payments").unwrap(), policy(2, 7)),
    ]));
    let at = |name: &str| {
        set.matching(&Path::read(name).unwrap())
            .map(|m| (m.prefix.to_string(), m.policy.version))
    };
    assert_eq!(at("/svc/payments"), Some(("/svc/payments".into(), 7)));
    assert_eq!(at("/svc/payments/v2"), Some(("/svc/payments".into(), 7)));
    assert_eq!(at("/svc/pay"), Some(("/svc".into(), 1)));
    assert_eq!(at("/svc"), Some(("/svc".into(), 1)));
    assert_eq!(at("/http/1.1/GET/payments"), None);
}

#[test]
fn prefixes_are_paths_but_not_the_root() {
    assert_eq!(
        parse_prefix("/svc/payments").unwrap().to_string(),
        "/svc/payments"
    );
    assert!(matches!(parse_prefix("/"), Err(PolicyError::Prefix { .. })));
    assert!(matches!(
        parse_prefix("svc"),
        Err(PolicyError::Prefix { .. })
    ));
    let long = format!("/{}", "a".repeat(MAX_PREFIX_BYTES));
    assert!(matches!(
        parse_prefix(&long),
        Err(PolicyError::Prefix { .. })
    ));
}

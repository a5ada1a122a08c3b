//! Per-service traffic policies through real agents (issue #18): a policy
//! is stored in the in-process controller, streamed to the agent with the
//! mesh state, and applied to the next request — one test per knob.
//! Upstreams here follow a script (fail N times, sleep, answer gRPC
//! statuses); every load loop is bounded in count and time; host IPs are
//! 127.0.70.x to 127.0.79.x.

#![allow(
    clippy::unwrap_used,
    clippy::too_many_lines,
    clippy::missing_panics_doc
)]

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{SOURCE, converged, free_port, raw};
use ecsmesh_agent::Agent;
use ecsmesh_agent::config::Mode;
use ecsmesh_controller::Controller;
use ecsmesh_dtab::Path;
use ecsmesh_policy::ServicePolicy;
use http_body_util::{BodyExt as _, Full, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

/// What a scripted upstream answers to its `n`-th request (from 0).
#[derive(Clone, Copy, Debug)]
struct Reply {
    status: u16,
    delay: Duration,
    /// A gRPC status: in the headers (trailers-only) or in trailers.
    grpc: Option<(u32, bool)>,
}

impl Reply {
    fn status(status: u16) -> Self {
        Self {
            status,
            delay: Duration::ZERO,
            grpc: None,
        }
    }

    fn slow(delay: Duration) -> Self {
        Self {
            status: 200,
            delay,
            grpc: None,
        }
    }

    /// A trailers-only gRPC answer.
    fn grpc(code: u32) -> Self {
        Self {
            status: 200,
            delay: Duration::ZERO,
            grpc: Some((code, false)),
        }
    }

    /// A gRPC answer with a message and the status in trailers.
    fn grpc_trailers(code: u32) -> Self {
        Self {
            status: 200,
            delay: Duration::ZERO,
            grpc: Some((code, true)),
        }
    }
}

type Script = dyn Fn(u64, &http::Method) -> Reply + Send + Sync;

/// An HTTP/1 + h2c server that reads each request's body, then answers as
/// its script says; counts requests.
struct Scripted {
    addr: SocketAddr,
    hits: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Scripted {
    async fn start(
        ip: &str,
        script: impl Fn(u64, &http::Method) -> Reply + Send + Sync + 'static,
    ) -> Self {
        let listener = TcpListener::bind((ip, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicU64::new(0));
        let script: Arc<Script> = Arc::new(script);
        let counter = Arc::clone(&hits);
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (script, counter) = (Arc::clone(&script), Arc::clone(&counter));
                conns.spawn(async move {
                    let svc = hyper::service::service_fn(
                        move |req: http::Request<hyper::body::Incoming>| {
                            let n = counter.fetch_add(1, Ordering::SeqCst);
                            let reply = script(n, req.method());
                            async move {
                                let _ = req.into_body().collect().await;
                                tokio::time::sleep(reply.delay).await;
                                Ok::<_, Infallible>(respond(reply))
                            }
                        },
                    );
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Self { addr, hits, task }
    }

    fn hits(&self) -> u64 {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Drop for Scripted {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type ReplyBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

fn respond(reply: Reply) -> http::Response<ReplyBody> {
    let mut builder = http::Response::builder().status(reply.status);
    let body = match reply.grpc {
        None => Full::new(Bytes::from_static(b"ok")).boxed(),
        Some((code, false)) => {
            builder = builder
                .header("content-type", "application/grpc")
                .header("grpc-status", code.to_string());
            Full::new(Bytes::new()).boxed()
        }
        Some((code, true)) => {
            builder = builder.header("content-type", "application/grpc");
            let mut trailers = http::HeaderMap::new();
            trailers.insert("grpc-status", code.into());
            let frames = vec![
                Ok(Frame::data(Bytes::from_static(&[0, 0, 0, 0, 1, 7]))),
                Ok(Frame::trailers(trailers)),
            ];
            StreamBody::new(futures_util::stream::iter(frames)).boxed()
        }
    };
    builder.body(body).unwrap()
}

/// A controller publishing one set per `(name, endpoints)` (each
/// endpoint's host is its own IP), and an agent in direct mode on
/// `agent_ip`.
async fn mesh(
    dir: &std::path::Path,
    agent_ip: &str,
    sets: &[(&str, &[SocketAddr])],
) -> (Controller, Agent) {
    let hosts: Vec<Vec<(SocketAddr, String)>> = sets
        .iter()
        .map(|(_, eps)| eps.iter().map(|a| (*a, a.ip().to_string())).collect())
        .collect();
    let entries: Vec<Vec<(SocketAddr, &str)>> = hosts
        .iter()
        .map(|eps| eps.iter().map(|(a, h)| (*a, h.as_str())).collect())
        .collect();
    let named: Vec<(&str, &[(SocketAddr, &str)])> = sets
        .iter()
        .zip(&entries)
        .map(|((name, _), eps)| (*name, eps.as_slice()))
        .collect();
    let (ctl, grpc) = common::mesh(dir, &named).await;
    let agent = common::agent_with(
        agent_ip,
        grpc,
        free_port(agent_ip),
        Mode::Direct,
        &dir.join("agent"),
        |_| {},
    )
    .await;
    converged(&agent, 1).await;
    (ctl, agent)
}

/// Stores `doc` for `prefix` and waits until the agent applies it.
async fn set_policy(ctl: &Controller, agent: &Agent, prefix: &str, doc: &str) -> u64 {
    let policy = ServicePolicy::parse(doc).unwrap();
    let existing = ctl
        .policies
        .entries()
        .get(prefix)
        .map(|stored| stored.version);
    let stored = match existing {
        Some(version) => ctl.policies.update(prefix, policy, version).await.unwrap(),
        None => ctl.policies.create(prefix, policy, 100).await.unwrap(),
    };
    applied(agent, prefix, Some(stored.version)).await;
    stored.version
}

/// Waits until the agent's policy for `prefix` is at `version` (`None`:
/// no policy there any more).
async fn applied(agent: &Agent, prefix: &str, version: Option<u64>) {
    let path = Path::read(prefix).unwrap();
    let started = Instant::now();
    loop {
        let table = agent.routes.load();
        let p = table.policies.matching(&path);
        let now = p
            .source
            .as_ref()
            .filter(|s| s.prefix == path)
            .map(|s| s.version);
        if now == version {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the agent did not apply {prefix} at {version:?} within 10 s (has {now:?})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A request through the proxy: `(status, l5d-err, body)`.
async fn send(
    proxy: SocketAddr,
    method: &str,
    host: &str,
    headers: &[(&str, &str)],
) -> (u16, String, String) {
    let mut req = http::Request::builder()
        .method(method)
        .uri(format!("http://{host}/"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(Bytes::new())).unwrap();
    let stream = tokio::net::TcpStream::connect(proxy).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let resp = tokio::time::timeout(Duration::from_secs(15), sender.send_request(req))
        .await
        .expect("an answer within 15 s")
        .unwrap();
    let status = resp.status().as_u16();
    let err = resp
        .headers()
        .get("l5d-err")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, err, String::from_utf8_lossy(&body).into_owned())
}

async fn get(proxy: SocketAddr, host: &str) -> u16 {
    send(proxy, "GET", host, &[]).await.0
}

/// A unary gRPC call over h2c: the `grpc-status` the client sees
/// (headers or trailers).
async fn grpc_call(proxy: SocketAddr, host: &str) -> Option<u32> {
    let stream = tokio::net::TcpStream::connect(proxy).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = http::Request::post(format!("http://{host}/pkg.Svc/Call"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(Bytes::from_static(&[0, 0, 0, 0, 2, 8, 1])))
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(15), sender.send_request(req))
        .await
        .expect("an answer within 15 s")
        .unwrap();
    let status = |h: &http::HeaderMap| h.get("grpc-status")?.to_str().ok()?.parse().ok();
    if let Some(code) = status(resp.headers()) {
        return Some(code);
    }
    let collected = resp.into_body().collect().await.unwrap();
    collected.trailers().and_then(status)
}

async fn metric(agent: &Agent, series: &str) -> f64 {
    let text = raw(
        agent.admin_addr,
        "GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    )
    .await;
    text.lines()
        .filter(|l| l.starts_with(series))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

const WORLD: &str = "/#/ecs/demo/world";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn total_timeout_bounds_the_request_and_shows_in_policies() {
    let dir = tempfile::tempdir().unwrap();
    let slow = Scripted::start("127.0.70.1", |_, _| Reply::slow(Duration::from_secs(2))).await;
    let (ctl, agent) = mesh(dir.path(), "127.0.70.2", &[(WORLD, &[slow.addr])]).await;
    let version = set_policy(&ctl, &agent, "/svc/world", "{timeouts: {total: 300ms}}").await;

    let started = Instant::now();
    let (status, err, _) = send(agent.outgoing_addr, "GET", "world", &[]).await;
    let took = started.elapsed();
    assert_eq!(status, 503, "{err}");
    assert!(err.contains("timed+out+after+300ms"), "{err}");
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_millis(1500),
        "{took:?}"
    );
    assert!(
        metric(
            &agent,
            "ecsmesh_agent_timeouts_total{service=\"/svc/world\",kind=\"total\"}"
        )
        .await
            >= 1.0
    );
    // The admin endpoint says which policy a service gets, and why.
    let text = raw(
        agent.admin_addr,
        "GET /policies?service=/svc/world/x HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    )
    .await;
    let body = text.split_once("\r\n\r\n").unwrap().1;
    let json: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(json["match"]["prefix"], "/svc/world");
    assert_eq!(json["match"]["version"], version);
    assert_eq!(json["policies"][0]["applied"]["total_timeout_ms"], 300);
    assert_eq!(json["defaults"]["total_timeout_ms"], 5000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempt_timeout_bounds_each_attempt() {
    let dir = tempfile::tempdir().unwrap();
    // The first attempt is slow, the second fast.
    let up = Scripted::start("127.0.70.11", |n, _| {
        Reply::slow(if n == 0 {
            Duration::from_secs(2)
        } else {
            Duration::ZERO
        })
    })
    .await;
    let (ctl, agent) = mesh(dir.path(), "127.0.70.12", &[(WORLD, &[up.addr])]).await;
    set_policy(
        &ctl,
        &agent,
        "/svc/world",
        "{timeouts: {total: 3s, attempt: 200ms}, retries: {max_attempts: 1}}",
    )
    .await;
    let started = Instant::now();
    let (status, err, _) = send(agent.outgoing_addr, "GET", "world", &[]).await;
    let took = started.elapsed();
    assert_eq!(status, 503, "{err}");
    assert!(err.contains("timed+out+after+200ms"), "{err}");
    assert!(took < Duration::from_millis(1500), "{took:?}");
    assert!(
        metric(
            &agent,
            "ecsmesh_agent_timeouts_total{service=\"/svc/world\",kind=\"attempt\"}"
        )
        .await
            >= 1.0
    );
    // With a second attempt allowed, the timed-out GET is retried.
    set_policy(
        &ctl,
        &agent,
        "/svc/world",
        "{timeouts: {total: 3s, attempt: 200ms}, retries: {max_attempts: 2}, classifier: retryableRead5XX}",
    )
    .await;
    let before = up.hits();
    assert_eq!(get(agent.outgoing_addr, "world").await, 200);
    assert_eq!(up.hits() - before, 1, "the fast answer came first time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadline_headers_tighten_the_policy_timeout_but_never_loosen_it() {
    let dir = tempfile::tempdir().unwrap();
    let slow = Scripted::start("127.0.70.21", |_, _| {
        Reply::slow(Duration::from_millis(900))
    })
    .await;
    let (ctl, agent) = mesh(dir.path(), "127.0.70.22", &[(WORLD, &[slow.addr])]).await;
    set_policy(&ctl, &agent, "/svc/world", "{timeouts: {total: 2s}}").await;
    // The policy alone lets it finish.
    assert_eq!(get(agent.outgoing_addr, "world").await, 200);
    // grpc-timeout of 200 ms tightens it.
    let started = Instant::now();
    let (status, _, _) = send(
        agent.outgoing_addr,
        "GET",
        "world",
        &[("grpc-timeout", "200m")],
    )
    .await;
    assert_eq!(status, 503);
    assert!(
        started.elapsed() < Duration::from_millis(800),
        "{:?}",
        started.elapsed()
    );
    // So does an l5d-ctx-deadline 200 ms away.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let deadline = format!("{now} {}", now + 200_000_000);
    let started = Instant::now();
    let (status, _, _) = send(
        agent.outgoing_addr,
        "GET",
        "world",
        &[("l5d-ctx-deadline", &deadline)],
    )
    .await;
    assert_eq!(status, 503);
    assert!(
        started.elapsed() < Duration::from_millis(800),
        "{:?}",
        started.elapsed()
    );
    assert!(
        metric(
            &agent,
            "ecsmesh_agent_timeouts_total{service=\"/svc/world\",kind=\"deadline\"}"
        )
        .await
            >= 2.0
    );
    // A looser deadline does not loosen a tighter policy.
    set_policy(&ctl, &agent, "/svc/world", "{timeouts: {total: 300ms}}").await;
    let started = Instant::now();
    let (status, err, _) = send(
        agent.outgoing_addr,
        "GET",
        "world",
        &[("grpc-timeout", "10S")],
    )
    .await;
    assert_eq!(status, 503, "{err}");
    assert!(
        started.elapsed() < Duration::from_millis(800),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_honour_max_attempts_and_back_off() {
    let dir = tempfile::tempdir().unwrap();
    // Fails twice for every three requests: 503, 503, 200, …
    let up = Scripted::start("127.0.70.31", |n, _| {
        Reply::status(if n % 3 == 2 { 200 } else { 503 })
    })
    .await;
    let (ctl, agent) = mesh(dir.path(), "127.0.70.32", &[(WORLD, &[up.addr])]).await;
    let policy = |attempts: u32, backoff: &str| {
        format!(
            "{{classifier: retryableRead5XX, retries: {{max_attempts: {attempts}, backoff: {backoff}}}, failure_accrual: {{kind: consecutiveFailures, failures: 100}}}}"
        )
    };
    set_policy(
        &ctl,
        &agent,
        "/svc/world",
        &policy(3, "{kind: constant, delay: 150ms}"),
    )
    .await;
    let started = Instant::now();
    assert_eq!(get(agent.outgoing_addr, "world").await, 200);
    let took = started.elapsed();
    assert_eq!(up.hits(), 3);
    // Two retries, each after 150 ms.
    assert!(took >= Duration::from_millis(300), "{took:?}");
    assert!(took < Duration::from_secs(3), "{took:?}");

    // Two attempts are not enough: the client gets the second 503.
    set_policy(
        &ctl,
        &agent,
        "/svc/world",
        &policy(2, "{kind: constant, delay: 0ms}"),
    )
    .await;
    assert_eq!(get(agent.outgoing_addr, "world").await, 503);
    assert_eq!(up.hits(), 5);
    // The next one gets the cycle's 200 at once.
    assert_eq!(get(agent.outgoing_addr, "world").await, 200);
    assert_eq!(up.hits(), 6);

    // Jittered: each wait is at least min.
    set_policy(
        &ctl,
        &agent,
        "/svc/world",
        &policy(3, "{kind: jittered, min: 100ms, max: 400ms}"),
    )
    .await;
    let before = up.hits();
    let started = Instant::now();
    let status = get(agent.outgoing_addr, "world").await;
    let took = started.elapsed();
    assert_eq!((status, up.hits() - before), (200, 3));
    assert!(took >= Duration::from_millis(200), "{took:?}");
    assert!(took < Duration::from_secs(3), "{took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_policy_spends_its_own_retry_budget() {
    let dir = tempfile::tempdir().unwrap();
    let bad = Scripted::start("127.0.70.41", |_, _| Reply::status(503)).await;
    let other = Scripted::start("127.0.70.42", |_, _| Reply::status(503)).await;
    let (ctl, agent) = mesh(
        dir.path(),
        "127.0.70.43",
        &[(WORLD, &[bad.addr]), ("/#/ecs/demo/other", &[other.addr])],
    )
    .await;
    // No share of traffic, 1 retry a second over 10 s: 10 retries.
    set_policy(
        &ctl,
        &agent,
        "/svc/world",
        "{classifier: retryableRead5XX, retries: {max_attempts: 2, budget: {percent: 0, min_per_second: 1, ttl: 10s}}, failure_accrual: {kind: consecutiveFailures, failures: 1000}}",
    )
    .await;
    set_policy(
        &ctl,
        &agent,
        "/svc/other",
        "{classifier: retryableRead5XX, retries: {max_attempts: 2}, failure_accrual: {kind: consecutiveFailures, failures: 1000}}",
    )
    .await;
    let started = Instant::now();
    for _ in 0..30 {
        assert_eq!(get(agent.outgoing_addr, "world").await, 503);
    }
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "the window must not turn"
    );
    assert_eq!(bad.hits(), 30 + 10, "30 requests, 10 retries");
    let exhausted = metric(
        &agent,
        "ecsmesh_agent_retry_budget_exhausted_total{service=\"/svc/world\"}",
    )
    .await;
    assert!((exhausted - 20.0).abs() < 0.5, "{exhausted}");
    // The other policy's budget was not spent.
    for _ in 0..5 {
        assert_eq!(get(agent.outgoing_addr, "other").await, 503);
    }
    assert_eq!(other.hits(), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_classifiers_decide_by_method() {
    let dir = tempfile::tempdir().unwrap();
    let up = Scripted::start("127.0.70.51", |_, _| Reply::status(503)).await;
    let (ctl, agent) = mesh(dir.path(), "127.0.70.52", &[(WORLD, &[up.addr])]).await;
    let doc = |classifier: &str| {
        format!(
            "{{classifier: {classifier}, retries: {{max_attempts: 3}}, failure_accrual: {{kind: consecutiveFailures, failures: 1000}}}}"
        )
    };
    // Attempts each method gets under each classifier.
    let cases: [(&str, &[(&str, u64)]); 3] = [
        (
            "retryableRead5XX",
            &[("GET", 3), ("HEAD", 3), ("PUT", 1), ("POST", 1)],
        ),
        (
            "retryableIdempotent5XX",
            &[
                ("GET", 3),
                ("PUT", 3),
                ("DELETE", 3),
                ("POST", 1),
                ("PATCH", 1),
            ],
        ),
        ("nonRetryable5XX", &[("GET", 1), ("PUT", 1), ("POST", 1)]),
    ];
    for (classifier, methods) in cases {
        set_policy(&ctl, &agent, "/svc/world", &doc(classifier)).await;
        for (method, attempts) in methods {
            let before = up.hits();
            let (status, _, _) = send(agent.outgoing_addr, method, "world", &[]).await;
            assert_eq!(status, 503);
            assert_eq!(up.hits() - before, *attempts, "{classifier} {method}");
        }
    }
    let failures = "ecsmesh_agent_failures_total{service=\"/svc/world\",class=\"status_5xx\"}";
    let counted = metric(&agent, failures).await;
    assert!(counted > 0.0);
    // allSuccessful: a 503 is a success, counted as none and never
    // charged to the endpoint (accrual at 2 would remove it otherwise).
    set_policy(
        &ctl,
        &agent,
        "/svc/world",
        "{classifier: allSuccessful, retries: {max_attempts: 3}, failure_accrual: {kind: consecutiveFailures, failures: 2}}",
    )
    .await;
    let before = up.hits();
    for _ in 0..10 {
        assert_eq!(get(agent.outgoing_addr, "world").await, 503);
    }
    assert_eq!(up.hits() - before, 10, "no retry, no removal");
    assert!((metric(&agent, failures).await - counted).abs() < 0.5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_statuses_are_classified_by_the_policy() {
    let dir = tempfile::tempdir().unwrap();
    // UNAVAILABLE twice, then OK.
    let flaky = Scripted::start("127.0.71.1", |n, _| Reply::grpc(if n < 2 { 14 } else { 0 })).await;
    let invalid = Scripted::start("127.0.71.2", |_, _| Reply::grpc(3)).await;
    let trailing = Scripted::start("127.0.71.3", |_, _| Reply::grpc_trailers(3)).await;
    let (ctl, agent) = mesh(
        dir.path(),
        "127.0.71.4",
        &[
            (WORLD, &[flaky.addr]),
            ("/#/ecs/demo/invalid", &[invalid.addr]),
            ("/#/ecs/demo/trailing", &[trailing.addr]),
        ],
    )
    .await;
    let doc = "{retries: {max_attempts: 3}, grpc: {retryable: [UNAVAILABLE], failures: [INVALID_ARGUMENT]}, failure_accrual: {kind: consecutiveFailures, failures: 1000}}";
    set_policy(&ctl, &agent, "/svc", doc).await;
    assert_eq!(grpc_call(agent.outgoing_addr, "world").await, Some(0));
    assert_eq!(flaky.hits(), 3, "UNAVAILABLE retried twice");
    assert_eq!(grpc_call(agent.outgoing_addr, "invalid").await, Some(3));
    assert_eq!(invalid.hits(), 1, "INVALID_ARGUMENT is not retried");
    assert_eq!(grpc_call(agent.outgoing_addr, "trailing").await, Some(3));
    assert_eq!(trailing.hits(), 1);
    let grpc_failures = |svc: &str| {
        format!("ecsmesh_agent_failures_total{{service=\"/svc/{svc}\",class=\"grpc_status\"}}")
    };
    assert!((metric(&agent, &grpc_failures("world")).await - 2.0).abs() < 0.5);
    assert!((metric(&agent, &grpc_failures("invalid")).await - 1.0).abs() < 0.5);
    // Classified when the trailers came.
    assert!((metric(&agent, &grpc_failures("trailing")).await - 1.0).abs() < 0.5);
    // Without a gRPC classifier, a 200 is a success whatever its status.
    set_policy(&ctl, &agent, "/svc", "{retries: {max_attempts: 3}}").await;
    assert_eq!(grpc_call(agent.outgoing_addr, "invalid").await, Some(3));
    assert!((metric(&agent, &grpc_failures("invalid")).await - 1.0).abs() < 0.5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_spreads_evenly_and_least_requests_avoids_a_slow_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let fast = Scripted::start("127.0.72.1", |_, _| Reply::status(200)).await;
    let slow = Scripted::start("127.0.72.2", |_, _| Reply::slow(Duration::from_millis(100))).await;
    let (ctl, agent) = mesh(
        dir.path(),
        "127.0.72.3",
        &[(WORLD, &[fast.addr, slow.addr])],
    )
    .await;
    // 4 clients, 20 requests each, at once.
    let load = |agent: SocketAddr| async move {
        let mut clients = tokio::task::JoinSet::new();
        for _ in 0..4 {
            clients.spawn(async move {
                for _ in 0..20 {
                    assert_eq!(get(agent, "world").await, 200);
                }
            });
        }
        tokio::time::timeout(Duration::from_secs(20), async {
            while clients.join_next().await.is_some() {}
        })
        .await
        .expect("the load finished within 20 s");
    };
    set_policy(&ctl, &agent, "/svc/world", "{balancer: {kind: roundRobin}}").await;
    load(agent.outgoing_addr).await;
    let (f, s) = (fast.hits(), slow.hits());
    assert_eq!(f + s, 80);
    assert!(f.abs_diff(s) <= 8, "round robin: fast {f}, slow {s}");

    set_policy(
        &ctl,
        &agent,
        "/svc/world",
        "{balancer: {kind: leastLoaded}}",
    )
    .await;
    load(agent.outgoing_addr).await;
    let (f, s) = (fast.hits() - f, slow.hits() - s);
    assert_eq!(f + s, 80);
    assert!(s * 4 < f, "least requests: fast {f}, slow {s}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consecutive_failures_remove_an_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let good = Scripted::start("127.0.73.1", |_, _| Reply::status(200)).await;
    let bad = Scripted::start("127.0.73.2", |_, _| Reply::status(503)).await;
    let (ctl, agent) = mesh(dir.path(), "127.0.73.3", &[(WORLD, &[good.addr, bad.addr])]).await;
    set_policy(
        &ctl,
        &agent,
        "/svc/world",
        "{classifier: nonRetryable5XX, balancer: {kind: roundRobin}, failure_accrual: {kind: consecutiveFailures, failures: 3, backoff_min: 30s, backoff_max: 60s}}",
    )
    .await;
    for _ in 0..40 {
        let _ = get(agent.outgoing_addr, "world").await;
    }
    assert_eq!(bad.hits(), 3, "removed after 3 failures in a row");
    assert_eq!(good.hits(), 37);
    assert!(
        metric(
            &agent,
            "ecsmesh_agent_client_failure_accrual_removals_total{client=\"/#/ecs/demo/world\"}"
        )
        .await
            >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_success_rate_below_the_floor_removes_an_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let good = Scripted::start("127.0.73.11", |_, _| Reply::status(200)).await;
    // Every other request fails: never two failures in a row.
    let flaky = Scripted::start("127.0.73.12", |n, _| {
        Reply::status(if n % 2 == 0 { 200 } else { 503 })
    })
    .await;
    let (ctl, agent) = mesh(
        dir.path(),
        "127.0.73.13",
        &[(WORLD, &[good.addr, flaky.addr])],
    )
    .await;
    // Consecutive failures (2) would never remove it.
    set_policy(
        &ctl,
        &agent,
        "/svc/world",
        "{classifier: nonRetryable5XX, balancer: {kind: roundRobin}, failure_accrual: {kind: consecutiveFailures, failures: 2, backoff_min: 30s, backoff_max: 60s}}",
    )
    .await;
    for _ in 0..40 {
        let _ = get(agent.outgoing_addr, "world").await;
    }
    assert_eq!(flaky.hits(), 20, "consecutive failures never removed it");
    set_policy(
        &ctl,
        &agent,
        "/svc/world",
        "{classifier: nonRetryable5XX, balancer: {kind: roundRobin}, failure_accrual: {kind: successRate, success_rate: 0.9, requests: 10, backoff_min: 30s, backoff_max: 60s}}",
    )
    .await;
    let before = flaky.hits();
    for _ in 0..60 {
        let _ = get(agent.outgoing_addr, "world").await;
    }
    assert_eq!(
        flaky.hits() - before,
        10,
        "removed once its window of 10 was 50 % successes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_concurrent_requests_fail_fast() {
    let dir = tempfile::tempdir().unwrap();
    let slow = Scripted::start("127.0.74.1", |_, _| Reply::slow(Duration::from_millis(800))).await;
    let (ctl, agent) = mesh(dir.path(), "127.0.74.2", &[(WORLD, &[slow.addr])]).await;
    set_policy(&ctl, &agent, "/svc/world", "{max_concurrent_requests: 2}").await;
    let proxy = agent.outgoing_addr;
    let held: Vec<_> = (0..2)
        .map(|_| tokio::spawn(async move { get(proxy, "world").await }))
        .collect();
    // Both are in flight before the next ones come.
    let started = Instant::now();
    while slow.hits() < 2 {
        assert!(started.elapsed() < Duration::from_secs(5));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for _ in 0..3 {
        let started = Instant::now();
        let (status, err, _) = send(proxy, "GET", "world", &[]).await;
        assert_eq!(status, 503, "{err}");
        assert!(err.contains("max_concurrent_requests"), "{err}");
        assert!(
            started.elapsed() < Duration::from_millis(400),
            "did not fail fast"
        );
    }
    for h in held {
        assert_eq!(h.await.unwrap(), 200);
    }
    assert_eq!(slow.hits(), 2);
    assert!(
        (metric(
            &agent,
            "ecsmesh_agent_concurrency_rejections_total{service=\"/svc/world\"}"
        )
        .await
            - 3.0)
            .abs()
            < 0.5
    );
    // Room again: served.
    assert_eq!(get(proxy, "world").await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zone_awareness_can_be_turned_off_per_policy() {
    let dir = tempfile::tempdir().unwrap();
    let near = Scripted::start("127.0.75.1", |_, _| Reply::status(200)).await;
    let far = Scripted::start("127.0.75.2", |_, _| Reply::status(200)).await;
    let set: ecsmesh_state::EndpointSet = [(near.addr, "zone-a"), (far.addr, "zone-b")]
        .into_iter()
        .map(|(addr, zone)| {
            ecsmesh_state::Endpoint::new(addr)
                .with_meta("host_ip", addr.ip().to_string())
                .with_meta(ecsmesh_state::meta::AVAILABILITY_ZONE, zone)
        })
        .collect();
    let grpc = free_port("127.0.0.1");
    let ctl = common::controller(&dir.path().join("ctl"), grpc).await;
    ctl.observed
        .replace(SOURCE, [(Path::read(WORLD).unwrap(), Arc::new(set))].into());
    let agent = common::agent_with(
        "127.0.75.3",
        grpc,
        free_port("127.0.75.3"),
        Mode::Direct,
        &dir.path().join("agent"),
        |c| c.availability_zone = Some("zone-a".into()),
    )
    .await;
    converged(&agent, 1).await;
    // /svc/spread reaches the same set through a request dtab.
    set_policy(&ctl, &agent, "/svc/spread", "{zone_aware: false}").await;
    for _ in 0..100 {
        assert_eq!(get(agent.outgoing_addr, "world").await, 200);
    }
    assert_eq!((near.hits(), far.hits()), (100, 0), "zone-aware by default");
    for _ in 0..100 {
        let (status, _, _) = send(
            agent.outgoing_addr,
            "GET",
            "spread",
            &[("l5d-dtab", "/svc/spread=>/#/ecs/demo/world")],
        )
        .await;
        assert_eq!(status, 200);
    }
    let far_share = far.hits();
    assert!(
        far_share >= 20,
        "zone_aware off: {far_share} of 100 left the zone"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_change_takes_effect_without_restart() {
    let dir = tempfile::tempdir().unwrap();
    let slow = Scripted::start("127.0.76.1", |_, _| Reply::slow(Duration::from_millis(500))).await;
    let (ctl, agent) = mesh(dir.path(), "127.0.76.2", &[(WORLD, &[slow.addr])]).await;
    assert_eq!(get(agent.outgoing_addr, "world").await, 200);
    set_policy(&ctl, &agent, "/svc/world", "{timeouts: {total: 200ms}}").await;
    assert_eq!(get(agent.outgoing_addr, "world").await, 503);
    set_policy(&ctl, &agent, "/svc/world", "{timeouts: {total: 2s}}").await;
    assert_eq!(get(agent.outgoing_addr, "world").await, 200);
    // Deleted: the agent's default (5 s) applies again.
    let version = ctl.policies.entries().get("/svc/world").unwrap().version;
    ctl.policies
        .delete("/svc/world", Some(version))
        .await
        .unwrap();
    applied(&agent, "/svc/world", None).await;
    set_policy(&ctl, &agent, "/svc/world", "{timeouts: {total: 200ms}}").await;
    assert_eq!(get(agent.outgoing_addr, "world").await, 503);
}

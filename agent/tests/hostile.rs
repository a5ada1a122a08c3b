//! The agent tried as an attacker would, through the real binary over
//! loopback: request dtabs that try to reach addresses the mesh did not
//! give them, credentials in URLs, clients that break their side of the
//! exchange, requests the endpoint cannot speak, oversized dtab headers,
//! and the retry rules. Each test owns a 127.0.5x.0/24 range.

#![allow(clippy::unwrap_used, clippy::too_many_lines, clippy::float_cmp)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use common::{AgentProcess, Upstream, free_port, get_via, mesh, raw};
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};

/// An h2c (prior knowledge) request to `addr` for `authority`.
async fn h2c(
    addr: SocketAddr,
    authority: &str,
    method: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, http::HeaderMap, String) {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut req = http::Request::builder()
        .method(method)
        .uri(format!("http://{authority}/"))
        .version(http::Version::HTTP_2);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = sender
        .send_request(req.body(Full::new(Bytes::from(body.to_owned()))).unwrap())
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

/// Header dtabs that try every way to reach `target` (`host/port`) from
/// `/svc/world`: prefixes mapped onto a bare `/$` and extended, chains,
/// unions, weights, alternations, escapes, wildcards, the mesh's own names
/// rewritten, and both fixed-address namers.
fn ssrf_shapes(target: &str) -> Vec<String> {
    let (_, port) = target.split_once('/').unwrap();
    [
        format!("/svc/world=>/$/inet/{target}"),
        format!("/svc/world=>/$/fixedinet/{target}"),
        format!("/x=>/$;/svc/world=>/x/inet/{target}"),
        format!("/x=>/$/inet;/svc/world=>/x/{target}"),
        "/x=>/$/inet/HOST;/svc/world=>/x/PORT"
            .replace("HOST", target.split('/').next().unwrap())
            .replace("PORT", port),
        format!("/a=>/b;/b=>/c;/c=>/$;/svc/world=>/a/inet/{target}"),
        format!("/svc/world=>/#/ecs/demo/world & /$/inet/{target}"),
        format!("/svc/world=>0.999*/#/ecs/demo/world & 0.001*/$/inet/{target}"),
        format!("/svc/world=>/nowhere|/$/inet/{target}"),
        format!("/svc/world=>~|/$/inet/{target}"),
        format!("/svc/world=>/\\x24/inet/{target}"),
        format!("/svc/*=>/$/inet/{target}"),
        format!("/#/ecs/demo/world=>/$/inet/{target}"),
        format!("/svc=>/q;/q/world=>/$/inet/{target}"),
        format!("/svc/world=>/$/inet/{port}"),
        format!("/svc/world=>(/a|/b);/b=>/$/inet/{target}"),
    ]
    .into()
}

#[tokio::test]
async fn request_dtabs_never_reach_fixed_addresses() {
    let dir = tempfile::tempdir().unwrap();
    let world = Upstream::start("127.0.50.11", "world").await;
    // Not in the mesh: what an attacker wants to reach (the controller's
    // admin port, the metadata service…).
    let secret = Upstream::start("127.0.50.99", "secret").await;
    let (_ctl, grpc) = mesh(
        dir.path(),
        &[("/#/ecs/demo/world", &[(world.addr, "127.0.50.11")])],
    )
    .await;
    let agent = AgentProcess::start("127.0.50.1", grpc, &dir.path().join("a"), &[]).await;
    let target = format!("{}/{}", secret.addr.ip(), secret.addr.port());

    for dtab in ssrf_shapes(&target) {
        for header in ["l5d-dtab", "l5d-ctx-dtab"] {
            for port in [agent.outgoing_addr, agent.incoming_addr] {
                let (status, headers, body) = get_via(port, "world", "/", &[(header, &dtab)]).await;
                assert_eq!(status, 400, "{header}: {dtab} via {port}: {body}");
                let err = headers["l5d-err"].to_str().unwrap();
                assert!(
                    err.starts_with("fixed-address+override+refused"),
                    "{dtab}: {err}"
                );
                let (status, _, body) = h2c(port, "world", "GET", &[(header, &dtab)], "").await;
                assert_eq!(status, 400, "h2c {header}: {dtab} via {port}: {body}");
            }
        }
    }
    assert_eq!(secret.hits(), 0, "the secret upstream was reached");
    assert!(
        agent
            .metric("ecsmesh_agent_refused_requests_total{reason=\"fixed_address_override\"}")
            .await
            >= 1.0
    );

    // Mesh-only overrides still work, on both protocols.
    let (status, _, body) = get_via(
        agent.outgoing_addr,
        "world",
        "/",
        &[("l5d-dtab", "/svc/world=>/x;/x=>/#/ecs/demo/world")],
    )
    .await;
    assert_eq!((status, body.as_str()), (200, "world"));

    // Property: generated header dtabs over an alphabet rich in `$`,
    // `inet`, escapes, unions and alternations never reach the secret.
    let mut rng = fastrand::Rng::with_seed(14);
    let (mut sent, mut refused) = (0, 0);
    for _ in 0..300 {
        let dtab = random_dtab(&mut rng, &target);
        let (status, _, _) =
            get_via(agent.outgoing_addr, "world", "/", &[("l5d-dtab", &dtab)]).await;
        sent += 1;
        if status == 400 {
            refused += 1;
        }
    }
    assert_eq!(secret.hits(), 0, "a generated dtab reached the secret");
    assert!(
        refused > sent / 10,
        "the generator rarely tried: {refused}/{sent}"
    );
}

/// A random dtab of 1–4 dentries over labels that can spell fixed
/// addresses in many ways.
fn random_dtab(rng: &mut fastrand::Rng, target: &str) -> String {
    let (host, port) = target.split_once('/').unwrap();
    let labels = [
        "svc",
        "world",
        "x",
        "y",
        "$",
        "\\x24",
        "inet",
        "fixedinet",
        "#",
        "ecs",
        "demo",
        host,
        port,
        "nil",
        "fail",
    ];
    let path = |rng: &mut fastrand::Rng, min: usize| {
        let n = rng.usize(min..=5);
        let mut out = String::new();
        for _ in 0..n {
            out.push('/');
            out.push_str(labels[rng.usize(..labels.len())]);
        }
        out
    };
    let leaf = |rng: &mut fastrand::Rng| match rng.u8(..10) {
        0 => format!("/$/inet/{target}"),
        1 => "/$".to_owned(),
        2 => "~".to_owned(),
        3 => "/#/ecs/demo/world".to_owned(),
        _ => path(rng, 1),
    };
    let tree = |rng: &mut fastrand::Rng| match rng.u8(..4) {
        0 => format!("{} | {}", leaf(rng), leaf(rng)),
        1 => format!("0.5*{} & 2*{}", leaf(rng), leaf(rng)),
        _ => leaf(rng),
    };
    let n = rng.usize(1..=4);
    (0..n)
        .map(|i| {
            let prefix = if i == n - 1 {
                "/svc/world".to_owned()
            } else {
                path(rng, 1).replace("\\x24", "$")
            };
            format!("{prefix}=>{}", tree(rng))
        })
        .collect::<Vec<_>>()
        .join(";")
}

#[tokio::test]
async fn allowed_fixed_addresses_never_reach_local_ones() {
    let dir = tempfile::tempdir().unwrap();
    let world = Upstream::start("127.0.51.11", "world").await;
    let local = Upstream::start("127.0.51.99", "local").await;
    let (_ctl, grpc) = mesh(
        dir.path(),
        &[("/#/ecs/demo/world", &[(world.addr, "127.0.51.11")])],
    )
    .await;
    let allowed = AgentProcess::start(
        "127.0.51.1",
        grpc,
        &dir.path().join("a"),
        &["--allow-inet-override", "true"],
    )
    .await;
    let port = local.addr.port();
    // Loopback, unspecified, IPv6 and IPv4-mapped loopback, a name that
    // resolves to loopback, and the metadata service: refused before any
    // connection is made.
    for target in [
        format!("127.0.51.99/{port}"),
        format!("{port}"),
        format!("0.0.0.0/{port}"),
        format!("::1/{port}"),
        format!("::ffff:127.0.51.99/{port}"),
        format!("localhost/{port}"),
        "169.254.169.254/80".to_owned(),
        "fe80::1/80".to_owned(),
    ] {
        let dtab = format!("/svc/world=>/$/inet/{target}");
        let (status, headers, body) =
            get_via(allowed.outgoing_addr, "world", "/", &[("l5d-dtab", &dtab)]).await;
        assert_eq!(status, 400, "{dtab}: {body}");
        assert!(
            headers["l5d-err"]
                .to_str()
                .unwrap()
                .starts_with("local-address+override+refused"),
            "{dtab}: {body}"
        );
    }
    assert_eq!(local.hits(), 0);

    // A separate setting lets them through.
    let both = AgentProcess::start(
        "127.0.51.2",
        grpc,
        &dir.path().join("b"),
        &[
            "--allow-inet-override",
            "true",
            "--allow-local-inet-override",
            "true",
        ],
    )
    .await;
    let dtab = format!("/svc/world=>/$/inet/127.0.51.99/{port}");
    let (status, _, body) = get_via(both.outgoing_addr, "world", "/", &[("l5d-dtab", &dtab)]).await;
    assert_eq!((status, body.as_str()), (200, "local"));
}

#[tokio::test]
async fn credentials_in_urls_reach_no_log_metric_or_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let world = Upstream::start("127.0.52.11", "world").await;
    let (_ctl, grpc) = mesh(
        dir.path(),
        &[("/#/ecs/demo/world", &[(world.addr, "127.0.52.11")])],
    )
    .await;
    let log = dir.path().join("agent.log");
    let log_file = std::fs::File::create(&log).unwrap();
    let agent = AgentProcess::start_with("127.0.52.1", grpc, &dir.path().join("a"), &[], |cmd| {
        cmd.env("RUST_LOG", "debug").stdout(log_file);
    })
    .await;
    let (status, headers, body) =
        get_via(agent.outgoing_addr, "alice:s3cret@world", "/x", &[]).await;
    assert_eq!((status, body.as_str()), (200, "world"));
    assert_eq!(headers["x-seen-host"], "world");
    // Unknown names too: the 502 and the metrics name no credentials.
    let (status, _, body) = get_via(agent.outgoing_addr, "bob:s3cret@nowhere", "/", &[]).await;
    assert_eq!(status, 502);
    assert!(!body.contains("s3cret"), "{body}");
    let (_, metrics) = agent.admin_get("/metrics").await.unwrap();
    assert!(metrics.contains("/svc/world"), "{metrics}");
    assert!(!metrics.contains("s3cret"), "credentials in /metrics");
    for (k, v) in &headers {
        assert!(
            !v.as_bytes().windows(6).any(|w| w == b"s3cret"),
            "{k}: {v:?}"
        );
    }
    drop(agent);
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.contains("agent started"), "no log written");
    assert!(!logged.contains("s3cret"), "credentials logged");
}

#[tokio::test]
async fn a_client_breaking_its_side_never_hurts_the_endpoints() {
    let dir = tempfile::tempdir().unwrap();
    let a = Upstream::start("127.0.53.11", "hello").await;
    let b = Upstream::start("127.0.53.12", "hello").await;
    let (_ctl, grpc) = mesh(
        dir.path(),
        &[(
            "/#/ecs/demo/hello",
            &[(a.addr, "127.0.53.11"), (b.addr, "127.0.53.12")],
        )],
    )
    .await;
    let agent = AgentProcess::start("127.0.53.1", grpc, &dir.path().join("a"), &[]).await;

    // 12 requests with an invalid chunk size: the client's error, 400.
    for _ in 0..12 {
        let answer = raw(
            agent.outgoing_addr,
            "POST /x HTTP/1.1\r\nhost: hello\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
        assert!(answer.contains("client error"), "{answer}");
    }
    // A body cut short: the client sends half and goes away.
    for _ in 0..4 {
        use tokio::io::AsyncWriteExt as _;
        let mut s = tokio::net::TcpStream::connect(agent.outgoing_addr)
            .await
            .unwrap();
        s.write_all(b"POST /x HTTP/1.1\r\nhost: hello\r\ncontent-length: 100\r\n\r\nonly ten b")
            .await
            .unwrap();
        s.shutdown().await.unwrap();
        drop(s);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Every good request after them succeeds: nothing was ejected.
    for _ in 0..20 {
        let (status, _, body) = get_via(agent.outgoing_addr, "hello", "/", &[]).await;
        assert_eq!((status, body.as_str()), (200, "hello"));
    }
    assert_eq!(
        agent
            .metric("ecsmesh_agent_client_failures_total{client=\"/#/ecs/demo/hello\"")
            .await,
        0.0,
        "the endpoints were charged"
    );
    assert_eq!(
        agent
            .metric("ecsmesh_agent_client_failure_accrual_removals_total")
            .await,
        0.0
    );
    assert!(
        agent
            .metric("ecsmesh_agent_failures_total{service=\"/svc/hello\",class=\"client_error\"}")
            .await
            >= 12.0
    );
}

#[tokio::test]
async fn h2c_to_an_http1_only_endpoint_is_downgraded_not_charged() {
    let dir = tempfile::tempdir().unwrap();
    let old = Upstream::start_http1_only("127.0.54.11", "legacy").await;
    let (_ctl, grpc) = mesh(
        dir.path(),
        &[("/#/ecs/demo/legacy", &[(old.addr, "127.0.54.11")])],
    )
    .await;
    let agent = AgentProcess::start("127.0.54.1", grpc, &dir.path().join("a"), &[]).await;
    // The first request finds out (and is resent), later ones go as
    // HTTP/1.1 from the start; a body arrives whole either way.
    for i in 0..5 {
        let (status, headers, body) = h2c(
            agent.outgoing_addr,
            "legacy",
            "POST",
            &[],
            &format!("payload {i}"),
        )
        .await;
        assert_eq!((status, body.as_str()), (200, "legacy"), "{headers:?}");
        assert_eq!(headers["x-seen-version"], "HTTP/1.1");
        assert_eq!(headers["x-seen-host"], "legacy");
        assert_eq!(headers["x-body"], format!("payload {i}").as_str());
    }
    assert_eq!(old.hits(), 5);
    assert_eq!(
        agent
            .metric("ecsmesh_agent_client_failures_total{client=\"/#/ecs/demo/legacy\"")
            .await,
        0.0
    );
    assert!(
        agent
            .metric("ecsmesh_agent_protocol_downgrades_total")
            .await
            >= 1.0
    );
}

#[tokio::test]
async fn dtab_headers_are_bounded_and_the_cache_in_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let world = Upstream::start("127.0.55.11", "world").await;
    let (_ctl, grpc) = mesh(
        dir.path(),
        &[("/#/ecs/demo/world", &[(world.addr, "127.0.55.11")])],
    )
    .await;
    let agent = AgentProcess::start("127.0.55.1", grpc, &dir.path().join("a"), &[]).await;
    // Past 16 KiB (the default): 431, on either header.
    let big = "/svc/x=>/svc/y;".repeat(1200);
    for header in ["l5d-dtab", "l5d-ctx-dtab"] {
        let (status, headers, _) =
            get_via(agent.outgoing_addr, "world", "/", &[(header, &big)]).await;
        assert_eq!(status, 431, "{header}");
        assert!(
            headers["l5d-err"]
                .to_str()
                .unwrap()
                .contains("max_dtab_header_bytes")
        );
    }
    assert!(agent.metric("ecsmesh_agent_refused_requests_total").await >= 2.0);

    // With the limit raised, ever-new 60 KB dtabs do not grow memory past
    // the cache's bound (8 MiB by default).
    let roomy = AgentProcess::start(
        "127.0.55.2",
        grpc,
        &dir.path().join("b"),
        &["--max-dtab-header-bytes", "65536"],
    )
    .await;
    let before = roomy.rss_kib();
    let filler = "/svc/zz=>/svc/yy;".repeat(3500);
    for i in 0..300 {
        let dtab = format!("{filler}/svc/n{i}=>/svc/world");
        let (status, _, _) =
            get_via(roomy.outgoing_addr, "world", "/", &[("l5d-dtab", &dtab)]).await;
        assert_eq!(status, 200);
    }
    let grown = roomy.rss_kib().saturating_sub(before);
    // Unbounded, 300 cached decisions of this size hold well over 50 MB.
    assert!(grown < 30 * 1024, "RSS grew by {grown} KiB");
}

#[tokio::test]
async fn retries_never_resend_what_may_have_run() {
    let dir = tempfile::tempdir().unwrap();
    let slow = Upstream::start_slow("127.0.56.11", "slow", Duration::from_secs(3)).await;
    let slower = Upstream::start_slow("127.0.56.12", "slow", Duration::from_secs(3)).await;
    let (_ctl, grpc) = mesh(
        dir.path(),
        &[(
            "/#/ecs/demo/slow",
            &[(slow.addr, "127.0.56.11"), (slower.addr, "127.0.56.12")],
        )],
    )
    .await;
    let agent = AgentProcess::start(
        "127.0.56.1",
        grpc,
        &dir.path().join("a"),
        &["--attempt-timeout", "500ms", "--request-timeout", "2s"],
    )
    .await;
    let hits = || slow.hits() + slower.hits();
    // A POST or a PATCH that timed out may have run: never sent again.
    for method in ["POST", "PATCH"] {
        let before = hits();
        let (status, head, _) = raw_status(agent.outgoing_addr, method, "slow").await;
        assert_eq!(status, 503, "{head}");
        assert!(head.contains("l5d-err: timeout"), "{head}");
        assert_eq!(hits() - before, 1, "a timed-out {method} was sent again");
    }
    // A GET may be: it is idempotent, and goes to the other endpoint
    // first (then to either again, within max_retries and the time).
    let (a, b) = (slow.hits(), slower.hits());
    let _ = raw_status(agent.outgoing_addr, "GET", "slow").await;
    let (a, b) = (slow.hits() - a, slower.hits() - b);
    assert!(a >= 1 && b >= 1, "GET not retried elsewhere: {a} and {b}");
    assert!(a + b <= 4, "more than 1 + max_retries attempts: {}", a + b);
}

#[tokio::test]
async fn a_request_that_never_reached_an_endpoint_goes_elsewhere_body_and_all() {
    let dir = tempfile::tempdir().unwrap();
    let up = Upstream::start("127.0.57.11", "up").await;
    // Nothing listens there: connect refused.
    let down: SocketAddr = format!("127.0.57.12:{}", free_port("127.0.57.12"))
        .parse()
        .unwrap();
    let (_ctl, grpc) = mesh(
        dir.path(),
        &[(
            "/#/ecs/demo/pair",
            &[(up.addr, "127.0.57.11"), (down, "127.0.57.12")],
        )],
    )
    .await;
    let agent = AgentProcess::start("127.0.57.1", grpc, &dir.path().join("a"), &[]).await;
    for i in 0..10 {
        let (status, headers, body) = h2c(
            agent.outgoing_addr,
            "pair",
            "POST",
            &[],
            &format!("order {i}"),
        )
        .await;
        assert_eq!((status, body.as_str()), (200, "up"));
        assert_eq!(headers["x-body"], format!("order {i}").as_str());
    }
    // With only the dead endpoint, the error says what happened.
    let (_ctl2, grpc2) = mesh(
        &dir.path().join("2"),
        &[("/#/ecs/demo/pair", &[(down, "127.0.57.12")])],
    )
    .await;
    let lone = AgentProcess::start("127.0.57.2", grpc2, &dir.path().join("b"), &[]).await;
    let (status, headers, _) = get_via(lone.outgoing_addr, "pair", "/", &[]).await;
    assert_eq!(status, 502);
    assert!(
        headers["l5d-err"]
            .to_str()
            .unwrap()
            .starts_with("connect+error"),
        "{headers:?}"
    );
    assert!(
        lone.metric("ecsmesh_agent_client_failures_total{client=\"/#/ecs/demo/pair\",class=\"connect_failure\"}")
            .await
            >= 1.0
    );
}

#[tokio::test]
async fn hop_by_hop_headers_go_and_via_is_added_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let world = Upstream::start("127.0.58.11", "world").await;
    let (_ctl, grpc) = mesh(
        dir.path(),
        &[("/#/ecs/demo/world", &[(world.addr, "127.0.58.11")])],
    )
    .await;
    let agent = AgentProcess::start("127.0.58.1", grpc, &dir.path().join("a"), &[]).await;
    let (status, headers, _) = get_via(
        agent.outgoing_addr,
        "world",
        "/",
        &[
            ("connection", "x-private, keep-alive"),
            ("x-private", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-authorization", "Basic Zm9vOmJhcg=="),
            ("x-kept", "1"),
        ],
    )
    .await;
    assert_eq!(status, 200);
    for gone in [
        "x-seen-x-private",
        "x-seen-keep-alive",
        "x-seen-proxy-authorization",
        "x-seen-connection",
    ] {
        assert!(!headers.contains_key(gone), "{gone} was forwarded");
    }
    assert_eq!(headers["x-seen-x-kept"], "1");
    assert!(
        headers["x-seen-via"]
            .to_str()
            .unwrap()
            .contains("1.1 ecsmesh")
    );
    assert_eq!(headers["via"], "1.1 ecsmesh", "Via on the response");
    // HTTP/2 keeps `te: trailers` (gRPC needs it) and says so in Via.
    let (status, headers, _) = h2c(
        agent.outgoing_addr,
        "world",
        "GET",
        &[("te", "trailers")],
        "",
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(headers["x-seen-te"], "trailers");
    assert!(
        headers["x-seen-via"]
            .to_str()
            .unwrap()
            .contains("2 ecsmesh")
    );
}

/// A raw HTTP/1.1 request for `host` (closing): status and the whole head.
async fn raw_status(addr: SocketAddr, method: &str, host: &str) -> (u16, String, String) {
    let answer = raw(
        addr,
        &format!(
            "{method} / HTTP/1.1\r\nhost: {host}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
        ),
    )
    .await;
    let status = answer.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    (status, head.to_owned(), body.to_owned())
}

/// A server on `ip` that reads a request head and then either closes
/// (`answer` empty) or writes `answer` and closes; counts connections.
async fn rude_server(
    ip: &str,
    answer: &'static [u8],
) -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicU64>) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = std::sync::Arc::clone(&hits);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = vec![0; 4096];
                let _ = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await;
                let _ = s.write_all(answer).await;
            });
        }
    });
    (addr, hits)
}

#[tokio::test]
async fn failures_are_named_by_what_happened() {
    let dir = tempfile::tempdir().unwrap();
    let (closer, closer_hits) = rude_server("127.0.60.11", b"").await;
    let (garbler, garbler_hits) = rude_server("127.0.60.12", b"HELLO THERE\r\n\r\n").await;
    let (_ctl, grpc) = mesh(
        dir.path(),
        &[
            ("/#/ecs/demo/closer", &[(closer, "127.0.60.11")]),
            ("/#/ecs/demo/garbler", &[(garbler, "127.0.60.12")]),
        ],
    )
    .await;
    let agent = AgentProcess::start("127.0.60.1", grpc, &dir.path().join("a"), &[]).await;
    // Closed after the request was written: a reset, and a POST is not resent.
    let (status, head, body) = raw_status(agent.outgoing_addr, "POST", "closer").await;
    assert_eq!(status, 502, "{head}");
    assert!(body.starts_with("connection reset:"), "{body}");
    assert_eq!(closer_hits.load(std::sync::atomic::Ordering::SeqCst), 1);
    // Not HTTP at all: a protocol error.
    let (status, _, body) = raw_status(agent.outgoing_addr, "POST", "garbler").await;
    assert_eq!(status, 502);
    assert!(body.starts_with("protocol error:"), "{body}");
    assert_eq!(garbler_hits.load(std::sync::atomic::Ordering::SeqCst), 1);
    for (client, class) in [("closer", "reset"), ("garbler", "protocol")] {
        let series = format!(
            "ecsmesh_agent_client_failures_total{{client=\"/#/ecs/demo/{client}\",class=\"{class}\"}}"
        );
        assert_eq!(agent.metric(&series).await, 1.0, "{series}");
    }
}

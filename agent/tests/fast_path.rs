//! The outgoing listener's HTTP/1 fast path (agent/src/proxy/fast.rs)
//! against a scripted upstream that answers in every framing HTTP/1.1
//! has: what the client gets, what the upstream sees, connections kept
//! and replaced, requests handed to hyper mid-connection, retries, and no
//! allocation per request. Each test owns a 127.0.8x.0/24 range.

#![allow(
    clippy::unwrap_used,
    clippy::too_many_lines,
    clippy::float_cmp,
    clippy::cast_precision_loss
)]

use std::collections::HashMap;
use std::io::{Read as _, Write as _};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ecsmesh_agent::config::{Args, Config, FileConfig};
use ecsmesh_agent::metrics::Metrics;
use ecsmesh_agent::proxy::{Proxy, Side};
use ecsmesh_agent::routes::{Routes, TableSettings};
use ecsmesh_dtab::{Dtab, Path};
use ecsmesh_state::{Endpoint, EndpointSet, MeshState};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A raw HTTP/1.1 server answering by path; counts connections and
/// requests.
struct Scripted {
    addr: SocketAddr,
    connections: Arc<AtomicU64>,
    requests: Arc<AtomicU64>,
}

/// The scripted answers: (bytes, then close the connection).
fn answer(method: &str, path: &str, head: &[u8], n: u64) -> (Vec<u8>, bool) {
    let fixed = |s: &str| (s.as_bytes().to_vec(), false);
    match path {
        "/len" => fixed("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Up: 1\r\n\r\nhello"),
        "/chunked" => fixed(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: x-t\r\n\r\n5;e=1\r\nhello\r\n6\r\n world\r\n0\r\nx-t: 1\r\n\r\n",
        ),
        "/continue" => fixed(
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        ),
        "/204" => fixed("HTTP/1.1 204 No Content\r\nX-A: b\r\n\r\n"),
        "/head" if method == "HEAD" => fixed("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n"),
        "/hop" => fixed(
            "HTTP/1.1 200 OK\r\nConnection: x-private, keep-alive\r\nX-Private: s\r\nKeep-Alive: timeout=5\r\nContent-Length: 1\r\n\r\nh",
        ),
        "/close" => (b"HTTP/1.1 200 OK\r\n\r\nuntil the end".to_vec(), true),
        // Answers, then closes without saying so.
        "/drop" => (
            b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ndrop".to_vec(),
            true,
        ),
        "/big" => {
            let mut v = b"HTTP/1.1 200 OK\r\nContent-Length: 1048576\r\n\r\n".to_vec();
            v.extend(std::iter::repeat_n(b'x', 1 << 20));
            (v, false)
        }
        // Every other request fails: a retry must go through.
        "/flaky" if n % 2 == 1 => fixed("HTTP/1.1 503 Busy\r\nContent-Length: 4\r\n\r\nbusy"),
        "/flaky" => fixed("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"),
        "/garbage" => (b"NOT HTTP AT ALL\r\n\r\n".to_vec(), true),
        _ => {
            let mut v =
                format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", head.len()).into_bytes();
            v.extend_from_slice(head);
            (v, false)
        }
    }
}

impl Scripted {
    async fn start(ip: &str) -> Self {
        let listener = TcpListener::bind((ip, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicU64::new(0));
        let requests = Arc::new(AtomicU64::new(0));
        let (c, r) = (Arc::clone(&connections), Arc::clone(&requests));
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                c.fetch_add(1, Ordering::Relaxed);
                let r = Arc::clone(&r);
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    loop {
                        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                            let mut chunk = [0_u8; 4096];
                            match s.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                            continue;
                        };
                        let head: Vec<u8> = buf.drain(..end + 4).collect();
                        let text = String::from_utf8_lossy(&head).into_owned();
                        let mut first = text.split_whitespace();
                        let (method, path) =
                            (first.next().unwrap_or(""), first.next().unwrap_or(""));
                        let n = r.fetch_add(1, Ordering::Relaxed);
                        let (bytes, close) = answer(method, path, &head, n);
                        if s.write_all(&bytes).await.is_err() || close {
                            return;
                        }
                    }
                });
            }
        });
        Self {
            addr,
            connections,
            requests,
        }
    }
}

/// A proxy (outgoing listener only) on `ip`, routing `/svc/<name>` to
/// each set's endpoints; no controller.
async fn proxy(
    ip: &str,
    sets: &[(&str, &[SocketAddr])],
    tweak: impl FnOnce(&mut Config),
) -> (SocketAddr, Arc<Metrics>, watch::Sender<bool>) {
    serve(ip, Side::Outgoing, sets, None, tweak).await
}

/// A proxy's `side` listener on `ip`; the endpoints run on `endpoint_host`
/// (their `host_ip`), if given.
async fn serve(
    ip: &str,
    side: Side,
    sets: &[(&str, &[SocketAddr])],
    endpoint_host: Option<&str>,
    tweak: impl FnOnce(&mut Config),
) -> (SocketAddr, Arc<Metrics>, watch::Sender<bool>) {
    let host: IpAddr = ip.parse().unwrap();
    let mut config = Config::resolve(&Args::default(), FileConfig::default()).unwrap();
    config.mode = ecsmesh_agent::config::Mode::Direct;
    config.request_timeout = Duration::from_secs(5);
    config.attempt_timeout = Duration::from_secs(2);
    tweak(&mut config);
    let metrics = Arc::new(Metrics::new());
    let routes = Arc::new(Routes::new(TableSettings::new("default".into(), host)));
    let mesh = MeshState {
        dtabs: [(
            "default".to_owned(),
            Arc::new(Dtab::read("/svc=>/#/ecs/fast").unwrap()),
        )]
        .into(),
        sets: sets
            .iter()
            .map(|(name, eps)| {
                let set: EndpointSet = eps
                    .iter()
                    .map(|a| match endpoint_host {
                        Some(h) => Endpoint::new(*a).with_meta("host_ip", h),
                        None => Endpoint::new(*a),
                    })
                    .collect();
                (
                    Path::read(&format!("/#/ecs/fast/{name}")).unwrap(),
                    Arc::new(set),
                )
            })
            .collect(),
        ..MeshState::default()
    };
    routes.install(1, "e".into(), Arc::new(mesh));
    let listener = TcpListener::bind((host, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let proxy = Arc::new(Proxy::new(routes, config, host, Arc::clone(&metrics)));
    let (stop, stopped) = watch::channel(false);
    tokio::spawn(proxy.serve(side, listener, stopped, Duration::from_secs(1)));
    (addr, metrics, stop)
}

/// One response off a keep-alive connection: status, headers, body.
async fn response(
    s: &mut TcpStream,
    buf: &mut Vec<u8>,
    head_request: bool,
) -> (u16, HashMap<String, String>, Vec<u8>) {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut headers);
        if let httparse::Status::Complete(len) = resp.parse(buf).unwrap() {
            let code = resp.code.unwrap();
            let map: HashMap<String, String> = resp
                .headers
                .iter()
                .map(|h| {
                    (
                        h.name.to_ascii_lowercase(),
                        String::from_utf8_lossy(h.value).into_owned(),
                    )
                })
                .collect();
            buf.drain(..len);
            let body = if head_request || code == 204 {
                Vec::new()
            } else if let Some(n) = map.get("content-length") {
                let n: usize = n.parse().unwrap();
                while buf.len() < n {
                    read_more(s, buf).await;
                }
                buf.drain(..n).collect()
            } else {
                assert_eq!(
                    map.get("transfer-encoding").map(String::as_str),
                    Some("chunked")
                );
                let mut data = Vec::new();
                loop {
                    let mut c = Vec::new();
                    loop {
                        if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
                            c.extend(buf.drain(..i + 2));
                            break;
                        }
                        read_more(s, buf).await;
                    }
                    let text = String::from_utf8_lossy(&c);
                    let size =
                        usize::from_str_radix(text.trim().split(';').next().unwrap(), 16).unwrap();
                    if size == 0 {
                        // Trailers, up to the empty line.
                        loop {
                            if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
                                let l: Vec<u8> = buf.drain(..i + 2).collect();
                                if l.len() == 2 {
                                    break;
                                }
                            } else {
                                read_more(s, buf).await;
                            }
                        }
                        break;
                    }
                    while buf.len() < size + 2 {
                        read_more(s, buf).await;
                    }
                    data.extend(buf.drain(..size));
                    buf.drain(..2);
                }
                data
            };
            return (code, map, body);
        }
        read_more(s, buf).await;
    }
}

async fn read_more(s: &mut TcpStream, buf: &mut Vec<u8>) {
    let mut chunk = vec![0_u8; 16 << 10];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk))
        .await
        .expect("an answer within 5 s")
        .unwrap();
    assert!(
        n > 0,
        "connection closed; had {:?}",
        String::from_utf8_lossy(buf)
    );
    buf.extend_from_slice(&chunk[..n]);
}

async fn get(
    s: &mut TcpStream,
    buf: &mut Vec<u8>,
    method: &str,
    path: &str,
    host: &str,
) -> (u16, HashMap<String, String>, Vec<u8>) {
    let req = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    response(s, buf, method == "HEAD").await
}

fn metric(metrics: &Metrics, series: &str) -> f64 {
    let text = metrics.encode();
    text.lines()
        .filter(|l| l.starts_with(series))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn relays_every_framing_and_keeps_connections() {
    let up = Scripted::start("127.0.80.2").await;
    let (addr, metrics, _stop) = proxy("127.0.80.1", &[("fast", &[up.addr])], |_| {}).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut buf = Vec::new();

    let (code, h, body) = get(&mut s, &mut buf, "GET", "/len", "fast").await;
    assert_eq!((code, body.as_slice()), (200, &b"hello"[..]));
    assert_eq!(h["x-up"], "1");
    assert_eq!(h["via"], "1.1 ecsmesh");

    let (code, _, body) = get(&mut s, &mut buf, "GET", "/chunked", "fast").await;
    assert_eq!((code, body.as_slice()), (200, &b"hello world"[..]));

    // Interim responses are not passed on; the final one is.
    let (code, _, body) = get(&mut s, &mut buf, "GET", "/continue", "fast").await;
    assert_eq!((code, body.as_slice()), (200, &b"ok"[..]));

    let (code, h, body) = get(&mut s, &mut buf, "GET", "/204", "fast").await;
    assert_eq!((code, body.len(), h["x-a"].as_str()), (204, 0, "b"));

    let (code, h, _) = get(&mut s, &mut buf, "HEAD", "/head", "fast").await;
    assert_eq!((code, h["content-length"].as_str()), (200, "100"));

    // Hop-by-hop response headers, and those Connection names, stay behind.
    let (code, h, _) = get(&mut s, &mut buf, "GET", "/hop", "fast").await;
    assert_eq!(code, 200);
    for hidden in ["connection", "x-private", "keep-alive"] {
        assert!(!h.contains_key(hidden), "{hidden} forwarded: {h:?}");
    }

    let (code, _, body) = get(&mut s, &mut buf, "GET", "/big", "fast").await;
    assert_eq!((code, body.len()), (200, 1 << 20));

    // Delimited by the upstream closing: sent on in chunks, and the
    // client's connection goes on.
    let (code, h, body) = get(&mut s, &mut buf, "GET", "/close", "fast").await;
    assert_eq!((code, body.as_slice()), (200, &b"until the end"[..]));
    assert_eq!(h["transfer-encoding"], "chunked");

    // What the upstream saw: the client's lines without the hop-by-hop
    // ones, plus Via and the context headers.
    let req = "GET /echo?q=1 HTTP/1.1\r\nHost: fast\r\nX-Mine: 1\r\nConnection: keep-alive\r\nKeep-Alive: 5\r\nProxy-Authorization: secret\r\nTE: gzip\r\n\r\n";
    s.write_all(req.as_bytes()).await.unwrap();
    let (code, _, seen) = response(&mut s, &mut buf, false).await;
    let seen = String::from_utf8(seen).unwrap().to_ascii_lowercase();
    assert_eq!(code, 200);
    assert!(seen.starts_with("get /echo?q=1 http/1.1\r\n"), "{seen}");
    for present in [
        "host: fast\r\n",
        "x-mine: 1\r\n",
        "via: 1.1 ecsmesh\r\n",
        "l5d-dst-service: /svc/fast\r\n",
        "l5d-dst-client: /#/ecs/fast/fast\r\n",
        "l5d-reqid: ",
        "l5d-ctx-deadline: ",
    ] {
        assert!(seen.contains(present), "{present:?} missing in {seen}");
    }
    for absent in ["connection", "keep-alive", "proxy-authorization", "\r\nte:"] {
        assert!(!seen.contains(absent), "{absent:?} forwarded: {seen}");
    }

    // A forward-proxy request names the service in its target.
    s.write_all(b"GET http://fast/len HTTP/1.1\r\nHost: other\r\n\r\n")
        .await
        .unwrap();
    let (code, _, body) = response(&mut s, &mut buf, false).await;
    assert_eq!((code, body.as_slice()), (200, &b"hello"[..]));

    // Every request above went the fast way, on one upstream connection
    // but for the one the upstream closed.
    assert_eq!(
        metric(&metrics, "ecsmesh_agent_fast_path_requests_total"),
        10.0
    );
    assert_eq!(
        metric(&metrics, "ecsmesh_agent_fast_path_declines_total"),
        0.0
    );
    assert_eq!(up.connections.load(Ordering::Relaxed), 2);
    assert_eq!(
        metric(
            &metrics,
            "ecsmesh_agent_requests_total{direction=\"outgoing\",service=\"/svc/fast\",status_class=\"2xx\"}"
        ),
        10.0
    );
}

#[tokio::test]
async fn both_hops_of_linker_to_linker_take_the_fast_path() {
    let up = Scripted::start("127.0.85.3").await;
    let sets: &[(&str, &[SocketAddr])] = &[("fast", &[up.addr])];
    let (incoming, b, _stop_b) = serve(
        "127.0.85.2",
        Side::Incoming,
        sets,
        Some("127.0.85.2"),
        |_| {},
    )
    .await;
    let (outgoing, a, _stop_a) = serve(
        "127.0.85.1",
        Side::Outgoing,
        sets,
        Some("127.0.85.2"),
        |c| {
            c.mode = ecsmesh_agent::config::Mode::LinkerToLinker;
            c.incoming_port = incoming.port();
        },
    )
    .await;
    let mut s = TcpStream::connect(outgoing).await.unwrap();
    let mut buf = Vec::new();
    let (code, h, seen) = get(&mut s, &mut buf, "GET", "/echo", "fast").await;
    assert_eq!(code, 200);
    // Each agent appends its Via, on the way there and back.
    assert_eq!(h["via"], "1.1 ecsmesh");
    let seen = String::from_utf8(seen).unwrap().to_ascii_lowercase();
    assert_eq!(seen.matches("via: 1.1 ecsmesh\r\n").count(), 2, "{seen}");
    for once in [
        "l5d-dst-service: /svc/fast\r\n",
        "l5d-dst-client: /#/ecs/fast/fast\r\n",
        "l5d-reqid: ",
        "l5d-ctx-deadline: ",
    ] {
        assert_eq!(seen.matches(once).count(), 1, "{once:?} in {seen}");
    }
    // The deadline the second agent sends is its own reading of the

    let line = seen
        .lines()
        .find(|l| l.starts_with("l5d-ctx-deadline"))
        .unwrap();
    let mut nums = line["l5d-ctx-deadline: ".len()..].split(' ');
    let (ts, dl): (u128, u128) = (
        nums.next().unwrap().parse().unwrap(),
        nums.next().unwrap().parse().unwrap(),
    );
    assert!(dl > ts && dl - ts <= 10_000_000_000, "{line}");
    for m in [&a, &b] {
        assert_eq!(metric(m, "ecsmesh_agent_fast_path_requests_total"), 1.0);
        assert_eq!(metric(m, "ecsmesh_agent_fast_path_declines_total"), 0.0);
    }
    assert_eq!(
        metric(
            &b,
            "ecsmesh_agent_requests_total{direction=\"incoming\",service=\"/svc/fast\",status_class=\"2xx\"}"
        ),
        1.0
    );
    // A dtab override goes the general way on the first hop; the second
    // still takes the fast path (it reads the context the first sent).
    s.write_all(b"GET /len HTTP/1.1\r\nHost: fast\r\nl5d-dtab: /svc/x=>/svc/fast\r\n\r\n")
        .await
        .unwrap();
    let (code, _, body) = response(&mut s, &mut buf, false).await;
    assert_eq!((code, body.as_slice()), (200, &b"hello"[..]));
    assert_eq!(
        metric(
            &a,
            "ecsmesh_agent_fast_path_declines_total{reason=\"context\"}"
        ),
        1.0
    );
    assert_eq!(metric(&b, "ecsmesh_agent_fast_path_requests_total"), 2.0);
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let up = Scripted::start("127.0.81.2").await;
    let (addr, _metrics, _stop) = proxy("127.0.81.1", &[("fast", &[up.addr])], |_| {}).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut buf = Vec::new();
    s.write_all(
        b"GET /len HTTP/1.1\r\nHost: fast\r\n\r\nGET /chunked HTTP/1.1\r\nHost: fast\r\n\r\nGET /204 HTTP/1.1\r\nHost: fast\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let bodies = [&b"hello"[..], b"hello world", b""];
    for want in bodies {
        let (_, _, body) = response(&mut s, &mut buf, false).await;
        assert_eq!(body, want);
    }
    // The last asked to close: the proxy did.
    let mut rest = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n, 0);
}

#[tokio::test]
async fn requests_it_declines_go_to_hyper_on_the_same_connection() {
    let up = Scripted::start("127.0.82.2").await;
    let (addr, metrics, _stop) = proxy("127.0.82.1", &[("fast", &[up.addr])], |_| {}).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut buf = Vec::new();
    let (code, _, _) = get(&mut s, &mut buf, "GET", "/len", "fast").await;
    assert_eq!(code, 200);
    // A body: hyper takes the connection from here on.
    s.write_all(b"POST /echo HTTP/1.1\r\nHost: fast\r\nContent-Length: 3\r\n\r\nabc")
        .await
        .unwrap();
    let (code, _, seen) = response(&mut s, &mut buf, false).await;
    assert_eq!(code, 200);
    assert!(String::from_utf8_lossy(&seen).starts_with("POST /echo HTTP/1.1"));
    let (code, _, body) = get(&mut s, &mut buf, "GET", "/len", "fast").await;
    assert_eq!((code, body.as_slice()), (200, &b"hello"[..]));
    assert_eq!(
        metric(&metrics, "ecsmesh_agent_fast_path_requests_total"),
        1.0
    );
    assert_eq!(
        metric(
            &metrics,
            "ecsmesh_agent_fast_path_declines_total{reason=\"body\"}"
        ),
        1.0
    );

    // Ambiguous framing is hyper's to refuse, on a fresh connection too.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(
        b"GET /len HTTP/1.1\r\nHost: fast\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    let out = String::from_utf8_lossy(&out);
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");

    // A name with no route: the same 502 as the general path's.
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut buf = Vec::new();
    let (code, h, body) = get(&mut s, &mut buf, "GET", "/", "nowhere").await;
    assert_eq!(code, 502, "{h:?}");
    assert!(h.contains_key("l5d-err"));
    assert!(String::from_utf8_lossy(&body).starts_with("Unable to route request!"));
    // A Host longer than the route cache keeps: the general way (here a
    // name with no route, so its 502).
    let long = "h".repeat(1000);
    let (code, _, _) = get(&mut s, &mut buf, "GET", "/", &long).await;
    assert_eq!(code, 502);
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut buf = Vec::new();
    // Credentials in Host: the general path drops them, and routes.
    let (code, _, body) = get(&mut s, &mut buf, "GET", "/len", "user@fast").await;
    assert_eq!((code, body.as_slice()), (200, &b"hello"[..]));
    assert_eq!(
        metric(
            &metrics,
            "ecsmesh_agent_fast_path_declines_total{reason=\"route\"}"
        ),
        2.0
    );
}

#[tokio::test]
async fn failures_are_retried_and_lost_connections_replaced() {
    let up = Scripted::start("127.0.83.2").await;
    let dead = {
        let l = std::net::TcpListener::bind("127.0.83.3:0").unwrap();
        l.local_addr().unwrap()
    };
    let (addr, metrics, _stop) = proxy(
        "127.0.83.1",
        &[("fast", &[up.addr]), ("half", &[up.addr, dead])],
        |_| {},
    )
    .await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut buf = Vec::new();
    // Every other answer is a 503 (the first is not): the GETs after the
    // first are retried once each and succeed.
    for _ in 0..4 {
        let (code, _, body) = get(&mut s, &mut buf, "GET", "/flaky", "fast").await;
        assert_eq!((code, body.as_slice()), (200, &b"ok"[..]));
    }
    assert_eq!(
        metric(
            &metrics,
            "ecsmesh_agent_retries_total{service=\"/svc/fast\"}"
        ),
        3.0
    );
    // A POST is not retried: the 503 comes back as it was.
    s.write_all(b"POST /flaky HTTP/1.1\r\nHost: fast\r\n\r\n")
        .await
        .unwrap();
    let (code, _, body) = response(&mut s, &mut buf, false).await;
    assert_eq!((code, body.as_slice()), (503, &b"busy"[..]));

    // The upstream closes each connection after answering, unannounced:
    // the kept connection is found closed and replaced.
    for _ in 0..5 {
        let (code, _, body) = get(&mut s, &mut buf, "GET", "/drop", "fast").await;
        assert_eq!((code, body.as_slice()), (200, &b"drop"[..]));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Half the set refuses connections: never sent, so retried elsewhere.
    for _ in 0..10 {
        let (code, _, _) = get(&mut s, &mut buf, "GET", "/len", "half").await;
        assert_eq!(code, 200);
    }

    // The proxy's own error to a HEAD: its head only, and the connection
    // goes on.
    let (code, h, _) = get(&mut s, &mut buf, "HEAD", "/len", "nowhere").await;
    assert_eq!(code, 502);
    assert!(h["content-length"].parse::<usize>().unwrap() > 0);
    let (code, _, body) = get(&mut s, &mut buf, "GET", "/len", "fast").await;
    assert_eq!((code, body.as_slice()), (200, &b"hello"[..]));

    // Not HTTP: a 502 named as the protocol error it is.
    let (code, h, body) = get(&mut s, &mut buf, "POST", "/garbage", "fast").await;
    assert_eq!(code, 502);
    assert!(
        String::from_utf8_lossy(&body).contains("did not answer in valid HTTP"),
        "{h:?}"
    );
    assert!(up.requests.load(Ordering::Relaxed) >= 19);
}

/// Per request, once warm, the fast path allocates nothing: the proxy
/// runs on this thread's runtime while a client and the upstream run on
/// threads of their own, and only this thread's allocations are counted.
#[test]
fn the_fast_path_allocates_nothing_per_request() {
    const WARM: usize = 300;
    const MEASURED: usize = 3000;
    let up_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let up = up_rt.block_on(Scripted::start("127.0.84.2"));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (addr, metrics, _stop) = rt.block_on(proxy("127.0.84.1", &[("fast", &[up.addr])], |_| {}));

    // A blocking client on its own thread: WARM requests, a signal, then
    // MEASURED more on the same connection.
    let (warm_tx, warm_rx) = std::sync::mpsc::channel::<()>();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    let (warmed_tx, warmed_rx) = tokio::sync::oneshot::channel::<()>();
    let client = std::thread::spawn(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_nodelay(true).unwrap();
        let one = |s: &mut std::net::TcpStream| {
            s.write_all(b"GET /len HTTP/1.1\r\nHost: fast\r\n\r\n")
                .unwrap();
            let mut got = Vec::new();
            let mut chunk = [0_u8; 1024];
            while !got.ends_with(b"hello") {
                let n = s.read(&mut chunk).unwrap();
                assert!(n > 0);
                got.extend_from_slice(&chunk[..n]);
            }
        };
        for _ in 0..WARM {
            one(&mut s);
        }
        warmed_tx.send(()).unwrap();
        warm_tx.send(()).unwrap();
        go_rx.recv().unwrap();
        for _ in 0..MEASURED {
            one(&mut s);
        }
        done_tx.send(()).unwrap();
    });
    rt.block_on(async { warmed_rx.await.unwrap() });
    warm_rx.recv().unwrap();
    let info = allocation_counter::measure(|| {
        go_tx.send(()).unwrap();
        rt.block_on(async { done_rx.await.unwrap() });
    });
    client.join().unwrap();
    let served = metric(&metrics, "ecsmesh_agent_fast_path_requests_total");
    assert_eq!(served, (WARM + MEASURED) as f64);
    assert!(
        info.count_total < 10,
        "{} allocations ({} bytes) over {MEASURED} requests",
        info.count_total,
        info.bytes_total
    );
    eprintln!(
        "fast path: {} allocations over {MEASURED} requests",
        info.count_total
    );
    drop(up_rt);
}

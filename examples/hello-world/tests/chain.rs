//! hello -> (a fake forward proxy) -> world, over real sockets on 127.0.0.x.

// Helpers outside #[test] functions unwrap too: a failure there is a test failure.
#![allow(clippy::unwrap_used)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use ecsmesh_hello_world::{Config, call_target, l5d_ctx_headers, serve};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

async fn start(ip: &str, text: &str, target: Option<&str>, proxy: Option<&str>) -> SocketAddr {
    let listener = TcpListener::bind((ip, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config = Config::new(text.into(), ip.into(), target.map(Into::into), proxy).unwrap();
    tokio::spawn(serve(listener, config));
    addr
}

#[derive(Debug, Default)]
struct Seen {
    uri: String,
    headers: HeaderMap,
}

/// A forward proxy that knows one name: `world` -> `world_addr`. Records the last request.
async fn fake_proxy(world_addr: SocketAddr, seen: Arc<Mutex<Seen>>) -> SocketAddr {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let seen = Arc::clone(&seen);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let seen = Arc::clone(&seen);
                    async move {
                        *seen.lock().unwrap() = Seen {
                            uri: req.uri().to_string(),
                            headers: req.headers().clone(),
                        };
                        let resp = if req.uri().host() == Some("world") {
                            let ctx = l5d_ctx_headers(req.headers());
                            let body = call_target(None, &world_addr.to_string(), &ctx)
                                .await
                                .unwrap();
                            Response::new(Full::new(Bytes::from(body)))
                        } else {
                            let mut r = Response::new(Full::new(Bytes::from("no route")));
                            *r.status_mut() = StatusCode::BAD_GATEWAY;
                            r
                        };
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

async fn get(addr: SocketAddr, headers: &[(&str, &str)]) -> (StatusCode, String) {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = Request::get("/").header("host", "hello");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = tx
        .send_request(req.body(Full::new(Bytes::new())).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

async fn post(addr: SocketAddr, path: &str, body: &str) -> StatusCode {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::post(path)
        .header("host", "x")
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap();
    tx.send_request(req).await.unwrap().status()
}

#[tokio::test]
async fn world_alone() {
    let world = start("127.0.3.2", "World", None, None).await;
    assert_eq!(
        get(world, &[]).await,
        (StatusCode::OK, "World (127.0.3.2)!".into())
    );
}

#[tokio::test]
async fn hello_calls_world_through_the_proxy_with_ctx_headers_only() {
    let world = start("127.0.3.2", "World", None, None).await;
    let seen = Arc::new(Mutex::new(Seen::default()));
    let proxy = fake_proxy(world, Arc::clone(&seen)).await;
    let hello = start(
        "127.0.3.1",
        "Hello",
        Some("world"),
        Some(&format!("http://{proxy}")),
    )
    .await;

    let (status, body) = get(
        hello,
        &[
            ("l5d-ctx-dtab", "/svc/world=>/svc/world-v2"),
            ("l5d-dtab", "/svc/a=>/svc/b"),
            ("x-other", "1"),
        ],
    )
    .await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, "Hello (127.0.3.1) World (127.0.3.2)!!")
    );
    let seen = seen.lock().unwrap();
    assert_eq!(seen.uri, "http://world/");
    assert_eq!(seen.headers["host"], "world");
    assert_eq!(seen.headers["l5d-ctx-dtab"], "/svc/world=>/svc/world-v2");
    assert!(!seen.headers.contains_key("l5d-dtab"));
    assert!(!seen.headers.contains_key("x-other"));
}

#[tokio::test]
async fn failing_target_is_503_with_the_error() {
    // A proxy that knows no `nowhere`: 502 from it becomes hello's 503.
    let world = start("127.0.3.2", "World", None, None).await;
    let proxy = fake_proxy(world, Arc::default()).await;
    let hello = start(
        "127.0.3.1",
        "Hello",
        Some("nowhere"),
        Some(&proxy.to_string()),
    )
    .await;
    let (status, body) = get(hello, &[]).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.contains("502") && body.contains("no route"), "{body}");

    // A proxy that is not listening at all.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let closed_addr = closed.local_addr().unwrap();
    drop(closed);
    let hello = start(
        "127.0.3.1",
        "Hello",
        Some("world"),
        Some(&closed_addr.to_string()),
    )
    .await;
    let (status, body) = get(hello, &[]).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.contains("connecting to"), "{body}");
}

#[tokio::test]
async fn set_failure_rate_and_latency() {
    let world = start("127.0.3.2", "World", None, None).await;
    assert_eq!(post(world, "/setFailureRate", "1.0").await, StatusCode::OK);
    assert_eq!(get(world, &[]).await.0, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(post(world, "/setFailureRate", "0").await, StatusCode::OK);
    assert_eq!(get(world, &[]).await.0, StatusCode::OK);
    assert_eq!(
        post(world, "/setFailureRate", "1.5").await,
        StatusCode::BAD_REQUEST
    );

    assert_eq!(post(world, "/setLatency", "200").await, StatusCode::OK);
    let t = std::time::Instant::now();
    assert_eq!(get(world, &[]).await.0, StatusCode::OK);
    assert!(t.elapsed() >= std::time::Duration::from_millis(200));
    assert_eq!(
        post(world, "/setLatency", "abc").await,
        StatusCode::BAD_REQUEST
    );
}

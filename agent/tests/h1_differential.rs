//! The fast path's HTTP/1 parsing and framing (agent/src/proxy/h1.rs)
//! against hyper's, on the same bytes: a seeded property test over heads
//! built from the grammar's edge cases and then mutated byte by byte.
//!
//! - Requests: whatever the fast path takes, hyper's server must take too,
//!   with the same method, target, header lines and no body, and must find
//!   the next request exactly where the fast path says this one ends (a
//!   second request follows every input). What the fast path declines,
//!   hyper judges alone, so declines are free.
//! - Responses: for every response head and body, the fast path's reading
//!   (status, body bytes, or an error) must be hyper's client's.
//!
//! `PROPTEST_CASES` sets the cases (default 1500 each); the seed is fixed,
//! so a failure reproduces. `FUZZ_SEED` picks another seed for a longer
//! exploratory run.

#![allow(clippy::unwrap_used, clippy::too_many_lines)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use ecsmesh_agent::proxy::h1::{self, Chunked, Framing, Parsed};
use http_body_util::{BodyExt as _, Empty, Full};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const SECOND: &[u8] = b"GET /second HTTP/1.1\r\nHost: next\r\n\r\n";

fn runner() -> TestRunner {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(1500);
    let seed: u64 = std::env::var("FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x00ec_5e55);
    let mut key = [0_u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    TestRunner::new_with_rng(
        Config {
            cases,
            failure_persistence: None,
            ..Config::default()
        },
        TestRng::from_seed(RngAlgorithm::ChaCha, &key),
    )
}

/// One byte replaced (0), inserted (1) or removed (2) per mutation, at
/// its index into the bytes as they are then.
type Mutation = (prop::sample::Index, u8, u8);

fn mutate(b: &mut Vec<u8>, mutations: &[Mutation]) {
    for &(at, kind, byte) in mutations {
        let i = at.index(b.len() + 1);
        match kind {
            0 if i < b.len() => b[i] = byte,
            1 => b.insert(i, byte),
            _ if i < b.len() => {
                b.remove(i);
            }
            _ => {}
        }
    }
}

/// Request heads from pieces that matter to framing and routing, then
/// mutated: a byte replaced, inserted or removed somewhere.
fn request_bytes() -> impl Strategy<Value = Vec<u8>> {
    let method = prop_oneof![
        4 => Just("GET"),
        1 => prop::sample::select(vec![
            "HEAD", "POST", "DELETE", "OPTIONS", "CONNECT", "PUT", "get", "G\tET",
        ]),
    ];
    let target = prop::sample::select(vec![
        "/",
        "/",
        "/x",
        "/a?b=c",
        "http://svc/x",
        "http://svc",
        "HTTP://Svc:80/p",
        "http://u@svc/",
        "http://svc?q",
        "https://svc/",
        "*",
        "svc:80",
        "//x",
        "/a b",
        "/%41",
    ]);
    let version = prop_oneof![
        4 => Just("HTTP/1.1"),
        1 => prop::sample::select(vec!["HTTP/1.0", "HTTP/2.0", "HTTP/1.1 ", "http/1.1"]),
    ];
    let benign = prop::sample::select(vec![
        "Accept: */*",
        "User-Agent: curl/8",
        "X-Tab:\tv",
        "X-Empty:",
        "X:  spaced  ",
        "l5d-reqid: 1",
        "Via: 1.1 a, 1.1 b",
        "Content-Length: 0",
        "Connection: keep-alive",
        "Connection: close",
        "Keep-Alive: 5",
        "TE: trailers",
        "Proxy-Authorization: x",
    ]);
    let hostile = prop::sample::select(vec![
        "Host: svc",
        "host:svc",
        "Host: svc:8080",
        "Host:",
        "Host: a b",
        "Host: u@svc",
        "Content-Length: 0",
        "Content-Length: 3",
        "Content-Length: +0",
        "Content-Length: 00",
        "Content-Length: 0, 0",
        "Content-Length : 0",
        "Transfer-Encoding: chunked",
        "Transfer-Encoding: gzip",
        "Connection: close",
        "Connection: keep-alive",
        "Connection: Upgrade",
        "Connection: x-a",
        "Connection: close, close",
        "Upgrade: websocket",
        "Expect: 100-continue",
        "l5d-dtab: /svc=>/x",
        "l5d-reqid: 1",
        "Via: 1.1 a, 1.1 b",
        "Keep-Alive: 5",
        "TE: trailers",
        "X-Tab:\tv",
        "X-Obs: \u{00e9}",
        " X-Fold: folded",
        "X-Empty:",
        "X:  spaced  ",
        "Bad Name: v",
        "X-Long: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    ]);
    let header = prop_oneof![4 => benign, 1 => hostile];
    let eol = prop_oneof![6 => Just("\r\n"), 1 => Just("\n")];
    let mutations = prop_oneof![
        2 => Just(Vec::new()),
        1 => prop::collection::vec((any::<prop::sample::Index>(), 0_u8..3, any::<u8>()), 1..3),
    ];
    (
        method,
        target,
        version,
        any::<bool>(),
        prop::collection::vec((header, eol.clone()), 0..6),
        eol,
        mutations,
    )
        .prop_map(|(m, t, v, host, hs, end, mutations)| {
            let mut b = format!("{m} {t} {v}\r\n").into_bytes();
            if host {
                b.extend_from_slice(b"Host: svc\r\n");
            }
            for (h, e) in hs {
                b.extend_from_slice(h.as_bytes());
                b.extend_from_slice(e.as_bytes());
            }
            b.extend_from_slice(end.as_bytes());
            mutate(&mut b, &mutations);
            b
        })
}

/// What hyper's server made of one request.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    uri: String,
    headers: Vec<(String, Vec<u8>)>,
    body: usize,
}

/// Feeds `bytes` to hyper's HTTP/1 server until it has answered `want`
/// requests (or 2 s passed); returns the requests it served.
async fn hyper_requests(bytes: &[u8], want: usize) -> Vec<Seen> {
    let (mut client, server) = tokio::io::duplex(1 << 20);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&seen);
    let service = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
        let record = Arc::clone(&record);
        async move {
            let (parts, body) = req.into_parts();
            let body = body
                .collect()
                .await
                .map_or(usize::MAX, |b| b.to_bytes().len());
            record.lock().unwrap().push(Seen {
                method: parts.method.to_string(),
                uri: parts.uri.to_string(),
                headers: parts
                    .headers
                    .iter()
                    .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
                    .collect(),
                body,
            });
            Ok::<_, std::convert::Infallible>(http::Response::new(Empty::<Bytes>::new()))
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .max_headers(100)
        .serve_connection(hyper_util::rt::TokioIo::new(server), service);
    let feed = async {
        client.write_all(bytes).await.unwrap();
        let mut out = Vec::new();
        let answers = |out: &[u8]| out.windows(9).filter(|w| w == b"HTTP/1.1 ").count();
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            let mut chunk = [0_u8; 4096];
            while answers(&out) < want {
                match client.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => out.extend_from_slice(&chunk[..n]),
                }
            }
        })
        .await;
        // Then a little longer, for a request too many.
        let mut chunk = [0_u8; 4096];
        let _ = tokio::time::timeout(Duration::from_millis(20), client.read(&mut chunk)).await;
        drop(client);
    };
    let _ = tokio::time::timeout(Duration::from_secs(3), async {
        let (_, ()) = tokio::join!(conn, feed);
    })
    .await;
    seen.lock().unwrap().clone()
}

#[test]
fn requests_the_fast_path_takes_are_read_as_hyper_reads_them() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let taken = std::cell::Cell::new(0_u32);
    runner()
        .run(&request_bytes(), |bytes| {
            let mut headers = h1::headers();
            let Parsed::Request(head) = h1::parse_request(&bytes, &mut headers, 100, 64 << 10)
            else {
                return Ok(());
            };
            taken.set(taken.get() + 1);
            let mut input = bytes[..head.len].to_vec();
            input.extend_from_slice(SECOND);
            // After `Connection: close`, nothing more is served.
            let want = if head.close { 1 } else { 2 };
            let seen = rt.block_on(hyper_requests(&input, want));
            let show = String::from_utf8_lossy(&bytes);
            prop_assert_eq!(seen.len(), want, "hyper served {:?} of {:?}", seen, show);
            let first = &seen[0];
            if let Some(second) = seen.get(1) {
                prop_assert_eq!(
                    &second.uri,
                    "/second",
                    "the next request starts elsewhere: {:?}",
                    show
                );
            }
            prop_assert_eq!(&first.method, head.method);
            prop_assert_eq!(first.body, 0);
            match head.authority {
                None => prop_assert_eq!(first.uri.as_bytes(), head.path),
                Some(authority) => {
                    let uri: http::Uri = first.uri.parse().unwrap();
                    prop_assert_eq!(
                        uri.authority().map(|a| a.as_str().to_ascii_lowercase()),
                        Some(String::from_utf8_lossy(authority).to_ascii_lowercase())
                    );
                    prop_assert_eq!(
                        uri.path_and_query()
                            .map_or("/", http::uri::PathAndQuery::as_str)
                            .as_bytes(),
                        head.path
                    );
                }
            }
            let ours: Vec<(String, Vec<u8>)> = head
                .headers
                .iter()
                .map(|h| (h.name.to_ascii_lowercase(), h.value.to_vec()))
                .collect();
            // A HeaderMap groups a name's lines together: compare by name,
            // each name's values in order.
            let mut theirs = first.headers.clone();
            theirs.sort_by(|a, b| a.0.cmp(&b.0));
            let mut ours = ours;
            ours.sort_by(|a, b| a.0.cmp(&b.0));
            prop_assert_eq!(&theirs, &ours, "header lines differ: {:?}", show);
            Ok(())
        })
        .unwrap();
    // The generator must reach the fast path often, or this proves little.
    let taken = taken.get();
    assert!(
        taken > 100,
        "only {taken} inputs were taken by the fast path"
    );
}

/// Response heads and bodies from framing's edge cases, then mutated.
fn response_bytes() -> impl Strategy<Value = (bool, Vec<u8>)> {
    let status = prop::sample::select(vec![
        "HTTP/1.1 200 OK",
        "HTTP/1.1 204 No Content",
        "HTTP/1.1 304 Not Modified",
        "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK",
        "HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\nHTTP/1.1 404 Not Found",
        "HTTP/1.0 200 OK",
        "HTTP/1.1 500 ",
        "HTTP/1.1 99 X",
        "HTTP/1.1 2000 X",
    ]);
    let header = prop::sample::select(vec![
        "Content-Length: 5",
        "Content-Length: 0",
        "Content-Length: 5, 5",
        "Content-Length: 5, 6",
        "Content-Length: +5",
        "Content-Length: 99999999999999999999",
        "Transfer-Encoding: chunked",
        "Transfer-Encoding: gzip, chunked",
        "Transfer-Encoding: chunked, gzip",
        "Transfer-Encoding: identity",
        "Connection: close",
        "Connection: keep-alive",
        "X-A: b",
    ]);
    let body = prop::sample::select(vec![
        "hello",
        "5\r\nhello\r\n0\r\n\r\n",
        "5;ext=\"v\"\r\nhello\r\n0\r\n\r\n",
        "5 \r\nhello\r\n0\r\n\r\n",
        "05\r\nhello\r\n0\r\n\r\n",
        "A\r\n0123456789\r\n0\r\nX-T: 1\r\n\r\n",
        "5\r\nhello\r\n0\r\n",
        "5\nhello\n0\n\n",
        "5\r\nhelloXX0\r\n\r\n",
        "ffffffffffffffffff\r\n",
        "",
    ]);
    (
        any::<bool>(),
        status,
        prop::collection::vec(header, 0..4),
        body,
        prop::collection::vec((any::<prop::sample::Index>(), 0_u8..3, any::<u8>()), 0..2),
    )
        .prop_map(|(head_request, s, hs, body, mutations)| {
            let mut b = format!("{s}\r\n").into_bytes();
            for h in hs {
                b.extend_from_slice(h.as_bytes());
                b.extend_from_slice(b"\r\n");
            }
            b.extend_from_slice(b"\r\n");
            b.extend_from_slice(body.as_bytes());
            mutate(&mut b, &mutations);
            (head_request, b)
        })
}

/// How a response read ended: its status and body, or an error.
#[derive(Debug, PartialEq, Eq)]
enum Read {
    Ok(u16, Vec<u8>),
    Err,
}

/// The fast path's reading of a whole response (the server then closes):
/// past interim responses, framed by [`h1::parse_response`], a chunked
/// body ended by [`Chunked`].
fn fast_read(head_request: bool, bytes: &[u8]) -> Read {
    let mut at = 0;
    loop {
        let mut headers = h1::headers();
        let Ok(Some(head)) = h1::parse_response(&bytes[at..], &mut headers, head_request) else {
            return Read::Err;
        };
        if head.code == 101 {
            return Read::Err;
        }
        if head.code < 200 {
            at += head.len;
            continue;
        }
        let body = &bytes[at + head.len..];
        return match head.framing {
            Framing::Empty => Read::Ok(head.code, Vec::new()),
            Framing::Length(n) => match usize::try_from(n) {
                Ok(n) if body.len() >= n => Read::Ok(head.code, body[..n].to_vec()),
                _ => Read::Err,
            },
            Framing::Close => Read::Ok(head.code, body.to_vec()),
            Framing::Chunked => {
                let mut c = Chunked::default();
                match c.scan(body) {
                    Ok(n) if c.is_done() => {
                        decode(&body[..n]).map_or(Read::Err, |d| Read::Ok(head.code, d))
                    }
                    _ => Read::Err,
                }
            }
        };
    }
}

/// The data of a chunked body the scanner accepted (the test's own
/// decoder: sizes, then data, over the grammar the scanner checked).
fn decode(mut body: &[u8]) -> Option<Vec<u8>> {
    let mut data = Vec::new();
    loop {
        let end = body.windows(2).position(|w| w == b"\r\n")?;
        let line = &body[..end];
        let digits = line.split(|b| *b == b';').next()?.trim_ascii();
        let size = usize::from_str_radix(std::str::from_utf8(digits).ok()?, 16).ok()?;
        body = &body[end + 2..];
        if size == 0 {
            return Some(data);
        }
        data.extend_from_slice(body.get(..size)?);
        body = body.get(size + 2..)?;
    }
}

/// hyper's client reading the same response to a GET or a HEAD.
async fn hyper_read(head_request: bool, bytes: &[u8]) -> Read {
    let (client, mut server) = tokio::io::duplex(1 << 20);
    let Ok((mut send, conn)) = hyper::client::conn::http1::handshake::<_, Full<Bytes>>(
        hyper_util::rt::TokioIo::new(client),
    )
    .await
    else {
        return Read::Err;
    };
    let driver = tokio::spawn(conn);
    // Once the request head is in, the whole answer, then the end of the
    // stream (hyper's client refuses bytes that come before a request).
    let answer = bytes.to_vec();
    let respond = tokio::spawn(async move {
        let mut req = Vec::new();
        let mut chunk = [0_u8; 1024];
        while !req.windows(4).any(|w| w == b"\r\n\r\n") {
            match server.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => req.extend_from_slice(&chunk[..n]),
            }
        }
        let _ = server.write_all(&answer).await;
        let _ = server.shutdown().await;
        let _ = server.read_to_end(&mut req).await;
    });
    let request = async {
        let req = http::Request::builder()
            .method(if head_request { "HEAD" } else { "GET" })
            .uri("/")
            .header("host", "x")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let Ok(resp) = send.send_request(req).await else {
            return Read::Err;
        };
        let code = resp.status().as_u16();
        match resp.into_body().collect().await {
            Ok(b) => Read::Ok(code, b.to_bytes().to_vec()),
            Err(_) => Read::Err,
        }
    };
    let read = tokio::time::timeout(Duration::from_secs(3), request)
        .await
        .unwrap_or(Read::Err);
    driver.abort();
    respond.abort();
    read
}

#[test]
fn responses_are_framed_as_hyper_frames_them() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let read = std::cell::Cell::new(0_u32);
    runner()
        .run(&response_bytes(), |(head_request, bytes)| {
            let ours = fast_read(head_request, &bytes);
            let theirs = rt.block_on(hyper_read(head_request, &bytes));
            if matches!(ours, Read::Ok(..)) {
                read.set(read.get() + 1);
            }
            prop_assert_eq!(
                &ours,
                &theirs,
                "{} {:?}",
                if head_request { "HEAD" } else { "GET" },
                String::from_utf8_lossy(&bytes)
            );
            Ok(())
        })
        .unwrap();
    let read = read.get();
    assert!(read > 100, "only {read} responses were read");
}

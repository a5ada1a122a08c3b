//! The listeners' limits, against the real `ecsmesh-agent` binary: slow
//! heads (slowloris), idle keep-alive connections, connection floods,
//! file-descriptor exhaustion, HTTP/2 stream limits and oversized heads.
//! Each test owns a 127.0.N.0/24 range (N = 40, 42..=47) so they run in
//! parallel; every loop is bounded in count and time.

#![allow(
    clippy::unwrap_used,
    clippy::too_many_lines,
    clippy::cast_precision_loss
)]

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{AgentProcess, Upstream, rewrite};
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

/// A controller publishing `entries`; the directory holds its store and
/// the agent's state.
async fn mesh(
    entries: &[(&str, &[(SocketAddr, &str)])],
) -> (tempfile::TempDir, ecsmesh_controller::Controller, u16) {
    let dir = tempfile::tempdir().unwrap();
    let (ctl, grpc) = common::mesh(dir.path(), entries).await;
    (dir, ctl, grpc)
}

/// Runs the agent with at most 256 open files (soft and hard).
const ULIMIT_256: [&str; 4] = ["sh", "-c", "ulimit -n 256 && exec \"$@\"", "sh"];

/// A series' value in the agent's `/metrics`, as a whole number.
#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
async fn value(agent: &AgentProcess, series: &str) -> u64 {
    agent.metric(series).await.round() as u64
}

fn series(name: &str, listener: &str, label: &str, value: &str) -> String {
    format!("ecsmesh_agent_listener_{name}{{listener=\"{listener}\",{label}=\"{value}\"}}")
}

fn closed(reason: &str) -> String {
    series("closed_connections_total", "outgoing", "reason", reason)
}

fn refused() -> String {
    series(
        "refused_connections_total",
        "outgoing",
        "reason",
        "max_connections",
    )
}

fn limit(listener: &str, limit: &str) -> String {
    series("limit", listener, "limit", limit)
}

/// An HTTP/1 client on one connection, in forward-proxy form as
/// `http_proxy` makes clients send.
struct H1 {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    conn: tokio::task::JoinHandle<()>,
}

impl H1 {
    async fn connect(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        let conn = tokio::spawn(async move {
            let _ = conn.await;
        });
        Self { sender, conn }
    }

    async fn get(&mut self, host: &str) -> Result<u16, hyper::Error> {
        self.sender.ready().await?;
        let req = http::Request::get(format!("http://{host}/"))
            .header("host", host)
            .body(Full::default())
            .unwrap();
        let resp = self.sender.send_request(req).await?;
        let status = resp.status().as_u16();
        resp.into_body().collect().await?;
        Ok(status)
    }

    /// How long until the agent closes the connection (at most `limit`).
    async fn closed_within(&mut self, limit: Duration) -> Option<Duration> {
        let started = Instant::now();
        let closed = tokio::time::timeout(limit, &mut self.conn).await.is_ok();
        closed.then(|| started.elapsed())
    }
}

impl Drop for H1 {
    fn drop(&mut self) {
        self.conn.abort();
    }
}

/// An h2c client on one connection.
async fn h2(
    addr: SocketAddr,
) -> (
    hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    tokio::task::JoinHandle<()>,
) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    let conn = tokio::spawn(async move {
        let _ = conn.await;
    });
    (sender, conn)
}

async fn h2_get(
    sender: &mut hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    req: http::Request<Full<Bytes>>,
) -> Result<u16, hyper::Error> {
    sender.ready().await?;
    let resp = sender.send_request(req).await?;
    let status = resp.status().as_u16();
    resp.into_body().collect().await?;
    Ok(status)
}

fn h2_request(host: &str) -> http::Request<Full<Bytes>> {
    http::Request::get(format!("http://{host}/"))
        .version(http::Version::HTTP_2)
        .body(Full::default())
        .unwrap()
}

/// Whether the peer closes `stream` within `limit` (EOF or reset; an
/// answer instead is a failure).
async fn closes_within(stream: &mut TcpStream, limit: Duration) -> bool {
    let mut buf = [0; 512];
    match tokio::time::timeout(limit, stream.read(&mut buf)).await {
        Err(_) => false,
        Ok(Ok(0) | Err(_)) => true,
        Ok(Ok(n)) => panic!(
            "an answer instead of a close: {:?}",
            String::from_utf8_lossy(&buf[..n])
        ),
    }
}

/// Sends `request` on a fresh connection and reads one answer: (status,
/// body). The request is written from another task, so an answer sent
/// before the whole request is read (431) still arrives.
async fn exchange(addr: SocketAddr, request: Vec<u8>) -> (u16, String) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    let writer = tokio::spawn(async move {
        let _ = write.write_all(&request).await;
        write
    });
    let mut buf = Vec::new();
    let reading = async {
        let mut chunk = vec![0; 16 << 10];
        loop {
            let n = read.read(&mut chunk).await.unwrap_or(0);
            if n == 0 {
                return;
            }
            buf.extend_from_slice(&chunk[..n]);
            let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                continue;
            };
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                return;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), reading)
        .await
        .expect("an answer within 5 s");
    drop(writer);
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// A GET in forward-proxy form for `host` with `extra` header lines.
fn request_with(host: Option<&str>, name: &str, extra: &[String]) -> Vec<u8> {
    let mut req = format!("GET http://{name}/ HTTP/1.1\r\n");
    if let Some(host) = host {
        req.push_str("host: ");
        req.push_str(host);
        req.push_str("\r\n");
    }
    for line in extra {
        req.push_str(line);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    req.into_bytes()
}

fn fillers(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("x-filler-{i}: {i}")).collect()
}

/// An upstream that answers how many header lines it received.
async fn counting_upstream(ip: &str) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind((ip, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        while let Ok((stream, _)) = listener.accept().await {
            conns.spawn(async move {
                let svc =
                    hyper::service::service_fn(|req: http::Request<hyper::body::Incoming>| {
                        let n = req.headers().len();
                        async move {
                            Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from(
                                n.to_string(),
                            ))))
                        }
                    });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, task)
}

/// CPU time the process has used (user + system), from /proc.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // After the command name (in parentheses, may hold spaces): field 3
    // on; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // /proc counts in USER_HZ, 100 on every Linux ABI.
    ticks as f64 / 100.0
}

/// `n` connections to `addr`, held open by the caller.
async fn flood(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        let stream = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(addr))
            .await
            .expect("connect within 2 s (the kernel's backlog)")
            .unwrap();
        held.push(stream);
    }
    held
}

#[tokio::test]
async fn slow_heads_are_cut_and_keep_alive_clients_are_not() {
    let world = Upstream::start("127.0.40.11", "world").await;
    let (dir, _ctl, grpc) = mesh(&[("/#/ecs/demo/world", &[(world.addr, "127.0.40.11")])]).await;
    let agent = AgentProcess::start(
        "127.0.40.1",
        grpc,
        &dir.path().join("a"),
        &["--header-read-timeout", "1s"],
    )
    .await;
    let addr = agent.outgoing_addr;
    assert_eq!(
        value(&agent, &limit("outgoing", "header_read_timeout_seconds")).await,
        1
    );

    // Slowloris: a head trickling in a byte every 100 ms is cut 1 s after
    // it began, however steadily bytes come.
    let slowloris = async {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let started = Instant::now();
        stream
            .write_all(b"GET http://world/ HTTP/1.1\r\n")
            .await
            .unwrap();
        for byte in b"host: world\r\nx-slow: ".iter().cycle().take(50) {
            if stream.write_all(&[*byte]).await.is_err()
                || closes_within(&mut stream, Duration::from_millis(100)).await
            {
                return started.elapsed();
            }
        }
        panic!("a slow head was still open after 5 s");
    };
    // A connection that sends nothing at all: the same timeout, from accept.
    let silent = async {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let started = Instant::now();
        assert!(closes_within(&mut stream, Duration::from_secs(4)).await);
        started.elapsed()
    };
    // A keep-alive client with pauses longer than the header-read timeout
    // between its requests keeps its connection.
    let steady = async {
        let mut client = H1::connect(addr).await;
        for _ in 0..6 {
            assert_eq!(client.get("world").await.unwrap(), 200);
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    };
    let (slow_took, silent_took, ()) = tokio::join!(slowloris, silent, steady);
    for took in [slow_took, silent_took] {
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_millis(2500),
            "closed after {took:?}"
        );
    }
    assert_eq!(value(&agent, &closed("header_read_timeout")).await, 2);
    assert_eq!(value(&agent, &closed("idle_timeout")).await, 0);
}

#[tokio::test]
async fn idle_connections_close_and_long_requests_do_not() {
    let world = Upstream::start("127.0.42.11", "world").await;
    let slow = Upstream::start_slow("127.0.42.12", "slow", Duration::from_secs(3)).await;
    let (dir, _ctl, grpc) = mesh(&[
        ("/#/ecs/demo/world", &[(world.addr, "127.0.42.11")]),
        ("/#/ecs/demo/slow", &[(slow.addr, "127.0.42.12")]),
    ])
    .await;
    let agent = AgentProcess::start_with(
        "127.0.42.1",
        grpc,
        &dir.path().join("a"),
        &["--header-read-timeout", "1s", "--idle-timeout", "1s"],
        |cmd| {
            rewrite(
                cmd,
                &[],
                &[("--request-timeout", "10s"), ("--attempt-timeout", "10s")],
            );
        },
    )
    .await;
    let addr = agent.outgoing_addr;

    // HTTP/1: a request three times longer than either timer completes,
    // the connection serves another, then closes about 1 s after going idle.
    let http1 = async {
        let mut client = H1::connect(addr).await;
        let started = Instant::now();
        assert_eq!(client.get("slow").await.unwrap(), 200);
        assert!(started.elapsed() >= Duration::from_secs(3));
        assert_eq!(client.get("world").await.unwrap(), 200);
        let idle = client
            .closed_within(Duration::from_secs(4))
            .await
            .expect("an idle HTTP/1 connection is closed");
        assert!(idle >= Duration::from_millis(900), "{idle:?}");
    };
    // HTTP/2 alike: no stream open and nothing read for the idle timeout.
    let http2 = async {
        let (mut sender, conn) = h2(addr).await;
        let started = Instant::now();
        assert_eq!(h2_get(&mut sender, h2_request("slow")).await.unwrap(), 200);
        assert!(started.elapsed() >= Duration::from_secs(3));
        assert_eq!(h2_get(&mut sender, h2_request("world")).await.unwrap(), 200);
        let idle_from = Instant::now();
        tokio::time::timeout(Duration::from_secs(4), conn)
            .await
            .expect("an idle HTTP/2 connection is closed")
            .unwrap();
        assert!(idle_from.elapsed() >= Duration::from_millis(900));
    };
    tokio::join!(http1, http2);
    assert_eq!(value(&agent, &closed("idle_timeout")).await, 2);
    assert_eq!(value(&agent, &closed("header_read_timeout")).await, 0);
}

#[tokio::test]
async fn connections_past_the_limit_are_closed_at_once() {
    let world = Upstream::start("127.0.43.11", "world").await;
    let (dir, _ctl, grpc) = mesh(&[("/#/ecs/demo/world", &[(world.addr, "127.0.43.11")])]).await;
    let agent = AgentProcess::start(
        "127.0.43.1",
        grpc,
        &dir.path().join("a"),
        &["--max-connections", "8"],
    )
    .await;
    let addr = agent.outgoing_addr;
    assert_eq!(
        value(&agent, &limit("outgoing", "max_connections")).await,
        8
    );
    assert_eq!(
        value(&agent, &limit("incoming", "max_connections")).await,
        8
    );

    let mut held = Vec::new();
    for _ in 0..8 {
        let mut client = H1::connect(addr).await;
        assert_eq!(client.get("world").await.unwrap(), 200);
        held.push(client);
    }
    for _ in 0..4 {
        let mut extra = TcpStream::connect(addr).await.unwrap();
        assert!(
            closes_within(&mut extra, Duration::from_secs(2)).await,
            "a connection past the limit is closed at once"
        );
    }
    assert_eq!(value(&agent, &refused()).await, 4);
    assert_eq!(
        value(
            &agent,
            "ecsmesh_agent_open_connections{listener=\"outgoing\"}"
        )
        .await,
        8
    );
    assert_eq!(held[0].get("world").await.unwrap(), 200);

    // Two leave: new connections are served again.
    held.truncate(6);
    let mut served = false;
    for _ in 0..50 {
        let mut client = H1::connect(addr).await;
        if let Ok(200) = client.get("world").await {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(served, "a new connection is served once others closed");
    for client in &mut held {
        assert_eq!(client.get("world").await.unwrap(), 200);
    }
}

#[tokio::test]
async fn out_of_file_descriptors_the_agent_backs_off_and_recovers() {
    let world = Upstream::start("127.0.44.11", "world").await;
    let (dir, _ctl, grpc) = mesh(&[("/#/ecs/demo/world", &[(world.addr, "127.0.44.11")])]).await;
    // A limit above what 256 files allow: accepts will fail with EMFILE.
    let agent = AgentProcess::start_with(
        "127.0.44.1",
        grpc,
        &dir.path().join("a"),
        &["--max-connections", "1000"],
        |cmd| rewrite(cmd, &ULIMIT_256, &[]),
    )
    .await;
    let addr = agent.outgoing_addr;
    assert_eq!(
        value(&agent, &limit("outgoing", "max_connections")).await,
        1000
    );

    // More connections than the agent has files: the rest wait in the
    // kernel's backlog while accept fails.
    let attack = flood(addr, 300).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (cpu, wall) = (cpu_seconds(agent.pid()), Instant::now());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (used, wall) = (cpu_seconds(agent.pid()) - cpu, wall.elapsed());
    assert!(
        used < 0.2 * wall.as_secs_f64(),
        "the agent used {used:.2} s of CPU in {wall:?} at the fd limit"
    );
    drop(attack);

    // Once the attacker is gone the agent serves again, and counted.
    let mut answered = None;
    for _ in 0..50 {
        if let Ok(Ok((200, body))) =
            tokio::time::timeout(Duration::from_secs(1), agent.admin_get("/metrics")).await
        {
            answered = Some(body);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(answered.is_some(), "the admin port answers again");
    let emfile = series("accept_errors_total", "outgoing", "kind", "emfile");
    assert!(value(&agent, &emfile).await >= 1);
    let mut client = H1::connect(addr).await;
    assert_eq!(client.get("world").await.unwrap(), 200);
}

#[tokio::test]
async fn the_default_connection_limit_keeps_the_admin_port_up() {
    let world = Upstream::start("127.0.45.11", "world").await;
    let (dir, _ctl, grpc) = mesh(&[("/#/ecs/demo/world", &[(world.addr, "127.0.45.11")])]).await;
    let agent = AgentProcess::start_with("127.0.45.1", grpc, &dir.path().join("a"), &[], |cmd| {
        rewrite(cmd, &ULIMIT_256, &[]);
    })
    .await;
    // (256 - 256) / 4, raised to the floor of 16.
    assert_eq!(
        value(&agent, &limit("outgoing", "max_connections")).await,
        16
    );

    let _attack = flood(agent.outgoing_addr, 300).await;
    let mut refused_now = 0;
    for _ in 0..50 {
        refused_now = value(&agent, &refused()).await;
        if refused_now >= 284 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(refused_now, 284, "all but 16 refused");
    let (status, body) = tokio::time::timeout(Duration::from_secs(2), agent.admin_get("/metrics"))
        .await
        .expect("the admin port answers while the attacker holds connections")
        .unwrap();
    assert_eq!(status, 200);
    let emfile = series("accept_errors_total", "outgoing", "kind", "emfile");
    assert!(body.contains(&format!("{emfile} 0")), "no accept failed");
}

/// Reads one HTTP/2 frame: (type, flags, stream, payload).
async fn read_frame(stream: &mut TcpStream) -> (u8, u8, u32, Vec<u8>) {
    let mut head = [0; 9];
    stream.read_exact(&mut head).await.unwrap();
    let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
    let id = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
    let mut payload = vec![0; len];
    stream.read_exact(&mut payload).await.unwrap();
    (head[3], head[4], id, payload)
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
    let mut f = vec![len[1], len[2], len[3], kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// A GET for `http://<authority>/` in HPACK without Huffman or indexing:
/// `:method GET`, `:scheme http`, `:path /` from the static table, then
/// `:authority` as a literal.
fn hpack_get(authority: &str) -> Vec<u8> {
    let mut block = vec![
        0x82,
        0x86,
        0x84,
        0x01,
        u8::try_from(authority.len()).unwrap(),
    ];
    block.extend_from_slice(authority.as_bytes());
    block
}

const SETTINGS: u8 = 0x4;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const GOAWAY: u8 = 0x7;
const REFUSED_STREAM: u32 = 0x7;

#[tokio::test]
async fn http2_streams_past_the_limit_wait_or_are_refused() {
    let slow = Upstream::start_slow("127.0.46.11", "slow", Duration::from_secs(1)).await;
    let (dir, _ctl, grpc) = mesh(&[("/#/ecs/demo/slow", &[(slow.addr, "127.0.46.11")])]).await;
    let agent = AgentProcess::start_with(
        "127.0.46.1",
        grpc,
        &dir.path().join("a"),
        &["--h2-max-concurrent-streams", "2"],
        |cmd| {
            rewrite(
                cmd,
                &[],
                &[("--request-timeout", "10s"), ("--attempt-timeout", "10s")],
            );
        },
    )
    .await;
    let addr = agent.outgoing_addr;

    // hyper's client heeds the limit once it has the server's SETTINGS
    // (a burst on a connection younger than that gets REFUSED_STREAM past
    // the limit, safe to retry): four requests on one connection then run
    // two at a time.
    let (mut sender, _conn) = h2(addr).await;
    assert_eq!(h2_get(&mut sender, h2_request("slow")).await.unwrap(), 200);
    let started = Instant::now();
    let requests = (0..4).map(|_| {
        let mut sender = sender.clone();
        async move { h2_get(&mut sender, h2_request("slow")).await.unwrap() }
    });
    let statuses = futures_util::future::join_all(requests).await;
    let took = started.elapsed();
    assert_eq!(statuses, [200; 4]);
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(4),
        "two waves of 1 s: {took:?}"
    );

    // A client that ignores it: the third stream is refused at once.
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    stream.write_all(&frame(SETTINGS, 0, 0, &[])).await.unwrap();
    let (kind, _, _, settings) = read_frame(&mut stream).await;
    assert_eq!(kind, SETTINGS, "the server's preface");
    let values: Vec<(u16, u32)> = settings
        .chunks_exact(6)
        .map(|s| {
            (
                u16::from_be_bytes([s[0], s[1]]),
                u32::from_be_bytes([s[2], s[3], s[4], s[5]]),
            )
        })
        .collect();
    assert!(
        values.contains(&(0x3, 2)),
        "MAX_CONCURRENT_STREAMS: {values:?}"
    );
    assert!(
        values.contains(&(0x6, 65536)),
        "MAX_HEADER_LIST_SIZE: {values:?}"
    );
    stream
        .write_all(&frame(SETTINGS, 0x1, 0, &[]))
        .await
        .unwrap();
    let started = Instant::now();
    for id in [1, 3, 5] {
        // END_STREAM | END_HEADERS
        let headers = frame(HEADERS, 0x5, id, &hpack_get("slow"));
        stream.write_all(&headers).await.unwrap();
    }
    let mut refused_at = None;
    let mut answered = Vec::new();
    let reading = async {
        while answered.len() < 2 {
            let (kind, _, id, payload) = read_frame(&mut stream).await;
            match kind {
                RST_STREAM => {
                    let code = u32::from_be_bytes(payload[..4].try_into().unwrap());
                    assert_eq!((id, code), (5, REFUSED_STREAM));
                    refused_at = Some(started.elapsed());
                }
                HEADERS => answered.push((id, started.elapsed())),
                GOAWAY => panic!("the connection was closed: {payload:?}"),
                _ => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), reading)
        .await
        .expect("answers within 5 s");
    let refused_at = refused_at.expect("stream 5 refused");
    assert!(refused_at < Duration::from_millis(500), "{refused_at:?}");
    assert!(
        answered
            .iter()
            .all(|(id, at)| [1, 3].contains(id) && *at >= Duration::from_millis(900)),
        "{answered:?}"
    );
}

#[tokio::test]
async fn heads_past_the_limits_get_431_and_the_allowed_ones_pass_two_hops() {
    let (upstream, _task) = counting_upstream("127.0.47.11").await;
    let (dir, _ctl, grpc) = mesh(&[("/#/ecs/demo/counted", &[(upstream, "127.0.47.1")])]).await;
    // Linker-to-linker: outgoing → the agent's own incoming port (the
    // endpoint's host is this agent's) → the upstream.
    let agent = AgentProcess::start_with("127.0.47.1", grpc, &dir.path().join("a"), &[], |cmd| {
        rewrite(cmd, &[], &[("--mode", "linker-to-linker")]);
    })
    .await;
    let (outgoing, incoming) = (agent.outgoing_addr, agent.incoming_addr);
    assert_eq!(
        value(&agent, &limit("outgoing", "max_request_headers")).await,
        92
    );
    assert_eq!(
        value(&agent, &limit("incoming", "max_request_headers")).await,
        99
    );

    // The most the agents add: a forward-proxy request without Host, with
    // a dtab override that leaves a residual (92 lines in all).
    let mut lines = fillers(91);
    lines.push("l5d-dtab: /svc/counted=>/#/ecs/demo/counted/extra".to_owned());
    let (status, body) = exchange(outgoing, request_with(None, "counted", &lines)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, "100", "the upstream got hyper's limit exactly");
    // Plainly, with Host.
    let (status, body) = exchange(
        outgoing,
        request_with(Some("counted"), "counted", &fillers(91)),
    )
    .await;
    assert_eq!((status, body.as_str()), (200, "98"));
    // One more is refused by the agent itself.
    let (status, _) = exchange(
        outgoing,
        request_with(Some("counted"), "counted", &fillers(92)),
    )
    .await;
    assert_eq!(status, 431);
    // The incoming port, with what a sending agent adds (its own Via then
    // makes 100): 99 lines pass, 100 do not.
    let from_agent = |n: usize| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let mut lines = vec![
            "via: 1.1 ecsmesh".to_owned(),
            "l5d-dst-service: /svc/counted".to_owned(),
            "l5d-dst-client: /#/ecs/demo/counted".to_owned(),
            "l5d-reqid: 0123456789abcdef".to_owned(),
            format!("l5d-ctx-deadline: {now} {}", now + 10_000_000_000),
        ];
        lines.extend(fillers(n));
        request_with(Some("counted"), "counted", &lines)
    };
    let (status, body) = exchange(incoming, from_agent(93)).await;
    assert_eq!((status, body.as_str()), (200, "100"));
    let (status, _) = exchange(incoming, from_agent(94)).await;
    assert_eq!(status, 431);

    // Bytes: a 60 KiB head passes both hops, 70 KiB is refused.
    let big = |kib: usize| vec![format!("x-big: {}", "a".repeat(kib << 10))];
    let (status, body) =
        exchange(outgoing, request_with(Some("counted"), "counted", &big(60))).await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = exchange(outgoing, request_with(Some("counted"), "counted", &big(70))).await;
    assert_eq!(status, 431);
    // HTTP/2: the header list is bounded alike; h2 answers 431 itself.
    let (mut sender, _conn) = h2(outgoing).await;
    let mut req = h2_request("counted");
    req.headers_mut()
        .insert("x-big", "a".repeat(70 << 10).parse().unwrap());
    let status = h2_get(&mut sender, req).await;
    assert!(matches!(status, Ok(431)), "{status:?}");
}

/// The HTTP/1 fast path meets every client first (agent/src/proxy/fast.rs);
/// through the real binary: names it must not keep (30 KiB each, ever
/// new) leave memory bounded, and heads it must not judge (conflicting
/// lengths, dtab headers) are the general path's.
#[tokio::test]
async fn hostile_heads_meet_the_fast_path_first() {
    let world = Upstream::start("127.0.86.11", "world").await;
    let (dir, _ctl, grpc) = mesh(&[("/#/ecs/demo/world", &[(world.addr, "127.0.86.11")])]).await;
    let agent = AgentProcess::start("127.0.86.1", grpc, &dir.path().join("a"), &[]).await;
    let addr = agent.outgoing_addr;
    let mut client = H1::connect(addr).await;
    assert_eq!(client.get("world").await.unwrap(), 200);
    let before = agent.rss_kib();
    // 600 names of 30 KiB (in the target and in Host), each on a new
    // connection (so each meets the fast path): kept as route-cache keys
    // they would hold 18 MiB, as metric labels hundreds.
    for i in 0..600 {
        let host = format!("n{i}{}", "x".repeat(30 << 10));
        let mut fresh = H1::connect(addr).await;
        assert_eq!(fresh.get(&host).await.unwrap(), 502);
    }
    let grown = agent.rss_kib().saturating_sub(before);
    assert!(grown < 12 << 10, "RSS grew {grown} KiB");
    let declined = "ecsmesh_agent_fast_path_declines_total{reason=\"route\"}";
    assert_eq!(value(&agent, declined).await, 600);
    assert_eq!(client.get("world").await.unwrap(), 200);

    // Conflicting lengths: refused (by hyper), nothing reaches the endpoint.
    let hits = world.hits();
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(
        b"GET / HTTP/1.1\r\nHost: world\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    let out = String::from_utf8_lossy(&out);
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    assert_eq!(world.hits(), hits);

    // A dtab header on the outgoing side: the general path reads it.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: nowhere\r\nl5d-dtab: /svc/nowhere=>/svc/world\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    let out = String::from_utf8_lossy(&out);
    assert!(
        out.starts_with("HTTP/1.1 200") && out.ends_with("world"),
        "{out}"
    );
    let context = "ecsmesh_agent_fast_path_declines_total{reason=\"context\"}";
    assert_eq!(value(&agent, context).await, 1);
}

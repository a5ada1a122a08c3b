//! A small mesh on loopback for the agent's tests: an in-process controller
//! fed endpoint sets directly, upstream servers on 127.0.x.y addresses that
//! say who they are and echo what they received, and agents on their own
//! host IPs.
#![allow(dead_code, clippy::missing_panics_doc, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use ecsmesh_agent::Agent;
use ecsmesh_agent::config::{Args, Config, Mode};
use ecsmesh_controller::Controller;
use ecsmesh_controller::reconcile::BaseDtabs;
use ecsmesh_dtab::{Dtab, Path};
use ecsmesh_state::{Endpoint, EndpointSet};
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

pub const SOURCE: &str = "test";

/// Reserves a free port on `ip` (closed again at once: fine on loopback).
pub fn free_port(ip: &str) -> u16 {
    std::net::TcpListener::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub async fn controller(dir: &std::path::Path, grpc_port: u16) -> Controller {
    Controller::start(controller_config(dir, grpc_port), &[SOURCE])
        .await
        .unwrap()
}

/// The test controller's configuration (plaintext, no token).
pub fn controller_config(
    dir: &std::path::Path,
    grpc_port: u16,
) -> ecsmesh_controller::config::Config {
    ecsmesh_controller::config::Config {
        grpc_addr: SocketAddr::from(([127, 0, 0, 1], grpc_port)),
        admin_addr: "127.0.0.1:0".parse().unwrap(),
        store_dir: dir.to_owned(),
        admin_token: None,
        base_dtabs: BaseDtabs(
            [(
                "default".to_owned(),
                Arc::new(Dtab::read("/svc=>/#/ecs/demo").unwrap()),
            )]
            .into(),
        ),
        ecs: None,
        consul: None,
        consul_store: None,
        dynamodb_store: None,
        replicas: ecsmesh_controller::config::ReplicaSettings::default(),
        security: ecsmesh_controller::config::Security::default(),
    }
}

/// A controller (state under `dir`) on a fresh gRPC port, publishing these
/// endpoint sets; and that port.
pub async fn mesh(
    dir: &std::path::Path,
    entries: &[(&str, &[(SocketAddr, &str)])],
) -> (Controller, u16) {
    let grpc = free_port("127.0.0.1");
    let ctl = controller(&dir.join("ctl"), grpc).await;
    ctl.observed.replace(SOURCE, sets(entries));
    (ctl, grpc)
}

/// Endpoint sets: `(name, [(addr, host ip)])`.
pub fn sets(entries: &[(&str, &[(SocketAddr, &str)])]) -> BTreeMap<Path, Arc<EndpointSet>> {
    entries
        .iter()
        .map(|(name, eps)| {
            let set: EndpointSet = eps
                .iter()
                .map(|(addr, host)| Endpoint::new(*addr).with_meta("host_ip", *host))
                .collect();
            (Path::read(name).unwrap(), Arc::new(set))
        })
        .collect()
}

/// An agent on `host_ip`, following the controller on `controller_port`.
pub async fn agent(
    host_ip: &str,
    controller_port: u16,
    incoming_port: u16,
    mode: Mode,
    state_dir: &std::path::Path,
) -> Agent {
    agent_with(
        host_ip,
        controller_port,
        incoming_port,
        mode,
        state_dir,
        |_| {},
    )
    .await
}

/// Like [`agent`], with a chance to change the configuration.
pub async fn agent_with(
    host_ip: &str,
    controller_port: u16,
    incoming_port: u16,
    mode: Mode,
    state_dir: &std::path::Path,
    tweak: impl FnOnce(&mut Config),
) -> Agent {
    let mut config = Config::resolve(
        &Args::default(),
        ecsmesh_agent::config::FileConfig::default(),
    )
    .unwrap();
    config.host_ip = Some(host_ip.parse().unwrap());
    config.instance_id = Some(format!("i-{host_ip}"));
    config.availability_zone = Some("us-west-1a".into());
    config.controller = format!("http://127.0.0.1:{controller_port}");
    config.state_dir = state_dir.to_owned();
    config.mode = mode;
    config.outgoing_port = 0;
    config.incoming_port = incoming_port;
    config.admin_port = 0;
    config.request_timeout = Duration::from_secs(5);
    config.attempt_timeout = Duration::from_secs(2);
    config.imds_endpoint = Some("http://127.0.0.1:1".into());
    tweak(&mut config);
    Agent::start(config).await.unwrap()
}

/// Waits until the agent runs mesh version `version` or later.
pub async fn converged(agent: &Agent, version: u64) {
    let mut status = agent.status.clone();
    tokio::time::timeout(
        Duration::from_secs(10),
        status.wait_for(|s| s.version >= version),
    )
    .await
    .expect("agent converged within 10 s")
    .unwrap();
}

/// An HTTP/1 + h2c server that answers `<name>` and echoes request headers
/// back as `x-seen-<header>`; counts requests.
#[derive(Debug)]
pub struct Upstream {
    pub addr: SocketAddr,
    pub hits: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Upstream {
    pub async fn start(ip: &str, name: &str) -> Self {
        Self::start_with(ip, name, 200).await
    }

    pub async fn start_with(ip: &str, name: &str, status: u16) -> Self {
        Self::start_full(ip, name, status, Duration::ZERO, false).await
    }

    /// An upstream that takes `delay` to answer.
    pub async fn start_slow(ip: &str, name: &str, delay: Duration) -> Self {
        Self::start_full(ip, name, 200, delay, false).await
    }

    /// An upstream that speaks only HTTP/1 (it answers an HTTP/2 preface
    /// with an HTTP/1 error, as most HTTP/1 servers do).
    pub async fn start_http1_only(ip: &str, name: &str) -> Self {
        Self::start_full(ip, name, 200, Duration::ZERO, true).await
    }

    async fn start_full(
        ip: &str,
        name: &str,
        status: u16,
        delay: Duration,
        http1_only: bool,
    ) -> Self {
        let listener = TcpListener::bind((ip, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicU64::new(0));
        let (name, counter) = (name.to_owned(), Arc::clone(&hits));
        let task = tokio::spawn(async move {
            // Connections live in this task's set: killing the server
            // closes them too, as a crashed process would.
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (name, counter) = (name.clone(), Arc::clone(&counter));
                conns.spawn(async move {
                    let svc = hyper::service::service_fn(
                        move |req: http::Request<hyper::body::Incoming>| {
                            counter.fetch_add(1, Ordering::SeqCst);
                            let mut resp =
                                http::Response::new(Full::new(Bytes::from(name.clone())));
                            *resp.status_mut() = http::StatusCode::from_u16(status).unwrap();
                            for (k, v) in req.headers() {
                                if let Ok(n) =
                                    http::HeaderName::from_bytes(format!("x-seen-{k}").as_bytes())
                                {
                                    resp.headers_mut().append(n, v.clone());
                                }
                            }
                            resp.headers_mut()
                                .insert("x-seen-uri", req.uri().to_string().parse().unwrap());
                            resp.headers_mut().insert(
                                "x-seen-version",
                                format!("{:?}", req.version()).parse().unwrap(),
                            );
                            async move {
                                // The body it read, as x-body: what arrived.
                                if let Ok(body) = req.into_body().collect().await {
                                    let body = body.to_bytes();
                                    if let Ok(v) = http::HeaderValue::from_bytes(&body) {
                                        resp.headers_mut().insert("x-body", v);
                                    }
                                }
                                tokio::time::sleep(delay).await;
                                Ok::<_, Infallible>(resp)
                            }
                        },
                    );
                    if http1_only {
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), svc)
                            .await;
                    } else {
                        let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                            .serve_connection(TokioIo::new(stream), svc)
                            .await;
                    }
                });
            }
        });
        Self { addr, hits, task }
    }

    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::SeqCst)
    }

    /// Stops accepting; open connections die with their tasks.
    pub fn kill(&self) {
        self.task.abort();
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A plain HTTP/1 client (no proxy logic of its own).
pub fn client() -> hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
> {
    hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http()
}

/// GET `http://<host><path>` through the proxy at `proxy` (forward-proxy
/// form, as `http_proxy` does), with extra headers.
pub async fn get_via(
    proxy: SocketAddr,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, http::HeaderMap, String) {
    let mut req = http::Request::get(format!("http://{host}{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(Bytes::new())).unwrap();
    // Sent to the proxy's address with the absolute URI kept.
    let (mut parts, body) = req.into_parts();
    parts.extensions.insert(());
    let stream = tokio::net::TcpStream::connect(proxy).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let resp = sender
        .send_request(http::Request::from_parts(parts, body))
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

/// Runs real curl through the proxy: `http_proxy=<proxy> curl -s <url>`.
pub async fn curl(proxy: SocketAddr, args: &[&str]) -> (String, String) {
    let args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new("curl")
            .env("http_proxy", format!("http://{proxy}"))
            .env_remove("https_proxy")
            .env_remove("no_proxy")
            .env_remove("NO_PROXY")
            .args(["-s", "-S", "--max-time", "10"])
            .args(&args)
            .output()
            .unwrap();
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .unwrap()
}

pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Sends raw bytes and reads the whole answer (the server closes after an
/// HTTP/1.0 exchange).
pub async fn raw(addr: SocketAddr, request: &str) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Rebuilds the spawner's command: `wrapper` runs first and execs the
/// agent (to lower a resource limit), and `set` replaces flags' values (a
/// flag given twice is an error).
pub fn rewrite(cmd: &mut std::process::Command, wrapper: &[&str], set: &[(&str, &str)]) {
    let program = cmd.get_program().to_owned();
    let mut args: Vec<std::ffi::OsString> = cmd.get_args().map(ToOwned::to_owned).collect();
    for (flag, value) in set {
        match args.iter().position(|a| a == flag) {
            Some(i) => args[i + 1] = value.into(),
            None => args.extend([flag.into(), value.into()]),
        }
    }
    let mut new = match wrapper.split_first() {
        Some((first, rest)) => {
            let mut c = std::process::Command::new(first);
            c.args(rest).arg(&program);
            c
        }
        None => std::process::Command::new(&program),
    };
    new.args(args).stdout(std::process::Stdio::null());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => new.env(k, v),
            None => new.env_remove(k),
        };
    }
    *cmd = new;
}

/// The real `ecsmesh-agent` binary, started as a process on `host_ip`
/// (the hostile-input tests attack it, not an in-process copy). Killed on
/// drop.
#[derive(Debug)]
pub struct AgentProcess {
    pub outgoing_addr: SocketAddr,
    pub incoming_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    child: std::process::Child,
}

impl AgentProcess {
    /// Starts the binary with `args` added to the test defaults (direct
    /// mode, short timeouts), and waits until it has applied a snapshot.
    pub async fn start(
        host_ip: &str,
        controller_port: u16,
        state_dir: &std::path::Path,
        args: &[&str],
    ) -> Self {
        Self::start_with(host_ip, controller_port, state_dir, args, |_| {}).await
    }

    /// Like [`AgentProcess::start`], with a chance to change the command
    /// (environment, resource limits) before it runs.
    pub async fn start_with(
        host_ip: &str,
        controller_port: u16,
        state_dir: &std::path::Path,
        args: &[&str],
        tweak: impl FnOnce(&mut std::process::Command),
    ) -> Self {
        let (outgoing, incoming, admin) =
            (free_port(host_ip), free_port(host_ip), free_port(host_ip));
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_ecsmesh-agent"));
        cmd.args(["--host-ip", host_ip])
            .args(["--instance-id", &format!("i-{host_ip}")])
            .args(["--availability-zone", "us-west-1a"])
            .args([
                "--controller",
                &format!("http://127.0.0.1:{controller_port}"),
            ])
            .arg("--state-dir")
            .arg(state_dir)
            .args(["--mode", "direct"])
            .args(["--outgoing-port", &outgoing.to_string()])
            .args(["--incoming-port", &incoming.to_string()])
            .args(["--admin-port", &admin.to_string()])
            .args(["--imds-endpoint", "http://127.0.0.1:1"])
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null());
        // Short timeouts unless the test sets its own.
        for (flag, value) in [("--request-timeout", "5s"), ("--attempt-timeout", "2s")] {
            if !args.contains(&flag) {
                cmd.args([flag, value]);
            }
        }
        tweak(&mut cmd);
        let child = cmd.spawn().expect("the agent binary starts");
        let ip: IpAddr = host_ip.parse().unwrap();
        let agent = Self {
            outgoing_addr: SocketAddr::new(ip, outgoing),
            incoming_addr: SocketAddr::new(ip, incoming),
            admin_addr: SocketAddr::new(ip, admin),
            child,
        };
        agent.wait_ready().await;
        agent
    }

    /// Waits until `/ready` answers 200 (a snapshot is applied).
    pub async fn wait_ready(&self) {
        for _ in 0..200 {
            if let Ok(Ok((200, _))) =
                tokio::time::timeout(Duration::from_secs(1), self.admin_get("/ready")).await
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the agent on {} never became ready", self.admin_addr);
    }

    /// GET on the admin port: (status, body).
    pub async fn admin_get(&self, path: &str) -> Result<(u16, String), String> {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut stream = tokio::net::TcpStream::connect(self.admin_addr)
            .await
            .map_err(|e| e.to_string())?;
        stream
            .write_all(format!("GET {path} HTTP/1.0\r\nhost: admin\r\n\r\n").as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        stream
            .read_to_end(&mut out)
            .await
            .map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&out).into_owned();
        let status = text
            .get(9..12)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("not an HTTP answer: {text:?}"))?;
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        Ok((status, body))
    }

    /// The value of one series in `/metrics` (the sum of every series whose
    /// name and labels start with `series`, e.g. `foo_total{reason="x"`).
    pub async fn metric(&self, series: &str) -> f64 {
        let (_, body) = self.admin_get("/metrics").await.unwrap();
        body.lines()
            .filter(|l| l.starts_with(series))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Resident memory of the process, in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

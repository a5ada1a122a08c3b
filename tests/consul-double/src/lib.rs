//! # ecsmesh-consul-double
//!
//! A stateful, in-process test double of the part of Consul's HTTP API
//! ecsmesh uses, listening on `127.0.0.1:0`: catalog and health, KV with
//! CAS and locks, sessions with TTLs, blocking queries with Consul's index
//! semantics, and fault injection driven from the test through
//! [`ConsulDouble`]'s methods. See the README for what is modelled and what
//! is not.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! let consul = ecsmesh_consul_double::ConsulDouble::start().await?;
//! consul
//!     .catalog_register(&serde_json::json!({
//!         "Node": "ip-10-0-0-1", "Address": "10.0.0.1",
//!         "Service": {"ID": "web-1", "Service": "web", "Port": 8080},
//!         "Check": {"CheckID": "web-1-alive", "ServiceID": "web-1", "Status": "passing"},
//!     }))
//!     .expect("a valid registration");
//! println!("point the client at {}", consul.address());
//! consul.fail_next(3); // the next three requests answer 500
//! # Ok(()) }
//! ```

mod http;
mod state;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

use crate::state::{Dc, Registration};

/// An error answer: the HTTP status and Consul's text.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("HTTP {status}: {message}")]
pub struct DoubleError {
    pub status: u16,
    pub message: String,
}

/// How the double starts.
#[derive(Clone, Debug)]
pub struct DoubleOptions {
    /// Datacenters it serves; the first is the "local" one (no `?dc=`).
    pub datacenters: Vec<String>,
    /// The agent's node, registered in the local datacenter with a passing
    /// `serfHealth` check (other datacenters get `<node_name>-<dc>`).
    pub node_name: String,
    pub node_address: String,
    /// Consul's `session_ttl_min` (10 s by default); lower it to test TTLs.
    pub session_ttl_min: Duration,
}

impl Default for DoubleOptions {
    fn default() -> Self {
        Self {
            datacenters: vec!["dc1".to_owned()],
            node_name: "consul-double".to_owned(),
            node_address: "127.0.0.1".to_owned(),
            session_ttl_min: Duration::from_secs(10),
        }
    }
}

/// One request as the double received it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestRecord {
    pub method: String,
    pub path: String,
    /// The raw query string (may be empty).
    pub query: String,
}

impl RequestRecord {
    /// The value of a query parameter (`Some("")` for a bare flag).
    pub fn param(&self, name: &str) -> Option<&str> {
        self.query.split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k == name).then_some(v)
        })
    }
}

/// Injected misbehaviour.
#[derive(Clone, Debug)]
#[allow(clippy::struct_excessive_bools)] // independent switches
pub(crate) struct Faults {
    pub fail_next: u32,
    pub fail_all: bool,
    pub delay: Duration,
    pub known_leader: bool,
    pub last_contact: Duration,
    pub omit_index: bool,
    pub zero_index: bool,
    pub token: Option<String>,
}

impl Default for Faults {
    fn default() -> Self {
        Self {
            fail_next: 0,
            fail_all: false,
            delay: Duration::ZERO,
            known_leader: true,
            last_contact: Duration::ZERO,
            omit_index: false,
            zero_index: false,
            token: None,
        }
    }
}

#[derive(Debug)]
pub(crate) struct State {
    pub dcs: BTreeMap<String, Dc>,
    pub local_dc: String,
    pub node_name: String,
    /// Bumped by an index reset: blocked queries return at once (Consul
    /// abandons them on a snapshot restore).
    pub generation: u64,
    pub faults: Faults,
    pub session_ttl_min: Duration,
}

impl State {
    /// The datacenter a request is for.
    pub fn dc_name(&self, requested: Option<&str>) -> Result<String, DoubleError> {
        match requested.filter(|d| !d.is_empty()) {
            None => Ok(self.local_dc.clone()),
            Some(d) if self.dcs.contains_key(d) => Ok(d.to_owned()),
            Some(_) => Err(no_path()),
        }
    }

    pub fn dc(&self, name: &str) -> Result<&Dc, DoubleError> {
        self.dcs.get(name).ok_or_else(no_path)
    }

    pub fn dc_mut(&mut self, name: &str) -> Result<&mut Dc, DoubleError> {
        self.dcs.get_mut(name).ok_or_else(no_path)
    }

    /// The node sessions default to in `dc`.
    pub fn default_node(&self, dc: &str) -> String {
        if dc == self.local_dc {
            self.node_name.clone()
        } else {
            format!("{}-{dc}", self.node_name)
        }
    }
}

fn no_path() -> DoubleError {
    DoubleError {
        status: 500,
        message: "No path to datacenter".to_owned(),
    }
}

#[derive(Debug)]
pub(crate) struct Shared {
    state: Mutex<State>,
    /// Ticks on every change, to wake blocked queries.
    changes: watch::Sender<u64>,
    log: Mutex<Vec<RequestRecord>>,
}

/// The request log keeps this many entries.
const LOG_LIMIT: usize = 10_000;

impl Shared {
    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `f` on the state and wakes every blocked query.
    pub fn write<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let mut state = self.lock();
        let r = f(&mut state);
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
        drop(state);
        r
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    pub fn record(&self, r: RequestRecord) {
        let mut log = self.log.lock().unwrap_or_else(PoisonError::into_inner);
        if log.len() >= LOG_LIMIT {
            log.remove(0);
        }
        log.push(r);
    }
}

/// A running double. Dropping it stops it.
#[derive(Debug)]
pub struct ConsulDouble {
    shared: Arc<Shared>,
    addr: SocketAddr,
    server: Mutex<Option<JoinHandle<()>>>,
    reaper: JoinHandle<()>,
}

impl ConsulDouble {
    /// One datacenter, `dc1`, on a free loopback port.
    pub async fn start() -> std::io::Result<Self> {
        Self::start_with(DoubleOptions::default()).await
    }

    pub async fn start_with(options: DoubleOptions) -> std::io::Result<Self> {
        let mut dcs = BTreeMap::new();
        let local_dc = options
            .datacenters
            .first()
            .cloned()
            .unwrap_or_else(|| "dc1".to_owned());
        let mut state = State {
            dcs: BTreeMap::new(),
            local_dc: local_dc.clone(),
            node_name: options.node_name.clone(),
            generation: 0,
            faults: Faults::default(),
            session_ttl_min: options.session_ttl_min,
        };
        for name in options.datacenters.iter().chain([&local_dc]) {
            dcs.entry(name.clone()).or_insert_with(|| {
                let mut dc = Dc::default();
                let registration = Registration {
                    node: state.default_node(name),
                    address: options.node_address.clone(),
                    check: Some(state::CheckDef {
                        check_id: "serfHealth".to_owned(),
                        name: "Serf Health Status".to_owned(),
                        status: "passing".to_owned(),
                        output: "Agent alive and reachable".to_owned(),
                        ..state::CheckDef::default()
                    }),
                    ..Registration::default()
                };
                // A fixed, valid registration.
                let _ = dc.register(registration);
                dc
            });
        }
        state.dcs = dcs;
        let shared = Arc::new(Shared {
            state: Mutex::new(state),
            changes: watch::Sender::new(0),
            log: Mutex::new(Vec::new()),
        });
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let server = tokio::spawn(serve(listener, Arc::clone(&shared)));
        let reaper = tokio::spawn(reap_sessions(Arc::clone(&shared)));
        Ok(Self {
            shared,
            addr,
            server: Mutex::new(Some(server)),
            reaper,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port>`.
    pub fn address(&self) -> String {
        format!("http://{}", self.addr)
    }

    // ---- state, from the test side ----

    /// Registers a node (and service, and checks) exactly as
    /// `PUT /v1/catalog/register` with this JSON body would.
    pub fn catalog_register(&self, body: &serde_json::Value) -> Result<(), DoubleError> {
        let r: Registration = serde_json::from_value(body.clone()).map_err(|e| DoubleError {
            status: 400,
            message: format!("Request decode failed: {e}"),
        })?;
        self.shared.write(|st| {
            let dc = st.dc_name(Some(&r.datacenter))?;
            st.dc_mut(&dc)?.register(r)
        })
    }

    /// `PUT /v1/catalog/deregister`: the service, or the whole node.
    pub fn catalog_deregister(
        &self,
        dc: &str,
        node: &str,
        service_id: Option<&str>,
    ) -> Result<(), DoubleError> {
        self.shared
            .write(|st| st.dc_mut(dc)?.deregister(node, service_id, None))
    }

    /// Sets a check's status (`passing`, `warning`, `critical`).
    pub fn set_check_status(
        &self,
        dc: &str,
        node: &str,
        check_id: &str,
        status: &str,
    ) -> Result<(), DoubleError> {
        self.shared.write(|st| {
            st.dc_mut(dc)?
                .set_check_status(node, check_id, status, None)
        })
    }

    /// Writes a KV value directly; its new ModifyIndex.
    pub fn kv_put(&self, dc: &str, key: &str, value: &[u8]) -> Result<u64, DoubleError> {
        self.shared.write(|st| {
            let dc = st.dc_mut(dc)?;
            dc.kv_set(key, value.to_vec(), 0, None);
            Ok(dc.kv_key_index(key))
        })
    }

    /// The datacenter's Raft-like index.
    pub fn index(&self, dc: &str) -> Result<u64, DoubleError> {
        Ok(self.shared.lock().dc(dc)?.index)
    }

    pub fn session_count(&self, dc: &str) -> Result<usize, DoubleError> {
        Ok(self.shared.lock().dc(dc)?.sessions.len())
    }

    // ---- faults ----

    /// Simulates a snapshot restore: the datacenter's index, and every
    /// index above it, go back to `to`; blocked queries return at once.
    pub fn reset_index(&self, dc: &str, to: u64) -> Result<(), DoubleError> {
        self.shared.write(|st| {
            st.dc_mut(dc)?.reset_index(to);
            st.generation += 1;
            Ok(())
        })
    }

    /// A write that changes nothing but every table index: blocked queries
    /// wake up with the same content.
    pub fn spurious_write(&self, dc: &str) -> Result<(), DoubleError> {
        self.shared.write(|st| {
            st.dc_mut(dc)?.spurious_write();
            Ok(())
        })
    }

    /// Forgets deleted keys (Consul's tombstone GC): prefix indexes may go
    /// backwards.
    pub fn reap_tombstones(&self, dc: &str) -> Result<(), DoubleError> {
        self.shared.write(|st| {
            st.dc_mut(dc)?.reap_tombstones();
            Ok(())
        })
    }

    /// Invalidates a session as if its TTL had run out.
    pub fn expire_session(&self, dc: &str, id: &str) -> Result<bool, DoubleError> {
        self.shared.write(|st| {
            let dc = st.dc_mut(dc)?;
            let known = dc.sessions.contains_key(id);
            let idx = dc.next_index();
            dc.invalidate_session(id, idx);
            Ok(known)
        })
    }

    /// The next `n` requests answer 500.
    pub fn fail_next(&self, n: u32) {
        self.faults(|f| f.fail_next = n);
    }

    /// Every request answers 500 until turned off.
    pub fn fail_all(&self, on: bool) {
        self.faults(|f| f.fail_all = on);
    }

    /// Every answer is held back this long.
    pub fn set_delay(&self, delay: Duration) {
        self.faults(|f| f.delay = delay);
    }

    /// Without a leader, reads that are not `?stale` and all writes answer
    /// 500 "No cluster leader"; stale reads say `X-Consul-KnownLeader: false`.
    pub fn set_known_leader(&self, known: bool) {
        self.faults(|f| f.known_leader = known);
    }

    /// `X-Consul-LastContact` of stale reads.
    pub fn set_last_contact(&self, last: Duration) {
        self.faults(|f| f.last_contact = last);
    }

    /// Answers without `X-Consul-Index`.
    pub fn omit_index_header(&self, on: bool) {
        self.faults(|f| f.omit_index = on);
    }

    /// Answers `X-Consul-Index: 0` (an old Consul bug).
    pub fn force_zero_index(&self, on: bool) {
        self.faults(|f| f.zero_index = on);
    }

    /// Requires this ACL token (`X-Consul-Token`, `Authorization: Bearer`
    /// or `?token=`): 403 otherwise.
    pub fn require_token(&self, token: Option<&str>) {
        self.faults(|f| f.token = token.map(str::to_owned));
    }

    /// Clears every fault (the listener is left as it is).
    pub fn clear_faults(&self) {
        self.faults(|f| *f = Faults::default());
    }

    fn faults(&self, change: impl FnOnce(&mut Faults)) {
        self.shared.write(|st| change(&mut st.faults));
    }

    /// Stops listening and drops every open connection (blocked queries
    /// fail); the state is kept.
    pub async fn stop(&self) {
        let server = self
            .server
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(server) = server {
            server.abort();
            let _ = server.await;
        }
    }

    /// Listens again, on the same port.
    pub async fn restart(&self) -> std::io::Result<()> {
        self.stop().await;
        let listener = TcpListener::bind(self.addr).await?;
        let server = tokio::spawn(serve(listener, Arc::clone(&self.shared)));
        *self.server.lock().unwrap_or_else(PoisonError::into_inner) = Some(server);
        Ok(())
    }

    /// Every request received so far (the last 10 000).
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.shared
            .log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub fn clear_requests(&self) {
        self.shared
            .log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }
}

impl Drop for ConsulDouble {
    fn drop(&mut self) {
        if let Some(server) = self
            .server
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            server.abort();
        }
        self.reaper.abort();
    }
}

/// Accepts connections; each is served on a task owned by this one, so
/// aborting it closes them all.
async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let router = http::router(shared);
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else {
                    // Out of file descriptors, say: do not spin.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let service = hyper_util::service::TowerToHyperService::new(router.clone());
                connections.spawn(async move {
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, service)
                        .await;
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Invalidates sessions whose TTL ran out (Consul's session timers).
async fn reap_sessions(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    loop {
        tick.tick().await;
        let now = Instant::now();
        let expired = {
            let mut st = shared.lock();
            st.dcs
                .values_mut()
                .fold(false, |any, dc| dc.expire_sessions(now) | any)
        };
        if expired {
            shared.write(|_| ());
        }
    }
}

/// Parses a Go duration (`10s`, `1m30s`, `500ms`).
pub(crate) fn parse_duration(s: &str) -> Option<Duration> {
    if s == "0" {
        return Some(Duration::ZERO);
    }
    let mut total = 0.0_f64;
    let mut rest = s;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let n = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .filter(|&n| n > 0)?;
        let value: f64 = rest[..n].parse().ok()?;
        rest = &rest[n..];
        let u = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        total += value
            * match &rest[..u] {
                "ns" => 1e-9,
                "us" | "µs" => 1e-6,
                "ms" => 1e-3,
                "s" => 1.0,
                "m" => 60.0,
                "h" => 3600.0,
                _ => return None,
            };
        rest = &rest[u..];
    }
    Duration::try_from_secs_f64(total).ok()
}

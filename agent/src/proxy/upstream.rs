//! Sending a request on to its next hop, plain or TLS, behind one call:
//! [`Upstream::send`].
//!
//! - To an endpoint: plaintext pools, HTTP/1 and HTTP/2; the HTTP/2 one
//!   connects through [`H2Probe`] and remembers endpoints that speak only
//!   HTTP/1 ([`Http1Only`]).
//! - To a remote agent's incoming port, when the linker-to-linker hop has
//!   TLS: pools that verify the name the destination calls for (fixed, or
//!   rendered per destination from its concrete name and kept per name).

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use ecsmesh_tls::{ClientTls, HttpsConnector, ServerName, ServerNameTemplate, TlsError};
use http::Request;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::{Client, ResponseFuture};
use hyper_util::rt::TokioExecutor;

use super::Body;
use super::h2probe::{H2Probe, Http1Only};
use crate::routes::Dest;
use crate::tls::L2lTls;

/// Distinct server names kept with their own connection pools; past it
/// the pools are dropped and rebuilt (only a name template can get there).
const MAX_NAMES: usize = 1024;

/// Where a request goes next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hop {
    /// The endpoint itself.
    Endpoint,
    /// A remote agent's incoming port (linker-to-linker).
    Agent,
}

/// Every connection the proxy opens onward.
#[derive(Debug)]
pub struct Upstream {
    plain: Pools<HttpConnector, H2Probe>,
    /// Endpoints that answered HTTP/2 with HTTP/1.
    pub http1_only: Http1Only,
    /// TLS to remote agents, when the hop has it.
    agents: Option<AgentPools>,
}

impl Upstream {
    pub fn new(connect_timeout: Duration, l2l: Option<&L2lTls>) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(connect_timeout));
        connector.set_nodelay(true);
        Self {
            plain: Pools::with_connectors(
                connector.clone(),
                H2Probe::new(connector, connect_timeout),
            ),
            http1_only: Http1Only::default(),
            agents: l2l.map(|tls| AgentPools::new(tls, connect_timeout)),
        }
    }

    /// Sends `req` (of `version`) to its next hop; only a TLS hop whose
    /// server name cannot be made for `dest` fails here.
    pub fn send(
        &self,
        hop: Hop,
        version: http::Version,
        dest: &Dest,
        req: Request<Body>,
    ) -> Result<ResponseFuture, TlsError> {
        match (&self.agents, hop) {
            (Some(agents), Hop::Agent) => agents.send(version, dest, req),
            _ => Ok(self.plain.for_version(version).request(req)),
        }
    }
}

/// Pooled clients to remote agents over TLS.
#[derive(Debug)]
struct AgentPools {
    client: ClientTls,
    names: ServerNameTemplate,
    connect_timeout: Duration,
    /// The pools for a fixed server name (the default), built once: the
    /// per-request path then renders nothing and takes no lock.
    fixed: Option<Pools<HttpsConnector>>,
    /// The pools per rendered name, for a `{service}`/`{cluster}` template.
    per_name: Mutex<HashMap<ServerName<'static>, Pools<HttpsConnector>>>,
}

impl AgentPools {
    fn new(tls: &L2lTls, connect_timeout: Duration) -> Self {
        let client = tls.client().clone();
        let fixed = tls
            .names()
            .fixed()
            .map(|name| tls_pools(&client, name.clone(), connect_timeout));
        Self {
            client,
            names: tls.names().clone(),
            connect_timeout,
            fixed,
            per_name: Mutex::new(HashMap::new()),
        }
    }

    fn send(
        &self,
        version: http::Version,
        dest: &Dest,
        req: Request<Body>,
    ) -> Result<ResponseFuture, TlsError> {
        if let Some(fixed) = &self.fixed {
            return Ok(fixed.for_version(version).request(req));
        }
        let pools = self.pools(server_name(&self.names, dest)?);
        Ok(pools.for_version(version).request(req))
    }

    fn pools(&self, name: ServerName<'static>) -> Pools<HttpsConnector> {
        let mut all = self.per_name.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(p) = all.get(&name) {
            return p.clone();
        }
        if all.len() >= MAX_NAMES {
            all.clear();
        }
        let pools = tls_pools(&self.client, name.clone(), self.connect_timeout);
        all.insert(name, pools.clone());
        pools
    }
}

/// The name the remote agent must prove for `dest`: the template with
/// `{service}` and `{cluster}` from `/#/<namer>/<cluster>/<service>`.
pub fn server_name(
    names: &ServerNameTemplate,
    dest: &Dest,
) -> Result<ServerName<'static>, TlsError> {
    let elems = dest.id.elems();
    let label = |i: usize| {
        elems
            .get(i)
            .and_then(|l| std::str::from_utf8(l.as_bytes()).ok())
    };
    names.render(|var| match var {
        "service" => label(3),
        "cluster" => label(2),
        _ => None,
    })
}

/// Pooled clients that verify `name` on every connection they open.
fn tls_pools(
    client: &ClientTls,
    name: ServerName<'static>,
    connect_timeout: Duration,
) -> Pools<HttpsConnector> {
    Pools::new(HttpsConnector::new(
        client.clone(),
        name,
        Some(connect_timeout),
    ))
}

/// The pooled upstream clients, HTTP/1 and HTTP/2: plaintext (the HTTP/2
/// one probing for HTTP/1-only endpoints, see [`h2probe`]), or TLS to
/// remote agents (`crate::tls`, one connector for both).
#[derive(Clone, Debug)]
struct Pools<C, C2 = C> {
    http1: Client<C, Body>,
    http2: Client<C2, Body>,
}

impl<C, C2> Pools<C, C2>
where
    C: hyper_util::client::legacy::connect::Connect + Clone + Send + Sync + 'static,
    C2: hyper_util::client::legacy::connect::Connect + Clone + Send + Sync + 'static,
{
    fn with_connectors(http1: C, http2: C2) -> Self {
        Self {
            // Flattened writes (head and body in one buffer, one `write`):
            // with 64 B bodies, ~1.7 % more requests a second than writev
            // with its iovecs, and no difference at 4 KiB (bench/ab.sh,
            // results/ab-20261122-0548.md); the copy costs no more than
            // the iovecs save.
            http1: Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_mins(1))
                .http1_writev(false)
                .build(http1),
            http2: Client::builder(TokioExecutor::new())
                .http2_only(true)
                .build(http2),
        }
    }

    /// The pool for a request of `version`.
    fn for_version(&self, version: http::Version) -> PoolFor<'_, C, C2> {
        if version == http::Version::HTTP_2 {
            PoolFor::Http2(&self.http2)
        } else {
            PoolFor::Http1(&self.http1)
        }
    }
}

impl<T> Pools<T, T>
where
    T: hyper_util::client::legacy::connect::Connect + Clone + Send + Sync + 'static,
{
    fn new(connector: T) -> Self {
        Self::with_connectors(connector.clone(), connector)
    }
}

/// One of the two pools.
enum PoolFor<'a, C, C2> {
    Http1(&'a Client<C, Body>),
    Http2(&'a Client<C2, Body>),
}

impl<C, C2> PoolFor<'_, C, C2>
where
    C: hyper_util::client::legacy::connect::Connect + Clone + Send + Sync + 'static,
    C2: hyper_util::client::legacy::connect::Connect + Clone + Send + Sync + 'static,
{
    fn request(&self, req: Request<Body>) -> hyper_util::client::legacy::ResponseFuture {
        match self {
            Self::Http1(c) => c.request(req),
            Self::Http2(c) => c.request(req),
        }
    }
}

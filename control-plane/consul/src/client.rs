//! The HTTP client: one method per Consul endpoint used, each a thin
//! mapping of Consul's documented parameters and answers.

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::time::Duration;

use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper::header::{CONTENT_TYPE, HeaderMap, HeaderValue};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::de::DeserializeOwned;

use crate::types::{
    Indexed, KvPair, NewSession, RawEntry, RawKvPair, RawSession, ServiceEntry, SessionInfo,
    format_duration,
};

/// Consul's longest `wait`.
pub const MAX_WAIT: Duration = Duration::from_mins(10);
/// Consul's default `wait`.
pub const DEFAULT_WAIT: Duration = Duration::from_mins(5);

/// Where Consul is and how to talk to it.
#[derive(Clone)]
pub struct Config {
    /// `http://host:port` of an agent or server (TLS is not supported).
    pub address: String,
    /// `?dc=`; `None` is the agent's own datacenter.
    pub datacenter: Option<String>,
    /// Sent as `X-Consul-Token`.
    pub token: Option<String>,
    /// `?stale` on every read: any server answers, even without a leader.
    pub stale: bool,
    /// Timeout of a non-blocking call, and the margin added to
    /// `wait + wait/16` for a blocking one.
    pub request_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            address: "http://127.0.0.1:8500".to_owned(),
            datacenter: None,
            token: None,
            stale: false,
            request_timeout: Duration::from_secs(10),
        }
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("address", &self.address)
            .field("datacenter", &self.datacenter)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("stale", &self.stale)
            .field("request_timeout", &self.request_timeout)
            .finish()
    }
}

/// Per-read options.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QueryOptions {
    /// Block until the result's index exceeds this (`?index=`); `None` or
    /// `Some(0)` reads at once.
    pub index: Option<u64>,
    /// How long to block (`?wait=`, at most [`MAX_WAIT`]; default 5 min).
    pub wait: Option<Duration>,
    /// Overrides [`Config::datacenter`].
    pub datacenter: Option<String>,
    /// `?consistent` instead of the configured mode (a quorum-checked read).
    pub consistent: bool,
}

/// Filters of `/v1/health/service/<name>`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HealthQuery {
    /// `?passing`: only instances whose checks all pass.
    pub passing: bool,
    /// `?tag=` (repeated: every tag must be present).
    pub tags: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid Consul address {0:?}: expected http://host:port")]
    InvalidAddress(String),
    #[error("{method} {path}: {source}")]
    Transport {
        method: Method,
        path: String,
        #[source]
        source: hyper_util::client::legacy::Error,
    },
    #[error("{method} {path}: reading the answer: {source}")]
    Body {
        method: Method,
        path: String,
        #[source]
        source: hyper::Error,
    },
    #[error("{method} {path}: no answer within {timeout:?}")]
    Timeout {
        method: Method,
        path: String,
        timeout: Duration,
    },
    #[error("{method} {path}: HTTP {status}: {message}")]
    Status {
        method: Method,
        path: String,
        status: u16,
        message: String,
    },
    #[error("GET {path}: missing or invalid X-Consul-Index header")]
    MissingIndex { path: String },
    #[error("{path}: unexpected answer: {reason}")]
    Decode { path: String, reason: String },
    #[error("gave up after {attempts} failed calls; the last: {last}")]
    GaveUp {
        attempts: u32,
        #[source]
        last: Box<Error>,
    },
}

impl Error {
    /// The HTTP status of an error answer.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Status { status, .. } => Some(*status),
            Self::GaveUp { last, .. } => last.status(),
            _ => None,
        }
    }

    /// Consul's answer to an unknown `?dc=`.
    pub fn is_no_path_to_datacenter(&self) -> bool {
        match self {
            Self::Status { message, .. } => message.contains("No path to datacenter"),
            Self::GaveUp { last, .. } => last.is_no_path_to_datacenter(),
            _ => false,
        }
    }
}

/// A Consul HTTP API client. Cheap to clone (connections are pooled and
/// shared).
#[derive(Clone, Debug)]
pub struct Client {
    http: HttpClient<HttpConnector, Full<Bytes>>,
    /// `http://host:port`, no trailing slash.
    base: String,
    config: Config,
}

type Query = Vec<(&'static str, String)>;

impl Client {
    pub fn new(config: Config) -> Result<Self, Error> {
        let bad = || Error::InvalidAddress(config.address.clone());
        let uri: Uri = config.address.parse().map_err(|_| bad())?;
        if uri.scheme_str() != Some("http")
            || uri.authority().is_none()
            || !matches!(uri.path(), "" | "/")
            || uri.query().is_some()
        {
            return Err(bad());
        }
        let base = config.address.trim_end_matches('/').to_owned();
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(config.request_timeout));
        let http = HttpClient::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_mins(1))
            .build(connector);
        Ok(Self { http, base, config })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// `GET /v1/catalog/services`: every service name and the union of its
    /// instances' tags.
    pub async fn catalog_services(
        &self,
        opts: &QueryOptions,
    ) -> Result<Indexed<BTreeMap<String, Vec<String>>>, Error> {
        let r: Indexed<Option<BTreeMap<String, Option<Vec<String>>>>> = self
            .read("/v1/catalog/services".to_owned(), Vec::new(), opts, false)
            .await?;
        Ok(r.map(|m| {
            m.unwrap_or_default()
                .into_iter()
                .map(|(name, tags)| (name, tags.unwrap_or_default()))
                .collect()
        }))
    }

    /// `GET /v1/health/service/<name>`: the service's instances with their
    /// nodes' and their own checks.
    pub async fn health_service(
        &self,
        name: &str,
        filter: &HealthQuery,
        opts: &QueryOptions,
    ) -> Result<Indexed<Vec<ServiceEntry>>, Error> {
        let mut query: Query = filter.tags.iter().map(|t| ("tag", t.clone())).collect();
        if filter.passing {
            query.push(("passing", String::new()));
        }
        let path = format!("/v1/health/service/{}", encode(name, false));
        let r: Indexed<Option<Vec<RawEntry>>> = self.read(path, query, opts, false).await?;
        Ok(r.map(|v| v.unwrap_or_default().into_iter().map(Into::into).collect()))
    }

    /// `GET /v1/kv/<key>`: the entry, or `None` (404) while the key does not
    /// exist; blocking on a missing key waits for it to appear.
    pub async fn kv_get(
        &self,
        key: &str,
        opts: &QueryOptions,
    ) -> Result<Indexed<Option<KvPair>>, Error> {
        let path = kv_path(key);
        let r: Indexed<Option<Vec<RawKvPair>>> =
            self.read(path.clone(), Vec::new(), opts, true).await?;
        let pairs = decode_pairs(&path, r.value.unwrap_or_default())?;
        Ok(Indexed {
            value: pairs.into_iter().next(),
            index: r.index,
            known_leader: r.known_leader,
            last_contact: r.last_contact,
        })
    }

    /// `GET /v1/kv/<prefix>?recurse`: every entry under the prefix (empty
    /// when there is none).
    pub async fn kv_list(
        &self,
        prefix: &str,
        opts: &QueryOptions,
    ) -> Result<Indexed<Vec<KvPair>>, Error> {
        let path = kv_path(prefix);
        let query = vec![("recurse", String::new())];
        let r: Indexed<Option<Vec<RawKvPair>>> = self.read(path.clone(), query, opts, true).await?;
        let pairs = decode_pairs(&path, r.value.unwrap_or_default())?;
        Ok(Indexed {
            value: pairs,
            index: r.index,
            known_leader: r.known_leader,
            last_contact: r.last_contact,
        })
    }

    /// `PUT /v1/kv/<key>`: writes `value`. With `cas`, only if the key's
    /// ModifyIndex is `cas` (`Some(0)`: only if the key does not exist).
    /// `false` when the condition failed.
    pub async fn kv_put(&self, key: &str, value: &[u8], cas: Option<u64>) -> Result<bool, Error> {
        let query = cas.map(|c| ("cas", c.to_string())).into_iter().collect();
        self.write_bool(Method::PUT, kv_path(key), query, value.to_vec())
            .await
    }

    /// `DELETE /v1/kv/<key>`: with `cas`, only if the ModifyIndex matches
    /// (`Some(0)` never deletes an existing key).
    pub async fn kv_delete(&self, key: &str, cas: Option<u64>) -> Result<bool, Error> {
        let query = cas.map(|c| ("cas", c.to_string())).into_iter().collect();
        self.write_bool(Method::DELETE, kv_path(key), query, Vec::new())
            .await
    }

    /// `PUT /v1/kv/<key>?acquire=<session>`: takes the key's lock and
    /// writes `value`; `false` when another session holds it (or the lock
    /// delay of a lost holder is running).
    pub async fn kv_acquire(&self, key: &str, value: &[u8], session: &str) -> Result<bool, Error> {
        let query = vec![("acquire", session.to_owned())];
        self.write_bool(Method::PUT, kv_path(key), query, value.to_vec())
            .await
    }

    /// `PUT /v1/kv/<key>?release=<session>`: releases the lock this session
    /// holds and writes `value`; `false` when it does not hold it.
    pub async fn kv_release(&self, key: &str, value: &[u8], session: &str) -> Result<bool, Error> {
        let query = vec![("release", session.to_owned())];
        self.write_bool(Method::PUT, kv_path(key), query, value.to_vec())
            .await
    }

    /// `PUT /v1/session/create`: the new session's ID.
    pub async fn session_create(&self, session: &NewSession) -> Result<String, Error> {
        #[derive(serde::Deserialize)]
        struct Created {
            #[serde(rename = "ID")]
            id: String,
        }
        let mut body = serde_json::json!({
            "Name": session.name,
            "TTL": format_duration(session.ttl),
            "Behavior": session.behavior.as_str(),
        });
        if let Some(d) = session.lock_delay {
            body["LockDelay"] = format_duration(d).into();
        }
        if let Some(checks) = &session.node_checks {
            body["NodeChecks"] = checks.clone().into();
        }
        let path = "/v1/session/create".to_owned();
        let bytes = self
            .write(
                Method::PUT,
                path.clone(),
                self.dc_query(None),
                body.to_string().into_bytes(),
            )
            .await?;
        Ok(decode::<Created>(&path, &bytes)?.id)
    }

    /// `PUT /v1/session/renew/<id>`: the renewed session (its TTL is the
    /// one to honour), or `None` when it no longer exists: whatever it
    /// held is lost.
    pub async fn session_renew(&self, id: &str) -> Result<Option<SessionInfo>, Error> {
        let path = format!("/v1/session/renew/{}", encode(id, false));
        match self
            .write(Method::PUT, path.clone(), self.dc_query(None), Vec::new())
            .await
        {
            Ok(bytes) => {
                let sessions: Vec<RawSession> = decode(&path, &bytes)?;
                Ok(sessions.into_iter().next().map(Into::into))
            }
            Err(e) if e.status() == Some(404) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `PUT /v1/session/destroy/<id>` (idempotent).
    pub async fn session_destroy(&self, id: &str) -> Result<bool, Error> {
        let path = format!("/v1/session/destroy/{}", encode(id, false));
        self.write_bool(Method::PUT, path, Vec::new(), Vec::new())
            .await
    }

    /// `GET /v1/session/info/<id>`: `None` once it is gone.
    pub async fn session_info(
        &self,
        id: &str,
        opts: &QueryOptions,
    ) -> Result<Indexed<Option<SessionInfo>>, Error> {
        let path = format!("/v1/session/info/{}", encode(id, false));
        let r: Indexed<Option<Vec<RawSession>>> = self.read(path, Vec::new(), opts, false).await?;
        Ok(r.map(|s| s.unwrap_or_default().into_iter().next().map(Into::into)))
    }

    fn dc_query(&self, opts: Option<&QueryOptions>) -> Query {
        opts.and_then(|o| o.datacenter.clone())
            .or_else(|| self.config.datacenter.clone())
            .map(|dc| ("dc", dc))
            .into_iter()
            .collect()
    }

    /// A blocking-capable GET. `Ok(value: None)` for a 404 when
    /// `not_found_ok`; the index header is required either way.
    async fn read<T: DeserializeOwned>(
        &self,
        path: String,
        mut query: Query,
        opts: &QueryOptions,
        not_found_ok: bool,
    ) -> Result<Indexed<Option<T>>, Error> {
        query.extend(self.dc_query(Some(opts)));
        if opts.consistent {
            query.push(("consistent", String::new()));
        } else if self.config.stale {
            query.push(("stale", String::new()));
        }
        let mut timeout = self.config.request_timeout;
        if let Some(index) = opts.index.filter(|&i| i > 0) {
            let wait = opts.wait.unwrap_or(DEFAULT_WAIT).min(MAX_WAIT);
            query.push(("index", index.to_string()));
            query.push(("wait", format_duration(wait)));
            // Consul adds up to wait/16 of jitter: never cut a healthy poll.
            timeout += wait + wait / 16;
        }
        let (status, headers, body) = self
            .call(Method::GET, &path, &query, Vec::new(), timeout)
            .await?;
        if status == StatusCode::NOT_FOUND && !not_found_ok {
            return Err(Error::Status {
                method: Method::GET,
                path,
                status: 404,
                message: String::from_utf8_lossy(&body).trim().to_owned(),
            });
        }
        let index = headers
            .get("x-consul-index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or_else(|| Error::MissingIndex { path: path.clone() })?;
        let known_leader = headers
            .get("x-consul-knownleader")
            .is_none_or(|v| v.as_bytes() != b"false");
        let last_contact = headers
            .get("x-consul-lastcontact")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .map_or(Duration::ZERO, Duration::from_millis);
        let value = if status == StatusCode::NOT_FOUND && not_found_ok {
            None
        } else {
            Some(decode(&path, &body)?)
        };
        Ok(Indexed {
            value,
            index,
            known_leader,
            last_contact,
        })
    }

    async fn write(
        &self,
        method: Method,
        path: String,
        query: Query,
        body: Vec<u8>,
    ) -> Result<Bytes, Error> {
        let timeout = self.config.request_timeout;
        let (_, _, bytes) = self.call(method, &path, &query, body, timeout).await?;
        Ok(bytes)
    }

    async fn write_bool(
        &self,
        method: Method,
        path: String,
        mut query: Query,
        body: Vec<u8>,
    ) -> Result<bool, Error> {
        query.extend(self.dc_query(None));
        let bytes = self.write(method, path.clone(), query, body).await?;
        decode(&path, &bytes)
    }

    /// Sends one request; any status but 200 (and 404 on GET, which KV
    /// reads answer for a missing key) is an error.
    async fn call(
        &self,
        method: Method,
        path: &str,
        query: &[(&'static str, String)],
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<(StatusCode, HeaderMap, Bytes), Error> {
        let mut uri = format!("{}{path}", self.base);
        for (i, (k, v)) in query.iter().enumerate() {
            uri.push(if i == 0 { '?' } else { '&' });
            uri.push_str(k);
            if !v.is_empty() {
                uri.push('=');
                uri.push_str(&encode(v, false));
            }
        }
        let mut request = Request::builder().method(method.clone()).uri(&uri);
        if let Some(token) = &self.config.token {
            let value = HeaderValue::from_str(token)
                .map_err(|_| Error::InvalidAddress("the ACL token is not a valid header".into()))?;
            request = request.header("x-consul-token", value);
        }
        if !body.is_empty() {
            request = request.header(CONTENT_TYPE, "application/octet-stream");
        }
        let request = request
            .body(Full::new(Bytes::from(body)))
            .map_err(|_| Error::InvalidAddress(uri.clone()))?;
        let exchange = async {
            let response = self
                .http
                .request(request)
                .await
                .map_err(|source| Error::Transport {
                    method: method.clone(),
                    path: path.to_owned(),
                    source,
                })?;
            let (parts, body) = response.into_parts();
            let bytes = body
                .collect()
                .await
                .map_err(|source| Error::Body {
                    method: method.clone(),
                    path: path.to_owned(),
                    source,
                })?
                .to_bytes();
            Ok((parts.status, parts.headers, bytes))
        };
        let (status, headers, bytes) =
            tokio::time::timeout(timeout, exchange)
                .await
                .map_err(|_| Error::Timeout {
                    method: method.clone(),
                    path: path.to_owned(),
                    timeout,
                })??;
        if status == StatusCode::OK || (status == StatusCode::NOT_FOUND && method == Method::GET) {
            return Ok((status, headers, bytes));
        }
        Err(Error::Status {
            method,
            path: path.to_owned(),
            status: status.as_u16(),
            message: String::from_utf8_lossy(&bytes)
                .trim()
                .chars()
                .take(512)
                .collect(),
        })
    }
}

fn kv_path(key: &str) -> String {
    format!("/v1/kv/{}", encode(key.trim_start_matches('/'), true))
}

fn decode_pairs(path: &str, raw: Vec<RawKvPair>) -> Result<Vec<KvPair>, Error> {
    raw.into_iter()
        .map(|p| {
            p.decode().map_err(|key| Error::Decode {
                path: path.to_owned(),
                reason: format!("key {key:?} has an invalid base64 value"),
            })
        })
        .collect()
}

fn decode<T: DeserializeOwned>(path: &str, bytes: &[u8]) -> Result<T, Error> {
    serde_json::from_slice(bytes).map_err(|e| Error::Decode {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

/// Percent-encodes everything but RFC 3986's unreserved characters (and
/// `/` in KV keys, which Consul reads as a path).
fn encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric()
            || matches!(b, b'-' | b'.' | b'_' | b'~')
            || (keep_slash && b == b'/')
        {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert!(Client::new(Config::default()).is_ok());
        for bad in [
            "127.0.0.1:8500",
            "https://consul:8501",
            "http://h:1/x",
            "nope",
        ] {
            let config = Config {
                address: bad.to_owned(),
                ..Config::default()
            };
            assert!(
                matches!(Client::new(config), Err(Error::InvalidAddress(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn encoding() {
        assert_eq!(encode("ecsmesh/dtabs/a b", true), "ecsmesh/dtabs/a%20b");
        assert_eq!(encode("a/b&c", false), "a%2Fb%26c");
        assert_eq!(kv_path("/x/y"), "/v1/kv/x/y");
    }

    #[test]
    fn the_token_is_not_printed() {
        let config = Config {
            token: Some("s3cret".into()),
            ..Config::default()
        };
        assert!(!format!("{config:?}").contains("s3cret"));
    }
}

//! What Consul answers, decoded: health entries, KV pairs, sessions.

use std::time::Duration;

use base64::Engine as _;
use serde::Deserialize;

/// A value read with a blocking-capable query, with the headers that say
/// how fresh it is.
#[derive(Clone, Debug, PartialEq)]
pub struct Indexed<T> {
    pub value: T,
    /// `X-Consul-Index`: send it back as `?index=` to wait for a change.
    pub index: u64,
    /// `X-Consul-KnownLeader` (`true` when absent).
    pub known_leader: bool,
    /// `X-Consul-LastContact`: how long ago the answering server heard from
    /// the leader (zero when absent).
    pub last_contact: Duration,
}

impl<T> Indexed<T> {
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Indexed<U> {
        Indexed {
            value: f(self.value),
            index: self.index,
            known_leader: self.known_leader,
            last_contact: self.last_contact,
        }
    }
}

/// A check's state, worst last. Anything Consul may add later counts as
/// critical, so it is never routed to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum HealthStatus {
    Passing,
    Warning,
    Critical,
}

impl HealthStatus {
    pub fn parse(s: &str) -> Self {
        match s {
            "passing" => Self::Passing,
            "warning" => Self::Warning,
            _ => Self::Critical,
        }
    }
}

/// One check on an instance (its node's checks included).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    pub check_id: String,
    /// Empty for a node check such as `serfHealth`.
    pub service_id: String,
    pub status: HealthStatus,
}

/// One instance of a service, from `/v1/health/service/<name>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceEntry {
    pub node: String,
    /// The node's address.
    pub address: String,
    pub datacenter: String,
    pub service_id: String,
    pub service_name: String,
    /// The service's own address; may be empty.
    pub service_address: String,
    pub port: u16,
    pub tags: Vec<String>,
    pub checks: Vec<Check>,
}

impl ServiceEntry {
    /// Where to reach the instance: its service address when set, else its
    /// node's address (Linkerd's `preferServiceAddress`).
    pub fn endpoint_address(&self) -> &str {
        if self.service_address.is_empty() {
            &self.address
        } else {
            &self.service_address
        }
    }

    /// The worst status of its checks; an instance without checks is passing.
    pub fn status(&self) -> HealthStatus {
        self.checks
            .iter()
            .map(|c| c.status)
            .max()
            .unwrap_or(HealthStatus::Passing)
    }
}

/// Consul's JSON for a health entry.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct RawEntry {
    node: RawNode,
    service: RawService,
    #[serde(default)]
    checks: Option<Vec<RawCheck>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawNode {
    node: String,
    #[serde(default)]
    address: String,
    #[serde(default)]
    datacenter: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawService {
    #[serde(rename = "ID")]
    id: String,
    service: String,
    #[serde(default)]
    address: String,
    #[serde(default)]
    port: u16,
    #[serde(default)]
    tags: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawCheck {
    #[serde(rename = "CheckID")]
    check_id: String,
    #[serde(default, rename = "ServiceID")]
    service_id: String,
    status: String,
}

impl From<RawEntry> for ServiceEntry {
    fn from(e: RawEntry) -> Self {
        Self {
            node: e.node.node,
            address: e.node.address,
            datacenter: e.node.datacenter,
            service_id: e.service.id,
            service_name: e.service.service,
            service_address: e.service.address,
            port: e.service.port,
            tags: e.service.tags.unwrap_or_default(),
            checks: e
                .checks
                .unwrap_or_default()
                .into_iter()
                .map(|c| Check {
                    status: HealthStatus::parse(&c.status),
                    check_id: c.check_id,
                    service_id: c.service_id,
                })
                .collect(),
        }
    }
}

/// One KV entry, its value decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvPair {
    pub key: String,
    pub value: Vec<u8>,
    pub flags: u64,
    pub create_index: u64,
    /// The version to pass as `cas` to change it.
    pub modify_index: u64,
    pub lock_index: u64,
    /// The session holding its lock, if any.
    pub session: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct RawKvPair {
    key: String,
    #[serde(default)]
    value: Option<String>,
    #[serde(default)]
    flags: u64,
    #[serde(default)]
    create_index: u64,
    #[serde(default)]
    modify_index: u64,
    #[serde(default)]
    lock_index: u64,
    #[serde(default)]
    session: Option<String>,
}

impl RawKvPair {
    /// Decodes the base64 value; `Err` carries the key.
    pub(crate) fn decode(self) -> Result<KvPair, String> {
        let value = match &self.value {
            Some(v) => base64::engine::general_purpose::STANDARD
                .decode(v)
                .map_err(|_| self.key.clone())?,
            None => Vec::new(),
        };
        Ok(KvPair {
            key: self.key,
            value,
            flags: self.flags,
            create_index: self.create_index,
            modify_index: self.modify_index,
            lock_index: self.lock_index,
            session: self.session.filter(|s| !s.is_empty()),
        })
    }
}

/// What happens to a session's locks when it is invalidated.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SessionBehavior {
    /// The locks are released; the keys stay.
    #[default]
    Release,
    /// The locked keys are deleted (ephemeral keys).
    Delete,
}

impl SessionBehavior {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Release => "release",
            Self::Delete => "delete",
        }
    }
}

/// A session to create (`PUT /v1/session/create`).
#[derive(Clone, Debug)]
pub struct NewSession {
    pub name: String,
    /// Consul accepts 10 s to 24 h (its `session_ttl_min` can lower the floor).
    pub ttl: Duration,
    pub behavior: SessionBehavior,
    /// Consul's default (15 s) when `None`.
    pub lock_delay: Option<Duration>,
    /// `None`: Consul's default (`["serfHealth"]` of the node). The default
    /// here is `Some(vec![])`: a pure TTL heartbeat, independent of the
    /// health of whatever node the request lands on.
    pub node_checks: Option<Vec<String>>,
}

impl NewSession {
    pub fn new(ttl: Duration, behavior: SessionBehavior) -> Self {
        Self {
            name: "ecsmesh".to_owned(),
            ttl,
            behavior,
            lock_delay: None,
            node_checks: Some(Vec::new()),
        }
    }
}

/// A session as Consul reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionInfo {
    pub id: String,
    pub name: String,
    pub node: String,
    /// The TTL the server granted, which may exceed the one asked for.
    pub ttl: Option<Duration>,
    pub behavior: SessionBehavior,
    pub create_index: u64,
    pub modify_index: u64,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct RawSession {
    #[serde(rename = "ID")]
    id: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    node: String,
    #[serde(default, rename = "TTL")]
    ttl: String,
    #[serde(default)]
    behavior: String,
    #[serde(default)]
    create_index: u64,
    #[serde(default)]
    modify_index: u64,
}

impl From<RawSession> for SessionInfo {
    fn from(s: RawSession) -> Self {
        Self {
            id: s.id,
            name: s.name,
            node: s.node,
            ttl: parse_duration(&s.ttl),
            behavior: if s.behavior == "delete" {
                SessionBehavior::Delete
            } else {
                SessionBehavior::Release
            },
            create_index: s.create_index,
            modify_index: s.modify_index,
        }
    }
}

/// Parses the Go durations Consul writes (`15s`, `1m30s`, `500ms`).
pub fn parse_duration(s: &str) -> Option<Duration> {
    if s.is_empty() {
        return None;
    }
    if s == "0" {
        return Some(Duration::ZERO);
    }
    let mut total = 0.0_f64;
    let mut rest = s;
    while !rest.is_empty() {
        let n = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .filter(|&n| n > 0)?;
        let value: f64 = rest[..n].parse().ok()?;
        rest = &rest[n..];
        let u = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let scale = match &rest[..u] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        total += value * scale;
        rest = &rest[u..];
    }
    Duration::try_from_secs_f64(total).ok()
}

/// Formats a duration the way Consul parses it (whole milliseconds).
pub fn format_duration(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(parse_duration("15s"), Some(Duration::from_secs(15)));
        assert_eq!(parse_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("0"), Some(Duration::ZERO));
        assert_eq!(parse_duration("10"), None);
        assert_eq!(parse_duration("1x"), None);
        assert_eq!(format_duration(Duration::from_secs(30)), "30s");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
    }

    #[test]
    fn entry_address_and_status() {
        let raw: RawEntry = serde_json::from_str(
            r#"{"Node":{"Node":"n1","Address":"10.0.0.1","Datacenter":"dc1"},
                "Service":{"ID":"web-1","Service":"web","Address":"","Port":8080,"Tags":null},
                "Checks":[{"CheckID":"serfHealth","ServiceID":"","Status":"passing"},
                          {"CheckID":"service:web-1","ServiceID":"web-1","Status":"warning"}]}"#,
        )
        .unwrap();
        let e = ServiceEntry::from(raw);
        assert_eq!(e.endpoint_address(), "10.0.0.1");
        assert_eq!(e.status(), HealthStatus::Warning);
        assert!(e.tags.is_empty());
        assert_eq!(HealthStatus::parse("maintenance"), HealthStatus::Critical);
    }
}

//! The mesh state every agent holds: each namespace's effective dtab, each
//! concrete name's endpoint set and the service policies; its wire forms
//! (snapshot, delta) and the diff/apply pair between them.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use ecsmesh_dtab::{Dtab, ParseError, Path};
use ecsmesh_policy::{PolicyError, PolicySet, ServicePolicy, Versioned};
use ecsmesh_proto::v1 as pb;

/// One address traffic can go to, and what it is.
#[derive(Clone, Debug, PartialEq)]
pub struct Endpoint {
    pub addr: SocketAddr,
    /// Relative balancing weight (1.0 unless the source says otherwise).
    pub weight: f64,
    /// Where it runs: task ARN, container instance, EC2 instance id, host
    /// IP, availability zone, task definition revision (ECS); node and
    /// service id (Consul).
    pub meta: BTreeMap<String, String>,
}

impl Endpoint {
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            weight: 1.0,
            meta: BTreeMap::new(),
        }
    }

    #[must_use]
    pub fn with_meta(mut self, key: &str, value: impl Into<String>) -> Self {
        self.meta.insert(key.to_owned(), value.into());
        self
    }

    fn to_proto(&self) -> pb::Endpoint {
        pb::Endpoint {
            addr: Some(addr_to_proto(self.addr)),
            meta: self.meta.clone().into_iter().collect(),
            weight: self.weight,
        }
    }

    fn from_proto(set: &str, e: &pb::Endpoint) -> Result<Self, StateError> {
        let addr = e
            .addr
            .as_ref()
            .ok_or_else(|| StateError::InvalidAddr {
                set: set.to_owned(),
                addr: String::new(),
            })
            .and_then(|a| addr_from_proto(set, a))?;
        let weight = if e.weight > 0.0 && e.weight.is_finite() {
            e.weight
        } else {
            1.0
        };
        Ok(Self {
            addr,
            weight,
            meta: e.meta.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        })
    }
}

fn addr_to_proto(addr: SocketAddr) -> pb::SocketAddr {
    pb::SocketAddr {
        ip: addr.ip().to_string(),
        port: u32::from(addr.port()),
    }
}

fn addr_from_proto(set: &str, a: &pb::SocketAddr) -> Result<SocketAddr, StateError> {
    let bad = || StateError::InvalidAddr {
        set: set.to_owned(),
        addr: format!("{}:{}", a.ip, a.port),
    };
    let ip: IpAddr = a.ip.parse().map_err(|_| bad())?;
    let port = u16::try_from(a.port).map_err(|_| bad())?;
    Ok(SocketAddr::new(ip, port))
}

/// The endpoints behind one concrete name, by address.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EndpointSet(BTreeMap<SocketAddr, Endpoint>);

impl EndpointSet {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn insert(&mut self, endpoint: Endpoint) {
        self.0.insert(endpoint.addr, endpoint);
    }

    pub fn remove(&mut self, addr: &SocketAddr) -> Option<Endpoint> {
        self.0.remove(addr)
    }

    pub fn get(&self, addr: &SocketAddr) -> Option<&Endpoint> {
        self.0.get(addr)
    }

    pub fn iter(&self) -> impl ExactSizeIterator<Item = &Endpoint> {
        self.0.values()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl FromIterator<Endpoint> for EndpointSet {
    fn from_iter<I: IntoIterator<Item = Endpoint>>(iter: I) -> Self {
        Self(iter.into_iter().map(|e| (e.addr, e)).collect())
    }
}

/// Why a snapshot or delta from the controller cannot be applied. The
/// agent NACKs with this and keeps its previous state.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StateError {
    #[error("namespace {namespace}: invalid dtab: {error}")]
    InvalidDtab {
        namespace: String,
        error: ParseError,
    },
    #[error("invalid endpoint set name {name:?}: {error}")]
    InvalidName { name: String, error: ParseError },
    #[error("endpoint set {set}: invalid address {addr:?}")]
    InvalidAddr { set: String, addr: String },
    #[error("service policy for {prefix}: {error}")]
    InvalidPolicy { prefix: String, error: PolicyError },
    #[error("delta from version {base} does not apply to version {held}")]
    VersionMismatch { base: u64, held: u64 },
    #[error("delta from epoch {delta:?} does not apply to epoch {held:?}")]
    EpochMismatch { delta: String, held: String },
}

/// Every namespace's effective dtab, every concrete name's endpoints and
/// every service policy. Unchanged parts are shared between versions.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MeshState {
    pub dtabs: BTreeMap<String, Arc<Dtab>>,
    pub sets: BTreeMap<Path, Arc<EndpointSet>>,
    pub policies: PolicySet,
}

impl MeshState {
    /// The dtab of `namespace`, if it exists.
    pub fn dtab(&self, namespace: &str) -> Option<&Arc<Dtab>> {
        self.dtabs.get(namespace)
    }

    pub fn endpoint_count(&self) -> usize {
        self.sets.values().map(|s| s.len()).sum()
    }

    /// The complete wire form.
    pub fn to_snapshot(&self, version: u64, epoch: &str) -> pb::Snapshot {
        pb::Snapshot {
            version,
            epoch: epoch.to_owned(),
            dtabs: self
                .dtabs
                .iter()
                .map(|(ns, d)| namespace_dtab(ns, d))
                .collect(),
            endpoint_sets: self
                .sets
                .iter()
                .map(|(name, set)| pb::EndpointSet {
                    name: name.to_string(),
                    endpoints: set.iter().map(Endpoint::to_proto).collect(),
                })
                .collect(),
            policies: self
                .policies
                .iter()
                .map(|(prefix, p)| policy_to_proto(prefix, p))
                .collect(),
        }
    }

    /// Reads a snapshot, validating everything in it: on error nothing is
    /// half-applied because nothing is applied.
    pub fn from_snapshot(s: &pb::Snapshot) -> Result<Self, StateError> {
        let mut state = Self::default();
        for d in &s.dtabs {
            state
                .dtabs
                .insert(d.namespace.clone(), Arc::new(parse_dtab(d)?));
        }
        for set in &s.endpoint_sets {
            let endpoints = set
                .endpoints
                .iter()
                .map(|e| Endpoint::from_proto(&set.name, e))
                .collect::<Result<EndpointSet, _>>()?;
            state
                .sets
                .insert(parse_name(&set.name)?, Arc::new(endpoints));
        }
        for p in &s.policies {
            let (prefix, policy) = policy_from_proto(p)?;
            state.policies.insert(prefix, policy);
        }
        Ok(state)
    }

    /// What changed from `self` to `next`, as a delta without versions.
    pub fn diff(&self, next: &MeshState) -> pb::Delta {
        let mut delta = pb::Delta::default();
        for (ns, dtab) in &next.dtabs {
            if self.dtabs.get(ns).is_none_or(|old| old != dtab) {
                delta.dtabs.push(namespace_dtab(ns, dtab));
            }
        }
        delta.removed_namespaces = self
            .dtabs
            .keys()
            .filter(|ns| !next.dtabs.contains_key(*ns))
            .cloned()
            .collect();
        for (name, set) in &next.sets {
            let old = self.sets.get(name);
            if old.is_some_and(|old| Arc::ptr_eq(old, set) || old == set) {
                continue;
            }
            let mut change = pb::EndpointSetChange {
                name: name.to_string(),
                ..Default::default()
            };
            for e in set.iter() {
                if old.and_then(|o| o.get(&e.addr)) != Some(e) {
                    change.upserted.push(e.to_proto());
                }
            }
            if let Some(old) = old {
                change.removed = old
                    .iter()
                    .filter(|e| set.get(&e.addr).is_none())
                    .map(|e| addr_to_proto(e.addr))
                    .collect();
            }
            delta.endpoint_changes.push(change);
        }
        delta.removed_sets = self
            .sets
            .keys()
            .filter(|name| !next.sets.contains_key(*name))
            .map(ToString::to_string)
            .collect();
        for (prefix, policy) in next.policies.iter() {
            if self.policies.get(prefix) != Some(policy) {
                delta.policies.push(policy_to_proto(prefix, policy));
            }
        }
        delta.removed_policies = self
            .policies
            .iter()
            .filter(|(prefix, _)| next.policies.get(prefix).is_none())
            .map(|(prefix, _)| prefix.to_string())
            .collect();
        delta
    }

    /// This state with `delta` applied; `self` is untouched on error.
    pub fn apply(&self, delta: &pb::Delta) -> Result<MeshState, StateError> {
        let mut next = self.clone();
        for d in &delta.dtabs {
            next.dtabs
                .insert(d.namespace.clone(), Arc::new(parse_dtab(d)?));
        }
        for ns in &delta.removed_namespaces {
            next.dtabs.remove(ns);
        }
        for change in &delta.endpoint_changes {
            let name = parse_name(&change.name)?;
            let mut set = next
                .sets
                .get(&name)
                .map(|s| EndpointSet::clone(s))
                .unwrap_or_default();
            for e in &change.upserted {
                set.insert(Endpoint::from_proto(&change.name, e)?);
            }
            for a in &change.removed {
                set.remove(&addr_from_proto(&change.name, a)?);
            }
            next.sets.insert(name, Arc::new(set));
        }
        for name in &delta.removed_sets {
            next.sets.remove(&parse_name(name)?);
        }
        for p in &delta.policies {
            let (prefix, policy) = policy_from_proto(p)?;
            next.policies.insert(prefix, policy);
        }
        for prefix in &delta.removed_policies {
            let prefix = ecsmesh_policy::parse_prefix(prefix).map_err(|error| {
                StateError::InvalidPolicy {
                    prefix: prefix.clone(),
                    error,
                }
            })?;
            next.policies.remove(&prefix);
        }
        Ok(next)
    }
}

/// Whether a delta carries no change at all.
pub fn delta_is_empty(d: &pb::Delta) -> bool {
    d.dtabs.is_empty()
        && d.removed_namespaces.is_empty()
        && d.endpoint_changes.is_empty()
        && d.removed_sets.is_empty()
        && d.policies.is_empty()
        && d.removed_policies.is_empty()
}

fn policy_to_proto(prefix: &Path, p: &Versioned) -> pb::ServicePolicy {
    pb::ServicePolicy {
        prefix: prefix.to_string(),
        policy: p.policy.canonical(),
        version: p.version,
    }
}

/// A streamed policy, checked as a write to the store is: an agent never
/// applies a policy the controller would have refused.
fn policy_from_proto(p: &pb::ServicePolicy) -> Result<(Path, Versioned), StateError> {
    let invalid = |error| StateError::InvalidPolicy {
        prefix: p.prefix.chars().take(256).collect(),
        error,
    };
    let prefix = ecsmesh_policy::parse_prefix(&p.prefix).map_err(invalid)?;
    let policy = ServicePolicy::parse(&p.policy).map_err(invalid)?;
    Ok((
        prefix,
        Versioned {
            policy: Arc::new(policy),
            version: p.version,
        },
    ))
}

fn namespace_dtab(namespace: &str, dtab: &Dtab) -> pb::NamespaceDtab {
    pb::NamespaceDtab {
        namespace: namespace.to_owned(),
        dtab: dtab.to_string(),
    }
}

fn parse_dtab(d: &pb::NamespaceDtab) -> Result<Dtab, StateError> {
    Dtab::read(&d.dtab).map_err(|error| StateError::InvalidDtab {
        namespace: d.namespace.clone(),
        error,
    })
}

fn parse_name(name: &str) -> Result<Path, StateError> {
    Path::read(name).map_err(|error| StateError::InvalidName {
        name: name.to_owned(),
        error,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(s: &str) -> Endpoint {
        Endpoint::new(s.parse().unwrap()).with_meta("task_arn", format!("arn:{s}"))
    }

    fn state(dtab: &str, sets: &[(&str, &[&str])]) -> MeshState {
        MeshState {
            dtabs: [("default".to_owned(), Arc::new(Dtab::read(dtab).unwrap()))].into(),
            sets: sets
                .iter()
                .map(|(n, eps)| {
                    (
                        Path::read(n).unwrap(),
                        Arc::new(eps.iter().map(|e| ep(e)).collect()),
                    )
                })
                .collect(),
            policies: PolicySet::default(),
        }
    }

    fn policy(text: &str, version: u64) -> Versioned {
        Versioned {
            policy: Arc::new(ServicePolicy::parse(text).unwrap()),
            version,
        }
    }

    #[test]
    fn policies_travel_in_snapshots_and_deltas() {
        let mut a = state("/svc=>/#/ecs/demo", &[]);
        a.policies.insert(
            Path::read("/svc/payments").unwrap(),
            policy("timeouts: {total: 2s}", 3),
        );
        a.policies.insert(
            Path::read("/svc/gone").unwrap(),
            policy("zone_aware: false", 4),
        );
        let back = MeshState::from_snapshot(&a.to_snapshot(1, "e")).unwrap();
        assert_eq!(back, a);
        let mut b = a.clone();
        b.policies.remove(&Path::read("/svc/gone").unwrap());
        b.policies.insert(
            Path::read("/svc/payments").unwrap(),
            policy("timeouts: {total: 1s}", 5),
        );
        b.policies.insert(
            Path::read("/svc").unwrap(),
            policy("retries: {max_attempts: 2}", 6),
        );
        let delta = a.diff(&b);
        assert_eq!(delta.policies.len(), 2);
        assert_eq!(delta.removed_policies, vec!["/svc/gone".to_owned()]);
        assert!(delta.dtabs.is_empty() && delta.endpoint_changes.is_empty());
        assert_eq!(a.apply(&delta).unwrap(), b);
        assert!(delta_is_empty(&b.diff(&b)));
    }

    #[test]
    fn a_policy_the_store_would_refuse_is_nacked() {
        let a = state("/svc=>/#/ecs/demo", &[]);
        let delta = pb::Delta {
            policies: vec![pb::ServicePolicy {
                prefix: "/svc/x".into(),
                policy: r#"{"retries":{"max_attempts":99}}"#.into(),
                version: 1,
            }],
            ..Default::default()
        };
        let err = a.apply(&delta).unwrap_err();
        assert!(
            err.to_string().contains("/svc/x") && err.to_string().contains("max_attempts"),
            "{err}"
        );
        let root = pb::Delta {
            policies: vec![pb::ServicePolicy {
                prefix: "/".into(),
                policy: "{}".into(),
                version: 1,
            }],
            ..Default::default()
        };
        assert!(matches!(
            a.apply(&root),
            Err(StateError::InvalidPolicy { .. })
        ));
    }

    #[test]
    fn snapshot_round_trips() {
        let s = state(
            "/svc=>/#/ecs/demo",
            &[("/#/ecs/demo/world", &["127.0.1.1:8080", "127.0.1.2:49153"])],
        );
        let back = MeshState::from_snapshot(&s.to_snapshot(7, "e1")).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn diff_then_apply_reaches_the_new_state() {
        let a = state(
            "/svc=>/#/ecs/demo",
            &[
                ("/#/ecs/demo/world", &["127.0.1.1:8080", "127.0.1.2:8080"]),
                ("/#/ecs/demo/gone", &["127.0.1.3:1"]),
            ],
        );
        let mut b = state(
            "/svc=>/#/ecs/demo;/svc/world=>/svc/world-v2",
            &[
                ("/#/ecs/demo/world", &["127.0.1.2:8080", "127.0.1.9:8080"]),
                ("/#/ecs/demo/new", &["127.0.1.4:2"]),
            ],
        );
        b.dtabs
            .insert("other".to_owned(), Arc::new(Dtab::read("/a=>/b").unwrap()));
        let delta = a.diff(&b);
        assert_eq!(delta.dtabs.len(), 2);
        assert_eq!(delta.removed_sets, vec!["/#/ecs/demo/gone".to_owned()]);
        let world = delta
            .endpoint_changes
            .iter()
            .find(|c| c.name == "/#/ecs/demo/world")
            .unwrap();
        assert_eq!(world.upserted.len(), 1);
        assert_eq!(world.removed.len(), 1);
        assert_eq!(a.apply(&delta).unwrap(), b);
        assert!(delta_is_empty(&b.diff(&b)));
    }

    #[test]
    fn a_bad_delta_changes_nothing() {
        let a = state("/svc=>/#/ecs/demo", &[]);
        let delta = pb::Delta {
            dtabs: vec![pb::NamespaceDtab {
                namespace: "default".into(),
                dtab: "/svc=>".into(),
            }],
            ..Default::default()
        };
        let err = a.apply(&delta).unwrap_err();
        assert!(
            err.to_string()
                .contains("namespace default: invalid dtab: error at offset 6")
        );
        let snapshot = pb::Snapshot {
            endpoint_sets: vec![pb::EndpointSet {
                name: "/#/ecs/demo/x".into(),
                endpoints: vec![pb::Endpoint {
                    addr: Some(pb::SocketAddr {
                        ip: "not-an-ip".into(),
                        port: 1,
                    }),
                    ..Default::default()
                }],
            }],
            ..Default::default()
        };
        assert!(matches!(
            MeshState::from_snapshot(&snapshot),
            Err(StateError::InvalidAddr { .. })
        ));
    }
}

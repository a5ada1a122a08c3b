//! The double's data: one catalog, KV store and session table per
//! datacenter, each with its own Raft-like index, and the per-table and
//! per-service indexes Consul's blocking queries are scoped to.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::Deserialize;
use tokio::time::Instant;

use crate::DoubleError;

/// Consul's `kv_max_value_size` default.
pub const MAX_VALUE: usize = 512 * 1024;
/// Consul's default and longest session lock delay.
const DEFAULT_LOCK_DELAY: Duration = Duration::from_secs(15);
const MAX_LOCK_DELAY: Duration = Duration::from_mins(1);
const MAX_SESSION_TTL: Duration = Duration::from_hours(24);
/// Consul reaps a session at twice its TTL.
const SESSION_TTL_MULTIPLIER: u32 = 2;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    pub id: String,
    pub address: String,
    pub tagged_addresses: BTreeMap<String, String>,
    pub meta: BTreeMap<String, String>,
    pub create_index: u64,
    pub modify_index: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    pub id: String,
    pub name: String,
    pub tags: Vec<String>,
    pub address: String,
    pub port: u16,
    pub meta: BTreeMap<String, String>,
    pub create_index: u64,
    pub modify_index: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    pub id: String,
    pub name: String,
    pub status: String,
    pub notes: String,
    pub output: String,
    /// Empty for a node check.
    pub service_id: String,
    pub service_name: String,
    pub create_index: u64,
    pub modify_index: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvEntry {
    pub value: Vec<u8>,
    pub flags: u64,
    pub create_index: u64,
    pub modify_index: u64,
    pub lock_index: u64,
    pub session: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    pub id: String,
    pub name: String,
    pub node: String,
    pub lock_delay: Duration,
    pub delete: bool,
    pub ttl: Option<Duration>,
    pub ttl_text: String,
    pub node_checks: Vec<String>,
    pub service_checks: Vec<String>,
    pub create_index: u64,
    pub modify_index: u64,
    pub expires: Option<Instant>,
}

/// `PUT /v1/catalog/register`'s body (Consul's field names).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Registration {
    #[serde(rename = "ID")]
    pub id: String,
    pub node: String,
    pub address: String,
    pub datacenter: String,
    pub tagged_addresses: Option<BTreeMap<String, String>>,
    pub node_meta: Option<BTreeMap<String, String>>,
    pub service: Option<ServiceDef>,
    pub check: Option<CheckDef>,
    pub checks: Option<Vec<CheckDef>>,
    pub skip_node_update: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ServiceDef {
    #[serde(rename = "ID")]
    pub id: String,
    #[serde(alias = "Name")]
    pub service: String,
    pub tags: Option<Vec<String>>,
    pub address: String,
    pub port: u16,
    pub meta: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct CheckDef {
    pub node: String,
    #[serde(rename = "CheckID", alias = "ID")]
    pub check_id: String,
    pub name: String,
    pub status: String,
    pub notes: String,
    pub output: String,
    #[serde(rename = "ServiceID")]
    pub service_id: String,
}

/// `PUT /v1/session/create`'s body.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct SessionRequest {
    pub name: String,
    pub node: String,
    pub lock_delay: Option<serde_json::Value>,
    pub node_checks: Option<Vec<String>>,
    /// The pre-1.7 name of `NodeChecks`.
    pub checks: Option<Vec<String>>,
    pub service_checks: Option<Vec<ServiceCheckRef>>,
    pub behavior: String,
    #[serde(rename = "TTL")]
    pub ttl: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ServiceCheckRef {
    #[serde(rename = "ID")]
    pub id: String,
}

fn bad_request(message: impl Into<String>) -> DoubleError {
    DoubleError {
        status: 400,
        message: message.into(),
    }
}

fn server_error(message: impl Into<String>) -> DoubleError {
    DoubleError {
        status: 500,
        message: message.into(),
    }
}

/// One datacenter.
#[derive(Debug, Default)]
pub struct Dc {
    /// The Raft-like index: every write takes the next one.
    pub index: u64,
    pub nodes: BTreeMap<String, Node>,
    /// By (node, service ID).
    pub services: BTreeMap<(String, String), Service>,
    /// By (node, check ID).
    pub checks: BTreeMap<(String, String), Check>,
    /// The nodes and services tables' index (`/v1/catalog/services`).
    pub catalog_index: u64,
    pub checks_index: u64,
    /// Per service name, while it has instances.
    pub service_index: BTreeMap<String, u64>,
    /// When a service name last lost its last instance.
    pub extinction_index: u64,
    pub kv: BTreeMap<String, KvEntry>,
    /// The KV and tombstone tables' index.
    pub kv_index: u64,
    /// Deleted keys and when (Consul's graveyard).
    pub tombstones: BTreeMap<String, u64>,
    pub sessions: BTreeMap<String, Session>,
    pub sessions_index: u64,
    /// Keys whose holder's session was invalidated: no acquire until then.
    pub lock_delays: BTreeMap<String, Instant>,
}

impl Dc {
    pub fn next_index(&mut self) -> u64 {
        self.index += 1;
        self.index
    }

    // ---- catalog ----

    /// Consul's `Catalog.Register`: node, service and checks in one write;
    /// unchanged parts keep their indexes.
    pub fn register(&mut self, r: Registration) -> Result<(), DoubleError> {
        if r.node.is_empty() {
            return Err(bad_request("Must provide node"));
        }
        if r.address.is_empty() && !r.skip_node_update {
            return Err(bad_request("Must provide address"));
        }
        let mut checks: Vec<CheckDef> = r.checks.unwrap_or_default();
        checks.extend(r.check);
        if let Some(s) = &r.service
            && s.service.is_empty()
        {
            return Err(bad_request("Must provide service name"));
        }
        for c in &checks {
            if !c.node.is_empty() && c.node != r.node {
                return Err(bad_request("Check node must match registration node"));
            }
        }
        let idx = self.next_index();
        let node = r.node.clone();
        if !r.skip_node_update || !self.nodes.contains_key(&node) {
            let new = Node {
                id: r.id,
                address: r.address,
                tagged_addresses: r.tagged_addresses.unwrap_or_default(),
                meta: r.node_meta.unwrap_or_default(),
                create_index: idx,
                modify_index: idx,
            };
            self.ensure_node(&node, new, idx);
        }
        if let Some(s) = r.service {
            let id = if s.id.is_empty() {
                s.service.clone()
            } else {
                s.id
            };
            let new = Service {
                id: id.clone(),
                name: s.service,
                tags: s.tags.unwrap_or_default(),
                address: s.address,
                port: s.port,
                meta: s.meta.unwrap_or_default(),
                create_index: idx,
                modify_index: idx,
            };
            self.ensure_service(&node, new, idx);
        }
        for c in checks {
            self.ensure_check(&node, c, idx)?;
        }
        Ok(())
    }

    fn ensure_node(&mut self, name: &str, mut new: Node, idx: u64) {
        if let Some(old) = self.nodes.get(name) {
            new.create_index = old.create_index;
            let same = old.address == new.address
                && old.meta == new.meta
                && old.tagged_addresses == new.tagged_addresses
                && (new.id.is_empty() || old.id == new.id);
            if same {
                return;
            }
            if new.id.is_empty() {
                new.id.clone_from(&old.id);
            }
        }
        self.nodes.insert(name.to_owned(), new);
        self.catalog_index = idx;
        // A node change changes every health entry on it.
        for service in self.service_names_on(name) {
            self.service_index.insert(service, idx);
        }
    }

    fn ensure_service(&mut self, node: &str, mut new: Service, idx: u64) {
        let key = (node.to_owned(), new.id.clone());
        if let Some(old) = self.services.get(&key) {
            new.create_index = old.create_index;
            let same = old.name == new.name
                && old.tags == new.tags
                && old.address == new.address
                && old.port == new.port
                && old.meta == new.meta;
            if same {
                return;
            }
            if old.name != new.name {
                let old_name = old.name.clone();
                self.services.remove(&key);
                self.forget_instance(&old_name, idx);
            }
        }
        let name = new.name.clone();
        self.services.insert(key, new);
        self.catalog_index = idx;
        self.service_index.insert(name, idx);
    }

    fn ensure_check(&mut self, node: &str, c: CheckDef, idx: u64) -> Result<(), DoubleError> {
        let check_id = if c.check_id.is_empty() {
            c.name.clone()
        } else {
            c.check_id
        };
        if check_id.is_empty() {
            return Err(bad_request("Missing check ID"));
        }
        let service_name = if c.service_id.is_empty() {
            String::new()
        } else {
            self.services
                .get(&(node.to_owned(), c.service_id.clone()))
                .map(|s| s.name.clone())
                .ok_or_else(|| server_error("Missing service registration"))?
        };
        let status = match c.status.as_str() {
            "" => "critical".to_owned(),
            "passing" | "warning" | "critical" | "maintenance" => c.status,
            other => return Err(bad_request(format!("Invalid check status: {other:?}"))),
        };
        let key = (node.to_owned(), check_id.clone());
        let mut new = Check {
            id: check_id,
            name: c.name,
            status,
            notes: c.notes,
            output: c.output,
            service_id: c.service_id,
            service_name,
            create_index: idx,
            modify_index: idx,
        };
        if let Some(old) = self.checks.get(&key) {
            new.create_index = old.create_index;
            let same = old.name == new.name
                && old.status == new.status
                && old.notes == new.notes
                && old.output == new.output
                && old.service_id == new.service_id;
            if same {
                return Ok(());
            }
        }
        let critical = new.status == "critical";
        self.touch_check_owner(node, &new.service_name, idx);
        self.checks.insert(key.clone(), new);
        self.checks_index = idx;
        if critical {
            self.invalidate_sessions_of_check(node, &key.1, idx);
        }
        Ok(())
    }

    /// Sets a check's status (and output), as a TTL check update does.
    pub fn set_check_status(
        &mut self,
        node: &str,
        check_id: &str,
        status: &str,
        output: Option<String>,
    ) -> Result<(), DoubleError> {
        let Some(old) = self.checks.get(&(node.to_owned(), check_id.to_owned())) else {
            return Err(DoubleError {
                status: 404,
                message: format!("Unknown check ID {check_id:?}"),
            });
        };
        let def = CheckDef {
            node: node.to_owned(),
            check_id: check_id.to_owned(),
            name: old.name.clone(),
            status: status.to_owned(),
            notes: old.notes.clone(),
            output: output.unwrap_or_else(|| old.output.clone()),
            service_id: old.service_id.clone(),
        };
        let idx = self.next_index();
        self.ensure_check(node, def, idx)
    }

    /// Bumps the index of the services a check belongs to: its service, or
    /// every service on its node for a node check.
    fn touch_check_owner(&mut self, node: &str, service_name: &str, idx: u64) {
        if service_name.is_empty() {
            for s in self.service_names_on(node) {
                self.service_index.insert(s, idx);
            }
        } else if self.service_index.contains_key(service_name) {
            self.service_index.insert(service_name.to_owned(), idx);
        }
    }

    fn service_names_on(&self, node: &str) -> BTreeSet<String> {
        self.services
            .iter()
            .filter(|((n, _), _)| n == node)
            .map(|(_, s)| s.name.clone())
            .collect()
    }

    /// After an instance of `name` was removed: bump its index, or retire
    /// it when it was the last one.
    fn forget_instance(&mut self, name: &str, idx: u64) {
        if self.services.values().any(|s| s.name == name) {
            self.service_index.insert(name.to_owned(), idx);
        } else {
            self.service_index.remove(name);
            self.extinction_index = idx;
        }
    }

    /// `PUT /v1/catalog/deregister`: a check, a service (with its checks)
    /// or a whole node. Removing what does not exist is not an error.
    pub fn deregister(
        &mut self,
        node: &str,
        service_id: Option<&str>,
        check_id: Option<&str>,
    ) -> Result<(), DoubleError> {
        if node.is_empty() {
            return Err(bad_request("Must provide node"));
        }
        let idx = self.next_index();
        if let Some(check_id) = check_id.filter(|c| !c.is_empty()) {
            self.remove_check(node, check_id, idx);
        } else if let Some(service_id) = service_id.filter(|s| !s.is_empty()) {
            self.remove_service(node, service_id, idx);
        } else if self.nodes.remove(node).is_some() {
            let ids: Vec<String> = self
                .services
                .keys()
                .filter(|(n, _)| n == node)
                .map(|(_, id)| id.clone())
                .collect();
            for id in ids {
                self.remove_service(node, &id, idx);
            }
            let checks: Vec<String> = self
                .checks
                .keys()
                .filter(|(n, _)| n == node)
                .map(|(_, id)| id.clone())
                .collect();
            for id in checks {
                self.remove_check(node, &id, idx);
            }
            self.catalog_index = idx;
            let sessions: Vec<String> = self
                .sessions
                .values()
                .filter(|s| s.node == node)
                .map(|s| s.id.clone())
                .collect();
            for id in sessions {
                self.invalidate_session(&id, idx);
            }
        }
        Ok(())
    }

    fn remove_service(&mut self, node: &str, service_id: &str, idx: u64) {
        let Some(service) = self
            .services
            .remove(&(node.to_owned(), service_id.to_owned()))
        else {
            return;
        };
        let checks: Vec<String> = self
            .checks
            .iter()
            .filter(|((n, _), c)| n == node && c.service_id == service_id)
            .map(|((_, id), _)| id.clone())
            .collect();
        for id in checks {
            self.remove_check(node, &id, idx);
        }
        self.catalog_index = idx;
        self.forget_instance(&service.name, idx);
    }

    fn remove_check(&mut self, node: &str, check_id: &str, idx: u64) {
        if let Some(c) = self.checks.remove(&(node.to_owned(), check_id.to_owned())) {
            self.checks_index = idx;
            self.touch_check_owner(node, &c.service_name, idx);
            self.invalidate_sessions_of_check(node, check_id, idx);
        }
    }

    /// The index `/v1/health/service/<name>` reports: the service's own,
    /// or for a service without instances the last extinction (else the
    /// catalog's).
    pub fn health_index(&self, name: &str) -> u64 {
        if let Some(&i) = self.service_index.get(name) {
            return i;
        }
        if self.extinction_index > 0 {
            return self.extinction_index;
        }
        self.catalog_index.max(self.checks_index)
    }

    /// Every instance of `name`, with its node and the node's and its own
    /// checks.
    pub fn instances(&self, name: &str) -> Vec<(&str, &Node, &Service, Vec<&Check>)> {
        self.services
            .iter()
            .filter(|(_, s)| s.name == name)
            .filter_map(|((node_name, _), s)| {
                let node = self.nodes.get(node_name)?;
                let checks = self
                    .checks
                    .iter()
                    .filter(|((n, _), c)| {
                        n == node_name && (c.service_id.is_empty() || c.service_id == s.id)
                    })
                    .map(|(_, c)| c)
                    .collect();
                Some((node_name.as_str(), node, s, checks))
            })
            .collect()
    }

    /// Service names with the union of their instances' tags.
    pub fn service_tags(&self) -> BTreeMap<&str, BTreeSet<&str>> {
        let mut all: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
        for s in self.services.values() {
            all.entry(s.name.as_str())
                .or_default()
                .extend(s.tags.iter().map(String::as_str));
        }
        all
    }

    // ---- KV ----

    /// The index of a single-key read: the key's ModifyIndex, or the
    /// table's while it does not exist.
    pub fn kv_key_index(&self, key: &str) -> u64 {
        self.kv.get(key).map_or(self.kv_index, |e| e.modify_index)
    }

    /// The index of a prefix read: the highest ModifyIndex under it,
    /// tombstones included (the table's for an empty prefix or nothing).
    pub fn kv_prefix_index(&self, prefix: &str) -> u64 {
        if prefix.is_empty() {
            return self.kv_index;
        }
        let live = self
            .kv_under(prefix)
            .map(|(_, e)| e.modify_index)
            .max()
            .unwrap_or(0);
        let dead = self
            .tombstones
            .range(prefix.to_owned()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(_, &i)| i)
            .max()
            .unwrap_or(0);
        match live.max(dead) {
            0 => self.kv_index,
            i => i,
        }
    }

    pub fn kv_under<'a>(
        &'a self,
        prefix: &'a str,
    ) -> impl Iterator<Item = (&'a String, &'a KvEntry)> {
        self.kv
            .range(prefix.to_owned()..)
            .take_while(move |(k, _)| k.starts_with(prefix))
    }

    /// A plain or CAS write; keeps the lock holder.
    pub fn kv_set(&mut self, key: &str, value: Vec<u8>, flags: u64, cas: Option<u64>) -> bool {
        let idx = self.next_index();
        let existing = self.kv.get(key);
        match (cas, existing) {
            (Some(0), Some(_)) | (Some(1..), None) => return false,
            (Some(c), Some(e)) if c != 0 && e.modify_index != c => return false,
            _ => {}
        }
        let (create_index, lock_index, session) = existing.map_or((idx, 0, None), |e| {
            (e.create_index, e.lock_index, e.session.clone())
        });
        self.kv.insert(
            key.to_owned(),
            KvEntry {
                value,
                flags,
                create_index,
                modify_index: idx,
                lock_index,
                session,
            },
        );
        self.kv_index = idx;
        true
    }

    /// `?acquire=<session>`.
    pub fn kv_lock(
        &mut self,
        key: &str,
        value: Vec<u8>,
        flags: u64,
        session: &str,
        now: Instant,
    ) -> Result<bool, DoubleError> {
        if !self.sessions.contains_key(session) {
            return Err(server_error(format!("invalid session {session:?}")));
        }
        let idx = self.next_index();
        if self.lock_delays.get(key).is_some_and(|&until| until > now) {
            return Ok(false);
        }
        let existing = self.kv.get(key);
        let (create_index, lock_index) = match existing {
            Some(e) if e.session.as_deref() == Some(session) => (e.create_index, e.lock_index),
            Some(e) if e.session.is_some() => return Ok(false),
            Some(e) => (e.create_index, e.lock_index + 1),
            None => (idx, 1),
        };
        self.kv.insert(
            key.to_owned(),
            KvEntry {
                value,
                flags,
                create_index,
                modify_index: idx,
                lock_index,
                session: Some(session.to_owned()),
            },
        );
        self.kv_index = idx;
        Ok(true)
    }

    /// `?release=<session>`.
    pub fn kv_unlock(&mut self, key: &str, value: Vec<u8>, flags: u64, session: &str) -> bool {
        let idx = self.next_index();
        let Some(e) = self.kv.get_mut(key) else {
            return false;
        };
        if e.session.as_deref() != Some(session) {
            return false;
        }
        e.session = None;
        e.value = value;
        e.flags = flags;
        e.modify_index = idx;
        self.kv_index = idx;
        true
    }

    /// `DELETE /v1/kv/<key>[?cas=]`. A CAS delete of a missing key
    /// answers `true`, as Consul does.
    pub fn kv_delete(&mut self, key: &str, cas: Option<u64>) -> bool {
        let idx = self.next_index();
        match (self.kv.get(key), cas) {
            (None, _) => true,
            (Some(e), Some(c)) if e.modify_index != c => false,
            (Some(_), _) => {
                self.kv.remove(key);
                self.tombstones.insert(key.to_owned(), idx);
                self.kv_index = idx;
                true
            }
        }
    }

    /// `DELETE /v1/kv/<prefix>?recurse`.
    pub fn kv_delete_tree(&mut self, prefix: &str) {
        let idx = self.next_index();
        let keys: Vec<String> = self.kv_under(prefix).map(|(k, _)| k.clone()).collect();
        for k in keys {
            self.kv.remove(&k);
            self.tombstones.insert(k, idx);
            self.kv_index = idx;
        }
    }

    /// Forgets deleted keys, as Consul's tombstone GC does: a prefix whose
    /// newest change was a delete then reports a lower index.
    pub fn reap_tombstones(&mut self) {
        let idx = self.next_index();
        self.tombstones.clear();
        self.kv_index = idx;
    }

    // ---- sessions ----

    pub fn session_create(
        &mut self,
        r: SessionRequest,
        default_node: &str,
        ttl_min: Duration,
        now: Instant,
    ) -> Result<String, DoubleError> {
        let node = if r.node.is_empty() {
            default_node.to_owned()
        } else {
            r.node
        };
        let delete = match r.behavior.as_str() {
            "" | "release" => false,
            "delete" => true,
            other => return Err(bad_request(format!("Invalid Behavior setting '{other}'"))),
        };
        let ttl = match r.ttl.as_str() {
            "" => None,
            text => {
                let ttl = crate::parse_duration(text).ok_or_else(|| {
                    bad_request(format!("Request decode failed: invalid TTL {text:?}"))
                })?;
                if ttl != Duration::ZERO && (ttl < ttl_min || ttl > MAX_SESSION_TTL) {
                    return Err(bad_request(format!(
                        "Invalid Session TTL '{text}', must be between [{ttl_min:?}={MAX_SESSION_TTL:?}]"
                    )));
                }
                (ttl != Duration::ZERO).then_some(ttl)
            }
        };
        let lock_delay = match &r.lock_delay {
            None => DEFAULT_LOCK_DELAY,
            // Consul reads small numbers as seconds, large ones as nanoseconds.
            Some(serde_json::Value::Number(n)) => {
                let n = n.as_u64().unwrap_or(0);
                if n < 1000 {
                    Duration::from_secs(n)
                } else {
                    Duration::from_nanos(n)
                }
            }
            Some(serde_json::Value::String(s)) => crate::parse_duration(s).ok_or_else(|| {
                bad_request(format!("Request decode failed: invalid LockDelay {s:?}"))
            })?,
            Some(_) => return Err(bad_request("Request decode failed: invalid LockDelay")),
        }
        .min(MAX_LOCK_DELAY);
        if !self.nodes.contains_key(&node) {
            return Err(server_error("Missing node registration"));
        }
        let node_checks = r
            .node_checks
            .or(r.checks)
            .unwrap_or_else(|| vec!["serfHealth".to_owned()]);
        let service_checks: Vec<String> = r
            .service_checks
            .unwrap_or_default()
            .into_iter()
            .map(|c| c.id)
            .collect();
        for check in node_checks.iter().chain(&service_checks) {
            match self.checks.get(&(node.clone(), check.clone())) {
                None => {
                    return Err(server_error(format!(
                        "Missing check '{check}' registration"
                    )));
                }
                Some(c) if c.status == "critical" => {
                    return Err(server_error(format!(
                        "Check '{check}' is in critical state"
                    )));
                }
                Some(_) => {}
            }
        }
        let idx = self.next_index();
        let id = uuid();
        self.sessions.insert(
            id.clone(),
            Session {
                id: id.clone(),
                name: r.name,
                node,
                lock_delay,
                delete,
                ttl,
                ttl_text: r.ttl,
                node_checks,
                service_checks,
                create_index: idx,
                modify_index: idx,
                expires: ttl.map(|t| now + t * SESSION_TTL_MULTIPLIER),
            },
        );
        self.sessions_index = idx;
        Ok(id)
    }

    /// Resets the TTL timer; `None` for an unknown session.
    pub fn session_renew(&mut self, id: &str, now: Instant) -> Option<&Session> {
        let s = self.sessions.get_mut(id)?;
        s.expires = s.ttl.map(|t| now + t * SESSION_TTL_MULTIPLIER);
        Some(s)
    }

    pub fn session_destroy(&mut self, id: &str) {
        let idx = self.next_index();
        self.invalidate_session(id, idx);
    }

    /// Invalidates sessions past their TTL; whether any was.
    pub fn expire_sessions(&mut self, now: Instant) -> bool {
        let expired: Vec<String> = self
            .sessions
            .values()
            .filter(|s| s.expires.is_some_and(|e| e <= now))
            .map(|s| s.id.clone())
            .collect();
        for id in &expired {
            let idx = self.next_index();
            self.invalidate_session(id, idx);
        }
        !expired.is_empty()
    }

    /// Drops the session; its locks are released or their keys deleted,
    /// and each key gets the session's lock delay.
    pub fn invalidate_session(&mut self, id: &str, idx: u64) {
        let Some(session) = self.sessions.remove(id) else {
            return;
        };
        self.sessions_index = idx;
        let held: Vec<String> = self
            .kv
            .iter()
            .filter(|(_, e)| e.session.as_deref() == Some(id))
            .map(|(k, _)| k.clone())
            .collect();
        let until = Instant::now() + session.lock_delay;
        for key in held {
            if session.delete {
                self.kv.remove(&key);
                self.tombstones.insert(key.clone(), idx);
            } else if let Some(e) = self.kv.get_mut(&key) {
                e.session = None;
                e.modify_index = idx;
            }
            self.kv_index = idx;
            if session.lock_delay > Duration::ZERO {
                self.lock_delays.insert(key, until);
            }
        }
    }

    fn invalidate_sessions_of_check(&mut self, node: &str, check_id: &str, idx: u64) {
        let ids: Vec<String> = self
            .sessions
            .values()
            .filter(|s| {
                s.node == node
                    && (s.node_checks.iter().any(|c| c == check_id)
                        || s.service_checks.iter().any(|c| c == check_id))
            })
            .map(|s| s.id.clone())
            .collect();
        for id in ids {
            self.invalidate_session(&id, idx);
        }
    }

    // ---- faults ----

    /// A snapshot restore: every index above `to` comes down to `to`.
    pub fn reset_index(&mut self, to: u64) {
        let clamp = |i: &mut u64| *i = (*i).min(to);
        self.index = to;
        clamp(&mut self.catalog_index);
        clamp(&mut self.checks_index);
        clamp(&mut self.extinction_index);
        clamp(&mut self.kv_index);
        clamp(&mut self.sessions_index);
        self.service_index.values_mut().for_each(clamp);
        self.tombstones.values_mut().for_each(clamp);
        for n in self.nodes.values_mut() {
            clamp(&mut n.create_index);
            clamp(&mut n.modify_index);
        }
        for s in self.services.values_mut() {
            clamp(&mut s.create_index);
            clamp(&mut s.modify_index);
        }
        for c in self.checks.values_mut() {
            clamp(&mut c.create_index);
            clamp(&mut c.modify_index);
        }
        for e in self.kv.values_mut() {
            clamp(&mut e.create_index);
            clamp(&mut e.modify_index);
        }
        for s in self.sessions.values_mut() {
            clamp(&mut s.create_index);
            clamp(&mut s.modify_index);
        }
    }

    /// A write that changes no content but bumps every table index (as an
    /// idempotent write or a server-side bug does).
    pub fn spurious_write(&mut self) {
        let idx = self.next_index();
        self.catalog_index = idx;
        self.checks_index = idx;
        self.kv_index = idx;
        self.sessions_index = idx;
        self.service_index.values_mut().for_each(|i| *i = idx);
    }
}

fn uuid() -> String {
    let a = fastrand::u128(..);
    let h = format!("{a:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

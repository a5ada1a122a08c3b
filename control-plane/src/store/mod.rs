//! Where operators' documents are kept: each namespace's dtab overrides
//! and each service prefix's traffic policy (issue #18), in an embedded
//! file store (one controller), Consul's KV store or a DynamoDB table
//! (several replicas sharing one set).
//!
//! One store holds one [`Document`] kind; the controller opens one per
//! kind over the same backend. Every write is validated before it is
//! stored and is compare-and-set on the entry's version; a failed write
//! changes nothing. Readers follow the whole store through a watch
//! channel, so the reconciler and the watch APIs see every change.

pub mod consul_kv;
pub mod dynamodb;
pub mod file;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use ecsmesh_dtab::Dtab;
use ecsmesh_policy::ServicePolicy;
use tokio::sync::watch;

/// The kinds of document a store may hold: what names them in errors, and
/// where each backend keeps them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Dtab,
    Policy,
}

impl Kind {
    /// What one entry's key is called in messages.
    pub fn key_noun(self) -> &'static str {
        match self {
            Self::Dtab => "namespace",
            Self::Policy => "policy for",
        }
    }

    /// What a store of this kind is called in messages.
    pub fn store_noun(self) -> &'static str {
        match self {
            Self::Dtab => "dtab store",
            Self::Policy => "policy store",
        }
    }

    /// The plural used in limits and logs.
    pub fn plural(self) -> &'static str {
        match self {
            Self::Dtab => "namespaces",
            Self::Policy => "policies",
        }
    }

    /// The setting that bounds how many are stored.
    pub fn limit_setting(self) -> &'static str {
        match self {
            Self::Dtab => "max_namespaces",
            Self::Policy => "max_policies",
        }
    }

    /// The attribute (file field, DynamoDB attribute) holding the text.
    pub fn field(self) -> &'static str {
        match self {
            Self::Dtab => "dtab",
            Self::Policy => "policy",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.field())
    }
}

/// A document a store keeps: its stored text form and the rule for the
/// keys it is stored under. Decoding checks everything a write checks, so
/// a hand-edited entry is refused the same way.
pub trait Document: Clone + fmt::Debug + PartialEq + Send + Sync + 'static {
    const KIND: Kind;

    /// The stored text.
    fn encode(&self) -> String;

    /// Reads stored text back.
    ///
    /// # Errors
    /// The text is not a valid document; the message says why.
    fn decode(text: &str) -> Result<Self, String>;

    /// Checks a key; the message of [`StoreError::InvalidKey`] says what a
    /// valid one is, quoting at most a bounded prefix of `key`.
    ///
    /// # Errors
    /// Not a key this kind may be stored under.
    fn validate_key(key: &str) -> Result<(), StoreError>;
}

impl Document for Dtab {
    const KIND: Kind = Kind::Dtab;

    fn encode(&self) -> String {
        self.to_string()
    }

    fn decode(text: &str) -> Result<Self, String> {
        Dtab::read(text).map_err(|e| e.to_string())
    }

    fn validate_key(key: &str) -> Result<(), StoreError> {
        validate_namespace(key)
    }
}

impl Document for ServicePolicy {
    const KIND: Kind = Kind::Policy;

    fn encode(&self) -> String {
        self.canonical()
    }

    fn decode(text: &str) -> Result<Self, String> {
        ServicePolicy::parse(text).map_err(|e| e.to_string())
    }

    /// A policy is stored under its prefix in canonical form, so one
    /// prefix has one entry however it was written.
    fn validate_key(key: &str) -> Result<(), StoreError> {
        let invalid = |message: String| StoreError::InvalidKey {
            kind: Kind::Policy,
            message,
        };
        let path = ecsmesh_policy::parse_prefix(key).map_err(|e| invalid(e.to_string()))?;
        if path.to_string() != key {
            return Err(invalid(format!(
                "service prefix {:?} is not in canonical form: write {path}",
                crate::limits::echo(key)
            )));
        }
        Ok(())
    }
}

/// An entry and its version. Versions only grow, across restarts too.
#[derive(Clone, Debug, PartialEq)]
pub struct Stored<D> {
    pub doc: Arc<D>,
    pub version: u64,
}

/// A namespace's stored dtab.
pub type StoredDtab = Stored<Dtab>;

/// Every stored entry of one kind, by key.
pub type Entries<D> = BTreeMap<String, Stored<D>>;

/// Every stored namespace.
pub type Namespaces = Entries<Dtab>;

/// Every stored service policy, by canonical prefix.
pub type Policies = Entries<ServicePolicy>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{} {key:?} does not exist", kind.key_noun())]
    NotFound { kind: Kind, key: String },
    #[error("{} {key:?} already exists", kind.key_noun())]
    AlreadyExists { kind: Kind, key: String },
    #[error("{} {key:?} is at version {actual}, not the expected {expected}", kind.key_noun())]
    VersionMismatch {
        kind: Kind,
        key: String,
        expected: u64,
        actual: u64,
    },
    /// The message holds a bounded prefix of the key ([`crate::limits::echo`]).
    #[error("{message}")]
    InvalidKey { kind: Kind, message: String },
    #[error("{limit} {} are stored, the limit ({}): delete one first", kind.plural(), kind.limit_setting())]
    TooMany { kind: Kind, limit: usize },
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is corrupt: {reason}")]
    Corrupt { path: String, reason: String },
}

impl StoreError {
    pub(crate) fn not_found<D: Document>(key: &str) -> Self {
        Self::NotFound {
            kind: D::KIND,
            key: key.to_owned(),
        }
    }

    pub(crate) fn already_exists<D: Document>(key: &str) -> Self {
        Self::AlreadyExists {
            kind: D::KIND,
            key: key.to_owned(),
        }
    }

    pub(crate) fn mismatch<D: Document>(key: &str, expected: u64, actual: u64) -> Self {
        Self::VersionMismatch {
            kind: D::KIND,
            key: key.to_owned(),
            expected,
            actual,
        }
    }
}

/// Checks a namespace name: it becomes a file key or a Consul KV key.
pub fn validate_namespace(ns: &str) -> Result<(), StoreError> {
    let ok = !ns.is_empty()
        && ns.len() <= 64
        && !ns.starts_with('.')
        && ns
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(StoreError::InvalidKey {
            kind: Kind::Dtab,
            message: format!(
                "invalid namespace name {:?}: use 1 to 64 letters, digits, '.', '_' or '-', not starting with '.'",
                crate::limits::echo(ns)
            ),
        })
    }
}

/// Checks that `key` may be created beside `current` without passing
/// `max` entries.
pub fn check_room<D: Document>(
    current: &Entries<D>,
    key: &str,
    max: usize,
) -> Result<(), StoreError> {
    if current.len() >= max && !current.contains_key(key) {
        return Err(StoreError::TooMany {
            kind: D::KIND,
            limit: max,
        });
    }
    Ok(())
}

/// The configured store of one document kind.
#[derive(Debug)]
pub enum Store<D: Document> {
    File(file::FileStore<D>),
    /// Consul KV, shared by several controller replicas.
    Consul(consul_kv::ConsulStore<D>),
    Dynamo(dynamodb::DynamoStore<D>),
}

/// The namespaces' dtab overrides.
pub type DtabStore = Store<Dtab>;

/// The service policies.
pub type PolicyStore = Store<ServicePolicy>;

impl<D: Document> Store<D> {
    /// Every stored entry, as of now.
    pub fn entries(&self) -> Arc<Entries<D>> {
        self.subscribe().borrow().clone()
    }

    /// Follows the whole store.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Entries<D>>> {
        match self {
            Self::File(s) => s.subscribe(),
            Self::Consul(s) => s.subscribe(),
            Self::Dynamo(s) => s.subscribe(),
        }
    }

    /// Creates the entry, if fewer than `max` are stored.
    pub async fn create(&self, key: &str, doc: D, max: usize) -> Result<Stored<D>, StoreError> {
        D::validate_key(key)?;
        match self {
            Self::File(s) => s.create(key, doc, max).await,
            Self::Consul(s) => s.create(key, doc, max).await,
            Self::Dynamo(s) => s.create(key, doc, max).await,
        }
    }

    /// Replaces the entry if the stored version is `expected`.
    pub async fn update(&self, key: &str, doc: D, expected: u64) -> Result<Stored<D>, StoreError> {
        D::validate_key(key)?;
        match self {
            Self::File(s) => s.update(key, doc, expected).await,
            Self::Consul(s) => s.update(key, doc, expected).await,
            Self::Dynamo(s) => s.update(key, doc, expected).await,
        }
    }

    /// Deletes the entry (only at version `expected`, when given).
    pub async fn delete(&self, key: &str, expected: Option<u64>) -> Result<(), StoreError> {
        D::validate_key(key)?;
        match self {
            Self::File(s) => s.delete(key, expected).await,
            Self::Consul(s) => s.delete(key, expected).await,
            Self::Dynamo(s) => s.delete(key, expected).await,
        }
    }
}

impl DtabStore {
    /// Every stored namespace, as of now.
    pub fn namespaces(&self) -> Arc<Namespaces> {
        self.entries()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_keys_are_canonical_prefixes() {
        assert!(ServicePolicy::validate_key("/svc/payments").is_ok());
        for bad in [
            "/",
            "",
            "svc",
            "/svc/",
            "/svc//x",
            &format!("/{}", "a".repeat(300)),
        ] {
            let err = ServicePolicy::validate_key(bad).unwrap_err();
            assert!(matches!(err, StoreError::InvalidKey { .. }), "{bad}: {err}");
            assert!(err.to_string().len() < 400, "{err}");
        }
    }

    #[test]
    fn errors_name_the_kind() {
        assert_eq!(
            StoreError::not_found::<Dtab>("x").to_string(),
            "namespace \"x\" does not exist"
        );
        assert_eq!(
            StoreError::not_found::<ServicePolicy>("/svc/x").to_string(),
            "policy for \"/svc/x\" does not exist"
        );
        assert_eq!(
            StoreError::TooMany {
                kind: Kind::Policy,
                limit: 3
            }
            .to_string(),
            "3 policies are stored, the limit (max_policies): delete one first"
        );
    }
}

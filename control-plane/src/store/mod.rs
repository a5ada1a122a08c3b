//! Where dtab overrides are kept: an embedded file store (one controller)
//! or Consul's KV store (several replicas sharing one set of dtabs).
//!
//! Every write is validated before it is stored and is compare-and-set on
//! the namespace's version; a failed write changes nothing. Readers follow
//! the whole store through a watch channel, so the reconciler and the
//! `WatchDtab` API see every change.

pub mod consul_kv;
pub mod dynamodb;
pub mod file;

use std::collections::BTreeMap;
use std::sync::Arc;

use ecsmesh_dtab::Dtab;
use tokio::sync::watch;

/// A namespace's stored dtab and its version. Versions only grow, across
/// restarts too.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredDtab {
    pub dtab: Arc<Dtab>,
    pub version: u64,
}

/// Every stored namespace.
pub type Namespaces = BTreeMap<String, StoredDtab>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("namespace {0:?} does not exist")]
    NotFound(String),
    #[error("namespace {0:?} already exists")]
    AlreadyExists(String),
    #[error("namespace {namespace:?} is at version {actual}, not the expected {expected}")]
    VersionMismatch {
        namespace: String,
        expected: u64,
        actual: u64,
    },
    /// Holds a bounded prefix of the name ([`crate::limits::echo`]).
    #[error(
        "invalid namespace name {0:?}: use 1 to 64 letters, digits, '.', '_' or '-', not starting with '.'"
    )]
    InvalidNamespace(String),
    #[error("{limit} namespaces are stored, the limit (max_namespaces): delete one first")]
    TooManyNamespaces { limit: usize },
    #[error("dtab store {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("dtab store {path} is corrupt: {reason}")]
    Corrupt { path: String, reason: String },
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
        Err(StoreError::InvalidNamespace(
            crate::limits::echo(ns).into_owned(),
        ))
    }
}

/// Checks that `namespace` may be created beside `current` without
/// passing `max_namespaces`.
pub fn check_room(
    current: &Namespaces,
    namespace: &str,
    max_namespaces: usize,
) -> Result<(), StoreError> {
    if current.len() >= max_namespaces && !current.contains_key(namespace) {
        return Err(StoreError::TooManyNamespaces {
            limit: max_namespaces,
        });
    }
    Ok(())
}

/// The configured store.
#[derive(Debug)]
pub enum DtabStore {
    File(file::FileStore),
    /// Consul KV, shared by several controller replicas.
    Consul(consul_kv::ConsulStore),
    Dynamo(dynamodb::DynamoStore),
}

impl DtabStore {
    /// Every stored namespace, as of now.
    pub fn namespaces(&self) -> Arc<Namespaces> {
        self.subscribe().borrow().clone()
    }

    /// Follows the whole store.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Namespaces>> {
        match self {
            Self::File(s) => s.subscribe(),
            Self::Consul(s) => s.subscribe(),
            Self::Dynamo(s) => s.subscribe(),
        }
    }

    /// Creates the namespace, if fewer than `max_namespaces` are stored.
    pub async fn create(
        &self,
        namespace: &str,
        dtab: Dtab,
        max_namespaces: usize,
    ) -> Result<StoredDtab, StoreError> {
        validate_namespace(namespace)?;
        match self {
            Self::File(s) => s.create(namespace, dtab, max_namespaces).await,
            Self::Consul(s) => s.create(namespace, dtab, max_namespaces).await,
            Self::Dynamo(s) => s.create(namespace, dtab, max_namespaces).await,
        }
    }

    /// Replaces the dtab if the stored version is `expected`.
    pub async fn update(
        &self,
        namespace: &str,
        dtab: Dtab,
        expected: u64,
    ) -> Result<StoredDtab, StoreError> {
        validate_namespace(namespace)?;
        match self {
            Self::File(s) => s.update(namespace, dtab, expected).await,
            Self::Consul(s) => s.update(namespace, dtab, expected).await,
            Self::Dynamo(s) => s.update(namespace, dtab, expected).await,
        }
    }

    /// Deletes the namespace (only at version `expected`, when given).
    pub async fn delete(&self, namespace: &str, expected: Option<u64>) -> Result<(), StoreError> {
        validate_namespace(namespace)?;
        match self {
            Self::File(s) => s.delete(namespace, expected).await,
            Self::Consul(s) => s.delete(namespace, expected).await,
            Self::Dynamo(s) => s.delete(namespace, expected).await,
        }
    }
}

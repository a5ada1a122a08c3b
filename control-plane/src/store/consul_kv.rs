//! The store on Consul KV, for several controller replicas sharing one
//! set of dtabs and policies.
//!
//! - Each namespace is a key `<prefix>/<namespace>` (default prefix
//!   `ecsmesh/dtabs`) holding the dtab's canonical text; each service
//!   policy is a key under the sibling prefix `…/policies` followed by its
//!   service prefix (`ecsmesh/policies/svc/payments`), holding the policy's
//!   canonical JSON. A version is the key's ModifyIndex, so it only grows
//!   (Consul's Raft index).
//! - Every write is compare-and-set: create is `?cas=0`, update and delete
//!   are `?cas=<expected version>`. A refused write is read back
//!   (consistently) to tell `AlreadyExists`, `NotFound` and
//!   `VersionMismatch` apart, as the file store reports them.
//! - A blocking `?recurse` watch on the prefix keeps the subscription
//!   current, with other replicas' writes too. A write returns once that
//!   watch shows it (bounded by `settle_timeout`), so readers of this
//!   replica see their own writes.
//! - A value that is not a valid document (someone wrote the key by hand)
//!   is logged and skipped: the entry keeps its last valid value here (or
//!   stays absent), and is never half-applied.
//! - Consul errors are `StoreError::Io` (the admin API answers UNAVAILABLE).

use std::sync::Arc;
use std::time::Duration;

use ecsmesh_consul::{BlockingWatch, Client, Config, KvPair, QueryOptions, WatchConfig};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{Document, Entries, Kind, StoreError, Stored, check_room};
use crate::metrics::Metrics;

/// Where the dtabs live unless configured otherwise.
pub const DEFAULT_PREFIX: &str = "ecsmesh/dtabs";

/// Consul KV store settings.
#[derive(Clone, Debug)]
pub struct ConsulStoreSettings {
    /// `http://host:port` of a Consul agent or server.
    pub address: String,
    /// `?dc=` (KV is per datacenter); `None` is the agent's.
    pub datacenter: Option<String>,
    /// ACL token (`X-Consul-Token`): needs `key:read` and `key:write` on
    /// the prefix.
    pub token: Option<String>,
    /// The dtabs' key prefix, without a trailing `/`; policies are kept
    /// under its sibling (see [`kind_prefix`]).
    pub prefix: String,
    /// `?wait=` of the watch's blocking queries.
    pub wait: Duration,
    /// The watch's rate limit once its burst is spent.
    pub min_interval: Duration,
    /// How long a write waits for the watch to show it.
    pub settle_timeout: Duration,
}

impl Default for ConsulStoreSettings {
    fn default() -> Self {
        Self {
            address: "http://127.0.0.1:8500".to_owned(),
            datacenter: None,
            token: None,
            prefix: DEFAULT_PREFIX.to_owned(),
            wait: Duration::from_mins(5),
            min_interval: Duration::from_millis(100),
            settle_timeout: Duration::from_secs(5),
        }
    }
}

/// Where a kind is kept, given the dtabs' prefix: the dtabs there, the
/// policies beside them (`ecsmesh/dtabs` → `ecsmesh/policies`).
pub fn kind_prefix(kind: Kind, dtab_prefix: &str) -> String {
    let dtab_prefix = dtab_prefix.trim_matches('/');
    match kind {
        Kind::Dtab => dtab_prefix.to_owned(),
        Kind::Policy => match dtab_prefix.rsplit_once('/') {
            Some((parent, _)) => format!("{parent}/policies"),
            None => format!("{dtab_prefix}-policies"),
        },
    }
}

/// The KV key's part after `<prefix>/` for an entry's key: policies'
/// prefixes start with `/`, which the KV key does not repeat.
fn kv_suffix(kind: Kind, key: &str) -> &str {
    match kind {
        Kind::Dtab => key,
        Kind::Policy => key.trim_start_matches('/'),
    }
}

fn entry_key(kind: Kind, suffix: &str) -> String {
    match kind {
        Kind::Dtab => suffix.to_owned(),
        Kind::Policy => format!("/{suffix}"),
    }
}

#[derive(Debug)]
pub struct ConsulStore<D: Document> {
    /// Boxed: the HTTP client is large, and `Store` holds this inline.
    client: Box<Client>,
    prefix: String,
    tx: watch::Sender<Arc<Entries<D>>>,
    follower: JoinHandle<()>,
    metrics: Arc<Metrics>,
    settle_timeout: Duration,
}

impl<D: Document> Drop for ConsulStore<D> {
    fn drop(&mut self) {
        self.follower.abort();
    }
}

impl<D: Document> ConsulStore<D> {
    /// The client and the key prefix, for the leader lease kept beside
    /// the dtabs.
    pub fn client(&self) -> (Client, &str) {
        (Client::clone(&self.client), &self.prefix)
    }

    /// Reads the prefix once (so the store starts with what Consul holds,
    /// and fails if Consul cannot be read), then follows it. Needs a Tokio
    /// runtime.
    pub async fn open(
        settings: ConsulStoreSettings,
        metrics: Arc<Metrics>,
    ) -> Result<Self, StoreError> {
        let prefix = kind_prefix(D::KIND, &settings.prefix);
        let client = Client::new(Config {
            address: settings.address.clone(),
            datacenter: settings.datacenter.clone(),
            token: settings.token.clone(),
            ..Config::default()
        })
        .map_err(|e| io_error::<D>(&settings.address, &prefix, e))?;
        let dir = format!("{prefix}/");
        let first = client.kv_list(&dir, &QueryOptions::default()).await;
        metrics.api_call("consul", "kv_list", first.is_ok());
        let first = first.map_err(|e| io_error::<D>(&settings.address, &prefix, e))?;
        let entries = decode::<D>(&prefix, &first.value, &Entries::new());
        tracing::info!(
            address = settings.address,
            prefix,
            entries = entries.len(),
            "{} on Consul KV opened",
            D::KIND.store_noun()
        );
        let tx = watch::Sender::new(Arc::new(entries));
        let follower = tokio::spawn(follow(
            client.clone(),
            prefix.clone(),
            WatchConfig {
                wait: settings.wait,
                datacenter: settings.datacenter.clone(),
                min_interval: settings.min_interval,
                ..WatchConfig::default()
            },
            tx.clone(),
            Arc::clone(&metrics),
        ));
        Ok(Self {
            client: Box::new(client),
            prefix,
            tx,
            follower,
            metrics,
            settle_timeout: settings.settle_timeout,
        })
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<Entries<D>>> {
        self.tx.subscribe()
    }

    /// Creates the entry. The limit is checked against this replica's
    /// view: replicas creating at once may pass it by one each.
    pub async fn create(
        &self,
        namespace: &str,
        dtab: D,
        max: usize,
    ) -> Result<Stored<D>, StoreError> {
        check_room(&self.tx.borrow(), namespace, max)?;
        let text = dtab.encode();
        let key = self.key(namespace);
        let created = self
            .call(
                "kv_put",
                &key,
                self.client.kv_put(&key, text.as_bytes(), Some(0)),
            )
            .await?;
        if !created {
            return Err(StoreError::already_exists::<D>(namespace));
        }
        self.written(namespace, dtab, &text, 0).await
    }

    pub async fn update(
        &self,
        namespace: &str,
        dtab: D,
        expected: u64,
    ) -> Result<Stored<D>, StoreError> {
        // `cas=0` would mean "create": version 0 never matches a stored one.
        if expected == 0 {
            return Err(self.refused(namespace, expected).await);
        }
        let text = dtab.encode();
        let key = self.key(namespace);
        let updated = self
            .call(
                "kv_put",
                &key,
                self.client.kv_put(&key, text.as_bytes(), Some(expected)),
            )
            .await?;
        if !updated {
            return Err(self.refused(namespace, expected).await);
        }
        self.written(namespace, dtab, &text, expected).await
    }

    pub async fn delete(&self, namespace: &str, expected: Option<u64>) -> Result<(), StoreError> {
        let key = self.key(namespace);
        // Consul answers `true` for deleting a missing key: look first.
        let Some(current) = self.read(namespace).await? else {
            return Err(StoreError::not_found::<D>(namespace));
        };
        let deleted = match expected {
            Some(0) => false,
            Some(version) => {
                self.call(
                    "kv_delete",
                    &key,
                    self.client.kv_delete(&key, Some(version)),
                )
                .await?
            }
            None => {
                self.call("kv_delete", &key, self.client.kv_delete(&key, None))
                    .await?
            }
        };
        if !deleted {
            return Err(self
                .refused(namespace, expected.unwrap_or(current.modify_index))
                .await);
        }
        self.settle(|ns| !ns.contains_key(namespace)).await;
        Ok(())
    }

    fn key(&self, key: &str) -> String {
        format!("{}/{}", self.prefix, kv_suffix(D::KIND, key))
    }

    /// The key, read consistently (the leader checks with a quorum).
    async fn read(&self, namespace: &str) -> Result<Option<KvPair>, StoreError> {
        let key = self.key(namespace);
        let opts = QueryOptions {
            consistent: true,
            ..QueryOptions::default()
        };
        Ok(self
            .call("kv_get", &key, self.client.kv_get(&key, &opts))
            .await?
            .value)
    }

    /// Why a compare-and-set was refused.
    async fn refused(&self, namespace: &str, expected: u64) -> StoreError {
        match self.read(namespace).await {
            Ok(None) => StoreError::not_found::<D>(namespace),
            Ok(Some(current)) => {
                StoreError::mismatch::<D>(namespace, expected, current.modify_index)
            }
            Err(e) => e,
        }
    }

    /// After a successful write: its version (read back, since a KV PUT
    /// answers only `true`), once the watch shows it.
    async fn written(
        &self,
        namespace: &str,
        dtab: D,
        text: &str,
        expected: u64,
    ) -> Result<Stored<D>, StoreError> {
        let current = self.read(namespace).await?;
        match current {
            Some(p) if p.value == text.as_bytes() => {
                let version = p.modify_index;
                self.settle(|ns| ns.get(namespace).is_some_and(|s| s.version >= version))
                    .await;
                Ok(Stored {
                    doc: Arc::new(dtab),
                    version,
                })
            }
            // Another replica replaced (or deleted) it between our write
            // and the read: ours is not the stored dtab any more, and its
            // version is unknown. Reporting the conflict is the safe answer.
            Some(p) => Err(StoreError::mismatch::<D>(
                namespace,
                expected,
                p.modify_index,
            )),
            None => Err(StoreError::not_found::<D>(namespace)),
        }
    }

    /// Waits (bounded) until the watched entries satisfy `done`.
    async fn settle(&self, done: impl Fn(&Entries<D>) -> bool) {
        let mut rx = self.tx.subscribe();
        let wait = rx.wait_for(|ns| done(ns));
        if tokio::time::timeout(self.settle_timeout, wait)
            .await
            .is_err()
        {
            tracing::debug!("the KV watch has not shown a write yet");
        }
    }

    async fn call<T>(
        &self,
        operation: &'static str,
        key: &str,
        call: impl Future<Output = Result<T, ecsmesh_consul::Error>>,
    ) -> Result<T, StoreError> {
        let r = call.await;
        self.metrics.api_call("consul", operation, r.is_ok());
        r.map_err(|e| io_error::<D>(&self.client.config().address, key, e))
    }
}

fn io_error<D: Document>(address: &str, key: &str, e: ecsmesh_consul::Error) -> StoreError {
    StoreError::Io {
        path: format!("{} consul {address}/v1/kv/{key}", D::KIND.store_noun()),
        source: std::io::Error::other(e),
    }
}

/// Follows the prefix until aborted.
async fn follow<D: Document>(
    client: Client,
    prefix: String,
    config: WatchConfig,
    tx: watch::Sender<Arc<Entries<D>>>,
    metrics: Arc<Metrics>,
) {
    let dir = format!("{prefix}/");
    let mut watch = BlockingWatch::new(config);
    loop {
        let next = watch
            .next(|opts| {
                let (client, dir, metrics) = (&client, &dir, &metrics);
                async move {
                    let r = client.kv_list(dir, &opts).await;
                    metrics.api_call("consul", "kv_list", r.is_ok());
                    r
                }
            })
            .await;
        match next {
            Ok(pairs) => {
                let previous = tx.borrow().clone();
                let next = decode::<D>(&prefix, &pairs, &previous);
                tx.send_if_modified(|current| {
                    if **current == next {
                        return false;
                    }
                    *current = Arc::new(next);
                    true
                });
            }
            Err(error) => {
                tracing::warn!(prefix, %error, "Consul KV unavailable; keeping the last {}", D::KIND.plural());
            }
        }
    }
}

/// The entries under `prefix`. Invalid ones are skipped; an entry whose
/// value is not a valid document keeps its `previous` one, if any.
fn decode<D: Document>(prefix: &str, pairs: &[KvPair], previous: &Entries<D>) -> Entries<D> {
    let mut entries = Entries::new();
    for pair in pairs {
        let Some(suffix) = pair
            .key
            .strip_prefix(prefix)
            .and_then(|k| k.strip_prefix('/'))
        else {
            continue;
        };
        if suffix.is_empty() {
            // The "folder" key Consul's UI creates.
            continue;
        }
        let key = entry_key(D::KIND, suffix);
        if D::validate_key(&key).is_err() {
            tracing::warn!(key = pair.key, "not a valid {} key; skipped", D::KIND);
            continue;
        }
        let doc = std::str::from_utf8(&pair.value)
            .map_err(|e| e.to_string())
            .and_then(D::decode);
        match doc {
            Ok(doc) => {
                entries.insert(
                    key,
                    Stored {
                        doc: Arc::new(doc),
                        version: pair.modify_index,
                    },
                );
            }
            Err(error) => {
                tracing::warn!(key = pair.key, error, "not a valid {}; skipped", D::KIND);
                if let Some(kept) = previous.get(&key) {
                    entries.insert(key, kept.clone());
                }
            }
        }
    }
    entries
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Namespaces, Policies, StoredDtab};
    use ecsmesh_dtab::Dtab;
    use ecsmesh_policy::ServicePolicy;

    fn pair(key: &str, value: &str, index: u64) -> KvPair {
        KvPair {
            key: key.to_owned(),
            value: value.as_bytes().to_vec(),
            flags: 0,
            create_index: index,
            modify_index: index,
            lock_index: 0,
            session: None,
        }
    }

    #[test]
    fn decoding_skips_what_is_not_a_namespace_or_a_dtab() {
        let pairs = [
            pair("ecsmesh/dtabs/", "", 1),
            pair("ecsmesh/dtabs/default", "/svc=>/#/consul/dc1", 5),
            pair("ecsmesh/dtabs/nested/x", "/a=>/b", 6),
            pair("ecsmesh/dtabs/.hidden", "/a=>/b", 7),
            pair("ecsmesh/dtabs/broken", "/svc=>", 8),
            pair("ecsmesh/dtabsx", "/a=>/b", 9),
        ];
        let ns = decode::<Dtab>("ecsmesh/dtabs", &pairs, &Namespaces::new());
        assert_eq!(ns.keys().collect::<Vec<_>>(), ["default"]);
        assert_eq!(ns["default"].version, 5);

        // A namespace that turns invalid keeps its last valid dtab.
        let previous: Namespaces = [(
            "broken".to_owned(),
            StoredDtab {
                doc: Arc::new(Dtab::read("/x=>/y").unwrap()),
                version: 3,
            },
        )]
        .into();
        let ns = decode::<Dtab>("ecsmesh/dtabs", &pairs, &previous);
        assert_eq!(ns["broken"].version, 3);
        assert_eq!(ns["broken"].doc.to_string(), "/x=>/y");
    }

    #[test]
    fn policies_are_kept_beside_the_dtabs_under_their_prefix() {
        assert_eq!(
            kind_prefix(Kind::Policy, "ecsmesh/dtabs"),
            "ecsmesh/policies"
        );
        assert_eq!(kind_prefix(Kind::Policy, "a/b/dtabs/"), "a/b/policies");
        assert_eq!(kind_prefix(Kind::Policy, "dtabs"), "dtabs-policies");
        assert_eq!(kind_prefix(Kind::Dtab, "/ecsmesh/dtabs/"), "ecsmesh/dtabs");
        let pairs = [
            pair("ecsmesh/policies/", "", 1),
            pair("ecsmesh/policies/svc", r#"{"zone_aware":false}"#, 4),
            pair(
                "ecsmesh/policies/svc/payments",
                r#"{"timeouts":{"total":"2s"}}"#,
                5,
            ),
            pair("ecsmesh/policies/svc//x", "{}", 6),
            pair(
                "ecsmesh/policies/svc/bad",
                r#"{"retries":{"max_attempts":99}}"#,
                7,
            ),
        ];
        let all: Policies = decode("ecsmesh/policies", &pairs, &Policies::new());
        assert_eq!(all.keys().collect::<Vec<_>>(), ["/svc", "/svc/payments"]);
        assert_eq!(
            all["/svc/payments"].doc.total_timeout,
            Some(std::time::Duration::from_secs(2))
        );
        assert_eq!(all["/svc"].version, 4);
        assert!(ServicePolicy::validate_key("/svc/payments").is_ok());
    }
}

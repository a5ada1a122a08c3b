//! The embedded store: one JSON file per document kind (`dtabs.json`,
//! `policies.json`), replaced atomically (write a temporary file, fsync it,
//! rename it over the old one, fsync the directory), so a crash at any
//! point leaves the old or the new content, never a mix. The store's
//! revision is kept in the file, so versions keep growing across restarts.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{Map, Value, json};
use tokio::sync::{Mutex, watch};

use super::{Document, Entries, Kind, StoreError, Stored, check_room};

const FORMAT: u64 = 1;

/// The file a kind is kept in.
pub fn file_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Dtab => "dtabs.json",
        Kind::Policy => "policies.json",
    }
}

/// Where a kind's entries are in the file: `namespaces` for dtabs (the
/// format's first field name, kept so existing files open).
fn entries_field(kind: Kind) -> &'static str {
    kind.plural()
}

#[derive(Debug)]
pub struct FileStore<D: Document> {
    path: PathBuf,
    /// Serialises writers; holds the last revision handed out.
    revision: Mutex<u64>,
    tx: watch::Sender<Arc<Entries<D>>>,
    _kind: PhantomData<D>,
}

impl<D: Document> FileStore<D> {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let path = dir.join(file_name(D::KIND));
        let io = |source| StoreError::Io {
            path: format!("{} {}", D::KIND.store_noun(), path.display()),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let (revision, entries) = match std::fs::read(&path) {
            Ok(bytes) => Self::decode(&path, &bytes)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (0, Entries::new()),
            Err(e) => return Err(io(e)),
        };
        tracing::info!(path = %path.display(), revision, entries = entries.len(), "{} opened", D::KIND.store_noun());
        Ok(Self {
            path,
            revision: Mutex::new(revision),
            tx: watch::Sender::new(Arc::new(entries)),
            _kind: PhantomData,
        })
    }

    fn decode(path: &Path, bytes: &[u8]) -> Result<(u64, Entries<D>), StoreError> {
        let corrupt = |reason: String| StoreError::Corrupt {
            path: format!("{} {}", D::KIND.store_noun(), path.display()),
            reason,
        };
        let disk: Value = serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))?;
        let format = disk.get("format").and_then(Value::as_u64);
        if format != Some(FORMAT) {
            return Err(corrupt(format!("unknown format {format:?}")));
        }
        let revision = disk
            .get("revision")
            .and_then(Value::as_u64)
            .ok_or_else(|| corrupt("no revision".to_owned()))?;
        let listed = match disk.get(entries_field(D::KIND)) {
            None => Map::new(),
            Some(Value::Object(m)) => m.clone(),
            Some(_) => {
                return Err(corrupt(format!(
                    "{} is not an object",
                    entries_field(D::KIND)
                )));
            }
        };
        let mut entries = Entries::new();
        for (key, entry) in listed {
            let text = entry.get(D::KIND.field()).and_then(Value::as_str);
            let version = entry.get("version").and_then(Value::as_u64);
            let (Some(text), Some(version)) = (text, version) else {
                return Err(corrupt(format!("{key}: no {} or version", D::KIND.field())));
            };
            let doc = D::decode(text).map_err(|e| corrupt(format!("{key}: {e}")))?;
            entries.insert(
                key,
                Stored {
                    doc: Arc::new(doc),
                    version,
                },
            );
        }
        Ok((revision, entries))
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<Entries<D>>> {
        self.tx.subscribe()
    }

    pub async fn create(&self, key: &str, doc: D, max: usize) -> Result<Stored<D>, StoreError> {
        // Checked under the writers' lock, so concurrent creates cannot
        // pass the limit together.
        self.put(key, doc, |all| match all.get(key) {
            Some(_) => Err(StoreError::already_exists::<D>(key)),
            None => check_room(all, key, max),
        })
        .await
    }

    pub async fn update(&self, key: &str, doc: D, expected: u64) -> Result<Stored<D>, StoreError> {
        self.put(key, doc, |all| {
            check_version::<D>(key, all.get(key), Some(expected))
        })
        .await
    }

    pub async fn delete(&self, key: &str, expected: Option<u64>) -> Result<(), StoreError> {
        let mut revision = self.revision.lock().await;
        let current = self.tx.borrow().clone();
        check_version::<D>(key, current.get(key), expected)?;
        let mut next = Entries::clone(&current);
        next.remove(key);
        self.commit(&mut revision, next).await
    }

    /// Stores `doc` under `key` if `check` accepts the current entries.
    async fn put(
        &self,
        key: &str,
        doc: D,
        check: impl FnOnce(&Entries<D>) -> Result<(), StoreError>,
    ) -> Result<Stored<D>, StoreError> {
        let mut revision = self.revision.lock().await;
        let current = self.tx.borrow().clone();
        check(&current)?;
        let stored = Stored {
            doc: Arc::new(doc),
            version: *revision + 1,
        };
        let mut next = Entries::clone(&current);
        next.insert(key.to_owned(), stored.clone());
        self.commit(&mut revision, next).await?;
        Ok(stored)
    }

    /// Writes `next` as the next revision; readers see it only once it is
    /// on disk, and if writing fails nothing changes.
    async fn commit(&self, revision: &mut u64, next: Entries<D>) -> Result<(), StoreError> {
        let next_revision = *revision + 1;
        let bytes = encode(next_revision, &next);
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || replace_file::<D>(&path, &bytes))
            .await
            .map_err(|e| StoreError::Io {
                path: format!("{} {}", D::KIND.store_noun(), self.path.display()),
                source: std::io::Error::other(e),
            })??;
        *revision = next_revision;
        self.tx.send_replace(Arc::new(next));
        Ok(())
    }
}

/// The compare-and-set rule: the entry must exist and, when a version is
/// expected, be at that version.
fn check_version<D: Document>(
    key: &str,
    current: Option<&Stored<D>>,
    expected: Option<u64>,
) -> Result<(), StoreError> {
    match (current, expected) {
        (None, _) => Err(StoreError::not_found::<D>(key)),
        (Some(c), Some(expected)) if c.version != expected => {
            Err(StoreError::mismatch::<D>(key, expected, c.version))
        }
        (Some(_), _) => Ok(()),
    }
}

fn encode<D: Document>(revision: u64, entries: &Entries<D>) -> Vec<u8> {
    let listed: BTreeMap<&str, Value> = entries
        .iter()
        .map(|(key, s)| {
            (
                key.as_str(),
                json!({ D::KIND.field(): s.doc.encode(), "version": s.version }),
            )
        })
        .collect();
    let disk = json!({
        "format": FORMAT,
        "revision": revision,
        entries_field(D::KIND): listed,
    });
    // Serialising plain strings and integers cannot fail.
    serde_json::to_vec_pretty(&disk).unwrap_or_default()
}

/// Atomically replaces `path` with `bytes`.
fn replace_file<D: Document>(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let io = |source| StoreError::Io {
        path: format!("{} {}", D::KIND.store_noun(), path.display()),
        source,
    };
    let tmp = path.with_extension("json.tmp");
    let mut f = std::fs::File::create(&tmp).map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(io)?;
    if let Some(dir) = path.parent() {
        // Makes the rename itself durable.
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ecsmesh_dtab::Dtab;
    use ecsmesh_policy::ServicePolicy;

    type FileStore = super::FileStore<Dtab>;

    fn dtab(s: &str) -> Dtab {
        Dtab::read(s).unwrap()
    }

    #[tokio::test]
    async fn create_update_delete_with_cas() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(dir.path()).unwrap();
        let v1 = store
            .create("default", dtab("/a=>/b"), usize::MAX)
            .await
            .unwrap();
        assert_eq!(v1.version, 1);
        assert!(matches!(
            store.create("default", dtab("/a=>/c"), usize::MAX).await,
            Err(StoreError::AlreadyExists { .. })
        ));
        let err = store
            .update("default", dtab("/a=>/c"), 7)
            .await
            .unwrap_err();
        assert!(matches!(
            err,
            StoreError::VersionMismatch {
                actual: 1,
                expected: 7,
                ..
            }
        ));
        assert_eq!(
            store.subscribe().borrow()["default"].doc.to_string(),
            "/a=>/b"
        );
        let v2 = store.update("default", dtab("/a=>/c"), 1).await.unwrap();
        assert_eq!(v2.version, 2);
        assert!(store.delete("default", Some(1)).await.is_err());
        store.delete("default", Some(2)).await.unwrap();
        assert!(store.subscribe().borrow().is_empty());
    }

    #[tokio::test]
    async fn versions_survive_a_restart_and_keep_growing() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = FileStore::open(dir.path()).unwrap();
            store.create("a", dtab("/x=>/y"), usize::MAX).await.unwrap();
            store.create("b", dtab("/x=>/z"), usize::MAX).await.unwrap();
            store.delete("b", None).await.unwrap();
        }
        let store = FileStore::open(dir.path()).unwrap();
        let ns = store.subscribe().borrow().clone();
        assert_eq!(ns.len(), 1);
        assert_eq!(ns["a"].version, 1);
        assert_eq!(ns["a"].doc.to_string(), "/x=>/y");
        let b = store.create("b", dtab("/q=>/r"), usize::MAX).await.unwrap();
        assert_eq!(b.version, 4, "revision 3 was the delete");
    }

    #[tokio::test]
    async fn creates_stop_at_the_namespace_limit() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(dir.path()).unwrap();
        store.create("a", dtab("/x=>/y"), 2).await.unwrap();
        store.create("b", dtab("/x=>/y"), 2).await.unwrap();
        let err = store.create("c", dtab("/x=>/y"), 2).await.unwrap_err();
        assert!(matches!(err, StoreError::TooMany { limit: 2, .. }), "{err}");
        assert_eq!(store.subscribe().borrow().len(), 2, "nothing stored");
        // Updates of stored namespaces still go through at the limit.
        store.update("a", dtab("/x=>/z"), 1).await.unwrap();
        // A delete makes room.
        store.delete("b", None).await.unwrap();
        store.create("c", dtab("/x=>/y"), 2).await.unwrap();
    }

    #[test]
    fn a_corrupt_file_is_refused_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("dtabs.json"), b"{\"format\":1,").unwrap();
        let err = FileStore::open(dir.path()).unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains("dtab store"), "{err}");
        assert!(err.to_string().contains("dtabs.json"), "{err}");
    }

    #[tokio::test]
    async fn policies_live_in_their_own_file_beside_the_dtabs() {
        let dir = tempfile::tempdir().unwrap();
        let dtabs = FileStore::open(dir.path()).unwrap();
        dtabs.create("default", dtab("/a=>/b"), 8).await.unwrap();
        let policy =
            ServicePolicy::parse("timeouts: {total: 2s}\nretries: {max_attempts: 3}").unwrap();
        {
            let policies = super::FileStore::<ServicePolicy>::open(dir.path()).unwrap();
            let v = policies
                .create("/svc/payments", policy.clone(), 8)
                .await
                .unwrap();
            assert_eq!(v.version, 1);
            let err = policies
                .update("/svc/payments", policy.clone(), 9)
                .await
                .unwrap_err();
            assert_eq!(
                err.to_string(),
                "policy for \"/svc/payments\" is at version 1, not the expected 9"
            );
        }
        let policies = super::FileStore::<ServicePolicy>::open(dir.path()).unwrap();
        let all = policies.subscribe().borrow().clone();
        assert_eq!(*all["/svc/payments"].doc, policy);
        let on_disk: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("policies.json")).unwrap())
                .unwrap();
        assert_eq!(
            on_disk["policies"]["/svc/payments"]["policy"],
            policy.canonical()
        );
        // The dtab file is untouched by policy writes and keeps its format.
        let dtab_file: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("dtabs.json")).unwrap()).unwrap();
        assert_eq!(dtab_file["namespaces"]["default"]["dtab"], "/a=>/b");
        assert_eq!(
            FileStore::open(dir.path())
                .unwrap()
                .subscribe()
                .borrow()
                .len(),
            1
        );
    }
}

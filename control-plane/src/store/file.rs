//! The embedded store: one JSON file, replaced atomically (write a
//! temporary file, fsync it, rename it over the old one, fsync the
//! directory), so a crash at any point leaves the old or the new content,
//! never a mix. The store's revision is kept in the file, so versions keep
//! growing across restarts.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ecsmesh_dtab::Dtab;
use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex, watch};

use super::{Namespaces, StoreError, StoredDtab, check_room};

const FILE_NAME: &str = "dtabs.json";
const FORMAT: u32 = 1;

#[derive(Serialize, Deserialize)]
struct OnDisk {
    format: u32,
    /// The last version handed out.
    revision: u64,
    namespaces: BTreeMap<String, OnDiskDtab>,
}

#[derive(Serialize, Deserialize)]
struct OnDiskDtab {
    dtab: String,
    version: u64,
}

#[derive(Debug)]
pub struct FileStore {
    path: PathBuf,
    /// Serialises writers; holds the last revision handed out.
    revision: Mutex<u64>,
    tx: watch::Sender<Arc<Namespaces>>,
}

impl FileStore {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let path = dir.join(FILE_NAME);
        let io = |source| StoreError::Io {
            path: path.display().to_string(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let (revision, namespaces) = match std::fs::read(&path) {
            Ok(bytes) => Self::decode(&path, &bytes)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (0, Namespaces::new()),
            Err(e) => return Err(io(e)),
        };
        tracing::info!(path = %path.display(), revision, namespaces = namespaces.len(), "dtab store opened");
        Ok(Self {
            path,
            revision: Mutex::new(revision),
            tx: watch::Sender::new(Arc::new(namespaces)),
        })
    }

    fn decode(path: &Path, bytes: &[u8]) -> Result<(u64, Namespaces), StoreError> {
        let corrupt = |reason: String| StoreError::Corrupt {
            path: path.display().to_string(),
            reason,
        };
        let disk: OnDisk = serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))?;
        if disk.format != FORMAT {
            return Err(corrupt(format!("unknown format {}", disk.format)));
        }
        let mut namespaces = Namespaces::new();
        for (ns, d) in disk.namespaces {
            let dtab = Dtab::read(&d.dtab).map_err(|e| corrupt(format!("namespace {ns}: {e}")))?;
            namespaces.insert(
                ns,
                StoredDtab {
                    dtab: Arc::new(dtab),
                    version: d.version,
                },
            );
        }
        Ok((disk.revision, namespaces))
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<Namespaces>> {
        self.tx.subscribe()
    }

    pub async fn create(
        &self,
        namespace: &str,
        dtab: Dtab,
        max_namespaces: usize,
    ) -> Result<StoredDtab, StoreError> {
        // Checked under the writers' lock, so concurrent creates cannot
        // pass the limit together.
        self.put(namespace, dtab, |all| match all.get(namespace) {
            Some(_) => Err(StoreError::AlreadyExists(namespace.to_owned())),
            None => check_room(all, namespace, max_namespaces),
        })
        .await
    }

    pub async fn update(
        &self,
        namespace: &str,
        dtab: Dtab,
        expected: u64,
    ) -> Result<StoredDtab, StoreError> {
        self.put(namespace, dtab, |all| {
            check_version(namespace, all.get(namespace), Some(expected))
        })
        .await
    }

    pub async fn delete(&self, namespace: &str, expected: Option<u64>) -> Result<(), StoreError> {
        let mut revision = self.revision.lock().await;
        let current = self.tx.borrow().clone();
        check_version(namespace, current.get(namespace), expected)?;
        let mut next = Namespaces::clone(&current);
        next.remove(namespace);
        self.commit(&mut revision, next).await
    }

    /// Stores `dtab` under `namespace` if `check` accepts the current
    /// namespaces.
    async fn put(
        &self,
        namespace: &str,
        dtab: Dtab,
        check: impl FnOnce(&Namespaces) -> Result<(), StoreError>,
    ) -> Result<StoredDtab, StoreError> {
        let mut revision = self.revision.lock().await;
        let current = self.tx.borrow().clone();
        check(&current)?;
        let stored = StoredDtab {
            dtab: Arc::new(dtab),
            version: *revision + 1,
        };
        let mut next = Namespaces::clone(&current);
        next.insert(namespace.to_owned(), stored.clone());
        self.commit(&mut revision, next).await?;
        Ok(stored)
    }

    /// Writes `next` as the next revision; readers see it only once it is
    /// on disk, and if writing fails nothing changes.
    async fn commit(&self, revision: &mut u64, next: Namespaces) -> Result<(), StoreError> {
        let next_revision = *revision + 1;
        let bytes = encode(next_revision, &next);
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || replace_file(&path, &bytes))
            .await
            .map_err(|e| StoreError::Io {
                path: self.path.display().to_string(),
                source: std::io::Error::other(e),
            })??;
        *revision = next_revision;
        self.tx.send_replace(Arc::new(next));
        Ok(())
    }
}

/// The compare-and-set rule: the namespace must exist and, when a version
/// is expected, be at that version.
fn check_version(
    namespace: &str,
    current: Option<&StoredDtab>,
    expected: Option<u64>,
) -> Result<(), StoreError> {
    match (current, expected) {
        (None, _) => Err(StoreError::NotFound(namespace.to_owned())),
        (Some(c), Some(expected)) if c.version != expected => Err(StoreError::VersionMismatch {
            namespace: namespace.to_owned(),
            expected,
            actual: c.version,
        }),
        (Some(_), _) => Ok(()),
    }
}

fn encode(revision: u64, namespaces: &Namespaces) -> Vec<u8> {
    let disk = OnDisk {
        format: FORMAT,
        revision,
        namespaces: namespaces
            .iter()
            .map(|(ns, s)| {
                (
                    ns.clone(),
                    OnDiskDtab {
                        dtab: s.dtab.to_string(),
                        version: s.version,
                    },
                )
            })
            .collect(),
    };
    // Serialising plain strings and integers cannot fail.
    serde_json::to_vec_pretty(&disk).unwrap_or_default()
}

/// Atomically replaces `path` with `bytes`.
fn replace_file(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let io = |source| StoreError::Io {
        path: path.display().to_string(),
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
            Err(StoreError::AlreadyExists(_))
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
            store.subscribe().borrow()["default"].dtab.to_string(),
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
        assert_eq!(ns["a"].dtab.to_string(), "/x=>/y");
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
        assert!(
            matches!(err, StoreError::TooManyNamespaces { limit: 2 }),
            "{err}"
        );
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
        std::fs::write(dir.path().join(FILE_NAME), b"{\"format\":1,").unwrap();
        let err = FileStore::open(dir.path()).unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains(FILE_NAME));
    }
}

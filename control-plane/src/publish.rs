//! The published mesh state: one versioned snapshot at a time, which every
//! agent stream follows. Publishing an identical state is a no-op, so
//! identical recomputes produce no push.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use ecsmesh_proto::v1 as pb;
use ecsmesh_state::MeshState;
use tokio::sync::watch;

/// One version of the mesh state.
#[derive(Debug)]
pub struct Published {
    pub version: u64,
    pub state: Arc<MeshState>,
    /// When it was published (for push-latency metrics).
    pub at: Instant,
}

/// Holds the current version and hands it to subscribers.
#[derive(Debug)]
pub struct Publisher {
    epoch: Arc<str>,
    tx: watch::Sender<Arc<Published>>,
    deltas: DeltaCache,
}

impl Default for Publisher {
    fn default() -> Self {
        Self::new()
    }
}

impl Publisher {
    /// Starts at version 0 with an empty state. The epoch tells this run's
    /// versions apart from another run's or another replica's.
    pub fn new() -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let epoch: Arc<str> = format!("{nanos:x}-{:04x}", fastrand::u16(..)).into();
        let (tx, _) = watch::channel(Arc::new(Published {
            version: 0,
            state: Arc::new(MeshState::default()),
            at: Instant::now(),
        }));
        Self {
            epoch,
            tx,
            deltas: DeltaCache::default(),
        }
    }

    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    pub fn current(&self) -> Arc<Published> {
        self.tx.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<Published>> {
        self.tx.subscribe()
    }

    /// Publishes `state` as the next version, unless it equals the current
    /// one. Returns the new version if there was one.
    pub fn publish(&self, state: MeshState) -> Option<u64> {
        let mut published = None;
        self.tx.send_if_modified(|current| {
            if *current.state == state {
                return false;
            }
            let version = current.version + 1;
            *current = Arc::new(Published {
                version,
                state: Arc::new(state),
                at: Instant::now(),
            });
            published = Some(version);
            true
        });
        published
    }

    /// The delta from `from` to `to`, computed once however many agents ask.
    pub fn delta(&self, from: &Published, to: &Published) -> Arc<pb::Delta> {
        self.deltas.get_or_compute(from, to, &self.epoch)
    }

    /// The complete state as a snapshot message.
    pub fn snapshot(&self, p: &Published) -> pb::Snapshot {
        p.state.to_snapshot(p.version, &self.epoch)
    }
}

/// Deltas by (from, to) version. Most agents sit at the same version, so a
/// push computes one diff, not one per agent.
#[derive(Debug, Default)]
struct DeltaCache(Mutex<HashMap<(u64, u64), Arc<pb::Delta>>>);

const DELTA_CACHE_ENTRIES: usize = 64;

impl DeltaCache {
    fn get_or_compute(&self, from: &Published, to: &Published, epoch: &str) -> Arc<pb::Delta> {
        let key = (from.version, to.version);
        if let Some(d) = self
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
        {
            return Arc::clone(d);
        }
        let mut delta = from.state.diff(&to.state);
        delta.version = to.version;
        delta.base_version = from.version;
        epoch.clone_into(&mut delta.epoch);
        let delta = Arc::new(delta);
        let mut cache = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if cache.len() >= DELTA_CACHE_ENTRIES {
            // Old versions are rarely asked for again; start over.
            cache.clear();
        }
        cache.insert(key, Arc::clone(&delta));
        delta
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ecsmesh_dtab::Dtab;

    fn state(dtab: &str) -> MeshState {
        MeshState {
            dtabs: [("default".to_owned(), Arc::new(Dtab::read(dtab).unwrap()))].into(),
            sets: std::collections::BTreeMap::default(),
        }
    }

    #[test]
    fn identical_states_are_not_republished() {
        let p = Publisher::new();
        assert_eq!(p.publish(state("/a=>/b")), Some(1));
        assert_eq!(p.publish(state("/a=>/b")), None);
        assert_eq!(p.publish(state("/a=>/c")), Some(2));
        assert_eq!(p.current().version, 2);
    }

    #[test]
    fn deltas_are_cached_and_versioned() {
        let p = Publisher::new();
        let v0 = p.current();
        p.publish(state("/a=>/b"));
        let v1 = p.current();
        let d = p.delta(&v0, &v1);
        assert_eq!((d.base_version, d.version), (0, 1));
        assert_eq!(d.epoch, p.epoch());
        assert!(Arc::ptr_eq(&d, &p.delta(&v0, &v1)));
    }
}

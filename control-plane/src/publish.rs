//! The published mesh state: one versioned snapshot at a time, which every
//! agent stream follows. Publishing an identical state is a no-op, so
//! identical recomputes produce no push.
//!
//! What the streams send is encoded here, once per version (a snapshot) or
//! per pair of versions (a delta), however many agents take it: at 10,000
//! endpoints a snapshot costs ~30 ms of CPU to build and encode, and a
//! thousand agents connecting at once would otherwise pay that a thousand
//! times.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use ecsmesh_proto::v1 as pb;
use ecsmesh_state::MeshState;
use prost::Message as _;
use tokio::sync::{OnceCell, watch};

/// One version of the mesh state.
#[derive(Debug)]
pub struct Published {
    pub version: u64,
    pub state: Arc<MeshState>,
    /// When it was published (for push-latency metrics).
    pub at: Instant,
    /// The encoded `ControllerMessage`s that carry this version as a
    /// snapshot, made when the first agent needs them (the others wait
    /// without holding a runtime thread).
    snapshot_messages: OnceCell<Arc<[Bytes]>>,
}

impl Published {
    fn new(version: u64, state: Arc<MeshState>) -> Self {
        Self {
            version,
            state,
            at: Instant::now(),
            snapshot_messages: OnceCell::new(),
        }
    }
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
        let (tx, _) = watch::channel(Arc::new(Published::new(0, Arc::new(MeshState::default()))));
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
            *current = Arc::new(Published::new(version, Arc::new(state)));
            published = Some(version);
            true
        });
        published
    }

    /// The encoded `ControllerMessage` that takes an agent from `from` to
    /// `to`: a delta, computed and encoded once however many agents ask.
    pub fn delta_message(&self, from: &Published, to: &Published) -> Bytes {
        self.deltas.get_or_compute(from, to, &self.epoch)
    }

    /// The encoded `ControllerMessage`s that carry `p` as a snapshot: one
    /// `Snapshot`, or `SnapshotPart`s when it is larger than
    /// [`ecsmesh_proto::SNAPSHOT_PART_BYTES`]. Made once per version.
    pub async fn snapshot_messages(&self, p: &Published) -> Arc<[Bytes]> {
        let messages = p
            .snapshot_messages
            .get_or_init(|| async {
                let snapshot = p.state.to_snapshot(p.version, &self.epoch);
                ecsmesh_proto::split_snapshot(snapshot, ecsmesh_proto::SNAPSHOT_PART_BYTES)
                    .iter()
                    .map(|m| Bytes::from(m.encode_to_vec()))
                    .collect()
            })
            .await;
        Arc::clone(messages)
    }
}

/// Encoded deltas by (from, to) version. Most agents sit at the same
/// version, so a push computes and encodes one diff, not one per agent:
/// agents that ask while it is being computed wait for that one.
#[derive(Debug, Default)]
struct DeltaCache(Mutex<HashMap<(u64, u64), Arc<EncodedOnce>>>);

/// One encoded message, made by the first to ask.
type EncodedOnce = std::sync::OnceLock<Bytes>;

const DELTA_CACHE_ENTRIES: usize = 64;

impl DeltaCache {
    fn get_or_compute(&self, from: &Published, to: &Published, epoch: &str) -> Bytes {
        let key = (from.version, to.version);
        let cell = {
            let mut cache = self.0.lock().unwrap_or_else(PoisonError::into_inner);
            if cache.len() >= DELTA_CACHE_ENTRIES && !cache.contains_key(&key) {
                // Old versions are rarely asked for again; start over.
                cache.clear();
            }
            Arc::clone(cache.entry(key).or_default())
        };
        // Computed outside the map's lock: other pairs need not wait.
        cell.get_or_init(|| {
            let mut delta = from.state.diff(&to.state);
            delta.version = to.version;
            delta.base_version = from.version;
            epoch.clone_into(&mut delta.epoch);
            Bytes::from(
                pb::ControllerMessage {
                    kind: Some(pb::controller_message::Kind::Delta(delta)),
                }
                .encode_to_vec(),
            )
        })
        .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ecsmesh_dtab::Dtab;

    fn state(dtab: &str) -> MeshState {
        MeshState {
            dtabs: [("default".to_owned(), Arc::new(Dtab::read(dtab).unwrap()))].into(),
            ..MeshState::default()
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

    fn decode(bytes: &[u8]) -> pb::controller_message::Kind {
        pb::ControllerMessage::decode(bytes).unwrap().kind.unwrap()
    }

    #[test]
    fn deltas_are_cached_and_versioned() {
        let p = Publisher::new();
        let v0 = p.current();
        p.publish(state("/a=>/b"));
        let v1 = p.current();
        let m = p.delta_message(&v0, &v1);
        let pb::controller_message::Kind::Delta(d) = decode(&m) else {
            panic!("expected a delta")
        };
        assert_eq!((d.base_version, d.version), (0, 1));
        assert_eq!(d.epoch, p.epoch());
        // The same bytes, not a second encoding.
        assert_eq!(m.as_ptr(), p.delta_message(&v0, &v1).as_ptr());
    }

    #[tokio::test]
    async fn snapshots_are_encoded_once_per_version_and_split_when_large() {
        let p = Publisher::new();
        p.publish(state("/a=>/b"));
        let v1 = p.current();
        let small = p.snapshot_messages(&v1).await;
        assert_eq!(small.len(), 1);
        let pb::controller_message::Kind::Snapshot(s) = decode(&small[0]) else {
            panic!("expected a snapshot")
        };
        assert_eq!((s.version, s.epoch.as_str()), (1, p.epoch()));
        assert!(Arc::ptr_eq(&small, &p.snapshot_messages(&v1).await));

        // ~3,000 endpoints: more than one part.
        let mut large = state("/a=>/b");
        for set in 0..30 {
            let endpoints: ecsmesh_state::EndpointSet = (0..100u16)
                .map(|i| {
                    ecsmesh_state::Endpoint::new(std::net::SocketAddr::from((
                        [10, 0, set, 1],
                        1000 + i,
                    )))
                    .with_meta(
                        "task_arn",
                        format!("arn:aws:ecs:us-east-1:1:task/c/{set}-{i}"),
                    )
                })
                .collect();
            large.sets.insert(
                ecsmesh_dtab::Path::read(&format!("/#/ecs/c/s{set}")).unwrap(),
                Arc::new(endpoints),
            );
        }
        p.publish(large);
        let v2 = p.current();
        let parts = p.snapshot_messages(&v2).await;
        assert!(parts.len() > 1, "{} parts", parts.len());
        let mut assembler = ecsmesh_proto::SnapshotAssembler::default();
        let mut whole = None;
        for m in parts.iter() {
            let pb::controller_message::Kind::SnapshotPart(part) = decode(m) else {
                panic!("expected a part")
            };
            whole = assembler.push(part).unwrap();
        }
        assert_eq!(whole, Some(v2.state.to_snapshot(2, p.epoch())));
    }
}

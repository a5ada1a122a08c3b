//! Sources observe the world (ECS, Consul) and report the endpoint sets
//! they see. Each source replaces its whole view at once (like
//! kube-runtime's reflector swapping its store at the end of a relist), so
//! the reconciler never sees half a resync.

pub mod budget;
pub mod consul;
pub mod ecs;
pub mod ecs_events;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use ecsmesh_dtab::Path;
use ecsmesh_state::EndpointSet;
use tokio::sync::watch;

/// One source's view: endpoint sets by concrete name.
pub type SourceSets = BTreeMap<Path, Arc<EndpointSet>>;

/// Every source's latest view.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ObservedState {
    /// Sources that must report before the mesh is published, so a
    /// restarted controller never pushes an empty mesh to agents.
    pub expected: BTreeSet<String>,
    pub by_source: BTreeMap<String, Arc<SourceSets>>,
}

impl ObservedState {
    /// Whether every expected source has reported at least once.
    pub fn ready(&self) -> bool {
        self.expected.iter().all(|s| self.by_source.contains_key(s))
    }

    /// The union of every source's sets.
    pub fn merged(&self) -> BTreeMap<Path, Arc<EndpointSet>> {
        let mut all = BTreeMap::new();
        for sets in self.by_source.values() {
            for (name, set) in sets.iter() {
                all.insert(name.clone(), Arc::clone(set));
            }
        }
        all
    }
}

/// Where sources report to and the reconciler reads from.
#[derive(Debug)]
pub struct Observed {
    tx: watch::Sender<ObservedState>,
}

impl Observed {
    /// `expected` names the sources that must report before anything is published.
    pub fn new(expected: impl IntoIterator<Item = String>) -> Self {
        Self {
            tx: watch::Sender::new(ObservedState {
                expected: expected.into_iter().collect(),
                by_source: BTreeMap::new(),
            }),
        }
    }

    /// Replaces `source`'s view. Wakes the reconciler only on a change.
    pub fn replace(&self, source: &str, sets: SourceSets) {
        self.tx.send_if_modified(|state| {
            if state.by_source.get(source).is_some_and(|old| **old == sets) {
                return false;
            }
            state.by_source.insert(source.to_owned(), Arc::new(sets));
            true
        });
    }

    pub fn subscribe(&self) -> watch::Receiver<ObservedState> {
        self.tx.subscribe()
    }
}

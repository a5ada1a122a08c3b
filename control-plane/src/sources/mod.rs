//! Sources observe the world (ECS, Consul) and report the endpoint sets
//! they see. Each source replaces its whole view at once (like
//! kube-runtime's reflector swapping its store at the end of a relist), so
//! the reconciler never sees half a resync.

pub mod budget;
pub mod consul;
pub mod ecs;
pub mod ecs_events;
pub mod leader;

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

    /// The union of every source's sets. An expected source's set wins
    /// over a leftover one of the same name (see [`Observed::expect`]).
    pub fn merged(&self) -> BTreeMap<Path, Arc<EndpointSet>> {
        let mut all = BTreeMap::new();
        let (expected, leftover): (Vec<_>, Vec<_>) = self
            .by_source
            .iter()
            .partition(|(source, _)| self.expected.contains(*source));
        for (_, sets) in leftover.into_iter().chain(expected) {
            for (name, set) in sets.iter() {
                all.insert(name.clone(), Arc::clone(set));
            }
        }
        all
    }

    /// Once every expected source has reported, the views of sources no
    /// longer expected go.
    fn drop_leftovers(&mut self) -> bool {
        if !self.ready() {
            return false;
        }
        let before = self.by_source.len();
        let expected = &self.expected;
        self.by_source.retain(|source, _| expected.contains(source));
        self.by_source.len() != before
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
            state.drop_leftovers();
            true
        });
    }

    /// Changes which sources are expected (a replica that starts or stops
    /// leading: its own sources, or the leader's stream). The views of the
    /// others stay until the expected ones have all reported, so the mesh
    /// never loses endpoints during the handover.
    pub fn expect(&self, expected: impl IntoIterator<Item = String>) {
        let expected: BTreeSet<String> = expected.into_iter().collect();
        self.tx.send_if_modified(|state| {
            if state.expected == expected {
                return false;
            }
            state.expected = expected;
            state.drop_leftovers();
            true
        });
    }

    pub fn subscribe(&self) -> watch::Receiver<ObservedState> {
        self.tx.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(name: &str, port: u16) -> SourceSets {
        let set: EndpointSet = [ecsmesh_state::Endpoint::new(std::net::SocketAddr::from((
            [10, 0, 0, 1],
            port,
        )))]
        .into_iter()
        .collect();
        [(Path::read(name).unwrap(), Arc::new(set))].into()
    }

    #[test]
    fn a_handover_keeps_the_old_views_until_the_new_sources_report() {
        let observed = Observed::new(["ecs:a".to_owned()]);
        let rx = observed.subscribe();
        observed.replace("ecs:a", view("/#/ecs/a/web", 1));
        // Following a leader now: its view is expected, ours stays meanwhile.
        observed.expect(["leader".to_owned()]);
        assert!(!rx.borrow().ready());
        assert_eq!(rx.borrow().merged().len(), 1);
        // The leader's view of the same name wins, and ours goes.
        observed.replace("leader", view("/#/ecs/a/web", 2));
        let state = rx.borrow().clone();
        assert!(state.ready());
        assert_eq!(state.by_source.keys().collect::<Vec<_>>(), ["leader"]);
        let merged = state.merged();
        let port = merged
            .values()
            .next()
            .unwrap()
            .iter()
            .next()
            .unwrap()
            .addr
            .port();
        assert_eq!(port, 2);
        // Leading again: the leader's view bridges until ours is in.
        observed.expect(["ecs:a".to_owned()]);
        assert_eq!(rx.borrow().merged().len(), 1);
        observed.replace("ecs:a", view("/#/ecs/a/api", 3));
        let names: Vec<String> = rx
            .borrow()
            .merged()
            .keys()
            .map(ToString::to_string)
            .collect();
        assert_eq!(names, ["/#/ecs/a/api"]);
    }
}

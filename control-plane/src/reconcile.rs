//! The reconcile loop: observed endpoint sets + stored dtabs + configured
//! base dtabs + stored service policies → the desired mesh state → the
//! publisher. Level-triggered:
//! every run computes the whole state from its inputs, and the publisher
//! drops runs that change nothing.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ecsmesh_dtab::{Dtab, Path};
use ecsmesh_policy::{PolicySet, Versioned};
use ecsmesh_state::MeshState;
use tokio::sync::watch;

use crate::metrics::Metrics;
use crate::publish::Publisher;
use crate::sources::ObservedState;
use crate::store::{Namespaces, Policies};

/// How long the inputs must be quiet before a recompute, so a burst of
/// changes (a deployment replacing ten tasks) makes one push.
pub const DEBOUNCE: Duration = Duration::from_millis(50);

/// Each namespace's base dtab, which stored overrides are appended to.
#[derive(Clone, Debug, Default)]
pub struct BaseDtabs(pub BTreeMap<String, Arc<Dtab>>);

impl BaseDtabs {
    /// The dtab agents route `namespace` with: its base dtab followed by
    /// the stored one.
    pub fn effective(&self, namespace: &str, stored: Option<&Dtab>) -> Dtab {
        let base = self
            .0
            .get(namespace)
            .map(|d| Dtab::clone(d))
            .unwrap_or_default();
        match stored {
            Some(s) => base.concat(s),
            None => base,
        }
    }

    /// The namespaces that exist: configured ones and stored ones.
    pub fn desired_dtabs(&self, stored: &Namespaces) -> BTreeMap<String, Arc<Dtab>> {
        let mut dtabs: BTreeMap<String, Arc<Dtab>> = self
            .0
            .iter()
            .map(|(ns, d)| (ns.clone(), Arc::clone(d)))
            .collect();
        for (ns, s) in stored {
            dtabs.insert(ns.clone(), Arc::new(self.effective(ns, Some(&s.doc))));
        }
        dtabs
    }
}

/// The stored policies as agents match them, by prefix. Keys were checked
/// when stored, so none is skipped in practice.
pub fn policy_set(stored: &Policies) -> PolicySet {
    PolicySet::new(
        stored
            .iter()
            .filter_map(|(prefix, s)| {
                let prefix = Path::read(prefix).ok()?;
                Some((
                    prefix,
                    Versioned {
                        policy: Arc::clone(&s.doc),
                        version: s.version,
                    },
                ))
            })
            .collect(),
    )
}

/// Computes the desired state from its inputs.
pub fn desired_state(
    base: &BaseDtabs,
    stored: &Namespaces,
    policies: &Policies,
    observed: &ObservedState,
) -> MeshState {
    MeshState {
        dtabs: base.desired_dtabs(stored),
        sets: observed.merged(),
        policies: policy_set(policies),
    }
}

/// What operators stored, followed by the loop.
#[derive(Debug)]
pub struct StoredInputs {
    pub dtabs: watch::Receiver<Arc<Namespaces>>,
    pub policies: watch::Receiver<Arc<Policies>>,
}

/// Runs until every input closes.
pub async fn run(
    base: BaseDtabs,
    mut observed: watch::Receiver<ObservedState>,
    mut stored: StoredInputs,
    publisher: Arc<Publisher>,
    metrics: Arc<Metrics>,
) {
    loop {
        let started = Instant::now();
        let state = {
            let obs = observed.borrow_and_update();
            let ns = stored.dtabs.borrow_and_update().clone();
            let policies = stored.policies.borrow_and_update().clone();
            obs.ready()
                .then(|| desired_state(&base, &ns, &policies, &obs))
        };
        if let Some(state) = state {
            let endpoints = state.endpoint_count();
            if let Some(version) = publisher.publish(state) {
                tracing::info!(version, endpoints, "published mesh state");
            }
            metrics.observe_reconcile(started.elapsed(), publisher.current().version);
        } else {
            tracing::debug!("waiting for every source's first sync");
        }
        tokio::select! {
            r = observed.changed() => if r.is_err() { return },
            r = stored.dtabs.changed() => if r.is_err() { return },
            r = stored.policies.changed() => if r.is_err() { return },
        }
        tokio::time::sleep(DEBOUNCE).await;
    }
}

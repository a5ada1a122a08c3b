//! The leader lease as a Consul lock (the session-and-`?acquire` recipe):
//! the key holds `{"holder": …, "address": …}`, locked by the leader's
//! session. The leader renews its session; followers only read the key,
//! and create a session and try `?acquire` when the key has no lock.
//!
//! Consul decides when a silent leader is gone: its session is
//! invalidated at up to twice its TTL (Consul's floor is 10 s), and the
//! lock then waits out a 1 s lock delay. A hard-killed leader is therefore
//! replaced in up to ~21 s with the defaults (DynamoDB: 10–12 s); a
//! stopping one releases the lock and is replaced at the next look.

use std::sync::Arc;
use std::time::Duration;

use ecsmesh_consul::{Client, NewSession, QueryOptions, SessionBehavior};

use super::{Attempt, Holder, LeaseError, LeaseSettings};
use crate::metrics::Metrics;

/// Consul's smallest session TTL.
const MIN_SESSION_TTL: Duration = Duration::from_secs(10);
/// After a holder's session is invalidated, how long the lock stays free
/// of new holders (Consul's default is 15 s; the old leader has stopped
/// by then, or it keeps its sources running: see the module docs above).
const LOCK_DELAY: Duration = Duration::from_secs(1);

/// The lease at one key.
#[derive(Debug)]
pub struct ConsulLease {
    client: Client,
    key: String,
    settings: LeaseSettings,
    session: Option<String>,
    metrics: Arc<Metrics>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Value {
    holder: String,
    address: String,
}

/// The lease key beside a store prefix: `ecsmesh/dtabs` → `ecsmesh/leader`
/// (outside the dtabs' directory, so their watch never sees it).
pub fn lease_key(store_prefix: &str) -> String {
    match store_prefix.rsplit_once('/') {
        Some((parent, _)) => format!("{parent}/leader"),
        None => format!("{store_prefix}-leader"),
    }
}

impl ConsulLease {
    pub fn new(
        client: Client,
        key: String,
        settings: LeaseSettings,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            client,
            key,
            settings,
            session: None,
            metrics,
        }
    }

    fn error(&self, e: impl std::fmt::Display) -> LeaseError {
        LeaseError::Consul {
            key: self.key.clone(),
            detail: e.to_string(),
        }
    }

    fn count<T, E>(&self, operation: &'static str, r: &Result<T, E>) {
        self.metrics.api_call("consul", operation, r.is_ok());
    }

    fn value(&self) -> Vec<u8> {
        serde_json::to_vec(&Value {
            holder: self.settings.me.id.clone(),
            address: self.settings.me.address.clone(),
        })
        .unwrap_or_default()
    }

    pub(super) async fn try_acquire(&mut self) -> Result<Attempt, LeaseError> {
        let opts = QueryOptions {
            consistent: true,
            ..QueryOptions::default()
        };
        let read = self.client.kv_get(&self.key, &opts).await;
        self.count("kv_get", &read);
        let entry = read.map_err(|e| self.error(e))?.value;
        if let Some(e) = entry.filter(|e| e.session.is_some()) {
            if e.session == self.session {
                return Ok(Attempt::Acquired);
            }
            // Locked by a value that is not ours to read (written by hand):
            // nobody to follow; the lock holder's session decides.
            return Ok(
                serde_json::from_slice::<Value>(&e.value).map_or(Attempt::Contended, |v| {
                    Attempt::HeldBy(Holder {
                        id: v.holder,
                        address: v.address,
                    })
                }),
            );
        }
        let session = self.session().await?;
        let acquired = self
            .client
            .kv_acquire(&self.key, &self.value(), &session)
            .await;
        self.count("kv_acquire", &acquired);
        match acquired {
            Ok(true) => Ok(Attempt::Acquired),
            // Someone else was first, or the lock delay runs: next look,
            // with a new session (this one would expire unrenewed).
            Ok(false) => {
                self.session = None;
                let destroyed = self.client.session_destroy(&session).await;
                self.count("session_destroy", &destroyed);
                Ok(Attempt::Contended)
            }
            Err(e) => {
                // An invalidated session is refused: make a new one next time.
                self.session = None;
                Err(self.error(e))
            }
        }
    }

    /// This replica's session, created when missing.
    async fn session(&mut self) -> Result<String, LeaseError> {
        if let Some(id) = &self.session {
            return Ok(id.clone());
        }
        let mut new = NewSession::new(
            self.settings.ttl.max(MIN_SESSION_TTL),
            SessionBehavior::Release,
        );
        new.name = format!("ecsmesh-controller {}", self.settings.me.id);
        new.lock_delay = Some(LOCK_DELAY);
        let created = self.client.session_create(&new).await;
        self.count("session_create", &created);
        let id = created.map_err(|e| self.error(e))?;
        self.session = Some(id.clone());
        Ok(id)
    }

    pub(super) async fn renew(&mut self) -> Result<bool, LeaseError> {
        let Some(id) = self.session.clone() else {
            return Ok(false);
        };
        let renewed = self.client.session_renew(&id).await;
        self.count("session_renew", &renewed);
        if renewed.map_err(|e| self.error(e))?.is_some() {
            return Ok(true);
        }
        // Invalidated: its lock is gone with it.
        self.session = None;
        Ok(false)
    }

    pub(super) async fn release(&mut self) -> Result<(), LeaseError> {
        let Some(id) = self.session.take() else {
            return Ok(());
        };
        let released = self.client.kv_release(&self.key, &self.value(), &id).await;
        self.count("kv_release", &released);
        let destroyed = self.client.session_destroy(&id).await;
        self.count("session_destroy", &destroyed);
        released.map_err(|e| self.error(e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_lease_key_sits_beside_the_dtabs() {
        assert_eq!(super::lease_key("ecsmesh/dtabs"), "ecsmesh/leader");
        assert_eq!(super::lease_key("a/b/dtabs"), "a/b/leader");
        assert_eq!(super::lease_key("dtabs"), "dtabs-leader");
    }
}

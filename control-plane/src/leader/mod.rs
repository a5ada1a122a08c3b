//! Which replica watches ECS (issue #17). Controller replicas that share a
//! store (DynamoDB or Consul) elect one leader through a lease in that
//! store; only the leader runs the sources (ECS, EC2, the events queue,
//! Consul's catalog), so the API calls do not grow with the replicas. The
//! others follow the leader's mesh stream ([`crate::sources::leader`]) and
//! serve agents and the dtab API as before; dtab writes go through the
//! store's compare-and-set on any replica.
//!
//! The lease is a heartbeat: the holder renews it every
//! [`LeaseSettings::renew_interval`]; a replica that has seen the same
//! heartbeat for [`LeaseSettings::ttl`] of its own clock takes the lease
//! over with a conditional write (no clock is compared across machines).
//! A stopping leader releases it, so a rolling deploy hands over at once.
//!
//! Leadership here saves API calls; it does not guard correctness: two
//! leaders at once (a partition) compute the same endpoint sets from ECS
//! and cost twice the calls until one learns of the other. So a leader
//! that cannot reach the store keeps leading rather than leave the mesh
//! unwatched, and steps down only when the store says that another replica
//! holds the lease. Followers that cannot reach the store keep following
//! the leader they know.

pub mod consul;
pub mod dynamodb;

use std::time::{Duration, Instant};

use tokio::sync::{oneshot, watch};

use crate::metrics::Metrics;

/// This replica's part.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Role {
    /// Starting: the store has not answered yet.
    Candidate,
    Leader,
    /// Another replica holds the lease; its gRPC address.
    Follower {
        leader: Holder,
    },
}

impl Role {
    /// As `/leader` and the dashboard name it.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Candidate => "candidate",
            Self::Leader => "leader",
            Self::Follower { .. } => "follower",
        }
    }

    /// The leader, as far as this replica (`me`) knows.
    pub fn leader<'a>(&'a self, me: &'a Holder) -> Option<&'a Holder> {
        match self {
            Self::Candidate => None,
            Self::Leader => Some(me),
            Self::Follower { leader } => Some(leader),
        }
    }
}

/// A lease holder as the store records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holder {
    /// The holder's replica id.
    pub id: String,
    /// Where the other replicas reach its gRPC port (`host:port`).
    pub address: String,
}

/// The lease's parameters.
#[derive(Clone, Debug)]
pub struct LeaseSettings {
    /// This replica.
    pub me: Holder,
    /// A heartbeat unchanged this long means the holder is gone.
    pub ttl: Duration,
}

/// The lease unless configured otherwise: a dead leader is replaced in
/// 10 to 12 s (the goal is 15 s).
pub const DEFAULT_TTL: Duration = Duration::from_secs(10);

impl LeaseSettings {
    /// How often the holder renews: five heartbeats per TTL, so a few
    /// slow or failed writes do not lose the lease.
    pub fn renew_interval(&self) -> Duration {
        self.ttl / 5
    }

    /// How often the others look at the lease.
    pub fn check_interval(&self) -> Duration {
        (self.ttl / 10).clamp(Duration::from_millis(100), Duration::from_secs(1))
    }
}

/// What a lease store said.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Attempt {
    /// This replica holds the lease (took it, or already had it).
    Acquired,
    /// Another replica holds it.
    HeldBy(Holder),
    /// Another replica took it just now; who, the next look tells.
    Contended,
}

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("the leader lease in DynamoDB table {table}: {detail}")]
    Dynamo { table: String, detail: String },
    #[error("the leader lease at Consul key {key}: {detail}")]
    Consul { key: String, detail: String },
}

/// The lease in the configured store.
#[derive(Debug)]
pub enum Lease {
    Dynamo(dynamodb::DynamoLease),
    /// Boxed: the Consul client is large.
    Consul(Box<consul::ConsulLease>),
}

impl Lease {
    /// Takes the lease when it is free or its holder has stopped renewing.
    ///
    /// # Errors
    /// The store did not answer.
    pub async fn try_acquire(&mut self) -> Result<Attempt, LeaseError> {
        match self {
            Self::Dynamo(l) => l.try_acquire().await,
            Self::Consul(l) => l.try_acquire().await,
        }
    }

    /// Renews the held lease: `Ok(false)` when another replica holds it now.
    ///
    /// # Errors
    /// The store did not answer.
    pub async fn renew(&mut self) -> Result<bool, LeaseError> {
        match self {
            Self::Dynamo(l) => l.renew().await,
            Self::Consul(l) => l.renew().await,
        }
    }

    /// Gives the lease up (a stopping leader).
    ///
    /// # Errors
    /// The store did not answer.
    pub async fn release(&mut self) -> Result<(), LeaseError> {
        match self {
            Self::Dynamo(l) => l.release().await,
            Self::Consul(l) => l.release().await,
        }
    }
}

/// A running election: the role, and a way to stop that releases the lease.
#[derive(Debug)]
pub struct Election {
    pub role: watch::Receiver<Role>,
    stop: Option<oneshot::Sender<oneshot::Sender<()>>>,
}

impl Election {
    /// Starts electing; the role starts as [`Role::Candidate`].
    pub fn start(lease: Lease, settings: LeaseSettings, metrics: std::sync::Arc<Metrics>) -> Self {
        let (tx, role) = watch::channel(Role::Candidate);
        let (stop, stopped) = oneshot::channel();
        tokio::spawn(run(lease, settings, tx, stopped, metrics));
        Self {
            role,
            stop: Some(stop),
        }
    }

    /// Stops electing; a leader releases the lease first (waiting at most
    /// `within`), so another replica leads at its next look.
    pub async fn stop(&mut self, within: Duration) {
        let Some(stop) = self.stop.take() else {
            return;
        };
        let (done, released) = oneshot::channel();
        if stop.send(done).is_ok() {
            let _ = tokio::time::timeout(within, released).await;
        }
    }
}

async fn run(
    mut lease: Lease,
    settings: LeaseSettings,
    role: watch::Sender<Role>,
    mut stop: oneshot::Receiver<oneshot::Sender<()>>,
    metrics: std::sync::Arc<Metrics>,
) {
    let me = settings.me.id.clone();
    loop {
        let started = Instant::now();
        let leading = *role.borrow() == Role::Leader;
        let next = if leading {
            match lease.renew().await {
                Ok(true) => None,
                Ok(false) => {
                    tracing::warn!(replica = %me, "the leader lease is held by another replica now: following it");
                    Some(Role::Candidate)
                }
                Err(e) => {
                    // Kept: see the module docs.
                    tracing::warn!(replica = %me, error = %e, "cannot renew the leader lease; still leading");
                    None
                }
            }
        } else {
            match lease.try_acquire().await {
                Ok(Attempt::Acquired) => {
                    tracing::info!(replica = %me, "took the leader lease: watching ECS and Consul");
                    Some(Role::Leader)
                }
                Ok(Attempt::HeldBy(leader)) => Some(Role::Follower { leader }),
                Ok(Attempt::Contended) => None,
                Err(e) => {
                    tracing::warn!(replica = %me, error = %e, "cannot read the leader lease");
                    None
                }
            }
        };
        if let Some(next) = next {
            role.send_if_modified(|current| {
                if *current == next {
                    return false;
                }
                if let Role::Follower { leader } = &next {
                    tracing::info!(replica = %me, leader = %leader.id, address = %leader.address, "following the leader");
                }
                metrics.set_leader(next == Role::Leader);
                *current = next;
                true
            });
        }
        let wait = if *role.borrow() == Role::Leader {
            settings.renew_interval()
        } else {
            settings.check_interval()
        };
        tokio::select! {
            () = tokio::time::sleep(wait.saturating_sub(started.elapsed())) => {}
            done = &mut stop => {
                if *role.borrow() == Role::Leader {
                    match lease.release().await {
                        Ok(()) => tracing::info!(replica = %me, "released the leader lease"),
                        Err(e) => tracing::warn!(replica = %me, error = %e, "could not release the leader lease; it expires"),
                    }
                }
                role.send_replace(Role::Candidate);
                metrics.set_leader(false);
                if let Ok(done) = done {
                    let _ = done.send(());
                }
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_follow_the_ttl() {
        let s = LeaseSettings {
            me: Holder {
                id: "a".into(),
                address: "127.0.0.1:1".into(),
            },
            ttl: DEFAULT_TTL,
        };
        assert_eq!(s.renew_interval(), Duration::from_secs(2));
        assert_eq!(s.check_interval(), Duration::from_secs(1));
        let short = LeaseSettings {
            ttl: Duration::from_millis(500),
            ..s
        };
        assert_eq!(short.check_interval(), Duration::from_millis(100));
    }
}

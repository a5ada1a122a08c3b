//! A follower's only source: the leader's `Replication.Follow` stream
//! ([`crate::leader`], [`crate::grpc::replica`]). Its endpoint sets are
//! reported as the source [`SOURCE`], and the container instances it
//! carries replace the local listing agents are admitted by; the dtabs in
//! it are ignored (each replica reads the store itself).
//!
//! A broken stream keeps the last view (agents keep routing on it) and is
//! reopened every [`RETRY`]; the election notices a dead leader.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use ecsmesh_proto::v1 as pb;
use ecsmesh_state::MeshState;
use ecsmesh_tls::{ClientTls, HttpsConnector, ServerName};
use tonic::transport::{Channel, Endpoint};

use crate::admission::Instances;
use crate::metrics::Metrics;
use crate::sources::Observed;

/// The source name of the leader's view.
pub const SOURCE: &str = "leader";
/// Between attempts to (re)open the stream.
const RETRY: Duration = Duration::from_secs(1);

/// How a follower reaches and proves itself to the leader.
#[derive(Clone, Debug)]
pub struct FollowSettings {
    /// This replica's lease id (for the leader's log).
    pub replica_id: String,
    /// The mesh CA and this replica's certificate, and the name the leader's
    /// certificate carries (the replicas share one): `https` when set.
    pub tls: Option<(ClientTls, ServerName<'static>)>,
    /// The admin token, sent as a bearer token.
    pub token: Option<Arc<str>>,
}

#[derive(Debug, thiserror::Error)]
enum FollowError {
    #[error("connecting: {0}")]
    Connect(#[from] tonic::transport::Error),
    #[error("{0}")]
    Status(#[from] tonic::Status),
    #[error("the leader sent an unusable update: {0}")]
    State(#[from] ecsmesh_state::StateError),
    #[error("the leader sent an unusable snapshot part: {0}")]
    Part(#[from] ecsmesh_proto::PartError),
    #[error("a delta from version {base} while holding {held:?}")]
    Gap { base: u64, held: Option<u64> },
    #[error("the admin token is not valid in a header")]
    Token,
}

/// Follows the leader at `address` until aborted (the role changes).
pub async fn run(
    address: String,
    settings: FollowSettings,
    observed: Arc<Observed>,
    instances: Option<Arc<Instances>>,
    metrics: Arc<Metrics>,
) {
    loop {
        let r = follow(
            &address,
            &settings,
            &observed,
            instances.as_deref(),
            &metrics,
        )
        .await;
        metrics.set_following(false);
        match r {
            Ok(()) => tracing::info!(leader = %address, "the leader ended the stream"),
            Err(e) => tracing::warn!(leader = %address, error = %e, "following the leader"),
        }
        tokio::time::sleep(RETRY).await;
    }
}

async fn connect(address: &str, settings: &FollowSettings) -> Result<Channel, FollowError> {
    let scheme = if settings.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let endpoint = Endpoint::from_shared(format!("{scheme}://{address}"))?
        .connect_timeout(Duration::from_secs(2))
        // A leader that goes silent is noticed in ~5 s, as agents notice.
        .http2_keep_alive_interval(Duration::from_secs(2))
        .keep_alive_timeout(Duration::from_secs(3))
        .keep_alive_while_idle(true);
    Ok(match &settings.tls {
        Some((client, name)) => {
            endpoint
                .connect_with_connector(HttpsConnector::new(client.clone(), name.clone(), None))
                .await?
        }
        None => endpoint.connect().await?,
    })
}

async fn follow(
    address: &str,
    settings: &FollowSettings,
    observed: &Observed,
    instances: Option<&Instances>,
    metrics: &Metrics,
) -> Result<(), FollowError> {
    let channel = connect(address, settings).await?;
    let mut request = tonic::Request::new(pb::FollowRequest {
        replica_id: settings.replica_id.clone(),
    });
    if let Some(token) = &settings.token {
        let value = format!("Bearer {token}")
            .parse()
            .map_err(|_| FollowError::Token)?;
        request.metadata_mut().insert("authorization", value);
    }
    let mut inbound = pb::replication_client::ReplicationClient::new(channel)
        .max_decoding_message_size(ecsmesh_proto::MAX_SNAPSHOT_BYTES)
        .follow(request)
        .await?
        .into_inner();
    tracing::info!(leader = %address, "following the leader's mesh stream");
    metrics.set_following(true);
    let mut parts = ecsmesh_proto::SnapshotAssembler::default();
    let mut held: Option<(u64, MeshState)> = None;
    while let Some(message) = inbound.message().await? {
        use pb::follow_message::Kind;
        let next = match message.kind {
            Some(Kind::Snapshot(s)) => {
                parts.reset();
                Some((s.version, MeshState::from_snapshot(&s)?))
            }
            Some(Kind::SnapshotPart(part)) => match parts.push(part)? {
                Some(s) => Some((s.version, MeshState::from_snapshot(&s)?)),
                None => None,
            },
            Some(Kind::Delta(d)) => match &held {
                Some((version, state)) if *version == d.base_version => {
                    Some((d.version, state.apply(&d)?))
                }
                _ => {
                    return Err(FollowError::Gap {
                        base: d.base_version,
                        held: held.as_ref().map(|(v, _)| *v),
                    });
                }
            },
            Some(Kind::Instances(listing)) => {
                if let Some(instances) = instances {
                    instances.replace(&listing.cluster, listing_of(&listing));
                }
                None
            }
            None => None,
        };
        if let Some((version, state)) = next {
            observed.replace(SOURCE, state.sets.clone());
            held = Some((version, state));
        }
    }
    Ok(())
}

fn listing_of(listing: &pb::ContainerInstances) -> HashMap<String, Option<IpAddr>> {
    listing
        .instances
        .iter()
        .map(|i| (i.ec2_instance_id.clone(), i.private_ip.parse().ok()))
        .collect()
}

//! `Replication.Follow`: the leader's side of a follower's stream
//! ([`crate::leader`]). The follower gets what agents get (a snapshot, then
//! deltas, from the publisher's encodings) and every watched cluster's
//! container instances whenever they change, which it admits agents by.
//!
//! Only a leader serves it (a follower of a follower could follow itself
//! round a stale lease), and a leader that stops leading ends its
//! streams: the followers look at the lease again. It needs the credential
//! dtab writes need: a follower reads everything the mesh knows.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use ecsmesh_proto::v1 as pb;
use prost::Message as _;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::admission::{ClusterInstances, Instances};
use crate::grpc::admin::AdminService;
use crate::leader::Role;
use crate::publish::{Published, Publisher};

#[derive(Clone, Debug)]
pub struct ReplicationService {
    pub publisher: Arc<Publisher>,
    pub instances: Option<Arc<Instances>>,
    /// Checks the follower's credential, as for a dtab write.
    pub admin: AdminService,
    pub role: watch::Receiver<Role>,
}

type Listed = HashMap<String, Arc<ClusterInstances>>;

/// A message the publisher encoded as a `ControllerMessage`: its field
/// numbers are `FollowMessage`'s, so the bytes decode as one.
fn follow_message(encoded: &Bytes) -> Result<pb::FollowMessage, Status> {
    pb::FollowMessage::decode(encoded.as_ref())
        .map_err(|e| Status::internal(format!("re-reading an encoded mesh message: {e}")))
}

fn instances_message(cluster: &str, listed: &ClusterInstances) -> pb::FollowMessage {
    let mut instances: Vec<pb::ContainerInstance> = listed
        .iter()
        .map(|(id, ip)| pb::ContainerInstance {
            ec2_instance_id: id.clone(),
            private_ip: ip.map(|ip: IpAddr| ip.to_string()).unwrap_or_default(),
        })
        .collect();
    instances.sort_by(|a, b| a.ec2_instance_id.cmp(&b.ec2_instance_id));
    pb::FollowMessage {
        kind: Some(pb::follow_message::Kind::Instances(
            pb::ContainerInstances {
                cluster: cluster.to_owned(),
                instances,
            },
        )),
    }
}

/// The outgoing side of one follower's stream.
struct Follower {
    publisher: Arc<Publisher>,
    updates: watch::Receiver<Arc<Published>>,
    listed: Option<watch::Receiver<Listed>>,
    role: watch::Receiver<Role>,
    tx: mpsc::Sender<Result<pb::FollowMessage, Status>>,
    last_sent: Option<Arc<Published>>,
    sent_instances: Listed,
}

impl Follower {
    /// Sends whatever changed since the last call; `false` once the
    /// follower is gone.
    async fn send_changes(&mut self) -> Result<bool, Status> {
        let listed = self.listed.as_mut().map(|l| l.borrow_and_update().clone());
        for (cluster, instances) in listed.unwrap_or_default() {
            if self
                .sent_instances
                .get(&cluster)
                .is_some_and(|sent| Arc::ptr_eq(sent, &instances) || **sent == *instances)
            {
                continue;
            }
            if !self.send(instances_message(&cluster, &instances)).await {
                return Ok(false);
            }
            self.sent_instances.insert(cluster, instances);
        }
        let current = self.updates.borrow_and_update().clone();
        // Version 0 is "not yet observed": never send an empty mesh.
        if current.version == 0 {
            return Ok(true);
        }
        let encoded: Vec<Bytes> = match &self.last_sent {
            None => self.publisher.snapshot_messages(&current).await.to_vec(),
            Some(last) if last.version != current.version => {
                vec![self.publisher.delta_message(last, &current)]
            }
            Some(_) => return Ok(true),
        };
        for bytes in &encoded {
            if !self.send(follow_message(bytes)?).await {
                return Ok(false);
            }
        }
        self.last_sent = Some(current);
        Ok(true)
    }

    async fn send(&self, message: pb::FollowMessage) -> bool {
        self.tx.send(Ok(message)).await.is_ok()
    }

    /// Runs until the follower goes or this replica stops leading.
    async fn run(mut self) {
        loop {
            match self.send_changes().await {
                Ok(true) => {}
                Ok(false) => return,
                Err(status) => {
                    let _ = self.tx.send(Err(status)).await;
                    return;
                }
            }
            let listed_changed = async {
                match self.listed.as_mut() {
                    Some(l) => l.changed().await.is_ok(),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                changed = self.updates.changed() => if changed.is_err() { return },
                alive = listed_changed => if !alive { return },
                changed = self.role.changed() => {
                    if changed.is_err() || *self.role.borrow_and_update() != Role::Leader {
                        let _ = self.tx.send(Err(Status::unavailable(
                            "this replica no longer leads: look at the lease again",
                        ))).await;
                        return;
                    }
                }
                () = self.tx.closed() => return,
            }
        }
    }
}

#[tonic::async_trait]
impl pb::replication_server::Replication for ReplicationService {
    type FollowStream = ReceiverStream<Result<pb::FollowMessage, Status>>;

    async fn follow(
        &self,
        request: Request<pb::FollowRequest>,
    ) -> Result<Response<Self::FollowStream>, Status> {
        self.admin.authorize_write(&request)?;
        let mut role = self.role.clone();
        if *role.borrow_and_update() != Role::Leader {
            return Err(Status::failed_precondition(
                "this replica does not lead: follow the lease's holder",
            ));
        }
        let replica = crate::limits::echo(&request.get_ref().replica_id).into_owned();
        tracing::info!(%replica, "a replica follows this leader");
        let (tx, rx) = mpsc::channel(4);
        let follower = Follower {
            publisher: Arc::clone(&self.publisher),
            updates: self.publisher.subscribe(),
            listed: self.instances.as_ref().map(|i| i.listed()),
            role,
            tx,
            last_sent: None,
            sent_instances: HashMap::new(),
        };
        tokio::spawn(follower.run());
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

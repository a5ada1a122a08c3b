//! Who may follow the mesh stream (issue #16). The stream carries every
//! endpoint of the mesh and its dtabs, and an agent counted as converged
//! is trusted by the operator, so a stream is admitted only for a genuine
//! agent of this mesh, on the instance it claims to run on:
//!
//! 1. **Credentials**, before anything is read: with TLS client
//!    certificates on, a certificate from the mesh CA (whose identity is an
//!    `--agent-identity` when those are set); with an agent token
//!    configured, `authorization: Bearer <agent token>`. Each configured
//!    credential is required.
//! 2. **The `Hello`'s claim**, against what vouches for it: a certificate
//!    issued for one instance (an identity that names an EC2 instance id,
//!    such as `i-0123456789abcdef0.agent.ecsmesh`) binds the stream to that
//!    instance; and with `agent_admission: ecs` (the default when ECS
//!    clusters are watched) the instance must be a container instance of a
//!    watched cluster, and the host IP the agent claims that instance's
//!    private IP ([`Instances`], kept by the ECS source).
//!
//! A refusal is logged, counted by reason
//! (`ecsmesh_controller_agent_streams_refused_total`), and ends the stream
//! with a status that says what was missing; the agent retries with backoff.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use ecsmesh_proto::v1 as pb;
use ecsmesh_tls::Peer;
use tokio::sync::watch;
use tonic::{Request, Status};

use crate::metrics::Metrics;

/// How a `Hello`'s instance is checked beyond the credentials.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum AgentAdmission {
    /// The instance must be a container instance of a watched ECS cluster
    /// and the host IP its private IP.
    Ecs,
    /// The credentials only (and the instance a certificate names).
    Credentials,
}

/// Why a stream was refused; the label of the refusal counter.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("the mesh stream needs a client certificate from the mesh CA")]
    NoCertificate,
    #[error("{0:?} is not an agent identity (see --agent-identity)")]
    Identity(String),
    #[error(
        "the mesh stream needs 'authorization: Bearer <agent token>' (--controller-token-file on the agent)"
    )]
    NoToken,
    #[error("invalid agent token")]
    BadToken,
    #[error("the certificate was issued for {certified}, not for instance {claimed:?}")]
    CertificateInstance { claimed: String, certified: String },
    #[error("instance {0:?} is not a container instance of the watched cluster(s)")]
    UnknownInstance(String),
    #[error("instance {instance} has the private IP {actual}, not {claimed:?}")]
    HostIp {
        instance: String,
        claimed: String,
        actual: IpAddr,
    },
    #[error("cluster {0:?} is not watched by this controller")]
    UnknownCluster(String),
    #[error("Hello.{0} is longer than {MAX_HELLO_FIELD} bytes")]
    HelloTooLong(&'static str),
    #[error(
        "the controller has not listed the clusters' container instances yet; the agent retries"
    )]
    NotReady,
}

impl Refused {
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NoCertificate => "no_certificate",
            Self::Identity(_) => "identity",
            Self::NoToken => "no_token",
            Self::BadToken => "bad_token",
            Self::CertificateInstance { .. } => "certificate_instance",
            Self::UnknownInstance(_) => "unknown_instance",
            Self::HostIp { .. } => "host_ip",
            Self::UnknownCluster(_) => "unknown_cluster",
            Self::NotReady => "not_ready",
            Self::HelloTooLong(_) => "invalid_hello",
        }
    }

    fn status(&self) -> Status {
        let message = self.to_string();
        match self {
            Self::NoCertificate | Self::NoToken => Status::unauthenticated(message),
            Self::NotReady => Status::unavailable(message),
            Self::HelloTooLong(_) => Status::invalid_argument(message),
            _ => Status::permission_denied(message),
        }
    }
}

/// The admission rules, built once from the configuration.
#[derive(Clone, Debug)]
pub struct Admission {
    /// TLS client certificates are on: the stream needs one.
    pub certificate: bool,
    /// With a certificate: the identities allowed (empty: any from the CA).
    pub identities: Arc<[String]>,
    pub token: Option<Arc<str>>,
    /// The ECS check, when on.
    pub instances: Option<Arc<Instances>>,
    pub metrics: Arc<Metrics>,
}

/// The longest `Hello` field: each one is kept, shown and used as a
/// metric label while the stream lasts.
pub const MAX_HELLO_FIELD: usize = 256;

/// How long a `Hello` naming an instance not listed yet waits for a fresh
/// listing (an instance that just registered) before it is refused.
const LISTING_WAIT: Duration = Duration::from_secs(5);

impl Admission {
    /// The rules `security` sets; `instances` when the ECS check is on.
    pub fn new(
        security: &crate::config::Security,
        instances: Option<Arc<Instances>>,
        metrics: &Arc<Metrics>,
    ) -> Self {
        Self {
            certificate: security
                .tls
                .as_ref()
                .is_some_and(|t| t.client_auth != ecsmesh_tls::ClientAuth::None),
            identities: security.agent_identities.clone().into(),
            token: security.agent_token.clone(),
            instances,
            metrics: Arc::clone(metrics),
        }
    }

    /// The credentials on the stream's request; returns the peer's
    /// certificate identity for the `Hello` check.
    ///
    /// # Errors
    /// A credential is missing or wrong (counted).
    pub fn credentials<T>(&self, request: &Request<T>) -> Result<Option<Peer>, Status> {
        let peer = crate::tls::peer(request)
            .filter(|p| p.authenticated())
            .cloned();
        let verdict = self.check_credentials(
            peer.as_ref(),
            request
                .metadata()
                .get("authorization")
                .and_then(|v| v.to_str().ok()),
        );
        verdict
            .map(|()| peer)
            .map_err(|refused| self.refuse(&refused, None))
    }

    fn check_credentials(
        &self,
        peer: Option<&Peer>,
        authorization: Option<&str>,
    ) -> Result<(), Refused> {
        if self.certificate {
            let peer = peer.ok_or(Refused::NoCertificate)?;
            if !self.identities.is_empty() && !peer.is_any_of(&self.identities) {
                return Err(Refused::Identity(peer.name().to_owned()));
            }
        }
        if let Some(token) = &self.token {
            let presented = authorization
                .and_then(|a| a.strip_prefix("Bearer "))
                .ok_or(Refused::NoToken)?;
            if !crate::grpc::admin::constant_time_eq(presented.as_bytes(), token.as_bytes()) {
                return Err(Refused::BadToken);
            }
        }
        Ok(())
    }

    /// The `Hello`'s claim against the certificate and the clusters.
    ///
    /// # Errors
    /// The claim does not hold (counted).
    pub async fn hello(&self, peer: Option<&Peer>, hello: &pb::Hello) -> Result<(), Status> {
        let fields = [
            ("instance_id", &hello.instance_id),
            ("host_ip", &hello.host_ip),
            ("availability_zone", &hello.availability_zone),
            ("namespace", &hello.namespace),
            ("agent_version", &hello.agent_version),
            ("last_applied_epoch", &hello.last_applied_epoch),
            ("cluster", &hello.cluster),
        ];
        let too_long = fields.iter().find(|(_, v)| v.len() > MAX_HELLO_FIELD);
        let verdict = match peer.map(certified_instances) {
            _ if too_long.is_some() => Err(Refused::HelloTooLong(
                too_long.map_or("", |(name, _)| *name),
            )),
            Some(certified)
                if !certified.is_empty() && !certified.contains(&hello.instance_id.as_str()) =>
            {
                Err(Refused::CertificateInstance {
                    claimed: hello.instance_id.clone(),
                    certified: certified.join(", "),
                })
            }
            _ => match &self.instances {
                Some(instances) => instances.admit(hello, LISTING_WAIT).await,
                None => Ok(()),
            },
        };
        verdict.map_err(|refused| self.refuse(&refused, Some(hello)))
    }

    fn refuse(&self, refused: &Refused, hello: Option<&pb::Hello>) -> Status {
        self.metrics.agent_stream_refused(refused.reason());
        // Clipped: a refused Hello may carry anything up to the message limit.
        let clip = |s: &str| -> String { s.chars().take(64).collect() };
        let (instance, host_ip) = hello.map_or((String::new(), String::new()), |h| {
            (clip(&h.instance_id), clip(&h.host_ip))
        });
        // Not ready is the normal start of a controller, not an attack.
        if *refused == Refused::NotReady {
            tracing::info!(%instance, %host_ip, "agent stream deferred: {refused}");
        } else {
            tracing::warn!(%instance, %host_ip, reason = refused.reason(), "agent stream refused: {refused}");
        }
        refused.status()
    }
}

/// The EC2 instance ids a certificate names: any part of an identity
/// (split at `.`, `/`, `:`) shaped like one (`i-` and 8 or 17 hex digits).
fn certified_instances(peer: &Peer) -> Vec<&str> {
    peer.identities
        .iter()
        .flat_map(|i| i.split(['.', '/', ':']))
        .filter(|part| is_instance_id(part))
        .collect()
}

fn is_instance_id(s: &str) -> bool {
    s.strip_prefix("i-").is_some_and(|hex| {
        matches!(hex.len(), 8 | 17) && hex.bytes().all(|b| b.is_ascii_hexdigit())
    })
}

/// One cluster's container instances: EC2 instance id → private IP (when
/// EC2 has described it).
pub type ClusterInstances = HashMap<String, Option<IpAddr>>;

/// The container instances of every watched cluster, as the ECS source
/// last listed them, and the requests for a fresh listing.
#[derive(Debug)]
pub struct Instances {
    clusters: Vec<String>,
    listed: watch::Sender<HashMap<String, Arc<ClusterInstances>>>,
    /// Bumped when a `Hello` names an instance not listed: the sources
    /// list again (at most once per their own minimum interval).
    wanted: watch::Sender<u64>,
}

impl Instances {
    pub fn new(clusters: Vec<String>) -> Self {
        Self {
            clusters,
            listed: watch::Sender::new(HashMap::new()),
            wanted: watch::Sender::new(0),
        }
    }

    /// The ECS source's latest listing of `cluster`.
    pub fn replace(&self, cluster: &str, instances: ClusterInstances) {
        self.listed.send_if_modified(|all| {
            if all.get(cluster).is_some_and(|old| **old == instances) {
                return false;
            }
            all.insert(cluster.to_owned(), Arc::new(instances));
            true
        });
    }

    /// Every cluster's latest listing, as it changes (a leader sends them
    /// to its followers, which admit agents by them).
    pub fn listed(&self) -> watch::Receiver<HashMap<String, Arc<ClusterInstances>>> {
        self.listed.subscribe()
    }

    /// For the sources: changes when a fresh listing is wanted.
    pub fn wanted(&self) -> watch::Receiver<u64> {
        self.wanted.subscribe()
    }

    async fn admit(&self, hello: &pb::Hello, wait: Duration) -> Result<(), Refused> {
        let clusters: Vec<&str> = if hello.cluster.is_empty() {
            self.clusters.iter().map(String::as_str).collect()
        } else if self.clusters.contains(&hello.cluster) {
            vec![hello.cluster.as_str()]
        } else {
            return Err(Refused::UnknownCluster(hello.cluster.clone()));
        };
        let mut listed = self.listed.subscribe();
        let mut asked = false;
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let verdict = Self::judge(&listed.borrow_and_update(), &clusters, hello);
            match verdict {
                Err(Refused::UnknownInstance(_) | Refused::NotReady) => {}
                done => return done,
            }
            if !asked {
                self.wanted.send_modify(|n| *n = n.wrapping_add(1));
                asked = true;
            }
            match tokio::time::timeout_at(deadline, listed.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => return verdict,
            }
        }
    }

    fn judge(
        listed: &HashMap<String, Arc<ClusterInstances>>,
        clusters: &[&str],
        hello: &pb::Hello,
    ) -> Result<(), Refused> {
        let mut all_listed = true;
        for cluster in clusters {
            let Some(instances) = listed.get(*cluster) else {
                all_listed = false;
                continue;
            };
            if let Some(ip) = instances.get(&hello.instance_id) {
                return match ip {
                    Some(actual) if hello.host_ip.parse::<IpAddr>().ok() != Some(*actual) => {
                        Err(Refused::HostIp {
                            instance: hello.instance_id.clone(),
                            claimed: hello.host_ip.clone(),
                            actual: *actual,
                        })
                    }
                    _ => Ok(()),
                };
            }
        }
        if all_listed {
            Err(Refused::UnknownInstance(hello.instance_id.clone()))
        } else {
            Err(Refused::NotReady)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(instance: &str, ip: &str, cluster: &str) -> pb::Hello {
        pb::Hello {
            instance_id: instance.to_owned(),
            host_ip: ip.to_owned(),
            cluster: cluster.to_owned(),
            ..Default::default()
        }
    }

    fn admission(
        certificate: bool,
        token: Option<&str>,
        instances: Option<Arc<Instances>>,
    ) -> Admission {
        Admission {
            certificate,
            identities: Arc::from(Vec::new()),
            token: token.map(Arc::from),
            instances,
            metrics: Arc::new(Metrics::new()),
        }
    }

    fn peer(names: &[&str]) -> Peer {
        Peer {
            identities: names.iter().map(|n| (*n).to_owned()).collect(),
        }
    }

    #[test]
    fn instance_ids_are_recognised_in_certificate_names() {
        let p = peer(&[
            "i-0123456789abcdef0.agent.ecsmesh",
            "spiffe://mesh/instance/i-89abcdef",
            "ecsmesh-agent",
            "i-xyz",
        ]);
        assert_eq!(
            certified_instances(&p),
            ["i-0123456789abcdef0", "i-89abcdef"]
        );
        assert!(certified_instances(&peer(&["ecsmesh-agent"])).is_empty());
    }

    #[test]
    fn each_configured_credential_is_required() {
        let a = admission(true, Some("s3cret"), None);
        let p = peer(&["ecsmesh-agent"]);
        assert_eq!(
            a.check_credentials(None, Some("Bearer s3cret")),
            Err(Refused::NoCertificate)
        );
        assert_eq!(a.check_credentials(Some(&p), None), Err(Refused::NoToken));
        assert_eq!(
            a.check_credentials(Some(&p), Some("Bearer s3cre")),
            Err(Refused::BadToken)
        );
        assert_eq!(
            a.check_credentials(Some(&p), Some("s3cret")),
            Err(Refused::NoToken)
        );
        assert_eq!(a.check_credentials(Some(&p), Some("Bearer s3cret")), Ok(()));
        let open = admission(false, None, None);
        assert_eq!(open.check_credentials(None, None), Ok(()));
    }

    #[tokio::test]
    async fn hello_fields_are_bounded() {
        let a = admission(false, None, None);
        let long = "x".repeat(MAX_HELLO_FIELD + 1);
        let refused = a
            .hello(None, &hello(&long, "10.0.0.1", ""))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::InvalidArgument);
        assert!(
            refused.message().contains("instance_id"),
            "{}",
            refused.message()
        );
        assert!(refused.message().len() < 200);
    }

    #[tokio::test]
    async fn a_certificate_for_one_instance_binds_the_hello() {
        let a = admission(true, None, None);
        let p = peer(&["i-0123456789abcdef0.agent.ecsmesh"]);
        assert!(
            a.hello(Some(&p), &hello("i-0123456789abcdef0", "10.0.0.1", ""))
                .await
                .is_ok()
        );
        let refused = a
            .hello(Some(&p), &hello("i-0fffffffffffffff0", "10.0.0.1", ""))
            .await;
        assert_eq!(refused.unwrap_err().code(), tonic::Code::PermissionDenied);
        // A shared agent certificate names no instance: the clusters decide.
        assert!(
            a.hello(Some(&peer(&["ecsmesh-agent"])), &hello("i-any", "", ""))
                .await
                .is_ok()
        );
    }

    #[tokio::test]
    async fn the_hello_must_name_a_listed_instance_at_its_ip() {
        let instances = Arc::new(Instances::new(vec!["prod".to_owned(), "batch".to_owned()]));
        let a = admission(false, None, Some(Arc::clone(&instances)));
        let h = hello("i-1", "10.0.0.1", "");
        // Nothing listed yet: deferred, not refused as an attack.
        let err = instances
            .admit(&h, Duration::from_millis(10))
            .await
            .unwrap_err();
        assert_eq!(err, Refused::NotReady);
        instances.replace(
            "prod",
            HashMap::from([("i-1".to_owned(), "10.0.0.1".parse().ok())]),
        );
        // batch is not listed yet, but prod vouches for i-1.
        assert!(a.hello(None, &h).await.is_ok());
        instances.replace("batch", HashMap::from([("i-2".to_owned(), None)]));
        assert_eq!(
            instances
                .admit(&hello("i-9", "10.0.0.9", ""), Duration::from_millis(10))
                .await,
            Err(Refused::UnknownInstance("i-9".to_owned()))
        );
        assert!(matches!(
            instances
                .admit(&hello("i-1", "10.0.0.2", ""), Duration::ZERO)
                .await,
            Err(Refused::HostIp { .. })
        ));
        // An instance EC2 has not described yet: its IP cannot be checked.
        assert!(
            a.hello(None, &hello("i-2", "10.0.0.2", "batch"))
                .await
                .is_ok()
        );
        assert_eq!(
            instances
                .admit(&hello("i-1", "10.0.0.1", "batch"), Duration::ZERO)
                .await,
            Err(Refused::UnknownInstance("i-1".to_owned()))
        );
        assert_eq!(
            instances
                .admit(&hello("i-1", "10.0.0.1", "other"), Duration::ZERO)
                .await,
            Err(Refused::UnknownCluster("other".to_owned()))
        );
    }

    #[tokio::test]
    async fn an_unlisted_instance_asks_for_a_listing_and_waits_for_it() {
        let instances = Arc::new(Instances::new(vec!["prod".to_owned()]));
        instances.replace("prod", HashMap::new());
        let mut wanted = instances.wanted();
        let lister = {
            let instances = Arc::clone(&instances);
            tokio::spawn(async move {
                wanted.changed().await.unwrap();
                instances.replace("prod", HashMap::from([("i-new".to_owned(), None)]));
            })
        };
        let verdict = instances
            .admit(&hello("i-new", "10.0.0.3", ""), Duration::from_secs(5))
            .await;
        assert_eq!(verdict, Ok(()));
        lister.await.unwrap();
    }
}

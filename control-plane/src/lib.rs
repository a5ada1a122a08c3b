//! # ecsmesh-controller
//!
//! The control plane, shaped like a kube-runtime operator:
//! - **sources** ([`sources`]) observe ECS and Consul and report whole views
//!   of the endpoint sets they see;
//! - the **store** ([`store`]) keeps the dtab overrides operators write;
//! - the **reconciler** ([`reconcile`]) computes the desired mesh state from
//!   both plus the configured base dtabs, and hands it to the
//!   **publisher** ([`publish`]), which versions it;
//! - the **servers** ([`grpc`], [`http`]) stream it to every agent (a
//!   snapshot, then deltas, with ACKs) and serve the dtab admin API, the
//!   metrics and the agents' convergence;
//! - with a shared store, replicas elect a **leader** ([`leader`]): only it
//!   runs the sources; the others take its endpoint sets from its
//!   `Replication.Follow` stream ([`sources::leader`]) and serve as above.

pub mod admission;
pub mod agents;
pub mod config;
pub mod dashboard;
pub mod grpc;
pub mod http;
pub mod leader;
pub mod limits;
pub mod metrics;
pub mod publish;
pub mod reconcile;
pub mod sources;
pub mod store;
pub mod tls;
pub mod traffic;
pub mod write_guard;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use ecsmesh_proto::v1 as pb;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::agents::Agents;
use crate::config::Config;
use crate::leader::{Election, Holder, Role};
use crate::metrics::Metrics;
use crate::publish::Publisher;
use crate::sources::Observed;
use crate::store::consul_kv::ConsulStore;
use crate::store::{Document, DtabStore, PolicyStore, Store, file::FileStore};

/// A started controller: its bound addresses and its shared parts.
#[derive(Debug)]
pub struct Controller {
    pub grpc_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub publisher: Arc<Publisher>,
    pub observed: Arc<Observed>,
    pub store: Arc<DtabStore>,
    /// The service policies (issue #18), in the same backend as the dtabs.
    pub policies: Arc<PolicyStore>,
    pub agents: Arc<Agents>,
    /// Leader, follower or (starting) candidate; always leader without a
    /// shared store.
    pub role: tokio::sync::watch::Receiver<Role>,
    election: Option<Election>,
    /// Holds the role of a controller that does not elect.
    _fixed_role: Option<tokio::sync::watch::Sender<Role>>,
    tasks: JoinSet<anyhow::Result<()>>,
}

impl Controller {
    /// Binds the listeners and starts every task. `extra_sources` names
    /// sources the caller feeds through [`Controller::observed`] (tests,
    /// static endpoint files) that must report before the first publish.
    pub async fn start(config: Config, extra_sources: &[&str]) -> anyhow::Result<Self> {
        // Before anything is opened or bound: a refused start leaves no trace.
        let write_access = write_guard::check(
            config.grpc_addr,
            config.admin_token.is_some(),
            &config.security,
        )?;
        let agent_access = write_guard::check_agents(config.grpc_addr, &config.security)?;
        let instances = agent_instances(&config)?;
        let metrics = Arc::new(Metrics::new());
        let store = Arc::new(open_store(&config, &metrics).await?);
        let policies = Arc::new(open_store(&config, &metrics).await?);
        let publisher = Arc::new(Publisher::new());
        let agents = Arc::new(Agents::new(config.security.traffic_limits));
        let observed = Arc::new(Observed::new(expected_sources(&config, extra_sources)));

        let grpc_listener = TcpListener::bind(config.grpc_addr)
            .await
            .with_context(|| format!("binding the gRPC address {}", config.grpc_addr))?;
        let admin_listener = TcpListener::bind(config.admin_addr)
            .await
            .with_context(|| format!("binding the admin address {}", config.admin_addr))?;
        let grpc_addr = grpc_listener.local_addr()?;
        let admin_addr = admin_listener.local_addr()?;

        let mut tasks = JoinSet::new();
        let roles = Roles::start(
            &config,
            &store,
            grpc_addr,
            RoleParts::new(
                &config,
                extra_sources,
                &observed,
                &metrics,
                instances.as_ref(),
            ),
            &mut tasks,
        )
        .await?;
        let role = roles.role.clone();
        tasks.spawn(reconcile_task(
            &config, &observed, &store, &policies, &publisher, &metrics,
        ));
        let dtab_admin = grpc::admin::AdminService::new(
            &config,
            (Arc::clone(&store), Arc::clone(&policies)),
            Arc::clone(&publisher),
            Arc::clone(&metrics),
        );
        let grpc_access = grpc_access(&config.security, &dtab_admin)?;
        tasks.spawn(serve_grpc(
            grpc_listener,
            grpc::mesh::MeshService {
                publisher: Arc::clone(&publisher),
                agents: Arc::clone(&agents),
                metrics: Arc::clone(&metrics),
                max_message_bytes: config.security.traffic_limits.max_summary_bytes,
                admission: admission::Admission::new(&config.security, instances.clone(), &metrics),
            },
            dtab_admin.clone(),
            grpc::mesh::StatusService {
                publisher: Arc::clone(&publisher),
                agents: Arc::clone(&agents),
            },
            grpc::replica::ReplicationService {
                publisher: Arc::clone(&publisher),
                instances: instances.clone(),
                admin: dtab_admin.clone(),
                role: role.clone(),
            },
            grpc_access,
        ));
        let admin = http::router(http::AdminState {
            publisher: Arc::clone(&publisher),
            agents: Arc::clone(&agents),
            metrics: Arc::clone(&metrics),
            admin: dtab_admin,
            role: role.clone(),
            me: roles.me,
        });
        tasks.spawn(async move {
            axum::serve(admin_listener, admin)
                .await
                .context("admin HTTP server")
        });
        tracing::info!(%grpc_addr, %admin_addr, "controller started");
        write_guard::log(write_access, grpc_addr);
        write_guard::log_agents(agent_access, grpc_addr);
        Ok(Self {
            grpc_addr,
            admin_addr,
            publisher,
            observed,
            store,
            policies,
            agents,
            role,
            election: roles.election,
            _fixed_role: roles.fixed,
            tasks,
        })
    }

    /// Stops: a leader first releases the lease (so another replica leads
    /// at its next look, not after the TTL), then every task ends.
    pub async fn stop(&mut self) {
        if let Some(election) = self.election.as_mut() {
            election.stop(std::time::Duration::from_secs(2)).await;
        }
        self.tasks.abort_all();
    }

    /// Runs until a task fails (or all end).
    pub async fn wait(mut self) -> anyhow::Result<()> {
        self.wait_running().await
    }

    /// As [`Self::wait`], keeping the controller (to [`Self::stop`] it).
    pub async fn wait_running(&mut self) -> anyhow::Result<()> {
        while let Some(done) = self.tasks.join_next().await {
            done.context("controller task panicked")??;
        }
        Ok(())
    }

    /// Stops every task (the listeners close).
    pub fn shutdown(&mut self) {
        self.tasks.abort_all();
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        self.tasks.abort_all();
    }
}

/// The ECS check of agents' Hellos ([`admission`]): on by default when
/// clusters are watched; the source then lists their container instances.
fn agent_instances(config: &Config) -> anyhow::Result<Option<Arc<admission::Instances>>> {
    use admission::AgentAdmission::{Credentials, Ecs};
    Ok(match (config.security.agent_admission, &config.ecs) {
        (Some(Ecs), None) => anyhow::bail!(
            "agent_admission: ecs needs ECS clusters to check agents against (--cluster)"
        ),
        (Some(Ecs) | None, Some(ecs)) => {
            Some(Arc::new(admission::Instances::new(ecs.clusters.clone())))
        }
        (Some(Credentials), _) | (None, None) => None,
    })
}

/// The sources that must report before the first publish: the caller's,
/// every ECS cluster and every Consul datacenter.
fn expected_sources(config: &Config, extra_sources: &[&str]) -> Vec<String> {
    let mut expected: Vec<String> = extra_sources.iter().map(|s| (*s).to_owned()).collect();
    if let Some(ecs) = &config.ecs {
        expected.extend(ecs.clusters.iter().map(|c| sources::ecs::source_id(c)));
    }
    if let Some(consul) = &config.consul {
        expected.extend(
            consul
                .datacenters
                .iter()
                .map(|dc| sources::consul::source_id(dc)),
        );
    }
    expected
}

/// The configured store of one document kind: the file store, Consul KV
/// or DynamoDB.
async fn open_store<D: Document>(
    config: &Config,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<Store<D>> {
    let noun = D::KIND.store_noun();
    if let Some(settings) = &config.dynamodb_store {
        return Ok(Store::Dynamo(
            crate::store::dynamodb::DynamoStore::open(settings.clone(), Arc::clone(metrics))
                .await
                .with_context(|| {
                    format!("opening the {noun} in DynamoDB table {}", settings.table)
                })?,
        ));
    }
    Ok(match &config.consul_store {
        None => Store::File(
            FileStore::open(&config.store_dir).with_context(|| format!("opening the {noun}"))?,
        ),
        Some(settings) => Store::Consul(
            ConsulStore::open(settings.clone(), Arc::clone(metrics))
                .await
                .with_context(|| format!("opening the Consul {noun}"))?,
        ),
    })
}

/// TLS on the gRPC port and the checks in front of the mesh stream and
/// the status API (the dtab API checks its own callers).
struct GrpcAccess {
    tls: Option<ecsmesh_tls::ServerTls>,
    status_gate: crate::tls::ReadGate,
}

/// Loads the certificate (a bad one stops the start) and builds the checks.
fn grpc_access(
    security: &config::Security,
    admin: &grpc::admin::AdminService,
) -> anyhow::Result<GrpcAccess> {
    let tls = security
        .tls
        .as_ref()
        .map(crate::tls::server)
        .transpose()
        .context("loading the gRPC port's TLS certificate")?;
    Ok(GrpcAccess {
        tls,
        status_gate: crate::tls::ReadGate(admin.clone()),
    })
}

/// The largest request of the health, reflection and status services.
const SMALL_REQUEST_BYTES: usize = 64 * 1024;

async fn serve_grpc(
    listener: TcpListener,
    mesh: grpc::mesh::MeshService,
    admin: grpc::admin::AdminService,
    status: grpc::mesh::StatusService,
    replication: grpc::replica::ReplicationService,
    access: GrpcAccess,
) -> anyhow::Result<()> {
    let metrics = Arc::clone(&mesh.metrics);
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<grpc::mesh::MeshServer>()
        .await;
    health_reporter
        .set_serving::<pb::dtab_admin_server::DtabAdminServer<grpc::admin::AdminService>>()
        .await;
    health_reporter
        .set_serving::<pb::policy_admin_server::PolicyAdminServer<grpc::policy::PolicyAdmin>>()
        .await;
    health_reporter
        .set_serving::<pb::mesh_status_server::MeshStatusServer<grpc::mesh::StatusService>>()
        .await;
    // Reflection in both versions: grpcurl speaks v1, many clients
    // (Python's grpcio-reflection among them) only v1alpha.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(ecsmesh_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    // Every service decodes only what its requests need (tonic's default
    // is 4 MiB): the dtab API a dtab within its limit plus room for the
    // other fields, the small services far less.
    let reflection_v1 = reflection()
        .build_v1()
        .context("building gRPC reflection")?
        .max_decoding_message_size(SMALL_REQUEST_BYTES);
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .context("building gRPC reflection")?
        .max_decoding_message_size(SMALL_REQUEST_BYTES);
    let max_admin_request = admin.limits.max_request_bytes();
    let max_policy_request = admin.limits.max_policy_request_bytes();
    let policy_admin = grpc::policy::PolicyAdmin(admin.clone());
    let router = tonic::transport::Server::builder()
        // Dead agents are noticed without waiting for TCP timeouts.
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(20)))
        .add_service(health.max_decoding_message_size(SMALL_REQUEST_BYTES))
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(grpc::mesh::MeshServer::new(mesh))
        .add_service(
            pb::replication_server::ReplicationServer::new(replication)
                .max_decoding_message_size(SMALL_REQUEST_BYTES),
        )
        .add_service(
            pb::dtab_admin_server::DtabAdminServer::new(admin)
                .max_decoding_message_size(max_admin_request),
        )
        .add_service(
            pb::policy_admin_server::PolicyAdminServer::new(policy_admin)
                .max_decoding_message_size(max_policy_request),
        )
        .add_service(tonic::service::interceptor::InterceptedService::new(
            pb::mesh_status_server::MeshStatusServer::new(status)
                .max_decoding_message_size(SMALL_REQUEST_BYTES),
            access.status_gate,
        ));
    match access.tls {
        Some(tls) => {
            router
                .serve_with_incoming(crate::tls::incoming(listener, tls, metrics))
                .await
        }
        None => {
            router
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await
        }
    }
    .context("gRPC server")
}

/// The reconcile loop over the observed sets, the store and the base dtabs.
fn reconcile_task(
    config: &Config,
    observed: &Observed,
    store: &DtabStore,
    policies: &PolicyStore,
    publisher: &Arc<Publisher>,
    metrics: &Arc<Metrics>,
) -> impl std::future::Future<Output = anyhow::Result<()>> + use<> {
    let (base, observed, stored) = (
        config.base_dtabs.clone(),
        observed.subscribe(),
        reconcile::StoredInputs {
            dtabs: store.subscribe(),
            policies: policies.subscribe(),
        },
    );
    let (publisher, metrics) = (Arc::clone(publisher), Arc::clone(metrics));
    async move {
        reconcile::run(base, observed, stored, publisher, metrics).await;
        Ok(())
    }
}

/// The role machinery of a started controller.
struct Roles {
    role: tokio::sync::watch::Receiver<Role>,
    election: Option<Election>,
    /// The role of a controller that does not elect (always leader).
    fixed: Option<tokio::sync::watch::Sender<Role>>,
    me: Option<Holder>,
}

impl Roles {
    /// Starts the election (with a shared store) and the task that runs
    /// what each role needs.
    async fn start(
        config: &Config,
        store: &DtabStore,
        grpc_addr: SocketAddr,
        mut parts: RoleParts,
        tasks: &mut JoinSet<anyhow::Result<()>>,
    ) -> anyhow::Result<Self> {
        let elected = start_election(config, store, grpc_addr, &parts.metrics).await?;
        let roles = if let Some((election, me)) = elected {
            parts.follow = Some(follow_settings(config, &me)?);
            Self {
                role: election.role.clone(),
                election: Some(election),
                fixed: None,
                me: Some(me),
            }
        } else {
            let (tx, rx) = tokio::sync::watch::channel(Role::Leader);
            Self {
                role: rx,
                election: None,
                fixed: Some(tx),
                me: None,
            }
        };
        tasks.spawn(lead_or_follow(roles.role.clone(), parts));
        Ok(roles)
    }
}

impl RoleParts {
    fn new(
        config: &Config,
        extra_sources: &[&str],
        observed: &Arc<Observed>,
        metrics: &Arc<Metrics>,
        instances: Option<&Arc<admission::Instances>>,
    ) -> Self {
        Self {
            ecs: config.ecs.clone(),
            consul: config.consul.clone(),
            observed: Arc::clone(observed),
            metrics: Arc::clone(metrics),
            instances: instances.cloned(),
            own_sources: expected_sources(config, extra_sources),
            // A follower publishes once the leader's stream has reported.
            follower_sources: extra_sources
                .iter()
                .map(|s| (*s).to_owned())
                .chain([sources::leader::SOURCE.to_owned()])
                .collect(),
            follow: None,
        }
    }
}

/// What a replica runs in each role.
struct RoleParts {
    ecs: Option<config::EcsSettings>,
    consul: Option<sources::consul::ConsulSettings>,
    observed: Arc<Observed>,
    metrics: Arc<Metrics>,
    instances: Option<Arc<admission::Instances>>,
    /// Expected while leading: this replica's sources.
    own_sources: Vec<String>,
    /// Expected while following: the leader's stream.
    follower_sources: Vec<String>,
    /// How to follow; `None` when this controller does not elect.
    follow: Option<sources::leader::FollowSettings>,
}

/// Runs the sources while this replica leads and the leader's stream while
/// it follows; a source that fails stops the controller.
async fn lead_or_follow(
    mut role: tokio::sync::watch::Receiver<Role>,
    parts: RoleParts,
) -> anyhow::Result<()> {
    let mut running: JoinSet<anyhow::Result<()>> = JoinSet::new();
    let mut current: Option<Role> = None;
    let mut role_open = true;
    loop {
        let wanted = role.borrow_and_update().clone();
        if current.as_ref() != Some(&wanted) {
            running.abort_all();
            match &wanted {
                Role::Leader => {
                    spawn_sources(&parts, &mut running);
                    parts.observed.expect(parts.own_sources.clone());
                }
                Role::Follower { leader } => {
                    if let Some(follow) = parts.follow.clone() {
                        let run = sources::leader::run(
                            leader.address.clone(),
                            follow,
                            Arc::clone(&parts.observed),
                            parts.instances.clone(),
                            Arc::clone(&parts.metrics),
                        );
                        running.spawn(async move {
                            run.await;
                            Ok(())
                        });
                        parts.observed.expect(parts.follower_sources.clone());
                    }
                }
                // Nothing runs; the last views stay published.
                Role::Candidate => {}
            }
            current = Some(wanted);
        }
        tokio::select! {
            changed = role.changed(), if role_open => role_open = changed.is_ok(),
            Some(done) = running.join_next() => match done {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(e),
                Err(e) if e.is_cancelled() => {}
                Err(e) => return Err(anyhow::anyhow!("a source panicked: {e}")),
            },
            else => std::future::pending::<()>().await,
        }
    }
}

/// The ECS and Consul sources, as configured.
fn spawn_sources(parts: &RoleParts, running: &mut JoinSet<anyhow::Result<()>>) {
    if let Some(consul) = parts.consul.clone() {
        let (observed, metrics) = (Arc::clone(&parts.observed), Arc::clone(&parts.metrics));
        running.spawn(async move {
            sources::consul::run(consul, observed, metrics)
                .await
                .context("Consul source")
        });
    }
    if let Some(ecs) = parts.ecs.clone() {
        let (observed, metrics) = (Arc::clone(&parts.observed), Arc::clone(&parts.metrics));
        let instances = parts.instances.clone();
        running.spawn(async move {
            sources::ecs::run(ecs, observed, metrics, instances).await;
            Ok(())
        });
    }
}

/// The leader election, when the store is shared: this replica's lease
/// identity and the running election.
async fn start_election(
    config: &Config,
    store: &DtabStore,
    grpc_addr: SocketAddr,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<Option<(Election, Holder)>> {
    if matches!(store, DtabStore::File(_)) {
        return Ok(None);
    }
    let address = advertise_address(config, grpc_addr).await?;
    let me = Holder {
        id: format!("{address}/{:08x}", fastrand::u32(..)),
        address,
    };
    let settings = leader::LeaseSettings {
        me: me.clone(),
        ttl: config.replicas.lease_ttl,
    };
    let lease = match store {
        DtabStore::Dynamo(s) => {
            let (client, table) = s.table();
            leader::Lease::Dynamo(leader::dynamodb::DynamoLease::new(
                client,
                table,
                settings.clone(),
                Arc::clone(metrics),
            ))
        }
        DtabStore::Consul(s) => {
            let (client, prefix) = s.client();
            leader::Lease::Consul(Box::new(leader::consul::ConsulLease::new(
                client,
                leader::consul::lease_key(prefix),
                settings.clone(),
                Arc::clone(metrics),
            )))
        }
        DtabStore::File(_) => return Ok(None),
    };
    tracing::info!(replica = %me.id, address = %me.address, ttl = ?settings.ttl,
        "electing a leader among the replicas sharing the store");
    Ok(Some((
        Election::start(lease, settings, Arc::clone(metrics)),
        me,
    )))
}

/// Where the other replicas reach this one: the configured address, the
/// gRPC address when it names an IP, else this host's IP (as agents find
/// theirs: IMDSv2, ECS task metadata, an interface) and the gRPC port.
async fn advertise_address(config: &Config, grpc_addr: SocketAddr) -> anyhow::Result<String> {
    if let Some(address) = &config.replicas.advertise_address {
        return Ok(address.clone());
    }
    if !grpc_addr.ip().is_unspecified() {
        return Ok(grpc_addr.to_string());
    }
    let identity =
        ecsmesh_agent_identity::discover(&ecsmesh_agent_identity::IdentityConfig::from_env())
            .await
            .context("finding this host's IP for the other replicas (set --advertise-address)")?;
    Ok(SocketAddr::new(identity.host_ip, grpc_addr.port()).to_string())
}

/// How this replica follows a leader: TLS as the gRPC port has it (the
/// replicas share the certificate, so the leader's name is this one's),
/// and the admin token.
fn follow_settings(
    config: &Config,
    me: &Holder,
) -> anyhow::Result<sources::leader::FollowSettings> {
    let tls = match &config.security.tls {
        None => None,
        Some(t) => {
            let client = ecsmesh_tls::ClientTls::new(&t.files, ecsmesh_tls::ALPN_H2)
                .context("the TLS client that follows the leader")?;
            let info = t
                .files
                .certificate_info()?
                .context("following a leader over TLS needs this replica's certificate")?;
            let name = info
                .identities
                .first()
                .context("this replica's certificate names nothing to verify the leader by")?;
            let name = ecsmesh_tls::ServerName::try_from(name.clone())
                .with_context(|| format!("{name:?} as a TLS server name"))?;
            Some((client, name))
        }
    };
    Ok(sources::leader::FollowSettings {
        replica_id: me.id.clone(),
        tls,
        token: config.admin_token.clone(),
    })
}

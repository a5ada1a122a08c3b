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
//!   metrics and the agents' convergence.

pub mod admission;
pub mod agents;
pub mod config;
pub mod dashboard;
pub mod grpc;
pub mod http;
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
use crate::metrics::Metrics;
use crate::publish::Publisher;
use crate::sources::Observed;
use crate::store::consul_kv::ConsulStore;
use crate::store::{DtabStore, file::FileStore};

/// A started controller: its bound addresses and its shared parts.
#[derive(Debug)]
pub struct Controller {
    pub grpc_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub publisher: Arc<Publisher>,
    pub observed: Arc<Observed>,
    pub store: Arc<DtabStore>,
    pub agents: Arc<Agents>,
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
        if let Some(consul) = config.consul.clone() {
            let (observed, metrics) = (Arc::clone(&observed), Arc::clone(&metrics));
            tasks.spawn(async move {
                sources::consul::run(consul, observed, metrics)
                    .await
                    .context("Consul source")
            });
        }
        if let Some(ecs) = config.ecs.clone() {
            let (observed, metrics) = (Arc::clone(&observed), Arc::clone(&metrics));
            let instances = instances.clone();
            tasks.spawn(async move {
                sources::ecs::run(ecs, observed, metrics, instances).await;
                Ok(())
            });
        }
        tasks.spawn({
            let (base, observed, stored) = (
                config.base_dtabs.clone(),
                observed.subscribe(),
                store.subscribe(),
            );
            let (publisher, metrics) = (Arc::clone(&publisher), Arc::clone(&metrics));
            async move {
                reconcile::run(base, observed, stored, publisher, metrics).await;
                Ok(())
            }
        });
        let dtab_admin = grpc::admin::AdminService::new(
            &config,
            Arc::clone(&store),
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
                admission: admission::Admission::new(&config.security, instances, &metrics),
            },
            dtab_admin.clone(),
            grpc::mesh::StatusService {
                publisher: Arc::clone(&publisher),
                agents: Arc::clone(&agents),
            },
            grpc_access,
        ));
        let admin = http::router(http::AdminState {
            publisher: Arc::clone(&publisher),
            agents: Arc::clone(&agents),
            metrics: Arc::clone(&metrics),
            admin: dtab_admin,
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
            agents,
            tasks,
        })
    }

    /// Runs until a task fails (or all end).
    pub async fn wait(mut self) -> anyhow::Result<()> {
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

/// The configured dtab store: the file store, Consul KV or DynamoDB.
async fn open_store(config: &Config, metrics: &Arc<Metrics>) -> anyhow::Result<DtabStore> {
    if let Some(settings) = &config.dynamodb_store {
        return Ok(DtabStore::Dynamo(
            crate::store::dynamodb::DynamoStore::open(settings.clone(), Arc::clone(metrics))
                .await
                .with_context(|| {
                    format!(
                        "opening the dtab store in DynamoDB table {}",
                        settings.table
                    )
                })?,
        ));
    }
    Ok(match &config.consul_store {
        None => {
            DtabStore::File(FileStore::open(&config.store_dir).context("opening the dtab store")?)
        }
        Some(settings) => DtabStore::Consul(
            ConsulStore::open(settings.clone(), Arc::clone(metrics))
                .await
                .context("opening the Consul dtab store")?,
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
    let router = tonic::transport::Server::builder()
        // Dead agents are noticed without waiting for TCP timeouts.
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(20)))
        .add_service(health.max_decoding_message_size(SMALL_REQUEST_BYTES))
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(grpc::mesh::MeshServer::new(mesh))
        .add_service(
            pb::dtab_admin_server::DtabAdminServer::new(admin)
                .max_decoding_message_size(max_admin_request),
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

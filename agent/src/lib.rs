//! # ecsmesh-agent
//!
//! The per-instance HTTP proxy. Applications call through it
//! (`http_proxy=$HOST_IP:4140`); it decides every request locally, with the
//! dtabs and endpoint sets the controller streams to it ([`control`]), and
//! keeps routing on its last state when the controller is away.
//!
//! - [`routes`]: the routing table per mesh version, with balancers and a
//!   decision cache;
//! - [`policy`]: per-service traffic policies merged over the configured
//!   defaults;
//! - [`proxy`]: the outgoing and incoming listeners and the request path;
//! - [`admin`]: metrics, readiness, the dtab and delegator views;
//! - [`tls`]: TLS on the linker-to-linker hop and to the controller.

pub mod admin;
pub mod config;
pub mod control;
pub mod labels;
pub mod metrics;
pub mod policy;
pub mod proxy;
pub mod routes;
pub mod tls;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use ecsmesh_agent_identity::{IdentityConfig, discover};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::config::Config;
use crate::control::{AgentInfo, ControlStatus, SnapshotFile};
use crate::metrics::Metrics;
use crate::proxy::{Proxy, Side};
use crate::routes::{Routes, TableSettings};

/// How long in-flight requests may run after a shutdown starts.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// A started agent.
#[derive(Debug)]
pub struct Agent {
    pub host_ip: IpAddr,
    pub outgoing_addr: SocketAddr,
    pub incoming_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub routes: Arc<Routes>,
    pub status: watch::Receiver<ControlStatus>,
    /// TLS on the linker-to-linker hop, when on.
    pub l2l_tls: Option<Arc<tls::L2lTls>>,
    shutdown: watch::Sender<bool>,
    /// The two proxy listeners: they end after draining on shutdown.
    listeners: JoinSet<()>,
    /// The controller stream and the admin server.
    background: JoinSet<()>,
}

impl Agent {
    /// Learns the host identity, restores the saved snapshot, binds the
    /// listeners and starts following the controller.
    pub async fn start(mut config: Config) -> anyhow::Result<Self> {
        let identity = host_identity(&config).await?;
        fd_limits(&mut config);
        let metrics = Arc::new(Metrics::new());
        let routes = Arc::new(Routes::new(table_settings(&config, &identity, &metrics)));
        let (status_tx, status) = watch::channel(ControlStatus::default());
        let file = SnapshotFile::new(&config.state_dir);
        control::restore(&file, &routes, &status_tx);

        let (outgoing, incoming, admin) = config.addresses(identity.host_ip);
        let bind = |addr: SocketAddr| async move {
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding {addr}"))
        };
        let (outgoing, incoming, admin) = (
            bind(outgoing).await?,
            bind(incoming).await?,
            bind(admin).await?,
        );
        let (outgoing_addr, incoming_addr, admin_addr) = (
            outgoing.local_addr()?,
            incoming.local_addr()?,
            admin.local_addr()?,
        );

        metrics.worker_threads.set(
            i64::try_from(tokio::runtime::Handle::current().metrics().num_workers())
                .unwrap_or(i64::MAX),
        );
        let (controllers, l2l_tls) = tls::setup(&config, &metrics)?;
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (mut listeners, mut background) = (JoinSet::new(), JoinSet::new());
        let info = AgentInfo {
            instance_id: identity.instance_id.clone().unwrap_or_default(),
            host_ip: identity.host_ip.to_string(),
            availability_zone: identity.availability_zone.clone().unwrap_or_default(),
            namespace: config.namespace.clone(),
            cluster: config.cluster.clone(),
        };
        background.spawn(control::run(
            controllers,
            info,
            Arc::clone(&routes),
            file,
            status_tx,
            control::Summaries {
                metrics: Arc::clone(&metrics),
                interval: config.summary_interval,
            },
        ));
        let proxy = Arc::new(
            Proxy::new(
                Arc::clone(&routes),
                config,
                identity.host_ip,
                Arc::clone(&metrics),
            )
            .with_l2l_tls(l2l_tls.clone()),
        );
        listeners.spawn(Arc::clone(&proxy).serve(
            Side::Outgoing,
            outgoing,
            shutdown_rx.clone(),
            SHUTDOWN_GRACE,
        ));
        listeners.spawn(Arc::clone(&proxy).serve(
            Side::Incoming,
            incoming,
            shutdown_rx.clone(),
            SHUTDOWN_GRACE,
        ));
        let admin_router = admin::router(admin::AdminState {
            routes: Arc::clone(&routes),
            status: status.clone(),
            metrics,
        });
        background.spawn(serve_admin(admin, admin_router, shutdown_rx));
        tracing::info!(%outgoing_addr, %incoming_addr, %admin_addr, "agent started");
        Ok(Self {
            host_ip: identity.host_ip,
            outgoing_addr,
            incoming_addr,
            admin_addr,
            routes,
            status,
            l2l_tls,
            shutdown,
            listeners,
            background,
        })
    }

    /// Stops accepting, lets in-flight requests finish (each listener
    /// waits at most the grace period), then stops everything.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        while self.listeners.join_next().await.is_some() {}
        self.background.abort_all();
    }

    /// Runs until a task ends unexpectedly.
    pub async fn wait(mut self) {
        tokio::select! {
            _ = self.listeners.join_next() => {}
            _ = self.background.join_next() => {}
        }
    }
}

/// How routing tables are built: the configuration's defaults, which
/// service policies override.
fn table_settings(
    config: &Config,
    identity: &ecsmesh_agent_identity::Identity,
    metrics: &Metrics,
) -> TableSettings {
    TableSettings {
        allow_inet_override: config.allow_inet_override,
        allow_local_inet_override: config.allow_local_inet_override,
        decision_cache_bytes: config.decision_cache_bytes,
        availability_zone: identity.availability_zone.as_deref().map(Arc::from),
        zone_aware: config.zone_aware_balancing,
        zone_counters: metrics.zone_requests.clone(),
        defaults: policy::Defaults {
            total_timeout: config.request_timeout,
            attempt_timeout: config.attempt_timeout,
            max_attempts: config.max_retries.saturating_add(1),
            ..policy::Defaults::default()
        },
        ..TableSettings::new(config.namespace.clone(), identity.host_ip)
    }
}

/// Raises the open-file limit and settles the connections per listener
/// it allows (unless configured).
fn fd_limits(config: &mut Config) {
    let nofile = proxy::listener::raise_nofile_limit();
    let max_connections = proxy::listener::max_connections(config.limits.max_connections, nofile);
    config.limits.max_connections = Some(max_connections);
    tracing::info!(open_file_limit = nofile, max_connections, "listener limits");
}

/// The admin server, until `shutdown` turns true.
async fn serve_admin(
    listener: TcpListener,
    router: axum::Router,
    mut shutdown: watch::Receiver<bool>,
) {
    let _ = axum::serve(listener, router)
        .with_graceful_shutdown(async move {
            let _ = shutdown.wait_for(|s| *s).await;
        })
        .await;
}

/// Who and where this agent is: configuration first, then discovery
/// (IMDSv2, ECS task metadata, network interfaces).
async fn host_identity(config: &Config) -> anyhow::Result<ecsmesh_agent_identity::Identity> {
    let mut identity_config = IdentityConfig::from_env();
    identity_config.host_ip = config.host_ip.or(identity_config.host_ip);
    identity_config.instance_id = config.instance_id.clone().or(identity_config.instance_id);
    identity_config.availability_zone = config
        .availability_zone
        .clone()
        .or(identity_config.availability_zone);
    if config.imds_endpoint.is_some() {
        identity_config
            .imds_endpoint
            .clone_from(&config.imds_endpoint);
    }
    let identity = discover(&identity_config)
        .await
        .context("discovering the host IP")?;
    tracing::info!(host_ip = %identity.host_ip, instance = ?identity.instance_id,
            az = ?identity.availability_zone, source = %identity.source, "host identity");
    Ok(identity)
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.listeners.abort_all();
        self.background.abort_all();
    }
}
